"""Thinking-block signatures minted by the proxy, and their decoding.

No I/O. Anthropic thinking blocks need a non-empty ``signature`` that clients
echo back untouched. The proxy's signatures carry the provider state that must
return upstream on the next turn (OpenRouter ``reasoning_details``, Gemini
``thought_signature`` per tool call): ``"cpx1." + base64url(JSON)``
(PROTOCOL.md 3.7). Signatures from real Anthropic models do not decode and are
ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Dict, Optional

from .door import loads_request
from .errors import InvalidRequest

PREFIX = "cpx1."


def encode_signature(dialect: str, state: Optional[Dict[str, Any]] = None) -> str:
    payload = json.dumps({"p": dialect, "d": state}, separators=(",", ":"), ensure_ascii=True)
    return PREFIX + base64.urlsafe_b64encode(payload.encode("ascii")).decode("ascii").rstrip("=")


def decode_signature(signature: Any, api: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The provider state inside a proxy signature; None for foreign or broken ones.

    With ``api``, a signature minted under another name (another dialect or
    upstream API) is foreign too: an OpenAI Responses blob must never be sent
    as if it came from elsewhere, nor the other way round (RESPONSES.md 7.2).
    """
    # The value comes from client JSON: anything but a string is foreign too.
    if not isinstance(signature, str) or not signature.startswith(PREFIX):
        return None
    data = signature[len(PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        raw.decode("ascii")  # the proxy's own are ASCII (ensure_ascii)
        # The door's checks, as for a request body: the state goes upstream in the next request,
        # where a NaN is no JSON and a lone surrogate cannot be encoded (it was a 500 here).
        obj = loads_request(raw)
    except (ValueError, binascii.Error, InvalidRequest):
        return None
    if not isinstance(obj, dict) or (api is not None and obj.get("p") != api):
        return None
    state = obj.get("d")
    return state if isinstance(state, dict) else {}
