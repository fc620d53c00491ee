"""Anthropic ``MessagesRequest`` -> OpenAI ``ChatRequest`` (PROTOCOL.md section 1).

Pure: no I/O, no clock, no environment. ``to_chat_request`` returns the
request plus the warnings the caller should log (dropped server tools...) and
the tool-name aliases the response path must reverse. Provider differences
come only from the ``Dialect`` flags.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

from ...anthropic_tools import dropped_tool_warnings
from ...anthropic_types import (
    Block,
    found_tools,
    offered_tools,
    DocumentBlock,
    ImageBlock,
    Message,
    MessagesRequest,
    RedactedThinkingBlock,
    SearchResultBlock,
    TextBlock,
    Thinking,
    ThinkingBlock,
    Tool,
    ToolReferenceBlock,
    ToolResultBlock,
    ToolUseBlock,
    merge_turns,
)
from ...dialects import Dialect, effort_for_budget, least_effort
from ...prompt_cache import end_user, strip_billing_header
from ...schemas import InlineBudget, clean_schema
from ...signatures import decode_signature
from ..names import tool_alias, tool_names, upstream_tool_id
from ..user_text import (MISSING_RESULT, TEXT_ONLY_IMAGE, document_text, error_text, orphan_result,
                         pdf_omitted, search_result_text, tool_reference_text)
from .wire import ChatMessage, ChatRequest, ToolCall


MISTRAL_BRIDGE = "(tool results received)"
_MISTRAL_ID_RE = re.compile(r"^[a-zA-Z0-9]{9}$")
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# OpenAI rejects a longer ``user`` (Claude Code sends a ~200-char JSON string).
_MAX_USER_LEN = 64

Part = Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Translation:
    request: ChatRequest
    # OpenAI tool name -> the client's name, for names that had to be aliased.
    tool_names: Dict[str, str]
    warnings: Tuple[str, ...] = ()


# --------------------------------------------------------------------------
# Names and ids.


def mistral_id(tool_id: str) -> str:
    """Mistral accepts only 9 alphanumerics: map other ids through SHA-256 in base 62."""
    if _MISTRAL_ID_RE.match(tool_id):
        return tool_id
    number = int.from_bytes(hashlib.sha256(tool_id.encode("utf-8")).digest()[:8], "big")
    chars = []
    for _ in range(9):
        number, rem = divmod(number, 62)
        chars.append(_BASE62[rem])
    return "".join(chars)


def call_id(tool_id: str, dialect: Dialect) -> str:
    """The upstream id for a client tool_use id: Mistral's 9 alphanumerics, else the upstream's own,
    within the dialect's length (a long one's head and a digest of the whole: the same in the call
    and its result, and every turn)."""
    if dialect.short_tool_ids:
        return mistral_id(tool_id)
    tool_id = upstream_tool_id(tool_id)
    limit = dialect.tool_id_limit
    if limit is None or len(tool_id) <= limit:
        return tool_id
    return tool_id[: limit - 9] + "_" + hashlib.sha256(tool_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _user_field(user_id: Optional[str]) -> Optional[str]:
    if not user_id or len(user_id) <= _MAX_USER_LEN:
        return user_id or None
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------
# User-side blocks -> content parts.


def _text_part(text: str) -> Part:
    return {"type": "text", "text": text}


def _cache_control(ttl: str) -> Dict[str, str]:
    """The Anthropic mark for a kept ``cache`` ttl (``anthropic_types.cache_mark``)."""
    return {"type": "ephemeral", "ttl": ttl} if ttl else {"type": "ephemeral"}


def _marked(text: str, mark: Optional[str], dialect: Dialect) -> Part:
    """A text part with the client's cache mark, where the dialect carries marks (``cache_marks``)."""
    part = _text_part(text)
    if mark is not None and dialect.cache_marks:
        part["cache_control"] = _cache_control(mark)
    return part


