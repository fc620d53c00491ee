"""Per-call records and running totals, one ``Metrics`` per server.

No I/O of its own: records go to an optional sink callable (the CLI's
``--metrics-file`` writer, a test's list.append) and into thread-safe totals
served at ``GET /metrics``. Nothing is shared between two servers.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable, Dict, Optional


@dataclasses.dataclass(frozen=True)
class CallRecord:
    endpoint: str
    model: str = ""  # the client's model name
    route: str = ""  # the match pattern of the route it took
    upstream_model: str = ""
    provider: str = ""  # the provider's name
    upstream_host: str = ""
    stream: bool = False
    status: int = 200
    duration_ms: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    stop_reason: Optional[str] = None
    error_type: Optional[str] = None
    local: bool = False  # answered without an upstream call (quota probe, count_tokens)
    request_id: str = ""
    attempts: int = 0  # upstream calls made for it (retries and fallbacks included)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


Sink = Callable[[CallRecord], None]

_COUNTERS = ("requests", "errors", "local", "input_tokens", "output_tokens", "cache_read_input_tokens",
             "cache_creation_input_tokens")


class Metrics:
    def __init__(self, sink: Optional[Sink] = None) -> None:
        self._lock = threading.Lock()
        self._sink = sink
        self._totals: Dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._by_status: Dict[str, int] = {}

    def record(self, rec: CallRecord) -> None:
        with self._lock:
            t = self._totals
            t["requests"] += 1
            t["errors"] += 1 if rec.error_type else 0
            t["local"] += 1 if rec.local else 0
            t["input_tokens"] += rec.input_tokens
            t["output_tokens"] += rec.output_tokens
            t["cache_read_input_tokens"] += rec.cache_read_input_tokens
            t["cache_creation_input_tokens"] += rec.cache_creation_input_tokens
            key = str(rec.status)
            self._by_status[key] = self._by_status.get(key, 0) + 1
        if self._sink is not None:
            self._sink(rec)

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            return {**self._totals, "by_status": dict(self._by_status)}
