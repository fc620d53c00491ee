"""What every upstream API module works with. Pure but for what a server learns as it runs (the
fields each model refused, behind a lock) and the log line that says so.

``ClientRequest`` is one client request as the pipeline read it; ``Exchange``
is that request prepared for one target (URL, body, headers) plus what the API
needs to read the answer. Each API (``apis/chat``, ``apis/messages``,
``apis/responses``) has an object with the same four methods:

- ``parse(body)``: the parsed request the API needs (None when it forwards);
- ``prepare(req, target, cap)``: the ``Exchange`` to send, ``max_tokens`` within ``cap``;
- ``from_json(req, exchange, obj, secrets)``: the client's JSON reply and warnings to log;
- ``fold(req, exchange, message_id=, input_tokens=, secrets=)``: the ``StreamFold``.

Each derives from ``UpstreamApi``, which holds the defaults of what only some APIs do
(``recover``, ``relayed_headers``, the usage and cost of a JSON answer).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, FrozenSet, Hashable, List, Optional, Set, Tuple, TypeVar

from ..anthropic_types import MessagesRequest, Tool, found_tools, offered_tools

if TYPE_CHECKING:  # for annotations only: routing imports nothing of the APIs, and must not start to
    from ..ending import StreamFold
    from ..errors import ProxyError
    from ..routing import Target
    from ..tool_memo import ToolMemo

log = logging.getLogger(__name__)

# A model (or a server) that takes no images says so in its own words, and then refuses every later
# turn too: the image stays in the history that Claude Code sends again, /compact included. The
# request goes again with a text placeholder for each image, and the model gets placeholders from
# then on. Groq: "messages[1].content must be a string"; llama.cpp without its projector: "image input
# is not supported" (a 500); vLLM: "... is not a multimodal model"; OpenRouter: "No endpoints found
# that support image input" (a 404); OpenAI's older models: "image_url is only supported by certain
# models"; DeepSeek: "unknown variant `image_url`"; Ollama: "missing data required for image input";
# the wordings "does not support images/vision", "only text content type is supported".
_NO_IMAGES = re.compile(
    r"image(?:\s+input)?\s+is\s+not\s+supported|image_url\s+is\s+(?:only|not)\s+supported|"
    r"(?:does\s+not|doesn't|cannot)\s+(?:support|accept|take)\s+(?:images|image\s+input|image|vision|multimodal)\b"
    r"(?!\s+(?:larger|bigger|over|above|exceeding|of\s+(?:size|type|format)|in\s+(?:this|that|the)|with|from|by\s+url))|"
    r"(?:vision|multimodal)(?:\s+(?:input|content))?\s+is\s+not\s+supported|not\s+a\s+multimodal\s+model|"
    r"no\s+endpoints\s+found\s+that\s+support\s+image|unknown\s+variant\s+`?image_url|"
    r"missing\s+data\s+required\s+for\s+image|only\s+'?text'?\s+content\s+type|not\s+compiled\s+for\s+multimodal|"
    r"content\W{0,4}(?:\s*:\s*value)?\s+must\s+be\s+a\s+string",
    re.I)
_NO_IMAGE_STATUSES = (400, 404, 422, 500, 501)  # OpenRouter's 404, llama.cpp's 500 and 501


def refuses_images(status: int, message: str) -> bool:
    """Does an upstream's error say that the model takes no images?"""
    return status in _NO_IMAGE_STATUSES and bool(_NO_IMAGES.search(message))


@dataclasses.dataclass(frozen=True)
class ClientRequest:
    """One ``/v1/messages`` request from a client."""

    body: Dict[str, Any]  # the JSON object as sent; emptied once parsed if no target forwards it
    model: str  # the client's model name: what every reply names
    stream: bool
    headers: Any  # the client's headers (``get``/``get_all``), read-only
    query: str = ""  # the client's query string (Claude Code sends ``beta=true``)
    parsed: Optional[MessagesRequest] = None  # set for the APIs that translate
    cache_key: Optional[str] = None  # a prompt-cache key derived from the session, if any