def _image_part(block: ImageBlock, dialect: Dialect) -> Part:
    if dialect.string_content_only:
        return _text_part(TEXT_ONLY_IMAGE)
    if block.source == "base64":
        if dialect.image_types is not None and block.media_type not in dialect.image_types:
            return _text_part(f"[image omitted: this server takes no {block.media_type}]")
        return {"type": "image_url", "image_url": {"url": f"data:{block.media_type};base64,{block.data}"}}
    # A URL: a file_id is refused at the door (anthropic_types._refuse_file_ids).
    if not dialect.image_urls:
        return _text_part(f"[image: {block.url}]")  # as a document's URL: the model still sees where it is
    return {"type": "image_url", "image_url": {"url": block.url}}


def _document_parts(block: DocumentBlock, dialect: Dialect) -> List[Part]:
    if block.source == "base64":
        if dialect.supports_file_parts and not dialect.string_content_only:
            data = f"data:{block.media_type or 'application/pdf'};base64,{block.data}"
            return [{"type": "file", "file": {"filename": block.title or "document.pdf", "file_data": data}}]
        return [_text_part(pdf_omitted(block.title))]
    if block.source == "text":
        text = document_text(block)
        return [_text_part(text)] if text else []  # nothing, as an empty text block
    if block.source == "content":
        head = [_text_part(line) for line in (block.title, block.context) if line]
        return head + _user_parts(block.content, dialect)
    return [_text_part(f"[document: {block.url}]")]  # a URL: a file_id is refused at the door


def _block_parts(block: Block, dialect: Dialect) -> List[Part]:
    """Parts for one user-side block; blocks with no user meaning give none."""
    if isinstance(block, TextBlock):
        return [_marked(block.text, block.cache, dialect)] if block.text else []
    if isinstance(block, ImageBlock):
        return [_image_part(block, dialect)]
    if isinstance(block, DocumentBlock):
        return _document_parts(block, dialect)
    if isinstance(block, SearchResultBlock):
        return [_text_part(search_result_text(block))]
    if isinstance(block, ToolReferenceBlock):
        return [_text_part(tool_reference_text(block))]
    return []  # thinking, tool_use, server-tool blocks in a user turn


def _user_parts(blocks: Tuple[Block, ...], dialect: Dialect) -> List[Part]:
    return [part for block in blocks for part in _block_parts(block, dialect)]


def _user_content(parts: List[Part], dialect: Dialect) -> Any:
    """A plain string when the parts are all text and one, or the dialect wants strings. Not where
    cache marks go on, which only a part carries: a message keeps its form whether the mark that
    moves to the newest message each turn is on it or not."""
    texts = [p["text"] for p in parts if p["type"] == "text"]
    if len(texts) == len(parts) and ((len(parts) == 1 and not dialect.cache_marks) or dialect.string_content_only):
        return "\n\n".join(texts)
    return parts


# --------------------------------------------------------------------------
# tool_result -> tool message content (text only) + images for the user turn.


def _tool_result_content(block: ToolResultBlock, dialect: Dialect) -> Tuple[str, List[Part]]:
    """The tool message text, and the parts only a user message can carry (images, PDF files).

    OpenAI tool messages take text parts only; the rest moves to a user message
    after the turn's tool messages and leaves a marker in the text (FIELD-NOTES 14).
    A placeholder that is text anyway (a text-only model, an image file id)
    stays in the tool text: nothing then has to move, and the turn ends with the
    tool message, so what the client adds to the same user message later (the
    /compact instructions) only appends a new message.
    """
    texts: List[str] = []
    moved: List[Part] = []
    for item in block.content:
        parts = [_image_part(item, dialect)] if isinstance(item, ImageBlock) else _block_parts(item, dialect)
        for part in parts:
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                texts.append("[file]" if part["type"] == "file" else "[image]")
                moved.append(part)
    text = "\n".join(texts)
    return (error_text(text) if block.is_error else text), moved


def _orphan_parts(block: ToolResultBlock, dialect: Dialect) -> List[Part]:
    """A result with no matching call: user text, with its images kept next to it."""
    text, moved = _tool_result_content(block, dialect)
    return [_marked(orphan_result(block.tool_use_id, text), block.cache, dialect)] + moved


# --------------------------------------------------------------------------
# Assistant turns.


