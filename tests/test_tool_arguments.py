"""Tool arguments streamed live are always JSON the SDKs can parse (``apis/toolargs.py``).

The TypeScript SDK's ``MessageStream`` (Claude Code's) joins a tool block's ``partial_json``
and parses it at ``content_block_stop`` with a partial-JSON parser that throws on anything
but JSON cut short. So for every upstream argument stream, through both stream translators
(Chat Completions and the Responses API), the joined ``partial_json`` of each tool block
must be strict JSON (``json.loads``), equal to the expected input, and equal to what the
JSON answer (non-stream) gives for the same arguments.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any, Dict, List, Tuple

import pytest

from claudeproxy.apis.chat.response import message_from_body, normalize_arguments
from claudeproxy.apis.responses.response import to_messages_response, tool_input
from claudeproxy.apis.responses.stream import ResponsesFold
from sse_checks import assert_valid_event_sequence, final_message
from stream_playbook import Playbook, chunk, counter_ids, drive, tool_delta

Event = Dict[str, Any]

# (name, upstream argument fragments, the tool input every path must give)
CASES: List[Tuple[str, List[str], Dict[str, Any]]] = [
    # The probe's five (REPORT finding 2): the TypeScript SDK threw on each.
    ("extra_brace", ['{"path":"a"}', "}"], {"path": "a"}),
    ("extra_brace_one_fragment", ['{"path":"a"}}'], {"path": "a"}),
    ("code_fence", ['{"path":"a"}', "\n```"], {"path": "a"}),
    ("trailing_words", ['{"a":1}', " trailing words"], {"a": 1}),
    ("trailing_words_one_fragment", ['{"a":1} trailing words'], {"a": 1}),
    ("two_objects", ['{"a":1}', '{"b":2}'], {"a": 1}),
    ("two_objects_one_fragment", ['{"a":1}{"b":2}'], {"a": 1}),
    ("bad_json", ["{bad", " json}"], {}),
    ("python_dict", ["{'a': 1}"], {}),
    ("bare_keys", ["{a: 1}"], {}),
    # Invalid after the call went live: closed after its last whole member.
    ("python_true", ['{"a": 1, "b": Tr', "ue}"], {"a": 1}),
    ("python_none_first", ['{"a": None}'], {}),
    ("trailing_comma", ['{"a": 1,', "}"], {"a": 1}),
    ("trailing_comma_in_array", ['{"a": [1, 2,', "]}"], {"a": [1, 2]}),
    ("missing_comma", ['{"a": 1 ', '"b": 2}'], {"a": 1}),
    ("single_quoted_value", ['{"a": "x", "b": ', "'y'}"], {"a": "x"}),
    ("nan", ['{"a": 1, "b": NaN}'], {"a": 1}),
    ("wrong_bracket", ['{"a": {"b": [1', "}}"], {"a": {"b": [1]}}),
    ("leading_zero", ['{"a": "x", "n": 01}'], {"a": "x"}),
    # Mended as they pass: what the model meant.
    ("raw_newline_in_string", ['{"c": "line1\nline2\t', 'end"}'], {"c": "line1\nline2\tend"}),
    ("unknown_escape", ['{"re": "\\d+\\', 's"}'], {"re": "\\d+\\s"}),
    # Valid, split anywhere: passed on unchanged.
    ("unicode_escapes_split", ['{"s": "caf\\u00', "e9 \\ud83d", '\\ude00 \\"q\\" \\\\', '"}'], {"s": 'café \U0001F600 "q" \\'}),
    ("braces_inside_strings", ['{"code": "if (a) { b(); }', ' else { c(\\"}\\"); }"}'], {"code": 'if (a) { b(); } else { c("}"); }'}),
    ("close_brace_in_string_at_boundary", ['{"a": "}', '", "b": "{"}'], {"a": "}", "b": "{"}),
    ("escape_split_at_backslash", ['{"p": "C:\\', '\\dir\\', '"x"}'], {"p": 'C:\\dir"x'}),
    ("numbers_and_literals_split", ['{"n": 12', "34.5", 'e2, "t": tr', 'ue, "z": nu', "ll}"], {"n": 123450.0, "t": True, "z": None}),
    ("nested", ['{"a": [1, {"b": [', '[], {}, "]"]}', '], "c": {}}'], {"a": [1, {"b": [[], {}, "]"]}], "c": {}}),
    ("whitespace", ['  {\n  "a"', ' :\n  [ 1 ,2 ]\n}\n'], {"a": [1, 2]}),
    ("empty_object", ["{", "}"], {}),
]
IDS = [c[0] for c in CASES]


def chat_stream(fragments: List[str]) -> List[Event]:
    pb = Playbook()
    pb.feed(chunk(tool_delta(0, "call_1", "read", fragments[0])))
    for piece in fragments[1:]:
        pb.feed(chunk(tool_delta(0, arguments=piece)))
    pb.feed(chunk(finish="tool_calls", usage={"prompt_tokens": 3, "completion_tokens": 4}))
    assert pb.complete
    return pb.events


def chat_json(arguments: str) -> Dict[str, Any]:
    body = {"id": "x", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "read", "arguments": arguments}}]}}]}
    message, _ = message_from_body(body, model="m", new_id=counter_ids())
    [block] = [b for b in message["content"] if b["type"] == "tool_use"]
    return block["input"]


def _sse(obj: Dict[str, Any]) -> bytes:
    return f"event: {obj['type']}\ndata: ".encode() + json.dumps(obj).encode() + b"\n\n"


def responses_stream(fragments: List[str]) -> List[Event]:
    arguments = "".join(fragments)
    call = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "read"}
    objs = [{"type": "response.output_item.added", "output_index": 0, "item": {**call, "arguments": ""}}]
    objs += [{"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 0, "delta": f}
             for f in fragments]
    objs += [{"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": 0, "arguments": arguments},
             {"type": "response.output_item.done", "output_index": 0, "item": {**call, "arguments": arguments}},
             {"type": "response.completed", "response": {"id": "r", "status": "completed", "output": [],
                                                          "usage": {"input_tokens": 3, "output_tokens": 2}}}]
    fold = ResponsesFold(message_id="msg_test", model="m", input_tokens=3, new_id=counter_ids())
    return drive(fold, io.BytesIO(b"".join(_sse(o) for o in objs)).readlines(), clean=True)


def responses_json(arguments: str) -> Dict[str, Any]:
    obj = {"id": "r", "status": "completed", "usage": {"input_tokens": 3, "output_tokens": 2}, "output": [
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "read", "arguments": arguments}]}
    message = to_messages_response(obj, model="m", new_id=counter_ids(), tool_names={})
    [block] = [b for b in message["content"] if b["type"] == "tool_use"]
    return block["input"]


def streamed_inputs(events: List[Event]) -> List[Any]:
    """Each tool block's joined partial_json, parsed strictly (as the TypeScript SDK must)."""
    assert_valid_event_sequence(events, allow_error=False)
    parts: Dict[int, str] = {}
    starts = [e for e in events if e["type"] == "content_block_start" and e["content_block"]["type"] == "tool_use"]
    for e in events:
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta":
            parts[e["index"]] = parts.get(e["index"], "") + e["delta"]["partial_json"]
    return [json.loads(parts[s["index"]]) if s["index"] in parts else {} for s in starts]