@dataclasses.dataclass(frozen=True)
class Exchange:
    """One request prepared for one target."""

    url: str
    body: bytes
    headers: Tuple[Tuple[str, str], ...]  # the API's own headers (not the credential)
    stream: bool  # the upstream call streams
    max_tokens: Optional[int]  # as sent (the max_tokens retry reads it)
    warnings: Tuple[str, ...] = ()
    context: Any = None  # what the API needs to read the answer (tool names, ...), nothing bigger


class UpstreamApi:
    """What the pipeline asks of an upstream API (chat, responses, messages), in the order of a call:
    ``parse`` the client's body, ``prepare`` the upstream request, then read the answer with
    ``from_json`` or, streamed, with the events of a ``fold``. The four are each API's own; the
    hooks after them are defaults an API overrides where its upstream does more (no state here:
    each API keeps its own)."""

    translates: bool  # the request is parsed and rewritten (local answers, local token counts apply)

    def parse(self, body: Dict[str, Any]) -> Optional[MessagesRequest]:
        """The client's decoded body, validated (None: an API that forwards it as it is)."""
        raise NotImplementedError

    def prepare(self, req: ClientRequest, target: "Target", cap: Optional[int]) -> Exchange:
        """The upstream request for ``target``, its output within ``cap``."""
        raise NotImplementedError

    def from_json(self, req: ClientRequest, ex: Exchange, obj: Any,
                  secrets: Tuple[str, ...] = ()) -> Tuple[Dict[str, Any], List[str]]:
        """The client's message from the upstream's JSON answer, and warnings to log."""
        raise NotImplementedError

    def fold(self, req: ClientRequest, ex: Exchange, *, message_id: str, input_tokens: int,
             secrets: Tuple[str, ...] = ()) -> "StreamFold":
        """The fold from the upstream's stream to the client's events (``relay.Relay`` drives it)."""
        raise NotImplementedError

    def reports_usage(self, obj: Any) -> bool:
        """Does the JSON answer ``obj`` say what it used? Not: the client gets the estimate a stream
        would give, the call record no count (never 0 tokens at $0)."""
        return isinstance(obj, dict) and isinstance(obj.get("usage"), dict)

    def usage_of(self, obj: Any) -> Any:
        """The Anthropic usage a JSON answer ``obj`` reports (``reports_usage``), for the record of
        an answer that is a failure all the same (an overload, a failed Response): the upstream
        bills what it says it used. A forwarded answer's is its own."""
        return obj.get("usage") if isinstance(obj, dict) else None

    def billed_cost(self, ex: Exchange, obj: Any) -> Optional[float]:
        """What the upstream says it billed for the JSON answer ``obj``; None where it does not say
        (the record prices the tokens instead)."""
        return None

    def recover(self, exc: "ProxyError", req: ClientRequest, target: "Target", ex: Exchange,
                cap: Optional[int]) -> Optional[Exchange]:
        """The request changed for a refusal this API knows how to meet (an optional field the
        model refused, encrypted reasoning another key cannot read), within ``cap``; None: no change
        would help, the refusal stands."""
        return None

    def relayed_headers(self, headers: Any) -> Tuple[Tuple[str, str], ...]:
        """The upstream's response headers the client gets too: none, but where the upstream speaks
        the client's API and its headers mean what they say (Anthropic's rate limits)."""
        return ()


ToolsT = TypeVar("ToolsT", bound=Tuple[Any, ...])


def with_json(tools: ToolsT) -> Tuple[ToolsT, bytes]:
    """An API's translated tools (their list first) and that list's JSON, for ``encode_body``."""
    return tools, json.dumps(list(tools[0]), ensure_ascii=False).encode("utf-8")


