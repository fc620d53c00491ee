"""Anthropic Messages API request types and their validating parser.

No I/O. ``parse_messages_request(obj)`` turns the decoded JSON body into frozen
dataclasses, or raises ``InvalidRequest`` whose message starts with the JSON
path of the offending field (``messages[2].content[0].type: ...``), the way
Anthropic's own API reports it. Fields the translation has no use for
(``cache_control``, ``context_management``, ``citations``...) are accepted and
ignored, so new client features never turn into 400s.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple, Union

from .anthropic_tools import client_tool, fixed_name
from .errors import InvalidRequest, thread_unsupported

# Block types that carry no meaning for an OpenAI-compatible upstream (server
# tool traffic, uploads): accepted and dropped, never a 400 (FIELD-NOTES 11).
DROPPED_BLOCK_TYPES = frozenset(
    {
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
        "browser_state",
    }
)
EFFORTS = ("low", "medium", "high", "xhigh", "max")
# The longest model name taken. Anthropic's ids are under 64 characters and providers' (with an
# org/ prefix, a :tag) under 128; the name is kept in the call records, the usage log and the
# usage page, and a 30 MB one cost the proxy 35 MB a request and /v1/usage 44 s.
MAX_MODEL_NAME = 256
# Anthropic's documented limit ("There is a limit of 100,000 messages in a single request"). Checked
# before any message is parsed: a 32 MiB body of a million tiny messages cost 28 s of CPU and
# 800 MB of memory on its way to an upstream that refuses it anyway.
MAX_MESSAGES = 100_000
MAX_STOP_SEQUENCES = 8191
MAX_STOP_CHARACTERS = 65_536
THINKING_TYPES = ("enabled", "disabled", "adaptive", "between_tools")


@dataclasses.dataclass(frozen=True)
class TextBlock:
    text: str
    # The block's prompt-cache mark (``cache_control``): None for none, else its ttl ("5m", "1h",
    # or "" for the default). Only a dialect with ``cache_marks`` sends it on (``cache_mark``).
    cache: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class ImageBlock:
    """An image; ``source`` is ``base64`` (media_type + data), ``url`` or ``file``."""

    source: str
    media_type: str = ""
    data: str = ""
    url: str = ""


@dataclasses.dataclass(frozen=True)
class DocumentBlock:
    """A document; ``source`` is ``base64`` (PDF), ``text``, ``content``, ``url`` or ``file``."""

    source: str
    media_type: str = ""
    data: str = ""
    url: str = ""
    title: str = ""
    context: str = ""
    content: Tuple["Block", ...] = ()


@dataclasses.dataclass(frozen=True)
class SearchResultBlock:
    source: str
    title: str
    texts: Tuple[str, ...]


_INPUT_JSON = json.JSONEncoder(ensure_ascii=False)  # UTF-8 text as it is: CJK is 3 bytes a character, not 6


@dataclasses.dataclass(frozen=True)
class ToolUseBlock:
    id: str
    name: str
    input: Dict[str, Any]

    @functools.cached_property
    def input_json(self) -> str:
        """``input`` as JSON, encoded once: the token estimate measures it, Chat's translation sends it."""
        return _INPUT_JSON.encode(self.input)


@dataclasses.dataclass(frozen=True)
class ToolReferenceBlock:
    tool_name: str


@dataclasses.dataclass(frozen=True)
class ToolResultBlock:
    tool_use_id: str
    content: Tuple["Block", ...]
    is_error: bool = False
    cache: Optional[str] = None  # as TextBlock's, of the block or of any text in its content


@dataclasses.dataclass(frozen=True)
class ThinkingBlock:
    thinking: str
    signature: str = ""


@dataclasses.dataclass(frozen=True)
class RedactedThinkingBlock:
    data: str


@dataclasses.dataclass(frozen=True)
class DroppedBlock:
    """A block with no OpenAI equivalent (server tools, uploads); kept only by name."""

    type: str


Block = Union[
    TextBlock,
    ImageBlock,
    DocumentBlock,
    SearchResultBlock,
    ToolUseBlock,
    ToolResultBlock,
    ToolReferenceBlock,
    ThinkingBlock,
    RedactedThinkingBlock,
    DroppedBlock,
]


@dataclasses.dataclass(frozen=True)
class Message:
    role: str  # "user", "assistant" or "system"
    content: Tuple[Block, ...]