@pytest.mark.parametrize("name, fragments, expected", CASES, ids=IDS)
def test_chat_stream_sends_only_json(name: str, fragments: List[str], expected: Dict[str, Any]) -> None:
    events = chat_stream(fragments)
    assert streamed_inputs(events) == [expected]
    assert [b["input"] for b in final_message(events)["content"]] == [expected]


@pytest.mark.parametrize("name, fragments, expected", CASES, ids=IDS)
def test_responses_stream_sends_only_json(name: str, fragments: List[str], expected: Dict[str, Any]) -> None:
    events = responses_stream(fragments)
    assert streamed_inputs(events) == [expected]
    assert [b["input"] for b in final_message(events)["content"]] == [expected]


@pytest.mark.parametrize("name, fragments, expected", CASES, ids=IDS)
def test_the_json_answer_gives_what_the_stream_gave(name: str, fragments: List[str], expected: Dict[str, Any]) -> None:
    arguments = "".join(fragments)
    assert normalize_arguments(arguments)[0] == expected
    assert chat_json(arguments) == expected
    assert responses_json(arguments) == expected


@pytest.mark.parametrize("name, fragments, expected", [c for c in CASES if c[2]], ids=[c[0] for c in CASES if c[2]])
def test_the_input_is_the_same_when_the_server_says_incomplete(name: str, fragments: List[str],
                                                                expected: Dict[str, Any]) -> None:
    # An object that closed, or turned invalid, was not cut by the output limit: not {}.
    assert tool_input("".join(fragments), incomplete=True) == expected


