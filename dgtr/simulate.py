"""Grasp success test in MuJoCo: does the hand hold the object under six gravity directions? (DESIGN.md §6)

DexGraspNet tested grasps in Isaac Gym; this is the CPU port. The hand is its collision primitives (15 capsules,
3 boxes) with 22 position-controlled hinge joints (kp 1000, kv 2) and gravity compensation; the object is a free
body made of one convex mesh geom per CoACD piece (density 500). Friction 3 everywhere, elliptic cones,
impratio 10 (without it objects slip), ``implicitfast``.

The palm stays fixed at the world origin and the object is placed at the inverse grasp pose; gravity ``g`` given in
the object frame is applied as ``Rᵀ g``. This is the same physics as a palm fixed at (R, t) with gravity ``g``, and it
lets one compiled model serve every grasp of an object and scale.

Per gravity direction (+x, -x, +y, -y, +z, -z of the object frame) the test starts from the grasp, "squeezes"
(joint targets ramp from q to q + dq over 0.3 s, dq = -0.3 Σ Jᵀn over the hand geoms within 1 mm of the object,
n the outward object normal: the closing motion DexGraspNet applies), runs ``duration`` seconds in total, and
passes if the object moved less than 2 cm. Non-finite grasps and unstable simulations fail; they never raise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

__all__ = ["DIRECTIONS", "GRAVITY_DIRECTIONS", "SimConfig", "build_mjcf", "GraspSimulator", "simulate_grasps"]

DIRECTIONS = ("+x", "-x", "+y", "-y", "+z", "-z")
GRAVITY_DIRECTIONS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)


@dataclass(frozen=True)
class SimConfig:
    """Physics and protocol of the test (defaults: DESIGN.md §6; see docs/evaluation.md for the timestep)."""

    timestep: float = 1 / 600        # s; 1/1200 gives the same verdicts within 1 % at twice the cost
    duration: float = 100 / 60       # s per direction (DexGraspNet: 100 steps at 60 Hz), squeeze included
    squeeze_time: float = 0.3        # s over which the joint targets ramp to q + dq
    squeeze_gain: float = 0.3        # dq = -gain · Σ Jᵀ n
    squeeze_distance: float = 0.001  # m: hand geoms this close to the object take part in the squeeze
    kp: float = 1000.0
    kv: float = 2.0
    joint_damping: float = 0.1       # ShadowHand asset values (gymnasium-robotics shared.xml)
    joint_armature: float = 0.001
    friction: float = 3.0
    density: float = 500.0
    impratio: float = 10.0
    gravity: float = 9.81
    threshold: float = 0.02          # m of object displacement that still counts as held
    give_up: float = 0.10            # m: an object this far from its start has fallen out: stop early (a failure)


def _fmt(x) -> str:
    return " ".join(f"{float(v):.9g}" for v in np.ravel(x))


def build_mjcf(hand, pieces: list[tuple[np.ndarray, np.ndarray]], cfg: SimConfig = SimConfig()) -> str:
    """MJCF of the fixed hand (palm frame = world frame) and a free object.

    hand: ``dgtr.hand.ShadowHand`` (its ``tree``, ``primitives``, joint limits); pieces: convex pieces of the
    object at its final scale as (vertices (V, 3) m, faces (F, 3) int).
    Hand geoms collide only with the object (contype/conaffinity bits), as in DexGraspNet's test.
    """
    from .hand import JOINT_NAMES

    lower, upper = np.asarray(hand.joint_lower, dtype=np.float64), np.asarray(hand.joint_upper, dtype=np.float64)
    names = [link.name for link in hand.tree]
    children: dict[int, list[int]] = {}
    for i, link in enumerate(hand.tree):
        children.setdefault(link.parent, []).append(i)
    geoms: dict[int, list[str]] = {}
    for k, prim in enumerate(hand.primitives):
        li = prim.link if isinstance(prim.link, (int, np.integer)) else names.index(prim.link)
        size = np.ravel(prim.size).astype(np.float64)
        common = f'name="hand_geom{k}" contype="2" conaffinity="1" group="1"'
        if prim.kind not in ("capsule", "box"):
            raise ValueError(f"unknown primitive kind {prim.kind!r}")
        # Primitive follows MuJoCo's convention (pos/quat = centre frame, capsule size = radius, half-length)
        g = f'<geom {common} type="{prim.kind}" size="{_fmt(size)}" pos="{_fmt(prim.pos)}" quat="{_fmt(prim.quat)}"/>'
        geoms.setdefault(int(li), []).append(g)

    def body(i: int, depth: int) -> str:
        link, pad = hand.tree[i], "  " * depth
        lines = [f'{pad}<body name="{link.name}" pos="{_fmt(link.pos)}" quat="{_fmt(link.quat)}" gravcomp="1">',
                 # explicit small inertia (like the asset's 8-14 g links): bodies without geoms need one
                 f'{pad}  <inertial pos="0 0 0" mass="0.01" diaginertia="1e-5 1e-5 1e-5"/>']
        if link.joint is not None:
            j = int(link.joint)
            lines.append(f'{pad}  <joint name="{JOINT_NAMES[j]}" axis="{_fmt(link.axis)}" '
                         f'range="{lower[j]:.9g} {upper[j]:.9g}"/>')
        lines += [pad + "  " + g for g in geoms.get(i, [])]
        lines += [body(c, depth + 1) for c in children.get(i, [])]
        lines.append(f"{pad}</body>")
        return "\n".join(lines)

    root = children[-1]
    assets = "\n".join(f'    <mesh name="piece{k}" vertex="{_fmt(v)}" face="{_fmt(np.asarray(f, dtype=np.int64))}"/>'
                       for k, (v, f) in enumerate(pieces))
    obj_geoms = "\n".join(f'      <geom name="object_geom{k}" type="mesh" mesh="piece{k}" density="{cfg.density:g}" '
                          f'contype="1" conaffinity="2"/>' for k in range(len(pieces)))
    actuators = "\n".join(f'    <position name="act_{n}" joint="{n}" kp="{cfg.kp:g}" kv="{cfg.kv:g}"/>'
                          for n in JOINT_NAMES)
    return f"""<mujoco model="dgtr_grasp_test">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{cfg.timestep:.9g}" integrator="implicitfast" cone="elliptic" impratio="{cfg.impratio:g}"
          gravity="0 0 {-cfg.gravity:g}"/>
  <default>
    <geom friction="{cfg.friction:g} 0.005 0.0001" condim="3"/>
    <joint damping="{cfg.joint_damping:g}" armature="{cfg.joint_armature:g}"/>
  </default>
  <asset>
{assets}
  </asset>
  <worldbody>
    <body name="object">
      <freejoint name="object"/>
{obj_geoms}
    </body>
{chr(10).join(body(r, 2) for r in root)}
  </worldbody>
  <actuator>
{actuators}
  </actuator>
