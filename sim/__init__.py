"""Many peers in one process on a NetworkX graph: three engines (reference, batched, peers),
scenario timelines, observers and the command line."""

from sim.batched import BatchedSimulation, build_simulation
from sim.config import ConfigError, SimConfig, build_config, load_toml
from sim.engine import Observer, Simulation, build_topology
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
    "EVENT_KINDS", "BatchedSimulation", "ConfigError", "Event", "MetricsWriter", "Observer",
    "PeerSimulation", "ProgressBar", "Recorder", "SimConfig", "Simulation", "build_config",
    "build_simulation", "build_topology", "format_table", "load_scenario", "load_toml",
    "summary_table", "write_results_section",
]
