"""The older form of a Messages request, for a server that refused the newer one. Pure.

Claude Code sends Anthropic's newest request to whatever ``ANTHROPIC_BASE_URL`` names: adaptive
thinking (``{"type": "adaptive"}`` with ``output_config.effort``), ``thinking.display``,
``context_management``, prompt-cache marks with a ``ttl``. A server that validates an older
schema (a gateway's pydantic models, a native endpoint written against an earlier API) refuses
every turn with the same 400 or 422, and Claude Code stops there (anthropics/claude-code#33506).

``older_step(message, sent, refused)`` reads such a refusal: the one step (``STEPS``) that meets
it, or None when the message is about something else -- the history's thinking blocks, a required
field, a thinking that is refused only together with something (a forced ``tool_choice``), a
value. A step is taken only where what was sent still has the newer form, so a request prepared
before another learned the step is retried too, and a retry never repeats the form refused.
``older_form(body, steps)`` applies what a model refused, to the proxy's own copy of the body:
the client's objects are copied where changed, never changed in place.

Optional top-level fields refused as such (``DROPPABLE``) go through ``RefusedFields``, as on the
translated APIs. Anthropic itself is never second-guessed (``apis/messages.py``).
"""

from __future__ import annotations

import re
from typing import Any, Dict, FrozenSet, List, Optional

from .user_text import TEXT_ONLY_IMAGE, file_omitted, pdf_omitted

# Optional fields a server of an older schema may refuse as such: hints the answer does not need
# (a top-level cache_control: automatic caching). output_config only with nothing but an effort in
# it (``effort_only``): its format (structured output) is the client's meaning, and a refusal stands.
DROPPABLE = ("context_management", "output_config", "metadata", "service_tier", "cache_control")
# What each step changes, as the log says it: what the model refused, what it gets instead.
STEPS = {
    "plain": ("thinking.display", "thinking without it"),
    "budget": ("adaptive thinking", "thinking with a budget (type enabled; none where no budget fits max_tokens)"),
    "off": ("thinking", "no thinking asked"),
    "no_ttl": ("a cache mark's ttl", "the 5-minute cache marks"),
    "uncached": ("cache_control marks", "no cache marks"),
    "user_system": ("a system turn in the messages", "each as a user turn, joined to the user turn beside it"),
    "no_images": ("an image", "a text placeholder for each"),
    "no_server_tools": ("a server tool (a tool without input_schema)", "the request without its server tools"),
    "no_documents": ("a document block", "each document's text, or a placeholder for a PDF or a file"),
}
# A budget for each effort, for a server that takes only the older {"type": "enabled",
# "budget_tokens": N}: in the effort's bucket of dialects.REASONING_BUCKETS (xhigh and max in the
# top one). Claude Code's default effort is medium.
BUDGET_FOR_EFFORT = {"low": 2048, "medium": 8192, "high": 16384, "xhigh": 32000, "max": 32000}
MIN_THINKING_BUDGET = 1024  # Anthropic's smallest budget_tokens

# "adaptive" as the refused value of thinking.type: pydantic's "Input tag 'adaptive' found using
# 'type' does not match any of the expected tags", serde's "unknown variant `adaptive`, expected
# `enabled` or `disabled`", "Invalid value for 'thinking.type': 'adaptive'", and pydantic's
# "thinking.type: Input should be 'enabled' or 'disabled'". Not "adaptive thinking supports low,
# medium, high" (an effort refused, which costs adaptive thinking nothing).
_ADAPTIVE_REFUSED = re.compile(
    r"""['"`]adaptive['"`]|thinking\.type\b[^\n]{0,120}?['"`]enabled['"`]|thinking\.type\W{1,4}adaptive\b"""
    r"""|\badaptive\s+thinking\s+is\s+not\s+supported|\btype\s+adaptive\s+is\s+not\s+supported""", re.I)
