"""The Python API for a simulation: many peers from Python objects instead of TOML (the peer's
counterpart is ``node.api``); docs/python-api.md has a complete example."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from node.api import Model, dataset, model_factory
from node.config import SimConfig
from sim.engines import build_simulation


def simulate(model: Model, *, train: Any, test: Any, observers: Iterable[Any] = (),
             events: Iterable[Any] = (), **settings: Any) -> dict[str, Any]:
    """Simulate ``nodes`` peers (a setting) training ``model`` on ``train`` split among them,
    scored on ``test``; returns the summary (as summary.json). ``observers`` and ``events`` are
    those of ``sim`` (``sim.Recorder``, ``sim.scenario.Event``)."""
    config = SimConfig.of(**settings)
    sim = build_simulation(config, list(observers), list(events),
                           data=dataset(train, None, test), model_factory=model_factory(model))
    return sim.run()