def merge_turns(messages: Tuple[Message, ...], joins: Callable[[Message], bool]) -> List[Message]:
    """``messages`` with each message that ``joins`` appended to the one before it when both have
    the same role (system turns never join): Anthropic treats consecutive turns of a role as one.

    Each run is joined once: appending message by message copied the growing content each time,
    and 100,000 one-word user turns (a 3 MB body) then took minutes of CPU.
    """
    merged: List[Message] = []
    joined: Dict[int, List[Message]] = {}  # a place in ``merged`` -> the messages that join it
    for message in messages:
        if merged and message.role != "system" and merged[-1].role == message.role and joins(message):
            joined.setdefault(len(merged) - 1, []).append(message)
        else:
            merged.append(message)
    for at, more in joined.items():
        first = merged[at]
        merged[at] = Message(first.role, first.content + tuple(b for m in more for b in m.content))
    return merged


@dataclasses.dataclass(frozen=True)
class Tool:
    """A tool; ``kind`` is ``custom`` or the Anthropic-defined ``type``.

    A custom tool has the client's schema; an Anthropic-defined client tool
    (text editor, bash, memory) the one Anthropic documents for its type
    (``anthropic_tools``); a server tool or computer use has none. ``options``
    holds an Anthropic-defined tool's other settings as sent (``max_uses``,
    ``allowed_domains``, ``user_location``...), for upstreams that have an
    equivalent (Responses ``web_search``).
    """

    name: str
    kind: str = "custom"
    description: Optional[str] = None
    input_schema: Optional[Dict[str, Any]] = None
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # defer_loading: the model is offered it once a tool search has found it (a tool_reference in
    # the conversation), as Anthropic does.
    deferred: bool = False

    @property
    def is_custom(self) -> bool:
        return self.kind == "custom"

    @property
    def is_function(self) -> bool:
        """Sent upstream as a function: it has a schema (a custom or an Anthropic-defined client tool)."""
        return self.input_schema is not None


@dataclasses.dataclass(frozen=True)
class ToolChoice:
    kind: str  # auto, any, tool, none
    name: Optional[str] = None
    disable_parallel: bool = False


@dataclasses.dataclass(frozen=True)
class Thinking:
    kind: str  # enabled, disabled, adaptive, between_tools
    budget_tokens: Optional[int] = None
    display: Optional[str] = None  # "omitted": thinking blocks with their signature and no text


@dataclasses.dataclass(frozen=True)
class MessagesRequest:
    model: str
    messages: Tuple[Message, ...]
    max_tokens: Optional[int] = None
    system: str = ""
    tools: Tuple[Tool, ...] = ()
    tool_choice: Optional[ToolChoice] = None
    stream: bool = False
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    stop_sequences: Tuple[str, ...] = ()
    thinking: Optional[Thinking] = None
    effort: Optional[str] = None
    output_schema: Optional[Dict[str, Any]] = None
    user_id: Optional[str] = None
    mcp_servers: Tuple[str, ...] = ()  # the names of the MCP connector's servers: no upstream reaches them
    # Prompt-cache marks (as TextBlock's): the last of the system blocks', and the top-level one
    # (Anthropic's automatic caching: the mark on the last block, moving with the conversation).
    system_cache: Optional[str] = None
    cache: Optional[str] = None


def tool_use_ids(req: MessagesRequest) -> FrozenSet[str]:
    """The ids of the conversation's tool calls so far. An answer's calls must not reuse one:
    Anthropic's are unique within a conversation, and Claude Code leaves a call whose id its history
    holds out of its next request, with its result (a server that numbers each answer's calls from
    call_0 lost every call after the first turn's)."""
    return frozenset(b.id for m in req.messages if m.role == "assistant" for b in m.content if type(b) is ToolUseBlock)


def found_tools(req: MessagesRequest) -> Tuple[str, ...]:
    """The deferred tools (``defer_loading``) the model may be offered, in the order the conversation
    found them: those a tool search found (a ``tool_reference`` in a tool result, or in a user turn),
    one the history calls, and last one ``tool_choice`` names. Only deferred tools' names; empty at
    once when no tool is deferred."""
    deferred = {t.name for t in req.tools if t.deferred}
    if not deferred:
        return ()
    if _searched_by_anthropic(req.tools):
        # Anthropic's own tool search (a server tool: tool_search_tool_regex_..., _bm25_) finds them on
        # Anthropic's side, which no translated upstream can: every one is offered, losing only what
        # deferring saved. Hidden, the model never saw them and answered as if it had no tools.
        return tuple(t.name for t in req.tools if t.deferred)
    found: Dict[str, None] = {}  # an ordered set
    for message in req.messages:  # one pass over the conversation
        for block in message.content:
            _found_in(block, found)
    if req.tool_choice is not None and req.tool_choice.name:
        found[req.tool_choice.name] = None
    return tuple(name for name in found if name in deferred)


