import os
from pathlib import Path

import pytest
import torch

# Real DexGraspNet samples live beside the checkout (never in the repo); tests using them skip when absent.
DEXGRASPNET = Path(os.environ.get("DGTR_DEXGRASPNET", Path(__file__).resolve().parents[2] / "shared" / "dexgraspnet"))

# one thread: on a busy 2-core runner a second OpenMP thread makes small ops many times slower
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def dexgraspnet_dir() -> Path:
    if not (DEXGRASPNET / "dataset").is_dir():
        pytest.skip(f"real DexGraspNet samples not found at {DEXGRASPNET}")
    return DEXGRASPNET