# The display named as a field: in a path ("thinking.display", "thinking.adaptive.display") or a
# pydantic loc ("display" in quotes); serde's and Go's "unknown field" come through refused_fields.
_DISPLAY = re.compile(r"""thinking(?:\.\w+)?\.display\b|['"`]display['"`]""", re.I)
# Thinking refused as such: "thinking is not supported for this model", "... does not support
# thinking", or the field refused as a field (apis/base.py refused_fields).
_THINKING_UNSUPPORTED = re.compile(
    r"does\s+not\s+support\s+(?:extended\s+)?thinking\s*(?:$|[.,;])"
    r"|\bthinking\s+is\s+not\s+supported\s*(?:$|[.,;]|(?:for|by|on|with)\s+this\s+model)", re.I | re.M)
# No step where thinking is refused with something else, for a value, or for blocks in the history:
# "Thinking is not supported when tool_choice forces tool use", "thinking budget_tokens above 32000",
# "temperature may only be set to 1 when thinking.type is 'adaptive'".
_THINKING_CONDITIONAL = re.compile(
    r"\b(?:when|if|unless|tool_choice|together|temperature|top_[kp]|blocks?|budget(?:_tokens)?|messages\.\d)\b", re.I)
# The marks refused: "tools.3.cache_control: Extra inputs are not permitted", "*.cache_control: ...",
# serde's "unknown field `cache_control`". The ttl alone where the path or words name it (Bedrock:
# "...cache_control.ephemeral.ttl: Extra inputs are not permitted"): 5-minute marks still work there.
_MARKS_REFUSED = re.compile(
    r"\bcache_control\b[^\n]{0,80}?"
    r"\b(?:extra|not\s+(?:supported|allowed|permitted)|unsupported|unknown|unrecogni[sz]ed)"
    r"|\b(?:unknown|unsupported|unrecogni[sz]ed)\s+(?:field|parameter|key)\s*:?\s*['\"`]?cache_control\b",
    re.I)
_TTL_REFUSED = re.compile(r"\bttl\b", re.I)
# A chat template that takes a system message only first: Qwen3.5's and 3.6's official ones raise
# "System message must be at the beginning." (llama.cpp's 500 "Jinja Exception: ...", vLLM's and LM
# Studio's 400), Gemma's "Conversation roles must alternate user/assistant/...", Mistral's "Only user
# and assistant roles are supported, with the exception of an initial optional system message!", an
# older schema "Input should be 'user' or 'assistant'". Claude Code's "# Environment" turn is a system
# message after the first user turn: every request failed. (Chat Completions' recover reads it too.)
SYSTEM_FIRST = re.compile(
    r"system\s+(?:message|prompt|role|turn)s?\s+(?:must|should|has\s+to|can\s+only)\s+(?:be\s+)?"
    r"(?:at\s+the\s+(?:beginning|start)|(?:the\s+)?first)|roles\s+must\s+alternate"
    r"|only\s+user\s+and\s+assistant\s+roles\s+are\s+supported"
    r"|input\s+should\s+be\s+'user'\s+or\s+'assistant'", re.I)
_NESTED_MARK = re.compile(r"[.*\]]\s*cache_control\b|\bcache_control\.")
# A tool refused by its place in the list (vLLM's pydantic: "tools.0.input_schema: Field required"):
# a server tool (web_search, web_fetch, ...) has no input_schema, and a server of its own schema
# refuses Claude Code's every WebSearch call (probe AH 5).
_TOOL_AT = re.compile(r"\btools\.(\d+)\b")
# A content block refused by its place ("messages.0.content.list[AnthropicContentBlock].1.type:
# Input should be 'text', 'image', ...") or by its tag ("Input tag 'document' found using 'type'").
# The path is walked in the body sent: a tool result's own block ("...0.content.list[...].1.type") too.
_BLOCK_AT = re.compile(r"\bmessages\.\d+\.content\.(?:[^\s.:'\"]+\.)*?\d+(?=\.type\b)")
_TAG_REFUSED = re.compile(r"""input\s+tag\s+['"`]document['"`]""", re.I)