def offered_translated(memo: "ToolMemo", parsed: MessagesRequest, name: Hashable,
                       translate: Callable[[Tuple[Tool, ...]], ToolsT]) -> Tuple[ToolsT, bytes]:
    """An API's translation of the tools the model is offered (``offered_tools``) and its JSON:
    once per tool set for a server (``ToolMemo``), and afresh each turn for a conversation whose
    tool search found deferred tools (kept, the sets of found tools a client may send have no end)."""
    found = found_tools(parsed)
    shown = offered_tools(parsed, found)
    if found:
        return with_json(translate(shown))
    return memo.derived(parsed.tools, name, lambda: with_json(translate(shown)))


def encode_body(payload: Dict[str, Any], key: str = "", encoded: Optional[bytes] = None) -> bytes:
    """``payload`` as UTF-8 JSON (``json.dumps`` with ``ensure_ascii=False``: CJK text stays 3 bytes
    a character, not 6).

    ``encoded``, if given, is ``payload[key]`` already encoded: a server encodes a tool list
    once (``ToolMemo``), and the key goes last in the object. Claude Code's tools are most of its
    request (36 of 60 KB in a real session), so this halves the encoding of a turn.
    """
    if encoded is None or key not in payload:
        return json.dumps(payload, ensure_ascii=False).encode("utf-8")
    rest = json.dumps({k: v for k, v in payload.items() if k != key}, ensure_ascii=False).encode("utf-8")
    field = b"%s: %s}" % (json.dumps(key).encode("ascii"), encoded)
    # A view, not a slice: the body is built in one copy.
    return b"".join((memoryview(rest)[:-1], b", " if len(rest) > 2 else b"", field))


# The most models a per-model memory (refused fields, learned limits) holds. Without --model the
# client names the model, so the names are unbounded; the oldest is forgotten first, and a forgotten
# one costs a refused round trip again, no more.
MODELS_REMEMBERED = 256
K = TypeVar("K")
V = TypeVar("V")


def remember(table: Dict[K, V], key: K, value: V, most: int = MODELS_REMEMBERED) -> None:
    """``table[key] = value``, the oldest entries dropped beyond ``most`` (caller holds its lock)."""
    table.pop(key, None)
    table[key] = value
    while len(table) > most:
        del table[next(iter(table))]


# Refusals of a field as such, each capturing the field's name: OpenAI's "Unsupported parameter:
# 'x' is not supported with this model" and "Unrecognized request argument supplied: x", others'
# "Unknown parameter: 'x'" and "property 'x' is unsupported", and a strict server's 422 (pydantic's
# extra_forbidden at ["body", "x"], or deeper: Mistral refuses stream_options at ["body",
# "stream_options", "include_usage"], and what was sent is the top-level field), xAI's "Model
# grok-4 does not support parameter reasoningEffort" (the name in camelCase: BerriAI/litellm#16265)
# and Gemini's 'Unknown name "parallel_tool_calls": Cannot find field' (a name followed by " at
# 'messages[0]'" is inside a message, not a top-level field). A refused value ("Unsupported value:
# 'x' does not support 'max'") names the field too, but the field itself is fine there: it
# matches none of these.
_FIELD_REFUSALS = (
    re.compile(r"(?:unsupported|unrecogni[sz]ed|unknown|extra)\s+(?:request\s+)?"
               r"(?:parameter|argument|field|key|property)s?(?:\s+supplied)?\s*:?\s*['\"`]?([A-Za-z_]\w*)", re.I),
    re.compile(r"(?:parameter|argument|field|key|property)\s+['\"`]?([A-Za-z_]\w*)['\"`]?\s+is\s+"
               r"(?:not\s+(?:supported|allowed|permitted|recogni[sz]ed)|unsupported|unknown)", re.I),
    re.compile(r"does\s+not\s+support\s+(?:the\s+)?(?:parameter|argument|field)\s+['\"`]?([A-Za-z_]\w*)", re.I),
    re.compile(r"unknown\s+name\s+['\"`]([A-Za-z_]\w*)['\"`]\s*:\s*cannot\s+find\s+field", re.I),
    # Groq: "reasoning_format is not supported with this model" (the field's name alone, first).
    # DeepSeek: "Invalid parameter: tool_choice is not supported in thinking mode".
    re.compile(r"(?:^|[:.]\s*)['\"`]?([a-z][a-z_]*)['\"`]?\s+is\s+not\s+supported\s+"
               r"(?:(?:with|by|for)\s+this\s+model|in\s+thinking\s+mode)", re.I),
    # pydantic's message with its path in front, as Anthropic-style servers word it:
    # "context_management: Extra inputs are not permitted". A top-level name only: a dotted path
    # ("tools.3.cache_control: ...") is a key inside a field, not the field.
    # (Also quoted inside a wrapper's JSON string, or as FastAPI's "body.x".)
    re.compile(r"(?:^|[\s,;(\[\"'])(?:body\.)?([A-Za-z_]\w*):\s*extra\s+inputs?\s+(?:are|is)\s+not\s+permitted",
               re.I),
)
# zod (TypeScript servers): "Unrecognized key(s) in object: 'context_management', 'output_config'".
_UNRECOGNIZED_KEYS = re.compile(
    r"unrecogni[sz]ed\s+key\(?s?\)?\s+in\s+object\s*:\s*((?:['\"`]\w+['\"`]\s*,?\s*)+)", re.I)
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_EXTRA_BODY_FIELD = re.compile(r'"loc"\s*:\s*\[\s*"body"\s*,\s*"([A-Za-z_]\w*)"\s*[\],]')