def _searched_by_anthropic(tools: Tuple[Tool, ...]) -> bool:
    return any(t.kind.startswith("tool_search_tool_") for t in tools)


def _found_in(block: Block, found: Dict[str, None]) -> None:
    """The tool names ``block`` finds, added to ``found`` in order: a search's references, and a call."""
    kind = type(block)
    if kind is ToolReferenceBlock:
        found[block.tool_name] = None  # type: ignore[union-attr]
    elif kind is ToolResultBlock:
        found.update(dict.fromkeys(c.tool_name for c in block.content  # type: ignore[union-attr]
                                   if type(c) is ToolReferenceBlock))
    elif kind is ToolUseBlock:
        # One the history calls stays offered: a call to a tool the request does not define is
        # refused by strict servers (its reference may have gone in a compaction).
        found[block.name] = None  # type: ignore[union-attr]


def offered_tools(req: MessagesRequest, found: Tuple[str, ...]) -> Tuple[Tool, ...]:
    """The request's tools less the deferred ones no tool search has found (``found_tools``): Claude
    Code's DeferredToolPlaceholder ("never call this tool") and the MCP tools it defers. The tools
    always offered come first, in the client's order, then the found ones in the order they were
    found: Claude Code puts a found tool in its sorted place, and there it changed every tool
    definition after it, which the upstream's prompt cache holds, once a tool found."""
    if not any(t.deferred for t in req.tools):
        return req.tools
    by_name = {t.name: t for t in req.tools if t.deferred}
    return tuple(t for t in req.tools if not t.deferred) + tuple(by_name[name] for name in found)


def wants_thinking(req: MessagesRequest) -> bool:
    """The client asked for thinking (enabled, adaptive...), so it gets thinking blocks.

    Without it no thinking block comes back at all, as from Anthropic: an SDK script reading
    ``content[0].text`` must not find a thinking block it never asked for (gpt-oss, DeepSeek-R1,
    Qwen3 reason unasked). Only provider state the next turn must carry back (Gemini's thought
    signatures, OpenRouter's reasoning_details) still comes in an empty one.
    """
    return req.thinking is not None and req.thinking.kind != "disabled"


# --------------------------------------------------------------------------
# Field readers: each names the path in its error.


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "integer", float: "number"}.get(
        type(value), type(value).__name__
    )


def _expect(value: Any, kind: Any, path: str, what: str) -> Any:
    # bool is an int to isinstance, never to a client
    if isinstance(value, kind) and (kind is bool or value.__class__ is not bool):
        return value
    raise InvalidRequest(f"expected {what}, got {_type_name(value)}", path)


# The readers below run a few hundred times per Claude Code request: the happy path is one
# isinstance, and an error's path is only joined when there is an error.


def _obj(value: Any, path: str) -> Dict[str, Any]:
    if isinstance(value, dict):
        return value
    return _expect(value, dict, path, "an object")  # type: ignore[no-any-return]


def _list(value: Any, path: str) -> List[Any]:
    if isinstance(value, list):
        return value
    return _expect(value, list, path, "an array")  # type: ignore[no-any-return]


def _str(obj: Dict[str, Any], key: str, path: str, required: bool = False) -> Optional[str]:
    value = obj.get(key)
    if isinstance(value, str):
        return value
    if value is None:
        if required:
            raise InvalidRequest("field required", _join(path, key))
        return None
    return _expect(value, str, _join(path, key), "a string")  # type: ignore[no-any-return]


def _number(obj: Dict[str, Any], key: str, path: str) -> Optional[float]:
    if obj.get(key) is None:
        return None
    return _expect(obj[key], (int, float), _join(path, key), "a number")  # type: ignore[no-any-return]


def _unit_interval(obj: Dict[str, Any], key: str) -> Optional[float]:
    """``temperature`` or ``top_p``: from 0 to 1 on Anthropic, which refuses more. OpenAI's go to 2
    (temperature), so 1.5 passed on would mean a far more random answer than any Claude gives."""
    value = _number(obj, key, "")
    if value is not None and not 0 <= value <= 1:
        raise InvalidRequest(f"must be from 0 to 1, not {value!r}", key)
    return value


def _int(obj: Dict[str, Any], key: str, path: str, required: bool = False) -> Optional[int]:
    if obj.get(key) is None:
        if required:
            raise InvalidRequest("field required", _join(path, key))
        return None
    value = obj[key]
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        value = int(value)  # 1024.0 is 1024; 1e30 is no count anyone meant (it went up as 31 digits)
    return _expect(value, int, _join(path, key), "an integer")  # type: ignore[no-any-return]


