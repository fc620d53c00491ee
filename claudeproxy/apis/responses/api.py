"""OpenAI Responses as the pipeline sees it: parse, prepare, from_json, fold, recover (``apis/base.py``). No
I/O but the log lines of what it learns.

``recover`` answers the refusals it can get past with a changed request instead
of an error for the client (RESPONSES.md 5 and 7): encrypted reasoning the
upstream cannot read any more (another key or organisation) is left out, then and
in the provider's later requests for an hour (remembered by the items' ids, so that
reasoning minted since, which it can read, still goes);
an organisation that may not have reasoning summaries is asked for none from
then on (remembered per provider, on this server); an optional field refused as
such (``temperature`` for a reasoning model behind a deployment name) is never
sent to that model again, as on Chat Completions (remembered per model).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Any, Dict, FrozenSet, List, Optional, Set, Tuple
from urllib.parse import parse_qsl, urlencode, urlsplit

from ...anthropic_types import MessagesRequest, parse_messages_request, tool_use_ids, wants_thinking
from ...errors import ProxyError
from ...ids import new_id
from ...routing import Target
from ...tool_memo import ToolMemo
from ...urls import join_path
from ..base import (EFFORT_FIELD, ClientRequest, Exchange, RefusedFields, UpstreamApi, encode_body,
                    offered_translated, raised_effort, refused_fields, remember)
from ..stops import unsent_stops
from .request import responses_tools, to_responses_request
from .response import reports_usage, to_messages_response, usage_from
from .stream import LocalStopResponsesFold, ResponsesFold

# Fields the proxy sends on its own judgement that a model's upstream may refuse as such ("Unsupported
# parameter: 'temperature' is not supported with this model" from a reasoning model the name did not
# reveal; 'reasoning' from a model that does not reason). Without them the request means the same.
DROPPABLE_FIELDS = ("temperature", "top_p", "reasoning", "parallel_tool_calls", "prompt_cache_key", "tool_choice",
                    "safety_identifier")
DROPPABLE_ONLY_AS = {"tool_choice": "auto"}  # another tool_choice is the client's (as on Chat)
# The most reasoning item ids a provider's memory of unreadable ones holds; the oldest is forgotten
# first, and one forgotten that comes back costs one refused round trip again.
UNREADABLE_REMEMBERED = 4096
# How long a provider's unreadable items stay left out after its last such refusal: OpenAI has refused
# blobs it could read during faults of its own (openai/codex#8119), and those heal.
UNREADABLE_FOR = 3600.0

log = logging.getLogger(__name__)


def responses_url(base: str, azure: bool) -> str:
    """``{base}/responses``; an Azure resource URL gets its v1 surface (``/openai/v1/responses``).

    ``azure``: the provider's dialect is Azure's (its host, or ``dialect: azure``), the same
    judgement that sends its key as ``api-key``: not a guess from the URL's text, whose query may
    name anything."""
    parts = urlsplit(base)
    if azure and "/openai/deployments/" in parts.path:
        # Responses has no deployment path: the model goes in the body (/openai/v1/responses).
        path = parts.path[:parts.path.index("/openai/deployments/")] + "/openai/v1"
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "api-version"])  # v1 takes none
        base = parts._replace(path=path, query=query).geturl()
    elif azure and "/openai/" not in parts.path + "/":
        base = join_path(base, "/openai/v1")
    return join_path(base, "/responses")


# A refusal of the effort sent: "Unsupported value: 'reasoning.effort' does not support 'low' with this model."
_MOST_REMEMBERED = 1024  # models remembered for refusing thinking off's least effort


def _thinking_off(parsed: MessagesRequest) -> bool:
    return parsed.thinking is not None and parsed.thinking.kind == "disabled"


class ResponsesApi(UpstreamApi):
    name = "responses"
    translates = True  # parsed and rewritten: local answers and local token counts apply

    def __init__(self, tools: ToolMemo) -> None:
        self.tools = tools  # the server's: a tool set is parsed and translated once
        self._lock = threading.Lock()
        self._no_summaries: Set[str] = set()  # providers whose organisation refused reasoning summaries
        # Per provider, the reasoning items it refused as invalid_encrypted_content (``_Unreadable``):
        # Claude Code keeps them in its history, and each turn sent them again paid a refused round trip.
        self._unreadable: Dict[str, _Unreadable] = {}
        self._refused = RefusedFields(DROPPABLE_FIELDS, DROPPABLE_ONLY_AS)
        # The models that refused the least effort sent for thinking off (dialects.least_effort): the
        # least the refusal named instead (base.raised_effort, as on Chat), or None for their default.
        self._least: Dict[Tuple[str, str], Optional[str]] = {}

    def parse(self, body: Dict[str, Any]) -> MessagesRequest:
        return parse_messages_request(body, self.tools.parse)

    def prepare(self, req: ClientRequest, target: Target, cap: Optional[int]) -> Exchange:
        parsed = req.parsed
        assert parsed is not None, "parse() runs before prepare()"
        with self._lock:
            summaries = target.provider.name not in self._no_summaries
            memory = self._unreadable.get(target.provider.name)
        unreadable = memory.ids(time.monotonic()) if memory is not None else frozenset()
        dialect = target.dialect
        web_search = bool(dialect and dialect.hosted_web_search)
        tools, encoded = offered_translated(self.tools, parsed, ("responses", web_search),
                                            lambda offered: responses_tools(offered, web_search))
        translation = to_responses_request(
            parsed, model=target.model, max_output_tokens=cap, stream=parsed.stream,
            web_search=web_search, cache_key=req.cache_key, reasoning=target.facts.reasoning,
            unreadable=unreadable, reasoning_summary=summaries, tools=tools,
        )
        payload = translation.body
        self._refused.drop(payload, (target.provider.name, target.model))
        key = (target.provider.name, target.model)
        if _thinking_off(parsed) and key in self._least and isinstance(payload.get("reasoning"), dict):
            least = self._least[key]
            if least is None:
                del payload["reasoning"]
            else:
                payload["reasoning"] = {**payload["reasoning"], "effort": least}
        body = encode_body(payload, "tools", encoded)
        headers = (("Content-Type", "application/json"),
                   ("Accept", "text/event-stream" if parsed.stream else "application/json"))
        # The API has no stop parameter: the proxy matches all of the client's stop strings.
        stops = unsent_stops(parsed.stop_sequences, ())
        azure = bool(dialect and dialect.auth == "azure")
        return Exchange(responses_url(target.provider.url, azure), body, headers, parsed.stream,
                        translation.body.get("max_output_tokens"), translation.warnings,
                        (translation.tool_names, stops))

    def recover(self, exc: ProxyError, req: ClientRequest, target: Target, ex: Exchange,
                cap: Optional[int]) -> Optional[Exchange]:
        """A changed request for a refusal this API can get past, or None."""
        if exc.status != 400:
            return None
        text = (getattr(exc, "upstream_message", "") or exc.message).lower()
        if _UNREADABLE_REFUSAL.search(text) and self._learn_unreadable(target, ex):
            return self.prepare(req, target, cap)
        # "Your organization must be verified to generate reasoning summaries" (param reasoning.summary).
        if "summar" in text and ("verified" in text or "unsupported" in text):
            with self._lock:
                if target.provider.name in self._no_summaries:
                    return None
                self._no_summaries.add(target.provider.name)
            return self.prepare(req, target, cap)
        if self._learned_least(text, req, target, ex):
            return self.prepare(req, target, cap)
        return self._without_refused(exc, req, target, ex, cap)

    def _learned_least(self, text: str, req: ClientRequest, target: Target, ex: Exchange) -> bool:
        """A refusal of the least effort sent for thinking off: the least it names from then on, as on
        Chat (``raised_effort``), else the model's own default (a model whose least is not the
        table's failed every such request)."""
        if req.parsed is None or not _thinking_off(req.parsed) or not EFFORT_FIELD.search(text):
            return False
        sent = json.loads(ex.body).get("reasoning")
        effort = sent.get("effort") if isinstance(sent, dict) else None
        if effort is None:
            return False
        key = (target.provider.name, target.model)
        raised = raised_effort(text, effort)
        with self._lock:
            if key in self._least or len(self._least) >= _MOST_REMEMBERED:
                return False
            self._least[key] = raised
        log.warning("%s refused reasoning effort %r for thinking off: %s from now on", target.label, effort,
                    repr(raised) if raised else "its own default")
        return True

    def _learn_unreadable(self, target: Target, ex: Exchange) -> bool:
        """Remember the reasoning items of a request refused as ``invalid_encrypted_content``: all that
        were sent, as the refusal names one blob at most, and the others made under the same key are
        as unreadable (one at a time, each a refused round trip). False when there were none not
        known already (the request again would be refused again)."""
        sent = json.loads(ex.body).get("input") or []
        ids = [item["id"] for item in sent if isinstance(item, dict) and item.get("type") == "reasoning"]
        with self._lock:
            memory = self._unreadable.setdefault(target.provider.name, _Unreadable())
            first, new = memory.learn(ids, time.monotonic())
        if new:
            log.log(logging.WARNING if first else logging.DEBUG, "%s could not read %d reasoning items made "
                    "before (invalid_encrypted_content: another key or organisation): they are left out of its "
                    "requests from now on", target.label, len(new))
        return bool(new)

    def _without_refused(self, exc: ProxyError, req: ClientRequest, target: Target, ex: Exchange,
                         cap: Optional[int]) -> Optional[Exchange]:
        """The request again without the optional fields the upstream refused as such, remembered for the model."""
        refused = refused_fields(getattr(exc, "upstream_message", "") or "")
        if not refused:
            return None
        key = (target.provider.name, target.model)
        return self.prepare(req, target, cap) if self._refused.learn(refused, json.loads(ex.body), key,
                                                                     target.label) else None

    def reports_usage(self, obj: Any) -> bool:
        return isinstance(obj, dict) and reports_usage(obj.get("usage"))

    def usage_of(self, obj: Any) -> Any:
        return usage_from(obj["usage"]) if self.reports_usage(obj) else None

    def from_json(self, req: ClientRequest, ex: Exchange, obj: Any, secrets: Tuple[str, ...] = ()
                  ) -> Tuple[Dict[str, Any], List[str]]:
        tool_names, stops = ex.context
        warnings: List[str] = []
        message = to_messages_response(obj, model=req.model, new_id=new_id, tool_names=tool_names,
                                       secrets=secrets, stop_sequences=stops, thinking=_thinking(req),
                                       history=_history(req), warnings=warnings)
        return message, warnings

    def fold(self, req: ClientRequest, ex: Exchange, *, message_id: str, input_tokens: int,
             secrets: Tuple[str, ...] = ()) -> ResponsesFold:
        tool_names, stops = ex.context
        kwargs: Dict[str, Any] = dict(message_id=message_id, model=req.model, input_tokens=input_tokens,
                                      new_id=new_id, tool_names=tool_names, secrets=secrets,
                                      thinking=_thinking(req), history=_history(req))
        if stops:  # only then a fold that matches stop strings: nothing added per event otherwise
            return LocalStopResponsesFold(stop_sequences=stops, **kwargs)
        return ResponsesFold(**kwargs)


