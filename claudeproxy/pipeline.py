"""The join of the pure steps and the I/O, for each endpoint.

request -> parse -> route -> API prepare -> upstream open -> relay (stream) or
translate back (JSON) -> write. ``Proxy`` holds one server's router, upstream
transport, metrics and learned output limits; the handler calls its routes with
itself and a ``ResponseWriter``. Which upstream API a request takes is the
route's provider's business: each API object (``apis/``) answers the same
questions, and the one relay (``relay.py``) streams them all.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, cast
from urllib.parse import parse_qs, unquote, urlsplit

from . import catalog
from .anthropic_types import MessagesRequest, parse_count_tokens_request, parse_messages_request, peek_request
from .apis.base import ClientRequest, Exchange, UpstreamApi, remember
from .calibration import TokenCalibration
from .config import Config, Provider
from .counts import ONE_HOUR_WRITES, USAGE_KEYS, WEB_SEARCHES, count_or_none
from .credentials import alternatives, current_secrets, key_of, refused, ring_label
from .dialects import auth_header, auth_style, client_key, is_anthropic_host
from .ending import StreamFold, abort_error
from .errors import (
    NO_RETRY,
    ClientGone,
    ProxyError,
    UpstreamHTTPError,
    UpstreamNotJson,
    UpstreamUnavailable,
    max_tokens_limit,
    lasting_cap,
    retry_after,
    says_no_retry,
)
from .ids import new_id
from .metrics import LOCAL, CallRecord, Metrics, access_line, finite
from .model_facts import PRICES_CHECKED, ModelFacts
from .observe import ObservedFold, bodies_logged, log_body
from .overflow import PHRASE as PROMPT_TOO_LONG, prompt_uncounted, read_sizes, room_beside
from .prompt_cache import session_cache_key
from .redact import (
    MIN_FREE_TEXT_SECRET,
    configured_secrets,
    free_text_forms,
    holds_secret,
    redact_text,
    secret_forms,
    with_halves,
)
from .relay import Relay
from .replies import as_answered, events_for_message, is_quota_probe, local_message, message_from_events
from .routing import Routed, Target, build_router, carries_a_credential
from .sides import ClientRequestSide, Endpoint, Writer
from .spend import call_spend, carry_spend, stream_usage_fields, usage_fields
from .tokens import Estimate, estimate_input, tools_chars
from .tool_memo import ToolMemo
from .upstream import POOL_IDLE_SECONDS, Upstream, UpstreamCall, json_body, read_json_body, read_whole_body
from .urls import messages_url, models_url
from .watchdog import Pause, Watch, Watchdog, client_left

log = logging.getLogger(__name__)

# Changed requests per attempt (a named max_tokens limit, an API's own recovery: a refused optional
# field dropped). A strict server refuses one field per answer, and a Claude Code turn may carry four
# or five it does not know (reasoning_effort, parallel_tool_calls, prompt_cache_key, stream_options):
# at 2 the first turn failed with the third refusal. Each is a 400 that costs no tokens.
_MAX_TOKENS_RETRIES = 6
_WARNINGS_REMEMBERED = 1024  # distinct warnings logged at WARNING before the memory starts over
# Worth another attempt (issue 7): rate limits, overload, server errors, connect failures (502).
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
# The least room beside a prompt's estimate (overflow.room_beside) a learned window gives an answer:
# below, the upstream's refusal says the room exactly.
_LEAST_WINDOW_ROOM = 1024
# A refusal of the key the proxy sends a provider, or of its account (refused, unpaid, not permitted):
# the same target again gets the same, another provider's key may well be taken, so a route's
# fallbacks are tried.
_NEXT_TARGET_STATUSES = frozenset({401, 402, 403})
# Not found (the model, or the URL's path) is the target's own: the next target may have it, and the
# same one would say it again. (A 400 is the request's: every target would refuse it.)
_NOT_HERE_STATUSES = frozenset({404})
# The record's fields that say which target a call's answer (or error) came from.
_WHERE_FROM = ("provider", "upstream_model", "upstream_host", "upstream_request_id")
_BACKOFF_BASE = 0.5
_LEAST_ATTEMPT = 2.0  # seconds a retry needs left before the call's deadline, else it is not waited for
_BACKOFF_CAP = 8.0
_LIST_TIMEOUT = 30.0  # an upstream model list or token count is small: do not wait for it forever
# An upstream's count_tokens answers that will not change on a retry: no such endpoint (404, 405,
# 501) or one that cannot count this body (400, 422; many servers' Messages API has no counter and
# takes the path for a bad request). The local estimate serves; a 401/403 (the key) and a 429/5xx
# (passing: the client retries) are passed on.
_NO_COUNT_STATUSES = frozenset({400, 404, 405, 422, 501})
_NO_COUNTER_STATUSES = frozenset({404, 405, 501})  # ... of which these say the endpoint is missing
# A 403 about the model asked for, not the key: OpenAI's "Project `proj_x` does not have access to
# model `gpt-4.1`" (code model_not_found), "not allowed to use model ...". Not any 403 that says
# "model" ("Invalid API key for model access" is the key's).
_X_API_KEY = re.compile(r"x-api-key", re.I)
_NAMES_A_MODEL = re.compile(r"access to (?:the )?model\b|model_not_found|not (?:allowed|permitted|authori[sz]ed|entitled) "
                            r"to (?:use|access) (?:the |this )?model\b|\bmodel \S+ is not (?:available|enabled|allowed)",
                            re.I)
_NO_LIST_STATUSES = frozenset({404, 405, 501})  # an upstream's answer for a model list it does not have
_ABOUT_A_MODEL = re.compile(r"\bmodel\b|model_not_found", re.I)  # a 404 that names a model: not the path's


class StreamRest:
    """The rest of a stream whose first event went out (``Relay.begin`` returned True).

    No retry or fallback can happen from then on, so ``Proxy.messages`` relays it
    after every frame that held the request has returned.
    """

    def __init__(self, proxy: "Proxy", relay: Relay, watch: Watch, record: Dict[str, Any]) -> None:
        self.proxy, self.relay, self.watch, self.record = proxy, relay, watch, record

    def finish(self) -> None:
        try:
            self.relay.finish()
        finally:
            self.proxy.stream_ended(self.relay, self.record)
            self.proxy.watchdog.remove(self.watch)


# OpenAI's Chat refusal of what only its Responses API takes: "Function tools with reasoning_effort
# are not supported for gpt-5.4 in /v1/chat/completions. Please use /v1/responses instead", "This
# model is only supported in v1/responses and not in v1/chat/completions".
_USE_RESPONSES = re.compile(r"use\s+/?v1/responses|only\s+supported\s+in\s+/?v1/responses", re.I)


class Proxy:
    """One server's proxy: endpoints, router, upstream transport, limits, metrics."""

    def __init__(self, config: Config, metrics: Metrics, watchdog: Watchdog) -> None:
        self.config = config
        self.metrics = metrics
        self.watchdog = watchdog
        self.router = build_router(config)
        self.upstream = Upstream(config)
        watchdog.add_chore(POOL_IDLE_SECONDS / 3, self.upstream.pool.prune)  # idle ones go within 40 s
        # How each provider takes its key, found once (from its URL when not configured: ten regexes).
        self._auth_styles = {name: (p, auth_style(p.api, p.url, p.dialect, p.auth))
                             for name, p in self.router.providers.items()}
        self.tools = ToolMemo()  # the tool sets clients send, parsed, counted and translated once
        # The APIs the providers speak; another (Responses for a Responses-only model) on first use.
        self.apis: Dict[str, Any] = {name: _load_api(name, self.tools) for name in
                                     sorted({p.api for p in self.router.providers.values()})}
        self._caps: Dict[Tuple[str, str], int] = {}
        # The context windows refusals named (window minus the prompt was the room): each later
        # prompt's max_tokens is kept within it, so a window-bound model is not refused every turn.
        self._windows: Dict[Tuple[str, str], int] = {}
        self._uncounted: Dict[Tuple[str, str], bool] = {}  # models whose window refusals named no prompt size
        self._cut_at: Dict[Tuple[str, str], int] = {}  # the context a server cut a model's prompt to (Ollama)
        # Providers without a count_tokens endpoint (Ollama's, LM Studio's): not asked again, a round
        # trip and a 404 in its log each time. Bounded by the configured providers.
        self._no_counter: Set[str] = set()
        self._lock = threading.Lock()
        self._warned: Set[Any] = set()  # what was logged once already: warnings, or keys for them (a cap)
        self._random = random.Random()  # backoff jitter
        self.calibration = TokenCalibration()  # count_tokens and message_start learn per model
        # Credentials written into the configuration (a URL's ?key=, --header values, the outbound
        # proxy's password, from --proxy or the environment): fixed, found once.
        self._fixed_secrets = configured_secrets([(p.url, p.headers) for p in self.router.providers.values()]
                                                 + [(url, ()) for url in self.upstream.proxy_urls])
        if len(self.config.auth_key or "") >= MIN_FREE_TEXT_SECRET:
            # The clients' key too: an upstream error that echoes what it was sent (a gateway
            # given the key by a client, a misrouted header) must not hand it on to the client.
            # Not a short one ("test", "claude"): masking it in free text would shred the message
            # ("claude-***-model"), and every client that sees the message sent the key itself.
            self._fixed_secrets += (self.config.auth_key or "",)
        # The last two keys each provider's token source gave this server: what a program's own
        # function gave is masked without running it again (credentials.current_secrets).
        self._keys_given: Dict[str, Tuple[str, ...]] = {}
        self.routes: Dict[Tuple[str, str], Endpoint] = {
            ("POST", "/v1/messages"): self.messages,
            ("POST", "/v1/messages/count_tokens"): self.count_tokens,
            ("GET", "/v1/models"): self.list_models,
            ("GET", "/health"): self.health,
            ("GET", "/metrics"): self.show_metrics,
            ("GET", "/v1/usage"): self.show_usage,
            ("GET", "/"): self.show_usage_page,
        }

    # ------------------------------------------------------------------
    # Routing of paths.

    def route(self, method: str, path: str) -> Optional[Endpoint]:
        method = "GET" if method == "HEAD" else method  # the handler's writer leaves the body out
        if method == "GET" and path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
            return self.get_model
        return self.routes.get((method, path.rstrip("/") or "/"))

    def allowed_methods(self, path: str) -> List[str]:
        path = path.rstrip("/") or "/"
        if path.startswith("/v1/models/"):
            return ["GET", "HEAD"]
        allowed = {m for (m, p) in self.routes if p == path}
        return sorted(allowed | {"HEAD"} if "GET" in allowed else allowed)

    # ------------------------------------------------------------------
    # Small endpoints.

    def health(self, handler: ClientRequestSide, writer: Writer) -> None:
        writer.json(200, {"status": "ok"})

    def show_metrics(self, handler: ClientRequestSide, writer: Writer) -> None:
        """Prometheus text; ``?format=json`` gives the JSON summary served here before."""
        if parse_qs(handler.query).get("format") == ["json"]:
            writer.json(200, finite(self.metrics.snapshot()))
            return
        from . import prometheus  # imported on first use: most servers are never scraped

        text = prometheus.render(self.metrics.prometheus_view(), PRICES_CHECKED)
        writer.raw(200, [("Content-Type", prometheus.CONTENT_TYPE), ("Cache-Control", "no-store")], text.encode("utf-8"))

    def usage(self) -> Dict[str, Any]:
        """The ``/v1/usage`` JSON: what ``Metrics.usage`` adds up, the price date, what count_tokens learned."""
        return finite({**self.metrics.usage(time.time()), "prices_checked": PRICES_CHECKED,
                       "token_calibration": self.calibration.snapshot()})

    def show_usage(self, handler: ClientRequestSide, writer: Writer) -> None:
        writer.json(200, self.usage(), (("Cache-Control", "no-store"),))

    def show_usage_page(self, handler: ClientRequestSide, writer: Writer) -> None:
        from . import usage_page  # imported on first use: a page for a person, not for the clients

        writer.raw(200, usage_page.page_headers(), usage_page.render(self.usage()).encode("utf-8"))

    # ------------------------------------------------------------------
    # Credentials.

    def _api(self, name: str) -> UpstreamApi:
        api = self.apis.get(name)
        if api is None:
            with self._lock:
                api = self.apis.setdefault(name, _load_api(name, self.tools))
        return api

    def _log_body(self, what: str, body: Any, secrets: Optional[Tuple[str, ...]] = None) -> None:
        """``secrets``: the call's (``UpstreamCall.secrets``) for what came from or goes with its answer."""
        # Only where this server was told to (--log-bodies, log_bodies=True): a host application's
        # DEBUG logging must not get every prompt of a server started without it.
        if self.config.log_bodies and bodies_logged():  # the secrets are gathered only for a body that is logged
            log_body(what, body, self.secrets(run=True) if secrets is None else secrets)

    def secrets(self, run: bool = False) -> Tuple[str, ...]:
        """Every provider's current (and a key command's earlier) keys and the credentials in the
        configuration: masked in logs and in every upstream-derived message. ``run``: ask a
        program's own token functions too (``credentials.current_secrets``)."""
        keys = tuple(k for p in self.router.providers.values() for k in current_secrets(p.token, run))
        return self._fixed_secrets + with_halves(keys + tuple(k for given in self._keys_given.values() for k in given))

    def _auth(self, provider: Provider, client: Any, token: Optional[str] = None) -> Tuple[Tuple[str, str], ...]:
        token = key_of(provider.token, provider.name) if token is None else token
        if token and self._keys_given.get(provider.name, ())[:1] != (token,):
            with self._lock:  # two requests at once must not drop a key: read and write under it
                given = self._keys_given.get(provider.name, ())
                self._keys_given[provider.name] = (token,) + tuple(k for k in given if k != token)[:1]
        if token:
            return auth_header(self._auth_style(provider), token)
        if provider.api == "messages" and client is not None and not self.config.auth_key:
            # No key configured for an Anthropic-compatible upstream: the client's own key goes
            # (RELIABILITY.md 5 #3: the documented switch). Never the proxy's own --auth-key.
            name, key = client_key(client)
            if name:
                # As the client sent it, unless the provider says how it takes a key (a server
                # that checks only Bearer).
                return auth_header(provider.auth, key) if provider.auth else ((name, client[name]),)
        return ()

    def _auth_style(self, provider: Provider) -> str:
        known, style = self._auth_styles.get(provider.name, (None, ""))
        return style if known is provider else auth_style(provider.api, provider.url, provider.dialect, provider.auth)

    def _open(self, url: str, provider: Provider, call: UpstreamCall, *, body: Optional[bytes] = None,
              headers: Tuple[Tuple[str, str], ...] = (), method: str = "POST", client: Any = None,
              key: Optional[str] = None, read_timeout: Optional[float] = None) -> Any:
        auth = self._auth(provider, client, key)
        secrets = self.secrets() + with_halves(v.split(" ")[-1] for _, v in auth)  # a forwarded client key too
        return self.upstream.open(url, call=call, body=body, method=method, headers=headers + provider.headers,
                                  auth=auth, secrets=secrets, read_timeout=read_timeout)

    def _bounded(self, handler: ClientRequestSide, work: Callable[[UpstreamCall], Any]) -> Any:
        """Run ``work`` against the upstream under a short deadline, aborted if the client leaves."""
        call = UpstreamCall()
        watch = Watch(call, handler.connection, deadline=time.monotonic() + min(_LIST_TIMEOUT, self.config.request_timeout))
        self.watchdog.add(watch)
        try:
            return work(call)
        except ProxyError as exc:
            exc.mask(call.secrets)  # an upstream's values, whichever step quoted them
            raise
        finally:
            self.watchdog.remove(watch)

    # ------------------------------------------------------------------
    # count_tokens: local, or the provider's own count where it speaks the Messages API.

    def count_tokens(self, handler: ClientRequestSide, writer: Writer) -> None:
        started = time.monotonic()
        record: Dict[str, Any] = {"endpoint": "/v1/messages/count_tokens"}  # local once counted here
        routed: Optional[Routed] = None
        try:
            body = handler.read_json_body()
            self._log_body("client request body", body)
            record["model"], _ = peek_request(body)
            routed = self._resolve(record["model"])  # a model no route serves is a 404, as for /v1/messages
            counted = None
            if routed is not None and not self._api(routed.target.api).translates \
                    and routed.target.provider.name not in self._no_counter:
                record.update(local=False, upstream_model=routed.target.model,
                              upstream_host=urlsplit(routed.target.provider.url).hostname or "")
                counted = self._upstream_count(handler, body, routed.target)
            if counted is None:
                # Set after the count: a body it refuses is refused before any upstream, "(none)".
                counted = self._local_count(body, routed)
                record.update(local=True, upstream_model="", upstream_host="")
            writer.json(200, {"input_tokens": counted})
        except Exception as exc:
            record.update(_failure(exc))
            raise
        finally:
            record.setdefault("status", writer.status or 499)
            self._record(record, routed, started, writer.request_id)

    def _local_count(self, body: Dict[str, Any], routed: Routed) -> int:
        """The local estimate, scaled by what the routed model's own counts taught (``calibration.py``)."""
        raw = self._raw_estimate(parse_count_tokens_request(body, self.tools.parse)).tokens
        return self.calibration.estimate((routed.target.provider.name, routed.target.model), raw)

    def _upstream_count(self, handler: ClientRequestSide, body: Dict[str, Any], target: Target) -> Optional[int]:
        """The upstream's count; None when it does not offer one (``_NO_COUNT_STATUSES``, a page that is
        not JSON): the local estimate serves."""
        req = ClientRequest(body, target.model, False, handler.headers, handler.query)
        ex = self._api(target.api).count_tokens(req, target)

        def ask(call: UpstreamCall) -> Any:
            with self._open(ex.url, target.provider, call, body=ex.body, headers=ex.headers,
                            client=handler.headers) as resp:
                return read_json_body(resp, call, self.config.max_body_bytes)

        try:
            answer = self._bounded(handler, ask)
        except UpstreamHTTPError as exc:
            if exc.status in (401, 403) and key_of(target.provider.token, target.provider.name):
                raise self._refused_key(exc, target) from None  # the proxy's key, not the client's login
            if exc.status not in _NO_COUNT_STATUSES or is_anthropic_host(target.provider.url):
                # A forwarded key refused, or a passing failure (429, 5xx: the client retries); or
                # Anthropic's own answer, which has a counter: its 404 is a model it does not have.
                raise
            self._no_count(exc, target)
            return None
        except UpstreamNotJson:
            self.warn_once(f"{target.label} answered count_tokens with a body that is not JSON; "
                           "the local estimate serves")
            return None
        counted = count_or_none(answer.get("input_tokens")) if isinstance(answer, dict) else None
        if counted is None:
            # A count that is none (negative, fractional, missing): the local estimate serves, as for
            # an upstream without count_tokens. Claude Code only plans compaction on it; a 502 would
            # fail the client over a number the proxy can estimate itself.
            self.warn_once(f"{target.label} answered count_tokens without a usable input_tokens; "
                           "the local estimate serves")
        return counted

    def _no_count(self, exc: UpstreamHTTPError, target: Target) -> None:
        """An upstream that did not count (the local estimate serves): one that has no such endpoint
        (404, 405, 501) is not asked again. Not for a 404 about the model (vLLM's, llama.cpp's, a
        gateway's "model ... not found"): the provider's other models are counted there."""
        self.warn_once(f"{target.label} answered count_tokens with {exc.status}; the local estimate serves")
        if exc.status in _NO_COUNTER_STATUSES and not _ABOUT_A_MODEL.search(exc.upstream_message or ""):
            with self._lock:
                self._no_counter.add(target.provider.name)

    # ------------------------------------------------------------------
    # Models (PROTOCOL.md 4.5): what the routes serve.

    def _fetch_models(self, handler: ClientRequestSide, provider: Provider) -> List[Tuple[str, int, str]]:
        """The provider's models; an Anthropic API's list is paged (20 by default): every page,
        up to ``catalog.MAX_UPSTREAM_PAGES`` of 1,000, within the one deadline."""
        api_messages = provider.api == "messages"
        headers = (("Accept", "application/json"),) + ((("anthropic-version", "2023-06-01"),) if api_messages else ())

        def ask(call: UpstreamCall) -> List[Tuple[str, int, str]]:
            found: List[Tuple[str, int, str]] = []
            after: Optional[str] = None
            for _ in range(catalog.MAX_UPSTREAM_PAGES):
                url = (messages_url(provider.url, "/v1/models", catalog.page_request(after)) if api_messages
                       else models_url(provider.url))
                # The client's headers, as for /v1/messages: with no key configured, its own key is
                # the one the upstream knows (without it every model list was a 401).
                with self._open(url, provider, call, method="GET", headers=headers, client=handler.headers) as resp:
                    body = read_json_body(resp, call, self.config.max_body_bytes)
                # A model named with a key in it (a gateway listing what it was sent) is left out:
                # masked, its name would be no model's.
                forms = free_text_forms(call.secrets)  # once a page, not once a model (OpenRouter lists hundreds)
                found += [m for m in catalog.upstream_models(body) if not holds_secret(m[0] + " " + m[2], forms)]
                after = catalog.next_page(body) if api_messages else None
                if after is None:
                    break
            return found

        return self._bounded(handler, ask)  # type: ignore[no-any-return]

    def _models(self, handler: ClientRequestSide) -> List[Dict[str, Any]]:
        listed = {name: catalog.model_info(name, target) for name, target in self.router.served()}
        for provider in self.router.passes_names_through():
            try:
                fetched = self._fetch_models(handler, provider)
            except ProxyError as exc:
                if exc.status in _NO_LIST_STATUSES:
                    # No model list there (llama.cpp, gateways): an empty one, as Anthropic's never
                    # 404s; a 404 on the list would read as a wrong base URL to the client.
                    self.warn_once(f"{provider.name} has no model list (upstream {exc.status}); "
                                   "its models are not listed")
                    continue
                if listed:
                    log.info("could not list the models of %s (%s); listing the routed ones", provider.name, exc.message)
                    continue
                raise
            for name, created, display in fetched:
                routed = self.router.resolve(name)
                if name not in listed and routed is not None and routed.target.provider is provider:
                    listed[name] = catalog.model_info(name, routed.target, created, display)
        return list(listed.values())

    def list_models(self, handler: ClientRequestSide, writer: Writer) -> None:
        page = catalog.page_query(handler.path)  # a bad limit fails before any upstream call
        writer.json(200, catalog.paginate(self._models(handler), page))

    def get_model(self, handler: ClientRequestSide, writer: Writer) -> None:
        wanted = unquote(handler.route_path[len("/v1/models/"):])
        routed = self.router.resolve(wanted)
        if routed is not None and routed.route.target.model is not None:
            writer.json(200, catalog.model_info(wanted, routed.target))  # every such name is served
            return
        for info in self._models(handler) if routed is not None else []:
            if info["id"] == wanted:
                writer.json(200, info)
                return
        raise ProxyError(f"model {wanted!r} not found", status=404)

    # ------------------------------------------------------------------
    # /v1/messages.

    def messages(self, handler: ClientRequestSide, writer: Writer) -> None:
        started = time.monotonic()
        record: Dict[str, Any] = {"endpoint": "/v1/messages"}
        routed: Optional[Routed] = None
        try:
            req = self._client_request(handler)  # a body that is no request is a call too (a 4xx)
            record.update(model=req.model, stream=req.stream)
            routed = self._resolve(req.model)
            rest = self._messages(req, routed, handler, writer, record)
            # A stream whose first event went out can no longer be retried: let go of the
            # request (for a Claude Code turn about 130 KiB: the JSON, its parsed form, the
            # upstream body) before relaying the rest, which may take minutes.
            del req
            if rest is not None:
                rest.finish()
        except Exception as exc:
            record.update(_failure(exc))
            raise
        finally:
            record.setdefault("status", writer.status or 499)
            self._record(record, routed, started, writer.request_id)

    def _client_request(self, handler: ClientRequestSide) -> ClientRequest:
        body = handler.read_json_body()
        self._log_body("client request body", body)
        model, stream = peek_request(body)
        return ClientRequest(body, model, stream, handler.headers, handler.query)

    def _resolve(self, model: str) -> Routed:
        routed = self.router.resolve(model)
        if routed is None:
            raise ProxyError(f"model {model!r}: no route serves it and there is no default route "
                             "(add a route matching '*', or start with --model)", status=404)
        return routed

    def _messages(self, req: ClientRequest, routed: Routed, handler: ClientRequestSide, writer: Writer,
                  record: Dict[str, Any]) -> Optional["StreamRest"]:
        req = self._parsed(self._api(routed.target.api), req)
        if req.parsed is not None and all(self._api(t.api).translates for t in routed.targets):
            # No target forwards the JSON: its dicts and lists go now, not when the upstream has
            # answered (the parsed request holds the strings it needs; ~25 KiB a Claude Code turn).
            req.body.clear()
        local = self._answered_here(req, routed)
        if local is not None:
            # Claude Code's quota probe, and max_tokens 0, which only warms a cache: neither needs
            # the upstream. Any other one-token request is a question (a yes/no classifier) and goes.
            text, reason = ("ok", "end_turn") if local.max_tokens == 1 else ("", "max_tokens")
            record.update(local=True, stop_reason=reason)
            self._reply(req, writer, local_message(req.model, text, reason, (1, 1) if text else (0, 0)))
            return None
        # Non-streaming calls get one wall-clock deadline over every attempt; a stream may run
        # as long as it keeps talking.
        deadline = None if req.stream else time.monotonic() + self.config.request_timeout
        watch = Watch(UpstreamCall(), handler.connection, deadline)
        self.watchdog.add(watch)
        rest = None
        try:
            rest = self._attempts(req, routed, writer, watch, record)
            return rest
        finally:
            if rest is None:
                self.watchdog.remove(watch)  # else the rest of the stream still needs it

    def _answered_here(self, req: ClientRequest, routed: Routed) -> Optional[MessagesRequest]:
        """The request, when it is one the proxy answers itself (the quota probe, ``max_tokens: 0``).
        Forwarded to another server than Anthropic's, it is parsed for that here: Ollama and vLLM
        refuse ``max_tokens: 0``, and a CPU server spends a prompt evaluation on the probe. Anthropic
        itself gets both: its answer to the probe carries the account's rate limits."""
        parsed = req.parsed
        if parsed is None and req.body.get("max_tokens") in (0, 1) and type(req.body.get("max_tokens")) is int \
                and not is_anthropic_host(routed.target.provider.url):
            try:
                parsed = parse_messages_request(req.body, self.tools.parse)
            except ProxyError:
                return None  # the upstream says what is wrong with it
        if parsed is not None and (parsed.max_tokens == 0 or is_quota_probe(parsed)):
            return parsed
        return None

    def _parsed(self, api: UpstreamApi, req: ClientRequest) -> ClientRequest:
        """``req`` with what ``api`` needs parsed (once: Chat Completions and Responses parse alike)."""
        if req.parsed is not None or not api.translates:
            return req
        parsed = api.parse(req.body)
        shared = self.tools.definitions(parsed.tools)
        if shared is not None:
            # An identical tool list another request sent first: hold that one, let this copy go
            # (a Claude Code turn's is ~23 KiB, held until the upstream answers).
            req.body["tools"] = shared
        key = session_cache_key(req.headers, parsed.user_id)
        return ClientRequest(req.body, req.model, req.stream, req.headers, req.query, parsed, key)

    # ------------------------------------------------------------------
    # Retries and fallbacks: only before the first byte reached the client.

    def _attempts(self, req: ClientRequest, routed: Routed, writer: Writer, watch: Watch,
                  record: Dict[str, Any]) -> Optional["StreamRest"]:
        """The route's target, then each fallback, each tried up to 1 + ``--retries`` times.

        The client hears nothing of a failure another attempt gets past; when all
        fail it gets the last error, mapped as any upstream error is -- unless that is one a client
        would not try again and an earlier target's was (``_to_tell``).
        """
        failure: Optional[ProxyError] = None
        # An earlier target's error a client tries again after, and the record's fields naming where
        # it came from (the record names the target whose error the client gets).
        passing: Optional[Tuple[ProxyError, Dict[str, Any]]] = None
        last = routed.targets[-1]
        for target in routed.targets:
            passing = _passing(failure, record) or passing
            api = self._api(target.api)
            req = self._parsed_for(api, req, target, passing)
            for attempt in range(self.config.retries + 1):
                if failure is not None and client_left(watch):
                    raise ClientGone()  # left during the failed attempt or the wait after it
                _count_attempt(record, target)
                try:
                    return self._attempt(api, req, target, writer, watch, record)
                except ProxyError as exc:
                    self._failed(exc, target, writer, watch, passing, record)
                    failure = exc
                    delay = self._next_step(exc, target, target is last, attempt, watch, record)
                    if delay is None:
                        break
                    self._pause(delay, watch, exc)
        assert failure is not None
        raise _to_tell(failure, passing, record)

    def _failed(self, exc: ProxyError, target: Target, writer: Writer, watch: Watch,
                passing: Optional[Tuple[ProxyError, Dict[str, Any]]], record: Dict[str, Any]) -> None:
        """Count a failed attempt; raise what the client gets when no other attempt may follow."""
        exc.mask(watch.call.secrets)  # an upstream's values, whichever step quoted them
        if not _own_abort(watch) and not exc.local:
            self.metrics.attempt_failed(target.provider.name, target.model, exc.status)
        if writer.started or _own_abort(watch):
            raise exc  # a stream's error event, or our own abort: as it is
        if not self._retryable(exc, watch):
            told = _to_tell(exc, passing, record)
            if told is exc:
                raise exc
            raise told from None

    def _next_step(self, exc: ProxyError, target: Target, is_last: bool, attempt: int, watch: Watch,
                   record: Dict[str, Any]) -> Optional[float]:
        """After a failure another attempt may follow: the pause before this target's next try, or
        None for the next target (or none left). Says which in the log."""
        delay, why = self._retry_pause(exc, attempt, watch)
        then = (f"retrying in {delay:.1f} s" if delay is not None else
                "trying the next target" if not is_last else "no target left")
        if not is_last or exc.status not in _NOT_HERE_STATUSES:
            # (A 404 with no target left is the client's answer, logged as such: said once.)
            log.warning("%s %s (%s)%s; %s", target.label, _what_it_did(exc), exc.message, why, then)
        if delay is not None or not is_last:
            carry_spend(record, target.facts)  # another attempt follows, and starts afresh
        return delay

    def _retry_pause(self, exc: ProxyError, attempt: int, watch: Watch) -> Tuple[Optional[float], str]:
        """The pause before this target is tried again, or None and why not (the log's words)."""
        # Not for a spent quota, nor a refused key: those go to the next target at once.
        if (attempt >= self.config.retries or says_no_retry(exc)
                or exc.status in _NEXT_TARGET_STATUSES or exc.status in _NOT_HERE_STATUSES):
            return None, ""
        delay, why = self._retry_delay(exc, attempt + 1)
        if delay is not None and watch.deadline is not None \
                and time.monotonic() + delay + _LEAST_ATTEMPT >= watch.deadline:
            # A pause the call's deadline would end (or leave the retry no time): the client
            # got a 504 "did not finish in time" for an upstream that had answered.
            return None, f", a {delay:.1f} s wait would leave no time within --request-timeout"
        return delay, why

    def _parsed_for(self, api: UpstreamApi, req: ClientRequest, target: Target,
                    passing: Optional[Tuple[ProxyError, Dict[str, Any]]]) -> ClientRequest:
        """The request parsed for ``api``. A fallback of another API that cannot take it (a file_id, on
        a translated API) leaves the client the earlier target's error it may try again after (a 529),
        not a 400 that stops it; the record names that target already."""
        try:
            return self._parsed(api, req)
        except ProxyError as exc:
            if passing is None or _clients_retry(exc):
                raise
            log.warning("%s cannot take this request (%s): the client gets the earlier %d", target.label,
                        exc.message, passing[0].status)
            raise passing[0] from None

    def _attempt(self, api: UpstreamApi, req: ClientRequest, target: Target, writer: Writer, watch: Watch,
                 record: Dict[str, Any]) -> Optional["StreamRest"]:
        """One call to one target; a stream that has begun comes back as the rest to relay."""
        call = UpstreamCall()
        watch.call, watch.tick = call, None
        parsed = req.parsed
        if parsed is not None and "estimate_raw" not in record:
            # Counted while the upstream reads the request, off the path to a stream's first byte.
            call.meanwhile = lambda: self._count_into(record, parsed)
        _fresh_counts(record)
        resp, ex = self._opened(api, req, target, call, watch, record)
        try:
            return self._answer(api, req, ex, resp, writer, call, watch, record)
        except ProxyError as exc:
            changed = self._refused_first(exc, api, req, target, ex, writer)
            if changed is None:
                raise
        # A refusal said as the stream's first event, not as an HTTP 400 (Responses' reasoning another key
        # cannot read): nothing reached the client, so the request goes again changed at once, as for the
        # HTTP 400 (the client got the error). Once: a second such refusal is the client's answer.
        self.metrics.attempt_failed(target.provider.name, target.model, 400)
        record["attempts"] = record.get("attempts", 0) + 1
        _fresh_counts(record)
        resp, ex = self._opened(api, req, target, call, watch, record, changed)
        try:
            return self._answer(api, req, ex, resp, writer, call, watch, record)
        except ProxyError as exc:
            self._refused_first(exc, api, req, target, ex, writer)  # for what it learns (or unlearns) only
            raise

    def _answer(self, api: UpstreamApi, req: ClientRequest, ex: Exchange, resp: Any, writer: Writer,
                call: UpstreamCall, watch: Watch, record: Dict[str, Any]) -> Optional["StreamRest"]:
        """The upstream's answer to the client: a JSON one whole, a stream's rest to relay once begun."""
        relayed = _relayed(api, resp.headers, call.secrets)
        if req.stream and ex.stream:
            return self._stream(api, req, ex, resp, writer, call, watch, record, relayed)
        self._json(api, req, ex, resp, writer, call, record, relayed)
        return None

    def _refused_first(self, exc: ProxyError, api: UpstreamApi, req: ClientRequest, target: Target, ex: Exchange,
                       writer: Writer) -> Optional[Exchange]:
        """For a refusal a stream said as its first event (nothing reached the client), what the API
        learns from it, as from its HTTP 400: the request changed for it, or None."""
        if exc.status != 400 or writer.started or not (req.stream and ex.stream):
            return None
        return api.recover(exc, req, target, ex, ex.max_tokens)

    def _opened(self, api: UpstreamApi, req: ClientRequest, target: Target, call: UpstreamCall, watch: Watch,
                record: Dict[str, Any], changed: Optional[Exchange] = None) -> Tuple[Any, Exchange]:
        """Send the request (``changed``: this one, made after a refusal) and read the answer's head."""
        streamed = watch.deadline is None
        if streamed:
            # A stream has no deadline, only the idle timeout between reads: an upstream sending
            # its head a byte at a time would hold the client forever, before any ping can go out.
            watch.deadline_reason = "head"  # first: the watchdog thread may look at any moment
            watch.deadline = time.monotonic() + self.config.connect_timeout + self.config.idle_timeout
        record["awaiting"] = False
        sent_before = call.requests
        try:
            self._refuse_what_would_be_cut(req, target, record)
            room = self._window_room(req, target, record) if changed is None else None
            resp, ex = self._send(api, req, target, call, None if streamed else watch.deadline, room, changed)
        except UpstreamHTTPError as exc:
            exc.headers += _relayed(api, exc.upstream_headers, call.secrets)  # a 429's rate limits too
            record["upstream_request_id"] = _upstream_request_id(exc.upstream_headers, call.secrets)
            raise
        except BaseException:
            # Left, aborted or timed out while the upstream had the whole prompt: what it spent is
            # not known. A refusal (above) or a request that never went out spent nothing.
            record["lost"] = record.get("lost", False) or call.sent
            raise
        finally:
            if streamed:
                watch.deadline = None
                watch.deadline_reason = "deadline"
            # This attempt counts once already; a request sent again within it (changed after a
            # refusal, or on a fresh connection) is another call the upstream may have had.
            record["attempts"] = record.get("attempts", 0) + max(0, call.requests - sent_before - 1)
        record["upstream_request_id"] = _upstream_request_id(resp.headers, call.secrets)
        record["awaiting"] = True  # until the answer's usage (or a refusal as a stream's first event) is in
        return resp, ex

    def _retryable(self, exc: ProxyError, watch: Watch) -> bool:
        if _own_abort(watch):
            return False  # our own abort (the client left, shutdown, the deadline): nothing to retry
        # A refused forwarded key is the client's login to fix (Claude Code renews it on a 401): a
        # fallback would hide it, and bill another provider for every turn.
        return exc.status in _RETRY_STATUSES or exc.status in _NOT_HERE_STATUSES and isinstance(exc, UpstreamHTTPError) \
            or (exc.status in _NEXT_TARGET_STATUSES and isinstance(exc, UpstreamHTTPError) and exc.own_key)

    def _retry_delay(self, failure: ProxyError, attempt: int) -> Tuple[Optional[float], str]:
        """The wait before retry ``attempt``: the upstream's Retry-After, else jittered exponential
        backoff. None (and why, for the log) when the upstream asks for more than ``--retry-max-wait``.
        """
        asked = retry_after(failure.headers, time.time())
        if asked is not None and asked > self.config.retry_max_wait:
            return None, f", asks for a {asked:g} s rest (more than --retry-max-wait)"
        if asked is not None:
            return asked, ""
        delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (attempt - 1))
        return delay * (0.5 + self._random.random() / 2), ""  # jitter: clients that failed together retry apart

    def _pause(self, delay: float, watch: Watch, last: ProxyError) -> None:
        """Wait before a retry; the wait ends early (with the matching error) when the client
        leaves or the deadline passes, and with ``last``, the answer that led to it, when the proxy
        shuts down: the client hears what the upstream said, not that the proxy is going."""
        pause = Pause()
        watch.call = pause
        if self.watchdog.pauses_ended is not None:  # the shutdown began as the attempt failed
            pause.abort(self.watchdog.pauses_ended)
        if pause.wait(delay):
            if pause.abort_reason == "shutdown":
                raise last
            raise abort_error(pause.abort_reason) or ProxyError("aborted")

    # ------------------------------------------------------------------
    # Upstream round trip: a changed request for refusals it can get past.

    def _send(self, api: UpstreamApi, req: ClientRequest, target: Target, call: UpstreamCall,
              deadline: Optional[float], room: Optional[int] = None,
              ready: Optional[Exchange] = None) -> Tuple[Any, Exchange]:
        """Prepare and POST; a refusal the request can be changed for is tried again, a few times.

        "max_tokens too large" teaches the named limit (PROTOCOL.md 1.1, remembered per
        model); a refused key (401, 429) gives way to the provider's next key or a fresh
        one from its key command; an API may know refusals of its own (``recover``: a refused
        optional field, Responses reasoning another key cannot read).
        """
        ex = ready or self._prepare(api, req, target, room)
        call.deadline = deadline
        changes = key_changes = 0
        key = key_of(target.provider.token, target.provider.name)
        while True:
            self._log_body("upstream request body", ex.body)
            try:
                return self._open(ex.url, target.provider, call, body=ex.body, headers=ex.headers,
                                  client=req.headers, key=key, read_timeout=_answer_wait(ex, deadline)), ex
            except UpstreamHTTPError as exc:
                other = self._other_key(exc, target, key) if key_changes < alternatives(target.provider.token) else None
                if other is not None:
                    key, key_changes = other, key_changes + 1
                    continue
                changed = self._changed_request(exc, api, req, target, ex) if changes < _MAX_TOKENS_RETRIES else None
                if changed is None:
                    self._with_estimate(exc, req, target)
                    refusal = self._refusal(exc, target, key)
                    if refusal is exc:
                        raise
                    raise refusal from None
                # Refused, and sent again changed: a round trip spent, which the call's result hides
                # (a refusal every turn is only seen here: reasoning another key cannot read).
                self.metrics.attempt_failed(target.provider.name, target.model, exc.status)
                changes += 1
                ex = changed

    def _with_estimate(self, exc: UpstreamHTTPError, req: ClientRequest, target: Target) -> None:
        """vLLM's "prompt is too long" names no prompt size (its "at least W - O + 1"): the proxy's
        estimate is said beside the window, as "N tokens > M maximum", where it is over the window.
        Claude Code reads those two numbers for how much of the history to drop (probe AK D10)."""
        if not exc.message.startswith(f"{PROMPT_TOO_LONG}: ") or not prompt_uncounted(exc.upstream_message):
            return
        window, guess = read_sizes(exc.upstream_message).limit, self._prompt_guess(req, target)
        if window is not None and guess is not None and guess > window:
            where = f"upstream {exc.status}" if exc.status_said else "upstream"
            said = exc.message[len(PROMPT_TOO_LONG) + 2:]
            exc.message = f"{PROMPT_TOO_LONG}: {guess} tokens > {window} maximum (the proxy's estimate; {where}: {said})"

    def _refusal(self, exc: UpstreamHTTPError, target: Target, key: str) -> UpstreamHTTPError:
        """An upstream's refusal no changed request gets past, as the attempt's error."""
        exc.own_key = bool(key)  # a refusal of the proxy's key may go to a fallback; the client's, never
        if exc.status in (401, 403) and key:
            return self._refused_key(exc, target)
        if exc.status == 401 and not (target.provider.api == "messages" and not self.config.auth_key) \
                and not carries_a_credential(target.provider):
            return self._no_key_sent(exc, target)  # the client's key is not passed on either, nor a --header's
        if exc.status == 404:
            # A base URL without its /v1, a model name the upstream lacks: Claude Code
            # shows a 404 only as "an issue with the selected model", so the log says it.
            self.warn_once(f"{target.label}: {exc.message}")
        elif exc.status == 400 and _USE_RESPONSES.search(exc.upstream_message):
            self.warn_once(f"{target.label} takes this request only on the Responses API (\"use /v1/responses\"): "
                           "give --upstream-api responses, or \"api\": \"responses\" to its provider")
        return exc

    def _other_key(self, exc: UpstreamHTTPError, target: Target, key: str) -> Optional[str]:
        """After a 401 or 429 to ``key``, the provider's next key (a ring's next, a key command's or a
        program's function's new one) if there is one that differs: the same key again would only be
        refused again, a second round trip each request."""
        token = target.provider.token
        if exc.status not in (401, 429) or not key or not refused(token, key, exc.status):
            return None
        other = key_of(token, target.provider.name)
        if not other or other == key:
            return None
        self.metrics.attempt_failed(target.provider.name, target.model, exc.status)  # a round trip spent
        label = ring_label(token, key) if exc.status == 401 else None
        if label is not None:  # the next one served, and which of several keys was bad was never said
            self.warn_once(f"{target.provider.name} refused its key {label} (upstream 401); the next one serves "
                           "meanwhile: check that key")
        return other

    def _refused_key(self, exc: UpstreamHTTPError, target: Target) -> UpstreamHTTPError:
        """The upstream refused the proxy's own key: the client is told whose key it was (Claude
        Code would take a bare 401 for its own login gone), the log says it once. A 403 that names
        the model ("Project ... does not have access to model gpt-4.1") is the model's, not the key's."""
        if exc.status == 403 and _NAMES_A_MODEL.search(exc.upstream_message):
            self.warn_once(f"{target.provider.name} does not let the key claudeproxy sends use {target.model!r} "
                           "(upstream 403); check the route's model or the account's access to it")
            return exc
        self.warn_once(f"{target.provider.name} refused the key claudeproxy sends it (upstream {exc.status}); "
                       "check the provider's key setting")
        # Claude Code shows any message naming "x-api-key" (Anthropic's own 401 says "invalid x-api-key")
        # as "Not logged in · Please run /login", which its user's login is not the cause of.
        said = _X_API_KEY.sub("API key", exc.message)
        exc.message = f"{said} (the key claudeproxy sends to provider {target.provider.name!r})"
        return exc

    def _no_key_sent(self, exc: UpstreamHTTPError, target: Target) -> UpstreamHTTPError:
        """A 401 from a provider the proxy sends no key (a local server that turned out to want one):
        Claude Code said "Failed to authenticate", which means its own login to it, and nothing said
        the proxy had sent no key, nor how to give one (probe AN 4)."""
        self.warn_once(f"{target.provider.name} answered 401 and claudeproxy sends it no key: give it one "
                       "(--api-key-env NAME, or api_key_env in a config file)")
        exc.message = f"{_X_API_KEY.sub('API key', exc.message)} (claudeproxy sends provider {target.provider.name!r} no key)"
        return exc

    def _changed_request(self, exc: UpstreamHTTPError, api: UpstreamApi, req: ClientRequest, target: Target,
                         ex: Exchange) -> Optional[Exchange]:
        limit = None
        uncounted = exc.status == 400 and prompt_uncounted(exc.upstream_message)
        if exc.status == 400:
            guess = self._prompt_guess(req, target) if uncounted else None
            limit = max_tokens_limit(exc.upstream_message, ex.max_tokens or 0, guess)
        if limit is not None:
            cap = lasting_cap(exc.upstream_message, limit)
            if cap is not None:
                self._learn_cap(target, cap)  # the model's: later requests need not be refused first
            else:
                self._learn_window(target, read_sizes(exc.upstream_message).limit, uncounted)
            return self._prepare(api, req, target, limit)
        return api.recover(exc, req, target, ex, self._cap(target, ex.max_tokens))  # within the room it had

    def _cap(self, target: Target, limit: Optional[int] = None) -> Optional[int]:
        caps = [c for c in (target.output_cap, self._learned_cap(target), limit) if c]
        return min(caps) if caps else None

    def _prepare(self, api: UpstreamApi, req: ClientRequest, target: Target, limit: Optional[int]) -> Exchange:
        cap = self._cap(target, limit)
        ex: Exchange = api.prepare(req, target, cap)
        for warning in ex.warnings:
            self.warn_once(warning)
        asked = req.parsed.max_tokens if req.parsed is not None else req.body.get("max_tokens")
        if cap is not None and type(asked) is int and asked > cap:
            self._say_cap(target, cap, asked, cut=cap == limit)
        if req.parsed is not None and req.parsed.mcp_servers:  # translated: no API of ours can carry them
            self.warn_once(f"dropped MCP servers the upstream cannot connect to (mcp_servers): "
                           f"{', '.join(req.parsed.mcp_servers)}")
        return ex

    def _say_cap(self, target: Target, cap: int, asked: int, cut: bool) -> None:
        """Claude Code asks for 128000 every time: a cap is said once a model and cap (FIELD-NOTES 5),
        and the line is not even made again unless DEBUG wants it. The room beside a prompt (``cut``)
        differs each request: said once a model, at WARNING, since near the window an answer may end
        at max_tokens (a compaction summary, a Write's input; probe AK D9), then at DEBUG."""
        if cut:
            first = self._first_time(("window cut", target.label))
            if first or log.isEnabledFor(logging.DEBUG):
                log.log(logging.WARNING if first else logging.DEBUG, "max_tokens is cut to %d for %s (asked for %d): "
                        "the room beside the prompt in its context window; an answer, a tool call's input or a "
                        "compaction summary this near the window may end at max_tokens (said once a model)",
                        cap, target.label, asked)
            return
        first = self._first_time(("cap", cap, target.label))
        if first or log.isEnabledFor(logging.DEBUG):
            log.log(logging.INFO if first else logging.DEBUG, "max_tokens is capped at %d for %s, its output "
                    "limit (asked for %d; said once)", cap, target.label, asked)

    def _prompt_guess(self, req: ClientRequest, target: Target) -> Optional[int]:
        """The prompt's tokens by the local estimate, calibrated for the model once its counts taught it,
        without images and PDF pages (guessed wide); for a refusal that did not count the prompt."""
        parsed = self._for_estimate(req)
        if parsed is None:
            return None
        estimate = self._raw_estimate(parsed)
        return self.calibration.estimate((target.provider.name, target.model), estimate.tokens - estimate.media)

    def _for_estimate(self, req: ClientRequest) -> Optional[MessagesRequest]:
        """The request parsed; a forwarded one is parsed here, for its estimate (where a window needs
        it); one the parser would refuse gets none."""
        if req.parsed is not None:
            return req.parsed
        try:
            return parse_count_tokens_request(req.body, self.tools.parse)
        except ProxyError:
            return None

    def _learn_window(self, target: Target, window: Optional[int], uncounted: bool = False) -> None:
        if window:
            key = (target.provider.name, target.model)
            with self._lock:
                remember(self._windows, key, window)
                if uncounted:
                    remember(self._uncounted, key, True)

    def _window_room(self, req: ClientRequest, target: Target, record: Dict[str, Any]) -> Optional[int]:
        """The output that fits beside this prompt in the window a refusal named for the model: the
        calibrated estimate of its text, less a margin. Only once the calibration knows the model
        (the raw estimate leans high: 634 tokens of answer where 8,000 fit), without its images and
        PDF pages (guessed wide), and not under ``_LEAST_WINDOW_ROOM``: the upstream's refusal then
        names the room exactly, as it did before any window was known. (Not a quarter of what was
        asked: Claude Code asks for 128,000, and a 40,960 window beside a 12,000-token prompt was
        refused every turn again.) Where the model's refusals do not count the prompt (vLLM's "at
        least": ``_uncounted``), the estimate serves as it is, calibrated or not, forwarded requests
        parsed for it: the refusal's retry would get that same room, one round trip later, every turn.
        None where it does not apply."""
        key = (target.provider.name, target.model)
        with self._lock:
            window = self._windows.get(key) or target.facts.context_window  # learned, else the facts' (probe AK 4)
            uncounted = key in self._uncounted
        if window is None or (self.calibration.ratio(key) is None and not uncounted):
            return None
        parsed = self._for_estimate(req) if uncounted else req.parsed
        if parsed is None:
            return None
        room = room_beside(window, self._text_estimate(key, record, parsed))
        if uncounted:
            # Its refusal would not say the room: the least worth an answer, so that one refusal at
            # most says the prompt does not fit (the full budget halved took up to four; probe AK).
            return max(room, _LEAST_WINDOW_ROOM)
        return room if room >= _LEAST_WINDOW_ROOM else None

    def _refuse_what_would_be_cut(self, req: ClientRequest, target: Target, record: Dict[str, Any]) -> None:
        """``prompt is too long`` said here, for a server that cuts a prompt to its context without a
        word (Ollama, to num_ctx) where the estimate is over that context: the context a cut showed
        (``_cut_prompt``), else the model's window in the facts or the models table. Sent, the model
        saw only the prompt's end, and Claude Code, told the kept count, never compacted (probe AK 1)."""
        if target.dialect is None or not target.dialect.cuts_prompts or req.parsed is None:
            return
        key = (target.provider.name, target.model)
        with self._lock:
            window = self._cut_at.get(key) or target.facts.context_window
        if window is None:
            return
        prompt = self._text_estimate(key, record, req.parsed)
        if prompt > window:
            exc = ProxyError(f"{PROMPT_TOO_LONG}: {prompt} tokens > {window} maximum (the proxy's estimate: "
                             f"{target.label} cuts a longer prompt to its context, the conversation's start lost)",
                             status=400, error_type="invalid_request_error")
            exc.local = True  # no upstream attempt failed
            raise exc

    def _text_estimate(self, key: Tuple[str, str], record: Dict[str, Any], parsed: MessagesRequest) -> int:
        """The prompt's tokens as the calibration for ``key`` scales the estimate, without its images
        and PDF pages (guessed wide); counted into the record once."""
        self._count_into(record, parsed)
        return self.calibration.estimate(key, record["estimate_raw"] - record.get("estimate_media", 0))

    def _learned_cap(self, target: Target) -> Optional[int]:
        with self._lock:
            return self._caps.get((target.provider.name, target.model))

    def _learn_cap(self, target: Target, cap: int) -> None:
        key = (target.provider.name, target.model)
        with self._lock:
            remember(self._caps, key, min(cap, self._caps.get(key, cap)))
        log.warning("upstream limits %s to %d output tokens; max_tokens is capped from now on", target.label, cap)

    def warn_once(self, warning: str) -> None:
        """A warning that every request would repeat (Claude Code sends web_search each time) is
        logged once at WARNING, then at DEBUG."""
        log.log(logging.WARNING if self._first_time(warning) else logging.DEBUG, "%s", warning)

    def _first_time(self, said: Any) -> bool:
        """Is this the first time ``said`` (a warning, or a key for one) comes up on this server?"""
        with self._lock:
            first = said not in self._warned
            if len(self._warned) >= _WARNINGS_REMEMBERED:
                self._warned.clear()  # they name client-chosen models and tools: once more each, then
            self._warned.add(said)
        return first

    # ------------------------------------------------------------------
    # Answers.

    def _json(self, api: UpstreamApi, req: ClientRequest, ex: Exchange, resp: Any, writer: Writer, call: UpstreamCall,
              record: Dict[str, Any], relayed: Tuple[Tuple[str, str], ...] = ()) -> None:
        with resp:
            raw = read_whole_body(resp, call, self.config.max_body_bytes * 2)
        try:
            obj = json_body(raw, resp)
        except UpstreamNotJson:
            if not _event_stream(resp):
                raise
            # A gateway that streams whatever it is asked (it was a 502, "not JSON"); a JSON body
            # it labels as a stream is still read as JSON (above).
            message = self._streamed_whole(api, req, ex, raw, call, record)
            self._reply(req, writer, _as_shown(api, req, message), call.secrets, relayed)
            return
        message = self._answer_of(api, req, ex, obj, call, record)
        self._reply(req, writer, _as_shown(api, req, message), call.secrets, relayed)
        self._estimate(req, record)  # only to learn from the upstream's count (calibration.py): after the answer

    def _answer_of(self, api: UpstreamApi, req: ClientRequest, ex: Exchange, obj: Any, call: UpstreamCall,
                   record: Dict[str, Any]) -> Dict[str, Any]:
        """The client's message from an upstream's JSON answer, and its usage and cost in the record."""
        self._log_body("upstream response body", obj, call.secrets)
        try:
            message, warnings = api.from_json(req, ex, obj, call.secrets)
        except ProxyError:
            # A 200 that is a failure (DeepSeek's overload, a failed Response) may say what it used:
            # the upstream bills that, whatever comes next (a retry carries it: spend.carry_spend).
            if api.translates and api.reports_usage(obj):
                record.update(**usage_fields(api.usage_of(obj)), billed_cost=api.billed_cost(ex, obj))
            raise
        for warning in warnings:
            log.warning("%s", warning)
        # A forwarded answer's usage is the upstream's own: the client's copy has 0 filled in where
        # it gave none (the SDKs need the fields), and those are no counts it reported.
        reported = obj
        if api.translates:
            said = api.reports_usage(obj)
            message = as_answered(message, "msg_" + new_id(), 0 if said else self._estimate(req, record), said)
            reported = message if said else {}  # no usage in the answer: the record gets no count at all
        record.update(stop_reason=message.get("stop_reason"), **usage_fields(reported.get("usage")))
        record["billed_cost"] = api.billed_cost(ex, obj)
        return message

    def _streamed_whole(self, api: UpstreamApi, req: ClientRequest, ex: Exchange, raw: bytes, call: UpstreamCall,
                        record: Dict[str, Any]) -> Dict[str, Any]:
        """The message of a whole event stream (``raw``) for a request that asked for none: the
        API's fold, as for a stream request, its events made whole as the SDKs accumulate them.
        An upstream error event, or a stream that ends without its end, is the error."""
        fold: StreamFold = api.fold(req, ex, message_id="msg_" + new_id(), input_tokens=self._estimate(req, record),
                                    secrets=call.secrets)
        try:
            events = fold.feed_line(raw)  # one or more whole lines: all of them (an error event raises)
        except ProxyError as exc:
            if not exc.events_before and not fold.began:
                # The upstream's error as its first event: a refusal, which spent nothing (as for a
                # stream, ``relay.refused``); a fallback's cost is then the call's whole cost.
                record.update(**stream_usage_fields(fold.usage, True))
            raise
        if not fold.complete:
            rest, failure = fold.end(True)  # the body ended as HTTP says (read_whole_body checked)
            if failure is not None:
                raise failure
            events += rest
        for warning in getattr(fold, "warnings", ()):
            log.warning("%s", warning)
        record.update(stop_reason=fold.stop_reason, billed_cost=fold.billed_cost,
                      **stream_usage_fields(fold.usage, False))
        try:
            return message_from_events([e for e in events if e.get("type") != "ping"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a forwarded upstream's events
            raise UpstreamUnavailable(f"upstream's event stream makes no message ({exc})") from None

    def _reply(self, req: ClientRequest, writer: Writer, message: Dict[str, Any],
               secrets: Optional[Tuple[str, ...]] = None, headers: Tuple[Tuple[str, str], ...] = ()) -> None:
        self._log_body("client response body", message, secrets)
        if req.stream:
            writer.start_stream(headers)
            writer.events(events_for_message(message), end=True)
        else:
            writer.json(200, message, headers)

    def _stream(self, api: UpstreamApi, req: ClientRequest, ex: Exchange, resp: Any, writer: Writer, call: UpstreamCall,
                watch: Watch, record: Dict[str, Any], relayed: Tuple[Tuple[str, str], ...] = ()
                ) -> Optional["StreamRest"]:
        """Relay the stream until its first event went out (or it ended); the rest comes back."""
        estimate = self._estimate(req, record)
        # The message id is the proxy's own, never the upstream's (see ``_json``).
        # The call's secrets, not only the proxy's: a forwarded client key is masked in the stream's
        # error event, the relay's warning and the logged lines as in a plain error answer.
        fold: StreamFold = api.fold(req, ex, message_id="msg_" + new_id(), input_tokens=estimate,
                                    secrets=call.secrets)
        if self.config.log_bodies and bodies_logged():
            fold = cast(StreamFold, ObservedFold(fold, call.secrets))  # every line and event at DEBUG
        shown = cast(Writer, _ThinkingOmitted(writer)) if _thinking_omitted(req) else writer
        if _one_call(api, req):
            shown = cast(Writer, _FirstCallOnly(shown))
        relay = Relay(shown, fold, call, self.config, relayed)
        watch.tick = relay.tick
        self.metrics.stream_began()
        rest = None
        try:
            if relay.begin(resp):
                rest = StreamRest(self, relay, watch, record)
                return rest
            return None
        finally:
            if rest is None:
                # Ended or failed here. A failed one's tick must not outlive it: in the backoff before
                # a retry it would begin the client's stream with this attempt's message_start (at
                # the first ping), and the retry would send a second.
                watch.tick = None
                self.stream_ended(relay, record)

    def stream_ended(self, relay: Relay, record: Dict[str, Any]) -> None:
        """What a stream leaves: the fold's warnings, the record's usage and ending, the gauge."""
        self.metrics.stream_ended()
        fold = relay.fold
        for warning in getattr(fold, "warnings", ()):
            log.warning("%s", warning)
        if relay.failure is not None:
            # The client saw a 200 and then event: error; the metrics must count it as the error it was,
            # and as a failed attempt of its target unless the proxy ended it (shutdown, a deadline).
            record.update(error_type=relay.failure.error_type)
            if relay.call.abort_reason not in ("client", "shutdown", "deadline"):
                self.metrics.attempt_failed(record.get("provider") or "", record.get("upstream_model") or "",
                                            relay.failure.status)
        record.update(stop_reason=fold.stop_reason, first_content_at=relay.first_content_at,
                      billed_cost=fold.billed_cost, **stream_usage_fields(fold.usage, relay.refused))

    def _estimate(self, req: ClientRequest, record: Dict[str, Any]) -> int:
        """message_start's input tokens: the local estimate, calibrated for the target; 0 when forwarded.

        The raw and the sent estimate go into the record: ``_record`` learns from the upstream's count.
        """
        if req.parsed is None:
            return 0  # the Messages API forwards the upstream's own message_start
        self._count_into(record, req.parsed)  # if the upstream's think time (_attempt) did not
        raw = record["estimate_raw"]
        sent = self.calibration.estimate((record.get("provider"), record.get("upstream_model")), raw)
        record.update(estimate_sent=sent)
        return sent

    def _raw_estimate(self, parsed: MessagesRequest) -> Estimate:
        chars = self.tools.derived(parsed.tools, "chars", lambda: tools_chars(parsed.tools))
        return estimate_input(parsed, tool_chars=chars)

    def _count_into(self, record: Dict[str, Any], parsed: MessagesRequest) -> None:
        """The raw estimate into the record (``_learn`` compares it with the upstream's count)."""
        if "estimate_raw" not in record:
            estimate = self._raw_estimate(parsed)
            record.update(estimate_raw=estimate.tokens, estimate_media=estimate.media)

    # ------------------------------------------------------------------
    # Call records.

    def _record(self, fields: Dict[str, Any], routed: Optional[Routed], started: float, request_id: str,
                logged: bool = True) -> None:
        """One call record (also for a 4xx, a local answer, a failure): metrics, usage log (``logged``),
        access log.

        The provider and upstream model are the ones that finally answered (a fallback,
        maybe): each attempt sets them; upstream_model only once a call reached the upstream.
        """
        now = time.monotonic()
        if routed is not None:
            fields.setdefault("route", routed.route.match)
            # An answer of the proxy's own names no provider but "(local)", as /metrics counts it.
            fields.setdefault("provider", LOCAL if fields.get("local") else routed.target.provider.name)
        first = fields.get("first_content_at")
        cost = call_spend(fields, _facts_used(fields, routed))
        rec = CallRecord(
            duration_ms=int((now - started) * 1000),
            ttft_ms=int((first - started) * 1000) if first is not None else None,
            cost_usd=cost,
            time=time.time() - (now - started),
            request_id=request_id,
            **{k: v for k, v in fields.items() if k in _RECORD_FIELDS},
        )
        self._learn(fields, rec, routed)
        self.metrics.record(rec, logged)
        if log.isEnabledFor(logging.INFO):
            log.info("%s", access_line(rec), extra={"call": rec})  # the JSON log format adds its fields

    def record_refusal(self, path: str, status: int, error_type: str, request_id: str, started: float) -> None:
        """A call the handler refused before any endpoint ran (key, Host, path, busy, body). Recorded by
        the endpoint it asked for, never by its own path: that is anyone's text, before any key check
        (a web page's too), and up to 64 KB of it filled the usage log, the access log and /metrics'
        endpoint rows, where later real calls showed as (other). One refused access (no key, a wrong
        one, a foreign Host or page: 401, 403) is counted, not written to the usage log: anyone may
        send them, thousands a second, and the log's read-back at a restart keeps only its last 64 MiB."""
        self._record({"endpoint": self._endpoint_of(path), "status": status, "error_type": error_type}, None,
                     started, request_id, logged=status not in (401, 403))

    def _endpoint_of(self, path: str) -> str:
        path = path.rstrip("/")
        if path.startswith("/v1/models/"):
            return "/v1/models/{id}"
        return path if any(p == path for (_, p) in self.routes) else "(unknown path)"

    def _learn(self, fields: Dict[str, Any], rec: CallRecord, routed: Optional[Routed]) -> None:
        """Teach the calibration the upstream's prompt count, when the upstream really reported one."""
        raw = fields.get("estimate_raw")
        if raw is None or _teaches_nothing(fields, rec, raw):
            return
        reported = sum(n or 0 for n in (rec.input_tokens, rec.cache_read_input_tokens, rec.cache_creation_input_tokens))
        # A stream without usage reports the estimate it was given: learning from that would feed on itself.
        if reported != fields.get("estimate_sent") and not self._cut_prompt(rec, routed, raw, reported):
            self.calibration.learn((rec.provider, rec.upstream_model), raw, reported)

    def _cut_prompt(self, rec: CallRecord, routed: Optional[Routed], raw: int, reported: int) -> bool:
        """Did a server that cuts prompts to its context (Ollama: to num_ctx, without a word) cut this
        one? Said once a model: the model saw only the prompt's end, and Claude Code, told the kept
        count, never compacted; learned, the estimates would have fallen with it. Only such servers:
        elsewhere an estimate may count what was not sent (deferred tools no search found)."""
        if raw < _CUT_PROMPT_MIN or reported >= raw * _CUT_PROMPT_RATIO or routed is None:
            return False
        target = next((t for t in routed.targets
                       if (t.provider.name, t.model) == (rec.provider, rec.upstream_model)), None)
        if target is None or target.dialect is None or not target.dialect.cuts_prompts:
            return False
        with self._lock:  # longer prompts are said too long here from now on (_refuse_what_would_be_cut)
            remember(self._cut_at, (rec.provider, rec.upstream_model), reported)
        first = self._first_time(("cut prompt", rec.provider, rec.upstream_model))  # once a model, whatever the counts
        log.log(logging.WARNING if first else logging.DEBUG, "%s counted %d prompt tokens where about %d were sent: "
                "the server seems to cut prompts to its context length (Ollama's num_ctx, OLLAMA_CONTEXT_LENGTH); give "
                "the model a larger context there (Claude Code needs about 100000) and the models table's "
                "context_window to match; a longer prompt is said too long here from now on, so that Claude Code "
                "compacts", target.label, reported, raw)
        return True


def _load_api(name: str, tools: ToolMemo) -> UpstreamApi:
    """The upstream API ``name`` (config.UPSTREAM_APIS), its modules imported now: a server
    whose providers all speak Chat Completions never loads the other two."""
    if name == "chat":
        from .apis.chat.api import ChatApi
        return ChatApi(tools)
    if name == "messages":
        from .apis.messages import MessagesApi
        return MessagesApi()
    from .apis.responses.api import ResponsesApi
    assert name == "responses", name
    return ResponsesApi(tools)


_RECORD_FIELDS = frozenset(CallRecord.__dataclass_fields__) - {"duration_ms", "ttft_ms", "cost_usd", "time", "request_id"}


def _thinking_omitted(req: ClientRequest) -> bool:
    """Did the client ask for thinking blocks without their text (``thinking.display: "omitted"``)?
    A translated answer drops it here; an Anthropic upstream, which gets the field, does it itself."""
    thinking = req.parsed.thinking if req.parsed is not None else None
    return thinking is not None and thinking.display == "omitted"


def _as_shown(api: UpstreamApi, req: ClientRequest, message: Dict[str, Any]) -> Dict[str, Any]:
    """The answer as the client asked to see it: thinking text left out with ``display: omitted``,
    one tool call at most with ``disable_parallel_tool_use`` (``_one_call``)."""
    if _thinking_omitted(req):
        message = {**message, "content": [_without_text(b) for b in message["content"]]}
    if _one_call(api, req):
        calls = [i for i, b in enumerate(message["content"]) if b.get("type") == "tool_use"]
        if len(calls) > 1:
            message = {**message, "content": [b for i, b in enumerate(message["content"]) if i not in calls[1:]]}
    return message


def _one_call(api: UpstreamApi, req: ClientRequest) -> bool:
    """Did the client ask for one tool call at most? Sent upstream as ``parallel_tool_calls: false``,
    which a server may ignore, or refuse (then it is not sent again): the proxy keeps the promise
    itself, as Anthropic's API does, by keeping the first call of a translated answer only."""
    choice = req.parsed.tool_choice if api.translates and req.parsed is not None else None
    return choice is not None and choice.disable_parallel and choice.kind != "none"


def _without_text(block: Dict[str, Any]) -> Dict[str, Any]:
    return {**block, "thinking": ""} if block.get("type") == "thinking" else block


def _event_stream(resp: Any) -> bool:
    """Did the upstream answer with an event stream? Said so by its Content-Type only: a JSON
    answer without one is still read as JSON."""
    ctype = (resp.headers.get("Content-Type") or "") if resp.headers is not None else ""
    return ctype.split(";", 1)[0].strip().lower() == "text/event-stream"


class _FilteredWriter:
    """A client writer that passes each event of a stream through ``_kept`` (None: left out)."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer

    def events(self, events: List[Dict[str, Any]], end: bool = False) -> None:
        kept = [e for e in map(self._kept, events) if e is not None]
        if kept:
            self._writer.events(kept, end)
        elif end:
            self._writer.end_stream()

    def _kept(self, event: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)  # start_stream, last_write...


class _ThinkingOmitted(_FilteredWriter):
    """Leaves out the thinking text of a stream (``thinking_delta`` events): each thinking block
    still starts, carries its signature and stops, as Anthropic's do then."""

    def _kept(self, event: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        return None if _is_thinking_text(event) else event


class _FirstCallOnly(_FilteredWriter):
    """Leaves out every ``tool_use`` block after a stream's first (``_one_call``), and numbers the
    blocks after one left out on from the block before it: the SDKs place a delta by its block's
    index, and a gap would put it on the wrong block."""

    def __init__(self, writer: Writer) -> None:
        super().__init__(writer)
        self._called = False
        self._left_out: Set[int] = set()

    def _kept(self, event: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        index = event.get("index")
        if not isinstance(index, int):
            return event  # message_start, message_delta, ping, error...
        if event.get("type") == "content_block_start" and event["content_block"].get("type") == "tool_use":
            if self._called:
                self._left_out.add(index)
            self._called = True
        if index in self._left_out:
            return None
        before = sum(1 for i in self._left_out if i < index)
        return {**event, "index": index - before} if before else event


def _is_thinking_text(event: Dict[str, Any]) -> bool:
    delta = event.get("delta") if event.get("type") == "content_block_delta" else None
    return isinstance(delta, dict) and delta.get("type") == "thinking_delta"


def _facts_used(fields: Dict[str, Any], routed: Optional[Routed]) -> Optional[ModelFacts]:
    """The prices of the target that served the call (a fallback's, if one did)."""
    for target in routed.targets if routed is not None else ():
        if (target.provider.name, target.model) == (fields.get("provider"), fields.get("upstream_model")):
            return target.facts
    return None


def _count_attempt(record: Dict[str, Any], target: Target) -> None:
    """The record names the target of the attempt about to go (the one whose answer the client gets)."""
    record.update(provider=target.provider.name, upstream_model=target.model,
                  upstream_host=urlsplit(target.provider.url).hostname or "",
                  attempts=record.get("attempts", 0) + 1)


def _passing(failure: Optional[ProxyError], record: Dict[str, Any]) -> Optional[Tuple[ProxyError, Dict[str, Any]]]:
    """The last target's error, if a client would try again after it, with the record's fields that
    name its target: what the client gets should a later target's error be one it would not."""
    if failure is None or not _clients_retry(failure):
        return None
    return failure, {k: record.get(k) for k in _WHERE_FROM}


def _what_it_did(exc: ProxyError) -> str:
    """An upstream's HTTP error by its status; anything else (no answer, a 200 whose body is no
    JSON) as failed: the 502 the client would get is none the upstream sent."""
    if isinstance(exc, UpstreamHTTPError):
        return f"answered {exc.status}" if exc.status_said else f"sent an error ({exc.status} here)"
    return "failed"


def _own_abort(watch: Watch) -> bool:
    """Did the proxy end the attempt for a reason of its own (the client left, shutdown, the call's
    deadline), not the upstream's? A stream's head cut for coming a byte at a time is the
    upstream's fault, as silence is: retried, and the fallback tried (nothing reached the client)."""
    return watch.call.abort_reason not in (None, "head")


def _clients_retry(exc: ProxyError) -> bool:
    """Would a client try this error again (the SDKs' rule: 408, 409, 429 and 5xx, unless
    ``x-should-retry: false``)?"""
    return NO_RETRY not in exc.headers and (exc.status in (408, 409, 429) or exc.status >= 500)


def _to_tell(last: ProxyError, passing: Optional[Tuple[ProxyError, Dict[str, Any]]],
             record: Dict[str, Any]) -> ProxyError:
    """The error the client gets when every target failed: the last, unless a fallback failed for a
    reason of its own (a refused key, a 404, nothing listening) after an earlier target's rate limit
    or overload. Then that one, with its Retry-After, and the record names its target: the
    fallback's 401 told Claude Code its login had gone, and its 502 "not reachable" stopped the
    client's retries, where a pause would do. Not a prompt too long for the fallback (the client
    compacts on it, and the fallback may answer then), nor a refused forwarded client key (the
    client's login to renew)."""
    if passing is None or _clients_retry(last) or last.message.startswith(PROMPT_TOO_LONG) \
            or isinstance(last, UpstreamHTTPError) and last.status in _NEXT_TARGET_STATUSES and not last.own_key:
        return last
    earlier, where = passing
    log.warning("the client gets %s's earlier %d (%s), which it may try again, not %s's %d",
                where.get("provider"), earlier.status, earlier.error_type, record.get("provider"), last.status)
    record.update(where)
    return earlier


def _failure(exc: BaseException) -> Dict[str, Any]:
    """What a call that raised is recorded as (the handler answers it; the status is what it will send)."""
    if isinstance(exc, ProxyError):
        return {"status": exc.status, "error_type": exc.error_type}
    if isinstance(exc, ClientGone):
        return {"error_type": "client_closed"}  # status: what was sent already, else 499
    return {"status": 500, "error_type": "api_error"}


# A prompt counted under this share of the proxy's estimate (which leans high, 3.5 characters a token:
# no tokenizer counts text at 0.4 of it) was cut by the server; only for prompts big enough that the
# chat template's own tokens do not count.
_CUT_PROMPT_RATIO = 0.4
_CUT_PROMPT_MIN = 4000


def _teaches_nothing(fields: Dict[str, Any], rec: CallRecord, raw: int) -> bool:
    """A call whose prompt count says nothing of the estimate: no count the upstream reported, a
    failure, a local answer, two prompts (after a billed failed attempt), or mostly images and
    documents (a guess per image or page, far rougher than the text's count: learned, one PDF turn
    set the ratio for every later text-only prompt)."""
    return bool(rec.error_type or rec.local or not rec.usage_known or fields.get("earlier")
                or fields.get("estimate_media", 0) * 4 > raw)


def _fresh_counts(record: Dict[str, Any]) -> None:
    """A request sent again starts afresh: an earlier one's counts (a refused stream's 0s) are not its
    own. Only that an earlier one may have spent tokens nobody reported stays (``lost``)."""
    for key in USAGE_KEYS + (ONE_HOUR_WRITES, WEB_SEARCHES, "billed_cost"):
        record.pop(key, None)


def _relayed(api: UpstreamApi, headers: Any, secrets: Tuple[str, ...]) -> Tuple[Tuple[str, str], ...]:
    """The upstream response headers ``api`` passes on to the client (none for most), the call's
    secrets masked in their values: an upstream that echoes the key it was sent (a forwarded
    client key, in passthrough) must not hand it to whoever reads the answer's head."""
    relayed = api.relayed_headers(headers) if headers is not None else ()
    if not relayed:
        return ()
    forms = secret_forms(secrets)  # once, not per header: a passthrough answer relays a dozen
    return tuple((name, redact_text(value, forms)) for name, value in relayed)


_UPSTREAM_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")


def _upstream_request_id(headers: Any, secrets: Tuple[str, ...]) -> str:
    """The upstream's id for the call (Anthropic's request-id, OpenAI's x-request-id), if it is one
    printable token: it goes on a log line, in the usage log and on /v1/usage. One that holds a
    secret (an upstream echoing its key) is no id: dropped, not masked."""
    for name in ("request-id", "x-request-id"):
        value = (headers.get(name) or "").strip() if headers is not None else ""
        if _UPSTREAM_ID_RE.fullmatch(value) and redact_text(value, secrets) == value:
            return value
    return ""


def _answer_wait(ex: Exchange, deadline: Optional[float]) -> Optional[float]:
    """How long a read may wait on a non-streaming upstream call: until the deadline, not the idle timeout.

    Such an upstream sends nothing until its answer is whole; the idle timeout (300 s) would cut
    off what ``--request-timeout`` (600 s) allows. A second past the deadline: the watchdog's
    abort at the deadline, with its clearer message, comes first.
    """
    if ex.stream or deadline is None:
        return None
    return max(0.0, deadline - time.monotonic()) + 1.0