def _restore_state(blocks: Tuple[Block, ...]) -> Dict[str, Any]:
    """Provider state packed into the signatures of proxy-made thinking blocks. The client sends
    them back, so they are client input: a part of the wrong shape is left out (``{"ts": "abc"}``
    was a 500), as a signature that does not decode is."""
    state: Dict[str, Any] = {}
    for block in blocks:
        sig = block.signature if isinstance(block, ThinkingBlock) else None
        sig = block.data if isinstance(block, RedactedThinkingBlock) else sig
        decoded = decode_signature(sig) if sig else None
        if decoded:
            state.update(decoded)
    ts, details = state.get("ts"), state.get("reasoning_details")
    if ts is not None:
        state["ts"] = {k: v for k, v in ts.items() if isinstance(v, str)} if isinstance(ts, dict) else {}
    if details is not None and not (isinstance(details, list) and all(isinstance(d, dict) for d in details)):
        del state["reasoning_details"]
    return state


# The fields each ``reasoning_history`` sends an assistant turn's reasoning back in.
_REASONING_FIELDS = {"reasoning": ("reasoning",), "reasoning_content": ("reasoning_content",),
                     "reasoning_content_all": ("reasoning_content",), "both": ("reasoning", "reasoning_content")}


def _reasoning_for(blocks: Tuple[Block, ...], has_tools: bool, dialect: Dialect) -> Tuple[Tuple[str, ...], Optional[str]]:
    """(field names, text) of the reasoning echoed back, per ``reasoning_history``."""
    style = dialect.reasoning_history
    if style == "drop":
        return (), None
    text = "".join(b.thinking for b in blocks if isinstance(b, ThinkingBlock))
    if text or (style == "reasoning_content_all" and has_tools):
        return _REASONING_FIELDS[style], text or dialect.reasoning_placeholder
    return (), None


def _tool_call(block: ToolUseBlock, dialect: Dialect, signatures: Dict[str, Any]) -> ToolCall:
    args = block.input_json
    return ToolCall(call_id(block.id, dialect), tool_alias(block.name), args, signatures.get(block.id))


def _assistant_message(message: Message, dialect: Dialect, is_last: bool) -> ChatMessage:
    blocks = message.content
    state = _restore_state(blocks)
    texts = [b.text for b in blocks if isinstance(b, TextBlock) and b.text]
    thought_signatures = state.get("ts", {}) if dialect.thought_signatures else {}
    calls = tuple(_tool_call(b, dialect, thought_signatures) for b in blocks if isinstance(b, ToolUseBlock))
    content: Any = "\n\n".join(texts) if texts else None
    if content is None and not calls:
        content = ""
    elif content is None and dialect.assistant_empty_content is not None:
        content = dialect.assistant_empty_content
    fields, reasoning = _reasoning_for(blocks, bool(calls), dialect)
    extra = tuple((k, v) for k, v in state.items() if k == "reasoning_details" and dialect.reasoning_history == "reasoning")
    return ChatMessage(
        "assistant",
        content,
        tool_calls=calls,
        reasoning_fields=fields,
        reasoning=reasoning,
        prefix=is_last and dialect.prefill_prefix and not calls,
        extra=extra,
    )


# --------------------------------------------------------------------------
# The message list (PROTOCOL.md 1.2).


def _merge_same_role(messages: Tuple[Message, ...], merge_users: bool) -> List[Message]:
    """Anthropic treats consecutive user (or assistant) turns as one; so do we.

    Consecutive user turns stay apart where the dialect takes them
    (``merge_user_turns`` off), so that a user turn translates the same when
    the client later adds another right after it; but a user turn with tool
    results always joins the one before, because its results must come right
    after the assistant's calls (PROTOCOL.md 1.2 step 3).
    """
    return merge_turns(messages, lambda message: merge_users or message.role != "user" or _has_tool_result(message))


def _has_tool_result(message: Message) -> bool:
    return any(isinstance(b, ToolResultBlock) for b in message.content)


def _system_text(message: Message) -> str:
    """The text of a system-role message, without Claude Code's billing line."""
    texts = (strip_billing_header(b.text) for b in message.content if isinstance(b, TextBlock))
    return "\n\n".join(t for t in texts if t)


def _system_content(text: str, mark: Optional[str], dialect: Dialect) -> Any:
    """A system message's content: the string, or where cache marks go on one text part, with the
    mark of the prompt's last block if it has one (``parse_system``)."""
    return [_marked(text, mark, dialect)] if dialect.cache_marks else text