def older_step(message: str, sent: Dict[str, Any], refused: FrozenSet[str]) -> Optional[str]:
    """The step (``STEPS``) that meets a refusal ``message`` of the body ``sent``, or None.

    ``message`` as ``base.pydantic_lines`` gives it (a pydantic 422's echoes of the body would read
    as refusals); ``refused``, the fields ``base.refused_fields`` finds in it."""
    marks = _marks_step(message, sent, refused)
    if marks is not None:
        return marks
    content = _content_step(message, sent)
    if content is not None:
        return content
    thinking = sent.get("thinking")
    if not isinstance(thinking, dict) or _THINKING_CONDITIONAL.search(message):
        return None
    if "thinking" in refused:
        return "off"  # the field itself (a top-level "thinking: Extra inputs ..."): nothing in it helps
    if "display" in thinking and ("display" in refused or _DISPLAY.search(message)):
        return "plain"  # before adaptive: pydantic names the union's tag in the path ("thinking.adaptive.display")
    if thinking.get("type") == "adaptive" and _ADAPTIVE_REFUSED.search(message):
        return "budget"
    return "off" if _THINKING_UNSUPPORTED.search(message) else None


def _marks_step(message: str, sent: Dict[str, Any], refused: FrozenSet[str]) -> Optional[str]:
    if not ("cache_control" in refused or _MARKS_REFUSED.search(message)):
        return None
    if "cache_control" in sent and not _NESTED_MARK.search(message):
        return None  # the top-level mark (automatic caching), a field: DROPPABLE
    marks = [block["cache_control"] for block in _markable(sent) if "cache_control" in block]
    if _TTL_REFUSED.search(message):
        # A ttl refused where none was sent is about something else.
        return "no_ttl" if any(isinstance(m, dict) and "ttl" in m for m in marks) else None
    return "uncached" if marks else None


def _content_step(message: str, sent: Dict[str, Any]) -> Optional[str]:
    """The step a refusal of what ``sent`` holds asks for: a late system turn, a server tool, a
    document block; None for none of them."""
    if SYSTEM_FIRST.search(message) and any(m.get("role") == "system" for m in _dicts(sent.get("messages"))):
        return "user_system"
    if _server_tool_refused(message, sent):
        return "no_server_tools"
    return "no_documents" if _document_refused(message, sent) else None


def _server_tool_refused(message: str, sent: Dict[str, Any]) -> bool:
    """Does the refusal name a tool of ``sent`` by its place where that tool is a server tool?"""
    tools = sent.get("tools") if isinstance(sent.get("tools"), list) else []
    at = [int(i) for i in _TOOL_AT.findall(message) if int(i) < len(tools)]
    return any(_is_server_tool(tools[i]) for i in at)


def _document_refused(message: str, sent: Dict[str, Any]) -> bool:
    """Does the refusal name a document block of ``sent`` (by its place or its tag)?"""
    if _TAG_REFUSED.search(message):
        return has_documents(sent)
    return any(_is_document(_at_path(sent, path.split("."))) for path in _BLOCK_AT.findall(message))


def _at_path(item: Any, path: List[str]) -> Any:
    """What a refusal's path names in the body sent: a number indexes a list, a name a key; a pydantic
    union's tag (``list[AnthropicContentBlock]``) names nothing. None where the body has no such place."""
    for step in path:
        if step.isdigit() and isinstance(item, list):
            item = item[int(step)] if int(step) < len(item) else None
        elif isinstance(item, dict) and step in item:
            item = item[step]
        elif "[" not in step:
            return None
    return item


def _is_server_tool(tool: Any) -> bool:
    return isinstance(tool, dict) and "input_schema" not in tool


