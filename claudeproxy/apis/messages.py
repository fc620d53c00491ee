"""Anthropic Messages upstreams (native ``/v1/messages`` endpoints): forwarded, not translated. Pure.

For backends that speak Anthropic's API themselves (Anthropic, Ollama >= 0.14,
llama.cpp, vLLM, LM Studio, DeepSeek, OpenRouter, Moonshot, Zhipu, MiniMax).
The body goes upstream unchanged except for the model name (the route's
upstream model), a ``max_tokens`` above the model's cap (and a thinking budget
below it), the thinking blocks this proxy made for another upstream and, for
anyone but Anthropic, Claude Code's billing line; the client's query string goes to
Anthropic only. Headers follow the
provider's rules: ``anthropic-version`` passed on, ``anthropic-beta`` forwarded
or dropped (several native endpoints reject betas they do not know), the key
sent the way the provider wants it (by the pipeline). A server that refuses
what Claude Code sends of Anthropic's newer request (adaptive thinking, ``context_management``,
``output_config``, cache marks: several native endpoints and gateways validate an older schema)
gets the request again in the older form, and that model gets the older form from then on
(``older_form.py``, ``MessagesApi.recover``); Anthropic itself always gets the body as sent.
Answers come back with the client's model name. Streams are read event by event so the relay's one
ending rule applies -- a close after ``message_stop`` is the end, a stream cut
before it ends with one error event -- and the usage is read for metrics.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import threading
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Set, Tuple

from ..anthropic_types import parse_messages_request
from ..counts import USAGE_KEYS, count_or_none, one_hour_writes, web_searches
from ..dialects import forwards_betas, is_anthropic_host
from ..errors import (
    ProxyError,
    UpstreamUnavailable,
    error_from_status,
    stream_error_event,
    thread_unsupported,
)
from ..ids import first_free, new_id
from ..prompt_cache import strip_billing_header
from ..redact import free_text_forms, holds_secret, masked_json
from ..replies import events_for_message, message_start
from ..routing import Target
from ..signatures import PREFIX as SIGNATURE_PREFIX
from ..sse import ServerSentEvent, SSEDecoder, SSEFold, loads_data
from ..tokens import estimate_input, estimate_output_tokens
from ..urls import messages_url
from .base import (ClientRequest, Exchange, RefusedFields, UpstreamApi, pydantic_lines, refused_fields,
                   refuses_images, remember)
from .older_form import (DROPPABLE, STEPS, SYSTEM_FIRST, budget_below, effort_only, has_images, older_form,
                         older_step)
from .toolargs import ArgsScan

Event = Dict[str, Any]
log = logging.getLogger(__name__)
DEFAULT_VERSION = "2023-06-01"
# What an event type passed on may be: Anthropic's are lower-case words joined by "_".
_EVENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}\Z")
# Header values copied from the client: version strings and beta names, nothing that could smuggle.
_HEADER_VALUE_RE = re.compile(r"^[A-Za-z0-9._:=+-]{1,128}$")
# Anthropic's rate-limit headers (requests, tokens, the unified ones Claude Code warns of usage limits
# by), passed back: a printable value of a sane length (no CR/LF can reach our response), so many.
_RATELIMIT_PREFIX = "anthropic-ratelimit-"
_RATELIMIT_NAME_RE = re.compile(r"^[a-z0-9-]{1,100}$")
_RATELIMIT_VALUE_RE = re.compile(r"^[\x20-\x7e]{1,200}$")
MAX_RATELIMIT_HEADERS = 32
_START_USAGE_KEYS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
# The deltas each block type takes (as the SDKs' accumulators apply them). A delta of a type named
# here in a block of a type named here that does not take it breaks the grammar; block and delta
# types not named here (newer ones) are passed on unjudged.
_BLOCK_DELTAS = {
    "text": frozenset({"text_delta", "citations_delta"}),
    "thinking": frozenset({"thinking_delta", "signature_delta"}),
    "redacted_thinking": frozenset(),
    "tool_use": frozenset({"input_json_delta"}),
    "server_tool_use": frozenset({"input_json_delta"}),
    "mcp_tool_use": frozenset({"input_json_delta"}),
    "compaction": frozenset({"compaction_delta"}),
}
_KNOWN_DELTAS = frozenset().union(*_BLOCK_DELTAS.values())
_KNOWN_EVENTS = frozenset({"message_start", "message_delta", "message_stop", "content_block_start",
                           "content_block_delta", "content_block_stop", "ping", "error"})
_NOT_OPEN = object()  # the open-block lookup's default: ``None`` is an open block of a type not given
# An Anthropic error type back to the status it comes with (PROTOCOL.md 4.1), for in-band errors.
_STATUS_BY_TYPE = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "timeout_error": 504,
    "overloaded_error": 529, "api_error": 500,
}


def _client_betas(headers: Any) -> List[str]:
    values = headers.get_all("anthropic-beta") if hasattr(headers, "get_all") else [headers.get("anthropic-beta")]
    names = [n.strip() for v in values or () if v for n in v.split(",")]
    return [n for n in names if n and _HEADER_VALUE_RE.match(n)]


def forwarded_betas(req: ClientRequest, target: Target) -> List[str]:
    """The client's betas the provider gets: all, none, or the allowed ones (see ``Provider``)."""
    provider = target.provider
    betas = _client_betas(req.headers)
    if forwards_betas(provider.url, provider.anthropic_beta):
        return betas
    return [b for b in betas if b in provider.allowed_betas]


def _headers(req: ClientRequest, target: Target, accept: str) -> Tuple[Tuple[str, str], ...]:
    headers = [("Content-Type", "application/json"), ("anthropic-version", _version(req)), ("Accept", accept)]
    betas = forwarded_betas(req, target)
    if betas:
        headers.append(("anthropic-beta", ",".join(betas)))
    return tuple(headers)


def _forwarded_query(req: ClientRequest, target: Target) -> str:
    """The client's query string (Claude Code's ``?beta=true``) for Anthropic itself, where it means
    something; another server gets none: the client does not choose a third party's parameters."""
    return req.query if is_anthropic_host(target.provider.url) else ""


