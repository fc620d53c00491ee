"""Names and ids that both OpenAI APIs (Chat Completions, Responses) map the same way. Pure.

A tool's name as OpenAI takes it (``tool_alias``, ``tool_names``), a tool call's id as the client sees it and as
it goes back upstream (``client_tool_id``, ``upstream_tool_id``), a message's id from the
upstream's (``message_id``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Callable, Dict, Iterable, Tuple

from ..anthropic_types import MessagesRequest, ToolUseBlock
from ..redact import free_text_forms, holds_secret, masked_forms

_TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ID_CHARS_RE = re.compile(r"[^A-Za-z0-9_-]")  # what an Anthropic id may not hold


def tool_alias(name: str) -> str:
    """A name OpenAI accepts (``[a-zA-Z0-9_-]{1,64}``), stable for the same input."""
    if _TOOL_NAME_RE.match(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:55] + "_" + digest


def aliased(names: Iterable[str]) -> Dict[str, str]:
    """Upstream name -> the client's, for the names ``tool_alias`` changes (the answer's calls
    are named back with it)."""
    return {tool_alias(n): n for n in names if tool_alias(n) != n}


def tool_names(req: MessagesRequest, functions_only: bool = False) -> Dict[str, str]:
    """``aliased`` for the request's tools (its function tools alone, with ``functions_only``) and
    the calls its history holds."""
    names = {t.name for t in req.tools if t.is_function or not functions_only}
    names.update(b.name for m in req.messages for b in m.content if isinstance(b, ToolUseBlock))
    return aliased(names)


# Anthropic's tool_use ids match ^[a-zA-Z0-9_-]+$ (a session that later reaches Anthropic, or a
# strict client, refuses others); Kimi names its calls "functions.Bash:0". Such an id reaches the
# client as its URL-safe base64 behind a marker, and goes back upstream as it came: Kimi's
# models are trained on their own id form.
_CLIENT_TOOL_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_ENCODED_TOOL_ID = "toolu_b64_"


def client_tool_id(upstream_id: str) -> str:
    """The id the client sees for an upstream tool-call id (``upstream_tool_id`` reverses it)."""
    if not upstream_id or _CLIENT_TOOL_ID_RE.match(upstream_id):
        return upstream_id
    encoded = base64.urlsafe_b64encode(upstream_id.encode("utf-8", "surrogatepass")).decode("ascii")
    return _ENCODED_TOOL_ID + encoded.rstrip("=")


def own_tool_id(upstream_id: str, secrets: Tuple[str, ...]) -> str:
    """The upstream's id for a tool call, or "" (a fresh one is made) when it holds one of the call's
    secrets: an upstream that echoes its key in an id it chose would hand the key to the client
    (passthrough masks such ids as well). Checked once a call."""
    return "" if upstream_id and secrets and holds_secret(upstream_id, secrets) else upstream_id


def without_secrets(text: str, secrets: Tuple[str, ...]) -> str:
    """An upstream's field that is neither the model's words nor an id (a citation's URL or title)
    with the call's secrets masked."""
    return masked_forms(text, free_text_forms(secrets)) if secrets else text


def upstream_tool_id(client_id: str) -> str:
    """The upstream's own id for a tool_use id the client sends back; other ids are unchanged."""
    if not client_id.startswith(_ENCODED_TOOL_ID):
        return client_id
    data = client_id[len(_ENCODED_TOOL_ID):]
    try:
        decoded = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)).decode("utf-8", "surrogatepass")
    except ValueError:  # not base64, not UTF-8: an id of the client's own that looks like ours
        return client_id
    # Only what client_tool_id makes is decoded (a suffixed duplicate "...-2" stays as it is).
    return decoded if client_tool_id(decoded) == client_id else client_id


def id_chars(upstream_id: str) -> str:
    """``upstream_id`` without what an Anthropic id may not hold (may be empty)."""
    return _ID_CHARS_RE.sub("", upstream_id)


def message_id(upstream_id: str, new_id: Callable[[], str]) -> str:
    """``msg_`` and the upstream's id as an Anthropic id may hold it, or a fresh one."""
    return "msg_" + (id_chars(upstream_id) or new_id())
