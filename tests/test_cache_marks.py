"""Claude Code's prompt-cache marks on OpenRouter's Claude models through Chat Completions.

Anthropic's models cache only where a request marks it (``cache_control``); OpenRouter takes the
marks on text parts and at the top level of a Chat Completions request. Without them every turn of
a Claude Code session paid its whole prompt at the full input price. PROTOCOL.md 1.4 lets the
openrouter dialect carry them for Anthropic-served models (``Dialect.cache_marks``); every other
dialect and model drops them (PROTOCOL.md case 2 of section 6).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

import pytest

from claudeproxy.anthropic_types import parse_messages_request
from claudeproxy.apis.chat.request import to_chat_request
from claudeproxy.dialects import DIALECTS, dialect_for

HERE = os.path.dirname(os.path.abspath(__file__))
SESSION = os.path.join(HERE, "fixtures", "claude_code_session", "requests.jsonl")
CLAUDE = ("openrouter", "anthropic/claude-sonnet-4.5")
EPHEMERAL = {"type": "ephemeral"}


def sent(body: Dict[str, Any], provider: str = CLAUDE[0], model: str = CLAUDE[1]) -> Dict[str, Any]:
    req = parse_messages_request(body)
    return to_chat_request(req, model=model, dialect=dialect_for(provider, model)).request.to_dict()


def marks(out: Dict[str, Any]) -> List[Any]:
    """(message index, role, the mark) for each marked part, and ("top", mark) for the top level."""
    found: List[Any] = [("top", out["cache_control"])] if "cache_control" in out else []
    for i, message in enumerate(out["messages"]):
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            if "cache_control" in part:
                found.append((i, message["role"], part["cache_control"]))
    return found


# A request with a mark of each kind, and the body OpenRouter gets, both written by hand.
MARKED = {
    "model": "claude-sonnet-4-5", "max_tokens": 100, "cache_control": {"type": "ephemeral"},
    "system": [{"type": "text", "text": "Tools and rules."},
               {"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
    "tools": [{"name": "Read", "input_schema": {"type": "object", "properties": {}}, "cache_control": EPHEMERAL}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "the spec", "cache_control": EPHEMERAL},
                                     {"type": "text", "text": "read a"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Reading."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {},
                                           "cache_control": EPHEMERAL}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "A",
                                      "cache_control": EPHEMERAL}]},
    ],
}
MARKED_SENT = {
    "model": "anthropic/claude-sonnet-4.5", "max_tokens": 100,
    "messages": [
        {"role": "system", "content": [{"type": "text", "text": "Tools and rules.\n\nYou are a coding agent.",
                                        "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
        {"role": "user", "content": [{"type": "text", "text": "the spec", "cache_control": {"type": "ephemeral"}},
                                     {"type": "text", "text": "read a"}]},
        {"role": "assistant", "content": "Reading.",
         "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "Read", "arguments": "{}"}}]},
        {"role": "tool", "content": [{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}}],
         "tool_call_id": "toolu_1"},
    ],
    "tools": [{"type": "function", "function": {"name": "Read", "parameters": {"type": "object", "properties": {}}}}],
    "cache_control": {"type": "ephemeral"},
}


def test_each_mark_goes_on_with_the_text_it_marks() -> None:
    assert sent(MARKED) == MARKED_SENT


@pytest.mark.parametrize("provider, model", [("openrouter", "qwen/qwen3-coder"), ("openrouter", "openai/gpt-5"),
                                             ("openai", "gpt-4o"), ("generic", "anthropic/claude-sonnet-4.5")]
                         + [(name, "some-model") for name in DIALECTS if name != "openrouter"])
def test_no_other_model_or_dialect_gets_a_mark(provider: str, model: str) -> None:
    out = sent(MARKED, provider, model)
    assert "cache_control" not in json.dumps(out)
    assert out["messages"][0]["content"] == "Tools and rules.\n\nYou are a coding agent."  # one string, as before


def test_only_claude_models_on_openrouter_carry_marks() -> None:
    assert dialect_for("openrouter", "anthropic/claude-opus-4.1").cache_marks
    assert not dialect_for("openrouter", "google/gemini-2.5-pro").cache_marks
    assert not any(d.cache_marks for d in DIALECTS.values())  # a model rule, never a whole provider


def test_a_mark_on_an_earlier_system_block_alone_is_not_moved_to_the_end() -> None:
    """The joined system prompt can carry a mark only at its end: a mark on its stable head with a
    changing tail would there pay a cache write every request for a prefix no request shares."""
    body = {**MARKED, "system": [{"type": "text", "text": "Stable.", "cache_control": EPHEMERAL},
                                 {"type": "text", "text": "Today is Monday."}]}
    assert sent(body)["messages"][0] == {"role": "system", "content": [{"type": "text",
                                                                        "text": "Stable.\n\nToday is Monday."}]}


def test_marks_a_chat_message_cannot_carry_are_dropped_without_a_word() -> None:
    body = {"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
             "cache_control": EPHEMERAL},
            {"type": "tool_result", "tool_use_id": "toolu_x", "content": "", "cache_control": EPHEMERAL}]},
    ]}
    out = sent(body)
    assert marks(out) == [(0, "user", EPHEMERAL)]  # only the orphan result's text, which is text
    assert out["messages"][0]["content"][0]["type"] == "image_url"


def test_an_empty_tool_result_carries_no_mark() -> None:
    """Anthropic refuses a mark on an empty text block."""
    body = {"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "",
                                      "cache_control": EPHEMERAL}]}],
        "tools": [{"name": "Read", "input_schema": {"type": "object"}}]}
    out = sent(body)
    assert out["messages"][-1] == {"role": "tool", "content": "", "tool_call_id": "toolu_1"}
    assert marks(out) == []


def test_a_mark_inside_a_tool_results_content_marks_the_tool_message() -> None:
    body = {"model": "m", "max_tokens": 10, "tools": [{"name": "Read", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "text", "text": "line 1"},
                    {"type": "text", "text": "line 2", "cache_control": {"type": "ephemeral", "ttl": "5m"}}]}]}]}
    assert sent(body)["messages"][-1]["content"] == [
        {"type": "text", "text": "line 1\nline 2", "cache_control": {"type": "ephemeral", "ttl": "5m"}}]


@pytest.mark.parametrize("mark, expected", [
    ({"type": "ephemeral", "ttl": "2h"}, {"type": "ephemeral"}),  # an unknown ttl: the default one
    ({"type": "persistent"}, None), ("ephemeral", None), (None, None), ([], None),
])
def test_a_mark_anthropic_would_not_take_is_never_a_refusal(mark: Any, expected: Any) -> None:
    body = {"model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": mark}]}]}
    part = sent(body)["messages"][0]["content"][0]
    assert part.get("cache_control") == expected


# --------------------------------------------------------------------------
# The recorded Claude Code session (shared/claude-code-session, Claude Code 2.1.331).


def _session() -> List[Dict[str, Any]]:
    with open(SESSION, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_a_claude_code_turn_is_cached_at_its_system_prompt_and_its_newest_message() -> None:
    """Claude Code marks the end of its system prompt and the last block of its newest message. Each
    request here keeps both where that block is text or a tool result; the /compact request (seq 10)
    marks a tool call (its appended instructions are unmarked), which a Chat message cannot carry.
    Never more than Anthropic's four."""
    seen = {}
    for row in _session():
        out = sent(row["body"])
        found = marks(out)
        assert len(found) <= 4
        assert found[0] == (0, "system", EPHEMERAL), row["seq"]
        last_block = row["body"]["messages"][-1]["content"][-1]
        if "cache_control" in last_block and last_block["type"] in ("text", "tool_result"):
            assert len(found) == 2, (row["seq"], found)
            index, role, _ = found[1]
            assert role == row["body"]["messages"][-1]["role"] if last_block["type"] == "text" else role == "tool"
            assert index >= len(out["messages"]) - 2  # the newest message (or the tool message a moved image follows)
        else:
            assert len(found) == 1, (row["seq"], found)
        seen[row["seq"]] = len(found)
    assert seen[10] == 1 and sum(n == 2 for n in seen.values()) == 15


def test_a_one_hour_mark_never_follows_a_shorter_one() -> None:
    """A system turn between a tool call and its result goes after the tool message: its 1-hour mark then
    followed the result's 5-minute one, which Anthropic refuses (review AB, F15)."""
    body = {"model": "m", "max_tokens": 10, "tools": [{"name": "Read", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}]},
                {"role": "system", "content": [{"type": "text", "text": "# Environment",
                                                "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "A",
                                              "cache_control": EPHEMERAL}]}]}
    found = marks(sent(body))
    assert [(role, mark) for _, role, mark in found] == [("tool", EPHEMERAL), ("system", EPHEMERAL)], found
    in_order = {**body, "messages": body["messages"][:2] + body["messages"][3:] + [
        {"role": "system", "content": [{"type": "text", "text": "# later", "cache_control": EPHEMERAL}]}]}
    in_order["system"] = [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    assert [mark for _, _, mark in marks(sent(in_order))] == [
        {"type": "ephemeral", "ttl": "1h"}, EPHEMERAL, EPHEMERAL]  # the client's own order stands
