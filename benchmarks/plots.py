"""Figures for docs/results.md: training curves of a `dgtr train` run and metric bars of benchmarks/results.py.

    python benchmarks/plots.py --run dgtr/checkpoints/default_summary.json --results results/main --out docs/img

- ``training.png``: per epoch, train and validation loss of the final decoder layer, validation penetration (mm),
  and the matching instability (share of queries whose matched ground truth changed since the previous epoch,
  the paper's Fig. 5), the DSMT stages shaded;
- ``metrics_<suite>.png``: one bar group per metric, one bar per results row, the paper's DGTR value as a line;
- ``instability.png`` (``--instability LABEL=RUN ...``): matching instability per DMT epoch of several runs, e.g.
  the ablations' λpen variants (paper Fig. 5).
Reads ``--run``: a run folder's ``summary.json`` (written by `dgtr train`) or such a file (``dgtr export`` writes
``<dest>_summary.json``), and ``<results>/results.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STAGE_COLOURS = {"dmt": "#e8f0fb", "smw": "#fbf3e4", "smpt": "#eaf7ea"}
METRICS = [("q1", "Q1 ↑", "q1"), ("pen_cm", "Pen. (cm) ↓", "pen_cm"), ("eta_np", "η_np (%) ↑", "eta_np"),
           ("eta_tb", "η_tb (%) ↑", "eta_tb"), ("success_all6", "success all6 (%) ↑", "success"),
           ("success_any", "success any (%) ↑", "success"), ("delta_t", "δt ↑", "delta_t"),
           ("delta_r", "δr ↑", "delta_r"), ("delta_q", "δq ↑", "delta_q")]


def shade_stages(ax, epochs: list[dict]) -> None:
    for rec in epochs:
        ax.axvspan(rec["epoch"] - 0.5, rec["epoch"] + 0.5, color=STAGE_COLOURS.get(rec["stage"], "white"), lw=0)


def plot_training(summary: dict, out: Path) -> Path:
    ep = summary["epochs"]
    x = [r["epoch"] for r in ep]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    shade_stages(ax, ep)
    ax.plot(x, [r["train"].get("loss_final") for r in ep], "o-", label="train (final layer)")
    ax.plot(x, [r.get("val", {}).get("val_loss_final") for r in ep], "s-", label="validation (final layer)")
    ax.set(xlabel="epoch", ylabel="loss", title="loss (pen/dist terms from SMPT on)")
    ax.legend()
    ax = axes[1]
    shade_stages(ax, ep)
    ax.plot(x, [r.get("val", {}).get("val_pen_mm") for r in ep], "o-", color="C3")
    ax.set(xlabel="epoch", ylabel="mm", title="validation penetration (mean max depth)")
    ax = axes[2]
    shade_stages(ax, ep)
    xi = [r["epoch"] for r in ep if "instability" in r]
    ax.plot(xi, [100 * r["instability"] for r in ep if "instability" in r], "o-", color="C2")
    ax.set(xlabel="epoch", ylabel="% of queries", title="matching instability (paper Fig. 5)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in STAGE_COLOURS.values()]
    fig.legend(handles, [s.upper() for s in STAGE_COLOURS], loc="upper right", ncol=3)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    path = out / "training.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_summary(run: str) -> dict:
    p = Path(run)
    return json.loads((p / "summary.json" if p.is_dir() else p).read_text())


def plot_instability(runs: list[str], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for spec in runs:
        label, run = spec.split("=", 1)
        ep = [r for r in load_summary(run)["epochs"] if "instability" in r]
        ax.plot([r["epoch"] for r in ep], [100 * r["instability"] for r in ep], "o-", label=label)
    ax.set(xlabel="epoch (dynamic matching)", ylabel="% of queries", title="matching instability (paper Fig. 5)")
    ax.legend()
    fig.tight_layout()
    path = out / "instability.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metrics(results: dict, out: Path) -> list[Path]:
    from results import PAPER_DGTR  # benchmarks/results.py

    paths = []
    for suite, rows in results.items():
        names = list(rows)
        fig, axes = plt.subplots(1, len(METRICS), figsize=(2.2 * len(METRICS), 4.2))
        for ax, (key, label, paper_key) in zip(axes, METRICS):
            vals = [rows[n].get(key) or 0.0 for n in names]
            ax.bar(range(len(names)), vals, color=[f"C{i}" for i in range(len(names))])
            ax.axhline(PAPER_DGTR[paper_key], color="k", ls="--", lw=1)
            ax.set_title(label, fontsize=9)
            ax.set_xticks([])
        handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{i}") for i in range(len(names))]
        fig.legend(handles + [plt.Line2D([], [], color="k", ls="--")], names + ["paper DGTR (Table 1)"],
                   loc="lower center", ncol=min(5, len(names) + 1), fontsize=8)
        fig.suptitle(f"dgtr eval, suite '{suite}'")
        fig.tight_layout(rect=(0, 0.1, 1, 0.95))
        path = out / f"metrics_{suite}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=None, help="run folder of `dgtr train` (with summary.json), or a summary file")
    ap.add_argument("--results", default=None, help="output folder of benchmarks/results.py (with results.json)")
    ap.add_argument("--instability", nargs="*", default=[], metavar="LABEL=RUN",
                    help="runs (folders or summary files) whose matching instability to compare")
    ap.add_argument("--out", default="docs/img")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    written = []
    if args.run:
        written.append(plot_training(load_summary(args.run), out))
    if args.instability:
        written.append(plot_instability(args.instability, out))
    if args.results:
        written += plot_metrics(json.loads((Path(args.results) / "results.json").read_text()), out)
    print("\n".join(f"wrote {p}" for p in written) or "nothing to do: give --run, --results and/or --instability")
    return 0


if __name__ == "__main__":
    sys.exit(main())
