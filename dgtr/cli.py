"""The ``dgtr`` command.  Each subcommand lives in its module as ``add_<name>_args(parser)`` + ``run_<name>(args)``.

Argument helpers shared by the subcommands live here: ``positive_int`` / ``positive_float`` (argparse types that refuse
0, negatives, NaN with one line), ``check_out_dir`` / ``check_out_file`` (fail before any work when an output cannot
be written).  Every error the user can cause is one line and exit code 2, argparse's own included.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import tempfile
from pathlib import Path

from . import __version__
from .errors import DgtrError, InputError

# name -> (module, one-line help); modules are imported only when their subcommand is built
COMMANDS = {
    "predict": ("dgtr.predict", "predict 16 diverse grasps for a mesh or point cloud"),
    "view": ("dgtr.view", "pictures (PNG, HTML) and a MuJoCo scene of any DexGraspNet-format grasp file"),
    "train": ("dgtr.train", "train DGTR with the dynamic-static matching schedule, or the comparison method its "
                            "config names (configs/methods/<method>.yaml)"),
    "export": ("dgtr.train", "a trained run's weights (DGTR or a comparison method) as a small inference checkpoint "
                             "(what ships as the default)"),
    "eval": ("dgtr.evaluate", "score DexGraspNet-format grasps with the paper's metrics and a MuJoCo test"),
    "synth": ("dgtr.synth", "synthesize a validated DexGraspNet-style grasp dataset for meshes"),
    "convert": ("dgtr.data", "write a grasp set (DexGraspNet folder, compact dataset, DGTR h5) as a DexGraspNet folder "
                             "or in the compact layout"),
    "demo": ("dgtr.demo", "the bundled end-to-end demo (what `make demo` runs)"),
}


# ------------------------------------------------------------------------------------------- argument helpers
def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {v}")
    return v


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return v


def check_out_dir(path, arg: str = "--out") -> Path:
    """Make sure ``path`` is (or can be created as) a folder we can write, before any long work starts.

    Creates the folder (and its parents) and a probe file inside it, removed at once: the file system, not
    ``os.access``, answers (``os.access`` says yes for root on /sys, and ignores read-only mounts of other kinds).
    Raises InputError naming ``arg`` (a file in the way, no permission, a read-only or invalid path)."""
    text = str(path)
    if not text.strip():
        raise InputError(f"{arg}: empty path")
    p = Path(text).expanduser()
    try:
        if p.exists() and not p.is_dir():
            raise InputError(f"{arg}: {text} is a file, not a folder")
        above = next((a for a in p.parents if a.exists()), None)
        if above is not None and not above.is_dir():
            raise InputError(f"{arg}: {text}: {above} is a file, not a folder")
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p, prefix=".dgtr-write-test-"):
            pass
    except InputError:
        raise
    except (OSError, ValueError) as e:  # ValueError: e.g. an embedded NUL byte
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise InputError(f"{arg}: cannot write to {text} ({reason})") from None
    return p


def check_out_file(path, arg: str) -> Path:
    """Like ``check_out_dir`` for one output file: its folder must be writable and the path must not be a folder."""
    text = str(path)
    p = Path(text).expanduser()
    if not text.strip():
        raise InputError(f"{arg}: empty path")
    if p.is_dir():
        raise InputError(f"{arg}: {text} is a folder, not a file")
    check_out_dir(p.parent, f"{arg} (folder of {text})")
    return p


# ------------------------------------------------------------------------------------------------------ parser
class _HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to every option whose help does not already say its default (not to required ones)."""

    def _get_help_string(self, action):
        help_ = action.help or ""
        if (action.default is not argparse.SUPPRESS and "default" not in help_.lower() and not action.required
                and not getattr(action, "_in_required_group", False)
                and (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))):
            d = action.default
            help_ += " (default: " + ("none" if d is None or d == [] else
                                      " ".join(map(str, d)) if isinstance(d, (list, tuple)) else str(d)) + ")"
        return help_


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``dgtr predict: error: argument --top-k: ...``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """All subcommands are listed; only ``command``'s module is imported (a broken optional module cannot take the
    others down, and ``dgtr --help`` stays fast)."""
    parser = _Parser(prog="dgtr", description="Dexterous Grasp Transformer (CVPR 2024), CPU-first.")
    parser.add_argument("--version", action="version", version=f"dgtr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (modname, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=_HelpFormatter)
        if name == command:
            mod = importlib.import_module(modname)
            getattr(mod, f"add_{name}_args")(p)
            for group in p._mutually_exclusive_groups:  # e.g. --mesh | --meshes: one is required, no default
                for a in group._group_actions:
                    a._in_required_group = group.required
            p.set_defaults(_run=getattr(mod, f"run_{name}"))
    return parser


class _QuietWhenClosed:
    """sys.stdout that goes quiet when its reader has gone (``dgtr predict ... | head``): the job goes on and writes
    its files instead of dying with BrokenPipeError in the middle."""

    def __init__(self, stream):
        self._stream = stream

    def _gone(self) -> None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())   # the rest, and Python's last flush

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if sys.stdout is sys.__stdout__ and sys.stdout is not None:
        sys.stdout = _QuietWhenClosed(sys.stdout)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a bad argument (already reported in one line)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
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
