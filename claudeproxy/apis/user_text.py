"""The words both OpenAI APIs use for a user-side block they have no part for. Pure.

Chat Completions and Responses shape their parts differently (``text`` against
``input_text``), but a search result, a tool reference, a plain-text document or a file
only Anthropic can open reads the same to either model: the words are written here once.
"""

from __future__ import annotations

from ..anthropic_types import DocumentBlock, SearchResultBlock, ToolReferenceBlock


def search_result_text(block: SearchResultBlock) -> str:
    return "\n".join([block.title, block.source, *block.texts])


def tool_reference_text(block: ToolReferenceBlock) -> str:
    return f"[tool_reference: {block.tool_name}]"


def document_text(block: DocumentBlock) -> str:
    """A plain-text document (``source: text``) as one text: its title, context and text; "" when all are empty."""
    return "\n".join(line for line in (block.title, block.context, block.data) if line)


def file_omitted(kind: str, file_id: str) -> str:
    """An Anthropic file id (``source: file``) means nothing to OpenAI: the model is told one was left out."""
    return f"[{kind} file {file_id} omitted]"
