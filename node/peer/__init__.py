"""The networked peer: the round protocol over a transport (``Peer``), its checkpoints, its log
and ``python -m node``."""

from node.peer.observe import FINAL_SUMMARY, JsonLog, LogEvent, read_log, rss_megabytes
from node.peer.protocol import Peer
from node.peer.runtime import Runtime

__all__ = ["FINAL_SUMMARY", "JsonLog", "LogEvent", "Peer", "read_log", "rss_megabytes", "Runtime"]
