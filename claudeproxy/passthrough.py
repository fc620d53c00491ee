"""Passthrough mode: forward Anthropic requests unchanged, adding logs and metrics.

I/O. For upstreams that already speak the Anthropic Messages API (Anthropic,
LM Studio >= 0.4.1, the Anthropic endpoints of DeepSeek, Kimi and others).
Bodies go through byte for byte; SSE streams are relayed line by line as they
arrive and read on the side for usage. Hop-by-hop headers are stripped in
both directions; the client's credentials are replaced by the configured key
when there is one. ``count_tokens`` falls back to the local estimate when the
upstream does not offer it.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit, urlunsplit

from .anthropic_types import parse_count_tokens_request
from .config import Config
from .errors import ClientGone, ProxyError, UpstreamUnavailable
from .metrics import CallRecord, Metrics
from .sse import SSEDecoder, split_lines
from .tokens import estimate_input_tokens
from .upstream import Upstream, UpstreamCall, clean_eof, read_error
from .watchdog import Watch, Watchdog

log = logging.getLogger(__name__)

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
     "trailer", "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding"}
)
_CREDENTIALS = frozenset({"authorization", "x-api-key", "api-key", "cookie"})
_USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def _strip(headers: Any, drop_credentials: bool) -> List[Tuple[str, str]]:
    named = {v.strip().lower() for v in (headers.get("Connection") or "").split(",")}
    out = []
    for name, value in headers.items():
        low = name.lower()
        if low in _HOP_BY_HOP or low in named or (drop_credentials and low in _CREDENTIALS):
            continue
        out.append((name, value))
    return out


def target_url(base: str, path_and_query: str) -> str:
    """``base`` + the client's path, without doubling a ``/v1`` both carry."""
    parts = urlsplit(base)
    path, _, query = path_and_query.partition("?")
    prefix = parts.path.rstrip("/")
    if prefix.endswith("/v1") and (path == "/v1" or path.startswith("/v1/")):
        prefix = prefix[:-3]
    return urlunsplit((parts.scheme, parts.netloc, prefix + path, query, ""))


