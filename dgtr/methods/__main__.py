"""``python -m dgtr.methods train|export ...``: an alias of ``dgtr train`` / ``dgtr export``, which dispatch on the
config's (checkpoint's) ``method`` (docs/methods.md).  Same arguments, output and exit codes."""
from __future__ import annotations

import sys

ALIASED = ("train", "export")


def main(argv=None) -> int:
    from ..cli import main as dgtr_main

    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in ALIASED:
        if not argv or argv[0] in ("-h", "--help"):
            print("usage: python -m dgtr.methods {train,export} ...  (an alias of `dgtr train|export`; see "
                  "`dgtr train --help`)")
            return 0
        print(f"python -m dgtr.methods: error: expected train or export, got {command!r} (use `dgtr {command}`)"
              if command else "python -m dgtr.methods: error: expected train or export", file=sys.stderr)
        return 2
    return dgtr_main(argv)


if __name__ == "__main__":
    sys.exit(main())