def _bool(obj: Dict[str, Any], key: str, path: str) -> bool:
    if obj.get(key) is None:
        return False
    return bool(_expect(obj[key], bool, _join(path, key), "a boolean"))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------
# Content blocks.


def cache_mark(raw: Dict[str, Any]) -> Optional[str]:
    """A block's (or the request's) ``cache_control`` as TextBlock.cache keeps it: None when there is
    none, or none Anthropic takes (an ephemeral mark, a ttl of 5m or 1h): a mark is a price hint,
    never a reason to refuse a request that parses."""
    mark = raw.get("cache_control")
    if type(mark) is not dict or mark.get("type") != "ephemeral":
        return None
    ttl = mark.get("ttl")
    return ttl if ttl in ("5m", "1h") else ""


def _parse_text(raw: Dict[str, Any], path: str) -> TextBlock:
    return TextBlock(_str(raw, "text", path, required=True) or "", cache_mark(raw))


# The image types the Messages API takes (docs.anthropic.com, vision: "Supported image formats").
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def _parse_image(raw: Dict[str, Any], path: str) -> ImageBlock:
    src = _obj(raw.get("source"), _join(path, "source"))
    spath = _join(path, "source")
    kind = _str(src, "type", spath, required=True)
    if kind == "base64":
        media_type = _str(src, "media_type", spath, required=True) or ""
        if media_type not in IMAGE_MEDIA_TYPES:
            # Anthropic's own four; anything else was pasted into the upstream's data: URL as given.
            raise InvalidRequest(f"image media_type must be one of {', '.join(IMAGE_MEDIA_TYPES)}, not {media_type!r}",
                                 _join(spath, "media_type"))
        return ImageBlock("base64", media_type=media_type, data=_str(src, "data", spath, required=True) or "")
    if kind == "url":
        url = _str(src, "url", spath, required=True) or ""
        if not url.lower().startswith(("https://", "http://")):
            # A file:// or data: URL would be read by the upstream server (a local vLLM or llama.cpp
            # fetches image URLs itself) from its own disk, not by the client's.
            raise InvalidRequest("an image url must be an http:// or https:// URL", _join(spath, "url"))
        return ImageBlock("url", url=url)
    if kind == "file":
        return ImageBlock("file", data=_str(src, "file_id", spath) or "")
    raise InvalidRequest(f"unknown image source type {kind!r}", _join(spath, "type"))


def _parse_document(raw: Dict[str, Any], path: str) -> DocumentBlock:
    spath = _join(path, "source")
    src = _obj(raw.get("source"), spath)
    kind = _str(src, "type", spath, required=True)
    title = _str(raw, "title", path) or ""
    context = _str(raw, "context", path) or ""
    if kind in ("base64", "text"):
        return DocumentBlock(
            kind,
            media_type=_str(src, "media_type", spath) or "",
            data=_str(src, "data", spath, required=True) or "",
            title=title,
            context=context,
        )
    if kind == "url":
        return DocumentBlock("url", url=_str(src, "url", spath, required=True) or "", title=title, context=context)
    if kind == "content":
        inner = src.get("content")
        if isinstance(inner, str):
            blocks: Tuple[Block, ...] = (TextBlock(inner),)
        else:
            blocks = _parse_blocks(_list(inner, _join(spath, "content")), _join(spath, "content"))
        return DocumentBlock("content", content=blocks, title=title, context=context)
    if kind == "file":
        return DocumentBlock("file", data=_str(src, "file_id", spath) or "", title=title, context=context)
    raise InvalidRequest(f"unknown document source type {kind!r}", _join(spath, "type"))


def _parse_search_result(raw: Dict[str, Any], path: str) -> SearchResultBlock:
    items = _list(raw.get("content", []), _join(path, "content"))
    texts = []
    for i, item in enumerate(items):
        ipath = f"{path}.content[{i}]"
        texts.append(_str(_obj(item, ipath), "text", ipath, required=True) or "")
    return SearchResultBlock(
        source=_str(raw, "source", path) or "", title=_str(raw, "title", path) or "", texts=tuple(texts)
    )


def _parse_tool_use(raw: Dict[str, Any], path: str) -> ToolUseBlock:
    value = raw.get("input", {})
    if value is None:
        value = {}
    return ToolUseBlock(
        id=_str(raw, "id", path, required=True) or "",
        name=_str(raw, "name", path, required=True) or "",
        input=_obj(value, _join(path, "input")),
    )


