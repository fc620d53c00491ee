"""What keeps an upstream prompt cache warm from one turn to the next.

Pure: no I/O, no clock, no environment. Two helpers:

- ``session_cache_key(headers, user_id)``: a routing key for providers that
  take one (OpenAI ``prompt_cache_key``, OpenRouter ``session_id``), derived
  from the client's session and never from the content, hashed so no raw id
  leaves the proxy.
- ``strip_billing_header(text)``: removes Claude Code's
  ``x-anthropic-billing-header:`` line. It is the very first system text and
  its suffix changes between sessions and at compaction, so forwarded to a
  prefix cache it would invalidate every cached token after it (the whole
  system prompt, and the tools where they are rendered after it).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Mapping, Optional

SESSION_HEADER = "x-claude-code-session-id"
BILLING_PREFIX = "x-anthropic-billing-header:"
# The line, its newline, and one blank line after it (the "\n\n" that joined it to the next block).
_BILLING_LINE_RE = re.compile(r"^x-anthropic-billing-header:[^\n]*(?:\n\n?|$)", re.IGNORECASE | re.MULTILINE)
# Claude Code before metadata.user_id became JSON: user_<hash>_account_<uuid>_session_<uuid>.
_LEGACY_SESSION_RE = re.compile(r"_session_([0-9A-Za-z-]{8,})$")
_KEY_PREFIX = "cp-"  # 3 + 40 hex = 43 chars; OpenAI and Responses cap the key at 64
_HASH_SALT = b"claudeproxy prompt cache key v1\x00"


def strip_billing_header(text: str) -> str:
    """``text`` without any line that starts with ``x-anthropic-billing-header:``.

    Only that line goes, also when it shares a block with other text; a text
    that merely mentions the header in a sentence is left alone.
    """
    if BILLING_PREFIX not in text.lower():
        return text
    stripped = _BILLING_LINE_RE.sub("", text)
    return stripped.strip("\n") if stripped != text else text


def _header(headers: Mapping[str, str], name: str) -> Optional[str]:
    """A header value by case-insensitive name, from any mapping (dict, HTTPMessage...)."""
    for key, value in headers.items():
        if key.lower() == name and isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _session_from_user_id(user_id: Optional[str]) -> Optional[str]:
    """The session id inside Claude Code's ``metadata.user_id`` (a JSON string, or the legacy form)."""
    if not user_id:
        return None
    try:
        parsed: Any = json.loads(user_id)
    except (ValueError, RecursionError):  # the client's string: not JSON, or nested past the stack
        match = _LEGACY_SESSION_RE.search(user_id)
        return match.group(1) if match else None
    session = parsed.get("session_id") if isinstance(parsed, dict) else None
    return session.strip() if isinstance(session, str) and session.strip() else None


def end_user(user_id: Optional[str]) -> Optional[str]:
    """Claude Code's ``metadata.user_id`` without its session, so one user is one end user in every
    session (what OpenAI's ``user`` and ``safety_identifier`` tell apart; the whole id changed every
    session): its JSON's other fields that say something, sorted, or the legacy form before
    ``_session_``. Any other user id as it is."""
    if not user_id:
        return None
    try:
        parsed: Any = json.loads(user_id)
    except (ValueError, RecursionError):
        match = _LEGACY_SESSION_RE.search(user_id)
        return user_id[:match.start()] if match and match.start() else user_id
    if not isinstance(parsed, dict) or "session_id" not in parsed:
        return user_id
    rest = {k: v for k, v in parsed.items() if k != "session_id" and v not in ("", None)}
    return json.dumps(rest, sort_keys=True, separators=(",", ":")) if rest else user_id


def session_cache_key(headers: Mapping[str, str], user_id: Optional[str]) -> Optional[str]:
    """A stable prompt-cache key for the client's session, or None when no session is known.

    Claude Code names its session in the ``X-Claude-Code-Session-Id`` header and
    again in ``metadata.user_id``; the header wins. A plain user id is not a
    session and gives None. The key is a salted SHA-256 of the session id: the
    same session always maps to the same key, and the id itself never leaves.
    """
    session = _header(headers, SESSION_HEADER) or _session_from_user_id(user_id)
    if session is None:
        return None
    digest = hashlib.sha256(_HASH_SALT + session.encode("utf-8")).hexdigest()
    return _KEY_PREFIX + digest[:40]