def _version(req: ClientRequest) -> str:
    value = (req.headers.get("anthropic-version") or "").strip()
    return value if _HEADER_VALUE_RE.match(value) else DEFAULT_VERSION


def _forwarded_body(body: Dict[str, Any], target: Target, cap: Optional[int]) -> Dict[str, Any]:
    """The client's body with the upstream model, ``max_tokens`` within ``cap`` (and a thinking
    budget below it), without the thinking blocks this proxy made for another upstream and, for
    anyone but Anthropic, without Claude Code's billing line (it changes per session and would
    empty a prefix cache: every cached token after it)."""
    out = dict(body)
    out["model"] = target.model
    asked = out.get("max_tokens")
    if cap and isinstance(asked, int) and not isinstance(asked, bool) and asked > cap:
        out["max_tokens"] = cap
        budget_below(out, cap)
    if "system" in out and not is_anthropic_host(target.provider.url):
        out["system"] = _without_billing_line(out["system"])
    if isinstance(out.get("messages"), list):
        out["messages"] = _without_proxy_thinking(out["messages"])
    return out


def _without_proxy_thinking(messages: List[Any]) -> List[Any]:
    """The history without thinking blocks signed by this proxy (``cpx1.``: the reasoning of a chat
    or Responses upstream a fallback answered with). A native upstream cannot check such a
    signature and refuses the whole request; the same list when there is none (the usual case)."""
    if not any(_proxy_made_thinking(b) for m in messages if isinstance(m, dict) and m.get("role") == "assistant"
               for b in (m.get("content") if isinstance(m.get("content"), list) else ())):
        return messages
    out = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and message.get("role") == "assistant":
            kept = [b for b in content if not _proxy_made_thinking(b)]
            # A turn that was only thinking keeps its text as text: an empty message is refused too.
            message = {**message, "content": kept or [{"type": "text", "text": _thinking_text(content)}]}
        out.append(message)
    return out


def _thinking_text(blocks: List[Any]) -> str:
    texts = [b.get("thinking") for b in blocks if isinstance(b, dict) and isinstance(b.get("thinking"), str)]
    return "\n\n".join(t for t in texts if t) or "(thinking)"


def _proxy_made_thinking(block: Any) -> bool:
    if not isinstance(block, dict):
        return False
    proof = block.get("signature") if block.get("type") == "thinking" else (
        block.get("data") if block.get("type") == "redacted_thinking" else None)
    return isinstance(proof, str) and proof.startswith(SIGNATURE_PREFIX)


def _without_billing_line(system: Any) -> Any:
    if isinstance(system, str):
        return strip_billing_header(system)
    if not isinstance(system, list):
        return system  # not ours to judge: the upstream validates it
    blocks = []
    for block in system:
        if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
            text = strip_billing_header(block["text"])
            if not text:
                continue  # the block was only the billing line
            block = {**block, "text": text} if text != block["text"] else block
        blocks.append(block)
    return blocks


def ratelimit_headers(headers: Any) -> Tuple[Tuple[str, str], ...]:
    """The upstream's ``anthropic-ratelimit-*`` response headers, checked, for the client."""
    out = []
    for name, value in headers.items() if headers is not None else ():
        name, value = name.strip().lower(), value.strip()
        if name.startswith(_RATELIMIT_PREFIX) and _RATELIMIT_NAME_RE.match(name) and _RATELIMIT_VALUE_RE.match(value):
            out.append((name, value))
    return tuple(out[:MAX_RATELIMIT_HEADERS])


def _refusal_of_form(status: int, text: str) -> bool:
    """Might an older form of the request meet this refusal? A 400 or 422; llama.cpp says a chat
    template's refusal, and one of images, with a 500."""
    return status in (400, 422) or refuses_images(status, text) or (status == 500 and bool(SYSTEM_FIRST.search(text)))


def _form_refused(status: int, text: str, sent: Dict[str, Any]) -> Optional[Tuple[Optional[str], FrozenSet[str]]]:
    """The older form's step (``older_form.STEPS``) and the optional fields a refusal of ``sent`` asks
    for; None where a 500 says something else (it says only an image's or a late system turn's refusal)."""
    plain = status in (400, 422)
    refused = refused_fields(text) if plain else frozenset()
    step = "no_images" if refuses_images(status, text) and has_images(sent) else older_step(text, sent, refused)
    if not plain and step not in ("no_images", "user_system"):
        return None
    return step, refused


def error_from_event(obj: Any, secrets: Tuple[str, ...]) -> ProxyError:
    """An Anthropic error object in a 200 body or an ``event: error``, as the error the client gets."""
    err = obj.get("error") if isinstance(obj, dict) else None
    kind = err.get("type") if isinstance(err, dict) else None
    status = _STATUS_BY_TYPE.get(kind, 502) if isinstance(kind, str) else 502
    body = obj if isinstance(obj, dict) else {"error": {"message": str(obj)}}  # masked, then cut
    return error_from_status(status, json.dumps(body).encode("utf-8"), None, secrets, said=False)


def message_reply(obj: Any, model: str, secrets: Tuple[str, ...], estimate: Optional[Callable[[], int]] = None,
                  ids: Optional[AnswerIds] = None) -> Dict[str, Any]:
    """A JSON message from the upstream with the client's model name and a usage the SDKs can read;
    error bodies raise. The record reads the upstream's own usage (``obj``), not the filled one.
    With ``ids``, the message's id and its tool calls' are made unique (``AnswerIds``).

    Counts the upstream left out are filled: the input with ``estimate()`` (the request's, asked
    only then), the output with a quarter of the answer's characters, as for a translated answer
    (Claude Code sizes its context by them: 0s would say an empty one); 0 without ``estimate``."""
    if isinstance(obj, dict) and obj.get("type") == "error":
        raise error_from_event(obj, secrets)
    if not isinstance(obj, dict) or not isinstance(obj.get("content"), list):
        raise UpstreamUnavailable("upstream returned a body that is not an Anthropic message")
    if ids is not None:
        obj = {**obj, "id": ids.message(obj.get("id")), "content": [ids.block(b) for b in obj["content"]]}
    usage = obj.get("usage")
    if usage is not None and not isinstance(usage, dict):
        return {**obj, "model": model}  # malformed, not missing: ``_streamable`` refuses it for a stream
    usage = usage or {}
    if estimate is not None and usage.get("input_tokens") is None:  # missing; an odd value goes on as given
        usage = {**usage, "input_tokens": estimate()}
    if estimate is not None and usage.get("output_tokens") is None:
        blocks = [b for b in obj["content"] if isinstance(b, dict)]
        usage = {**usage, "output_tokens": estimate_output_tokens(blocks)}
    return {**obj, "model": model, "usage": _filled(usage, _MESSAGE_USAGE)}