class _MessageBuilder:
    """Builds the OpenAI message list in one pass, repairing tool-call pairing.

    Prompt caches need every message to translate the same whatever comes after
    it. Each step here looks only backwards (an orphan result is judged by the
    assistant turn before it, a late system turn by what is already out, a tool
    id is a hash of itself), with exceptions that concern only a history that
    ends on an assistant turn: a call still open at the end gets a synthetic
    result (``close_turn`` at the end) that the real result replaces next turn,
    a system turn deferred behind such calls moves, and a final assistant turn
    is a prefill (Mistral's ``prefix``). Claude Code never ends a request on an
    assistant turn (a tool call's results come in the same request as the next
    user turn), so in its sessions none of these is ever superseded.
    """

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.out: List[ChatMessage] = []
        # The ids of the last assistant turn's tool calls (client form), in order; a dict, so that
        # finding the call of each of 10,000 parallel results costs no scan of the list.
        self.pending: Dict[str, None] = {}
        self.deferred: List[ChatMessage] = []  # system turns that arrived between a call and its result
        self.past_start, self.looked_at = False, 0  # _past_the_start

    def add_system(self, message: Message) -> None:
        text = _system_text(message)
        if not text:
            return
        role = self.dialect.system_role
        if self.dialect.late_system_role and self._past_the_start(role):
            role = self.dialect.late_system_role
        (self.deferred if self.pending else self.out).append(ChatMessage(role, self._system_turn(message, text)))

    def _system_turn(self, message: Message, text: str) -> Any:
        """A system turn's content, with its last text block's cache mark where marks go on (only there
        is that block looked for: every dialect translates system turns)."""
        if not self.dialect.cache_marks:
            return text
        last = next(b for b in reversed(message.content) if isinstance(b, TextBlock) and b.text)
        return _system_content(text, last.cache, self.dialect)

    def _past_the_start(self, system_role: str) -> bool:
        """Has a message other than a system one gone out? Each message is looked at once: a scan
        of them all for each system turn made 40,000 leading system turns take 23 s (mistral)."""
        if not self.past_start:
            out = self.out
            self.past_start = any(out[i].role != system_role for i in range(self.looked_at, len(out)))
            self.looked_at = len(self.out)
        return self.past_start

    def add_assistant(self, message: Message, is_last: bool) -> None:
        self.close_turn()
        chat = _assistant_message(message, self.dialect, is_last)
        self.out.append(chat)
        self.pending = dict.fromkeys(b.id for b in message.content if isinstance(b, ToolUseBlock))

    def add_user(self, message: Message) -> None:
        """Tool messages, then the parts moved out of them, then the turn's own content.

        The moved images form their own user message, before the user's text:
        the text may grow later (Claude Code appends the /compact instructions
        to this very message), and then only a new message is added. Where user
        turns merge, the images still come first, so the merged content starts
        the same.
        """
        parts: List[Part] = []
        images: List[Part] = []
        answered = set()
        for block in message.content:
            if isinstance(block, ToolResultBlock) and block.tool_use_id in self.pending and block.tool_use_id not in answered:
                text, found = _tool_result_content(block, self.dialect)
                self._tool_message(block.tool_use_id, text, block.cache)
                answered.add(block.tool_use_id)
                images.extend(found)
            elif isinstance(block, ToolResultBlock):
                parts.extend(_orphan_parts(block, self.dialect))
            else:
                parts.extend(_block_parts(block, self.dialect))
        self.close_turn(answered)
        for content in (images, parts):
            if content:
                self.out.append(ChatMessage("user", _user_content(content, self.dialect)))

    def _tool_message(self, tool_use_id: str, text: str, mark: Optional[str] = None) -> None:
        # A tool message's content may be text parts (OpenAI's schema): one, for a cache mark.
        content: Any = [_marked(text, mark, self.dialect)] if text and self.dialect.cache_marks else text
        self.out.append(ChatMessage("tool", content, tool_call_id=call_id(tool_use_id, self.dialect)))

    def close_turn(self, answered: Any = ()) -> None:
        """Answer every still-open tool call, then release deferred system turns."""
        for tool_id in self.pending:
            if tool_id not in answered:
                self._tool_message(tool_id, MISSING_RESULT)
        self.pending = {}
        self.out.extend(self.deferred)
        self.deferred = []


