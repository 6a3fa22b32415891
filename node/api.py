"""The Python API for a peer: a networked peer from Python objects instead of TOML (the
simulator's counterpart is ``sim.api.simulate``).

A model is an ``nn.Module`` (every peer starts from a copy of it) or a function returning one;
data are ``(x, y)`` tensors or torch Datasets; settings are the schema's flat names (the
command-line flags without dashes: ``rounds=20``, ``algorithm="dfedavg"``, ``nodes=8``), checked
exactly like a TOML file. docs/python-api.md has a complete example.
"""

from __future__ import annotations

import asyncio
import copy
import signal
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from node.config import PeerConfig
from node.learning.data import Dataset, user_dataset

Model = nn.Module | Callable[[], nn.Module]


def model_factory(model: Model) -> Callable[..., nn.Module]:
    """A factory for ``model``: a copy of a module (so peers never share one), or the function."""
    if isinstance(model, nn.Module):
        return lambda **_: copy.deepcopy(model)
    if callable(model):
        return lambda **options: model(**options)
    raise TypeError(f"model must be an nn.Module or a function returning one, got "
                    f"{type(model).__name__}")


def dataset(train: Any, validation: Any = None, test: Any = None) -> Dataset:
    """The project's Dataset from (x, y) pairs or torch Datasets (checked like a loader's)."""
    return user_dataset("python", (train, validation, test), "node.api")


def make_peer(model: Model, *, train: Any, validation: Any = None, test: Any = None,
              neighbours: Mapping[int, str] | None = None, **settings: Any):
    """A networked ``node.peer.Peer`` training ``model`` on this data; ``await peer.start()``
    then ``await peer.run()`` (or use :func:`run_peer`)."""
    from node.peer import Peer

    config = PeerConfig.of(**settings)
    if neighbours:
        config.neighbours = dict(neighbours)
    return Peer(config, data=dataset(train, validation, test),
                model_factory=model_factory(model))


def run_peer(model: Model, *, train: Any, validation: Any = None, test: Any = None,
             neighbours: Mapping[int, str] | None = None, **settings: Any) -> dict[str, Any]:
    """Build a peer (:func:`make_peer`), run it to the end (Ctrl-C stops it after the current
    step) and return its final summary (what final.json holds)."""

    async def serve() -> dict[str, Any]:
        peer = make_peer(model, train=train, validation=validation, test=test,
                         neighbours=neighbours, **settings)
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, peer.request_stop)
        except (RuntimeError, ValueError):  # not the main thread: no signal handler
            pass
        await peer.start()
        return await peer.run()

    return asyncio.run(serve())
