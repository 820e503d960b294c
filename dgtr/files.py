"""Atomic file writes: a reader (or a resumed run) sees the finished file or the previous one, never half of one.

Long jobs (synthesis, training, evaluation) are killed at any moment; every file they write goes through here:
written to a temporary name beside the target (same file system) and moved over it with ``os.replace``.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

__all__ = ["atomic_path", "write_text", "write_json", "save_npy", "torch_save"]


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path beside ``path`` (parents created); on success it replaces ``path``, on error it is
    removed. ``suffix`` keeps an extension some writers insist on (``np.save`` appends '.npy' otherwise)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj, indent: int = 1) -> None:
    write_text(path, json.dumps(obj, indent=indent))


def save_npy(path, arr) -> None:
    import numpy as np

    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, arr, allow_pickle=arr.dtype == object)


def torch_save(obj, path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