def _merge_users(messages: List[ChatMessage]) -> List[ChatMessage]:
    """Consecutive user messages as one, for dialects with ``merge_user_turns``.

    Like the user merge in ``_merge_same_role``, this depends on what follows: a
    user message that is last in one request is rewritten when the next request
    puts another user message right after it. In Claude Code's main turns an
    assistant answer always follows, so it only happens where the client itself
    extends its last user message (the /compact request), and there the merged
    content still starts with the old one.
    """
    out: List[ChatMessage] = []
    for message in messages:
        if out and message.role == "user" and out[-1].role == "user":
            out[-1] = ChatMessage("user", _join_content(out[-1].content, message.content))
        else:
            out.append(message)
    return out


def _join_content(first: Any, second: Any) -> Any:
    if isinstance(first, str) and isinstance(second, str):
        return f"{first}\n\n{second}"
    as_parts = [_text_part(c) if isinstance(c, str) else c for c in (first, second)]
    return [p for c in as_parts for p in (c if isinstance(c, list) else [c])]


def _bridge_tool_to_user(messages: List[ChatMessage]) -> List[ChatMessage]:
    """Mistral accepts only ``assistant`` (or more ``tool``) after ``tool``: put an assistant line
    before a ``user`` or ``system`` turn there.

    The bridge is inserted before the later message and never changes an
    earlier one, so it cannot break a cached prefix; it is the same line every
    turn.
    """
    out: List[ChatMessage] = []
    for message in messages:
        if out and out[-1].role == "tool" and message.role not in ("tool", "assistant"):
            out.append(ChatMessage("assistant", MISTRAL_BRIDGE))
        out.append(message)
    return out


def to_chat_messages(messages: Tuple[Message, ...], system: str, dialect: Dialect,
                     system_cache: Optional[str] = None) -> List[ChatMessage]:
    """The whole OpenAI message list: system prompt, turns, and the repair passes."""
    builder = _MessageBuilder(dialect)
    if system:
        builder.out.append(ChatMessage(dialect.system_role, _system_content(system, system_cache, dialect)))
    merged = _merge_same_role(messages, dialect.merge_user_turns)
    for i, message in enumerate(merged):
        if message.role == "system":
            builder.add_system(message)
        elif message.role == "assistant":
            builder.add_assistant(message, is_last=(i == len(merged) - 1))
        else:
            builder.add_user(message)
    builder.close_turn()
    out = _merge_users(builder.out) if dialect.merge_user_turns else builder.out
    if dialect.cache_marks:
        _longer_marks_first(out)
    return _bridge_tool_to_user(out) if dialect.bridge_tool_to_user else out


def _longer_marks_first(messages: List[ChatMessage]) -> None:
    """Anthropic refuses a 1-hour cache mark after a 5-minute one. The client's order is kept, but a
    system turn held back behind a tool call's result (``close_turn``) may move a 1-hour mark after a
    shorter one: that one is made a 5-minute mark. (The parts are this request's own.)"""
    shorter_seen = False
    for message in messages:
        for part in message.content if isinstance(message.content, list) else ():
            mark = part.get("cache_control")
            if mark is None:
                continue
            if mark.get("ttl") != "1h":
                shorter_seen = True
            elif shorter_seen:
                part["cache_control"] = _cache_control("")


# --------------------------------------------------------------------------
# Tools and tool_choice (PROTOCOL.md 1.5, 1.6).


def _function_tool(tool: Tool, dialect: Dialect, shared: InlineBudget) -> Dict[str, Any]:
    function: Dict[str, Any] = {"name": tool_alias(tool.name)}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = clean_schema(tool.input_schema, dialect.schema_sanitizer, shared)
    return {"type": "function", "function": function}


ChatTools = Tuple[Tuple[Dict[str, Any], ...], Tuple[str, ...]]  # (tools, warnings)


