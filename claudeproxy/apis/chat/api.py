"""Chat Completions as the pipeline sees it: parse, prepare, from_json, fold, recover (``apis/base.py``).

Pure but for what ``recover`` learns: the optional fields each model's upstream refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from typing import Any, Dict, FrozenSet, List, NamedTuple, Optional, Tuple

from ...anthropic_types import MessagesRequest, parse_messages_request, tool_use_ids, wants_thinking
from ...dialects import Dialect, azure_api_version
from ...errors import ProxyError
from ...ids import new_id
from ...routing import Target
from ...tool_memo import ToolMemo
from ...urls import chat_url
from ..base import (EFFORT_FIELD, EFFORT_ORDER, NO_OFF_SWITCH, QUOTED_WORD, ClientRequest, Exchange, RefusedFields,
                    UpstreamApi, encode_body, offered_translated, raised_effort, refused_fields, refuses_images,
                    remember)
from ..older_form import SYSTEM_FIRST
from ..stops import unsent_stops
from .request import chat_tools, to_chat_request
from .response import message_from_body, usage_from
from .stream import ChatFold, LocalStopFold, LocalStopTranslator, StreamTranslator, reported_cost
from .wire import reports_usage, usage_of


log = logging.getLogger(__name__)

# Fields the proxy adds on its own that an upstream may refuse for a model ("Unsupported parameter:
# 'reasoning_effort' is not supported with this model", "Unrecognized request argument supplied",
# a strict server's "Extra inputs are not permitted"). Without them the request means the same;
# the others (messages, tools, response_format...) carry the client's meaning and stay. stop is
# the client's too, but the proxy matches the stop strings it did not send itself (apis/stops.py).
DROPPABLE_FIELDS = ("reasoning_effort", "reasoning", "thinking", "reasoning_format", "chat_template_kwargs",
                    "parallel_tool_calls", "prompt_cache_key", "session_id", "user", "stream_options", "top_k",
                    "temperature", "top_p", "stop", "tool_choice")
# tool_choice means the same without it only as "auto" (deepseek-reasoner refuses it in thinking
# mode); "required", "none" or a named tool are the client's and stay, refused or not.
DROPPABLE_ONLY_AS = {"tool_choice": "auto"}
# The efforts from least to most, and how a refusal names them: apis/base.py (raised_effort reads a
# refused least effort for both APIs). The client's top ones ("max", "xhigh": Claude Code's /effort)
# are new: gpt-5 answers "Unsupported value: 'reasoning_effort' does not support 'max' with this
# model. Supported values are: 'minimal', 'low', 'medium', and 'high'." The request goes again
# with the most the model takes, remembered for the model.
_ONE_OF = re.compile(r"one\s+of|supported\s+values|allowed\s+values", re.I)
_REFUSES_ONE = re.compile(r"not\s+support|unsupported", re.I)  # names a refused value: not a list alone
# Gemini says it of its thinking level: "Thinking level MEDIUM is not supported for this model. Please
# retry with other thinking level" (Gemini 3 Pro takes low and high: discuss.ai.google.dev/t/112648).
_LEVEL_REFUSED = re.compile(r"thinking\s+level\s+['\"`]?(\w+)['\"`]?\s+is\s+not\s+supported", re.I)


# Ollama's 400 to a thinking budget (an effort) for a model that cannot think: '"llama3.2" does not
# support thinking' (server/routes.go), every request, naming no field: the effort goes. Ollama
# 0.11.5 to 0.12.3 passed the effort on as the think value and refused "none" (the off switch) for
# all but gpt-oss: 'think value "none" is not supported for this model'.
_CANNOT_THINK = re.compile(r"does\s+not\s+support\s+thinking|think\s+value\s+\S+\s+is\s+not\s+supported", re.I)


def sends_images(body: Dict[str, Any]) -> bool:
    """Does this Chat request carry an image part (in any message's content list)?"""
    return any(isinstance(part, dict) and part.get("type") == "image_url"
               for message in body.get("messages") or () if isinstance(message, dict)
               for part in (message.get("content") if isinstance(message.get("content"), list) else ()))


def _effort_within(payload: Dict[str, Any], most: Optional[str], refused_levels: Optional[FrozenSet[str]]) -> None:
    """``payload``'s effort at most ``most`` and none of ``refused_levels`` (the next below, or none)."""
    if most is not None and EFFORT_ORDER.index(payload.get("reasoning_effort", "none")) > EFFORT_ORDER.index(most):
        payload["reasoning_effort"] = most
    if refused_levels and payload.get("reasoning_effort") in refused_levels:
        lower = _below_refused(payload["reasoning_effort"], refused_levels)
        if lower is None:
            del payload["reasoning_effort"]
        else:
            payload["reasoning_effort"] = lower


def late_system(body: Dict[str, Any]) -> bool:
    """Does a Chat request's body hold a system message after another kind of message?"""
    messages = body.get("messages") or []
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    start = next((i for i, role in enumerate(roles) if role not in ("system", "developer")), len(roles))
    return any(role in ("system", "developer") for role in roles[start:])


def lower_effort(message: str, sent: Any) -> Optional[str]:
    """The effort to send instead of ``sent`` when ``message`` refuses that value, or None.

    The message names the refused value first, then maybe the ones the model takes: the most of
    those below ``sent``; when it lists none, the next below. Or it lists only the ones the model
    takes ("must be one of `low`, `medium`, or `high`"): the most of those below ``sent``.
    """
    if sent not in EFFORT_ORDER or sent in ("none", "minimal", "low") or not EFFORT_FIELD.search(message):
        return None
    quoted = QUOTED_WORD.findall(message)
    named = [w for w in quoted if w in EFFORT_ORDER]
    rank = EFFORT_ORDER.index(sent)
    if named and sent not in quoted and len(named) == len(quoted) - quoted.count("reasoning_effort") \
            and _ONE_OF.search(message) and not _REFUSES_ONE.search(message):
        # Only the ones it takes ("`reasoning_effort` must be one of `low`, `medium`, or `high`"):
        # the most of those below.
        below = [EFFORT_ORDER.index(w) for w in named if EFFORT_ORDER.index(w) < rank]
        return EFFORT_ORDER[max(below)] if below else None
    if not named or named[0] != sent:
        return None  # the refused value comes first: this is about another one, or about the field
    below = [EFFORT_ORDER.index(w) for w in named[1:] if EFFORT_ORDER.index(w) < rank]
    return EFFORT_ORDER[max(below) if below else rank - 1]


def refused_level(message: str, sent: Any) -> Optional[str]:
    """The effort ``message`` refuses as a thinking level the model does not have (Gemini 3 Pro's
    "Thinking level MEDIUM is not supported"), when it is the one sent. That level alone: Gemini 3
    Pro takes low and high, so a refused medium says nothing of high."""
    level = _LEVEL_REFUSED.search(message)
    return sent if level is not None and sent in EFFORT_ORDER and level.group(1).lower() == sent else None


def _below_refused(effort: str, refused: FrozenSet[str]) -> Optional[str]:
    """The first effort below ``effort`` the model did not refuse as a level; None below low (the
    model's own default then, never "none", which switches thinking off)."""
    rank = EFFORT_ORDER.index(effort)
    while rank > EFFORT_ORDER.index("low") and EFFORT_ORDER[rank] in refused:
        rank -= 1
    return None if EFFORT_ORDER[rank] in refused else EFFORT_ORDER[rank]


class ChatContext(NamedTuple):
    """What reading a Chat answer needs of its request (``Exchange.context``, set by ``prepare``)."""

    tool_names: Dict[str, str]  # the names sent upstream, back to the client's
    target: Target
    local_stops: Tuple[str, ...]  # the client's stop strings the proxy matches itself (not sent)
    usage_chunk_asked: bool  # stream_options was sent: the upstream was asked for a usage chunk

    @property
    def dialect(self) -> Dialect:
        assert self.target.dialect is not None, "a chat target always has a dialect"
        return self.target.dialect


class ChatApi(UpstreamApi):
    name = "chat"
    translates = True  # the request is parsed and rewritten: local answers and local token counts apply

    def __init__(self, tools: ToolMemo) -> None:
        self.tools = tools  # the server's: a tool set is parsed and translated once per dialect
        self._refused = RefusedFields(DROPPABLE_FIELDS, DROPPABLE_ONLY_AS)
        # The models whose upstream refused max_tokens for max_completion_tokens (a reasoning model
        # behind a URL the dialects do not know: FIELD-NOTES 6).
        self._completion_tokens: Dict[Tuple[str, str], bool] = {}
        self._most_effort: Dict[Tuple[str, str], str] = {}  # the most effort a model took (lower_effort)
        self._least_effort: Dict[Tuple[str, str], str] = {}  # the least effort a model took (raised_effort)
        self._thinks_always: Dict[Tuple[str, str], bool] = {}  # the models that refused effort "none"
        self._no_images: Dict[Tuple[str, str], bool] = {}  # the models that refused an image (refuses_images)
        self._system_first: Dict[Tuple[str, str], bool] = {}  # the models that refused a late system turn
        self._refused_levels: Dict[Tuple[str, str], FrozenSet[str]] = {}  # thinking levels refused (refused_level)
        self._lock = threading.Lock()

    def parse(self, body: Dict[str, Any]) -> MessagesRequest:
        return parse_messages_request(body, self.tools.parse)

    def prepare(self, req: ClientRequest, target: Target, cap: Optional[int]) -> Exchange:
        parsed, dialect = req.parsed, target.dialect
        assert parsed is not None and dialect is not None, "parse() runs before prepare()"
        key = (target.provider.name, target.model)
        dialect = self._learned_dialect(dialect, key)
        # Some servers lose tool calls when streaming (PROTOCOL.md 5.6): ask them for JSON instead.
        wants_stream = parsed.stream and (dialect.stream_with_tools or not parsed.tools)
        tools, encoded = offered_translated(self.tools, parsed, ("chat", dialect),
                                            lambda offered: chat_tools(offered, dialect))
        translation = to_chat_request(parsed, model=target.model, dialect=dialect, max_output_tokens=cap,
                                      stream=wants_stream, cache_key=req.cache_key, tools=tools)
        chat = translation.request
        payload = chat.to_dict()
        self._learned_payload(payload, key)
        body = encode_body(payload, "tools", encoded if chat.tools is tools[0] else None)
        azure = azure_api_version(target.provider.azure_api_version, dialect) if dialect.auth == "azure" else None
        headers = (("Content-Type", "application/json"),
                   ("Accept", "text/event-stream" if chat.stream else "application/json"))
        local = unsent_stops(parsed.stop_sequences, payload.get("stop") or ())
        # The context keeps the tool names only: the request's dataclasses (~25 KiB for a Claude
        # Code turn) would otherwise stay alive for as long as the upstream takes to answer.
        return Exchange(chat_url(target.provider.url, target.model, azure), body, headers, chat.stream,
                        chat.max_tokens, translation.warnings,
                        ChatContext(translation.tool_names, target, local, "stream_options" in payload))

    def _learned_dialect(self, dialect: Dialect, key: Tuple[str, str]) -> Dialect:
        """The dialect with what the model's refusals taught of its message forms."""
        if not dialect.string_content_only and key in self._no_images:
            dialect = dataclasses.replace(dialect, string_content_only=True)  # as a text_only model's
        if not dialect.late_system_role and key in self._system_first:
            dialect = dataclasses.replace(dialect, late_system_role="user")  # as Mistral's
        return dialect

    def _learned_payload(self, payload: Dict[str, Any], key: Tuple[str, str]) -> None:
        """``payload`` without the fields the model refused, its effort within what it took."""
        self._refused.drop(payload, key)
        with self._lock:
            renamed, most, least = key in self._completion_tokens, self._most_effort.get(key), self._least_effort.get(key)
            thinks_always, refused_levels = key in self._thinks_always, self._refused_levels.get(key)
        if thinks_always and payload.get("reasoning_effort") == "none":
            del payload["reasoning_effort"]  # the model's own default: it cannot stop thinking
        if renamed and "max_tokens" in payload:
            payload["max_completion_tokens"] = payload.pop("max_tokens")
        _effort_within(payload, most, refused_levels)
        if least is not None and payload.get("reasoning_effort") in ("none", "minimal"):
            payload["reasoning_effort"] = least

    def recover(self, exc: ProxyError, req: ClientRequest, target: Target, ex: Exchange,
                cap: Optional[int]) -> Optional[Exchange]:
        """The request again without an optional field the upstream refused as such (or with
        max_completion_tokens for a refused max_tokens, an effort the model takes, images or late
        system turns in a form it takes), or None.

        The refusal is remembered for the model, so later requests do not pay a round trip for it.
        """
        text = getattr(exc, "upstream_message", "") or ""
        key, label = (target.provider.name, target.model), target.label
        sent = json.loads(ex.body)
        learned = self._learned_form(exc.status, text, sent, key, label) or exc.status in (400, 422) and (
            self._learned_effort(text, sent, key, label) or self._learned_fields(text, sent, key, label))
        return self.prepare(req, target, cap) if learned else None

    def _learned_form(self, status: int, text: str, sent: Dict[str, Any], key: Tuple[str, str], label: str) -> bool:
        """Images a model takes none of, system turns its template takes only first: the request was
        sent with them (also when another request taught it meanwhile); again without, which is never
        refused so a second time. Any status: llama.cpp says both with a 500."""
        if refuses_images(status, text) and sends_images(sent):
            if self._remember(self._no_images, key, True):
                log.warning("%s takes no images: each goes as a text placeholder from now on", label)
            return True
        if SYSTEM_FIRST.search(text) and late_system(sent):
            if self._remember(self._system_first, key, True):
                log.warning("%s takes a system message only at the start: later ones go as user turns from now on",
                            label)
            return True
        return False

    def _learned_effort(self, text: str, sent: Dict[str, Any], key: Tuple[str, str], label: str) -> bool:
        """An effort the model refused: "none" from one that cannot stop thinking, a thinking level,
        or one above the most it takes."""
        effort = sent.get("reasoning_effort")
        if effort == "none" and NO_OFF_SWITCH.search(text):
            self._remember(self._thinks_always, key, True)
            log.warning("%s cannot stop thinking: no reasoning_effort \"none\" from now on", label)
            return True
        level = refused_level(text, effort)
        if level is not None:
            with self._lock:  # (read and written under one hold: two refusals at once keep both levels)
                remember(self._refused_levels, key, self._refused_levels.get(key, frozenset()) | {level})
            log.warning("%s refused thinking level %r: the next below from now on", label, level)
            return True
        lower = lower_effort(text, effort)
        if lower is not None:
            self._remember(self._most_effort, key, lower)
            log.warning("%s refused reasoning_effort %r: %r from now on", label, effort, lower)
            return True
        raised = raised_effort(text, effort)
        if raised is not None:
            self._remember(self._least_effort, key, raised)
            log.warning("%s refused reasoning_effort %r: %r for thinking off from now on", label, effort, raised)
            return True
        return False

    def _learned_fields(self, text: str, sent: Dict[str, Any], key: Tuple[str, str], label: str) -> bool:
        """Optional fields refused as such (max_tokens: for max_completion_tokens)."""
        refused = refused_fields(text)
        if sent.get("reasoning_effort") is not None and _CANNOT_THINK.search(text):
            refused |= frozenset({"reasoning_effort"})  # the effort is the thinking asked for
        if "max_tokens" in refused and "max_tokens" in sent and "max_completion_tokens" in text:
            self._remember(self._completion_tokens, key, True)
            log.warning("%s refused max_tokens: max_completion_tokens from now on", label)
            return True
        return bool(refused) and self._refused.learn(refused, sent, key, label)

    def _remember(self, table: Dict[Tuple[str, str], Any], key: Tuple[str, str], value: Any) -> bool:
        """``table[key] = value`` (bounded, ``remember``); True the first time the key is taught."""
        with self._lock:
            first = key not in table
            remember(table, key, value)
        return first

    def from_json(self, req: ClientRequest, ex: Exchange, obj: Any, secrets: Tuple[str, ...] = ()
                  ) -> Tuple[Dict[str, Any], List[str]]:
        ctx = _context(ex)
        dialect = ctx.dialect
        parsed = req.parsed
        assert parsed is not None
        return message_from_body(
            obj, model=req.model, new_id=new_id, tool_names=ctx.tool_names,
            stop_sequences=parsed.stop_sequences, dialect_name=dialect.name, think_tags=dialect.think_tags,
            secrets=secrets, local_stops=ctx.local_stops, thinking=wants_thinking(parsed),
            history=tool_use_ids(parsed),
        )

    def fold(self, req: ClientRequest, ex: Exchange, *, message_id: str, input_tokens: int,
             secrets: Tuple[str, ...] = ()) -> ChatFold:
        ctx = _context(ex)
        dialect = ctx.dialect
        parsed = req.parsed
        assert parsed is not None
        kwargs: Dict[str, Any] = dict(
            message_id=message_id, model=req.model, input_tokens=input_tokens, new_id=new_id,
            tool_names=ctx.tool_names, stop_sequences=parsed.stop_sequences,
            dialect_name=dialect.name, think_tags=dialect.think_tags, secrets=secrets, hold_calls=dialect.thought_signatures,
            thinking=wants_thinking(parsed), usage_chunk_asked=ctx.usage_chunk_asked, history=tool_use_ids(parsed),
        )
        if ctx.local_stops:  # only then a fold that matches stop strings: nothing added per chunk otherwise
            return LocalStopFold(LocalStopTranslator(local_stops=ctx.local_stops, **kwargs),
                                 dialect.billed_cost_field)
        return ChatFold(StreamTranslator(**kwargs), dialect.billed_cost_field)

    def reports_usage(self, obj: Any) -> bool:
        return reports_usage(obj)  # a count where the streams have one (also Groq's and Moonshot's places)

    def usage_of(self, obj: Any) -> Any:
        usage = usage_of(obj)
        return usage_from(usage) if usage is not None else None

    def billed_cost(self, ex: Exchange, obj: Any) -> Optional[float]:
        """What the upstream billed for a JSON answer, where its dialect says it reports that."""
        return reported_cost(obj, _context(ex).dialect.billed_cost_field)


def _context(ex: Exchange) -> ChatContext:
    """The exchange's context, as ``prepare`` made it."""
    assert isinstance(ex.context, ChatContext), "a Chat exchange is prepared by ChatApi"
    return ex.context