</mujoco>"""


def _object_pieces(obj) -> list[tuple[np.ndarray, np.ndarray]]:
    """(vertices, faces) of each convex piece of an ``ObjectModel`` (already at its scale)."""
    return [(np.asarray(p.vertices, dtype=np.float64), np.asarray(p.faces)) for p in obj.pieces]


@dataclass
class SimResult:
    """Outcome of one grasp: object displacement (6,) m per direction at the end (or when it passed ``give_up``;
    inf where the simulation failed), success (6,) bool, error message or None."""

    displacement: np.ndarray
    success: np.ndarray
    error: str | None = None


class GraspSimulator:
    """One compiled MuJoCo model per object (at one scale); ``run`` tests one grasp in six directions."""

    def __init__(self, hand, obj, cfg: SimConfig = SimConfig()):
        from .hand import JOINT_NAMES

        self.cfg = cfg
        self.xml = build_mjcf(hand, _object_pieces(obj), cfg)
        self.model = mujoco.MjModel.from_xml_string(self.xml)
        self.data = mujoco.MjData(self.model)
        m = self.model
        jid = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n) for n in JOINT_NAMES]
        self.q_adr = np.array([m.jnt_qposadr[j] for j in jid])
        self.v_adr = np.array([m.jnt_dofadr[j] for j in jid])
        self.act = np.array([mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_ACTUATOR, f"act_{n}") for n in JOINT_NAMES])
        obj_body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "object")
        self.obj_q = m.jnt_qposadr[m.body_jntadr[obj_body]]
        self.obj_geoms = np.flatnonzero(m.geom_bodyid == obj_body)
        self.hand_geoms = np.flatnonzero((m.geom_bodyid != obj_body) & (m.geom_contype == 2))
        self.n_ramp = max(1, round(cfg.squeeze_time / cfg.timestep))
        self.n_steps = max(self.n_ramp, round(cfg.duration / cfg.timestep))

    def _reset(self, obj_pos, obj_quat, q, gravity) -> None:
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[self.obj_q:self.obj_q + 3] = obj_pos
        d.qpos[self.obj_q + 3:self.obj_q + 7] = obj_quat
        d.qpos[self.q_adr] = q
        d.ctrl[self.act] = q
        m.opt.gravity[:] = gravity
        mujoco.mj_forward(m, d)

    def squeeze_delta(self) -> np.ndarray:
        """dq (22,) = -gain · Σ Jᵀn over hand geoms within ``squeeze_distance`` of the object, at the current state.

        n is the outward object normal at the nearest point (MuJoCo's witness segment from object to hand is
        dist · n, also when penetrating) and J the hand point's translational Jacobian.
        """
        m, d, cfg = self.model, self.data, self.cfg
        dq = np.zeros(len(self.v_adr))
        fromto, jacp = np.zeros(6), np.zeros((3, m.nv))
        for gh in self.hand_geoms:
            best = (math.inf, None)
            for go in self.obj_geoms:
                dist = mujoco.mj_geomDistance(m, d, int(go), int(gh), cfg.squeeze_distance + 1e-3, fromto)
                if dist < best[0]:
                    best = (dist, fromto.copy())
            dist, ft = best
            if dist >= cfg.squeeze_distance or abs(dist) < 1e-9:
                continue  # too far, or touching exactly: no reliable normal (and no contribution needed)
            n = (ft[3:] - ft[:3]) / dist
            mujoco.mj_jac(m, d, jacp, None, ft[3:], int(m.geom_bodyid[gh]))
            dq -= cfg.squeeze_gain * jacp[:, self.v_adr].T @ n
        return dq

    def run(self, rot, t, q, stop_on_failure: bool = False) -> SimResult:
        """Test grasp rot (3,3), t (3,) m, q (22,) rad under the six gravity directions of the object frame.

        ``stop_on_failure``: skip the remaining directions once one fails (they stay failed, displacement inf); the
        all-six verdict is unchanged, which is all a filter such as ``dgtr synth`` needs."""
        rot, t, q = (np.asarray(x, dtype=np.float64) for x in (rot, t, q))
        fail = SimResult(np.full(6, np.inf), np.zeros(6, dtype=bool))
        if not (np.isfinite(rot).all() and np.isfinite(t).all() and np.isfinite(q).all()):
            fail.error = "non-finite grasp"
            return fail
        # object pose in the palm (= world) frame: the inverse of (R, t)
        obj_pos, obj_quat = -rot.T @ t, np.zeros(4)
        mujoco.mju_mat2Quat(obj_quat, np.ascontiguousarray(rot.T).ravel())
        m, d, cfg = self.model, self.data, self.cfg
        self._reset(obj_pos, obj_quat, q, np.zeros(3))
        dq = self.squeeze_delta()
        disp = np.full(6, np.inf)
        errors = []
        for k, g in enumerate(GRAVITY_DIRECTIONS):
            self._reset(obj_pos, obj_quat, q, rot.T @ g * cfg.gravity)
            for s in range(self.n_ramp):
                d.ctrl[self.act] = q + dq * ((s + 1) / self.n_ramp)
                mujoco.mj_step(m, d)
            # the rest in blocks of 0.1 s; an object that fell out of the hand cannot come back against gravity
            done, block = self.n_ramp, max(1, round(0.1 / cfg.timestep))
            while done < self.n_steps:
                mujoco.mj_step(m, d, min(block, self.n_steps - done))
                done += block
                if not np.linalg.norm(d.qpos[self.obj_q:self.obj_q + 3] - obj_pos) < cfg.give_up:
                    break
            if d.warning[mujoco.mjtWarning.mjWARN_BADQACC].number or not np.isfinite(d.qpos).all():
                errors.append(f"{DIRECTIONS[k]}: unstable simulation")
            else:
                disp[k] = np.linalg.norm(d.qpos[self.obj_q:self.obj_q + 3] - obj_pos)
            if stop_on_failure and not disp[k] < cfg.threshold:
                break
        return SimResult(disp, disp < cfg.threshold, "; ".join(errors) or None)


def simulate_grasps(hand, obj, rot, t, q, cfg: SimConfig = SimConfig()) -> dict:
    """Test B grasps of one object at one scale: rot (B,3,3), t (B,3), q (B,22) (arrays or tensors).

    Returns ``displacement`` (B, 6) m, ``success`` (B, 6) bool in ``DIRECTIONS`` order and ``errors`` {index: reason}.
    """
    sim = GraspSimulator(hand, obj, cfg)
    rot, t, q = (np.asarray(x, dtype=np.float64) for x in (rot, t, q))
    res = [sim.run(rot[i], t[i], q[i]) for i in range(len(rot))]
    return {"displacement": np.array([r.displacement for r in res]).reshape(-1, 6),
            "success": np.array([r.success for r in res]).reshape(-1, 6),
            "errors": {i: r.error for i, r in enumerate(res) if r.error}}