def input_estimate(body: Dict[str, Any]) -> int:
    """The proxy's estimate of a forwarded request's input tokens (``tokens.estimate_input``), for an
    answer whose upstream counted none: parsed only then, and 0 for a body the parser refuses (the
    upstream judged it, and took it)."""
    try:
        return estimate_input(parse_messages_request(body)).tokens
    except (ProxyError, ValueError, TypeError, RecursionError):
        return 0


# How many of the message ids given out a passthrough API remembers, to give none twice.
MESSAGE_IDS_REMEMBERED = 1024


class MessageIds:
    """The upstream message ids one server's passthrough gave out lately (thread-safe).

    Claude Code takes two answers with one message id for one message and merges them (the
    translated routes make their own ids for that reason); a server behind passthrough may repeat
    one (a fixed id, a counter that began again). Anthropic's own are unique and pass as they are."""

    def __init__(self) -> None:
        self._given: Dict[str, None] = {}
        self._lock = threading.Lock()

    def unique(self, given: Any, ours: str) -> str:
        """``given`` if it is an id not given out lately, else ``ours``."""
        if type(given) is not str or not given:
            return ours
        with self._lock:
            if given in self._given:
                return ours
            self._given[given] = None
            if len(self._given) > MESSAGE_IDS_REMEMBERED:
                del self._given[next(iter(self._given))]
        return given


class AnswerIds:
    """One answer's ids as the client gets them: the message's unique among the answers lately
    (``MessageIds``), each client tool call's within the answer and its conversation.

    A server behind passthrough may number its calls anew in every answer (as Chat servers do:
    ``call_0`` each turn) or repeat one: Claude Code pairs each result with its call by id, so a
    second call of a known id took the first one's result, or lost its own. The conversation's ids
    are gathered only when an answer calls a tool (most answers call none)."""

    def __init__(self, body: Dict[str, Any], message_ids: Optional[MessageIds] = None, ours: str = "") -> None:
        self.body = body
        self.message_ids = message_ids
        self.ours = ours or "msg_" + new_id()  # the proxy's id, for an upstream's that will not do
        self.taken: Optional[Set[str]] = None

    def message(self, given: Any) -> str:
        return self.message_ids.unique(given, self.ours) if self.message_ids is not None else self.ours

    def block(self, block: Any) -> Any:
        """``block``, with an id no earlier call has if it is a client tool call."""
        if type(block) is not dict or block.get("type") != "tool_use":
            return block  # a server tool's id is the server's business (its results carry it)
        if self.taken is None:
            self.taken = _conversation_tool_ids(self.body)
        given = block.get("id")
        base = given if type(given) is str and given else "toolu_" + new_id()
        tool_id = first_free(base, self.taken.__contains__, self.taken)
        self.taken.add(tool_id)
        return block if tool_id == given else {**block, "id": tool_id}


def _conversation_tool_ids(body: Dict[str, Any]) -> Set[str]:
    """The ids of the tool calls in the request's history (the body as the client sent it)."""
    ids: Set[str] = set()
    messages = body.get("messages")
    for message in messages if type(messages) is list else ():
        content = message.get("content") if type(message) is dict else None
        for block in content if type(content) is list else ():
            if type(block) is dict and block.get("type") == "tool_use" and type(block.get("id")) is str:
                ids.add(block["id"])
    return ids


# What the SDKs' types require (``Usage``: input and output tokens; ``MessageDeltaUsage``: output
# tokens), filled with 0 where an upstream leaves it out or null: the SDKs read it unchecked
# (``message.usage.output_tokens`` on a missing usage is an AttributeError inside
# ``get_final_message``). The fold counts only what the upstream gave, before anything is filled.
_MESSAGE_USAGE = ("input_tokens", "output_tokens")


def _filled(usage: Dict[str, Any], keys: Tuple[str, ...], default: int = 0) -> Dict[str, Any]:
    """``usage`` with ``default`` for each of ``keys`` it leaves out or null (the same dict when none)."""
    missing = [k for k in keys if usage.get(k) is None]
    return {**usage, **dict.fromkeys(missing, default)} if missing else usage


def _full_message(message: Dict[str, Any], message_id: str, model: str, estimate: Callable[[], int]
                  ) -> Dict[str, Any]:
    """An upstream's ``message_start`` message with every field the SDKs' ``Message`` requires: the
    accumulators start from it and append to its ``content``, so a missing one crashes the client.
    An input count it lacks is the proxy's ``estimate()``, as a translated stream's."""
    usage = message.get("usage") if isinstance(message.get("usage"), dict) else {}
    if usage.get("input_tokens") is None:  # missing; an odd value goes on as given
        usage = {**usage, "input_tokens": estimate()}
    content = message.get("content") if isinstance(message.get("content"), list) else []
    return {"type": "message", "role": "assistant", "stop_reason": None, "stop_sequence": None,
            **message, "id": message_id, "model": model, "content": content, "usage": _filled(usage, _MESSAGE_USAGE)}


def _block_defaults(kind: Any) -> Dict[str, Any]:
    """The fields a block type's accumulator appends to or reads (a missing ``text`` makes
    ``text += delta`` a TypeError in the SDKs); fresh each time, as each goes into an event."""
    if kind == "text":
        return {"text": ""}
    if kind == "thinking":
        return {"thinking": "", "signature": ""}
    if kind == "redacted_thinking":
        return {"data": ""}
    if isinstance(kind, str) and kind.endswith("tool_use"):
        return {"input": {}}
    return {}


