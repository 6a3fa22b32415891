"""Many peers in one process on a NetworkX graph: the reference engine and its command line."""

from sim.config import ConfigError, SimConfig, build_config, load_toml
from sim.engine import Observer, Simulation, build_topology
from sim.report import (
    MetricsWriter,
    ProgressBar,
    Recorder,
    format_table,
    summary_table,
    write_results_section,
)

__all__ = [
    "ConfigError", "MetricsWriter", "Observer", "ProgressBar", "Recorder", "SimConfig",
    "Simulation",
    "build_config", "build_topology", "format_table", "load_toml", "summary_table",
    "write_results_section",
]