def _parse_tool_result(raw: Dict[str, Any], path: str) -> ToolResultBlock:
    content = raw.get("content")
    cpath = _join(path, "content")
    if content is None:
        blocks: Tuple[Block, ...] = ()
    elif isinstance(content, str):
        blocks = (TextBlock(content),) if content else ()
    else:
        blocks = _parse_blocks(_list(content, cpath), cpath)
    marks = [cache_mark(raw)] + [b.cache for b in blocks if type(b) is TextBlock]
    return ToolResultBlock(
        tool_use_id=_str(raw, "tool_use_id", path, required=True) or "",
        content=blocks,
        is_error=_bool(raw, "is_error", path),
        cache=next((m for m in reversed(marks) if m is not None), None),
    )


def _parse_thinking(raw: Dict[str, Any], path: str) -> ThinkingBlock:
    return ThinkingBlock(_str(raw, "thinking", path) or "", _str(raw, "signature", path) or "")


_BLOCK_PARSERS = {
    "text": _parse_text,
    "image": _parse_image,
    "document": _parse_document,
    "search_result": _parse_search_result,
    "tool_use": _parse_tool_use,
    "tool_result": _parse_tool_result,
    "thinking": _parse_thinking,
    "redacted_thinking": lambda raw, path: RedactedThinkingBlock(_str(raw, "data", path) or ""),
    "tool_reference": lambda raw, path: ToolReferenceBlock(_str(raw, "tool_name", path, required=True) or ""),
}


def _parse_block(raw: Any, path: str) -> Block:
    raw = _obj(raw, path)
    kind = _str(raw, "type", path, required=True)
    parser = _BLOCK_PARSERS.get(kind or "")
    if parser is not None:
        return parser(raw, path)  # type: ignore[no-any-return]
    if kind in DROPPED_BLOCK_TYPES:
        return DroppedBlock(kind or "")
    raise InvalidRequest(f"unknown content block type {kind!r}", _join(path, "type"))


def _parse_blocks(items: List[Any], path: str) -> Tuple[Block, ...]:
    return tuple(_parse_block(item, f"{path}[{i}]") for i, item in enumerate(items))


def _parse_content(value: Any, path: str) -> Tuple[Block, ...]:
    if isinstance(value, str):
        return (TextBlock(value),)
    return _parse_blocks(_list(value, path), path)


# --------------------------------------------------------------------------
# Messages, system, tools and the remaining top-level fields.


def _parse_message(raw: Any, path: str) -> Message:
    raw = _obj(raw, path)
    role = _str(raw, "role", path, required=True)
    if role not in ("user", "assistant", "system"):
        raise InvalidRequest(f"unknown role {role!r}; expected 'user', 'assistant' or 'system'", _join(path, "role"))
    if "content" not in raw:
        raise InvalidRequest("field required", _join(path, "content"))
    content = _parse_content(raw["content"], _join(path, "content"))
    if role == "system":
        _require_text_only(content, _join(path, "content"))
    return Message(role or "", content)


def _require_content(messages: Tuple[Message, ...]) -> None:
    """Anthropic's rule: of the user and assistant messages, only the final assistant one (a prefill)
    may be empty. A translator
    would drop an empty one, and a history ending in the assistant's turn asks the model to go on
    from there: not the question the client sent."""
    for i, message in enumerate(messages):
        if i == len(messages) - 1 and message.role == "assistant":
            break
        if message.role == "system":
            continue  # Claude Code sends empty ones (a turn's settings, no text): nothing is lost
        if all(isinstance(b, TextBlock) and not b.text for b in message.content):
            raise InvalidRequest("all messages must have non-empty content except for the optional final "
                                 "assistant message", f"messages[{i}]")


# Blocks a translator drops from a user turn (PROTOCOL.md 2: only an assistant writes these three;
# the upstream has no equivalent for a DroppedBlock anywhere).
_USER_TURN_DROPS = {ToolUseBlock: "tool_use", ThinkingBlock: "thinking", RedactedThinkingBlock: "redacted_thinking"}


def _require_user_content(messages: Tuple[Message, ...]) -> None:
    """User messages must keep something once translated: a run of them holding only blocks a
    translator drops vanished, and the upstream answered another conversation (maybe one ending
    in the assistant's turn). A run, as translators merge adjacent user messages. Only for a
    translated ``/v1/messages``: the Messages API forwards every block, and a token count sends
    nothing."""
    i = 0
    while i < len(messages):
        end = i
        while end < len(messages) and messages[end].role == "user":
            end += 1
        run = [b for m in messages[i:end] for b in m.content]
        if run and all(_dropped_from_user_turn(b) for b in run):
            kinds = ", ".join(sorted({_kind(b) for b in run}))
            raise InvalidRequest(f"a user message needs content the upstream can be sent: its blocks ({kinds}) "
                                 "are all dropped in translation", f"messages[{i}].content")
        i = max(end, i + 1)


