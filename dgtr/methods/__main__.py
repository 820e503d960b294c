"""``python -m dgtr.methods train|export ...``: the comparison methods' commands until ``dgtr train`` / ``dgtr export``
dispatch on the config's ``method`` (docs/methods.md).  Same arguments as ``dgtr train`` / ``dgtr export``; errors are
one line and exit code 2."""
from __future__ import annotations

import argparse
import sys

from ..errors import DgtrError


def main(argv=None) -> int:
    from ..train import add_train_args
    from .train import export_method, run_method_train

    parser = argparse.ArgumentParser(prog="python -m dgtr.methods")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_args(sub.add_parser("train", help="train a comparison method (its config names it: method: ...)"))
    p = sub.add_parser("export", help="a method's training checkpoint as a small inference checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("dest")
    p.add_argument("overrides", nargs="*", metavar="refine.key=value", help="inference defaults to store")
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return run_method_train(args)
        dest = export_method(args.checkpoint, args.dest, args.overrides)
        print(f"wrote {dest} ({dest.stat().st_size / 2**20:.1f} MB)")
        return 0
    except DgtrError as e:
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
