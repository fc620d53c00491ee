"""The join of the pure steps and the I/O for each endpoint.

request -> parse -> translate -> upstream -> translate back -> write.
``Proxy`` holds one server's settings, upstream client, metrics and learned
output limits; the handler calls its routes with itself and a
``ResponseWriter``. The streaming relay lives in ``streaming.py``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from .anthropic_types import MessagesRequest, parse_count_tokens_request, parse_messages_request
from .apis.chat.request import Translation, to_chat_request
from .apis.chat.response import to_messages_response
from .apis.chat.stream import events_for_message
from .apis.chat.wire import parse_chat_response
from .config import Config
from .dialects import Dialect, detect_provider, dialect_for
from .errors import (
    InvalidRequest,
    ProxyError,
    UpstreamHTTPError,
    UpstreamUnavailable,
    error_from_object,
    max_tokens_limit,
)
from .ids import new_id
from .metrics import CallRecord, Metrics
from .redact import redact_text, redact_url
from .relay import StreamRelay
from .tokens import estimate_input_tokens
from .upstream import Upstream, UpstreamCall, chat_url, models_url, read_json_body
from .watchdog import Watch, Watchdog

log = logging.getLogger(__name__)

Route = Callable[[Any, Any], None]
_MAX_TOKENS_RETRIES = 2


def local_message(model: str, text: str, stop_reason: str, usage: Tuple[int, int]) -> Dict[str, Any]:
    """A reply made without the upstream (quota probe, ``max_tokens: 0``)."""
    return {
        "id": "msg_" + new_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}] if text else [],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage[0],
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": usage[1],
        },
    }


@dataclasses.dataclass
class Call:
    """Everything about one /v1/messages request while it is handled."""

    req: MessagesRequest
    model: str
    dialect: Dialect
    translation: Translation
    writer: Any
    client: Any
    started: float
    input_estimate: int
    record: Dict[str, Any] = dataclasses.field(default_factory=dict)


class Proxy:
    """One server's translating proxy: routes, upstream client, limits, metrics."""

    def __init__(self, config: Config, metrics: Metrics, watchdog: Watchdog) -> None:
        self.config = config
        self.metrics = metrics
        self.watchdog = watchdog
        self.upstream = Upstream(config)
        self.provider = config.provider or detect_provider(config.upstream)
        self._caps: Dict[str, int] = {}
        self._caps_lock = threading.Lock()
        self._warned: Set[str] = set()  # translation warnings already logged at WARNING level
        self.routes: Dict[Tuple[str, str], Route] = {
            ("POST", "/v1/messages"): self.messages,
            ("POST", "/v1/messages/count_tokens"): self.count_tokens,
            ("GET", "/v1/models"): self.list_models,
            ("GET", "/health"): self.health,
            ("GET", "/metrics"): self.show_metrics,
        }

    # ------------------------------------------------------------------
    # Routing.

    def route(self, method: str, path: str) -> Optional[Route]:
        if method == "GET" and path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
            return self.get_model
        return self.routes.get((method, path.rstrip("/") or "/"))

    def allowed_methods(self, path: str) -> List[str]:
        path = path.rstrip("/") or "/"
        if path.startswith("/v1/models/"):
            return ["GET"]
        return sorted(m for (m, p) in self.routes if p == path)

    # ------------------------------------------------------------------
    # Small endpoints.

    def health(self, handler: Any, writer: Any) -> None:
        writer.json(200, {"status": "ok"})

    def show_metrics(self, handler: Any, writer: Any) -> None:
        writer.json(200, self.metrics.snapshot())

    def count_tokens(self, handler: Any, writer: Any) -> None:
        req = parse_count_tokens_request(handler.read_json_body())
        writer.json(200, {"input_tokens": estimate_input_tokens(req)})

    # ------------------------------------------------------------------
    # Models (PROTOCOL.md 4.5).

    def upstream_model(self, client_model: str) -> str:
        for pattern, target in self.config.model_map:
            if fnmatch.fnmatchcase(client_model, pattern):
                return target
        return self.config.model or client_model

    def _configured_models(self) -> List[str]:
        names = [target for _, target in self.config.model_map]
        names += [self.config.model] if self.config.model else []
        return list(dict.fromkeys(names))

    def _fetch_models(self, handler: Any) -> List[Tuple[str, int]]:
        call = UpstreamCall()
        watch = Watch(call, handler.connection, deadline=time.monotonic() + 30)
        self.watchdog.add(watch)
        try:
            resp = self.upstream.open(
                models_url(self.config.upstream), call=call, method="GET",
                headers=(("Accept", "application/json"),), auth=tuple(self.upstream.auth_headers(self.dialect("").auth)),
            )
            with resp:
                data = read_json_body(resp, call, self.config.max_body_bytes)
        finally:
            self.watchdog.remove(watch)
        items = data.get("data") if isinstance(data, dict) else None
        out = []
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                created = item.get("created")
                out.append((item["id"], created if isinstance(created, int) else 0))
        return out

    def _models(self, handler: Any) -> List[Tuple[str, int]]:
        configured = [(name, 0) for name in self._configured_models()]
        try:
            fetched = self._fetch_models(handler)
        except ProxyError as exc:
            if not configured:
                raise
            log.info("could not list upstream models (%s); using the configured ones", exc.message)
            fetched = []
        return configured + [m for m in fetched if m[0] not in dict(configured)]

    def list_models(self, handler: Any, writer: Any) -> None:
        page = _page_query(handler.path)  # a bad limit fails before any upstream call
        models = [_model_info(name, created) for name, created in self._models(handler)]
        models, has_more = _paginate(models, page)
        writer.json(200, {
            "data": models,
            "has_more": has_more,
            "first_id": models[0]["id"] if models else None,
            "last_id": models[-1]["id"] if models else None,
        })

    def get_model(self, handler: Any, writer: Any) -> None:
        from urllib.parse import unquote

        wanted = unquote(handler.path.split("?", 1)[0][len("/v1/models/"):])
        if self.config.model or any(fnmatch.fnmatchcase(wanted, p) for p, _ in self.config.model_map):
            writer.json(200, _model_info(wanted, 0))  # every name maps to a configured model
            return
        for name, created in self._models(handler):
            if name == wanted:
                writer.json(200, _model_info(name, created))
                return
        raise ProxyError(f"model {wanted!r} not found", status=404)

    # ------------------------------------------------------------------
    # /v1/messages.

    def dialect(self, model: str) -> Dialect:
        return dialect_for(self.provider, model)

    def messages(self, handler: Any, writer: Any) -> None:
        started = time.monotonic()
        req = parse_messages_request(handler.read_json_body())
        record: Dict[str, Any] = {"endpoint": "/v1/messages", "model": req.model, "stream": req.stream}
        try:
            self._messages(req, handler, writer, started, record)
        except ProxyError as exc:
            record.update(status=exc.status, error_type=exc.error_type)
            raise
        finally:
            record.setdefault("status", writer.status or 0)
            self._record(record, started, writer.request_id)

    def _messages(self, req: MessagesRequest, handler: Any, writer: Any, started: float, record: Dict[str, Any]) -> None:
        if req.max_tokens in (0, 1):
            # max_tokens 1 is Claude Code's quota probe; 0 only warms a cache. Neither needs the upstream.
            text, reason = ("ok", "end_turn") if req.max_tokens == 1 else ("", "max_tokens")
            message = local_message(req.model, text, reason, (1, 1) if text else (0, 0))
            record.update(local=True, stop_reason=reason)
            self._reply(req, writer, message)
            return
        model = self.upstream_model(req.model)
        dialect = self.dialect(model)
        translation = self._translate(req, model, dialect)
        call = Call(req, model, dialect, translation, writer, handler.connection, started, estimate_input_tokens(req), record)
        record["upstream_model"] = model
        if req.stream and translation.request.stream:
            self._stream(call)
        else:
            self._json(call)

    def _translate(self, req: MessagesRequest, model: str, dialect: Dialect, cap: Optional[int] = None) -> Translation:
        wants_stream = req.stream and (dialect.stream_with_tools or not req.tools)
        limits = [c for c in (self.config.max_output_tokens, self._learned_cap(model), cap) if c]
        translation = to_chat_request(
            req, model=model, dialect=dialect, max_output_tokens=min(limits) if limits else None, stream=wants_stream
        )
        for warning in translation.warnings:
            self._warn_once(warning)
        return translation

    def _warn_once(self, warning: str) -> None:
        """A warning that every request would repeat (Claude Code sends web_search each time) is
        logged once at WARNING, then at DEBUG."""
        with self._caps_lock:
            first = warning not in self._warned
            self._warned.add(warning)
        log.log(logging.WARNING if first else logging.DEBUG, "%s", warning)

    def _reply(self, req: MessagesRequest, writer: Any, message: Dict[str, Any]) -> None:
        if req.stream:
            writer.start_stream()
            writer.events(events_for_message(message))
            writer.end_stream()
        else:
            writer.json(200, message)

    # ------------------------------------------------------------------
    # Upstream round trip, with the max_tokens retry.

    def _learned_cap(self, model: str) -> Optional[int]:
        with self._caps_lock:
            return self._caps.get(model)

    def _learn_cap(self, model: str, cap: int) -> None:
        with self._caps_lock:
            self._caps[model] = min(cap, self._caps.get(model, cap))
        log.warning("upstream limits %s to %d output tokens; max_tokens is capped from now on", model, cap)

    def open_upstream(self, call: Call, upstream_call: UpstreamCall) -> Any:
        """POST the translated request; on "max_tokens too large" retry with the named limit."""
        for attempt in range(_MAX_TOKENS_RETRIES + 1):
            chat = call.translation.request
            body = json.dumps(chat.to_dict(), ensure_ascii=False).encode("utf-8")
            if self.config.log_bodies:
                log.debug("upstream request body: %s", redact_text(body.decode("utf-8"), self.upstream.secrets()))
            try:
                return self.upstream.open(
                    chat_url(self.config.upstream, call.model, self._azure_version(call.dialect)),
                    call=upstream_call,
                    body=body,
                    headers=(
                        ("Content-Type", "application/json"),
                        ("Accept", "text/event-stream" if chat.stream else "application/json"),
                    ),
                    auth=tuple(self.upstream.auth_headers(call.dialect.auth)),
                )
            except UpstreamHTTPError as exc:
                limit = max_tokens_limit(exc.upstream_message, chat.max_tokens or 0) if exc.status == 400 else None
                if limit is None or attempt == _MAX_TOKENS_RETRIES:
                    raise
                self._learn_cap(call.model, limit)
                call.translation = self._translate(call.req, call.model, call.dialect, limit)
        raise AssertionError("unreachable")

    def _azure_version(self, dialect: Dialect) -> Optional[str]:
        return self.config.azure_api_version if dialect.auth == "azure" else None

    def _watch(self, call: Call, upstream_call: UpstreamCall, deadline: Optional[float], tick: Any = None) -> Watch:
        watch = Watch(upstream_call, call.client, deadline, tick)
        self.watchdog.add(watch)
        return watch

    def _json(self, call: Call) -> None:
        upstream_call = UpstreamCall()
        watch = self._watch(call, upstream_call, call.started + self.config.request_timeout)
        try:
            resp = self.open_upstream(call, upstream_call)
            with resp:
                obj = read_json_body(resp, upstream_call, self.config.max_body_bytes * 2)
        finally:
            self.watchdog.remove(watch)
        message = self.translate_back(call, obj)
        self._reply(call.req, call.writer, message)

    def translate_back(self, call: Call, obj: Any) -> Dict[str, Any]:
        """The Anthropic message for a ChatCompletion body; error objects raise."""
        chat = parse_chat_response(obj)
        if chat.error is not None:
            raise error_from_object(chat.error, self.upstream.secrets())
        if chat.choice is None:
            raise UpstreamUnavailable("upstream response has no choices")
        message, warnings = to_messages_response(
            chat,
            model=call.req.model,
            new_id=new_id,
            tool_names=call.translation.tool_names,
            stop_sequences=call.req.stop_sequences,
            dialect_name=call.dialect.name,
            think_tags=call.dialect.think_tags,
        )
        for warning in warnings:
            log.warning("%s", warning)
        call.record.update(stop_reason=message["stop_reason"], **_usage_fields(message["usage"]))
        return message

    def _stream(self, call: Call) -> None:
        relay = StreamRelay(self, call)
        upstream_call = relay.upstream_call
        watch = self._watch(call, upstream_call, None, relay.tick)
        try:
            relay.run()
        finally:
            self.watchdog.remove(watch)
        if relay.failure is not None:
            # The client saw a 200 and then event: error; the metrics must count it as the error it was.
            call.record.update(error_type=relay.failure.error_type)
        call.record.update(stop_reason=relay.translator.stop_reason, **_usage_fields(relay.translator.final_usage))

    # ------------------------------------------------------------------
    # Metrics.

    def _record(self, fields: Dict[str, Any], started: float, request_id: str) -> None:
        rec = CallRecord(
            provider=self.provider,
            upstream_host=redact_url(self.config.upstream).split("/")[2] if "//" in self.config.upstream else "",
            duration_ms=int((time.monotonic() - started) * 1000),
            request_id=request_id,
            **{k: v for k, v in fields.items() if k in CallRecord.__dataclass_fields__},
        )
        self.metrics.record(rec)
        log.info(
            "%s %s model=%s->%s stream=%s status=%s stop=%s in=%d out=%d %dms",
            rec.request_id, rec.endpoint, rec.model, rec.upstream_model or "-", rec.stream, rec.status,
            rec.stop_reason, rec.input_tokens, rec.output_tokens, rec.duration_ms,
        )


