import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dgtr.cli import COMMANDS, build_parser, check_out_dir, check_out_file, main, positive_float, positive_int
from dgtr.errors import InputError


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "dgtr", "--help"], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert name in out


def test_user_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    assert main(["predict", "--mesh", str(tmp_path / "missing.obj"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing.obj" in err and "Traceback" not in err


def _options(command):
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return sub, [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("command", ["predict", "view", "demo"])
def test_help_shows_every_default_and_every_option_has_help(command, capsys):
    sub, actions = _options(command)
    for a in actions:
        assert a.help and len(a.help) > 10, a.dest
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())     # argparse wraps lines
    for a in actions:
        if a.option_strings and a.default not in (None, False, argparse.SUPPRESS):
            shown = " ".join(map(str, a.default)) if isinstance(a.default, list) else str(a.default)
            assert f"default: {shown}" in text or "default" in a.help, (a.dest, a.default)


def test_every_command_builds_and_its_help_runs(capsys):
    for name in COMMANDS:  # other commands' modules must not break `--help` (defaults formatter for all)
        assert main([name, "--help"]) == 0
        assert "usage: dgtr " + name in capsys.readouterr().out


def test_argparse_errors_are_one_line_with_exit_2(capsys):
    for argv, name in ((["predict", "--mesh", "x.obj", "--out", "o", "--top-k", "0"], "--top-k"),
                       (["predict", "--mesh", "x.obj"], "--out"), (["view"], "grasps"),
                       (["demo", "--workers", "0"], "--workers"), (["demo", "--scale", "inf"], "--scale"),
                       (["nosuch"], "invalid choice")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and name in err and "usage" not in err, err


def test_number_types():
    assert positive_int("3") == 3 and positive_float("0.5") == 0.5
    for bad in ("0", "-1", "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(bad)
    for bad in ("0", "-1", "nan", "inf", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float(bad)


def test_check_out_dir(tmp_path):
    assert check_out_dir(tmp_path / "a" / "b").is_dir()              # created, parents too
    assert list((tmp_path / "a" / "b").iterdir()) == []             # the probe file is gone
    f = tmp_path / "file"
    f.write_text("x")
    for bad, why in ((f, "is a file"), (f / "sub", "is a file"), ("", "empty"), ("a\0b", "cannot write"),
                     (tmp_path / ("x" * 300), "cannot write")):
        with pytest.raises(InputError, match=f"--out: .*{why}|--out: {why}"):
            check_out_dir(bad)
    with pytest.raises(InputError, match="--mjcf: .* is a folder"):
        check_out_file(tmp_path, "--mjcf")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        target = ro / "out" if not os.access(ro, os.W_OK) else Path("/sys/dgtr-test-out")  # root: /sys is not writable
        if not target.parent.is_dir():
            pytest.skip("no unwritable folder to test with")
        with pytest.raises(InputError, match="--out: cannot write"):
            check_out_dir(target)
    finally:
        ro.chmod(0o755)


def test_demo_checks_out_before_work(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["demo", "--out", str(f / "demo"), "--no-sim"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err and f.read_text() == "x"
    assert main(["demo", "--out", str(tmp_path / "d"), "--object", "nosuch", "--data", str(tmp_path)]) == 2
    assert "nosuch" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_stdout_goes_quiet_when_the_reader_leaves():
    """`dgtr predict ... | head`: the job keeps going (and writes its files) instead of dying on BrokenPipeError."""
    import os

    from dgtr.cli import _QuietWhenClosed

    r, w = os.pipe()
    os.close(r)
    out = _QuietWhenClosed(os.fdopen(w, "w", buffering=1))
    out.write("a line\n")          # EPIPE: swallowed, the fd now points at /dev/null
    out.write("more\n")
    out.flush()
    out.close()


def test_free_cores_is_a_thread_count():
    import os

    from dgtr.predict import free_cores
    n = free_cores()
    assert n is None or 1 <= n <= (os.cpu_count() or 1)