def _says_nothing(block: Any) -> bool:
    """A text or thinking block that starts empty: what the client learns from it comes with its deltas."""
    kind = block.get("type") if isinstance(block, dict) else None
    return kind in ("text", "thinking") and not block.get(kind)


def _full_block_start(obj: Dict[str, Any]) -> Dict[str, Any]:
    block = obj.get("content_block")
    if type(block) is not dict:
        return obj
    missing = {k: v for k, v in _block_defaults(block.get("type")).items() if block.get(k) is None}
    return {**obj, "content_block": {**block, **missing}} if missing else obj


def _streamable(message: Dict[str, Any]) -> bool:
    """The parts ``events_for_message`` reads have the types it needs (a JSON answer to a stream request)."""
    usage = message.get("usage")
    return (usage is None or isinstance(usage, dict)) and all(
        isinstance(b, dict) and isinstance(b.get("citations") or [], list) for b in message["content"])


class MessagesApi(UpstreamApi):
    """The Messages API as the pipeline sees it (``apis/base.py``)."""

    name = "messages"
    translates = False  # forwarded: no local answers, count_tokens asked upstream

    def __init__(self) -> None:
        # What each model of a server that is not Anthropic refused of the newer request: optional
        # fields (older_form.DROPPABLE) and forms (older_form.STEPS). Per server, by (provider,
        # model), as the Chat API's refusals.
        self._refused = RefusedFields(DROPPABLE, only_as={"output_config": effort_only})
        self._older: Dict[Tuple[str, str], FrozenSet[str]] = {}
        self._lock = threading.Lock()
        self._message_ids = MessageIds()  # the upstream's message ids given out lately

    def parse(self, body: Dict[str, Any]) -> None:
        return None  # the upstream validates what it is sent

    def prepare(self, req: ClientRequest, target: Target, cap: Optional[int]) -> Exchange:
        if req.body.get("thread") is not None and not is_anthropic_host(target.provider.url):
            # Only Anthropic keeps threads (and only it gets the beta naming them): another server
            # would answer the turn's new messages alone.
            raise thread_unsupported()
        body = self._as_taken(_forwarded_body(req.body, target, cap), target)
        headers = _headers(req, target, "text/event-stream" if req.stream else "application/json")
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        max_tokens = body.get("max_tokens") if isinstance(body.get("max_tokens"), int) else None
        url = messages_url(target.provider.url, "/v1/messages", _forwarded_query(req, target))
        return Exchange(url, data, headers, req.stream, max_tokens)

    def _as_taken(self, body: Dict[str, Any], target: Target) -> Dict[str, Any]:
        """``body`` (the proxy's copy) in the form ``target``'s model takes: what it refused of the
        newer request left out or made older (``recover``). Anthropic gets it as it is."""
        if not is_anthropic_host(target.provider.url):
            key = (target.provider.name, target.model)
            with self._lock:
                steps = self._older.get(key, frozenset())
            if target.facts.text_only:  # a model the facts (or the models table) say takes no images
                steps |= {"no_images"}
            older_form(body, steps)  # first: the effort it reads may be a refused field
            self._refused.drop(body, key)
        return body

    def recover(self, exc: ProxyError, req: ClientRequest, target: Target, ex: Exchange,
                cap: Optional[int]) -> Optional[Exchange]:
        """The request again in the older form a server refused the newer one for (``older_form``),
        or None: the refusal is about something else, and the client gets it.

        Claude Code sends Anthropic's newest request whatever the server; one that validates an
        older schema answers every turn with the same 400, and Claude Code stops there. What was
        refused is remembered for the model (one refused round trip per server), and all of it at
        once where one 422 lists several. Anthropic itself is not second-guessed.
        """
        text = pydantic_lines(getattr(exc, "upstream_message", "") or "")
        if is_anthropic_host(target.provider.url) or not _refusal_of_form(exc.status, text):
            return None
        sent = json.loads(ex.body)
        found = _form_refused(exc.status, text, sent)
        if found is None:
            return None
        step, refused = found
        key = (target.provider.name, target.model)
        fields = self._refused.learn(refused, sent, key, target.label)
        tried: FrozenSet[str] = ex.context or frozenset()  # the steps this request's earlier refusals taught
        if step is None and not fields:
            self._forget(key, tried, target.label)
            return None
        if step is not None:
            self._learn_step(key, step, target.label)
            tried |= {step}
        return dataclasses.replace(self.prepare(req, target, cap), context=tried)

    def _learn_step(self, key: Tuple[str, str], step: str, label: str) -> None:
        """Taken whenever what was sent had the form refused: a request prepared before another
        learned the step is retried as well (older_step finds no step in the older form)."""
        with self._lock:
            steps = self._older.get(key, frozenset())
            remember(self._older, key, steps | {step})
        if step not in steps:
            log.warning("%s refused %s: %s from now on", label, *STEPS[step])

    def _forget(self, key: Tuple[str, str], tried: FrozenSet[str], label: str) -> None:
        """The older form was refused as well, for nothing it could change: the steps this request
        taught were no help (a refusal read wrong), and the model's later requests go as before."""
        if not tried:
            return
        with self._lock:
            kept = self._older.get(key, frozenset()) - tried
            if kept:
                remember(self._older, key, kept)
            else:
                self._older.pop(key, None)
        log.warning("%s refused the older form too (%s): its requests go as sent again", label,
                    ", ".join(STEPS[s][1] for s in sorted(tried)))

    def count_tokens(self, req: ClientRequest, target: Target) -> Exchange:
        """The upstream's own token count (exact where the local estimate only guesses), asked with
        the same betas as the messages call: a body using a beta feature is refused without them."""
        counted = {**req.body, "model": target.model}
        if isinstance(counted.get("messages"), list):
            counted["messages"] = _without_proxy_thinking(counted["messages"])  # as the messages call sends them
        counted = self._as_taken(counted, target)  # a server refuses what it refused there here too
        body = json.dumps(counted, ensure_ascii=False).encode("utf-8")
        url = messages_url(target.provider.url, "/v1/messages/count_tokens", _forwarded_query(req, target))
        return Exchange(url, body, _headers(req, target, "application/json"), False, None)

    def from_json(self, req: ClientRequest, ex: Exchange, obj: Any, secrets: Tuple[str, ...] = ()
                  ) -> Tuple[Dict[str, Any], List[str]]:
        obj = masked_answer(obj, free_text_forms(secrets))
        # (Anything but an object is refused below, its words not quoted.)
        return message_reply(obj, req.model, secrets, lambda: input_estimate(req.body),
                             AnswerIds(req.body, self._message_ids)), []

    def relayed_headers(self, headers: Any) -> Tuple[Tuple[str, str], ...]:
        """What of the upstream's response head the client gets: its rate limits (the only API
        whose upstream speaks Anthropic's, so the only one whose headers mean what they say)."""
        return ratelimit_headers(headers)

    def fold(self, req: ClientRequest, ex: Exchange, *, message_id: str, input_tokens: int,
             secrets: Tuple[str, ...] = ()) -> "MessagesFold":
        return MessagesFold(message_id=message_id, model=req.model, input_tokens=input_tokens, secrets=secrets,
                            estimate=lambda: input_estimate(req.body),
                            ids=AnswerIds(req.body, self._message_ids, message_id))


