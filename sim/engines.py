"""The simulator's engines in one table, the factory that builds one from a config, and every
check that refuses a config for an engine (before anything is built, with a one-line reason).

``build_simulation`` is the way in for the command line (sim.cli), the Python API (sim.api) and
the scripts: it refuses what the chosen engine cannot run, then builds the engine's class. The
classes' own ``from_config`` builds without these checks (it still refuses events an engine does
not run, and what it finds only once built, such as a model with buffers on the batched engine).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from node.config import SimConfig
from sim.batched import BatchedSimulation
from sim.distributed import DistributedBatchedSimulation, world_size
from sim.engine import Observer, Simulation
from sim.peers import PeerSimulation
from sim.scenario import Event

DIGITS_TRAIN_IMAGES = 1347  # the digits data set's training split: at most one image per peer


def batched_refusal(config: SimConfig) -> str | None:
    """Why the batched engine cannot run ``config`` (it needs per-peer code paths), or None."""
    if config.mixing.name != "average":
        return (f"[mixing] name = {config.mixing.name} keeps per-peer state or per-peer control "
                "flow; the batched engine mixes by a sparse matrix product (average only)")
    if config.attack.kind is not None:
        return "[attack] kind needs per-peer behaviour; use --engine reference"
    return None


def peer_refusal(config: SimConfig) -> str | None:
    """Why real peers cannot run ``config``, or None."""
    if config.graph.data_fraction < 1.0:
        return "[graph] data_fraction: a real peer always holds a data shard"
    if config.attack.phi is not None:
        return "[attack] phi: Sybil identities exist in the reference engine only"
    if config.data.dataset == "digits" and config.graph.nodes > DIGITS_TRAIN_IMAGES:
        return "more peers than digits training images"
    return None


def no_refusal(config: SimConfig) -> str | None:
    """The reference engine runs every rule, attack and event."""
    return None


@dataclass(frozen=True)
class Engine:
    """One ``--engine``: its class, what it refuses, and where it runs."""

    simulation: type[Simulation]
    refusal: Callable[[SimConfig], str | None]  # a reason, or None when it can run the config
    cpu_only: str | None = None  # why it cannot use ``[run] device = cuda``; None: it can
    over_ranks: type[Simulation] | None = None  # its class under torchrun; None: one process

    @property
    def name(self) -> str:
        return self.simulation.engine_name


ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine(Simulation, no_refusal),
    Engine(BatchedSimulation, batched_refusal, over_ranks=DistributedBatchedSimulation),
    Engine(PeerSimulation, peer_refusal,
           cpu_only="the peers engine runs real peers' protocol code on the CPU"),
)}


def engine_for(config: SimConfig) -> Engine:
    """The engine ``[sim] engine`` names (node.config.ENGINES lists the same names)."""
    return ENGINES[config.sim.engine]


def device_refusal(config: SimConfig) -> str | None:
    """Why ``[run] device`` cannot be used for ``config``, or None when it can."""
    if config.run.device == "cpu":
        return None
    engine = engine_for(config)
    if engine.cpu_only:
        on_gpu = " or ".join(sorted(e.name for e in ENGINES.values() if not e.cpu_only))
        return f"[run] device = cuda: {engine.cpu_only}; use --engine {on_gpu} on a GPU"
    if not torch.cuda.is_available():
        return ("[run] device = cuda, but torch finds no CUDA GPU on this machine "
                f"(torch {torch.__version__}); use --device cpu")
    return None


def distributed_refusal(config: SimConfig) -> str | None:
    """Why ``config`` cannot run under torchrun, or None when it can."""
    engine = engine_for(config)
    if engine.over_ranks is None:
        ranked = " or ".join(sorted(e.name for e in ENGINES.values() if e.over_ranks))
        return (f"--engine {engine.name} runs in one process; under torchrun "
                f"(WORLD_SIZE > 1) only --engine {ranked} shards its rows over ranks")
    return None


def refusal(config: SimConfig, *, ranks: int = 1) -> str | None:
    """Why ``config`` cannot run on its engine over ``ranks`` processes (the one line a user
    reads), or None when it can: the device first, then torchrun, then the engine's own."""
    reason = device_refusal(config)
    if reason is None and ranks > 1:
        reason = distributed_refusal(config)
    if reason is None:
        engine = engine_for(config)
        own = engine.refusal(config)
        reason = f"--engine {engine.name}: {own}" if own else None
    return reason


def build_simulation(config: SimConfig, observers: Iterable[Observer] = (),
                     events: Sequence[Event] = (), **sources: Any) -> Simulation:
    """The engine ``[sim] engine`` names, built from ``config`` (``sources``: the Python API's
    data and model_factory, see Simulation.from_config); ValueError with ``refusal``'s reason
    when it cannot run it. Under torchrun (a process group of more than one rank) the batched
    engine is sim.distributed's, and the others refuse."""
    ranks = world_size()
    reason = refusal(config, ranks=ranks)
    if reason:
        raise ValueError(reason)
    engine = engine_for(config)
    simulation = engine.over_ranks if ranks > 1 and engine.over_ranks else engine.simulation
    return simulation.from_config(config, observers, events, **sources)