def _usage_fields(usage: Dict[str, Any]) -> Dict[str, int]:
    keys = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    return {k: int(usage.get(k) or 0) for k in keys}


def _model_info(name: str, created: int) -> Dict[str, Any]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    return {"type": "model", "id": name, "display_name": name, "created_at": stamp}


_DEFAULT_PAGE = 20  # Anthropic's default page size; the SDKs follow has_more/last_id
_MAX_PAGE = 1000


def _page_query(path: str) -> Tuple[int, Optional[str], Optional[str]]:
    """``limit``, ``after_id`` and ``before_id`` from the query string; a bad limit is a 400."""
    from urllib.parse import parse_qs, urlsplit

    query = parse_qs(urlsplit(path).query)
    raw = query.get("limit", [str(_DEFAULT_PAGE)])[0].strip()
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_PAGE:
        raise InvalidRequest(f"must be an integer from 1 to {_MAX_PAGE}", "limit")
    return int(raw), query.get("after_id", [None])[0], query.get("before_id", [None])[0]


def _paginate(models: List[Dict[str, Any]], page: Tuple[int, Optional[str], Optional[str]]) -> Tuple[List[Dict[str, Any]], bool]:
    """One page of ``models`` (Anthropic's cursor rules) and whether more lie beyond it."""
    limit, after, before = page
    ids = [m["id"] for m in models]
    if (before is not None and before not in ids) or (after is not None and after not in ids):
        return [], False  # a stale cursor ends the listing rather than restarting it (no paging loop)
    if before is not None:
        # The page just before ``before_id``; "more" means more before it.
        end = ids.index(before)
        start = max(0, end - limit)
        return models[start:end], start > 0
    start = ids.index(after) + 1 if after is not None else 0
    return models[start:start + limit], start + limit < len(models)