class MessagesFold(SSEFold):
    """An Anthropic event stream passed on event by event (``ending.StreamFold``), held to the block
    grammar it is forwarded in: a block event out of order ends the stream with one error."""

    # One event may hold a server tool's whole result (web fetch's PDF, in base64) or, Ollama, a
    # call's whole input: a 1.2 MB one ended the stream at the 1 MiB line cap, where the same answer
    # as JSON (up to twice --max-body-bytes) went through. An endless line still stops here.
    longest_line = 16 * 1024 * 1024

    def __init__(self, *, message_id: str, model: str, input_tokens: int, secrets: Tuple[str, ...] = (),
                 estimate: Optional[Callable[[], int]] = None, ids: Optional[AnswerIds] = None) -> None:
        self.message_id = message_id
        self.model = model
        self.input_tokens = input_tokens
        self.secrets = secrets
        self.secret_forms = free_text_forms(secrets)  # once, not per event
        # The request's input estimate, for an upstream that counts none (asked only then).
        self.estimate: Callable[[], int] = estimate or (lambda: input_tokens)
        self.out_chars = 0  # the answer's characters, for an output count the upstream never gave
        self.decoder = SSEDecoder()
        self.started = False  # a message_start went out (the upstream's, or ours for early pings)
        # The upstream's message_start and the pings after it, held until the next event goes out with
        # them: alone they tell the client nothing, and while nothing went out an error right after
        # them is still a plain HTTP error the proxy may retry or fall back from. A slow first block
        # commits at the proxy's first ping (relay.tick), which sends them.
        self.held: List[Event] = []
        self.complete = False
        self.done = False  # message_stop or error went out
        self.finishing = False  # message_delta seen: the answer is whole but for message_stop
        self.stop_reason: Optional[str] = None
        self.counts: Dict[str, Any] = {}  # the usage's counts, and the 1-hour cache writes as cache_creation
        # message_start's output_tokens is a placeholder (1): the count is message_delta's, or a
        # whole message's. A stream cut before it (Esc in Claude Code) generated what nobody counted.
        self.output_counted = False
        self.output_seen = False  # a message_delta without a stop reason counted it (``_message_delta``)
        # The usage of an upstream message_start that came after ours (sent for early pings): the
        # client has not seen it, so the message_delta carries it.
        self.late_usage: Dict[str, int] = {}
        # The upstream's blocks, to hold it to the grammar it is forwarded in: the open ones (index ->
        # block type, None if it names none) and the stopped ones.
        self.open_blocks: Dict[int, Optional[str]] = {}
        # An open tool call's arguments as they came (``ArgsScan`` keeps only their state): whole, a
        # call whose block an upstream never stopped is closed rather than failed (``_close_open_blocks``).
        self.tool_args: Dict[int, ArgsScan] = {}
        self.tool_trailing: Set[int] = set()  # calls with text after their object closed: not whole
        self.stopped_blocks: Set[int] = set()
        # The message_delta, held until message_stop (or the stream's end): a second one merges into it,
        # so the client gets one, with the last stop reason and the highest counts (the grammar's).
        self.final_delta: Optional[Event] = None
        self.called_tool = False  # a tool_use block came: the client is to run it
        self.ids = ids or AnswerIds({}, None, message_id)  # the message's and the calls' ids, made unique

    @property
    def usage(self) -> Dict[str, Any]:
        """The counts the record takes: the output count only once the upstream gave it."""
        if self.output_counted:
            return self.counts
        return {k: v for k, v in self.counts.items() if k != "output_tokens"}

    def end(self, clean: bool) -> Tuple[List[Event], Optional[ProxyError]]:
        if self.complete:
            return [], None
        # The body's last event, cut off by its end, may be an upstream error: the relay fails the
        # stream with it (``fail``: only message_stop after message_delta).
        events, error = self._last_event()
        if error is not None or self.complete:
            return events, error
        if self.finishing:  # everything but message_stop arrived: the answer is whole
            return events + self._stop(), None
        return events, UpstreamUnavailable("upstream stream ended early (no message_stop)")

    @property
    def began(self) -> bool:  # ``StreamFold.began``: the upstream's message_start came
        return self.started or bool(self.held)

    def start(self) -> List[Event]:
        """``message_start`` (once): the upstream's if it came, else ours."""
        if self.started:
            return []
        self.started = True
        held, self.held = self.held, []
        # Ours (the upstream is slow): the estimate, as the upstream's would get where it says none.
        return held or [message_start(self.message_id, self.model, self.estimate())]

    def fail(self, exc: ProxyError) -> List[Event]:
        if self.done:
            return []
        if self.finishing:
            # message_delta went out: the answer is whole, and only message_stop may follow it.
            return self._stop()
        self.done = self.complete = True
        return [stream_error_event(exc.error_type, exc.message)]

    def from_json(self, obj: Any) -> List[Event]:
        """A JSON answer to a stream request, as the events it makes (masked as a JSON answer is)."""
        obj = masked_answer(obj, self.secret_forms)
        message = message_reply(obj, self.model, self.secrets, self.estimate, self.ids)
        if not _streamable(message):
            raise UpstreamUnavailable("upstream returned a message whose content or usage is malformed")
        self._take_usage(obj.get("usage"))  # the upstream's, not the filled one
        self.output_counted = bool(_counts(obj.get("usage"), ("output_tokens",)))
        self.stop_reason = message.get("stop_reason")
        events = events_for_message(message)
        if self.started:
            events = events[1:]
        self.started = self.done = self.complete = True
        return events

    # ------------------------------------------------------------------

    def _on_event(self, event: ServerSentEvent) -> List[Event]:
        named = _named(event)
        if named is None:
            return self._bad_event(event)
        kind, obj = named
        self.bad_events = 0
        # An upstream that echoes the key it was sent, in any field of any event: masked,
        # and an event of a kind no client reads is dropped (below).
        secret = bool(self.secret_forms) and _holds_secret(event.data, obj, kind, self.secret_forms)
        if secret and kind in _KNOWN_EVENTS:
            obj = _masked(obj, self.secret_forms, kind)
        if kind == "error" or event.event == "error":
            raise error_from_event(obj, self.secrets)
        if kind == "message_start":
            return self._message_start(obj)
        if kind == "ping":
            self.heard -= 1  # a keep-alive, whatever else it is
            if self.held and all(e.get("type") != "ping" for e in self.held):
                # One: a held ping says no more than the first, and an upstream sending nothing but
                # pings (of any size) would have grown the held list without end.
                self.held.append(obj)
            return [obj] if self.started else []
        if self.finishing and kind.startswith("content_block_"):
            # After message_delta the answer is whole: the relay ends it with message_stop (``fail``).
            raise _broken_order(f"{kind} after message_delta")
        if kind == "content_block_delta":
            self._check_delta(obj)
        elif kind == "content_block_start":
            self._open_block(obj)
            obj = _full_block_start(obj)
            block = obj["content_block"]
            unique = self.ids.block(block)
            if unique is not block:
                obj = {**obj, "content_block": unique}
            if self.held and not self.started and _says_nothing(unique):
                # Held with the message_start: Anthropic opens its first block at once, and an
                # overload said right after it was an error mid-stream; as on the other two APIs,
                # whose first events say nothing either, it is retried and falls back.
                self.held.append(obj)
                return []
        elif kind == "content_block_stop":
            self._stop_block(obj)
        events = self.start()  # content before any message_start still needs one (the grammar)
        if kind == "message_delta":
            return events + self._message_delta(obj)
        if kind == "message_stop":
            if not self.finishing:
                # The SDKs take the stop reason and output count from message_delta alone: without
                # one the answer ends with stop_reason None. A plain end is what the upstream meant.
                events += self._message_delta({"type": "message_delta", "delta": self._made_up_end()})
            return events + self._stop(obj)
        if kind not in _KNOWN_EVENTS and secret:
            # An event of a kind no client reads, holding a secret (named by it, even): it goes
            # nowhere, as a masked one would tell nobody anything.
            return events
        return events + [obj]

    def _message_delta(self, obj: Dict[str, Any]) -> List[Event]:
        """``obj``, with what the SDKs need (a ``delta``, a usage with ``output_tokens``: the last
        count known), held for ``_stop``: a second message_delta (an upstream sent two) merges into
        it. One that says a stop reason ends the answer: the open blocks are closed (or the stream
        fails, see ``_close_open_blocks``). One that says none is a count along the way (some servers
        send them before the end): its usage is kept, and the answer stays open, so a cut or an error
        after it is still the client's error, not an answer that ends with no stop reason."""
        delta = obj.get("delta")
        said = isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str)
        closing = self._close_open_blocks() if said else []
        held = self.final_delta  # a message_delta before this one (an upstream sent two)
        # Before anything is filled: only what the upstream counted.
        self._take_usage(obj.get("usage"), final=held is None)
        if _counts(obj.get("usage"), ("output_tokens",)):
            # A count along the way is the output's only once the answer ends whole (``_stop``): cut
            # after it, more was generated than it says.
            self.output_counted = self.output_counted or said
            self.output_seen = True
        if said:
            self.finishing = True
            self.stop_reason = delta["stop_reason"]
        elif held is not None:
            delta = held["delta"]  # a count alone leaves the stop reason said before it
        obj = {**obj, "delta": delta if isinstance(delta, dict) else {}}
        given = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
        # A late message_start's counts ride along: the SDKs take a message_delta's input and cache
        # counts over message_start's, and the client never saw that message_start.
        # No count of the output yet: a quarter of the characters relayed, as for a translated answer,
        # not message_start's placeholder (1).
        guess = self.counts.get("output_tokens", 0) if self.output_seen else math.ceil(self.out_chars / 4)
        usage = _filled({**self.late_usage, **given}, ("output_tokens",), guess)
        self.final_delta = {**obj, "usage": _merged_usage(held["usage"], usage) if held is not None else usage}
        return closing

    def _made_up_end(self) -> Dict[str, Any]:
        """The end an upstream did not say (no message_delta, or one without a delta): what its
        blocks mean, as for a translated answer (PROTOCOL.md 2.4): a tool call is for the client to
        run (a tool runner stops at end_turn), anything else a plain end."""
        return {"stop_reason": "tool_use" if self.called_tool else "end_turn", "stop_sequence": None}

    def _close_open_blocks(self) -> List[Event]:
        """The blocks still open when the message ends. A tool call's input may be cut (the SDKs
        would hand over a tool call with ``{}`` or half its arguments as a finished answer): the
        stream fails. A text or thinking block loses nothing: it is closed."""
        for index, kind in sorted(self.open_blocks.items()):
            if isinstance(kind, str) and kind.endswith("tool_use") and not self._whole_input(index):
                raise _broken_order(f"the message ended with {kind} block {index} still open (its input may be cut)")
        closing: List[Event] = [{"type": "content_block_stop", "index": i} for i in sorted(self.open_blocks)]
        self.stopped_blocks.update(self.open_blocks)
        self.open_blocks.clear()
        return closing

    def _whole_input(self, index: int) -> bool:
        """Did a tool call's input come whole, though its block was never stopped (a gateway that ends
        the message right after the call's one delta)? Its JSON object closed, nothing after it (the
        client joins every delta: trailing text would not parse), or its start carried the input."""
        scan = self.tool_args.get(index)
        return scan is None or (scan.closed and not scan.bad and index not in self.tool_trailing)

    def _feed_args(self, index: int, text: str) -> None:
        """A tool call's input fragment into its scan; text after its object closed is marked (the
        scan drops it, the client does not)."""
        scan = _entry_scan(self.tool_args, index)
        was_closed = scan.closed
        scan.feed(text)
        if (was_closed and text.strip()) or (scan.closed and not was_closed and not text.rstrip().endswith("}")):
            self.tool_trailing.add(index)

    # The block grammar, forwarded as it comes: a delta or stop only for an open block, a start only
    # for a new index, a delta only of a type its block takes. Anything else fails the stream (the
    # SDKs' accumulators crash on a delta for a block they never saw); the object is parsed already,
    # so each check is a dict or set lookup.

    def _check_delta(self, obj: Dict[str, Any]) -> None:
        index = obj.get("index")
        block = self.open_blocks.get(index, _NOT_OPEN) if type(index) is int else _NOT_OPEN
        if block is _NOT_OPEN:
            raise self._not_open("content_block_delta", index)
        delta = obj.get("delta")
        if type(delta) is dict:  # the characters the answer grew by, for an output count never given
            text = delta.get("text") or delta.get("thinking") or delta.get("partial_json")
            self.out_chars += len(text) if type(text) is str else 0
        takes = _BLOCK_DELTAS.get(block)  # type: ignore[arg-type]
        if takes is None:
            return
        kind = delta.get("type") if type(delta) is dict else None
        if type(kind) is str and kind not in takes and kind in _KNOWN_DELTAS:
            raise _broken_order(f"{kind} for block {index}, which is a {block} block")
        if kind == "input_json_delta" and type(delta.get("partial_json")) is str:
            self._feed_args(index, delta["partial_json"])

    def _open_block(self, obj: Dict[str, Any]) -> None:
        index = obj.get("index")
        if type(index) is not int:
            raise _broken_order(f"content_block_start without a block index ({_shown(index)})")
        if index in self.open_blocks or index in self.stopped_blocks:
            raise _broken_order(f"a second content_block_start for block {index}")
        expected = len(self.open_blocks) + len(self.stopped_blocks)
        if index != expected:  # the SDKs' accumulators take the index as the position in the content list
            raise _broken_order(f"content_block_start for block {index} where block {expected} comes next")
        block = obj.get("content_block")
        if type(block) is not dict:
            # The SDKs' accumulators append the block itself to the message's content: without one
            # the client's stream crashes (a Python error, not an API error).
            raise _broken_order(f"content_block_start for block {index} without a content_block")
        kind = block.get("type")
        self.open_blocks[index] = kind if type(kind) is str else None
        if kind == "tool_use" and not block.get("input"):
            self.tool_args[index] = ArgsScan(keep=False)  # its input is to come: whole only once it closed
        self.called_tool = self.called_tool or kind == "tool_use"  # a server tool's use is not the client's to run

    def _stop_block(self, obj: Dict[str, Any]) -> None:
        index = obj.get("index")
        if type(index) is not int or index not in self.open_blocks:
            raise self._not_open("content_block_stop", index)
        del self.open_blocks[index]
        self.stopped_blocks.add(index)

    def _not_open(self, kind: str, index: Any) -> ProxyError:
        if type(index) is not int:
            return _broken_order(f"{kind} without a block index ({_shown(index)})")
        if index in self.stopped_blocks:
            if kind == "content_block_stop":
                return _broken_order(f"a second content_block_stop for block {index}")
            return _broken_order(f"{kind} for block {index} after its content_block_stop")
        return _broken_order(f"{kind} for block {index} before its content_block_start")

    def _bad_event(self, event: ServerSentEvent) -> List[Event]:
        if event.event == "error":  # "event: error" with a plain-text message is still an error
            raise error_from_event({"error": {"type": "api_error", "message": event.data}}, self.secrets)
        return self._not_json()

    def _message_start(self, obj: Dict[str, Any]) -> List[Event]:
        message: Dict[str, Any] = obj["message"] if isinstance(obj.get("message"), dict) else {}
        self._take_usage(message.get("usage"))
        if self.started or self.held:
            # Ours went out while the upstream was slow (or this is a second one): its usage goes with
            # the message_delta.
            usage = message.get("usage")
            self.late_usage = _counts(usage, _START_USAGE_KEYS)
            return []
        self.held = [{**obj, "message": _full_message(message, self.ids.message(message.get("id")), self.model,
                                                           self.estimate)}]
        return []

    def _stop(self, obj: Optional[Event] = None) -> List[Event]:
        """The held message_delta, then message_stop (the upstream's ``obj``, or one of the proxy's)."""
        self.complete = self.done = True
        self.output_counted = self.output_counted or self.output_seen
        held, self.final_delta = self.final_delta, None
        return ([held] if held is not None else []) + [obj if obj is not None else {"type": "message_stop"}]

    def _take_usage(self, usage: Any, final: bool = False) -> None:
        """The counts are cumulative (message_delta repeats message_start's). The first message_delta's
        are the answer's own (``final``) and replace message_start's, which a server may have
        estimated (another claudeproxy in front of a Chat upstream said 36 input tokens there, 12 at
        the end, as the client is told), even the output count below its placeholder; but not by a
        0 after an input count (servers that send input_tokens 0 there). Otherwise none goes down:
        a second message_delta takes nothing away."""
        for key, value in _counts(usage, USAGE_KEYS).items():
            replaces = final and (value > 0 or key == "output_tokens")
            self.counts[key] = value if replaces else max(value, self.counts.get(key, 0))
        searches = web_searches(usage)
        if searches:  # kept in Anthropic's own shape too: billed per search (cost.py)
            self.counts["server_tool_use"] = {"web_search_requests": max(searches, web_searches(self.counts))}
        one_hour = one_hour_writes(usage)
        if one_hour is not None:  # kept in Anthropic's own shape, which the record reads (pipeline._usage_fields)
            self.counts["cache_creation"] = {"ephemeral_1h_input_tokens": max(one_hour, one_hour_writes(self.counts) or 0)}


