"""Atomic checkpoints: write to a temporary file, fsync, rename (and fsync the folder).

A reader therefore sees either the previous checkpoint or the new one, never a torn file, even
when the peer is killed with SIGKILL mid-write. Loading uses ``weights_only=True``: a checkpoint
holds tensors and plain values only, and no code can run from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(state_dir: str | Path, state: dict[str, Any]) -> Path:
    folder = Path(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / CHECKPOINT
    tmp = folder / f".{CHECKPOINT}.tmp"
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


def load_checkpoint(state_dir: str | Path) -> dict[str, Any] | None:
    """The last checkpoint in ``state_dir``, or None when there is none."""
    path = Path(state_dir) / CHECKPOINT
    if not path.exists():
        return None
    return torch.load(path, weights_only=True)