def chat_tools(tools: Tuple[Tool, ...], dialect: Dialect) -> ChatTools:
    """Custom tools and Anthropic's client tools (text editor, bash, memory) as functions; a
    warning names the server tools and computer use left out."""
    shared = InlineBudget()  # one for all the tools (Gemini's $refs inlined)
    functions = tuple(_function_tool(t, dialect, shared) for t in tools if t.is_function)
    warnings = dropped_tool_warnings([t for t in tools if not t.is_function])
    if shared.flattened:
        warnings += ("tool schemas too large to inline in full for Gemini: past 20,000 nodes a tool (100,000 "
                     "a request) a $ref goes as a plain object",)
    return functions, warnings


def _prefill_fields(req: MessagesRequest, dialect: Dialect) -> Tuple[Tuple[str, Any], ...]:
    """vLLM's fields for a prefill (a last assistant turn of text) to be continued (``prefill_continue``)."""
    last = req.messages[-1] if req.messages else None
    if not dialect.prefill_continue or last is None or last.role != "assistant" \
            or any(isinstance(b, ToolUseBlock) for b in last.content):
        return ()
    return (("continue_final_message", True), ("add_generation_prompt", False))


def _tool_choice_for(req: MessagesRequest, functions: Tuple[Dict[str, Any], ...], dialect: Dialect
                     ) -> Tuple[Tuple[Dict[str, Any], ...], Any, Optional[bool]]:
    """(functions, tool_choice, parallel_tool_calls) as the dialect takes them: a named tool as the
    one tool required where the object form is not read (``names_a_tool``), parallel calls asked
    for where they are not the default (``asks_parallel_calls``)."""
    tool_choice, parallel = _tool_choice(req, functions)
    if isinstance(tool_choice, dict) and not dialect.names_a_tool:
        named = tool_choice["function"]["name"]
        functions, tool_choice = tuple(f for f in functions if f["function"]["name"] == named), "required"
    if parallel is None and functions and tool_choice != "none" and dialect.asks_parallel_calls:
        parallel = True
    return functions, tool_choice, parallel


def _tool_choice(req: MessagesRequest, sent: Tuple[Dict[str, Any], ...]) -> Tuple[Any, Optional[bool]]:
    choice = req.tool_choice
    if not sent or choice is None:
        return None, None
    parallel = False if choice.disable_parallel and choice.kind != "none" else None
    if choice.kind == "any":
        return "required", parallel
    if choice.kind == "tool":
        alias = tool_alias(choice.name or "")
        if any(t["function"]["name"] == alias for t in sent):
            return {"type": "function", "function": {"name": alias}}, parallel
        return "auto", parallel
    return choice.kind, parallel  # auto, none


# --------------------------------------------------------------------------
# Thinking / effort (PROTOCOL.md 1.7): one function per reasoning style.

Reasoning = Tuple[Optional[str], Tuple[Tuple[str, Any], ...]]  # (reasoning_effort, extra fields)


def _wanted_effort(thinking: Optional[Thinking], effort: Optional[str]) -> Optional[str]:
    """The effort the client asked for: a budget bucket, or output_config.effort."""
    if thinking is not None and thinking.kind == "enabled" and thinking.budget_tokens is not None:
        return effort_for_budget(thinking.budget_tokens)
    if thinking is not None and thinking.kind == "disabled":
        return None
    return effort


def _reasoning_effort(t: Optional[Thinking], effort: Optional[str]) -> Reasoning:
    return _wanted_effort(t, effort), ()


def _reasoning_explicit(t: Optional[Thinking], effort: Optional[str]) -> Reasoning:
    return (_wanted_effort(t, None) if t is not None and t.kind == "enabled" else None), ()


def _reasoning_off_switch(t: Optional[Thinking], effort: Optional[str]) -> Reasoning:
    """A budget's effort, or "none" for thinking off (Gemini's; Ollama's, which a model that cannot
    think takes too); adaptive thinking leaves the model to its default."""
    if t is not None and t.kind == "disabled":
        return "none", ()
    return _reasoning_explicit(t, effort)


def _reasoning_openrouter(t: Optional[Thinking], effort: Optional[str]) -> Reasoning:
    # Its efforts go up to xhigh (openrouter.ai/docs/use-cases/reasoning-tokens); Claude Code's
    # /effort max is the most there is.
    effort = "xhigh" if effort == "max" else effort
    if t is None:
        return None, ((("reasoning", {"effort": effort}),) if effort else ())
    if t.kind == "enabled" and t.budget_tokens is not None:
        return None, (("reasoning", {"max_tokens": t.budget_tokens}),)
    if t.kind == "disabled":
        return None, (("reasoning", {"enabled": False}),)
    return None, (("reasoning", {"effort": effort} if effort else {"enabled": True}),)


