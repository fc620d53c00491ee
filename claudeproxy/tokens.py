"""A conservative input-token estimate for count_tokens and message_start.

No I/O. There is no tokenizer in the standard library, so this counts
characters: about four per token for English prose, fewer for code and
non-Latin scripts. Claude Code compacts on these numbers, so the estimate
leans high (FIELD-NOTES 7): 3.5 characters a token, plus fixed costs per
message, tool and image (PROTOCOL.md 4.5 gives the base heuristic).
"""

from __future__ import annotations

import binascii
import json
import math
import re
from typing import Any, Dict, Iterable, NamedTuple, Optional, Sequence, Tuple

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
DOCUMENT_TOKENS = 1600  # a document whose pages cannot be counted (a URL, a file id, a PDF that is no PDF)
# Anthropic reads a PDF page as its text and an image of it: 1,500 to 3,000 tokens a page, by its
# documentation. The estimate leans high.
PDF_PAGE_TOKENS = 2000
PDF_BYTES_PER_PAGE = 50_000  # the page count's guess when no page object can be seen (object streams)
MESSAGE_OVERHEAD = 4
TOOL_OVERHEAD = 8
# A PDF's page objects ("/Type /Page", not the tree's "/Type /Pages"): compressed object streams
# hide them, and then the size guesses.
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")


class Estimate(NamedTuple):
    """A request's estimated input tokens, and how many of them its images and documents are (a
    guess per page or image, far rougher than the characters' count)."""

    tokens: int
    media: int


def _block_cost(block: Block) -> Tuple[int, int, int]:
    """(characters, fixed tokens, media tokens) of one block."""
    if isinstance(block, TextBlock):
        return len(block.text), 0, 0
    if isinstance(block, ThinkingBlock):
        return len(block.thinking), 0, 0
    if isinstance(block, ToolUseBlock):
        return len(block.name) + len(block.input_json), TOOL_OVERHEAD, 0
    if isinstance(block, ToolResultBlock):
        return _sum_blocks(block.content)
    if isinstance(block, ImageBlock):
        return 0, 0, IMAGE_TOKENS
    if isinstance(block, DocumentBlock):
        if block.source == "text":
            return len(block.data) + len(block.title) + len(block.context), 0, 0
        if block.source == "content":
            return _sum_blocks(block.content)
        if block.source == "base64":
            return len(block.title), 0, pdf_tokens(block.data)
        return len(block.title), 0, DOCUMENT_TOKENS
    if isinstance(block, SearchResultBlock):
        return len(block.title) + len(block.source) + sum(len(t) for t in block.texts), 0, 0
    if isinstance(block, ToolReferenceBlock):
        return len(block.tool_name), 0, 0
    return 0, 0, 0


def _sum_blocks(blocks: Iterable[Block]) -> Tuple[int, int, int]:
    chars = fixed = media = 0
    for block in blocks:
        c, f, m = _block_cost(block)
        chars += c
        fixed += f
        media += m
    return chars, fixed, media


def pdf_tokens(data: str) -> int:
    """A base64 PDF's tokens: its pages, counted by their page objects (or guessed from its size),
    at ``PDF_PAGE_TOKENS`` each. A flat 1,600 made a 100-page PDF 1,605 tokens: the client's
    "does it fit" answered 100 times too low, and the calibration learned a 4x ratio from it."""
    try:
        pdf = binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        return DOCUMENT_TOKENS
    pages = sum(1 for _ in _PDF_PAGE.finditer(pdf)) or max(1, len(pdf) // PDF_BYTES_PER_PAGE)
    return pages * PDF_PAGE_TOKENS


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


def estimate_input(req: MessagesRequest, tool_chars: Optional[int] = None) -> Estimate:
    """Tokens the request's input will likely cost (never 0 for a non-empty request), and the
    images' and documents' share of them.

    ``tool_chars``: ``tools_chars(req.tools)``, if the caller has it already (``ToolMemo``).
    """
    chars = len(req.system)
    fixed = media = 0
    for message in req.messages:
        c, f, m = _sum_blocks(message.content)
        chars += c
        fixed += f + MESSAGE_OVERHEAD
        media += m
    chars += tools_chars(req.tools) if tool_chars is None else tool_chars
    fixed += TOOL_OVERHEAD * len(req.tools)
    if req.output_schema is not None:
        chars += len(json.dumps(req.output_schema, ensure_ascii=False))
    return Estimate(max(1, math.ceil(chars / CHARS_PER_TOKEN) + fixed + media), media)


def estimate_input_tokens(req: MessagesRequest, tool_chars: Optional[int] = None) -> int:
    """``estimate_input``'s tokens."""
    return estimate_input(req, tool_chars).tokens


def estimate_output_tokens(content: Sequence[Dict[str, Any]]) -> int:
    """An answer's output tokens when the upstream reported none: a quarter of its characters, as a
    stream counts what it relayed (text, thinking, tool input as JSON)."""
    chars = 0
    for block in content:
        value = block.get("text") or block.get("thinking") or block.get("input")
        chars += len(value) if isinstance(value, str) else len(json.dumps(value)) if value is not None else 0
    return math.ceil(chars / 4)