def _refuse_file_ids(messages: Tuple[Message, ...]) -> None:
    """An image or document given by ``file_id`` names a file of Anthropic's Files API, which no
    translated upstream can read: sent as a note that a file was left out, the model answered
    about a file it never saw, and the client had a plausible wrong answer (a 400 tells it). Only for
    a translated ``/v1/messages``: the Messages API forwards it, and a token count sends nothing."""
    for i, message in enumerate(messages):
        where = _file_source(message.content, f"messages[{i}]")
        if where is not None:
            raise InvalidRequest("a file_id names a file of Anthropic's Files API, which this upstream cannot "
                                 "read: send the file's content (base64, text) or a URL instead", f"{where}.source")


def _file_source(blocks: Tuple[Block, ...], path: str) -> Optional[str]:
    """The path of the first block given by ``file_id`` among ``blocks``, a tool result's and a
    document's own blocks included (the parser bounds their depth); None without one."""
    for j, block in enumerate(blocks):
        where = f"{path}.content[{j}]"
        if isinstance(block, (ImageBlock, DocumentBlock)) and block.source == "file":
            return where
        found = None
        if isinstance(block, ToolResultBlock):
            found = _file_source(block.content, where)
        elif isinstance(block, DocumentBlock) and block.content:
            found = _file_source(block.content, where + ".source")  # its own blocks are its source's content
        if found is not None:
            return found
    return None


def _dropped_from_user_turn(block: Block) -> bool:
    if isinstance(block, DocumentBlock) and block.source in ("content", "text") and not (block.title or block.context):
        # Its text or blocks become the message's text: none, or only what is dropped, is nothing.
        return not block.data if block.source == "text" else all(_dropped_from_user_turn(b) for b in block.content)
    return type(block) in _USER_TURN_DROPS or isinstance(block, DroppedBlock) \
        or (isinstance(block, TextBlock) and not block.text)


def _kind(block: Block) -> str:
    if isinstance(block, TextBlock):
        return "empty text"
    if isinstance(block, DocumentBlock):
        return "document of no content"
    return _USER_TURN_DROPS.get(type(block)) or getattr(block, "type", "")


def _require_text_only(blocks: Tuple[Block, ...], path: str) -> None:
    for i, block in enumerate(blocks):
        if not isinstance(block, TextBlock):
            raise InvalidRequest("only text blocks are allowed here", f"{path}[{i}].type")


def parse_system(value: Any, path: str = "system") -> Tuple[str, Optional[str]]:
    """System prompt as one string (a list of text blocks is joined with blank lines), and the
    cache mark of its last block. The one string can carry a mark only at its end: a mark on an
    earlier block alone (a stable head, a changing tail) would there pay each request's cache write
    for a prefix no later request shares, so it is not carried."""
    if value is None:
        return "", None
    parsed = _parse_content(value, path)
    _require_text_only(parsed, path)
    blocks = [b for b in parsed if isinstance(b, TextBlock) and b.text]
    return "\n\n".join(b.text for b in blocks), (blocks[-1].cache if blocks else None)


def _parse_tool(raw: Any, path: str) -> Tool:
    raw = _obj(raw, path)
    kind = _str(raw, "type", path) or "custom"
    name = _str(raw, "name", path, required=True) or ""
    if not name:
        raise InvalidRequest("must not be empty", _join(path, "name"))
    deferred = _bool(raw, "defer_loading", path)
    if kind != "custom" and "input_schema" not in raw:
        options = {k: v for k, v in raw.items() if k not in ("type", "name", "cache_control", "defer_loading")}
        return dataclasses.replace(_anthropic_defined_tool(kind, name, options, path), deferred=deferred)
    schema = _obj(raw.get("input_schema"), _join(path, "input_schema"))
    return Tool(name=name, kind="custom", description=_str(raw, "description", path), input_schema=schema,
                deferred=deferred)