def test_invalid_json_is_never_live() -> None:
    """``{bad json}`` is not streamed as it comes: its block comes whole at the end, in one delta
    or none, after the text that came meanwhile (which waited one fragment for the decision)."""
    pb = Playbook()
    first = pb.feed(chunk(tool_delta(0, "call_1", "read", "{")))
    assert first == []  # "{" alone does not decide (nor begins the message: nothing to say yet)
    assert pb.feed(chunk({"content": "note"})) == []  # text waits for the decision, as behind a live call
    out = pb.feed(chunk(tool_delta(0, arguments="bad json}")))
    assert [e["type"] for e in out] == ["message_start", "content_block_start", "content_block_delta"]  # the text
    assert out[2]["delta"] == {"type": "text_delta", "text": "note"}
    end = pb.feed(chunk(finish="tool_calls", usage={"prompt_tokens": 1, "completion_tokens": 1}))
    assert [e["type"] for e in end][:3] == ["content_block_stop", "content_block_start", "content_block_stop"]
    assert end[1]["content_block"]["input"] == {}
    assert final_message(pb.events)["content"] == [
        {"type": "text", "text": "note"}, {"type": "tool_use", "id": "call_1", "name": "read", "input": {}}]


def test_text_that_waited_for_the_first_key_follows_the_live_call() -> None:
    pb = Playbook()
    pb.feed(chunk(tool_delta(0, "call_1", "read", "{")))
    assert pb.feed(chunk({"content": "note"})) == []
    live = pb.feed(chunk(tool_delta(0, arguments='"path": "a"')))
    assert [e["type"] for e in live] == ["message_start", "content_block_start", "content_block_delta"]
    assert live[2]["delta"]["partial_json"] == '{"path": "a"'
    pb.feed(chunk(tool_delta(0, arguments="}")))
    pb.feed(chunk(finish="tool_calls", usage={"prompt_tokens": 1, "completion_tokens": 1}))
    assert final_message(pb.events)["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "read", "input": {"path": "a"}}, {"type": "text", "text": "note"}]


def test_text_in_an_open_text_block_waits_for_the_decision_too() -> None:
    """Text, then the call's "{": the text block ends there, as the call's block would end it, so
    text coming meanwhile (the one-delta fast path included) waits as behind a live call."""
    for rest, content in [
        ('"path": "a"}', [{"type": "text", "text": "Let me look."},
                          {"type": "tool_use", "id": "call_1", "name": "read", "input": {"path": "a"}},
                          {"type": "text", "text": " More."}]),
        ("bad}", [{"type": "text", "text": "Let me look."}, {"type": "text", "text": " More."},
                  {"type": "tool_use", "id": "call_1", "name": "read", "input": {}}]),
    ]:
        pb = Playbook()
        pb.feed(chunk({"content": "Let me look."}))
        ends = pb.feed(chunk(tool_delta(0, "call_1", "read", "{")))
        assert [e["type"] for e in ends] == ["content_block_stop"]
        assert pb.feed(chunk({"content": " More."})) == []
        pb.feed(chunk(tool_delta(0, arguments=rest)))
        pb.feed(chunk(finish="tool_calls", usage={"prompt_tokens": 1, "completion_tokens": 1}))
        assert final_message(pb.events)["content"] == content, rest


def test_text_that_waited_for_a_call_cut_after_its_brace_is_not_lost() -> None:
    pb = Playbook()
    pb.feed(chunk(tool_delta(0, "call_1", "read", "{ ")))
    assert pb.feed(chunk({"reasoning_content": "hmm"})) == []
    assert pb.feed(chunk({"content": "note"})) == []
    pb.feed(chunk(finish="length", usage={"prompt_tokens": 1, "completion_tokens": 1}))
    content = final_message(pb.events)["content"]
    assert [(b["type"], b.get("thinking") or b.get("text") or b.get("input")) for b in content] == [
        ("thinking", "hmm"), ("text", "note"), ("tool_use", {})]


def test_nothing_after_the_object_is_sent_and_text_after_it_is_not_held() -> None:
    pb = Playbook()
    pb.feed(chunk(tool_delta(0, "call_1", "read", '{"path":"a"}')))
    assert pb.feed(chunk(tool_delta(0, arguments="}\n```"))) == []
    text = pb.feed(chunk({"content": "done"}))
    assert [e["type"] for e in text] == ["content_block_stop", "content_block_start", "content_block_delta"]


def test_invalid_json_after_going_live_is_closed_and_logged(caplog: Any) -> None:
    pb = Playbook()
    pb.feed(chunk(tool_delta(0, "call_1", "read", '{"a": 1, "b": [2')))
    assert pb.feed(chunk({"content": "note"})) == []  # held behind the open call
    with caplog.at_level(logging.WARNING):
        out = pb.feed(chunk(tool_delta(0, arguments=", None]}")))
    # The number held at the fragment's end, the brackets that close what was sent, then the
    # text that waited.
    assert out[0]["delta"] == {"type": "input_json_delta", "partial_json": "2]}"}
    assert [e["type"] for e in out[1:]] == ["content_block_stop", "content_block_start", "content_block_delta"]
    assert pb.feed(chunk(tool_delta(0, arguments=', "c": 3}'))) == []  # the rest is dropped
    pb.feed(chunk(finish="tool_calls", usage={"prompt_tokens": 1, "completion_tokens": 1}))
    assert streamed_inputs(pb.events) == [{"a": 1, "b": [2]}]
    assert [r.getMessage() for r in caplog.records if "turned invalid JSON" in r.getMessage()] == [
        "tool call read (call_1): its streamed arguments turned invalid JSON; its input was closed after the "
        "last whole member and the rest dropped"]


def test_a_cut_call_keeps_what_it_said() -> None:
    # finish_reason length inside a key: the held key goes out at the end, as before, and the
    # SDK's partial parser makes of it what it makes of any cut stream.
    for stream in (chat_stream, responses_stream):
        events = stream(['{"path": "a", "co'])
        joined = "".join(e["delta"]["partial_json"] for e in events
                         if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta")
        assert joined == '{"path": "a", "co', stream


CUT_CASES = [  # (arguments cut by the output limit, the members that were whole)
    ('{"path": "a.py", "content": "print(1', {"path": "a.py"}),  # never a Write of the cut content
    ('{"a": 1, "b": 12', {"a": 1}),  # "12" may have been "125"
    ('{"a": {"b": 1}, "c": [1, 2', {"a": {"b": 1}}),
    ('{"a": true, "b": nul', {"a": True}),
    ('{"a": "x", ', {"a": "x"}),
    ('{"a": "x", "b"', {"a": "x"}),
    ('  {"a": false', {"a": False}),  # a literal at the cut is whole: no longer literal begins so
    ('{"a": 1, "b": 1.', {"a": 1}),  # "1." is no number yet: not read as 1
    ('{"a": 1.5e', {}),
    ("{", {}),
]


def chat_json_cut(arguments: str) -> Dict[str, Any]:
    body = {"id": "x", "choices": [{"index": 0, "finish_reason": "length", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "read", "arguments": arguments}}]}}]}
    message, warnings = message_from_body(body, model="m", new_id=counter_ids())
    assert message["stop_reason"] == "max_tokens" and warnings, warnings
    [block] = [b for b in message["content"] if b["type"] == "tool_use"]
    return block["input"]


