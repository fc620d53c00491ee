"""The tolerant ChatCompletion / chunk parsers (PROTOCOL.md 2, 3.4 steps 2-8; FIELD-NOTES 4, 8, 18, 19).

OpenAI-compatible servers disagree on which fields exist and what type they have.
A missing, extra or wrongly typed field must read as absent, never raise.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict

import pytest

from claudeproxy.apis.chat.wire import (
    ChatChoice,
    ChatResponse,
    ChatUsage,
    ToolCallDelta,
    parse_chat_chunk,
    parse_chat_response,
    parse_usage,
    reports_usage,
)


def _message(**msg: Any) -> Dict[str, Any]:
    return {"id": "x", "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}]}


def _choice(**msg: Any) -> ChatChoice:
    choice = parse_chat_response(_message(**msg)).choice
    assert choice is not None
    return choice


# --------------------------------------------------------------------------
# Whole bodies


@pytest.mark.parametrize("raw", [None, [], "text", 42, [{"choices": []}]])
def test_response_that_is_not_an_object_is_an_error(raw: Any) -> None:
    chat = parse_chat_response(raw)
    assert chat.error is not None and chat.choice is None


def test_empty_object_reads_as_nothing() -> None:
    assert parse_chat_response({}) == ChatResponse()


@pytest.mark.parametrize("choices", [[], None, "x", {}, [None], ["text"], [42]])
def test_unusable_choices_read_as_no_choice(choices: Any) -> None:
    chat = parse_chat_response({"id": "a", "choices": choices})
    assert chat.choice is None and chat.error is None


def test_extra_fields_are_ignored() -> None:
    raw = _message(content="hi", audio=None, annotations=[{"type": "url_citation"}], function_call=None)
    raw.update(system_fingerprint="fp", service_tier="default", obfuscation="zzz", provider="X")
    raw["choices"][0].update(logprobs=None, native_finish_reason="STOP")
    chat = parse_chat_response(raw)
    assert chat.choice == ChatChoice(content="hi", finish_reason="stop")


@pytest.mark.parametrize("value", [123, None, ["a"], {"a": 1}, True])
def test_wrongly_typed_id_reads_as_empty(value: Any) -> None:
    assert parse_chat_response({"id": value, "choices": []}).id == ""


def test_choice_wrong_types_read_as_absent() -> None:
    raw = {"choices": [{"index": 0, "finish_reason": 3, "stop_reason": 7,
                        "message": {"content": 5, "reasoning_content": 7, "reasoning": ["r"], "refusal": [],
                                    "tool_calls": "abc", "function_call": "f", "reasoning_details": "d"}}]}
    assert parse_chat_response(raw).choice == ChatChoice()


def test_message_missing_or_null() -> None:
    for choice in ({"index": 0, "finish_reason": "stop"}, {"index": 0, "message": None, "finish_reason": "stop"}):
        chat = parse_chat_response({"choices": [choice]})
        assert chat.choice == ChatChoice(finish_reason="stop")


def test_gemini_single_choice_with_index_1_is_used() -> None:
    chat = parse_chat_response({"choices": [{"index": 1, "message": {"content": "g"}, "finish_reason": "stop"}]})
    assert chat.choice is not None and chat.choice.content == "g"


def test_several_choices_use_index_0() -> None:
    raw = {"choices": [{"index": 1, "message": {"content": "second"}}, {"index": 0, "message": {"content": "first"}}]}
    choice = parse_chat_response(raw).choice
    assert choice is not None and choice.content == "first"


# --------------------------------------------------------------------------
# Content and refusal


def test_content_list_of_parts_concatenates_text() -> None:
    parts = [{"type": "text", "text": "a"}, {"text": "b"}, {"type": "image_url", "image_url": {"url": "u"}},
             "loose string", None, {"type": "text", "text": 5}, {"type": "text", "text": "c"}]
    assert _choice(content=parts).content == "abc"


def test_refusal_is_read() -> None:
    choice = _choice(content=None, refusal="I can't help with that.")
    assert (choice.content, choice.refusal) == ("", "I can't help with that.")


# --------------------------------------------------------------------------
# Reasoning (FIELD-NOTES 4)


def test_reasoning_content_first() -> None:
    assert _choice(reasoning_content="deepseek", reasoning="other").reasoning == "deepseek"


def test_reasoning_when_reasoning_content_empty_or_null() -> None:
    assert _choice(reasoning_content="", reasoning="vllm").reasoning == "vllm"
    assert _choice(reasoning_content=None, reasoning="vllm").reasoning == "vllm"


def test_reasoning_details_text_and_summary() -> None:
    details = [
        {"type": "reasoning.summary", "summary": "S1 "},
        {"type": "reasoning.encrypted", "data": "SECRET-BLOB"},
        {"type": "reasoning.text", "text": "T2", "signature": "sig"},
        {"type": "reasoning.text", "text": 7},
        "not an object",
    ]
    choice = _choice(content="x", reasoning_details=details)
    assert choice.reasoning == "S1 T2"
    assert "SECRET-BLOB" not in choice.reasoning
    assert choice.reasoning_details == details  # carried whole, encrypted items included


def test_reasoning_details_do_not_override_reasoning_text() -> None:
    choice = _choice(reasoning="plain", reasoning_details=[{"type": "reasoning.text", "text": "detailed"}])
    assert choice.reasoning == "plain"
    assert choice.reasoning_details == [{"type": "reasoning.text", "text": "detailed"}]


@pytest.mark.parametrize("details", [[], None, "text", {"type": "reasoning.text"}])
def test_reasoning_details_absent_when_empty_or_wrong(details: Any) -> None:
    choice = _choice(content="x", reasoning_details=details)
    assert choice.reasoning_details is None and choice.reasoning == ""


# --------------------------------------------------------------------------
# Tool calls


def test_tool_call_fields() -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'},
            "extra_content": {"google": {"thought_signature": "TS"}}}
    assert _choice(tool_calls=[call]).tool_calls == (
        ToolCallDelta(index=0, id="call_1", name="f", arguments='{"a":1}', thought_signature="TS"),
    )


@pytest.mark.parametrize("arguments", [{"a": 1, "b": {"c": "\u00e9"}}, [1, 2], 5, True])
def test_arguments_already_decoded_are_reencoded(arguments: Any) -> None:
    (call,) = _choice(tool_calls=[{"id": "c", "function": {"name": "f", "arguments": arguments}}]).tool_calls
    assert isinstance(call.arguments, str)
    assert json.loads(call.arguments) == arguments


def test_arguments_missing_or_null_are_none() -> None:
    calls = _choice(tool_calls=[{"id": "a", "function": {"name": "f"}},
                                {"id": "b", "function": {"name": "f", "arguments": None}}]).tool_calls
    assert [c.arguments for c in calls] == [None, None]


def test_tool_call_entries_of_the_wrong_shape_are_skipped() -> None:
    calls = [1, "x", None, [], {"type": "custom", "custom": {"name": "g"}},
             {"id": "ok", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert [c.id for c in _choice(tool_calls=calls).tool_calls] == ["ok"]


@pytest.mark.parametrize("index, expected", [(2, 2), (0, 0), (True, None), ("0", None), (1.0, None), (None, None)])
def test_tool_call_index_must_be_an_int(index: Any, expected: Any) -> None:
    (call,) = _choice(tool_calls=[{"index": index, "id": "c", "function": {"name": "f"}}]).tool_calls
    assert call.index == expected


def test_tool_call_wrong_typed_parts_read_as_absent() -> None:
    (call,) = _choice(tool_calls=[{"id": 5, "function": "f", "extra_content": {"google": "x"}}]).tool_calls
    assert call == ToolCallDelta()


def test_empty_tool_calls_list_is_absent() -> None:
    """FIELD-NOTES 18: vLLM sends content next to ``tool_calls: []``."""
    choice = _choice(content="text", tool_calls=[])
    assert choice.tool_calls == () and choice.content == "text"


def test_legacy_function_call_is_one_more_call() -> None:
    choice = _choice(function_call={"name": "legacy", "arguments": '{"x": 1}'})
    assert choice.tool_calls == (ToolCallDelta(name="legacy", arguments='{"x": 1}'),)


# --------------------------------------------------------------------------
# Stop strings reported by the server (2.4 rule 5a)


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"stop_reason": "END"}, "END"),
        ({"matched_stop": "###"}, "###"),
        ({"matched_stop": None, "stop_reason": "END"}, "END"),
        ({"matched_stop": 128001, "stop_reason": None}, None),
        ({"stop_reason": 2}, None),
        ({}, None),
    ],
)
def test_matched_stop(fields: Dict[str, Any], expected: Any) -> None:
    raw = {"choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": "stop", **fields}]}
    choice = parse_chat_response(raw).choice
    assert choice is not None and choice.matched_stop == expected


# --------------------------------------------------------------------------
# Usage (2.5; FIELD-NOTES 8)


def test_usage_full() -> None:
    usage = parse_usage({
        "prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
        "prompt_tokens_details": {"cached_tokens": 50, "cache_write_tokens": 30, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 25, "rejected_prediction_tokens": 0},
    })
    assert usage == ChatUsage(prompt_tokens=100, completion_tokens=40, cached_tokens=50, cache_write_tokens=30,
                              reasoning_tokens=25)


def test_usage_deepseek_cache_hit() -> None:
    usage = parse_usage({"prompt_tokens": 50, "completion_tokens": 5, "prompt_cache_hit_tokens": 30,
                         "prompt_cache_miss_tokens": 20})
    assert usage == ChatUsage(prompt_tokens=50, completion_tokens=5, cached_tokens=30)


def test_usage_moonshot_top_level_cached_tokens() -> None:
    # moonshot-v1's context caching reports the cache hit at the top of usage; billed at the cached rate.
    usage = parse_usage({"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200, "cached_tokens": 800})
    assert usage == ChatUsage(prompt_tokens=1000, completion_tokens=200, cached_tokens=800)


@pytest.mark.parametrize("raw", [None, {}, {"total_tokens": 5}, "usage", [1], {"input_tokens": 3, "output_tokens": 1}])
def test_usage_absent(raw: Any) -> None:
    assert parse_usage(raw) is None


@pytest.mark.parametrize("value", ["10", -3, True, None, [1], 2.5])
def test_usage_wrong_numbers_read_as_zero(value: Any) -> None:
    usage = parse_usage({"prompt_tokens": 7, "completion_tokens": value,
                         "prompt_tokens_details": {"cached_tokens": value}})
    assert usage == ChatUsage(prompt_tokens=7, completion_tokens=0, cached_tokens=0)


@pytest.mark.parametrize("value", ["10", -3, True, None, [1], 2.5])
def test_usage_without_a_prompt_count_is_not_known(value: Any) -> None:
    """{"completion_tokens": 4} said the prompt was 0 tokens, and the client sized its context by
    that (a probe): without the prompt's count the usage is not known, as with none at all."""
    assert parse_usage({"prompt_tokens": value, "completion_tokens": 4}) is None