def refused_fields(message: str) -> FrozenSet[str]:
    """The request fields an upstream's error message refuses as such (not for a value)."""
    names = {m.group(1) for pattern in _FIELD_REFUSALS for m in pattern.finditer(message)}
    for keys in _UNRECOGNIZED_KEYS.finditer(message):
        names.update(re.findall(r"\w+", keys.group(1)))
    if "extra" in message.lower():  # pydantic: {"type": "extra_forbidden", "loc": ["body", "x", ...], ...}
        names.update(_extra_body_fields(message))
    # A server written in Go or JS may name the field as its own struct does: reasoningEffort is
    # the reasoning_effort the proxy sent.
    return frozenset(names | {_CAMEL_HUMP.sub("_", name).lower() for name in names})


def pydantic_errors(message: str) -> Optional[List[Dict[str, Any]]]:
    """The entries of a pydantic 422 (FastAPI's ``{"detail": [...]}``) in ``message``, also where a
    wrapper put that body under "message" or "error", or as a string in them; None where there is none."""
    start = message.find("{")
    try:
        obj: Any = json.JSONDecoder().raw_decode(message, start)[0] if start >= 0 else None
    except (ValueError, RecursionError):  # an upstream's words, nested as deep as it likes
        return None
    for _ in range(4):  # a wrapper or two around it (LiteLLM, OpenRouter, Mistral)
        if not isinstance(obj, dict):
            return None
        if isinstance(obj.get("detail"), list):
            return [e for e in obj["detail"] if isinstance(e, dict)]
        inner = obj.get("message", obj.get("error"))
        if isinstance(inner, str) and "{" in inner:
            try:
                inner = json.JSONDecoder().raw_decode(inner, inner.find("{"))[0]
            except (ValueError, RecursionError):
                return None
        obj = inner
    return None


def pydantic_lines(message: str) -> str:
    """A pydantic 422 as the lines Anthropic-style servers print ("thinking.display: Extra inputs are
    not permitted"), without the values each entry echoes (a refused body's own words, which would
    read as more refusals); ``message`` itself where it holds no such body."""
    entries = pydantic_errors(message)
    if not entries:
        return message
    lines = []
    for entry in entries:
        loc = entry.get("loc") if isinstance(entry.get("loc"), list) else []
        path = [str(p) for p in (loc[1:] if loc[:1] == ["body"] else loc)]
        lines.append(f"{'.'.join(path) or 'body'}: {entry.get('msg', '')} ({entry.get('type', '')})")
    return "\n".join(lines)