# OpenAI's code, or its words ("The encrypted content gAAA...DQ== could not be verified"), not any 400
# that says "encrypted" (a gateway refusing the include of reasoning.encrypted_content is a refused field).
_UNREADABLE_REFUSAL = re.compile(r"invalid_encrypted_content|encrypted content .{0,80}could not be (?:verified|decrypted)")


class _Unreadable:
    """A provider's reasoning items it could not read: their ids (the oldest forgotten past
    ``UNREADABLE_REMEMBERED``), all forgotten ``UNREADABLE_FOR`` after the last refusal. Its owner's
    lock guards ``learn``; ``ids`` reads a snapshot made there, not a copy each request."""

    def __init__(self) -> None:
        self._ids: Dict[str, None] = {}
        self._snapshot: FrozenSet[str] = frozenset()
        self._learned_at = 0.0

    def ids(self, now: float) -> FrozenSet[str]:
        return self._snapshot if now - self._learned_at < UNREADABLE_FOR else frozenset()

    def learn(self, ids: List[str], now: float) -> Tuple[bool, List[str]]:
        """(no item was known before, the items new to it)."""
        if now - self._learned_at >= UNREADABLE_FOR:
            self._ids = {}  # healed since: what was refused then may be read now
        first, new = not self._ids, [i for i in ids if i not in self._ids]
        for item_id in new:
            remember(self._ids, item_id, None, UNREADABLE_REMEMBERED)
        if new:
            self._snapshot, self._learned_at = frozenset(self._ids), now
        return first, new


def _history(req: ClientRequest) -> FrozenSet[str]:
    """The conversation's tool ids, which an answer's calls must not repeat (``tool_use_ids``)."""
    return tool_use_ids(req.parsed) if req.parsed is not None else frozenset()


def _thinking(req: ClientRequest) -> bool:
    """Thinking blocks go back only to a client that asked for them (``wants_thinking``)."""
    return req.parsed is None or wants_thinking(req.parsed)
