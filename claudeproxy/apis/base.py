"""What every upstream API module works with. Pure.

``ClientRequest`` is one client request as the pipeline read it; ``Exchange``
is that request prepared for one target (URL, body, headers) plus what the API
needs to read the answer. Each API (``apis/chat``, ``apis/messages``,
``apis/responses``) has an object with the same four methods:

- ``parse(body)``: the parsed request the API needs (None when it forwards);
- ``prepare(req, target, cap)``: the ``Exchange`` to send, ``max_tokens`` within ``cap``;
- ``from_json(req, exchange, obj)``: the client's JSON reply and warnings to log;
- ``fold(req, exchange, message_id=, input_tokens=, secrets=)``: the ``StreamFold``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

from ..anthropic_types import MessagesRequest


@dataclasses.dataclass(frozen=True)
class ClientRequest:
    """One ``/v1/messages`` request from a client."""

    body: Dict[str, Any]  # the JSON object as sent; emptied once parsed if no target forwards it
    model: str  # the client's model name: what every reply names
    stream: bool
    headers: Any  # the client's headers (``get``/``get_all``), read-only
    query: str = ""  # the client's query string (Claude Code sends ``beta=true``)
    parsed: Optional[MessagesRequest] = None  # set for the APIs that translate
    cache_key: Optional[str] = None  # a prompt-cache key derived from the session, if any


@dataclasses.dataclass(frozen=True)
class Exchange:
    """One request prepared for one target."""

    url: str
    body: bytes
    headers: Tuple[Tuple[str, str], ...]  # the API's own headers (not the credential)
    stream: bool  # the upstream call streams
    max_tokens: Optional[int]  # as sent (the max_tokens retry reads it)
    warnings: Tuple[str, ...] = ()
    context: Any = None  # what the API needs to read the answer (tool names, ...), nothing bigger
