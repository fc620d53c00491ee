"""Non-streaming response translation (PROTOCOL.md section 2, acceptance cases 36-46).

The golden pairs in ``fixtures/responses`` were written by hand from the spec.
Random or derived values are compared by rule (see ``assert_matches``):

- ``"msg_*"`` / ``"toolu_*"``: a minted id with that prefix (24 random alphanumerics);
- ``{"$signature": {"dialect": D, "state": S}}``: a ``cpx1.`` signature that decodes
  to state ``S`` and names dialect ``D``;
- everything else is compared exactly.
"""

from __future__ import annotations

import base64
import glob
import itertools
import json
import os
import re
from typing import Any, Dict, Optional

import pytest
from conftest import FIXTURES, load_json

from claudeproxy.apis.chat.wire import ChatUsage, parse_chat_response
from claudeproxy.signatures import PREFIX, decode_signature
from claudeproxy.apis.stops import first_stop, unsent_stops
from claudeproxy.apis.toolargs import normalize_arguments
from claudeproxy.apis.chat.response import (
    match_stop_sequence,
    stop_reason_for,
    to_messages_response,
    usage_from,
)

RESPONSES = os.path.join(FIXTURES, "responses")
CASES = sorted(os.path.basename(p)[: -len(".openai.json")] for p in glob.glob(os.path.join(RESPONSES, "*.openai.json")))
_MINTED_RE = re.compile(r"^[A-Za-z0-9]{24}$")


def _load_case(case: str) -> Dict[str, Any]:
    meta_path = os.path.join(RESPONSES, case + ".meta.json")
    meta = load_json("responses", case + ".meta.json") if os.path.exists(meta_path) else {}
    return {
        "upstream": load_json("responses", case + ".openai.json"),
        "expected": load_json("responses", case + ".anthropic.json"),
        "meta": meta,
    }


def _translate(upstream: Any, meta: Dict[str, Any]) -> Any:
    from claudeproxy.ids import new_id

    return to_messages_response(
        parse_chat_response(upstream),
        model=meta.get("model", "claude-test"),
        new_id=new_id,
        tool_names=meta.get("tool_names", {}),
        stop_sequences=tuple(meta.get("stop_sequences", ())),
        dialect_name=meta.get("dialect", "generic"),
        think_tags=bool(meta.get("think_tags", False)),
    )


def _signature_dialect(signature: str) -> Optional[str]:
    data = signature[len(PREFIX):]
    payload = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)).decode("ascii"))
    return payload.get("p")


def assert_matches(actual: Any, expected: Any, path: str = "$") -> None:
    """Compare ``actual`` to a hand-written expectation, by rule for random values."""
    if isinstance(expected, str) and expected.endswith("_*"):
        prefix = expected[:-1]
        assert isinstance(actual, str) and actual.startswith(prefix), f"{path}: {actual!r} does not start {prefix!r}"
        assert _MINTED_RE.match(actual[len(prefix):]), f"{path}: {actual!r} is not {prefix} + 24 alphanumerics"
    elif isinstance(expected, dict) and set(expected) == {"$signature"}:
        rule = expected["$signature"]
        assert isinstance(actual, str) and actual.startswith(PREFIX), f"{path}: {actual!r} is not a proxy signature"
        assert decode_signature(actual) == rule["state"], f"{path}: carried state differs"
        assert _signature_dialect(actual) == rule["dialect"], f"{path}: signature names another dialect"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        assert sorted(actual) == sorted(expected), f"{path}: keys {sorted(actual)} != {sorted(expected)}"
        for key, value in expected.items():
            assert_matches(actual[key], value, f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r} != {expected!r}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_matches(a, e, f"{path}[{i}]")
    else:
        assert type(actual) is type(expected) or {type(actual), type(expected)} == {int, float}, f"{path}: {actual!r}"
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("case", CASES)
def test_golden_response(case: str) -> None:
    data = _load_case(case)
    message, warnings = _translate(data["upstream"], data["meta"])
    assert_matches(message, data["expected"])
    # The result is what the handler writes: it must survive a JSON round trip unchanged.
    assert json.loads(json.dumps(message)) == message
    ids = [b["id"] for b in message["content"] if b["type"] == "tool_use"]
    assert len(ids) == len(set(ids)), f"tool_use ids must be unique: {ids}"
    for fragment in data["meta"].get("warnings_contain", []):
        assert any(fragment in w for w in warnings), f"no warning mentions {fragment!r}: {warnings}"


