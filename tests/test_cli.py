import subprocess
import sys

from dgtr.cli import COMMANDS, main


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "dgtr", "--help"], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert name in out


def test_user_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    assert main(["predict", "--mesh", str(tmp_path / "missing.obj"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing.obj" in err and "Traceback" not in err
