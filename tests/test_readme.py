"""README's Python example runs as written (from the repository root of a fresh clone): it cannot rot."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dgtr.predict import DEFAULT_CHECKPOINT

REPO = Path(__file__).resolve().parents[1]


def readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 1, "README should have exactly one Python example"
    return blocks[0]


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="no bundled default checkpoint")
def test_readme_python_example_runs(tmp_path):
    code = readme_python()
    for rel in re.findall(r'"(data/[^"]+)"', code):      # it uses objects the repository ships
        assert (REPO / rel).is_file(), rel
    # run it where the README says (the repository root), but with its relative outputs/ under tmp_path: a symlinked
    # data/ keeps the repository clean
    (tmp_path / "data").symlink_to(REPO / "data")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert r.returncode == 0, r.stderr
    assert "torch.Size([16, 3, 3]) torch.Size([16, 3]) torch.Size([16, 22])" in r.stdout
    out = tmp_path / "outputs" / "api"
    from dgtr.data import load_grasps
    g = load_grasps(out / "pb_mug.npy")
    assert len(g) == 16 and np.allclose(g.scale.numpy(), 0.1) and "no_contact" in g.extra
    assert (out / "pb_mug.png").stat().st_size > 50_000 and (out / "pb_mug.html").is_file()
    assert (out / "plotly.min.js").is_file()
