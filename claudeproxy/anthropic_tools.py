"""Anthropic-defined tools the client runs itself: what a translating API offers in their place. No I/O.

Anthropic defines a few tools whose caller executes them (the text editor, bash and memory
tools): the request names only the type and the name Anthropic fixes for it
(``{"type": "bash_20250124", "name": "bash"}``), their input schema is "built into the model",
Claude answers with ``tool_use`` blocks, and the client runs them as it runs its own tools
(platform.claude.com, agents-and-tools/tool-use: text-editor-tool, bash-tool, memory-tool). An
OpenAI-compatible model has no such schema built in, so Chat Completions and the Responses API
get each of these as an ordinary function: the fixed name, the documented input as its JSON
schema, a short description. The call comes back under that name and the client runs it, exactly
as it would Claude's.

Computer use (``computer_*``) is left out: its input only makes sense to a model trained to act
on screenshots of a display of the size the tool declares, and a plain function gives the
upstream neither. It is dropped like the server tools (``web_search``, ``code_execution``...),
with a warning of its own.
"""

from __future__ import annotations

import dataclasses
import re
import types
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

Schema = Dict[str, Any]


class NamedTool(Protocol):
    """What the warnings read of an ``anthropic_types.Tool`` (which imports this module)."""

    name: str
    kind: str


@dataclasses.dataclass(frozen=True)
class ClientTool:
    """One Anthropic-defined client tool version, as an upstream function."""

    name: str  # the only name Anthropic accepts for the type
    description: str
    schema: Callable[[], Schema]  # a new dict per call: every parsed Tool owns its schema


# --------------------------------------------------------------------------
# The documented inputs. Fields every command shares are required; a command's own fields are
# optional here, and the description says which command takes which.


def _string(description: str) -> Schema:
    return {"type": "string", "description": description}


def _insert_line() -> Schema:
    return {"type": "integer", "description": "insert: the line after which to insert (0: the start of the file)."}


def _view_range() -> Schema:
    return {
        "type": "array",
        "items": {"type": "integer"},
        "description": "view of a file only: [start_line, end_line], 1-indexed; end_line -1 reads to the end.",
    }


def _editor(commands: Tuple[str, ...], insert_text: str) -> Schema:
    """The text editor's input; ``insert_text``: the field carrying the text of ``insert``
    (``new_str`` up to text_editor_20250124, ``insert_text`` from 20250429, which is what Claude sends)."""
    properties: Schema = {
        "command": {"type": "string", "enum": list(commands)},
        "path": _string("The file or directory."),
        "view_range": _view_range(),
        "file_text": _string("create: the content of the new file."),
        "old_str": _string("str_replace: the exact text to replace; it must occur exactly once in the file."),
        "new_str": _string("str_replace: the replacement text."
                           + (" insert: the text to insert." if insert_text == "new_str" else "")),
        "insert_line": _insert_line(),
    }
    if insert_text != "new_str":
        properties[insert_text] = _string("insert: the text to insert.")
    return {"type": "object", "properties": properties, "required": ["command", "path"]}


def _editor_with_undo() -> Schema:
    return _editor(("view", "create", "str_replace", "insert", "undo_edit"), "new_str")


def _editor_claude4() -> Schema:
    return _editor(("view", "create", "str_replace", "insert"), "insert_text")


def _bash() -> Schema:
    return {
        "type": "object",
        "properties": {
            "command": _string("The bash command to run. Required unless the session is being restarted."),
            "restart": {"type": "boolean", "description": "true restarts the bash session."},
        },
    }


def _memory() -> Schema:
    return {
        "type": "object",
        "properties": {
            "command": {"type": "string", "enum": ["view", "create", "str_replace", "insert", "delete", "rename"]},
            "path": _string("The file or directory, under /memories (every command but rename)."),
            "view_range": _view_range(),
            "file_text": _string("create: the content of the file."),
            "old_str": _string("str_replace: the exact text to replace; it must occur exactly once in the file."),
            "new_str": _string("str_replace: the replacement text."),
            "insert_line": _insert_line(),
            "insert_text": _string("insert: the text to insert."),
            "old_path": _string("rename: the current path."),
            "new_path": _string("rename: the new path."),
        },
        "required": ["command"],
    }


def _editor_text(insert_text: str, undo: bool) -> str:
    return (
        "View, create and edit text files. view shows a file with line numbers (only view_range if given) or "
        "lists a directory; create writes file_text to a new file; str_replace replaces old_str, which must occur "
        f"exactly once, by new_str; insert adds {insert_text} after line insert_line."
        + (" undo_edit reverts the last edit of the file." if undo else "")
    )


_BASH_TEXT = (
    "Run a command in a persistent bash session: the working directory, environment and files stay between "
    "calls. Use restart: true to start a fresh session."
)
_MEMORY_TEXT = (
    "Your memory, kept across conversations as files under /memories. View it before starting a task, and "
    "record progress and what you learn there. Commands: view, create, str_replace, insert, delete, rename."
)

_EDITOR = ClientTool("str_replace_editor", _editor_text("new_str", undo=True), _editor_with_undo)
_EDITOR_CLAUDE4 = ClientTool("str_replace_based_edit_tool", _editor_text("insert_text", undo=False), _editor_claude4)
_BASH = ClientTool("bash", _BASH_TEXT, _bash)

# Each version Anthropic documents. text_editor_20250728 also takes a max_characters option: it only
# limits what the client shows of a viewed file, so the upstream model needs nothing of it.
CLIENT_TOOLS: Mapping[str, ClientTool] = types.MappingProxyType({
    "text_editor_20241022": _EDITOR,
    "text_editor_20250124": _EDITOR,
    "text_editor_20250429": _EDITOR_CLAUDE4,
    "text_editor_20250728": _EDITOR_CLAUDE4,
    "bash_20241022": _BASH,
    "bash_20250124": _BASH,
    "memory_20250818": ClientTool("memory", _MEMORY_TEXT, _memory),
})
_VERSIONED = re.compile(r"^(text_editor|bash|memory)_\d{8}$")


def client_tool(kind: str) -> Optional[ClientTool]:
    """The definition for a tool ``type``, or None for any other type (server tools, computer use).

    A version newer than this table (``bash_20270101``) gets its family's newest definition: a
    close guess serves the client better than a tool silently dropped.
    """
    known = CLIENT_TOOLS.get(kind)
    versioned = _VERSIONED.match(kind)
    if known is not None or versioned is None:
        return known
    family = versioned.group(1)
    return CLIENT_TOOLS[max(k for k in CLIENT_TOOLS if k.rsplit("_", 1)[0] == family)]


def fixed_name(kind: str) -> Optional[str]:
    """The name Anthropic requires for ``kind`` (it answers 400 to any other); None when not known."""
    known = CLIENT_TOOLS.get(kind)
    return known.name if known is not None else None


def dropped_tool_warnings(dropped: Sequence[NamedTool]) -> Tuple[str, ...]:
    """The warnings for the Anthropic-defined tools a translation leaves out, grouped by why."""
    computer = [t for t in dropped if t.kind.startswith("computer_")]
    server = [t for t in dropped if not t.kind.startswith("computer_")]
    out: List[str] = []
    if server:
        out.append(f"dropped tools the upstream cannot run (Anthropic server tools): {_names(server)}")
    if computer:
        why = "not translated: they act on screenshots of a display"
        out.append(f"dropped computer use tools ({why}): {_names(computer)}")
    return tuple(out)


def _names(tools: Sequence[NamedTool]) -> str:
    return ", ".join(f"{t.name} ({t.kind})" for t in tools)
