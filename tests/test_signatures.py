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


@pytest.mark.parametrize("payload", [
    '{"p":"openrouter","d":{"reasoning_details":NaN}}',
    '{"p":"gemini","d":{"ts":{"toolu_1":Infinity}}}',
    '{"p":"gemini","d":{"ts":{"toolu_1":"\\udc00"}}}',
    '{"p":"openrouter","d":{"reasoning_details":[{"text":"\\ud800"}]}}',
    '{"p":"openrouter","d":{"x":' + "[" * 900 + "]" * 900 + "}}",
])
def test_a_crafted_signature_the_door_would_refuse_as_a_body_is_foreign(payload: str) -> None:
    """The client sends signatures back, so their state is client input: what goes upstream in the
    next request must pass the door's checks (a lone surrogate made a 500, NaN reached the upstream
    as invalid JSON, 900 levels passed the door's 128: probe A). A signature that fails them is
    ignored, as a broken one is."""
    assert decode_signature(PREFIX + _b64(payload.encode("ascii"))) is None


@pytest.mark.parametrize("state", [{"ts": "abc"}, {"ts": [1, 2]}, {"ts": {"toolu_1": 5}},
                                   {"reasoning_details": "x"}, {"reasoning_details": [1]}])
@pytest.mark.parametrize("dialect", ["gemini", "openrouter"])
def test_a_crafted_state_of_the_wrong_shape_is_left_out_not_a_crash(state: Dict[str, Any], dialect: str) -> None:
    from claudeproxy.anthropic_types import parse_messages_request
    from claudeproxy.apis.chat.request import to_chat_request
    from claudeproxy.dialects import DIALECTS
    req = parse_messages_request({"model": "m", "max_tokens": 100, "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                                  "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [
                                      {"type": "thinking", "thinking": "t", "signature": encode_signature(dialect, state)},
                                      {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
                                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}]})
    body = to_chat_request(req, model="m", dialect=DIALECTS[dialect]).request.to_dict()
    [assistant] = [m for m in body["messages"] if m["role"] == "assistant"]
    json.dumps(body, allow_nan=False).encode("utf-8")
    assert "reasoning_details" not in assistant
    assert all("thought_signature" not in json.dumps(call) for call in assistant["tool_calls"])