def test_usage_null_details() -> None:
    usage = parse_usage({"prompt_tokens": 9, "completion_tokens": 1, "prompt_tokens_details": None,
                         "completion_tokens_details": None})
    assert usage == ChatUsage(prompt_tokens=9, completion_tokens=1)


@pytest.mark.parametrize("value", [None, "12", True])
def test_reasoning_tokens_of_the_wrong_type_are_absent(value: Any) -> None:
    usage = parse_usage({"prompt_tokens": 1, "completion_tokens": 2, "completion_tokens_details": {"reasoning_tokens": value}})
    assert usage is not None and usage.reasoning_tokens is None


def test_counts_that_are_no_counts_read_as_zero_or_absent() -> None:
    """One rule for every count an upstream reports (counts.py): negative, bool, float and string
    counts are 0, and a reasoning count that is none is absent (it was 0 when negative)."""
    usage = parse_usage({"prompt_tokens": 12, "completion_tokens": True, "prompt_tokens_details":
                         {"cached_tokens": 1.5, "cache_write_tokens": "7"},
                         "completion_tokens_details": {"reasoning_tokens": -3}})
    assert usage == ChatUsage(prompt_tokens=12, completion_tokens=0, cached_tokens=0, cache_write_tokens=0,
                              reasoning_tokens=None)


