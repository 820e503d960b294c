"""Pictures and MuJoCo scenes of grasps (`dgtr view`, and the pictures of `dgtr predict` / `dgtr demo`)."""
import base64

import numpy as np
import pytest
import torch

from dgtr.cli import main as cli_main
from dgtr.data import GraspSet, load_grasps
from dgtr.hand import get_hand
from dgtr.objects import load_object
from dgtr.predict import score_grasps
from dgtr.view import (PNG_PX, grasp_colours, grasp_figure, grasp_scene_mjcf, hand_surface, png_panels, render,
                       write_html, write_png)

from test_train import make_dataset, place_grasps


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A DexGraspNet-layout folder: box_a, cyl_b, box_c, 6 grasps at scales 0.08 and 0.1 each."""
    return make_dataset(tmp_path_factory.mktemp("view"))


def _box(data, scale=0.1):
    return load_object(data / "meshdata" / "box_a" / "coacd" / "decomposed.obj", scale=scale)


def test_colours_are_distinct_for_any_number_of_grasps():
    for n in (1, 3, 10, 16, 32):
        c = grasp_colours(n)
        assert len(c) == n and len(set(c)) == n
    rgb = np.array([[int(h[k:k + 2], 16) for k in (1, 3, 5)] for h in grasp_colours(16)])
    d = np.abs(rgb[:, None] - rgb[None]).sum(-1) + np.eye(16, dtype=int) * 999
    assert d.min() > 40                              # no two of 16 hands look alike (sum of RGB differences)


def test_html_one_grasp_at_a_time_all_step_shared_object_and_small(data, tmp_path):
    hand, obj = get_hand(), _box(data)
    g = GraspSet.concat([place_grasps(0.5, 0.1, 8, seed=s) for s in (1, 2)])     # 16 grasps
    import plotly.graph_objects as go

    raw = grasp_figure(g, hand, mesh=obj.mesh, title="box")
    fig = go.Figure(raw)                              # a plain dict, valid for plotly
    kinds = [tr.type for tr in fig.data]
    assert kinds == ["mesh3d"] + ["mesh3d"] * 16 + ["scatter3d"] * 16 and fig.data[0].name == "object"
    steps = fig.layout.sliders[0].steps
    assert len(steps) == 17 and steps[-1].label == "all"
    for i, st in enumerate(steps[:16]):              # step i: the object and hand i only
        vis = st.args[0]["visible"]
        assert vis[0] and [j for j in range(1, 17) if vis[j]] == [i + 1] and not any(vis[17:])
        assert st.args[1]["title.text"].startswith("box — #%d · pen" % i)
    vis = steps[-1].args[0]["visible"]               # "all": the object and every skeleton, no hand meshes
    assert vis[0] and not any(vis[1:17]) and all(vis[17:])
    assert len({tr.color for tr in fig.data[1:17]}) == 16
    assert [tr.visible for tr in fig.data[1:17]] == [True] + [False] * 15
    x = raw["data"][1]["x"]                           # plotly.js typed arrays, as plotly itself writes them
    hand_x = np.frombuffer(base64.b64decode(x["bdata"]), dtype="<f4")
    assert x["dtype"] == "f4" and len(hand_x) > 1000  # a hand surface, not a few points
    v, _ = hand_surface(hand, g.rotation[0].numpy(), g.translation[0].numpy(), g.joints[0].numpy())
    np.testing.assert_allclose(hand_x, np.round(v[:, 0], 4).astype(np.float32))
    page = tmp_path / "box.html"
    write_html(page, g, hand, mesh=obj.mesh, title="box")
    assert page.stat().st_size <= 2_000_000, page.stat().st_size
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000 and 'src="plotly.min.js"' in page.read_text()


def test_png_one_view_per_grasp_in_order_with_titles(data, tmp_path):
    hand, obj = get_hand(), _box(data)
    g = place_grasps(0.5, 0.1, 5, seed=3)
    pts = obj.sample_points(2048)
    sc = score_grasps(hand, torch.as_tensor(pts), g.rotation, g.translation, g.joints)
    panels = png_panels(g, hand, mesh=obj.mesh, points=pts, indices=[7, 2, 9, 0, 4])
    assert len(panels) == 5
    colours = grasp_colours(5)
    for (img, title, _), idx, pen, c, colour in zip(panels, [7, 2, 9, 0, 4], sc["penetration"], sc["contact_points"],
                                                     colours):
        assert title.startswith(f"#{idx} · pen {pen * 1e3:.1f} mm · {int(c)} contacts"), title
        assert img.shape == (PNG_PX, PNG_PX, 3) and img.min() >= 0 and img.max() <= 1
        grey = np.abs(img - img.mean(-1, keepdims=True)).max(-1) < 1e-6   # the object (and the white background)
        hue = np.array([int(colour[k:k + 2], 16) for k in (1, 3, 5)], dtype=float) / 255
        tinted = np.abs(img / (img.sum(-1, keepdims=True) + 1e-9) - hue / hue.sum()).max(-1) < 0.02   # the hand
        assert ((img < 0.95).all(-1) & grey).sum() > 2000 and tinted.sum() > 2000
    write_png(tmp_path / "five.png", g, hand, mesh=obj.mesh, points=pts, title="box")
    from PIL import Image
    with Image.open(tmp_path / "five.png") as im:
        assert im.size == (4 * PNG_PX, 34 + 2 * (20 + PNG_PX))    # 4 columns, 2 rows for 5


def test_render_depth_order_and_frame():
    """Nearer triangles hide farther ones whatever their order; the scene is fitted to the frame; points are dots."""
    sq = lambda z: np.array([[[-1, -1, z], [1, -1, z], [1, 1, z]], [[-1, -1, z], [1, 1, z], [-1, 1, z]]], float)
    small = sq(0.5) * [0.3, 0.3, 1]
    tris = np.concatenate([small, sq(0.0)])               # seen from above (elev 90): the small square is nearer
    cols = np.array([[1, 0, 0]] * 2 + [[0, 0, 1]] * 2, float)
    for order in (slice(None), slice(None, None, -1)):
        img = render(tris[order], cols[order], elev=90, azim=0, px=50, supersample=1)
        assert np.allclose(img[25, 25], [1, 0, 0]) and np.allclose(img[2, 2], [0, 0, 1])
    img = render(tris, cols, elev=-90, azim=0, px=50, supersample=1)   # from below the big one hides it
    assert np.allclose(img[25, 25], [0, 0, 1])
    dots = render(np.zeros((0, 3, 3)), np.zeros((0, 3)), 0, 0, px=40, points=np.array([[0, 0, 0.0], [0, 1, 1]]))
    assert (dots < 1).any(-1).sum() >= 2 and np.allclose(dots[0, 0], 1)


def test_view_cli_our_file_selection_and_scales(data, tmp_path, capsys):
    out = tmp_path / "out"
    f = data / "dataset" / "box_a.npy"                # 6 grasps at 0.08, then 6 at 0.1
    assert cli_main(["view", str(f), "--meshes", str(data / "meshdata"), "--out", str(out)]) == 0
    for s in ("0.08", "0.1"):
        assert (out / f"box_a_s{s}.png").stat().st_size > 10_000 and (out / f"box_a_s{s}.html").is_file()
    capsys.readouterr()
    assert cli_main(["view", str(f), "--meshes", str(data / "meshdata"), "--out", str(out / "b"),
                     "--index", "9", "7", "2", "--limit", "2"]) == 0
    text = capsys.readouterr().out
    assert "scale 0.1: grasps 9, 7\n" in text and "scale 0.08" not in text   # --limit keeps the first two
    assert sorted(p.name for p in (out / "b").iterdir()) == ["box_a.html", "box_a.png", "plotly.min.js"]
    assert cli_main(["view", str(f), "--meshes", str(data / "meshdata" / "box_a" / "coacd" / "decomposed.obj"),
                     "--scale", "0.08", "--out", str(out / "c")]) == 0     # a mesh file works too
    assert "grasps 0, 1, 2, 3, 4, 5\n" in capsys.readouterr().out


def test_view_mjcf_scene_places_hand_and_object_where_the_grasp_says(data, tmp_path):
    import mujoco

    from dgtr.hand import JOINT_NAMES

    f = data / "dataset" / "cyl_b.npy"
    scene = tmp_path / "scene" / "cyl.xml"
    assert cli_main(["view", str(f), "--meshes", str(data / "meshdata"), "--index", "8", "--mjcf", str(scene),
                     "--no-pictures"]) == 0
    m = mujoco.MjModel.from_xml_path(str(scene))
    d = mujoco.MjData(m)
    mujoco.mj_forward(m, d)
    g = load_grasps(f)
    hand = get_hand(dtype=torch.float64)
    T = hand.link_transforms(g.rotation[8:9], g.translation[8:9], g.joints[8:9])[0].numpy()
    for i, link in enumerate(hand.tree):             # every hand body at its forward-kinematics pose
        b = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, link.name)
        assert np.allclose(d.xpos[b], T[i, :3, 3], atol=1e-6) and np.allclose(d.xmat[b].reshape(3, 3), T[i, :3, :3],
                                                                               atol=1e-6)
    obj = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "object")
    assert np.allclose(d.xpos[obj], 0) and np.allclose(d.xmat[obj], np.eye(3).ravel())   # world = object frame
    jid = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n) for n in JOINT_NAMES]
    assert np.allclose(d.qpos[m.jnt_qposadr[jid]], g.joints[8].numpy(), atol=1e-8)
    mesh_v = np.concatenate([m.mesh_vert[m.mesh_vertadr[k]:m.mesh_vertadr[k] + m.mesh_vertnum[k]]
                             for k in range(m.nmesh) if m.mesh(k).name.startswith("piece")])
    assert np.ptp(mesh_v, 0).max() == pytest.approx(np.ptp(load_object(
        data / "meshdata" / "cyl_b" / "coacd" / "decomposed.obj", scale=float(g.scale[8])).bounds, 0).max(), rel=1e-3)
    # the joint servos hold the grasp: after 0.2 s of simulation the joints are still at q (no gravity, no object
    # contact in this synthetic grasp needed)
    m.opt.gravity[:] = 0
    mujoco.mj_step(m, d, 120)
    assert np.abs(d.qpos[m.jnt_qposadr[jid]] - g.joints[8].numpy()).max() < 0.05


def test_grasp_scene_of_a_dataset_grasp(dexgraspnet_dir):
    import mujoco

    f = sorted((dexgraspnet_dir / "dataset").glob("*.npy"))[0]
    g = load_grasps(f)
    obj = load_object(dexgraspnet_dir / "meshdata" / f.stem / "coacd" / "decomposed.obj", scale=float(g.scale[0]))
    xml = grasp_scene_mjcf(get_hand(), obj, g.rotation[0].numpy(), g.translation[0].numpy(), g.joints[0].numpy())
    m = mujoco.MjModel.from_xml_string(xml)
    d = mujoco.MjData(m)
    mujoco.mj_step(m, d, 300)                         # 0.5 s under gravity -z: a real grasp holds the object
    assert np.linalg.norm(d.qpos[:3]) < 0.02


def _one_line(capsys, *names):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(n in err for n in names), err


def test_view_bad_input_is_one_line_and_writes_nothing(data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f, meshes, out = str(data / "dataset" / "box_a.npy"), str(data / "meshdata"), str(tmp_path / "out")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [(["--index", "12"], "--index"), (["--index", "-1"], "--index"), (["--limit", "0"], "--limit"),
             (["--scale", "0.5"], "--scale"), (["--scale", "-1"], "--scale"), (["--out", str(a_file)], "--out"),
             (["--mjcf", str(tmp_path)], "--mjcf"), (["--mjcf", str(a_file / "x.xml")], "--mjcf"),
             (["--no-pictures"], "--no-pictures")]
    for extra, name in cases:
        assert cli_main(["view", f, "--meshes", meshes, "--out", out] + extra) == 2, extra
        _one_line(capsys, name)
    assert cli_main(["view", str(tmp_path / "none.npy"), "--meshes", meshes, "--out", out]) == 2
    _one_line(capsys, "none.npy")
    assert cli_main(["view", f, "--meshes", str(tmp_path / "nope"), "--out", out]) == 2
    _one_line(capsys, "--meshes")
    assert cli_main(["view", f, "--meshes", meshes, "--object", "zzz", "--out", out]) == 2
    _one_line(capsys, "zzz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]     # nothing written, not even --out


def test_hand_surface_and_skeleton_follow_the_posed_visual_meshes(data):
    """Decimated once per link in its own frame, then moved: every vertex stays within a cell of the posed full
    mesh, every link is there, and the skeleton's fingertips are the posed meshes' farthest vertices."""
    from scipy.spatial import cKDTree

    from dgtr.view import hand_skeleton

    hand = get_hand()
    g = place_grasps(0.5, 0.1, 2, seed=4)
    R, t, q = g.rotation[1].numpy(), g.translation[1].numpy(), g.joints[1].numpy()
    full = hand.visual_meshes(R, t, q)
    v, f = hand_surface(hand, R, t, q, cell=0.005)
    d, _ = cKDTree(np.concatenate([m.vertices for m in full])).query(v)
    assert d.max() < 0.005 * 3 ** 0.5 and f.max() < len(v) and len(f) > 1000
    names = [link.name for link in hand.tree]
    parents = {link.parent for link in hand.tree}
    origin = hand.link_transforms(torch.as_tensor(R)[None].float(), torch.as_tensor(t)[None].float(),
                                  torch.as_tensor(q)[None].float())[0, :, 3 - 3:3, 3].double().numpy()
    skel = hand_skeleton(hand, R, t, q)
    ends = skel[1::3]                                   # the second point of each segment
    for m in full:                                      # each fingertip: a farthest posed vertex from its joint
        i = names.index(m.metadata["link"])
        if i in parents:
            continue
        far = np.linalg.norm(np.asarray(m.vertices) - origin[i], axis=1)
        on_mesh = np.linalg.norm(np.asarray(m.vertices)[:, None] - ends[None], axis=2).min(0) < 1e-5
        assert on_mesh.any()
        tip = ends[on_mesh][0]
        assert abs(np.linalg.norm(tip - origin[i]) - far.max()) < 1e-6
