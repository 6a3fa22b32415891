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
