"""Many peers in one process on a NetworkX graph: three engines (reference, batched, peers),
the batched one also over torchrun ranks (sim.distributed), scenario timelines, observers and the
command line."""

from node.config import SimConfig
from node.schema import ConfigError
from sim.api import simulate
from sim.batched import BatchedSimulation
from sim.distributed import DistributedBatchedSimulation
from sim.engine import Observer, Simulation
from sim.engines import ENGINES, build_simulation
from sim.peers import PeerSimulation
from sim.report import (
    MetricsWriter,
    ProgressBar,
    Recorder,
    format_table,
    summary_table,
    write_results_section,
)
from sim.scenario import EVENT_KINDS, Event, load_scenario

__all__ = [
    "ENGINES", "EVENT_KINDS", "BatchedSimulation", "ConfigError", "DistributedBatchedSimulation",
    "Event", "MetricsWriter", "Observer",
    "PeerSimulation", "ProgressBar", "Recorder", "SimConfig", "Simulation",
    "build_simulation", "format_table", "load_scenario",
    "simulate", "summary_table", "write_results_section",
]