def _reasoning_deepseek(t: Optional[Thinking], effort: Optional[str]) -> Reasoning:
    if t is None:
        return None, ()
    if t.kind == "disabled":
        return None, (("thinking", {"type": "disabled"}),)
    return _wanted_effort(t, effort), (("thinking", {"type": "enabled"}),)


def _thinking_with(req: MessagesRequest, tool_choice: Any, dialect: Dialect) -> Optional[Thinking]:
    """The client's thinking; off where the client said nothing of it (nor of an effort) for a model
    that thinks unless told not to (DeepSeek V4: its reasoning, billed, would be hidden from the client and lost to
    the later tool turns that must send it back), and for Kimi K2.5 and later where the client
    forces a tool, as Anthropic's own models do not think then. Kimi refuses a forced tool with
    thinking on ("tool_choice 'required' is incompatible with thinking enabled":
    UKGovernmentBEIS/inspect_ai#5152, can1357/oh-my-pi#1077)."""
    forced = tool_choice == "required" or isinstance(tool_choice, dict)
    # (An effort without thinking asks for thinking of that effort, as DeepSeek reads output_config.effort.)
    unasked = dialect.thinks_unless_told and req.effort is None
    if req.thinking is None and (unasked or forced and dialect.reasoning == "switch"):
        return Thinking("disabled")
    return req.thinking


def _reasoning_switch(t: Optional[Thinking], effort: Optional[str]) -> Reasoning:
    """Moonshot's thinking switch alone: it documents no effort for its thinking models."""
    if t is None:
        return None, ()
    return None, (("thinking", {"type": "disabled" if t.kind == "disabled" else "enabled"}),)


def _reasoning_groq(t: Optional[Thinking], effort: Optional[str]) -> Reasoning:
    """Groq's qwen3 (PROTOCOL.md 1.7): reasoning_format "parsed" puts the reasoning in a field of its
    own. Left out, it is "raw" without tools (the ``<think>`` text inside the answer's, which the
    dialect's think_tags reads). Its effort is "none" or "default" only, so "none" is the off switch."""
    if t is not None and t.kind == "disabled":
        return "none", ()
    if t is not None and t.kind == "enabled":
        return None, (("reasoning_format", "parsed"),)
    return None, ()


def _reasoning_mistral(t: Optional[Thinking], effort: Optional[str]) -> Reasoning:
    """Mistral's adjustable reasoning (docs.mistral.ai capabilities/reasoning/adjustable): its
    reasoning_effort is "high" (a full thinking chunk first; what it recommends for agents and
    code) or "none"; a client that leaves thinking alone leaves the model to its default."""
    if t is None:
        return None, ()
    return ("none" if t.kind == "disabled" else "high"), ()


def _reasoning_for_model(t: Optional[Thinking], effort: Optional[str], model: str, dialect: Dialect) -> Reasoning:
    """The dialect's reasoning fields (``REASONING_STYLES``); for thinking disabled, an OpenAI
    reasoning model's least effort (``least_effort``), where the style leaves the effort out: left
    out, it reasons at its default."""
    wanted, extra = REASONING_STYLES[dialect.reasoning](t, effort)
    if wanted is None and dialect.reasoning == "effort" and t is not None and t.kind == "disabled":
        wanted = least_effort(model)
    return wanted, extra


def _reasoning_template(t: Optional[Thinking], effort: Optional[str]) -> Reasoning:
    if t is None or t.kind not in ("enabled", "disabled"):
        return None, ()
    return None, (("chat_template_kwargs", {"enable_thinking": t.kind == "enabled"}),)


REASONING_STYLES: Dict[str, Callable[[Optional[Thinking], Optional[str]], Reasoning]] = {
    "effort": _reasoning_effort,
    "explicit": _reasoning_explicit,
    "ollama": _reasoning_off_switch,
    "gemini": _reasoning_off_switch,
    "openrouter": _reasoning_openrouter,
    "deepseek": _reasoning_deepseek,
    "switch": _reasoning_switch,
    "groq": _reasoning_groq,
    "template": _reasoning_template,
    "mistral": _reasoning_mistral,
    "none": lambda t, effort: (None, ()),
}