def _anthropic_defined_tool(kind: str, name: str, options: Dict[str, Any], path: str) -> Tool:
    """A client tool (text editor, bash, memory) with its documented schema; a server tool or
    computer use with none (the translations drop those)."""
    definition = client_tool(kind)
    if definition is None:
        return Tool(name=name, kind=kind, options=options)
    fixed = fixed_name(kind)
    if fixed is not None and name != fixed:
        # Anthropic refuses any other name for the type (its schema makes the name a constant).
        raise InvalidRequest(f"must be {fixed!r} for a tool of type {kind!r}", _join(path, "name"))
    return Tool(name=name, kind=kind, description=definition.description, input_schema=definition.schema(),
                options=options)


def _parse_tool_choice(value: Any, path: str = "tool_choice") -> Optional[ToolChoice]:
    if value is None:
        return None
    raw = _obj(value, path)
    kind = _str(raw, "type", path, required=True)
    if kind not in ("auto", "any", "tool", "none"):
        raise InvalidRequest(f"unknown tool_choice type {kind!r}", _join(path, "type"))
    name = _str(raw, "name", path, required=(kind == "tool"))
    return ToolChoice(kind or "", name, _bool(raw, "disable_parallel_tool_use", path))


def _parse_thinking_config(value: Any, path: str = "thinking") -> Optional[Thinking]:
    if value is None:
        return None
    raw = _obj(value, path)
    kind = _str(raw, "type", path, required=True)
    if kind not in THINKING_TYPES:
        raise InvalidRequest(f"unknown thinking type {kind!r}", _join(path, "type"))
    budget = _int(raw, "budget_tokens", path, required=(kind == "enabled"))
    return Thinking(kind or "", budget, _str(raw, "display", path))


def _parse_output_config(value: Any, path: str = "output_config") -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
    if value is None:
        return None, None
    raw = _obj(value, path)
    effort = _str(raw, "effort", path)
    if effort is not None and effort not in EFFORTS:
        raise InvalidRequest(f"unknown effort {effort!r}; expected one of {', '.join(EFFORTS)}", _join(path, "effort"))
    schema = _parse_format(raw["format"], _join(path, "format")) if raw.get("format") is not None else None
    return effort, schema


def _parse_format(value: Any, path: str) -> Dict[str, Any]:
    """A structured-output ``format``: its JSON schema."""
    fmt = _obj(value, path)
    if _str(fmt, "type", path, required=True) != "json_schema":
        raise InvalidRequest("only 'json_schema' is supported", _join(path, "type"))
    return _obj(fmt.get("schema"), _join(path, "schema"))


def _parse_stop_sequences(value: Any, path: str = "stop_sequences") -> Tuple[str, ...]:
    """The stop strings: at most 8,191 (the limit Anthropic's models have on Bedrock) and 65,536
    characters together (the proxy's: it matches those an upstream is not sent, and an automaton of
    32 MiB of them would take gigabytes); none empty, as on Anthropic."""
    if value is None:
        return ()
    items = _list(value, path)
    if len(items) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"at most {MAX_STOP_SEQUENCES:,} stop sequences are allowed, not {len(items):,}", path)
    for i, item in enumerate(items):
        if not _expect(item, str, f"{path}[{i}]", "a string"):
            raise InvalidRequest("each stop sequence must be non-empty", path)
    characters = sum(len(item) for item in items)
    if characters > MAX_STOP_CHARACTERS:
        raise InvalidRequest(f"the stop sequences may have {MAX_STOP_CHARACTERS:,} characters together, "
                             f"not {characters:,}", path)
    return tuple(items)


def _parse_user_id(value: Any) -> Optional[str]:
    if value is None:
        return None
    return _str(_obj(value, "metadata"), "user_id", "metadata")


def parse_tools(value: Any, path: str = "tools") -> Tuple[Tool, ...]:
    """The ``tools`` list, each definition checked, no name twice (Anthropic refuses that too: the
    model's call could not say which was meant, and most upstreams take the first or the last)."""
    tools = tuple(_parse_tool(t, f"{path}[{i}]") for i, t in enumerate(_list(value, path)))
    seen = set()
    for i, tool in enumerate(tools):
        if tool.name in seen:
            raise InvalidRequest(f"tool names must be unique: {tool.name!r} is given twice", f"{path}[{i}].name")
        seen.add(tool.name)
    return tools


ToolsParser = Callable[[Any], Tuple[Tool, ...]]