@pytest.mark.parametrize("usage", [{}, {"total_tokens": 150}, {"prompt_tokens": None, "completion_tokens": None},
                                   {"prompt_tokens": -100, "completion_tokens": True}, {"prompt_tokens": "12"},
                                   {"input_tokens": 100, "output_tokens": 5}])
def test_a_usage_without_a_count_is_no_usage(usage: Dict[str, Any]) -> None:
    # Not 0 tokens: the client then gets the estimate (Claude Code sizes its context by it), the
    # record no count (not a call at $0).
    assert parse_usage(usage) is None
    assert not reports_usage({"choices": [], "usage": usage})
    assert reports_usage({"choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": 0}})


def test_reasoning_tokens_zero_is_present() -> None:
    usage = parse_usage({"prompt_tokens": 1, "completion_tokens": 2, "completion_tokens_details": {"reasoning_tokens": 0}})
    assert usage is not None and usage.reasoning_tokens == 0


def test_usage_from_x_groq_when_top_level_missing() -> None:
    raw = {"choices": [], "x_groq": {"usage": {"prompt_tokens": 33, "completion_tokens": 4}}}
    assert parse_chat_response(raw).usage == ChatUsage(prompt_tokens=33, completion_tokens=4)
    assert parse_chat_chunk(raw).usage == ChatUsage(prompt_tokens=33, completion_tokens=4)