def _is_document(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") == "document"


def has_documents(body: Dict[str, Any]) -> bool:
    """Does a Messages body hold a document block (in a message, or in a tool result's content)?"""
    return any(_is_document(block) for message in _dicts(body.get("messages"))
               for outer in _dicts(message.get("content")) for block in [outer, *_dicts(outer.get("content"))])


def older_form(body: Dict[str, Any], steps: FrozenSet[str]) -> None:
    """``body`` (the proxy's copy) in the form a model that refused ``steps`` takes."""
    if "uncached" in steps or "no_ttl" in steps:
        _unmark(body, whole="uncached" in steps)
    _older_content(body, steps)
    _older_thinking(body, steps)


def _older_content(body: Dict[str, Any], steps: FrozenSet[str]) -> None:
    """The steps that change the turns and the tools: system turns, images, documents, server tools."""
    if "user_system" in steps and isinstance(body.get("messages"), list):
        body["messages"] = system_as_user(body["messages"])
    if "no_images" in steps and has_images(body):
        body["messages"] = [_images_as_text(m) for m in body["messages"]]
    if "no_documents" in steps and has_documents(body):
        body["messages"] = [_documents_as_text(m) for m in body["messages"]]
    if "no_server_tools" in steps and isinstance(body.get("tools"), list):
        _without_server_tools(body)


def _older_thinking(body: Dict[str, Any], steps: FrozenSet[str]) -> None:
    """The steps that change what thinking is asked for: none, no display, a budget for adaptive."""
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or not steps & {"off", "plain", "budget"}:
        return
    if "off" in steps:
        del body["thinking"]
        return
    if "plain" in steps:
        body["thinking"] = thinking = {k: v for k, v in thinking.items() if k != "display"}
    if "budget" in steps and thinking.get("type") == "adaptive":
        config = body.get("output_config")
        effort = config.get("effort") if isinstance(config, dict) else None
        budget = BUDGET_FOR_EFFORT.get(effort if isinstance(effort, str) else "", BUDGET_FOR_EFFORT["medium"])
        body["thinking"] = {**thinking, "type": "enabled", "budget_tokens": budget}
        asked = body.get("max_tokens")
        if isinstance(asked, int) and not isinstance(asked, bool):
            budget_below(body, asked)  # the client's max_tokens, which an adaptive thinking never had to fit


def effort_only(output_config: Any) -> bool:
    """Is ``output_config`` an effort and nothing more (no format: structured output), so that a
    server that refuses the field may get the request without it?"""
    return isinstance(output_config, dict) and set(output_config) <= {"effort"}


def budget_below(body: Dict[str, Any], cap: int) -> None:
    """A thinking budget must stay below ``max_tokens`` (a 400 otherwise): lowered to the cap, and
    thinking left out where the cap is below Anthropic's smallest budget."""
    thinking = body.get("thinking")
    budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < cap:
        return
    if cap - 1 >= MIN_THINKING_BUDGET:
        body["thinking"] = {**thinking, "budget_tokens": cap - 1}  # type: ignore[dict-item]
    else:
        del body["thinking"]


def system_as_user(messages: List[Any]) -> List[Any]:
    """``messages`` with each system turn a user turn, its text at the end of the user turn before it,
    or else at the start of the one after it (after its tool results, which must come first), or else
    a user turn of its own: templates that take roles only in turn refuse two user turns in a row too."""
    out: List[Any] = []
    held: List[Any] = []  # a system turn's blocks waiting for the user turn after it
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user"):
            if held:
                out.append({"role": "user", "content": held})
                held = []
            out.append(message)
        elif message.get("role") == "system" and out and _is_user(out[-1]):
            out[-1] = {**out[-1], "content": _blocks(out[-1].get("content")) + _blocks(message.get("content"))}
        elif message.get("role") == "system":
            held += _blocks(message.get("content"))
        else:
            out.append({**message, "content": _after_results(_blocks(message.get("content")), held)} if held else message)
            held = []
    if held:
        out.append({"role": "user", "content": held})
    return out


def has_images(body: Dict[str, Any]) -> bool:
    """Does a Messages body hold an image (in a message, or in a tool result's content)?"""
    return any(block.get("type") == "image" for message in _dicts(body.get("messages"))
               for outer in _dicts(message.get("content")) for block in [outer, *_dicts(outer.get("content"))])


def _images_as_text(item: Any) -> Any:
    """A message, or a block, with each image a text placeholder (its cache mark kept: the prompt's
    cached prefix ends where it did); the client's objects are copied where changed."""
    if not isinstance(item, dict):
        return item
    if item.get("type") == "image":
        mark = {"cache_control": item["cache_control"]} if "cache_control" in item else {}
        return {"type": "text", "text": TEXT_ONLY_IMAGE, **mark}
    content = item.get("content")
    if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") in ("image", "tool_result") for b in content):
        return {**item, "content": [_images_as_text(b) for b in content]}
    return item


def _documents_as_text(item: Any) -> Any:
    """A message, or a block, with each document block a text block (its cache mark kept)."""
    if not isinstance(item, dict):
        return item
    if _is_document(item):
        mark = {"cache_control": item["cache_control"]} if "cache_control" in item else {}
        return {"type": "text", "text": document_as_text(item), **mark}
    content = item.get("content")
    if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") in ("document", "tool_result")
                                         for b in content):
        return {**item, "content": [_documents_as_text(b) for b in content]}
    return item