# --------------------------------------------------------------------------
# The whole request.


def _response_format(schema: Optional[Dict[str, Any]], dialect: Dialect) -> Optional[Dict[str, Any]]:
    if schema is None:
        return None
    if dialect.structured_output == "json_object":
        return {"type": "json_object"}
    cleaned = clean_schema(schema, dialect.schema_sanitizer)
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": cleaned}}


def _system_prompt(req: MessagesRequest, dialect: Dialect) -> str:
    """The system prompt without Claude Code's billing line, plus the output schema where only
    JSON mode exists.

    Such providers also require the word "json" in the prompt (DeepSeek does).
    """
    system = strip_billing_header(req.system)
    if req.output_schema is None or dialect.structured_output != "json_object":
        return system
    schema = json.dumps(clean_schema(req.output_schema, dialect.schema_sanitizer), ensure_ascii=False)
    instruction = f"Reply with a single json object, and nothing else, that matches this JSON schema: {schema}"
    return f"{system}\n\n{instruction}" if system else instruction


def _top_level_mark(req: MessagesRequest, dialect: Dialect) -> Tuple[Tuple[str, Any], ...]:
    """The client's top-level cache_control (Anthropic's automatic caching), where marks go on."""
    return (("cache_control", _cache_control(req.cache)),) if req.cache is not None and dialect.cache_marks else ()


def _max_tokens(req: MessagesRequest, cap: Optional[int]) -> Optional[int]:
    if req.max_tokens is None:
        return None
    return min(req.max_tokens, cap) if cap else req.max_tokens


def _stop(req: MessagesRequest, dialect: Dialect) -> Tuple[str, ...]:
    """The stop strings sent; the rest are matched by the proxy (``apis/stops.py``)."""
    if not dialect.sends_stop:
        return ()
    stops = tuple(s for s in req.stop_sequences if s)
    return stops[: dialect.max_stop] if dialect.max_stop is not None else stops


def to_chat_request(
    req: MessagesRequest,
    *,
    model: str,
    dialect: Dialect,
    max_output_tokens: Optional[int] = None,
    stream: Optional[bool] = None,
    cache_key: Optional[str] = None,
    tools: Optional[ChatTools] = None,
) -> Translation:
    """Translate ``req`` for ``model`` on an upstream speaking ``dialect``.

    ``cache_key`` is the session's prompt-cache key (``prompt_cache.session_cache_key``);
    it is sent only where the dialect names a field for it. ``tools``: ``chat_tools`` of the
    tools the model is offered (``offered_tools``) if the caller has it already (``ToolMemo``); never
    changed here.
    """
    functions, warnings = tools if tools is not None else chat_tools(offered_tools(req, found_tools(req)), dialect)
    functions, tool_choice, parallel = _tool_choice_for(req, functions, dialect)
    effort, extra = _reasoning_for_model(_thinking_with(req, tool_choice, dialect), req.effort, model, dialect)
    sampling = not dialect.drop_sampling
    chat = ChatRequest(
        model=model,
        messages=tuple(to_chat_messages(req.messages, _system_prompt(req, dialect), dialect, req.system_cache)),
        max_tokens=_max_tokens(req, max_output_tokens),
        max_tokens_field=dialect.max_tokens_field,
        stream=req.stream if stream is None else stream,
        stream_usage=dialect.stream_usage,
        temperature=req.temperature if sampling else None,
        top_p=req.top_p if sampling else None,
        top_k=req.top_k if dialect.pass_top_k and sampling else None,
        stop=_stop(req, dialect),
        tools=functions,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        user=_user_field(end_user(req.user_id)) if dialect.user_field else None,
        user_field=dialect.user_field or "user",
        response_format=_response_format(req.output_schema, dialect),
        reasoning_effort=effort,
        extra=extra + _top_level_mark(req, dialect) + _prefill_fields(req, dialect),
        cache_key=cache_key if dialect.cache_key_field else None,
        cache_key_field=dialect.cache_key_field or "prompt_cache_key",
    )
    return Translation(chat, tool_names(req), warnings)