def test_x_groq_of_the_wrong_shape_is_ignored() -> None:
    assert parse_chat_chunk({"choices": [], "x_groq": "nope"}).usage is None


# --------------------------------------------------------------------------
# Errors inside bodies and chunks (2.1, 3.4 step 1)


def test_error_object() -> None:
    chat = parse_chat_response({"error": {"code": 429, "message": "slow"}})
    assert chat.error == {"code": 429, "message": "slow"}


def test_error_string_becomes_an_object() -> None:
    assert parse_chat_chunk({"error": "boom"}).error == {"message": "boom"}


@pytest.mark.parametrize("value", [None, "", 0, [], False])
def test_error_falsy_or_wrong_is_absent(value: Any) -> None:
    assert parse_chat_response({"error": value, "choices": []}).error is None


def test_openrouter_error_next_to_choices() -> None:
    raw = {"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
           "error": {"code": 502, "message": "provider down"}}
    chunk = parse_chat_chunk(raw)
    assert chunk.error == {"code": 502, "message": "provider down"}
    assert chunk.choice is not None and chunk.choice.finish_reason == "error"


# --------------------------------------------------------------------------
# Chunks


def test_chunk_usage_only_with_empty_choices() -> None:
    """``stream_options.include_usage``: the last chunk has ``choices: []`` and the totals."""
    raw = {"id": "c", "object": "chat.completion.chunk", "choices": [],
           "usage": {"prompt_tokens": 120, "completion_tokens": 30, "prompt_tokens_details": {"cached_tokens": 100}}}
    chunk = parse_chat_chunk(raw)
    assert chunk.choice is None
    assert chunk.usage == ChatUsage(prompt_tokens=120, completion_tokens=30, cached_tokens=100)


def test_chunk_usage_inside_the_choice_moonshot() -> None:
    """Moonshot/Kimi streams put the usage inside the final choice, next to its finish_reason."""
    raw = {"id": "c", "object": "chat.completion.chunk", "choices": [{
        "index": 0, "delta": {}, "finish_reason": "stop", "usage": {"prompt_tokens": 1000, "completion_tokens": 50}}]}
    chunk = parse_chat_chunk(raw)
    assert chunk.usage == ChatUsage(prompt_tokens=1000, completion_tokens=50)
    assert chunk.choice is not None and chunk.choice.finish_reason == "stop"
    # A top-level usage, where there is one, is the chunk's.
    top = {**raw, "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
    assert parse_chat_chunk(top).usage == ChatUsage(prompt_tokens=7, completion_tokens=3)


def test_chunk_delta() -> None:
    raw = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "He", "reasoning_content": "r",
                                              "tool_calls": [{"index": 1, "function": {"arguments": "{\"a"}}]},
                        "finish_reason": None}]}
    chunk = parse_chat_chunk(raw)
    assert chunk.choice == ChatChoice(content="He", reasoning="r",
                                      tool_calls=(ToolCallDelta(index=1, arguments='{"a'),))


def test_chunk_with_message_instead_of_delta() -> None:
    """Some servers put the whole message in the last chunk."""
    chunk = parse_chat_chunk({"choices": [{"index": 0, "message": {"content": "whole"}, "finish_reason": "stop"}]})
    assert chunk.choice == ChatChoice(content="whole", finish_reason="stop")


@pytest.mark.parametrize("raw", [None, "data", 5, []])
def test_chunk_that_is_not_an_object_reads_as_empty(raw: Any) -> None:
    assert parse_chat_chunk(raw) == ChatResponse()


def test_chunk_usage_and_finish_together() -> None:
    raw = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
           "usage": {"prompt_tokens": 6, "completion_tokens": 5}}
    chunk = parse_chat_chunk(raw)
    assert chunk.choice is not None and chunk.choice.finish_reason == "tool_calls"
    assert chunk.usage == ChatUsage(prompt_tokens=6, completion_tokens=5)


# --------------------------------------------------------------------------
# The values are frozen: a translator cannot change what another one reads.


@pytest.mark.parametrize("value", [ChatUsage(), ToolCallDelta(), ChatChoice(), ChatResponse()])
def test_response_types_are_frozen(value: Any) -> None:
    field = dataclasses.fields(value)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, field, None)