def _extra_body_fields(message: str) -> Set[str]:
    """The top-level fields of a pydantic 422's entries that are extra (not every entry's field: a
    value error may sit beside them); every field a body loc names where the body is not JSON."""
    entries = pydantic_errors(message)
    if entries is None:
        return {m.group(1) for m in _EXTRA_BODY_FIELD.finditer(message)}
    fields = set()
    for entry in entries:
        loc = entry.get("loc")
        said = f"{entry.get('type', '')} {entry.get('msg', '')}".lower()
        if isinstance(loc, list) and len(loc) > 1 and loc[0] == "body" and isinstance(loc[1], str) and "extra" in said:
            fields.add(loc[1])
    return fields


class RefusedFields:
    """The optional fields each upstream model refused as such, never sent to it again (the
    request means the same without them); for every API that sends fields on its own judgement.
    Kept per server, by (provider, model); thread-safe."""

    def __init__(self, droppable: Tuple[str, ...], only_as: Optional[Dict[str, Any]] = None) -> None:
        self._droppable = droppable  # the fields a request may go without, in the order named in the log
        # Fields the request means the same without only at one value, their default (tool_choice
        # "auto"), or where a test of the value says so: else they carry the client's meaning and
        # stay, refused or not.
        self._only_as = only_as or {}
        self._by_model: Dict[Tuple[str, str], FrozenSet[str]] = {}
        self._lock = threading.Lock()

    def _droppable_in(self, payload: Dict[str, Any], name: str) -> bool:
        if name not in payload or name not in self._only_as:
            return name in payload
        rule = self._only_as[name]
        return bool(rule(payload[name])) if callable(rule) else payload[name] == rule

    def drop(self, payload: Dict[str, Any], key: Tuple[str, str]) -> None:
        """Take from ``payload`` the fields the model ``key`` refused before."""
        with self._lock:
            refused = self._by_model.get(key, frozenset())
        for name in refused:
            if self._droppable_in(payload, name):
                del payload[name]

    def learn(self, refused: FrozenSet[str], sent: Dict[str, Any], key: Tuple[str, str], label: str) -> bool:
        """Remember the droppable fields among ``refused`` that the request ``sent`` carried; False
        when there is none (then another send would be refused the same)."""
        named = [f for f in self._droppable if f in refused and self._droppable_in(sent, f)]
        if not named:
            return False
        with self._lock:
            remember(self._by_model, key, self._by_model.get(key, frozenset()) | frozenset(named))
        shown = [f"{f} {self._only_as[f]!r}" if f in self._only_as and not callable(self._only_as[f]) else f
                 for f in named]  # tool_choice 'auto'
        log.warning("%s refused %s: sent without from now on", label, ", ".join(shown))
        return True


# Gemini 2.5 Pro and 3 (and an alias of them) cannot stop thinking: reasoning_effort "none" is 'Budget 0
# is invalid. This model only works in thinking mode.' Only that value goes for the model; the others
# (a thinking budget's low, medium, high) still say what the client asked for.
NO_OFF_SWITCH = re.compile(r"only\s+works\s+in\s+thinking\s+mode", re.I)
# Efforts from least to most (a model takes a range of them), and how a refusal names one.
EFFORT_ORDER = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
EFFORT_FIELD = re.compile(r"reasoning[_.]?effort", re.I)
QUOTED_WORD = re.compile(r"['\"`](\w+)['\"`]")


def raised_effort(message: str, sent: Any) -> Optional[str]:
    """The least effort to send instead of a least one (``none``, ``minimal``: thinking disabled,
    ``dialects.least_effort``) that ``message`` refuses: the least of those it names after it ("does
    not support 'minimal' with this model. Supported values are: 'none', 'low', 'medium', and
    'high'": none); None where it names no other."""
    if sent not in ("none", "minimal") or not EFFORT_FIELD.search(message) or NO_OFF_SWITCH.search(message):
        return None
    named = [w for w in QUOTED_WORD.findall(message) if w in EFFORT_ORDER]
    if not named or named[0] != sent:
        return None  # the refused value comes first: this is about another one
    others = [EFFORT_ORDER.index(w) for w in named[1:] if w != sent]
    return EFFORT_ORDER[min(others)] if others else None