def document_as_text(block: Dict[str, Any]) -> str:
    """A document block as the text a model that takes none reads: a plain-text one's title, context
    and text; a placeholder for a PDF, a URL or a file (the Chat translation's words)."""
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    kind, title = source.get("type"), _text_of(block.get("title"))
    if kind in ("text", "content"):
        inner = source.get("data") if kind == "text" else source.get("content")
        texts = [inner] if isinstance(inner, str) else [b.get("text") for b in _dicts(inner) if b.get("type") == "text"]
        text = "\n".join(t for t in (title, _text_of(block.get("context")), *texts) if isinstance(t, str) and t)
        return text or "[empty document]"
    if kind == "url":
        return f"[document: {_text_of(source.get('url'))}]"
    if kind == "file":
        return file_omitted("document", _text_of(source.get("file_id")))
    return pdf_omitted(title)


def _text_of(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _without_server_tools(body: Dict[str, Any]) -> None:
    """``body`` without its server tools, and without a ``tool_choice`` that named one of them (or
    any tool, where none is left)."""
    tools = [t for t in body["tools"] if not _is_server_tool(t)]
    last = body["tools"][-1] if body["tools"] else None
    if tools and isinstance(last, dict) and "cache_control" in last and tools[-1] is not last \
            and isinstance(tools[-1], dict):
        # The dropped last tool's mark ends the cached prefix of the tools: it goes to the new last one.
        tools[-1] = {**tools[-1], "cache_control": last["cache_control"]}
    choice = body.get("tool_choice")
    named = choice.get("name") if isinstance(choice, dict) and choice.get("type") == "tool" else None
    if tools:
        body["tools"] = tools
    else:
        del body["tools"]
    if choice is not None and (not tools or named is not None and named not in {t.get("name") for t in tools}):
        del body["tool_choice"]


def _after_results(blocks: List[Any], held: List[Any]) -> List[Any]:
    """``held`` put into a user turn's ``blocks``, after the tool results it begins with."""
    first = next((i for i, b in enumerate(blocks) if not (isinstance(b, dict) and b.get("type") == "tool_result")),
                 len(blocks))
    return blocks[:first] + held + blocks[first:]


def _is_user(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") == "user"


def _blocks(content: Any) -> List[Any]:
    """A message's content as a list of blocks (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return list(content) if isinstance(content, list) else []


def _markable(body: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The objects a cache mark sits on: system blocks, tools, content blocks (a tool result's too)."""
    found = [b for key in ("system", "tools") for b in _dicts(body.get(key))]
    for message in _dicts(body.get("messages")):
        for block in _dicts(message.get("content")):
            found += [block, *_dicts(block.get("content"))]
    return found


def _dicts(items: Any) -> List[Dict[str, Any]]:
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _unmark(body: Dict[str, Any], whole: bool) -> None:
    """``body`` without its cache marks (``whole``) or their ttl; the client's objects are copied."""
    for key in ("system", "tools", "messages"):
        if isinstance(body.get(key), list):
            body[key] = [_unmarked(item, whole) for item in body[key]]


def _unmarked(block: Any, whole: bool) -> Any:
    if not isinstance(block, dict):
        return block
    out = {k: v for k, v in block.items() if k != "cache_control"}
    mark = block.get("cache_control")
    if not whole and isinstance(mark, dict):
        out["cache_control"] = {k: v for k, v in mark.items() if k != "ttl"}
    elif not whole and "cache_control" in block:
        out["cache_control"] = mark
    if isinstance(out.get("content"), list):  # a message's blocks, a tool result's own (the door bounds the depth)
        out["content"] = [_unmarked(b, whole) for b in out["content"]]
    return out
