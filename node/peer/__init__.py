"""The networked peer: the round protocol over a transport (``Peer``), its checkpoints, and
``python -m node``."""

from node.peer.protocol import FINAL_SUMMARY, JsonLog, Peer, rss_megabytes

__all__ = ["FINAL_SUMMARY", "JsonLog", "Peer", "rss_megabytes"]