def _parse_common(obj: Dict[str, Any], tools_parser: ToolsParser) -> Dict[str, Any]:
    """The fields shared by /v1/messages and /v1/messages/count_tokens."""
    model = _str(obj, "model", "", required=True)
    if not model:
        raise InvalidRequest("must not be empty", "model")
    messages = _list(obj.get("messages"), "messages") if "messages" in obj else None
    if messages is None:
        raise InvalidRequest("field required", "messages")
    if not messages:
        raise InvalidRequest("at least one message is required", "messages")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest(f"at most {MAX_MESSAGES:,} messages are allowed in a single request, "
                             f"not {len(messages):,}", "messages")
    tools = _list(obj["tools"], "tools") if obj.get("tools") is not None else None
    effort, schema = _parse_output_config(obj.get("output_config"))
    if schema is None and obj.get("output_format") is not None:
        # The structured-outputs beta's first form (structured-outputs-2025-11-13), still sent by
        # clients built on it: the same format, at the top level.
        schema = _parse_format(obj["output_format"], "output_format")
    parsed = tuple(_parse_message(m, f"messages[{i}]") for i, m in enumerate(messages))
    _require_content(parsed)
    parsed_tools = tools_parser(tools) if tools is not None else ()
    choice = _parse_tool_choice(obj.get("tool_choice"))
    if choice is not None and choice.kind == "tool" and all(t.name != choice.name for t in parsed_tools) \
            and not obj.get("mcp_servers"):  # an MCP server's tools are named by the server, not here
        # Sent on as "auto", the model would answer in text where the
        # client forces a call (and reads no tool_use), or call some other tool.
        raise InvalidRequest(f"tool {choice.name!r} is not among the request's tools", "tool_choice.name")
    system, system_cache = parse_system(obj.get("system"))
    return {
        "model": model,
        "messages": parsed,
        "system": system,
        "system_cache": system_cache,
        "cache": cache_mark(obj),
        "tools": parsed_tools,
        "tool_choice": choice,
        "thinking": _parse_thinking_config(obj.get("thinking")),
        "effort": effort,
        "output_schema": schema,
    }


def parse_count_tokens_request(obj: Any, tools_parser: ToolsParser = parse_tools) -> MessagesRequest:
    """Validate a count_tokens body (no ``max_tokens``).

    ``tools_parser`` parses the ``tools`` list: a server passes its ``ToolMemo.parse``.
    """
    return MessagesRequest(**_parse_common(_obj(obj, "body"), tools_parser))


def parse_messages_request(obj: Any, tools_parser: ToolsParser = parse_tools) -> MessagesRequest:
    """Validate a decoded ``POST /v1/messages`` body into a ``MessagesRequest`` (``tools_parser``: as above)."""
    obj = _obj(obj, "body")
    if obj.get("thread") is not None:
        raise thread_unsupported()  # a translated request holds the whole conversation or nothing
    fields = _parse_common(obj, tools_parser)
    _require_user_content(fields["messages"])
    _refuse_file_ids(fields["messages"])
    max_tokens = _int(obj, "max_tokens", "", required=True)
    if max_tokens is not None and max_tokens < 0:
        raise InvalidRequest("must be greater than or equal to 0", "max_tokens")
    stream = obj.get("stream")
    return MessagesRequest(
        max_tokens=max_tokens,
        stream=bool(_expect(stream, bool, "stream", "a boolean")) if stream is not None else False,
        temperature=_unit_interval(obj, "temperature"),
        top_p=_unit_interval(obj, "top_p"),
        top_k=_int(obj, "top_k", ""),
        stop_sequences=_parse_stop_sequences(obj.get("stop_sequences")),
        user_id=_parse_user_id(obj.get("metadata")),
        mcp_servers=_mcp_server_names(obj.get("mcp_servers")),
        **fields,
    )


def _mcp_server_names(value: Any) -> Tuple[str, ...]:
    """The names of the MCP connector's servers (``mcp_servers``, a beta): Anthropic connects to
    them, an upstream that only takes functions cannot, so they are left out with a warning."""
    servers = _list(value, "mcp_servers") if value is not None else []
    names = (s.get("name") if isinstance(s, dict) else None for s in servers)
    return tuple(name if isinstance(name, str) and name else "(unnamed)" for name in names)


def peek_request(obj: Any) -> Tuple[str, bool]:
    """The model and stream flag of a request body: all routing needs, before an API parses the rest."""
    obj = _obj(obj, "body")
    model = _str(obj, "model", "", required=True)
    if not model or not model.strip():
        raise InvalidRequest("must not be empty", "model")
    if len(model) > MAX_MODEL_NAME:  # the name itself is not quoted back
        raise InvalidRequest(f"must be at most {MAX_MODEL_NAME} characters, not {len(model)}", "model")
    if obj.get("tools") is not None:
        _list(obj["tools"], "tools")  # checked here too: a forwarding API sends the body on unparsed
    stream = obj.get("stream")
    return model, bool(_expect(stream, bool, "stream", "a boolean")) if stream is not None else False