def _counts(usage: Any, keys: Tuple[str, ...]) -> Dict[str, int]:
    """The counts among ``keys`` of an upstream's usage object; one that is no count (``counts.py``:
    negative, a float, a string) is left out, so an earlier good one (message_start's) stands."""
    if not isinstance(usage, dict):
        return {}
    found = {k: count_or_none(usage.get(k)) for k in keys}
    return {k: v for k, v in found.items() if v is not None}


def _merged_usage(held: Dict[str, Any], later: Dict[str, Any]) -> Dict[str, Any]:
    """Two message_deltas' usage as one: the higher of two counts, a count over what is none (null,
    a string), and nothing a later one leaves out or nulls (the SDKs skip a null there)."""
    out = dict(held)
    for key, value in later.items():
        old = out.get(key)
        if type(value) is int and type(old) is int:
            out[key] = max(value, old)
        elif key not in out or old is None or type(value) is int and type(old) is not int:
            out[key] = value
    return out


def masked_answer(obj: Any, forms: Any) -> Any:
    """A JSON answer with a key the upstream echoes in it masked, but in what the model wrote."""
    if isinstance(obj, dict) and forms and holds_secret(_text_of(obj), forms):
        return _masked(obj, forms, "message")  # an upstream that echoes the key it was sent
    return obj


