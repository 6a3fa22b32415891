"""The peer's HTTP GET routes besides POST /gossip: /status (its snapshot as JSON), /metrics
(Prometheus text) and /healthz. Who may read them is the transport's ([peer] status_access)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Route = Callable[[], Awaitable[tuple[str, str]]]


def peer_routes(snapshot: Callable[[], dict[str, Any]], registry: CollectorRegistry
                ) -> dict[str, Route]:
    """The routes of one peer, reading ``snapshot()`` and ``registry`` at each request."""

    async def status() -> tuple[str, str]:
        return "application/json", json.dumps(snapshot())

    async def health() -> tuple[str, str]:
        return "text/plain", "ok"

    async def metrics() -> tuple[str, str]:
        return CONTENT_TYPE_LATEST, generate_latest(registry).decode()

    return {"/status": status, "/metrics": metrics, "/healthz": health}
