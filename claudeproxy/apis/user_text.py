"""The words the upstream APIs use where they have no part for what a user turn holds. Pure.

Chat Completions and Responses shape their parts differently (``text`` against
``input_text``), but a search result, a tool reference, a plain-text document, a PDF a
model cannot read, a failed tool's result, a result without its call or a call without
its result reads the same to either model: the words are written here once. The
Messages API's older form (``older_form.py``) uses them for what a server refused.
"""

from __future__ import annotations

from ..anthropic_types import DocumentBlock, SearchResultBlock, ToolReferenceBlock

TEXT_ONLY_IMAGE = "[image omitted: this model takes text only]"  # an image to a model that takes none


def search_result_text(block: SearchResultBlock) -> str:
    return "\n".join([block.title, block.source, *block.texts])


def tool_reference_text(block: ToolReferenceBlock) -> str:
    return f"[tool_reference: {block.tool_name}]"


def document_text(block: DocumentBlock) -> str:
    """A plain-text document (``source: text``) as one text: its title, context and text; "" when all are empty."""
    return "\n".join(line for line in (block.title, block.context, block.data) if line)


def pdf_omitted(title: str) -> str:
    """A PDF for a model or server that takes none: the model is told one was left out."""
    return f"[PDF document omitted: {title or 'document.pdf'}]"


def file_omitted(kind: str, file_id: str) -> str:
    """An Anthropic file id (``source: file``) means nothing to another server: the model is told one was left
    out. (A translated request with one is refused at the door: anthropic_types._refuse_file_ids.)"""
    return f"[{kind} file {file_id} omitted]"


# A call of the last assistant turn that no tool result answers: OpenAI refuses the turn without one.
MISSING_RESULT = "Error: tool call was not completed"


def error_text(text: str) -> str:
    """A failed tool's result, said to be one (neither API has an error flag on a result)."""
    if text.startswith("Error"):
        return text
    return f"Error: {text}" if text else "Error"


def orphan_result(tool_use_id: str, text: str = "") -> str:
    """A result with no call before it, as user text (a result without its call is a 400)."""
    return f"[tool_result {tool_use_id}] {text}".rstrip()