def _holds_secret(data: str, obj: Dict[str, Any], kind: str, forms: Any) -> bool:
    """Does the event hold a key, in its data or as its name? The data as the client gets it: the
    object is written out again, so a key the upstream spelled with JSON escapes (one ``\\u004b``
    is enough) would reach the client plain though its raw text never showed it."""
    text = data if "\\u" not in data else _text_of(obj)
    return holds_secret(text, forms) or holds_secret(kind, forms)


# What a model wrote, which passes as written (README, Security: masking could change an answer that
# quotes a key the user pasted): a block's text, thinking and input, by the block's or delta's type,
# in an answer's content and in the two events that carry blocks. Elsewhere a field of that name is
# the upstream's own (a "text" in message_delta: no client reads it), and masked.
_MODEL_TEXT = {"text": "text", "thinking": "thinking", "tool_use": "input", "server_tool_use": "input",
               "mcp_tool_use": "input",
               "text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}
_BLOCKS_IN = {"content_block_start": "content_block", "content_block_delta": "delta"}


def _model_text_paths(obj: Dict[str, Any], kind: str) -> List[Tuple[Any, ...]]:
    """``kind``: the event's, or "message" for a JSON answer."""
    blocks: List[Tuple[Any, ...]] = []
    if kind == "message" and isinstance(obj.get("content"), list):
        blocks = [("content", i) for i, b in enumerate(obj["content"]) if isinstance(b, dict)]
    elif kind in _BLOCKS_IN and isinstance(obj.get(_BLOCKS_IN[kind]), dict):
        blocks = [(_BLOCKS_IN[kind],)]
    paths = []
    for path in blocks:
        block = _at(obj, path)
        name = _MODEL_TEXT.get(block.get("type")) if isinstance(block.get("type"), str) else None
        if name is not None and name in block:
            paths.append(path + (name,))
    return paths


def _at(obj: Any, path: Tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _text_of(obj: Any) -> str:
    """An answer's JSON text, for the secret search; "" where it cannot be written again."""
    try:
        return json.dumps(obj, ensure_ascii=False)
    except (ValueError, RecursionError):
        return ""


def _masked(obj: Dict[str, Any], forms: Any, kind: str) -> Any:
    """``obj`` with the secrets masked wherever the upstream put them but in what the model wrote."""
    spared = [(path, _at(obj, path)) for path in _model_text_paths(obj, kind)]
    for path, _ in spared:
        _at(obj, path[:-1])[path[-1]] = None
    try:
        out = masked_json(obj, forms)
    except (ValueError, RecursionError):  # (nested just short of the decoder's limit: no re-encoding)
        raise UpstreamUnavailable("upstream sent the proxy's key where it could not be masked") from None
    finally:
        for path, value in spared:
            _at(obj, path[:-1])[path[-1]] = value  # the upstream's object as it came
    for path, value in spared:
        _at(out, path[:-1])[path[-1]] = value
    return out


def _named(event: ServerSentEvent) -> Optional[Tuple[str, Dict[str, Any]]]:
    """The event's kind and its object, whose "type" says that kind; None for one that is no JSON
    object or has no kind fit to be an event name."""
    try:
        obj = loads_data(event.data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    kind = obj.get("type") if isinstance(obj.get("type"), str) else event.event
    if not _EVENT_NAME.match(kind):
        # No type, or one that is no event name: it goes out as the "event:" line, where a
        # line break would let the upstream write events the fold never checked or counted.
        return None
    if obj.get("type") != kind:
        # Named only by its "event:" line (or "type" is not a string): the payload carries the
        # name it is handled by, so the client sees the same end the proxy counted.
        obj = {**obj, "type": kind}
    return kind, obj


def _entry_scan(scans: Dict[int, ArgsScan], index: int) -> ArgsScan:
    scan = scans.get(index)
    if scan is None:
        scan = scans[index] = ArgsScan(keep=False)
    return scan


def _broken_order(what: str) -> ProxyError:
    return UpstreamUnavailable(f"upstream stream broke the event order: {what}")


def _shown(value: Any) -> str:
    """The upstream's value in a message, whole or not at all (``redact.quoted``)."""
    shown = json.dumps(value)
    return "none" if value is None else shown if len(shown) <= 40 else f"a {type(value).__name__}"

