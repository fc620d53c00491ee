"""Anthropic ``MessagesRequest`` -> OpenAI Responses request body (RESPONSES.md sections 1, 6, 7).

Pure: no I/O, no clock, no environment. ``to_responses_request`` returns the
exact JSON object to POST to ``{base}/responses``, the tool-name aliases the
answer path must reverse, and warnings for the caller to log. The request is
stateless (``store: false``): the whole history goes up as ``input`` items
every time, and reasoning items are replayed from the signatures of the
thinking blocks this API minted (``{id, encrypted_content}``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

from ...anthropic_tools import dropped_tool_warnings
from ...anthropic_types import (
    Block,
    found_tools,
    offered_tools,
    DocumentBlock,
    ImageBlock,
    Message,
    MessagesRequest,
    SearchResultBlock,
    TextBlock,
    ThinkingBlock,
    Tool,
    ToolReferenceBlock,
    ToolResultBlock,
    ToolUseBlock,
    merge_turns,
    wants_thinking,
)
from ...dialects import OPENAI_REASONING_NAME, effort_for_budget, least_effort
from ...prompt_cache import end_user, strip_billing_header
from ...schemas import clean_schema
from ...signatures import decode_signature
from ..names import tool_alias, tool_names, upstream_tool_id
from ..user_text import (MISSING_RESULT, document_text, error_text, orphan_result, search_result_text,
                         tool_reference_text)
from . import API_NAME

Item = Dict[str, Any]
Part = Dict[str, Any]

MIN_OUTPUT_TOKENS = 16  # the API rejects less (integer_below_min_value)
MAX_ID_LEN = 64  # call_id and prompt_cache_key: string_above_max_length beyond (RESPONSES.md 7.5)
SOURCES_INCLUDE = "web_search_call.action.sources"
REASONING_INCLUDE = "reasoning.encrypted_content"
# Anthropic effort -> Responses effort; "max" is the newest models' "xhigh".
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}
_REASONING_RE = re.compile(OPENAI_REASONING_NAME)  # the Chat API's rule for these models too
# Open-weight reasoning models (gpt-oss on vLLM, Ollama, LM Studio, Groq: effort low/medium/high, raw
# reasoning as reasoning_text): they take ``reasoning`` but also temperature/top_p, and their
# servers keep no encrypted reasoning to replay.
_OPEN_REASONING_RE = re.compile(r"^gpt-oss")
# The models that take effort "xhigh" (RESPONSES.md 5: from gpt-5.1-codex-max on); the others
# answer 400 unsupported_value to it, and get "high", their most.
_XHIGH_RE = re.compile(r"^gpt-(?:5\.1-codex-max|5\.[2-9]|[6-9])")


@dataclasses.dataclass(frozen=True)
class Translation:
    body: Dict[str, Any]  # the exact JSON object to POST to {base}/responses
    tool_names: Dict[str, str]  # upstream tool name -> the client's name, aliased ones only
    warnings: Tuple[str, ...] = ()


def is_reasoning_model(model: str) -> bool:
    """Whether ``model`` reasons (RESPONSES.md 5): o-series, ``gpt-5*`` except ``*-chat*``, ``codex*``.

    Such models reject ``temperature``/``top_p`` and take ``reasoning``; only they
    are asked for encrypted reasoning (other models refuse that include). The
    name is read after any ``provider/`` prefix (OpenRouter-style ids). An Azure
    deployment name that hides the model reads as not reasoning.
    """
    return bool(_REASONING_RE.match(model.rsplit("/", 1)[-1].lower()))


def takes_reasoning(model: str) -> bool:
    """Whether ``model`` takes a ``reasoning`` effort: the reasoning models, and gpt-oss."""
    return is_reasoning_model(model) or bool(_OPEN_REASONING_RE.match(model.rsplit("/", 1)[-1].lower()))


def call_id(tool_use_id: str) -> str:
    """A ``call_id`` the API accepts (<= 64 chars), the same for a call and its output: the
    upstream's own where the client got it in Anthropic's id form (``client_tool_id``)."""
    tool_use_id = upstream_tool_id(tool_use_id)
    if len(tool_use_id) <= MAX_ID_LEN:
        return tool_use_id
    digest = hashlib.sha256(tool_use_id.encode("utf-8")).hexdigest()[:8]
    return tool_use_id[: MAX_ID_LEN - 9] + "_" + digest


def _short_key(key: str) -> str:
    return key if len(key) <= MAX_ID_LEN else hashlib.sha256(key.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------
# User-side blocks -> input parts.


def _text(text: str) -> Part:
    return {"type": "input_text", "text": text}


def _image_part(block: ImageBlock) -> Part:
    if block.source == "base64":
        return {"type": "input_image", "image_url": f"data:{block.media_type};base64,{block.data}", "detail": "auto"}
    # A URL: a file_id is refused at the door (anthropic_types._refuse_file_ids).
    return {"type": "input_image", "image_url": block.url, "detail": "auto"}


def _document_parts(block: DocumentBlock) -> List[Part]:
    if block.source == "base64":
        data = f"data:{block.media_type or 'application/pdf'};base64,{block.data}"
        return [{"type": "input_file", "filename": block.title or "document.pdf", "file_data": data}]
    if block.source == "url":
        return [{"type": "input_file", "file_url": block.url}]
    if block.source == "text":
        text = document_text(block)
        return [_text(text)] if text else []  # nothing, as an empty text block
    # Its own blocks ("content"): a file_id is refused at the door (anthropic_types._refuse_file_ids).
    head = [_text(line) for line in (block.title, block.context) if line]
    return head + [p for b in block.content for p in _block_parts(b)]


def _block_parts(block: Block) -> List[Part]:
    """Input parts for one user-side block; blocks with no user meaning give none."""
    if isinstance(block, TextBlock):
        return [_text(block.text)] if block.text else []
    if isinstance(block, ImageBlock):
        return [_image_part(block)]
    if isinstance(block, DocumentBlock):
        return _document_parts(block)
    if isinstance(block, SearchResultBlock):
        return [_text(search_result_text(block))]
    if isinstance(block, ToolReferenceBlock):
        return [_text(tool_reference_text(block))]
    return []  # thinking, tool_use, server-tool blocks in a user turn


def _tool_output(block: ToolResultBlock) -> Any:
    """``function_call_output.output``: a string, or parts when images or files came back.

    The item has no error flag, so a failed tool says so in its text.
    """
    parts = [p for b in block.content for p in _block_parts(b)]
    if block.is_error:
        first = parts[0] if parts and parts[0]["type"] == "input_text" else None
        if first is None:
            parts.insert(0, _text(error_text("")))
        else:
            parts[0] = _text(error_text(first["text"]))
    if all(p["type"] == "input_text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _orphan_parts(block: ToolResultBlock) -> List[Part]:
    """A result with no call before it: user text (an output without its call is a 400)."""
    output = _tool_output(block)
    if isinstance(output, str):
        return [_text(orphan_result(block.tool_use_id, output))]
    parts: List[Part] = [_text(orphan_result(block.tool_use_id))]
    parts.extend(output)
    return parts


def _message(role: str, content: Any) -> Item:
    return {"type": "message", "role": role, "content": content}


# --------------------------------------------------------------------------
# Assistant turns.


def reasoning_item(block: ThinkingBlock) -> Optional[Item]:
    """The reasoning item a proxy-made thinking block stands for; None for anything else.

    Claude signatures, other providers' blobs, client edits and blocks without
    encrypted content would be refused (404 or ``invalid_encrypted_content``):
    never forge one (RESPONSES.md 7.1, 7.2).
    """
    state = decode_signature(block.signature, api=API_NAME)
    if not state:
        return None
    item_id, blob = state.get("id"), state.get("encrypted_content")
    if not (isinstance(item_id, str) and item_id and isinstance(blob, str) and blob):
        return None
    summary = [{"type": "summary_text", "text": block.thinking}] if block.thinking else []
    return {"type": "reasoning", "id": item_id, "summary": summary, "encrypted_content": blob}


def _function_call(block: ToolUseBlock) -> Item:
    arguments = json.dumps(block.input, ensure_ascii=False, separators=(",", ":"))
    return {"type": "function_call", "call_id": call_id(block.id), "name": tool_alias(block.name), "arguments": arguments}


def _assistant_items(message: Message, replay: bool, seen: Set[str], seen_reasoning: Set[str]) -> List[Item]:
    """Items in block order: each reasoning item stays right before the item it preceded."""
    items: List[Item] = []
    for block in message.content:
        if isinstance(block, ThinkingBlock) and replay:
            item = reasoning_item(block)
            if item and item["id"] not in seen_reasoning:  # twice is a 400 ("Duplicate item found with id")
                seen_reasoning.add(item["id"])
                items.append(item)
        elif isinstance(block, TextBlock) and block.text:
            part = {"type": "output_text", "text": block.text}
            if items and items[-1]["type"] == "message":
                items[-1]["content"].append(part)
            else:
                items.append(_message("assistant", [part]))
        elif isinstance(block, ToolUseBlock) and call_id(block.id) not in seen:
            seen.add(call_id(block.id))  # a repeated call id would pair two calls with one output
            items.append(_function_call(block))
    return _drop_unfollowed_reasoning(items)


def _drop_unfollowed_reasoning(items: List[Item]) -> List[Item]:
    """A reasoning item must be followed by its message or call ("provided without its
    required following item", RESPONSES.md 7.3); one whose follower is gone is dropped."""
    kept = []
    for i, item in enumerate(items):
        following = items[i + 1]["type"] if i + 1 < len(items) else None
        if item["type"] != "reasoning" or following in ("message", "function_call"):
            kept.append(item)
    return kept


# --------------------------------------------------------------------------
# The input list.


def _merge_same_role(messages: Tuple[Message, ...]) -> List[Message]:
    """Anthropic treats consecutive user (or assistant) turns as one; so do we."""
    return merge_turns(messages, lambda message: True)


class _InputBuilder:
    """Builds ``input`` in one pass, repairing call/output pairing (RESPONSES.md 7.4)."""

    def __init__(self, system_role: str, replay: bool, unreadable: FrozenSet[str] = frozenset()) -> None:
        self.system_role = system_role
        self.replay = replay
        self.out: List[Item] = []
        self.pending: Dict[str, None] = {}  # call_ids of the last assistant turn still without output, in order
        self.seen: Set[str] = set()  # every call_id sent so far
        # Every reasoning item's id sent so far, and those the upstream could not read: none goes again.
        self.seen_reasoning: Set[str] = set(unreadable)
        self.deferred: List[Item] = []  # system turns that came between a call and its output

    def add_system(self, message: Message) -> None:
        texts = (strip_billing_header(b.text) for b in message.content if isinstance(b, TextBlock))
        text = "\n\n".join(t for t in texts if t)
        if text:
            (self.deferred if self.pending else self.out).append(_message(self.system_role, text))

    def add_assistant(self, message: Message) -> None:
        self.close_turn()
        items = _assistant_items(message, self.replay, self.seen, self.seen_reasoning)
        self.out.extend(items)
        self.pending = dict.fromkeys(item["call_id"] for item in items if item["type"] == "function_call")

    def add_user(self, message: Message) -> None:
        parts: List[Part] = []
        for block in message.content:
            if not isinstance(block, ToolResultBlock):
                parts.extend(_block_parts(block))
            elif call_id(block.tool_use_id) in self.pending:
                cid = call_id(block.tool_use_id)
                self.out.append({"type": "function_call_output", "call_id": cid, "output": _tool_output(block)})
                del self.pending[cid]
            else:
                parts.extend(_orphan_parts(block))
        self.close_turn()
        if parts:
            self.out.append(_message("user", parts))

    def close_turn(self) -> None:
        """Answer every call still open (a call without output is a 400), then release system turns."""
        for cid in self.pending:
            self.out.append({"type": "function_call_output", "call_id": cid, "output": MISSING_RESULT})
        self.pending = {}
        self.out.extend(self.deferred)
        self.deferred = []


def to_input(messages: Tuple[Message, ...], *, system_role: str, replay: bool,
             unreadable: FrozenSet[str] = frozenset()) -> List[Item]:
    """The whole ``input`` list: turns in order, system turns in place, pairs repaired; no reasoning
    item whose id is in ``unreadable``."""
    builder = _InputBuilder(system_role, replay, unreadable)
    for message in _merge_same_role(messages):
        if message.role == "system":
            builder.add_system(message)
        elif message.role == "assistant":
            builder.add_assistant(message)
        else:
            builder.add_user(message)
    builder.close_turn()
    return builder.out


# --------------------------------------------------------------------------
# Tools and tool_choice.


def _function_tool(tool: Tool) -> Dict[str, Any]:
    # strict:false: left out, the API normalises the schema to strict mode and fills in optional fields (7.6).
    out: Dict[str, Any] = {"type": "function", "name": tool_alias(tool.name)}
    if tool.description:
        out["description"] = tool.description
    out["parameters"] = clean_schema(tool.input_schema, "none")
    out["strict"] = False
    return out


def _web_search_tool(tool: Tool) -> Tuple[Dict[str, Any], List[str]]:
    """Anthropic ``web_search_*`` settings on OpenAI's ``web_search`` tool."""
    options = tool.options
    out: Dict[str, Any] = {"type": "web_search"}
    warnings = []
    if isinstance(options.get("allowed_domains"), list) and options["allowed_domains"]:
        out["filters"] = {"allowed_domains": options["allowed_domains"]}
    location = options.get("user_location")
    if isinstance(location, dict):
        keys = ("city", "region", "country", "timezone")
        out["user_location"] = {"type": "approximate", **{k: location[k] for k in keys if location.get(k)}}
    if options.get("blocked_domains"):
        warnings.append("web search blocked_domains has no Responses equivalent; ignored")
    return out, warnings


def _is_web_search(tool: Tool) -> bool:
    return tool.kind.startswith("web_search_")


ResponsesTools = Tuple[Tuple[Dict[str, Any], ...], Optional[int], Tuple[str, ...]]  # (tools, max_tool_calls, warnings)


def responses_tools(tools: Tuple[Tool, ...], web_search: bool) -> ResponsesTools:
    """Custom tools and Anthropic's client tools (text editor, bash, memory) as flat functions, web
    search if the provider has it."""
    out = [_function_tool(t) for t in tools if t.is_function]
    warnings: List[str] = []
    max_calls = None
    searches = [t for t in tools if not t.is_function and web_search and _is_web_search(t)]
    for tool in searches[:1]:  # one search tool is all the API takes
        spec, notes = _web_search_tool(tool)
        out.append(spec)
        warnings.extend(notes)
        uses = tool.options.get("max_uses")
        max_calls = uses if isinstance(uses, int) and not isinstance(uses, bool) and uses > 0 else None
    dropped = [t for t in tools if not t.is_function and t not in searches[:1]]
    warnings.extend(dropped_tool_warnings(dropped))
    return tuple(out), max_calls, tuple(warnings)


def _tool_choice(req: MessagesRequest, tools: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """``tool_choice`` and ``parallel_tool_calls``, only when tools are sent."""
    choice = req.tool_choice
    if not tools or choice is None:
        return {}
    out: Dict[str, Any] = {}
    if choice.kind == "any":
        out["tool_choice"] = "required"
    elif choice.kind == "tool":
        out["tool_choice"] = _named_choice(req, choice.name or "", tools)
    else:
        out["tool_choice"] = choice.kind  # auto, none
    if choice.disable_parallel and choice.kind != "none":
        out["parallel_tool_calls"] = False
    return out


def _named_choice(req: MessagesRequest, name: str, tools: Sequence[Dict[str, Any]]) -> Any:
    """A named function; the search tool when it is all there is (forcing a tool = searching); else auto."""
    alias = tool_alias(name)
    if any(t["type"] == "function" and t["name"] == alias for t in tools):
        return {"type": "function", "name": alias}
    searching = any(t.name == name and _is_web_search(t) for t in req.tools)
    if searching and all(t["type"] == "web_search" for t in tools):
        return "required"
    return "auto"


# --------------------------------------------------------------------------
# Sampling, reasoning, output format.


def _reasoning(req: MessagesRequest, summaries: bool, model: str) -> Optional[Dict[str, Any]]:
    """``reasoning`` for a reasoning model: the effort asked for, and summaries to show as thinking.

    A budget is bucketed like on Chat Completions; ``thinking: disabled`` sends the least effort
    the model takes (``least_effort``), else nothing (the model's default).
    """
    thinking = req.thinking
    if thinking is not None and thinking.kind == "disabled":
        least = least_effort(model)
        if least == "minimal" and any(_is_web_search(t) for t in req.tools):
            least = "low"  # gpt-5 takes no web search at minimal effort (OpenAI's web search guide)
        return {"effort": least} if least else None
    effort = _EFFORTS.get(req.effort or "")
    if effort == "xhigh" and not _XHIGH_RE.match(model.rsplit("/", 1)[-1].lower()):
        effort = "high"
    if thinking is not None and thinking.kind == "enabled" and thinking.budget_tokens is not None:
        effort = effort_for_budget(thinking.budget_tokens)
    out: Dict[str, Any] = {"effort": effort} if effort else {}
    if wants_thinking(req) and summaries:
        out["summary"] = "auto"
    return out or None


def _max_output_tokens(req: MessagesRequest, cap: Optional[int]) -> Optional[int]:
    if req.max_tokens is None:
        return None
    value = min(req.max_tokens, cap) if cap else req.max_tokens
    return max(MIN_OUTPUT_TOKENS, value)  # Claude Code's quota probe asks for 1


def _sampling(req: MessagesRequest, reasoning: bool) -> Dict[str, Any]:
    if reasoning:
        return {}  # reasoning models answer 400 unsupported_parameter (RESPONSES.md 5)
    pairs = (("temperature", req.temperature), ("top_p", req.top_p))
    return {k: v for k, v in pairs if v is not None}


def _text_format(req: MessagesRequest) -> Dict[str, Any]:
    if req.output_schema is None:
        return {}
    schema = clean_schema(req.output_schema, "none")
    # strict:false for the same reason as tools: a schema strict mode refuses would be a 400.
    return {"text": {"format": {"type": "json_schema", "name": "output", "schema": schema, "strict": False}}}


# --------------------------------------------------------------------------
# The whole request.


def _include(req: MessagesRequest, reasoning: bool, tools: Sequence[Dict[str, Any]]) -> List[str]:
    """The encrypted reasoning to replay (only reasoning models take it), search sources for the results."""
    include = [REASONING_INCLUDE] if reasoning and wants_thinking(req) else []
    return include + ([SOURCES_INCLUDE] if any(t["type"] == "web_search" for t in tools) else [])


def _generation(req: MessagesRequest, model: str, reasoning: bool, cap: Optional[int], summaries: bool,
                effort_too: bool) -> Dict[str, Any]:
    """max_output_tokens, sampling, reasoning and output format; ``reasoning``: an OpenAI reasoning
    model (no sampling), ``effort_too``: the model takes ``reasoning`` (``takes_reasoning``)."""
    out: Dict[str, Any] = {}
    limit = _max_output_tokens(req, cap)
    if limit is not None:
        out["max_output_tokens"] = limit
    out.update(_sampling(req, reasoning))
    effort = _reasoning(req, summaries, model) if effort_too else None
    if effort:
        out["reasoning"] = effort
    out.update(_text_format(req))
    return out


def _prompt(req: MessagesRequest, model: str, reasoning: bool, replay: bool,
            unreadable: FrozenSet[str]) -> Dict[str, Any]:
    """model, instructions and input: reasoning models take system turns as ``developer``."""
    body: Dict[str, Any] = {"model": model}
    instructions = strip_billing_header(req.system)  # its suffix changes per session: it would void the cache
    if instructions:
        body["instructions"] = instructions
    body["input"] = to_input(req.messages, system_role="developer" if reasoning else "system", replay=replay,
                             unreadable=unreadable)
    return body


def to_responses_request(
    req: MessagesRequest,
    *,
    model: str,
    max_output_tokens: Optional[int] = None,
    stream: bool = False,
    web_search: bool = False,
    cache_key: Optional[str] = None,
    unreadable: FrozenSet[str] = frozenset(),
    reasoning: Optional[bool] = None,
    reasoning_summary: bool = True,
    tools: Optional[ResponsesTools] = None,
) -> Translation:
    """The Responses body for ``req`` on ``model``.

    ``max_output_tokens`` is the model's output cap (None: no cap);
    ``web_search``: the provider runs OpenAI's hosted ``web_search`` tool;
    ``cache_key``: sent as ``prompt_cache_key``; ``unreadable``: the ids of reasoning items left out
    of the history (the upstream refused them as ``invalid_encrypted_content``: the key or org changed);
    ``reasoning`` overrides ``is_reasoning_model(model)`` (an Azure deployment
    name says nothing about the model behind it); ``reasoning_summary=False``
    asks for no summaries (an unverified organisation gets 400
    ``unsupported_value`` for them, RESPONSES.md 5). ``tools``: ``responses_tools`` of the tools the
    model is offered (``offered_tools``) if the caller has it already (``ToolMemo``); never changed here.
    """
    effort_too = takes_reasoning(model) if reasoning is None else reasoning
    reasoning = is_reasoning_model(model) if reasoning is None else reasoning
    functions, max_calls, warnings = (tools if tools is not None else
                                      responses_tools(offered_tools(req, found_tools(req)), web_search))
    body = _prompt(req, model, reasoning, reasoning, unreadable)
    if functions:
        body["tools"] = list(functions)
    body.update(_tool_choice(req, functions))
    if max_calls is not None:
        body["max_tool_calls"] = max_calls
    body.update(_generation(req, model, reasoning, max_output_tokens, reasoning_summary, effort_too))
    body["store"] = False  # stateless: Claude Code resends the whole history anyway (RESPONSES.md 1)
    include = _include(req, reasoning, functions)
    if include:
        body["include"] = include
    if cache_key:
        body["prompt_cache_key"] = _short_key(cache_key)
    user = end_user(req.user_id)
    if user:
        # The end user, for OpenAI's abuse checks (the Responses API's word for Chat's ``user``): 64
        # characters at most, and Claude Code's is longer, so its digest (the same in every session).
        body["safety_identifier"] = _short_key(user)
    body["stream"] = stream
    # No stop_sequences: the API has no stop parameter; the proxy matches them itself (apis/stops.py).
    return Translation(body, tool_names(req, functions_only=True), warnings)