@pytest.mark.parametrize("arguments, whole", CUT_CASES, ids=[c[0] for c in CUT_CASES])
def test_a_call_cut_by_the_output_limit_keeps_its_whole_members_in_a_json_answer(arguments: str,
                                                                                 whole: Dict[str, Any]) -> None:
    """The stream passes on what came and the SDKs keep the whole members of it; the JSON answer
    closed the cut string instead (Chat), so a cut Write looked whole, or gave {} (Responses)."""
    assert chat_json_cut(arguments) == whole
    assert tool_input(arguments, incomplete=True) == whole
    # What the stream passed on begins the same members: every whole one is in it as it came.
    joined = "".join(e["delta"]["partial_json"] for e in chat_stream([arguments])
                     if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta")
    assert joined.strip() == arguments.strip()[:len(joined.strip())] and all(json.dumps(k) in joined for k in whole)


def test_a_number_past_the_float_range_is_the_largest_float_not_infinity() -> None:
    """1e400 is JSON, which Python reads as inf and wrote back as Infinity: no JSON, and the
    JavaScript SDK (Claude Code's) could not parse the answer."""
    import sys
    for arguments in ('{"timeout": 1e400, "n": -1e999}', '{"timeout": 1e400, "n": -1e999} trailing'):
        got = chat_json(arguments)
        assert got == {"timeout": sys.float_info.max, "n": -sys.float_info.max}
        json.dumps(got, allow_nan=False)
        assert responses_json(arguments) == got


@pytest.mark.parametrize("first_args", ["[1]", "{'command': 'x'}", '  {"command": "x"}'],
                         ids=["array", "python-dict", "leading-blanks"])
def test_parallel_calls_keep_their_order_when_the_first_is_held_whole(first_args: str) -> None:
    """A call whose arguments are no streamable object waits for its end; the next call streamed
    ahead of it meanwhile, so the stream put call_2 first and the JSON answer call_1 (a probe)."""
    calls = [{"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "bash"},
             {"type": "function_call", "id": "fc_2", "call_id": "call_2", "name": "read"}]
    second_args = '{"file_path": "b"}'
    objs: List[Dict[str, Any]] = [{"type": "response.output_item.added", "output_index": i,
                                   "item": {**c, "arguments": ""}} for i, c in enumerate(calls)]
    half = len(first_args) // 2
    for i, piece in [(0, first_args[:half]), (1, second_args), (0, first_args[half:])]:
        objs.append({"type": "response.function_call_arguments.delta", "item_id": calls[i]["id"], "output_index": i,
                     "delta": piece})
    for i, args in [(0, first_args), (1, second_args)]:
        objs += [{"type": "response.function_call_arguments.done", "item_id": calls[i]["id"], "output_index": i,
                  "arguments": args},
                 {"type": "response.output_item.done", "output_index": i, "item": {**calls[i], "arguments": args}}]
    objs.append({"type": "response.completed", "response": {"id": "r", "status": "completed", "output": [],
                                                             "usage": {"input_tokens": 3, "output_tokens": 2}}})
    fold = ResponsesFold(message_id="msg_test", model="m", input_tokens=3, new_id=counter_ids())
    events = drive(fold, io.BytesIO(b"".join(_sse(o) for o in objs)).readlines(), clean=True)
    streamed = [(b["id"], b["input"]) for b in final_message(events)["content"]]
    answer = to_messages_response({"id": "r", "status": "completed", "output": [
        {**c, "arguments": a} for c, a in zip(calls, (first_args, second_args))]},
        model="m", new_id=counter_ids(), tool_names={})
    assert [b["id"] for b in answer["content"]] == ["call_1", "call_2"]
    assert streamed == [(b["id"], b["input"]) for b in answer["content"]]


def test_a_responses_call_without_a_name_is_dropped_streamed_or_not() -> None:
    """No tool can answer it (PROTOCOL.md 2.2, as on Chat); it became a tool_use named "" (a probe)."""
    calls = [{"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": ""},
             {"type": "function_call", "id": "fc_2", "call_id": "call_2", "name": "read"}]
    objs: List[Dict[str, Any]] = []
    for i, c in enumerate(calls):
        objs += [{"type": "response.output_item.added", "output_index": i, "item": {**c, "arguments": ""}},
                 {"type": "response.function_call_arguments.delta", "item_id": c["id"], "output_index": i,
                  "delta": '{"a": 1}'},
                 {"type": "response.output_item.done", "output_index": i, "item": {**c, "arguments": '{"a": 1}'}}]
    objs.append({"type": "response.completed", "response": {"id": "r", "status": "completed", "output": [],
                                                             "usage": {"input_tokens": 3, "output_tokens": 2}}})
    fold = ResponsesFold(message_id="msg_test", model="m", input_tokens=3, new_id=counter_ids())
    events = drive(fold, io.BytesIO(b"".join(_sse(o) for o in objs)).readlines(), clean=True)
    assert [(b["id"], b["name"]) for b in final_message(events)["content"]] == [("call_2", "read")]
    answer = to_messages_response({"id": "r", "status": "completed", "output": [
        {**c, "arguments": '{"a": 1}'} for c in calls]}, model="m", new_id=counter_ids(), tool_names={})
    assert [(b["id"], b["name"]) for b in answer["content"]] == [("call_2", "read")]


def _responses_events(objs: List[Dict[str, Any]]) -> List[Event]:
    fold = ResponsesFold(message_id="msg_test", model="m", input_tokens=3, new_id=counter_ids())
    return drive(fold, io.BytesIO(b"".join(_sse(o) for o in objs)).readlines(), clean=True)


def _completed(output: List[Any]) -> Dict[str, Any]:
    return {"type": "response.completed", "response": {"id": "r", "status": "completed", "output": output,
                                                       "usage": {"input_tokens": 3, "output_tokens": 2}}}


@pytest.mark.parametrize("unindexed", [False, True], ids=["earlier-never-ends", "earlier-without-a-slot"])
def test_a_call_waiting_behind_an_earlier_one_is_placed_even_if_that_one_never_ends(unindexed: bool) -> None:
    """The order rule held a finished call behind an earlier one that never ended (no .done, not in
    the final object), or behind one at slot -1 (no index, no id): the answer lost it (a review)."""
    first = {"type": "function_call", "call_id": "call_0", "name": "bash"}
    second = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "read"}
    opening = {"type": "response.output_item.added", "item": {**first, "arguments": ""}}
    objs: List[Dict[str, Any]] = [opening if unindexed else {**opening, "output_index": 0,
                                                              "item": {**first, "id": "fc_0", "arguments": ""}}]
    objs.append({"type": "response.function_call_arguments.delta", "delta": "[1", **(
        {} if unindexed else {"item_id": "fc_0", "output_index": 0})})
    objs += [{"type": "response.output_item.added", "output_index": 1, "item": {**second, "arguments": ""}},
             {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 1,
              "delta": '{"file_path": "b"}'},
             {"type": "response.output_item.done", "output_index": 1, "item": {**second, "arguments": '{"file_path": "b"}'}},
             _completed([])]
    message = final_message(_responses_events(objs))
    assert ("call_1", {"file_path": "b"}) in [(b["id"], b["input"]) for b in message["content"]]
    assert message["stop_reason"] == "tool_use"


def test_many_parallel_calls_behind_one_held_whole_neither_recurse_nor_slow_down() -> None:
    """Placing the calls that waited placed the next from inside each one: 450 calls raised
    RecursionError, and the order was sorted again for every check (1,000 calls: 59 s; a review)."""
    n = 600
    calls = [{"type": "function_call", "id": f"fc_{i}", "call_id": f"call_{i}", "name": "read"} for i in range(n)]
    objs: List[Dict[str, Any]] = [{"type": "response.output_item.added", "output_index": i,
                                   "item": {**c, "arguments": ""}} for i, c in enumerate(calls)]
    for i, c in [*enumerate(calls)][1:] + [(0, calls[0])]:  # the first (held whole) ends last: all wait for it
        args = "[1]" if i == 0 else '{"x": 1}'
        objs += [{"type": "response.function_call_arguments.delta", "item_id": c["id"], "output_index": i, "delta": args},
                 {"type": "response.output_item.done", "output_index": i, "item": {**c, "arguments": args}}]
    objs.append(_completed([]))
    events = _responses_events(objs)
    assert [b["id"] for b in final_message(events)["content"]] == [f"call_{i}" for i in range(n)]


def test_only_the_last_call_of_a_cut_answer_is_cut() -> None:
    """The calls before the last were whole when the next began: a fenced one keeps its repaired
    input, and only the last gives its whole members (a review: the fence gave {})."""
    fenced, cut = '```json\n{"path": "a.py"}\n```', '{"path": "b.py", "content": "half'
    body = {"id": "x", "choices": [{"index": 0, "finish_reason": "length", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "read", "arguments": fenced}},
            {"id": "c2", "type": "function", "function": {"name": "write", "arguments": cut}}]}}]}
    message, _ = message_from_body(body, model="m", new_id=counter_ids())
    assert [b["input"] for b in message["content"]] == [{"path": "a.py"}, {"path": "b.py"}]
    output = [{"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "read", "arguments": fenced},
              {"type": "function_call", "id": "fc_2", "call_id": "c2", "name": "write", "arguments": cut}]
    answer = to_messages_response({"id": "r", "status": "incomplete", "output": output,
                                   "incomplete_details": {"reason": "max_output_tokens"}},
                                  model="m", new_id=counter_ids(), tool_names={})
    assert [b["input"] for b in answer["content"]] == [{"path": "a.py"}, {"path": "b.py"}]


def test_a_chat_stream_places_a_cut_call_held_whole_as_the_json_answer_does() -> None:
    """A second call waits whole while the first streams live, and is placed at the end; cut by
    the output limit, it was a repaired guess (the cut string closed) where the JSON answer now
    gives its whole members (a review)."""
    cut = '{"file_path": "/a", "content": "line one\\nline tw'
    pb = Playbook()
    pb.feed(chunk(tool_delta(0, "call_1", "read", '{"path": "x"}')))
    pb.feed(chunk(tool_delta(1, "call_2", "write", cut[:20])))
    pb.feed(chunk(tool_delta(1, arguments=cut[20:])))
    pb.feed(chunk(finish="length", usage={"prompt_tokens": 3, "completion_tokens": 4}))
    streamed = [b["input"] for b in final_message(pb.events)["content"] if b["type"] == "tool_use"]
    assert streamed == [{"path": "x"}, {"file_path": "/a"}]
    assert chat_json_cut(cut) == {"file_path": "/a"}


SAID_WHOLE_CASES = [  # (arguments under finish_reason "tool_calls" or "stop", input, stop_reason)
    # Cut inside a value: older Ollama and llama.cpp builds say "tool_calls" at their token limit.
    # Closed up, this was a Write of half a file with stop_reason tool_use (probe A).
    ('{"path": "a.py", "content": "print(1', {"path": "a.py"}, "max_tokens"),
    ('{"path": "a.py", "content": "x\\', {"path": "a.py"}, "max_tokens"),  # inside an escape
    ('{"command": "ls", ', {"command": "ls"}, "max_tokens"),
    ('{"command": "ls", "timeout"', {"command": "ls"}, "max_tokens"),
    ('{"a": tr', {}, "max_tokens"),
    # Only closing brackets missing after a value, a small model's habit: closed as before.
    ('{"command": "ls"', {"command": "ls"}, "tool_use"),
    ('{"a": {"b": true}', {"a": {"b": True}}, "tool_use"),
    ('{"file_path": "/a", "limit": 100', {"file_path": "/a", "limit": 100}, "tool_use"),
    ('{"a": [1, 2', {"a": [1, 2]}, "tool_use"),
    # Invalid, not cut: repaired as before (PROTOCOL.md case 42).
    ("{bad json", {}, "tool_use"),
]


@pytest.mark.parametrize("finish", ["tool_calls", "stop"])
@pytest.mark.parametrize("arguments, expected, reason", SAID_WHOLE_CASES, ids=[c[0] for c in SAID_WHOLE_CASES])
def test_a_call_cut_inside_a_value_is_a_cut_answer_whatever_the_finish_reason_says(
        arguments: str, expected: Dict[str, Any], reason: str, finish: str, caplog: Any) -> None:
    body = {"id": "x", "choices": [{"index": 0, "finish_reason": finish, "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "Write", "arguments": arguments}}]}}]}
    message, warnings = message_from_body(body, model="m", new_id=counter_ids())
    [block] = [b for b in message["content"] if b["type"] == "tool_use"]
    assert (block["input"], message["stop_reason"]) == (expected, reason)
    assert any("answered as max_tokens" in w for w in warnings) == (reason == "max_tokens")
    # The stream ends the same way: the same stop_reason, no error, and a warning in the log.
    pb = Playbook()
    pb.feed(chunk(tool_delta(0, "call_1", "Write", arguments)))
    with caplog.at_level(logging.WARNING, logger="claudeproxy"):
        pb.feed(chunk(finish=finish, usage={"prompt_tokens": 3, "completion_tokens": 4}))
    assert pb.complete
    assert_valid_event_sequence(pb.events, allow_error=False)
    [delta] = [e for e in pb.events if e["type"] == "message_delta"]
    assert delta["delta"]["stop_reason"] == reason
    assert any("answered as max_tokens" in r.getMessage() for r in caplog.records) == (reason == "max_tokens")


def test_only_the_last_call_decides_whether_the_answer_was_cut_streamed_or_not(caplog: Any) -> None:
    """A limit cuts the last call; an earlier call's odd arguments are that call's (review F: the
    stream looked at any call and the JSON answer at the last)."""
    calls = [("Read", '{"file_path": "/a", "note": "x'), ("Bash", '{"command": "ls"}')]
    body = {"id": "x", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(calls)]}}]}
    message, _ = message_from_body(body, model="m", new_id=counter_ids())
    pb = Playbook()
    for i, (name, args) in enumerate(calls):
        pb.feed(chunk(tool_delta(i, f"call_{i}", name, args)))
    pb.feed(chunk(finish="tool_calls", usage={"prompt_tokens": 3, "completion_tokens": 4}))
    [delta] = [e for e in pb.events if e["type"] == "message_delta"]
    assert message["stop_reason"] == delta["delta"]["stop_reason"] == "tool_use"
