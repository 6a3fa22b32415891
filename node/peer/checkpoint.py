"""Atomic checkpoints: write to a temporary file, fsync, rename (and fsync the folder).

A reader therefore sees either the previous checkpoint or the new one, never a torn file, even
when the peer is killed with SIGKILL mid-write. Loading uses ``weights_only=True``: a checkpoint
holds tensors and plain values only, and no code can run from it.

A checkpoint holds the learner's state (parameters, momentum, minibatch stream), the round count
and the traffic counters. ``check_fits`` refuses one written for another model, so that a state
directory reused with a different ``[model]`` stops the peer with a sentence, not a tensor error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"


class CheckpointMismatch(ValueError):
    """The checkpoint in a state directory was written for a model of another size."""


def private_folder(path: str | Path) -> Path:
    """``path`` as a folder only its owner can enter (0700), created if missing: a state
    folder holds the peer's key, checkpoints and logs."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if folder.stat().st_uid == os.getuid():
        os.chmod(folder, 0o700)
    return folder


def write_private(path: str | Path, data: bytes) -> None:
    """Write ``path`` atomically, readable by its owner only (0600)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def save_checkpoint(state_dir: str | Path, state: dict[str, Any]) -> Path:
    folder = private_folder(state_dir)
    final = folder / CHECKPOINT
    tmp = folder / f".{CHECKPOINT}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
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


def check_fits(state: dict[str, Any], *, state_dir: str | Path, size: int, model: str) -> None:
    """Raise ``CheckpointMismatch`` unless the checkpoint's parameter vector and momentum buffer
    both hold ``size`` values (the configured ``model``'s parameter count)."""
    learner = state.get("learner") or {}
    for key, what in (("params", "parameters"), ("momentum", "momentum values")):
        tensor = learner.get(key)
        if isinstance(tensor, torch.Tensor) and tuple(tensor.shape) != (size,):
            raise CheckpointMismatch(
                f"checkpoint {Path(state_dir) / CHECKPOINT} holds {tensor.numel()} {what} but "
                f"the config's model {model} has {size} parameters (was this state directory "
                f"written with another model?); to start afresh use another --state-dir or "
                f"delete {state_dir}")