def test_fixture_set_is_complete() -> None:
    """Every case has its expectation; a stray file would silently test nothing."""
    names = os.listdir(RESPONSES)
    for name in names:
        stem = name.split(".", 1)[0]
        assert stem in CASES, f"{name} has no .openai.json partner"
    for case in CASES:
        assert case + ".anthropic.json" in names
    assert len(CASES) >= 40


def test_minted_ids_differ_between_calls() -> None:
    upstream = load_json("responses", "id_missing_usage_missing.openai.json")
    first, _ = _translate(upstream, {})
    second, _ = _translate(upstream, {})
    assert first["id"] != second["id"]


def test_id_factory_is_the_only_source_of_randomness() -> None:
    counter = itertools.count()
    upstream = load_json("responses", "tool_missing_id.openai.json")
    upstream["id"] = ""
    message, _ = to_messages_response(
        parse_chat_response(upstream), model="m", new_id=lambda: f"ID{next(counter)}"
    )
    assert message["id"] == "msg_ID3"
    assert [b["id"] for b in message["content"]] == ["toolu_ID0", "toolu_ID1", "toolu_ID2"]


def test_invalid_arguments_warn_with_the_raw_string() -> None:
    """Case 42: the response still succeeds; the warning carries the raw text for the log."""
    upstream = {"choices": [{"message": {"tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{bad json"}}]},
        "finish_reason": "tool_calls"}]}
    message, warnings = _translate(upstream, {})
    assert message["content"] == [{"type": "tool_use", "id": "c", "name": "f", "input": {}}]
    assert message["stop_reason"] == "tool_use"
    assert len(warnings) == 1 and "{bad json" in warnings[0]


def test_clean_response_has_no_warnings() -> None:
    _, warnings = _translate(load_json("responses", "tool_calls.openai.json"), {})
    assert warnings == []


# --------------------------------------------------------------------------
# normalize_arguments (2.2 step 3)