class _UsageReader:
    """Reads usage out of an Anthropic stream or body as it passes by."""

    def __init__(self) -> None:
        self.usage: Dict[str, int] = {}
        self.model = ""
        self.stop_reason: Optional[str] = None
        self.decoder = SSEDecoder()

    def feed_line(self, raw: bytes) -> None:
        for line in split_lines(raw):
            event = self.decoder.decode(line)
            if event is not None:
                self.feed_json(event.data)

    def feed_json(self, data: str) -> None:
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            return
        if not isinstance(obj, dict):
            return
        message = obj.get("message") if obj.get("type") == "message_start" else obj
        if isinstance(message, dict):
            self.model = message.get("model") or self.model
            self._take(message.get("usage"))
            self.stop_reason = message.get("stop_reason") or self.stop_reason
        delta = obj.get("delta")
        if isinstance(delta, dict) and delta.get("stop_reason"):
            self.stop_reason = delta["stop_reason"]

    def _take(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.usage.update({k: v for k, v in usage.items() if k in _USAGE_KEYS and isinstance(v, int)})


class Passthrough:
    """Forwards every ``/v1/...`` request; answers /health and /metrics itself."""

    def __init__(self, config: Config, metrics: Metrics, watchdog: Watchdog) -> None:
        self.config = config
        self.metrics = metrics
        self.watchdog = watchdog
        self.upstream = Upstream(config)

    def route(self, method: str, path: str) -> Any:
        if method == "GET" and path == "/health":
            return lambda handler, writer: writer.json(200, {"status": "ok"})
        if method == "GET" and path == "/metrics":
            return lambda handler, writer: writer.json(200, self.metrics.snapshot())
        if path == "/v1" or path.startswith("/v1/"):
            return self.forward
        return None

    def allowed_methods(self, path: str) -> List[str]:
        return ["GET"] if path in ("/health", "/metrics") else []

    def _auth(self, style: str) -> Tuple[Tuple[str, str], ...]:
        token = self.config.token()
        return (("x-api-key", token),) if token else ()

    def forward(self, handler: Any, writer: Any) -> None:
        started = time.monotonic()
        method = handler.command
        body = handler.read_body_bytes() if method in ("POST", "PUT", "PATCH") else None
        path = handler.path.split("?", 1)[0]
        reader = _UsageReader()
        status = 0
        call = UpstreamCall()
        watch = Watch(call, handler.connection, None)
        self.watchdog.add(watch)
        try:
            status = self._exchange(handler, writer, method, body, call, reader)
        except ProxyError as exc:
            status = exc.status
            if path.endswith("/count_tokens") and exc.status in (404, 405) and body is not None:
                status = self._local_count(writer, body)
            else:
                raise
        finally:
            self.watchdog.remove(watch)
            self._record(path, status, started, reader, writer.request_id)

    def _exchange(self, handler: Any, writer: Any, method: str, body: Optional[bytes], call: UpstreamCall,
                  reader: _UsageReader) -> int:
        has_token = bool(self.config.token())
        resp = self.upstream.open(
            target_url(self.config.upstream, handler.path), call=call, body=body, method=method,
            headers=tuple(_strip(handler.headers, has_token)), auth=self._auth("x-api-key"), raise_http_errors=False,
        )
        with resp:
            status = getattr(resp, "status", None) or resp.code
            if status in (404, 405) and handler.path.split("?", 1)[0].endswith("/count_tokens"):
                raise ProxyError("count_tokens not offered upstream", status=status)
            headers = _strip(resp.headers, False)
            ctype = (resp.headers.get("Content-Type") or "").lower()
            if "text/event-stream" in ctype and status == 200:
                self._relay_stream(resp, writer, headers, call, reader)
            else:
                self._relay_body(resp, writer, status, headers, call, reader)
        return int(status)

    def _relay_body(self, resp: Any, writer: Any, status: int, headers: List[Tuple[str, str]], call: UpstreamCall,
                    reader: _UsageReader) -> None:
        try:
            data = resp.read(self.config.max_body_bytes * 2)
        except (OSError, http.client.HTTPException) as exc:
            raise read_error(exc, call, self.config.idle_timeout) from None
        reader.feed_json(data.decode("utf-8", errors="replace"))
        writer.raw(status, headers, data)

    def _relay_stream(self, resp: Any, writer: Any, headers: List[Tuple[str, str]], call: UpstreamCall,
                      reader: _UsageReader) -> None:
        """Each line goes to the client the moment it arrives; a broken upstream ends with ``event: error``."""
        writer.start_raw_stream(headers)
        try:
            self._copy_lines(resp, writer, reader)
            if call.abort_reason == "client":
                raise ClientGone()
            if call.abort_reason is not None or not clean_eof(resp):
                # A FIN without the chunked terminator reads as b"" too (RELIABILITY.md S12).
                self._stream_error(writer, "api_error", "upstream stream ended early")
        except ClientGone:
            call.abort("client")
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            err = read_error(exc, call, self.config.idle_timeout)
            if isinstance(err, ClientGone):
                raise err from None
            self._stream_error(writer, getattr(err, "error_type", "api_error"), str(err))
        writer.end_stream()

    def _copy_lines(self, resp: Any, writer: Any, reader: _UsageReader) -> None:
        limit = self.config.max_line_bytes
        while True:
            raw = resp.readline(limit + 1)
            if not raw:
                return
            writer.raw_chunk(raw)
            reader.feed_line(raw)

    @staticmethod
    def _stream_error(writer: Any, error_type: str, message: str) -> None:
        # The leading newline ends an event the upstream left half-sent.
        writer.raw_chunk(b"\n" + json_event("error", {"type": "error", "error": {"type": error_type, "message": message}}))

    def _local_count(self, writer: Any, body: bytes) -> int:
        try:
            obj = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            raise UpstreamUnavailable("count_tokens body is not JSON") from None
        writer.json(200, {"input_tokens": estimate_input_tokens(parse_count_tokens_request(obj))})
        return 200

    def _record(self, path: str, status: int, started: float, reader: _UsageReader, request_id: str) -> None:
        u = reader.usage
        rec = CallRecord(
            endpoint=path, model=reader.model, provider="anthropic", status=status,
            upstream_host=urlsplit(self.config.upstream).hostname or "",
            duration_ms=int((time.monotonic() - started) * 1000), stop_reason=reader.stop_reason,
            error_type=None if 200 <= status < 300 else "upstream_error", request_id=request_id,
            **{k: u.get(k, 0) for k in _USAGE_KEYS},
        )
        self.metrics.record(rec)
        log.info("%s passthrough %s status=%s model=%s in=%d out=%d %dms", request_id, path, status, rec.model,
                 rec.input_tokens, rec.output_tokens, rec.duration_ms)


def json_event(name: str, payload: Dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode("utf-8")
