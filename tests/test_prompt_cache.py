"""The prompt-cache helpers: the session key and the billing-line filter (claudeproxy/prompt_cache.py).

The session's key must stay the same for every request of one Claude Code
session (so the provider routes them to the machine holding the cache), differ
between sessions, never carry the raw id, and never depend on what is asked.
"""

from __future__ import annotations

import json
import os
import re
from email.message import Message
from typing import Any, Dict, List

import pytest

from claudeproxy.anthropic_types import parse_messages_request
from claudeproxy.apis.chat.request import to_chat_request
from claudeproxy.dialects import DIALECTS, dialect_for
from claudeproxy.prompt_cache import session_cache_key, strip_billing_header

HERE = os.path.dirname(os.path.abspath(__file__))
SESSION = os.path.join(HERE, "fixtures", "claude_code_session", "requests.jsonl")
SID = "120396ce-f3aa-4717-a492-86950cc0c4c2"


def user_id(session_id: str = SID, device: str = "ec89" * 16) -> str:
    return json.dumps({"device_id": device, "account_uuid": "", "session_id": session_id}, separators=(",", ":"))


def recorded() -> List[Dict[str, Any]]:
    with open(SESSION, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# --------------------------------------------------------------------------
# session_cache_key


def test_one_key_for_the_whole_recorded_session() -> None:
    keys = {session_cache_key(r["headers"], parse_messages_request(r["body"]).user_id) for r in recorded()}
    assert len(keys) == 1
    key = keys.pop()
    assert key is not None and len(key) <= 64 and re.match(r"^[A-Za-z0-9_-]+$", key)


def test_key_hides_the_session_and_device_ids() -> None:
    key = session_cache_key({"X-Claude-Code-Session-Id": SID}, user_id())
    assert key is not None
    for raw in (SID, SID.replace("-", ""), SID[:8], "ec89ec89"):
        assert raw not in key


def test_header_and_user_id_give_the_same_key() -> None:
    from_header = session_cache_key({"X-Claude-Code-Session-Id": SID}, None)
    from_user_id = session_cache_key({}, user_id())
    assert from_header == from_user_id is not None


def test_header_name_is_case_insensitive_and_any_mapping_works() -> None:
    message = Message()
    message["x-claude-code-session-id"] = SID
    assert session_cache_key(message, None) == session_cache_key({"X-CLAUDE-CODE-SESSION-ID": SID}, None)


def test_header_wins_over_user_id() -> None:
    assert session_cache_key({"X-Claude-Code-Session-Id": SID}, user_id("other")) == session_cache_key({}, user_id())


def test_sessions_get_different_keys() -> None:
    assert session_cache_key({}, user_id("a" * 36)) != session_cache_key({}, user_id("b" * 36))


def test_key_does_not_depend_on_the_device_or_the_request() -> None:
    """Content never enters the key: only the session id is read."""
    assert session_cache_key({}, user_id(device="0" * 64)) == session_cache_key({}, user_id(device="f" * 64))


def test_legacy_user_id_form() -> None:
    legacy = f"user_{'ab' * 32}_account__session_{SID}"
    assert session_cache_key({}, legacy) == session_cache_key({}, user_id())


@pytest.mark.parametrize("headers,uid", [
    ({}, None),
    ({}, ""),
    ({}, "alice"),  # a user id, not a session
    ({}, json.dumps({"device_id": "d", "account_uuid": ""})),
    ({}, json.dumps({"session_id": ""})),
    ({}, json.dumps({"session_id": 42})),
    ({}, json.dumps(["session_id", SID])),
    ({"X-Claude-Code-Session-Id": "   "}, None),
    ({"Authorization": "Bearer x"}, "not json {"),
    ({}, "[" * 100000 + "]" * 100000),  # nested past the recursion limit: no traceback
])
def test_no_session_no_key(headers: Dict[str, str], uid: Any) -> None:
    assert session_cache_key(headers, uid) is None


# --------------------------------------------------------------------------
# The key on the wire.


def _request(provider: str, model: str, key: Any) -> Dict[str, Any]:
    req = parse_messages_request({"model": "claude-test", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    return to_chat_request(req, model=model, dialect=dialect_for(provider, model), cache_key=key).request.to_dict()


@pytest.mark.parametrize("provider,model,field", [
    ("openai", "gpt-4o", "prompt_cache_key"),
    ("openai", "o3", "prompt_cache_key"),
    ("openai", "o1-mini", "prompt_cache_key"),
    ("azure", "gpt-4.1", "prompt_cache_key"),
    ("azure", "o4-mini", "prompt_cache_key"),
    ("mistral", "mistral-large-latest", "prompt_cache_key"),
    ("openrouter", "openai/gpt-4o", "session_id"),
    ("openrouter", "openai/o3", "session_id"),
])
def test_key_goes_where_the_provider_documents_it(provider: str, model: str, field: str) -> None:
    body = _request(provider, model, "cp-abc")
    assert body[field] == "cp-abc"
    assert ({"prompt_cache_key", "session_id"} - {field}) & set(body) == set()


@pytest.mark.parametrize("provider,model", [
    ("generic", "m"), ("deepseek", "deepseek-chat"), ("groq", "llama-3.3-70b-versatile"), ("gemini", "gemini-2.5-pro"),
    ("ollama", "qwen3"), ("vllm", "qwen3"), ("lmstudio", "qwen3"), ("llamacpp", "qwen3"),
    ("azure", "DeepSeek-V3.1"), ("azure", "Kimi-K2.5"), ("azure", "my-deployment"),
])
def test_key_is_not_sent_where_no_field_is_documented(provider: str, model: str) -> None:
    body = _request(provider, model, "cp-abc")
    assert "cp-abc" not in json.dumps(body)


def test_no_key_no_field() -> None:
    for provider in DIALECTS:
        body = _request(provider, "gpt-4o", None)
        assert "prompt_cache_key" not in body and "session_id" not in body


# --------------------------------------------------------------------------
# strip_billing_header


@pytest.mark.parametrize("text,expected", [
    ("x-anthropic-billing-header: cc_version=2.1.331.f2b; cc_entrypoint=cli;", ""),
    ("x-anthropic-billing-header: cc_version=2.1.331.f2b; cc_entrypoint=cli;\n\nYou are Claude Code.", "You are Claude Code."),
    ("x-anthropic-billing-header: a;\nYou are Claude Code.", "You are Claude Code."),
    ("Intro.\n\nx-anthropic-billing-header: a;\n\nRest.", "Intro.\n\nRest."),
    ("Intro.\n\nx-anthropic-billing-header: a;", "Intro."),
    ("X-Anthropic-Billing-Header: a;\nRest.", "Rest."),
    ("No header here.", "No header here."),
    ("Mentions x-anthropic-billing-header: inline.", "Mentions x-anthropic-billing-header: inline."),
    ("  x-anthropic-billing-header: indented, not a header line", "  x-anthropic-billing-header: indented, not a header line"),
    ("\nLeading newline kept when nothing is removed.", "\nLeading newline kept when nothing is removed."),
    ("", ""),
])
def test_strip_billing_header(text: str, expected: str) -> None:
    assert strip_billing_header(text) == expected
