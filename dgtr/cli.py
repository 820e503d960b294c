"""The ``dgtr`` command.  Each subcommand lives in its module as ``add_<name>_args(parser)`` + ``run_<name>(args)``."""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import DgtrError

# name -> (module, one-line help); modules are imported only when their subcommand is built
COMMANDS = {
    "predict": ("dgtr.predict", "predict 16 diverse grasps for a mesh or point cloud"),
    "train": ("dgtr.train", "train DGTR with the dynamic-static matching schedule"),
    "export": ("dgtr.train", "a trained run's weights as a small inference checkpoint (what ships as the default)"),
    "eval": ("dgtr.evaluate", "score DexGraspNet-format grasps with the paper's metrics and a MuJoCo test"),
    "synth": ("dgtr.synth", "synthesize a validated DexGraspNet-style grasp dataset for meshes"),
    "demo": ("dgtr.demo", "the bundled end-to-end demo (what `make demo` runs)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """All subcommands are listed; only ``command``'s module is imported (a broken optional module cannot take the
    others down, and ``dgtr --help`` stays fast)."""
    parser = argparse.ArgumentParser(prog="dgtr", description="Dexterous Grasp Transformer (CVPR 2024), CPU-first.")
    parser.add_argument("--version", action="version", version=f"dgtr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (modname, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == command:
            mod = importlib.import_module(modname)
            getattr(mod, f"add_{name}_args")(p)
            p.set_defaults(_run=getattr(mod, f"run_{name}"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except DgtrError as e:
        print(f"dgtr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dgtr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