@pytest.mark.parametrize(
    "raw, expected",
    [
        (None, {}),
        ("", {}),
        ("   \n", {}),
        ("null", {}),
        ('{"a": 1}', {"a": 1}),
        ('  {"a": {"b": [1, 2]}}  ', {"a": {"b": [1, 2]}}),
        ('"{\\"a\\":1}"', {"a": 1}),
        ('"{\\"a\\": {\\"b\\": 2}}"', {"a": {"b": 2}}),
        ("[1,2]", {"value": [1, 2]}),
        ("42", {"value": 42}),
        ("true", {"value": True}),
        ('"hello"', {"value": "hello"}),
        ('"[1, 2]"', {"value": "[1, 2]"}),
        ('{"a": 1}\n```', {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('{"a": 1} Let me know if you need more.', {"a": 1}),
        ('{"a": "b', {"a": "b"}),
        ('{"a": {"b": [1, 2', {"a": {"b": [1, 2]}}),
        ('{"path": "x.py", "content": "if a:\\n    print(\\"}\\")', {"path": "x.py", "content": 'if a:\n    print("}")'}),
        ("{bad json", {}),
        ("not json at all", {}),
        ('{"k": ', {}),
        ("[" * 5000, {}),
        ("{" * 5000, {}),
    ],
)
def test_normalize_arguments(raw: Optional[str], expected: Dict[str, Any]) -> None:
    obj, _ = normalize_arguments(raw)
    assert obj == expected


@pytest.mark.parametrize("raw", ["{bad json", '{"a": "b', '"{\\"a\\":1}"', "[1,2]", '{"a":1}\n```'])
def test_normalize_arguments_warns_when_it_had_to_help(raw: str) -> None:
    _, warning = normalize_arguments(raw)
    assert warning


@pytest.mark.parametrize("raw", [None, "", '{"a": 1}', "{}"])
def test_normalize_arguments_silent_for_clean_input(raw: Optional[str]) -> None:
    assert normalize_arguments(raw)[1] is None


# --------------------------------------------------------------------------
# stop_reason_for (2.4): first matching rule wins


@pytest.mark.parametrize(
    "finish, has_tools, refusal, stop_match, expected",
    [
        ("length", True, True, "END", "max_tokens"),  # rule 1 beats everything
        ("max_tokens", False, False, None, "max_tokens"),
        ("stop", True, False, "END", "tool_use"),  # rule 2 beats a stop match
        ("tool_calls", True, False, None, "tool_use"),
        ("function_call", True, False, None, "tool_use"),
        ("content_filter", True, False, None, "tool_use"),
        ("tool_calls", False, False, None, "end_turn"),  # rule 3
        ("function_call", False, True, None, "end_turn"),  # rule 3 before rule 4
        ("content_filter", False, False, None, "refusal"),  # rule 4
        ("stop", False, True, "END", "refusal"),
        ("stop", False, False, "END", "stop_sequence"),  # rule 5
        ("stop", False, False, None, "end_turn"),  # rule 6
        ("eos", False, False, None, "end_turn"),
        ("end_turn", False, False, None, "end_turn"),
        (None, False, False, None, "end_turn"),
        ("something_new", False, False, None, "end_turn"),
        ("eos", False, False, "END", "end_turn"),  # only `stop` reports a stop sequence
    ],
)
def test_stop_reason_for(finish: Optional[str], has_tools: bool, refusal: bool, stop_match: Optional[str], expected: str) -> None:
    assert stop_reason_for(finish, has_tools, refusal, stop_match) == expected


# --------------------------------------------------------------------------
# match_stop_sequence (2.4 rule 5)


def test_match_stop_sequence_reported_by_server_keeps_text() -> None:
    assert match_stop_sequence("done", "END", ("END",)) == ("END", "done")


def test_match_stop_sequence_ignores_a_string_not_requested() -> None:
    assert match_stop_sequence("done", "</s>", ("END",)) == (None, "done")


def test_match_stop_sequence_removes_the_suffix() -> None:
    assert match_stop_sequence("a\nEND", None, ("X", "END")) == ("END", "a\n")


def test_match_stop_sequence_prefers_the_longest_suffix() -> None:
    # "THE END" and "END" both end the text; stripping only "END" would leave "THE " behind.
    assert match_stop_sequence("story. THE END", None, ("END", "THE END")) == ("THE END", "story. ")


def test_match_stop_sequence_no_match() -> None:
    assert match_stop_sequence("ENDING", None, ("END",)) == (None, "ENDING")
    assert match_stop_sequence("text", None, ()) == (None, "text")
    assert match_stop_sequence("text", None, ("",)) == (None, "text")


# --------------------------------------------------------------------------
# Stop strings the upstream was not sent: the proxy ends the text at the first (2.4, apis/stops.py)


def test_first_stop_is_the_match_that_ends_first() -> None:
    assert first_stop("first part E5 second part E5", ("A1", "E5")) == (11, "E5")
    assert first_stop("aXYZ", ("XYZ", "Y")) == (2, "Y")  # a model stops once "Y" is complete
    assert first_stop("story. THE END", ("END", "THE END")) == (7, "THE END")  # same end: the longest
    assert first_stop("no match", ("END", "")) is None and first_stop("x", ()) is None


def test_unsent_stops_keeps_the_clients_order() -> None:
    assert unsent_stops(("A1", "", "B2", "C3", "D4", "E5", "F6"), ("A1", "B2", "C3", "D4")) == ("E5", "F6")
    assert unsent_stops(("END",), ()) == ("END",)


def _local(body: Any, **meta: Any) -> Any:
    from claudeproxy.ids import new_id

    return to_messages_response(parse_chat_response(body), model="claude-test", new_id=new_id,
                                 stop_sequences=("A1", "B2", "C3", "D4", "E5"), local_stops=("E5",), **meta)[0]


def _body(message: Dict[str, Any], finish: str = "stop") -> Dict[str, Any]:
    return {"id": "c1", "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 7}}


def test_an_unsent_stop_string_cuts_the_text() -> None:
    message = _local(_body({"content": "first part E5 second part"}))
    assert message["content"] == [{"type": "text", "text": "first part "}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "E5")
    assert message["usage"]["output_tokens"] == 7  # as reported


def test_tool_calls_and_refusals_after_an_unsent_stop_string_are_dropped() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    message = _local(_body({"content": "ok E5 then", "tool_calls": [call], "refusal": "no"}, "tool_calls"))
    assert message["content"] == [{"type": "text", "text": "ok "}]
    assert message["stop_reason"] == "stop_sequence"


def test_an_unsent_stop_string_before_the_length_limit_wins() -> None:
    message = _local(_body({"content": "E5 and on and on"}, "length"))
    assert message["content"] == [] and message["stop_reason"] == "stop_sequence"


def test_reasoning_is_not_searched_for_unsent_stop_strings() -> None:
    message = _local(_body({"content": "answer", "reasoning_content": "I will say E5"}))
    assert message["content"][1] == {"type": "text", "text": "answer"} and message["stop_reason"] == "end_turn"
    tagged = _local(_body({"content": "<think>E5?</think>answer E5 tail"}), think_tags=True)
    assert [(b["type"], b.get("text", b.get("thinking"))) for b in tagged["content"]] == [
        ("thinking", "E5?"), ("text", "answer ")]


def test_no_unsent_stop_string_in_the_text_changes_nothing() -> None:
    body = _body({"content": "plain text"})
    assert _local(body)["content"] == [{"type": "text", "text": "plain text"}]
    assert _local(body)["stop_reason"] == "end_turn"


# --------------------------------------------------------------------------
# usage_from (2.5)


def test_usage_from_none_is_all_zero() -> None:
    assert usage_from(None) == {
        "input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0,
    }


def test_usage_from_subtracts_cache_reads_and_writes() -> None:
    usage = ChatUsage(prompt_tokens=1000, completion_tokens=7, cached_tokens=600, cache_write_tokens=300)
    assert usage_from(usage) == {
        "input_tokens": 100, "cache_creation_input_tokens": 300, "cache_read_input_tokens": 600, "output_tokens": 7,
    }


def test_usage_from_reports_thinking_tokens_only_when_present() -> None:
    assert "output_tokens_details" not in usage_from(ChatUsage(prompt_tokens=1, completion_tokens=2))
    out = usage_from(ChatUsage(prompt_tokens=1, completion_tokens=9, reasoning_tokens=0))
    assert out["output_tokens_details"] == {"thinking_tokens": 0}
    assert out["output_tokens"] == 9  # reasoning is already inside completion_tokens


def _completion(usage: Dict[str, Any]) -> Dict[str, Any]:
    return {"id": "c", "object": "chat.completion", "usage": usage, "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}]}


def test_output_includes_reasoning_that_completion_tokens_left_out() -> None:
    """Gemini's OpenAI-compatible endpoint: total = prompt + completion + reasoning, so completion_tokens
    (50) leaves out the thinking (200). Anthropic's output_tokens includes thinking: 250, never less
    than the thinking inside it."""
    gemini = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1250,
              "completion_tokens_details": {"reasoning_tokens": 200}}
    out = usage_from(parse_chat_response(_completion(gemini)).usage)
    assert (out["output_tokens"], out["output_tokens_details"]) == (250, {"thinking_tokens": 200})


def test_output_includes_thinking_that_only_the_total_shows() -> None:
    """Gemini behind a gateway that passes its thoughts on in total_tokens alone (no reasoning count):
    the call recorded 15 output tokens where 55 were made (probe V 6)."""
    usage = {"prompt_tokens": 12199, "completion_tokens": 15, "total_tokens": 12254}
    assert usage_from(parse_chat_response(_completion(usage)).usage)["output_tokens"] == 55


@pytest.mark.parametrize("usage", [
    # A reasoning count of 0 is a count: the total's rest is something else.
    {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1150, "completion_tokens_details": {"reasoning_tokens": 0}},
    # Cached input some gateways add to the total outside prompt_tokens: 8,000 tokens of output recorded (review X).
    {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 9050, "prompt_tokens_details": {"cached_tokens": 8000}},
])
def test_a_total_above_prompt_and_completion_is_no_output_where_something_else_explains_it(usage: Dict[str, Any]) -> None:
    assert usage_from(parse_chat_response(_completion(usage)).usage)["output_tokens"] == 50


@pytest.mark.parametrize("total", [1050, None, 999])
def test_output_is_completion_tokens_when_the_total_does_not_say_reasoning_is_apart(total: Optional[int]) -> None:
    """OpenAI's own shape (completion includes reasoning, total = prompt + completion), no total, or
    a total that fits neither: completion_tokens stands."""
    usage: Dict[str, Any] = {"prompt_tokens": 1000, "completion_tokens": 50,
                             "completion_tokens_details": {"reasoning_tokens": 20}}
    if total is not None:
        usage["total_tokens"] = total
    assert usage_from(parse_chat_response(_completion(usage)).usage)["output_tokens"] == 50


def test_usage_from_never_negative() -> None:
    assert usage_from(ChatUsage(prompt_tokens=5, cached_tokens=4, cache_write_tokens=4))["input_tokens"] == 0


def test_usage_keeps_anthropic_total() -> None:
    """FIELD-NOTES 8: input + cache_read + cache_creation equals the upstream prompt_tokens."""
    usage = usage_from(parse_chat_response(load_json("responses", "usage_cache_write_reasoning.openai.json")).usage)
    total = usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]
    assert total == 100


# --------------------------------------------------------------------------
# Robustness: no upstream answer, however odd, fails the translation (2.2: "Never fail the whole response").

_ODD_VALUES: Any = [None, "", " ", "x", "END", "<think>a</think>b", 0, -1, 7, 1.5, True, [], {}, [1], {"a": 1},
                    '{"a": ', '"{\\"a\\":1}"', "[1,2]", "{bad", "```json\n{}\n```", "\x00", "\u2603"]
_STOP_REASONS = {"end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"}


def _odd_tool_call(rng: Any) -> Any:
    call = {"id": rng.choice(["", "c1", "c1", None, 5]), "type": rng.choice(["function", None, "custom", 3]),
            "function": {"name": rng.choice(["f", "", None, "a.b"]), "arguments": rng.choice(_ODD_VALUES)}}
    return rng.choice([call, call, rng.choice(_ODD_VALUES)])


def _odd_body(rng: Any) -> Any:
    msg = {key: rng.choice(_ODD_VALUES) for key in
           ("content", "reasoning_content", "reasoning", "refusal", "reasoning_details", "function_call")
           if rng.random() < 0.5}
    msg["tool_calls"] = [_odd_tool_call(rng) for _ in range(rng.randrange(4))]
    choice = {"message": msg, "finish_reason": rng.choice(["stop", "length", "tool_calls", "content_filter", None, 5]),
              "stop_reason": rng.choice(_ODD_VALUES), "index": rng.choice([0, 1, None])}
    usage = {"prompt_tokens": rng.choice(_ODD_VALUES), "completion_tokens": rng.choice(_ODD_VALUES),
             "prompt_tokens_details": rng.choice([None, {"cached_tokens": rng.choice(_ODD_VALUES)}, "x"])}
    return {"id": rng.choice(["", "abc", None, "a/b:c"]), "choices": [choice], "usage": usage}


def _assert_valid_message(message: Dict[str, Any]) -> None:
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["id"].startswith("msg_") and len(message["id"]) > 4
    assert message["stop_reason"] in _STOP_REASONS
    assert message["stop_sequence"] is None or message["stop_reason"] == "stop_sequence"
    for block in message["content"]:
        if block["type"] == "text":
            assert isinstance(block["text"], str) and block["text"], "no empty text blocks (FIELD-NOTES 12)"
        elif block["type"] == "tool_use":
            assert isinstance(block["input"], dict) and block["name"] and block["id"]
        else:
            assert block["type"] == "thinking" and block["signature"].startswith(PREFIX)
    ids = [b["id"] for b in message["content"] if b["type"] == "tool_use"]
    assert len(ids) == len(set(ids))
    assert all(isinstance(v, int) and v >= 0 for k, v in message["usage"].items() if k != "output_tokens_details")
    json.dumps(message)


@pytest.mark.parametrize("seed", range(4))
def test_odd_upstream_answers_always_translate(seed: int) -> None:
    import random

    rng = random.Random(seed)
    for _ in range(60):
        body = _odd_body(rng)
        meta = {"stop_sequences": rng.choice([[], ["END"], ["x", "END"]]), "think_tags": rng.random() < 0.5}
        message, _ = _translate(body, meta)
        _assert_valid_message(message)


@pytest.mark.parametrize("seed", range(3))
def test_normalize_arguments_never_raises(seed: int) -> None:
    import random

    rng = random.Random(1000 + seed)
    alphabet = '{}[]":,\\ abc123-.\n`eE+'
    for _ in range(200):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        obj, _ = normalize_arguments(raw)
        assert isinstance(obj, dict)
