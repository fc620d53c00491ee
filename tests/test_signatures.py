"""Thinking-block signatures minted by the proxy (PROTOCOL.md 3.7, 1.3)."""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Dict, Optional

import pytest

from claudeproxy.signatures import PREFIX, decode_signature, encode_signature

# A real Anthropic signature has this shape (base64 of an opaque protobuf); the proxy must not claim it.
ANTHROPIC_SIGNATURE = (
    "EqQBCkYIBxgCKkBmFx8R5e2lVpWKOpQ0nM9aX2r3yU4tGz8h1k0cQ5wJ3nL7dP6sRfT2vBqYhN1mKjA0xZ9eCw8uIo5pL3s"
    "EgxhZmFrZXNpZ25hdHVyZRoMZmFrZWRhdGFmYWtlIjBmYWtlZmFrZWZha2VmYWtlZmFrZWZha2Vm"
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


@pytest.mark.parametrize(
    "dialect, state",
    [
        ("generic", None),
        ("deepseek", {}),
        ("openrouter", {"reasoning_details": [{"type": "reasoning.encrypted", "data": "gAAA==", "id": "rs_1"},
                                              {"type": "reasoning.text", "text": "h\u00e9 \u2603 \U0001f600"}]}),
        ("gemini", {"ts": {"call_1": "CiQBcsjafQ+/==", "call_2": "x" * 5000}}),
    ],
)
def test_round_trip(dialect: str, state: Optional[Dict[str, Any]]) -> None:
    signature = encode_signature(dialect, state)
    assert signature.startswith(PREFIX)
    assert decode_signature(signature) == (state or {})


def test_signature_is_never_empty_and_transport_safe() -> None:
    """Clients echo it in JSON verbatim; keep it to URL-safe base64 with no padding or quoting."""
    signature = encode_signature("openrouter", {"reasoning_details": [{"text": "\"quotes\" \n newline </script>"}]})
    assert len(signature) > len(PREFIX)
    assert re.match(r"^cpx1\.[A-Za-z0-9_-]+$", signature)


def test_signature_names_the_dialect() -> None:
    payload = encode_signature("vllm", {"a": 1})[len(PREFIX):]
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert decoded == {"p": "vllm", "d": {"a": 1}}


def test_signature_is_deterministic() -> None:
    state = {"b": 2, "a": [1, 2]}
    assert encode_signature("x", state) == encode_signature("x", dict(state))


@pytest.mark.parametrize(
    "signature",
    [
        ANTHROPIC_SIGNATURE,
        "",
        "cpx1",
        "CPX1." + _b64(b'{"p":"x","d":{}}'),
        "cpx2." + _b64(b'{"p":"x","d":{}}'),
        " cpx1." + _b64(b'{"p":"x","d":{}}'),
    ],
)
def test_foreign_signatures_decode_to_none(signature: str) -> None:
    assert decode_signature(signature) is None


@pytest.mark.parametrize(
    "signature",
    [
        PREFIX,
        PREFIX + "!!!!",
        PREFIX + "a",
        PREFIX + "%%%%====",
        PREFIX + "....",
        PREFIX + ANTHROPIC_SIGNATURE,
        PREFIX + _b64(b"\xff\xfe\xfd binary"),
        PREFIX + _b64(b"not json"),
        PREFIX + _b64(b"[1, 2, 3]"),
        PREFIX + _b64(b'"a string"'),
        PREFIX + _b64(b"null"),
        PREFIX + _b64(b"[" * 100000),
    ],
)
def test_garbage_after_prefix_decodes_to_none(signature: str) -> None:
    assert decode_signature(signature) is None


@pytest.mark.parametrize("value", [None, 12, b"cpx1.e30", ["cpx1."], {"signature": "x"}])
def test_non_string_decodes_to_none(value: Any) -> None:
    """Signatures come from client JSON; a wrong type must not raise inside the request translator."""
    assert decode_signature(value) is None


def test_state_that_is_not_an_object_reads_as_no_state() -> None:
    assert decode_signature(PREFIX + _b64(b'{"p":"x","d":[1]}')) == {}
    assert decode_signature(PREFIX + _b64(b'{"p":"x"}')) == {}
