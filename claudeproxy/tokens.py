"""A conservative input-token estimate for count_tokens and message_start.

No I/O. There is no tokenizer in the standard library, so this counts
characters: about four per token for English prose, fewer for code and
non-Latin scripts. Claude Code compacts on these numbers, so the estimate
leans high (FIELD-NOTES 7): 3.5 characters a token, plus fixed costs per
message, tool and image (PROTOCOL.md 4.5 gives the base heuristic).
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, Iterable, Optional, Sequence

from .anthropic_types import (
    Block,
    DocumentBlock,
    ImageBlock,
    MessagesRequest,
    SearchResultBlock,
    TextBlock,
    ThinkingBlock,
    Tool,
    ToolReferenceBlock,
    ToolResultBlock,
    ToolUseBlock,
)

CHARS_PER_TOKEN = 3.5
IMAGE_TOKENS = 1600
DOCUMENT_TOKENS = 1600
MESSAGE_OVERHEAD = 4
TOOL_OVERHEAD = 8
# One encoder for every tool input: json.dumps with arguments builds a new one per call.
_JSON = json.JSONEncoder(ensure_ascii=False)


def _block_chars_and_fixed(block: Block) -> "tuple[int, int]":
    if isinstance(block, TextBlock):
        return len(block.text), 0
    if isinstance(block, ThinkingBlock):
        return len(block.thinking), 0
    if isinstance(block, ToolUseBlock):
        return len(block.name) + len(_JSON.encode(block.input)), TOOL_OVERHEAD
    if isinstance(block, ToolResultBlock):
        return _sum_blocks(block.content)
    if isinstance(block, ImageBlock):
        return 0, IMAGE_TOKENS
    if isinstance(block, DocumentBlock):
        if block.source == "text":
            return len(block.data) + len(block.title) + len(block.context), 0
        if block.source == "content":
            return _sum_blocks(block.content)
        return len(block.title), DOCUMENT_TOKENS
    if isinstance(block, SearchResultBlock):
        return len(block.title) + len(block.source) + sum(len(t) for t in block.texts), 0
    if isinstance(block, ToolReferenceBlock):
        return len(block.tool_name), 0
    return 0, 0


def _sum_blocks(blocks: Iterable[Block]) -> "tuple[int, int]":
    chars = fixed = 0
    for block in blocks:
        c, f = _block_chars_and_fixed(block)
        chars += c
        fixed += f
    return chars, fixed


def tools_chars(tools: Sequence[Tool]) -> int:
    """The characters of every definition as JSON: keys and punctuation cost tokens too (PROTOCOL.md 4.5).

    One ``dumps`` of the list, not one per tool (Claude Code sends a few dozen, every turn); the
    list's brackets and ", " separators are taken off, so the count is each definition's own.
    """
    if not tools:
        return 0
    definitions = [{"name": t.name, "description": t.description or "", "input_schema": t.input_schema or {}}
                   for t in tools]
    return len(json.dumps(definitions, ensure_ascii=False)) - 2 - 2 * (len(tools) - 1)


def estimate_input_tokens(req: MessagesRequest, tool_chars: Optional[int] = None) -> int:
    """Tokens the request's input will likely cost; never 0 for a non-empty request.

    ``tool_chars``: ``tools_chars(req.tools)``, if the caller has it already (``ToolMemo``).
    """
    chars = len(req.system)
    fixed = 0
    for message in req.messages:
        c, f = _sum_blocks(message.content)
        chars += c
        fixed += f + MESSAGE_OVERHEAD
    chars += tools_chars(req.tools) if tool_chars is None else tool_chars
    fixed += TOOL_OVERHEAD * len(req.tools)
    if req.output_schema is not None:
        chars += len(json.dumps(req.output_schema, ensure_ascii=False))
    return max(1, math.ceil(chars / CHARS_PER_TOKEN) + fixed)


def estimate_output_tokens(content: Sequence[Dict[str, Any]]) -> int:
    """An answer's output tokens when the upstream reported none: a quarter of its characters, as a
    stream counts what it relayed (text, thinking, tool input as JSON)."""
    chars = 0
    for block in content:
        value = block.get("text") or block.get("thinking") or block.get("input")
        chars += len(value) if isinstance(value, str) else len(json.dumps(value)) if value is not None else 0
    return math.ceil(chars / 4)
