"""ResponsesFold: OpenAI Responses SSE -> Anthropic events (RESPONSES.md sections 3, 6, 7).

``fixtures/responses_api/streams/<case>.upstream.sse`` are raw Responses transcripts
written by hand (event lines, ``sequence_number``, item ids, ``obfuscation`` pads);
``<case>.anthropic.sse`` is what the client must receive (signatures written as
``{"cpx1": payload}``); ``<case>.meta.json`` may say the stream ``raises`` before
anything was written. Every transcript is driven the way the relay drives a fold,
checked against the grammar, re-chunked at random byte offsets, and compared with
the JSON answer for the same case (same blocks). The three-turn round trip at the
end checks that reasoning comes back upstream where it was.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import random
import time
from typing import Any, Dict, Iterable, List, Tuple

import pytest
from sse_checks import assert_valid_event_sequence, events_of, final_message, parse_sse
from stream_playbook import (
    MAX_LINE,
    counter_ids,
    decode_cpx1,
    diff_text,
    drive,
    same_events,
)
from test_stream_rechunk import FakeSocket, _Raw, chunked

from claudeproxy.anthropic_types import parse_messages_request
from claudeproxy.apis.names import upstream_tool_id
from claudeproxy.apis.responses.request import to_responses_request
from claudeproxy.apis.responses.response import to_messages_response
from claudeproxy.apis.responses.stream import LocalStopResponsesFold, ResponsesFold
from claudeproxy.errors import ProxyError, UpstreamUnavailable
from claudeproxy.sse import encode_event
from claudeproxy.upstream import iter_lines

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "responses_api")
STREAMS = os.path.join(FIXTURES, "streams")
RESPONSES = os.path.join(FIXTURES, "responses")
CASES = sorted(f[: -len(".upstream.sse")] for f in os.listdir(STREAMS) if f.endswith(".upstream.sse"))
BOTH = [c for c in CASES if os.path.exists(os.path.join(RESPONSES, f"{c}.response.json"))]
SEEDS = 40
Event = Dict[str, Any]


def read(directory: str, name: str) -> bytes:
    with open(os.path.join(directory, name), "rb") as fh:
        return fh.read()


def meta_of(case: str) -> Dict[str, Any]:
    path = os.path.join(STREAMS, f"{case}.meta.json")
    return json.loads(read(STREAMS, f"{case}.meta.json")) if os.path.exists(path) else {}


def make_fold(**kw: Any) -> ResponsesFold:
    args: Dict[str, Any] = {"message_id": "msg_test", "model": "claude-test", "input_tokens": 25, "new_id": counter_ids()}
    args.update(kw)
    return ResponsesFold(**args)


def run_lines(lines: Iterable[bytes], fold: ResponsesFold) -> List[Event]:
    """Events as the relay produces them (``stream_playbook.drive``: the relay's own ending rule)."""
    return drive(fold, lines, clean=True)


def run_body(body: bytes, **kw: Any) -> List[Event]:
    return run_lines(iter_lines(io.BytesIO(body), MAX_LINE), make_fold(**kw))


def http_events(body: bytes, seed: int) -> List[Event]:
    """The body cut into HTTP/1.1 chunks at random offsets and read back through a real HTTPResponse."""
    rng = random.Random(seed)
    resp = http.client.HTTPResponse(FakeSocket(_Raw(chunked(body, rng, terminate=True), rng, None, strict=False)))  # type: ignore[arg-type]
    try:
        resp.begin()
        return run_lines(iter_lines(resp, MAX_LINE), make_fold())
    finally:
        resp.close()


def expected_events(case: str) -> List[Event]:
    pairs = parse_sse(read(STREAMS, f"{case}.anthropic.sse"))
    assert all(name == payload["type"] for name, payload in pairs)
    return [payload for _, payload in pairs]


def plain_signatures(message: Dict[str, Any]) -> Dict[str, Any]:
    out = json.loads(json.dumps(message))
    for block in out.get("content", []):
        if block.get("type") == "thinking" and isinstance(block.get("signature"), str):
            block["signature"] = {"cpx1": decode_cpx1(block["signature"])}
    return out


# --------------------------------------------------------------------------
# Golden transcripts.


def test_cases_cover_the_brief() -> None:
    assert {"text", "parallel_calls", "reasoning_summary", "incomplete_max_tokens", "failed_context_length",
            "failed_after_text", "error_event_mid_stream", "error_event_nested_first", "refusal",
            "web_search_citations", "compat_args_only_at_done", "truncated"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_golden_transcript(case: str) -> None:
    body, raises = read(STREAMS, f"{case}.upstream.sse"), meta_of(case).get("raises")
    if raises:
        with pytest.raises(ProxyError) as info:
            run_body(body)
        assert (info.value.status, info.value.error_type) == (raises["status"], raises["type"])
        assert raises["message"] in info.value.message
        return
    got = run_body(body)
    assert same_events(got, expected_events(case)), diff_text(got, expected_events(case))
    assert_valid_event_sequence(got)
    # Each payload goes out as one frame whose event: name is its type.
    assert events_of(b"".join(encode_event(e) for e in got)) == json.loads(json.dumps(got))


@pytest.mark.parametrize("case", CASES)
def test_rechunked_body_gives_identical_events(case: str) -> None:
    body = read(STREAMS, f"{case}.upstream.sse")
    if meta_of(case).get("raises"):
        for seed in range(SEEDS):
            with pytest.raises(ProxyError):
                http_events(body, seed)
        return
    reference = run_body(body)
    for seed in range(SEEDS):
        got = http_events(body, seed)
        assert got == reference, f"{case} seed={seed}\n" + diff_text(got, reference)


@pytest.mark.parametrize("case", ["text", "reasoning_summary", "web_search_citations"])
def test_crlf_and_cr_line_ends_change_nothing(case: str) -> None:
    body = read(STREAMS, f"{case}.upstream.sse")
    reference = run_body(body)
    assert run_body(body.replace(b"\n", b"\r\n")) == reference
    assert run_body(body.replace(b"\n", b"\r")) == reference


# --------------------------------------------------------------------------
# Stream == JSON.


@pytest.mark.parametrize("case", BOTH)
def test_stream_and_json_answer_agree(case: str) -> None:
    obj = json.loads(read(RESPONSES, f"{case}.response.json"))
    terminal = [e for e in events_of_upstream(case) if e["type"] in ("response.completed", "response.incomplete", "response.failed")]
    assert terminal and terminal[-1]["response"] == obj, "the fixture's stream and JSON answer differ"
    try:
        message = to_messages_response(obj, model="claude-test", new_id=counter_ids(), tool_names={})
    except ProxyError as exc:
        json_error = exc
    else:
        json_error = None
    if json_error is not None:
        events = []
        try:
            events = run_body(read(STREAMS, f"{case}.upstream.sse"))
        except ProxyError as exc:
            assert exc.error_type == json_error.error_type and exc.status == json_error.status
            return
        assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == json_error.error_type
        return
    streamed = final_message(run_body(read(STREAMS, f"{case}.upstream.sse")))
    assert plain_signatures(streamed)["content"] == plain_signatures(message)["content"]
    assert streamed["stop_reason"] == message["stop_reason"]
    if obj.get("usage"):  # without usage the stream estimates, the JSON answer cannot
        assert streamed["usage"] == message["usage"]


def events_of_upstream(case: str) -> List[Dict[str, Any]]:
    return [json.loads(e.decode("utf-8")[6:]) for e in read(STREAMS, f"{case}.upstream.sse").split(b"\n") if e.startswith(b"data: {")]


@pytest.mark.parametrize("case", BOTH)
def test_json_answer_to_a_stream_request(case: str) -> None:
    obj = json.loads(read(RESPONSES, f"{case}.response.json"))
    fold = make_fold()
    try:
        events = fold.from_json(obj)
    except ProxyError:
        return  # the relay answers a plain error
    assert_valid_event_sequence(events, allow_error=False)
    message = to_messages_response(obj, model="claude-test", new_id=counter_ids(), tool_names={})
    assert final_message(events)["content"] == message["content"]
    assert fold.stop_reason == message["stop_reason"]
    # The call record's usage: the upstream's, or none at all where it reported none (the client's
    # message has zeros there, no count to bill by).
    assert fold.usage == (message["usage"] if isinstance(obj.get("usage"), dict) else {})


def test_from_json_after_pings_sends_no_second_message_start() -> None:
    fold = make_fold()
    head = fold.start()
    events = fold.from_json(json.loads(read(RESPONSES, "text.response.json")))
    assert [e["type"] for e in head] == ["message_start"]
    assert_valid_event_sequence(head + events, allow_error=False)
    assert fold.fail(UpstreamUnavailable("late")) == []


# --------------------------------------------------------------------------
# The relay's interface.


def sse(obj: Dict[str, Any], named: bool = True) -> bytes:
    return (f"event: {obj['type']}\n".encode() if named else b"") + b"data: " + json.dumps(obj).encode() + b"\n\n"


def feed(fold: ResponsesFold, *objs: Dict[str, Any]) -> List[Event]:
    out: List[Event] = []
    for obj in objs:
        for line in io.BytesIO(sse(obj)).readlines():
            out += fold.feed_line(line)
    return out


CREATED = {"type": "response.created", "response": {"id": "resp_x", "status": "in_progress", "output": [], "usage": None}}


def delta(text: str, oi: int = 0) -> Dict[str, Any]:
    return {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": oi, "content_index": 0, "delta": text}


def completed(**response: Any) -> Dict[str, Any]:
    body: Dict[str, Any] = {"id": "resp_x", "status": "completed", "output": [], "usage": {"input_tokens": 3, "output_tokens": 2}}
    body.update(response)
    return {"type": "response.completed", "response": body}


def test_a_call_whose_done_never_came_is_placed_from_the_final_object() -> None:
    """LM Studio style: argument deltas, no output_item.added or .done; the call_id is only in
    response.completed's output. The call must reach the client, not vanish."""
    fold = make_fold()
    call = {"type": "function_call", "id": "fc_3", "call_id": "call_3", "name": "Read", "arguments": '{"p":"c"}'}
    events = feed(fold, CREATED,
                  {"type": "response.function_call_arguments.delta", "item_id": "fc_3", "output_index": 0, "delta": '{"p"'},
                  {"type": "response.function_call_arguments.delta", "item_id": "fc_3", "output_index": 0, "delta": ':"c"}'},
                  {"type": "response.function_call_arguments.done", "item_id": "fc_3", "output_index": 0,
                   "arguments": '{"p":"c"}', "name": "Read"},
                  completed(output=[call]))
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    assert message["content"] == [{"type": "tool_use", "id": "call_3", "name": "Read", "input": {"p": "c"}}]
    assert message["stop_reason"] == "tool_use"


def _args(oi: int, piece: str) -> Dict[str, Any]:
    return {"type": "response.function_call_arguments.delta", "item_id": f"fc_{oi}", "output_index": oi, "delta": piece}


def _call(oi: int, args: str = "") -> Dict[str, Any]:
    return {"type": "function_call", "id": f"fc_{oi}", "call_id": f"call_{oi}", "name": "Read", "arguments": args}


@pytest.mark.parametrize("done_order", [(0, 1), (1, 0)])
@pytest.mark.parametrize("with_done", [True, False])
def test_parallel_calls_interleaved_by_the_server_each_arrive_whole(done_order: Any, with_done: bool) -> None:
    """Deltas of two calls in turns (0, 1, 0, 1): one block at a time, the second waits (RESPONSES.md
    7 pitfall 8); the first's later deltas were lost, its input invalid JSON. Also when the calls'
    .done items come in the other order, or never (only the final object names them)."""
    fold = make_fold()
    full = {0: '{"p":"a"}', 1: '{"p":"b"}'}
    objs: List[Dict[str, Any]] = [CREATED]
    objs += [{"type": "response.output_item.added", "output_index": oi, "item": _call(oi)} for oi in (0, 1)]
    objs += [_args(0, '{"p"'), _args(1, '{"p"'), _args(0, ':"a"}'), _args(1, ':"b"}')]
    if with_done:
        objs += [{"type": "response.output_item.done", "output_index": oi, "item": _call(oi, full[oi])} for oi in done_order]
    objs.append(completed(output=[_call(0, full[0]), _call(1, full[1])]))
    events = feed(fold, *objs)
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    assert message["content"] == [{"type": "tool_use", "id": "call_0", "name": "Read", "input": {"p": "a"}},
                                  {"type": "tool_use", "id": "call_1", "name": "Read", "input": {"p": "b"}}]
    assert message["stop_reason"] == "tool_use"


def test_message_start_waits_for_the_first_block() -> None:
    fold = make_fold()
    assert feed(fold, CREATED, {"type": "response.in_progress", "response": CREATED["response"]}) == []
    assert feed(fold, {"type": "response.output_item.added", "output_index": 0, "item": {"type": "reasoning", "id": "rs_1"}}) == []
    out = feed(fold, delta("hi", 1))
    assert [e["type"] for e in out] == ["message_start", "content_block_start", "content_block_delta"]
    assert out[0]["message"]["id"] == "msg_test"  # the fold's own, not the upstream's (servers repeat theirs)


def test_complete_finishing_and_metrics() -> None:
    fold = make_fold()
    feed(fold, CREATED, delta("hi"))
    assert not fold.complete and not fold.finishing
    out = feed(fold, completed())
    assert fold.complete and fold.finishing
    assert [e["type"] for e in out] == ["content_block_stop", "message_delta", "message_stop"]
    assert fold.stop_reason == "end_turn" and fold.usage["input_tokens"] == 3
    assert feed(fold, delta("late")) == [] and fold.end(clean=True) == ([], None)
    assert fold.fail(UpstreamUnavailable("x")) == []


def test_a_failure_that_carries_usage_leaves_it_for_the_call_record() -> None:
    """response.failed after output, with the usage it was billed: the fold's usage (what the call
    record reads) is that, not nothing; a failure without usage leaves it unknown ({})."""
    fold = make_fold()
    feed(fold, CREATED, delta("hi"))
    assert fold.usage == {}
    failed = {"type": "response.failed", "response": {"id": "resp_x", "status": "failed", "output": [],
              "error": {"code": "server_error", "message": "boom"},
              "usage": {"input_tokens": 1000, "output_tokens": 50, "input_tokens_details": {"cached_tokens": 100}}}}
    with pytest.raises(ProxyError):
        feed(fold, failed)
    assert fold.usage == {"input_tokens": 900, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100,
                          "output_tokens": 50}
    bare = make_fold()
    feed(bare, CREATED, delta("hi"))
    with pytest.raises(ProxyError):
        feed(bare, {**failed, "response": {**failed["response"], "usage": None}})
    assert bare.usage == {}
    empty = make_fold()
    feed(empty, CREATED, {"type": "response.in_progress", "response": {**CREATED["response"], "usage": {}}})
    assert empty.usage == {}  # an empty usage says nothing: still unknown, not 0 tokens


def test_streamed_reasoning_tokens_are_thinking_tokens() -> None:
    """The stream's message_delta maps reasoning_tokens to thinking_tokens, as the JSON answer does."""
    fold = make_fold()
    out = feed(fold, CREATED, delta("hi"), completed(usage={"input_tokens": 100, "output_tokens": 300,
                                                            "output_tokens_details": {"reasoning_tokens": 250}}))
    [message_delta] = [e for e in out if e["type"] == "message_delta"]
    assert message_delta["usage"]["output_tokens_details"] == {"thinking_tokens": 250}
    assert final_message(out)["usage"]["output_tokens_details"] == {"thinking_tokens": 250}


def test_done_marker_without_terminal_event_is_still_truncation() -> None:
    fold = make_fold()
    feed(fold, CREATED, delta("hi"))
    fold.feed_line(b"data: [DONE]\n")
    fold.feed_line(b"\n")
    assert fold.finishing and not fold.complete
    events, error = fold.end(clean=True)
    assert events == [] and isinstance(error, UpstreamUnavailable) and "ended early" in error.message


def test_clean_eof_after_nothing_is_an_error_too() -> None:
    fold = make_fold()
    assert fold.end(clean=True)[1] is not None
    assert fold.start()[0]["type"] == "message_start" and fold.start() == []


def test_last_event_without_blank_line_is_read_at_eof() -> None:
    fold = make_fold()
    feed(fold, CREATED, delta("hi"))
    fold.feed_line(b"data: " + json.dumps(completed()).encode())
    events, error = fold.end(clean=True)
    assert error is None and events[-1] == {"type": "message_stop"}


def test_error_event_with_plain_text_and_garbage_lines() -> None:
    fold = make_fold()
    for _ in range(10):
        assert fold.feed_line(b"data: not json\n") + fold.feed_line(b"\n") == []
    assert fold.skipped_events == 10
    with pytest.raises(ProxyError):
        fold.feed_line(b"event: error\n")
        fold.feed_line(b"data: upstream exploded\n")
        fold.feed_line(b"\n")
    broken = make_fold()
    with pytest.raises(UpstreamUnavailable):
        for _ in range(60):
            broken.feed_line(b"data: {broken\n\n")


def test_secret_in_an_error_event_is_redacted() -> None:
    secret = "sk-UPSTREAM-SENTINEL-0123456789"
    fold = make_fold(secrets=(secret,))
    with pytest.raises(ProxyError) as info:
        feed(fold, {"type": "error", "code": "server_error", "message": f"key {secret} rejected"})
    assert secret not in info.value.message


def test_deltas_missing_are_filled_from_done_events() -> None:
    fold = make_fold()
    events = feed(
        fold, CREATED,
        {"type": "response.output_item.added", "output_index": 0, "item": {"type": "reasoning", "id": "rs_1", "summary": []}},
        {"type": "response.reasoning_summary_text.delta", "output_index": 0, "summary_index": 0, "delta": "Pla"},
        {"type": "response.reasoning_summary_text.done", "output_index": 0, "summary_index": 0, "text": "Plan"},
        {"type": "response.output_item.done", "output_index": 0, "item": {"type": "reasoning", "id": "rs_1",
         "summary": [{"type": "summary_text", "text": "Plan"}, {"type": "summary_text", "text": "More"}], "encrypted_content": "B"}},
        {"type": "response.output_text.delta", "output_index": 1, "content_index": 0, "delta": "Hel"},
        {"type": "response.output_text.done", "output_index": 1, "content_index": 0, "text": "Hello"},
        {"type": "response.output_item.done", "output_index": 1, "item": {"type": "message", "content": [
            {"type": "output_text", "text": "Hello", "annotations": []}, {"type": "output_text", "text": "Second", "annotations": []}]}},
        completed(),
    )
    assert_valid_event_sequence(events, allow_error=False)
    content = final_message(events)["content"]
    assert [b.get("thinking", b.get("text")) for b in content] == ["Plan\n\nMore", "Hello", "Second"]


def test_items_the_stream_never_mentioned_come_from_the_final_object() -> None:
    # A server that sends only lifecycle events and the finished response.
    output = [{"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "B"},
              {"type": "message", "content": [{"type": "output_text", "text": "Hi", "annotations": []}]},
              {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"}]
    fold = make_fold()
    events = feed(fold, CREATED, completed(output=output))
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    assert [b["type"] for b in message["content"]] == ["thinking", "text", "tool_use"]
    assert message["stop_reason"] == "tool_use" and message["content"][2]["input"] == {"a": 1}


def test_non_object_arguments_wait_for_done_and_are_normalised() -> None:
    fold = make_fold()
    events = feed(
        fold, CREATED,
        {"type": "response.output_item.added", "output_index": 0, "item": {"type": "function_call", "call_id": "c1", "name": "f", "arguments": ""}},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": "\"{\\\"a\\\": 1}\""},
        {"type": "response.output_item.done", "output_index": 0, "item": {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "\"{\\\"a\\\": 1}\""}},
        completed(),
    )
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["content"] == [{"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}}]


@pytest.mark.parametrize("closing", ["response.function_call_arguments.done", "response.output_item.done"])
def test_arguments_sent_as_an_object_are_the_input(closing: str) -> None:
    args = {"path": "/obj", "tags": ["é", 2]}
    call = {"type": "function_call", "call_id": "c1", "name": "f"}
    done = ({"type": closing, "output_index": 0, "arguments": args} if closing.endswith("arguments.done")
            else {"type": closing, "output_index": 0, "item": {**call, "arguments": args}})
    events = feed(make_fold(), CREATED,
                  {"type": "response.output_item.added", "output_index": 0, "item": {**call, "arguments": ""}},
                  done, completed())
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["content"] == [{"type": "tool_use", "id": "c1", "name": "f", "input": args}]


def test_tool_names_map_back_and_duplicate_call_ids_are_suffixed() -> None:
    fold = make_fold(tool_names={"mcp_x_1a2b": "mcp.x"})
    item = {"type": "function_call", "call_id": "c1", "name": "mcp_x_1a2b", "arguments": "{}"}
    events = feed(fold, CREATED,
                  {"type": "response.output_item.added", "output_index": 0, "item": item},
                  {"type": "response.output_item.done", "output_index": 0, "item": item},
                  {"type": "response.output_item.added", "output_index": 1, "item": item},
                  {"type": "response.output_item.done", "output_index": 1, "item": item},
                  completed())
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert [(b["id"], b["name"]) for b in starts] == [("c1", "mcp.x"), ("c1-2", "mcp.x")]


@pytest.mark.parametrize("field", ["output_index", "content_index"])
@pytest.mark.parametrize("value", [[0], {"i": 0}])
def test_an_index_that_is_an_array_or_object_does_not_crash(field: str, value: Any) -> None:
    """Found by the upstream fuzz (tests/reliability, R2): indices are dict keys, and a list there
    raised TypeError (unhashable), which the relay does not catch: a 500 and an ERROR record."""
    body = read(STREAMS, "text.upstream.sse").replace(f'"{field}": 0'.encode(), f'"{field}": {json.dumps(value)}'.encode())
    events = run_body(body)
    assert_valid_event_sequence(events)


def test_two_streams_do_not_share_state() -> None:
    body = read(STREAMS, "parallel_calls.upstream.sse")
    assert run_body(body) == run_body(body)


# --------------------------------------------------------------------------
# The reasoning round trip over three turns (RESPONSES.md 7.1-7.3).

TOOLS = [{"name": "Read", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}},
         {"name": "Grep", "input_schema": {"type": "object", "properties": {"pattern": {"type": "string"}}}}]


def request(messages: List[Dict[str, Any]]) -> Dict[str, Any]:
    body = {"model": "claude-opus-5-5", "max_tokens": 32000, "stream": True, "thinking": {"type": "adaptive"},
            "output_config": {"effort": "medium"}, "tools": TOOLS, "messages": messages}
    return to_responses_request(parse_messages_request(body), model="gpt-5.4", stream=True).body


def claude_signature() -> str:
    return base64.b64encode(b"\x12\x34 a real Claude signature blob").decode("ascii")


def test_reasoning_round_trip_over_three_turns() -> None:
    history: List[Dict[str, Any]] = [{"role": "user", "content": "Find the TODOs in a.py"}]
    first = request(history)
    assert first["include"] == ["reasoning.encrypted_content"]
    assert first["reasoning"] == {"effort": "medium", "summary": "auto"}

    # Turn 1: reasoning (no summary) + two parallel calls, streamed.
    turn1 = final_message(run_body(read(STREAMS, "parallel_calls.upstream.sse")))
    # The client keeps the blocks as they came, and adds a thinking block from another backend.
    history.append({"role": "assistant", "content": [{"type": "thinking", "thinking": "from Claude", "signature": claude_signature()}]
                    + turn1["content"]})
    history.append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_Qe4Ua1", "content": "# TODO: fix"},
        {"type": "tool_result", "tool_use_id": "call_Zr8Kb2", "content": "a.py:1"}]})
    second = request(history)["input"]
    kinds = [(i["type"], i.get("id") or i.get("call_id")) for i in second]
    assert kinds == [("message", None), ("reasoning", "rs_0a1b2c3d4e5f6071"), ("function_call", "call_Qe4Ua1"),
                     ("function_call", "call_Zr8Kb2"), ("function_call_output", "call_Qe4Ua1"),
                     ("function_call_output", "call_Zr8Kb2")]
    assert second[1] == {"type": "reasoning", "id": "rs_0a1b2c3d4e5f6071", "summary": [], "encrypted_content": "gAAAAABoyZrs1FULL_BLOB-_=="}

    # Turn 2: reasoning with a summary, then the answer text.
    turn2 = final_message(run_body(read(STREAMS, "reasoning_summary.upstream.sse")))
    history.append({"role": "assistant", "content": turn2["content"]})
    history.append({"role": "user", "content": "Thanks. Now fix it."})
    third = request(history)["input"]
    assert third[: len(second)] == second  # earlier turns unchanged: the prompt cache holds
    tail = third[len(second):]
    assert [i["type"] for i in tail] == ["reasoning", "message", "message"]
    assert tail[0]["id"] == "rs_1f2e3d4c5b6a7988" and tail[0]["encrypted_content"] == "gAAAAABoyZrs2_BLOB=="
    assert tail[0]["summary"] == [{"type": "summary_text", "text": "**Planning**\n\nThe user wants a haiku.\n\nCount the syllables: 5, 7, 5."}]
    assert tail[1]["role"] == "assistant" and tail[1]["content"][0]["type"] == "output_text"
    assert tail[2] == {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Thanks. Now fix it."}]}


# --------------------------------------------------------------------------
# Stop strings: the API takes none, so LocalStopResponsesFold matches them (PROTOCOL.md 2.4).


def stop_fold(*stops: str, **kw: Any) -> LocalStopResponsesFold:
    args: Dict[str, Any] = {"message_id": "msg_test", "model": "claude-test", "input_tokens": 25, "new_id": counter_ids()}
    args.update(kw)
    return LocalStopResponsesFold(stop_sequences=stops, **args)


# Never in any fixture, but their first characters often end a delta: text is held back and released.
NEVER = ("e\x01", " \x01", ".\x01")
ENDS_CLEANLY = [c for c in CASES if not meta_of(c).get("raises") and expected_events(c)[-1]["type"] == "message_stop"]


@pytest.mark.parametrize("case", ENDS_CLEANLY)
def test_stop_strings_that_never_match_change_only_delta_boundaries(case: str) -> None:
    got = run_lines(iter_lines(io.BytesIO(read(STREAMS, f"{case}.upstream.sse")), MAX_LINE), stop_fold(*NEVER))
    assert same_events(got, expected_events(case), merge=True), diff_text(got, expected_events(case))
    assert_valid_event_sequence(got, allow_error=False)


def first_text(obj: Dict[str, Any]) -> str:
    for item in obj.get("output") or []:
        for part in item.get("content") or [] if item.get("type") == "message" else []:
            if part.get("type") == "output_text" and len(part.get("text", "")) > 6:
                return part["text"]
    return ""


@pytest.mark.parametrize("case", BOTH)
def test_a_stop_string_ends_stream_and_json_answer_alike(case: str) -> None:
    obj = json.loads(read(RESPONSES, f"{case}.response.json"))
    text = first_text(obj)
    if not text or obj.get("status") == "failed":
        return
    k = 2 * len(text) // 3
    stop = text[k: k + 3]  # split by delta boundaries in most fixtures
    message = to_messages_response(obj, model="claude-test", new_id=counter_ids(), tool_names={}, stop_sequences=(stop,))
    fold = stop_fold(stop)
    events = run_lines(iter_lines(io.BytesIO(read(STREAMS, f"{case}.upstream.sse")), MAX_LINE), fold)
    assert_valid_event_sequence(events, allow_error=False)
    streamed = final_message(events)
    assert plain_signatures(streamed)["content"] == plain_signatures(message)["content"]
    assert (streamed["stop_reason"], streamed["stop_sequence"]) == (message["stop_reason"], message["stop_sequence"])
    assert message["stop_sequence"] == stop and fold.complete
    assert "".join(b.get("text", "") for b in message["content"]).endswith(text[: text.index(stop)])
    assert fold.stop_reason == message["stop_reason"]
    # Cut at the stop string before the upstream reported its usage: the client gets an estimate,
    # the call record no count (what the upstream generated past the cut is not known).
    assert streamed["usage"]["output_tokens"] > 0 and fold.usage == {}


def test_a_stop_string_split_across_deltas_ends_the_stream_at_once() -> None:
    fold = stop_fold("A1", "E5")
    events = feed(fold, CREATED, delta("first part E"))
    assert not fold.complete
    out = feed(fold, delta("5 second part"))
    assert fold.complete  # the relay stops reading and closes the upstream response
    assert [e["type"] for e in out] == ["content_block_stop", "message_delta", "message_stop"]  # "E" was held
    message = final_message(events + out)
    assert message["content"] == [{"type": "text", "text": "first part "}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "E5")
    assert out[1]["usage"]["input_tokens"] == 25  # the estimate: the upstream's usage never came
    assert feed(fold, delta(" more"), completed()) == [] and fold.end(clean=True) == ([], None)


def test_nothing_after_a_stop_string_is_sent_and_held_text_keeps_its_place() -> None:
    fold = stop_fold("STOP")
    call = {"type": "response.output_item.added", "output_index": 1,
            "item": {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}}
    events = feed(fold, CREATED, delta("one ST"), call,  # "ST" was not the stop string: it goes first
                  delta("then STOP", oi=2), {**call, "output_index": 3}, completed())
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    assert [(b["type"], b.get("text")) for b in message["content"]] == [("text", "one ST"), ("tool_use", None),
                                                                          ("text", "then ")]
    assert (message["stop_reason"], message["stop_sequence"]) == ("tool_use", None)  # a call came before it


def test_refusals_and_reasoning_are_not_searched_for_stop_strings() -> None:
    fold = stop_fold("no")
    events = feed(
        fold, CREATED,
        {"type": "response.reasoning_summary_text.delta", "output_index": 0, "summary_index": 0, "delta": "no plan"},
        {"type": "response.refusal.delta", "output_index": 1, "content_index": 0, "delta": "I say no"},
        completed())
    message = final_message(events)
    assert [b.get("thinking", b.get("text")) for b in message["content"]] == ["no plan", "I say no"]
    assert message["stop_reason"] == "refusal"


def test_a_stop_string_in_an_item_only_the_final_object_has() -> None:
    output = [{"type": "message", "content": [{"type": "output_text", "text": "Hi END there", "annotations": []}]},
              {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}]
    events = feed(stop_fold("END"), CREATED, completed(output=output))
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    assert message["content"] == [{"type": "text", "text": "Hi "}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")
    assert message["usage"]["output_tokens"] == 2  # the final object's usage


def test_from_json_with_a_stop_string() -> None:
    obj = {"id": "r", "status": "completed", "usage": {"input_tokens": 3, "output_tokens": 2},
           "output": [{"type": "message", "content": [{"type": "output_text", "text": "a END b", "annotations": []}]}]}
    message = final_message(stop_fold("END").from_json(obj))
    assert message["content"] == [{"type": "text", "text": "a "}] and message["stop_sequence"] == "END"


# --------------------------------------------------------------------------
# Servers that omit output_index, and events out of order.


def _no_index(obj: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "output_index"}


def _call_events(fc: str, call: str, args: str) -> List[Dict[str, Any]]:
    item = {"type": "function_call", "id": fc, "call_id": call, "name": "Read", "arguments": ""}
    return [{"type": "response.output_item.added", "item": item},
            {"type": "response.function_call_arguments.delta", "item_id": fc, "delta": args},
            {"type": "response.output_item.done", "item": {**item, "arguments": args}}]


@pytest.mark.parametrize("text_first", [False, True])
def test_parallel_calls_without_output_index_are_all_kept(text_first: bool) -> None:
    """Some compatible servers send no output_index (RESPONSES.md 7 pitfall 8): the items are told
    apart by their ids. All events were one item: the second call was lost, and after a message
    item both were, with stop_reason end_turn."""
    args = {"A": '{"path":"a"}', "B": '{"path":"b"}'}
    message = {"type": "message", "id": "msg_1", "role": "assistant",
               "content": [{"type": "output_text", "text": "Reading both.", "annotations": []}]}
    objs: List[Dict[str, Any]] = [CREATED]
    if text_first:
        objs += [{"type": "response.output_item.added", "item": {**message, "content": []}},
                 {"type": "response.output_text.delta", "item_id": "msg_1", "content_index": 0, "delta": "Reading both."},
                 {"type": "response.output_item.done", "item": message}]
    objs += _call_events("fc_1", "call_A", args["A"]) + _call_events("fc_2", "call_B", args["B"])
    output = ([message] if text_first else []) + [
        {"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{c}", "name": "Read", "arguments": args[c]}
        for n, c in ((1, "A"), (2, "B"))]
    events = feed(make_fold(), *objs, completed(output=output))
    assert_valid_event_sequence(events, allow_error=False)
    got = final_message(events)
    calls = [{"type": "tool_use", "id": "call_A", "name": "Read", "input": {"path": "a"}},
             {"type": "tool_use", "id": "call_B", "name": "Read", "input": {"path": "b"}}]
    assert got["content"] == ([{"type": "text", "text": "Reading both."}] if text_first else []) + calls
    assert got["stop_reason"] == "tool_use"
    json_answer = to_messages_response({"status": "completed", "output": output}, model="m", new_id=counter_ids(),
                                       tool_names={})
    assert json_answer["content"] == got["content"]


def test_items_only_in_the_final_object_still_come_when_events_lack_output_index() -> None:
    """A call the stream never mentioned, after items it streamed without output_index: placed from
    response.completed (it used to be skipped whenever an event lacked output_index)."""
    late = {"type": "function_call", "id": "fc_9", "call_id": "call_Z", "name": "Read", "arguments": '{"path":"z"}'}
    first = {"type": "function_call", "id": "fc_1", "call_id": "call_A", "name": "Read", "arguments": '{"path":"a"}'}
    events = feed(make_fold(), CREATED, *_call_events("fc_1", "call_A", first["arguments"]),
                  completed(output=[first, late]))
    assert_valid_event_sequence(events, allow_error=False)
    assert [b["id"] for b in final_message(events)["content"]] == ["call_A", "call_Z"]


def test_a_delta_after_its_item_is_done_is_not_sent_again() -> None:
    """A late output_text.delta (or summary delta) for an item whose output_item.done came: the
    block had the whole text; the delta made a second block repeating part of it."""
    message = {"type": "message", "id": "msg_1", "content": [{"type": "output_text", "text": "Hello", "annotations": []}]}
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Plan"}],
                 "encrypted_content": "B"}
    events = feed(make_fold(), CREATED,
                  {"type": "response.output_item.done", "output_index": 0, "item": reasoning},
                  {"type": "response.reasoning_summary_text.delta", "output_index": 0, "summary_index": 0, "delta": "Pl"},
                  {"type": "response.output_item.done", "output_index": 1, "item": message},
                  delta("Hel", 1),
                  {"type": "response.output_text.done", "output_index": 1, "content_index": 0, "text": "Hello"},
                  completed(output=[reasoning, message]))
    assert_valid_event_sequence(events, allow_error=False)
    content = final_message(events)["content"]
    assert [b.get("thinking", b.get("text")) for b in content] == ["Plan", "Hello"]


def test_text_for_an_earlier_item_after_a_call_is_neither_lost_nor_repeated() -> None:
    """Text of item 0, a call (item 1), more text of item 0: blocks cannot reopen, so the rest comes
    in a block after the call; every character once (the JSON answer has it whole, before the call)."""
    call = {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "Read", "arguments": "{}"}
    message = {"type": "message", "id": "msg_1", "content": [{"type": "output_text", "text": "Hello", "annotations": []}]}
    events = feed(make_fold(), CREATED, delta("Hel"),
                  {"type": "response.output_item.added", "output_index": 1, "item": call},
                  {"type": "response.output_item.done", "output_index": 1, "item": call},
                  delta("lo"),
                  {"type": "response.output_text.done", "output_index": 0, "content_index": 0, "text": "Hello"},
                  {"type": "response.output_item.done", "output_index": 0, "item": message},
                  completed(output=[message, call]))
    assert_valid_event_sequence(events, allow_error=False)
    content = final_message(events)["content"]
    assert [(b["type"], b.get("text")) for b in content] == [("text", "Hel"), ("tool_use", None), ("text", "lo")]


def _cut_call(args: str) -> Dict[str, Any]:
    return {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "Read", "arguments": args,
            "status": "incomplete"}


def test_arguments_cut_by_the_output_limit_invent_nothing() -> None:
    """response.incomplete (max_output_tokens) inside a call's arguments: the stream passes on what
    came ('{"path":"a', of which the SDKs' partial parsers keep the whole members, as of Anthropic's
    own stream cut by max_tokens), and the JSON answer and a call placed whole give {}; closing the
    string would have made a call for a file 'a' nobody named."""
    incomplete = {"type": "response.incomplete", "response": {
        "id": "resp_x", "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
        "output": [_cut_call('{"path":"a')], "usage": {"input_tokens": 3, "output_tokens": 2}}}
    live = feed(make_fold(), CREATED,
                {"type": "response.output_item.added", "output_index": 0, "item": _cut_call("")},
                {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": '{"path":"a'},
                incomplete)
    assert_valid_event_sequence(live, allow_error=False)
    assert "".join(e["delta"]["partial_json"] for e in live if e.get("delta", {}).get("type") == "input_json_delta") \
        == '{"path":"a'
    assert live[-2]["delta"]["stop_reason"] == "max_tokens"
    whole = final_message(feed(make_fold(), CREATED, incomplete))  # a server that sends only the final object
    assert whole["content"][0]["input"] == {} and whole["stop_reason"] == "max_tokens"
    answer = to_messages_response(incomplete["response"], model="m", new_id=counter_ids(), tool_names={})
    assert answer["content"][0]["input"] == {} and answer["stop_reason"] == "max_tokens"
    # Whole arguments in an incomplete answer are the call's own; a complete answer's are still repaired.
    done = {**incomplete["response"], "output": [_cut_call('{"path":"abc"}')]}
    assert to_messages_response(done, model="m", new_id=counter_ids(), tool_names={})["content"][0]["input"] \
        == {"path": "abc"}
    fenced = {**done, "status": "completed", "output": [_cut_call('```json\n{"path":"abc"}\n```')]}
    assert to_messages_response(fenced, model="m", new_id=counter_ids(), tool_names={})["content"][0]["input"] \
        == {"path": "abc"}


@pytest.mark.parametrize("args, cut, kept", [
    ('{"file_path": "a.py", "content": "print(1', True, {"file_path": "a.py"}),  # inside a string
    ('{"file_path": "a.py", "content": ', True, {"file_path": "a.py"}),  # where no value could end
    ('{"command": "ls"', False, {"command": "ls"}),  # only the closing brace missing: closed, as before
    ('{"command": "ls"}', False, {"command": "ls"}),
])
def test_a_call_cut_short_though_the_server_said_completed_is_max_tokens(args: str, cut: bool,
                                                                          kept: Dict[str, Any]) -> None:
    """A compatible Responses server at its output limit that says completed (OpenAI's own says
    incomplete): a call whose arguments stop inside a value is a cut call, streamed or not, live
    or placed whole, as on Chat. Closed up, a Write ran with half a file and no error."""
    call = {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "Write", "arguments": args}
    done = {"type": "response.completed", "response": {
        "id": "resp_x", "status": "completed", "output": [call], "usage": {"input_tokens": 3, "output_tokens": 2}}}
    reason = "max_tokens" if cut else "tool_use"
    answer = to_messages_response(done["response"], model="m", new_id=counter_ids(), tool_names={}, warnings=[])
    assert (answer["stop_reason"], answer["content"][0]["input"]) == (reason, kept)
    only_final = final_message(feed(make_fold(), CREATED, done))
    assert (only_final["stop_reason"], only_final["content"][0]["input"]) == (reason, kept)
    # Live: the deltas went out as they came (the SDKs keep the whole members of a cut input; a
    # missing closing brace stays missing in a live call, on Chat too: PROTOCOL.md 3.4 step 7).
    live = feed(make_fold(), CREATED, {"type": "response.output_item.added", "output_index": 0, "item": {**call, "arguments": ""}},
                {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": args},
                {"type": "response.function_call_arguments.done", "output_index": 0, "arguments": args},
                {"type": "response.output_item.done", "output_index": 0, "item": call},
                {**done, "response": {**done["response"], "output": []}})  # a server whose final object lists nothing
    assert_valid_event_sequence(live, allow_error=False)
    assert [e["delta"]["stop_reason"] for e in live if e["type"] == "message_delta"] == [reason]
    assert "".join(e["delta"]["partial_json"] for e in live if e.get("delta", {}).get("type") == "input_json_delta") \
        .startswith(args[:10])


@pytest.mark.parametrize("final_item", [
    {"arguments": ""}, {"name": ""}, {}, None,
], ids=["final-args-empty", "final-no-name", "final-same", "final-lists-nothing"])
def test_a_streamed_cut_is_not_undone_by_what_the_final_object_lists(final_item: Any) -> None:
    """The live call's half a file went out: a final object whose call has no arguments or no name
    (or lists nothing) does not make it a tool_use (review G)."""
    args = '{"file_path": "a.py", "content": "print(1'
    call = {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "Write", "arguments": args}
    output = [] if final_item is None else [{**call, **final_item}]
    events = feed(make_fold(), CREATED,
                  {"type": "response.output_item.added", "output_index": 0, "item": {**call, "arguments": ""}},
                  {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": args},
                  {"type": "response.output_item.done", "output_index": 0, "item": call},
                  {"type": "response.completed", "response": {"id": "r", "status": "completed", "output": output,
                                                              "usage": {"input_tokens": 3, "output_tokens": 2}}})
    assert_valid_event_sequence(events, allow_error=False)
    assert [e["delta"]["stop_reason"] for e in events if e["type"] == "message_delta"] == ["max_tokens"]


def test_a_cut_call_said_completed_warns_on_the_json_answer() -> None:
    call = {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "Write", "arguments": '{"content": "x'}
    warnings: List[str] = []
    to_messages_response({"status": "completed", "output": [call]}, model="m", new_id=counter_ids(), tool_names={},
                         warnings=warnings)
    assert warnings == ["upstream ended with status 'completed' inside the arguments of tool call 'Write': "
                        "answered as max_tokens, as a call the output limit cut"]


def test_a_reasoning_blob_only_in_the_final_object_reaches_the_signature() -> None:
    """A reasoning item whose output_item.done never came: its blob is in response.completed's
    output, and its still open thinking block's signature carries it (was null: lost on replay)."""
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Plan"}],
                 "encrypted_content": "gAAA-blob"}
    events = feed(make_fold(), CREATED,
                  {"type": "response.output_item.added", "output_index": 0, "item": {**reasoning, "summary": [],
                                                                                     "encrypted_content": None}},
                  {"type": "response.reasoning_summary_text.delta", "output_index": 0, "summary_index": 0, "delta": "Plan"},
                  completed(output=[reasoning]))
    assert_valid_event_sequence(events, allow_error=False)
    [block] = final_message(events)["content"]
    assert decode_cpx1(block["signature"])["d"] == {"id": "rs_1", "encrypted_content": "gAAA-blob"}


def test_a_failed_search_is_shown_but_not_counted() -> None:
    """A web_search_call with status failed: an error result block, but no search request in the usage
    (it used to count as one, streamed and not)."""
    failed = {"type": "web_search_call", "id": "ws_1", "status": "failed", "action": {"type": "search", "query": "q"}}
    ok = {**failed, "id": "ws_2", "status": "completed"}
    output = [failed, ok, {"type": "message", "content": [{"type": "output_text", "text": "Hi", "annotations": []}]}]
    events = feed(make_fold(), CREATED,
                  {"type": "response.output_item.done", "output_index": 0, "item": failed},
                  {"type": "response.output_item.done", "output_index": 1, "item": ok},
                  completed(output=output))
    streamed = final_message(events)
    answer = to_messages_response({"status": "completed", "output": output, "usage": {"input_tokens": 3, "output_tokens": 2}},
                                  model="m", new_id=counter_ids(), tool_names={})
    for message in (streamed, answer):
        results = [b["content"] for b in message["content"] if b["type"] == "web_search_tool_result"]
        assert results[0] == {"type": "web_search_tool_result_error", "error_code": "unavailable"}
        assert message["usage"]["server_tool_use"] == {"web_search_requests": 1}


@pytest.mark.parametrize("body", [
    b'{"error":{"message":"Invalid \'max_output_tokens\': integer above maximum value. Expected a value <= 32768, '
    b'but got 128000 instead.","type":"invalid_request_error","param":"max_output_tokens","code":"invalid_value"}}',
    b'{\n  "error": {\n    "message": "Your input exceeds the context window of this model.",\n'
    b'    "code": "context_length_exceeded"\n  }\n}\n',
])
def test_a_bare_json_error_in_an_event_stream_is_that_error(body: bytes) -> None:
    """A 200 text/event-stream whose body is only {"error": {...}}: the error it names, mapped as the
    JSON answer maps the same body (it was "upstream stream ended early", a 502, the message lost)."""
    fold = make_fold()
    assert list(iter_lines(io.BytesIO(body), MAX_LINE)) and all(
        fold.feed_line(line) == [] for line in iter_lines(io.BytesIO(body), MAX_LINE))
    events, error = fold.end(clean=True)
    with pytest.raises(ProxyError) as info:
        to_messages_response(json.loads(body), model="m", new_id=counter_ids(), tool_names={})
    assert events == [] and error is not None
    assert (error.status, error.error_type, error.message) == (info.value.status, info.value.error_type,
                                                               info.value.message)
    assert "ended early" not in error.message


# --------------------------------------------------------------------------
# Items that interleave: a call's arguments and a reasoning item's thinking are never cut.


def _json_answer(output: List[Dict[str, Any]], **response: Any) -> Dict[str, Any]:
    obj = {"id": "resp_x", "status": "completed", "output": output, "usage": {"input_tokens": 3, "output_tokens": 2}}
    obj.update(response)
    return to_messages_response(obj, model="m", new_id=counter_ids(), tool_names={})


def _text_delta(oi: int, text: str, item_id: str = "") -> Dict[str, Any]:
    return {"type": "response.output_text.delta", "item_id": item_id or f"msg_{oi}", "output_index": oi,
            "content_index": 0, "delta": text}


def _message(oi: int, text: str) -> Dict[str, Any]:
    return {"type": "message", "id": f"msg_{oi}", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


WRITE_ARGS = '{"file_path":"/tmp/a.txt","content":"hello world"}'


@pytest.mark.parametrize("between", ["text", "summary", "reasoning_text", "search"])
def test_another_items_output_does_not_cut_a_streaming_call(between: str) -> None:
    """Call 0 streams its arguments; item 1 speaks in between (text, reasoning, a search). Its
    block closed the call's: the rest of the arguments was lost and the client ran Write with
    {"file_path": ...} only, or {} (the JSON answer has the whole input). Item 1 now waits for the
    call's block to end, and comes after it, whole."""
    call = {"type": "function_call", "id": "fc_0", "call_id": "call_0", "name": "Write", "arguments": WRITE_ARGS}
    if between == "text":
        other, speak = _message(1, "Done."), [_text_delta(1, "Done.")]
    elif between == "search":
        other = {"type": "web_search_call", "id": "ws_1", "status": "completed",
                 "action": {"type": "search", "query": "q", "sources": [{"type": "url", "url": "https://x"}]}}
        speak = [{"type": "response.output_item.done", "output_index": 1, "item": other}]
    else:
        field, part = ("summary", "summary_text") if between == "summary" else ("content", "reasoning_text")
        other = {"type": "reasoning", "id": "rs_1", field: [{"type": part, "text": "Hmm."}], "encrypted_content": "B"}
        kind = "reasoning_summary_text" if between == "summary" else "reasoning_text"
        speak = [{"type": f"response.{kind}.delta", "item_id": "rs_1", "output_index": 1, "delta": "Hmm."}]
    events = feed(make_fold(), CREATED,
                  {"type": "response.output_item.added", "output_index": 0, "item": {**call, "arguments": ""}},
                  _args(0, WRITE_ARGS[:36]),
                  {"type": "response.output_item.added", "output_index": 1, "item": other}, *speak,
                  _args(0, WRITE_ARGS[36:]),
                  {"type": "response.output_item.done", "output_index": 0, "item": call},
                  {"type": "response.output_item.done", "output_index": 1, "item": other},
                  completed(output=[call, other]))
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    assert message["content"][0]["input"] == {"file_path": "/tmp/a.txt", "content": "hello world"}
    assert plain_signatures(message)["content"] == plain_signatures(_json_answer([call, other]))["content"]
    assert message["stop_reason"] == "tool_use"


def test_text_waiting_behind_a_call_goes_out_when_its_arguments_are_done() -> None:
    """The arguments' .done ends the call's block: the text that waited goes out there, not only at
    the call's output_item.done."""
    call = _call(1, '{"p":"a"}')
    fold = make_fold()
    events = feed(fold, CREATED, _text_delta(0, "Hel"),
                  {"type": "response.output_item.added", "output_index": 1, "item": _call(1)},
                  _args(1, '{"p"'), _text_delta(0, "lo"))
    out = feed(fold, {"type": "response.function_call_arguments.done", "output_index": 1, "item_id": "fc_1",
                      "arguments": '{"p":"a"}'})
    assert [e["type"] for e in out] == ["content_block_delta", "content_block_stop", "content_block_start",
                                        "content_block_delta"]
    assert out[-1]["delta"] == {"type": "text_delta", "text": "lo"}
    events += out + feed(fold, {"type": "response.output_item.done", "output_index": 1, "item": call},
                         completed(output=[_message(0, "Hello"), call]))
    assert_valid_event_sequence(events, allow_error=False)
    # Every character once; the text of item 0 that came after the call started goes after the call.
    assert [(b["type"], b.get("text"), b.get("input")) for b in final_message(events)["content"]] == [
        ("text", "Hel", None), ("tool_use", None, {"p": "a"}), ("text", "lo", None)]


def test_events_waiting_behind_a_call_whose_done_never_came_go_out_at_the_end() -> None:
    """No .done at all for the call: at response.completed it gets its last arguments from the
    final object, closes, and the text that waited behind it follows."""
    call = _call(0, '{"p":"abc"}')
    events = feed(make_fold(), CREATED,
                  {"type": "response.output_item.added", "output_index": 0, "item": _call(0)},
                  _args(0, '{"p":"a'), _text_delta(1, "Reading."),
                  completed(output=[call, _message(1, "Reading.")]))
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    assert message["content"] == _json_answer([call, _message(1, "Reading.")])["content"]
    assert message["stop_reason"] == "tool_use"


def test_a_reasoning_item_done_after_the_next_item_started_gives_one_signed_block() -> None:
    """A call starts before the reasoning item's output_item.done (which brings the blob): the
    thinking block was closed unsigned (blob null) and a second, empty one followed the call with the
    blob; the next request dropped both, so the reasoning never went back. One block now, signed once,
    before the call, as the JSON answer has it."""
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Plan"}],
                 "encrypted_content": "gAAA-blob"}
    call = _call(1, '{"path":"a"}')
    events = feed(make_fold(), CREATED,
                  {"type": "response.output_item.added", "output_index": 0,
                   "item": {**reasoning, "summary": [], "encrypted_content": None}},
                  {"type": "response.reasoning_summary_text.delta", "output_index": 0, "item_id": "rs_1",
                   "summary_index": 0, "delta": "Plan"},
                  {"type": "response.reasoning_summary_text.done", "output_index": 0, "item_id": "rs_1",
                   "summary_index": 0, "text": "Plan"},
                  {"type": "response.output_item.added", "output_index": 1, "item": _call(1)},
                  _args(1, '{"path":"a"}'),
                  {"type": "response.output_item.done", "output_index": 0, "item": reasoning},
                  {"type": "response.output_item.done", "output_index": 1, "item": call},
                  completed(output=[reasoning, call]))
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    assert message["content"] == _json_answer([reasoning, call])["content"]
    [thinking] = [b for b in message["content"] if b["type"] == "thinking"]
    assert decode_cpx1(thinking["signature"])["d"] == {"id": "rs_1", "encrypted_content": "gAAA-blob"}


def test_a_reasoning_done_for_a_closed_block_opens_no_second_one() -> None:
    """Summary deltas that name no item (slot -1: several items may run together there, so its block
    holds nothing up) are cut by text of item 1; the reasoning's .done, naming no item either, came
    with the blob and opened a second, empty thinking block after the text. One block per item."""
    events = feed(make_fold(), CREATED,
                  {"type": "response.reasoning_summary_text.delta", "delta": "Plan"},
                  _text_delta(1, "Hello"),
                  {"type": "response.output_item.done", "item": {"type": "reasoning", "encrypted_content": "B",
                                                                 "summary": [{"type": "summary_text", "text": "Plan"}]}},
                  completed())
    assert_valid_event_sequence(events, allow_error=False)
    assert [(b["type"], b.get("thinking", b.get("text"))) for b in final_message(events)["content"]] == [
        ("thinking", "Plan"), ("text", "Hello")]


@pytest.mark.parametrize("case", ["added_only", "one_delta", "search"])
def test_items_the_stream_left_unfinished_are_finished_from_the_final_object(case: str) -> None:
    """output_item.added (and maybe a delta), then no .done: response.completed's output has the
    rest. The client got "" or "Hello" for "Hello world", and no search blocks."""
    message = _message(0, "Hello world")
    objs: List[Dict[str, Any]] = [CREATED]
    output: List[Dict[str, Any]] = [message]
    if case == "search":
        search = {"type": "web_search_call", "id": "ws_1", "status": "completed",
                  "action": {"type": "search", "query": "q", "sources": [{"type": "url", "url": "https://x"}]}}
        objs.append({"type": "response.output_item.added", "output_index": 0,
                     "item": {"type": "web_search_call", "id": "ws_1", "status": "in_progress"}})
        objs.append({"type": "response.web_search_call.completed", "output_index": 0, "item_id": "ws_1"})
        output = [search, message]
        objs.append(_text_delta(1, "Hello world"))
        objs.append({"type": "response.output_item.done", "output_index": 1, "item": {**message, "id": "msg_1"}})
        output[1] = {**message, "id": "msg_1"}
    else:
        objs.append({"type": "response.output_item.added", "output_index": 0, "item": {**message, "content": []}})
        if case == "one_delta":
            objs.append(_text_delta(0, "Hello"))
    events = feed(make_fold(), *objs, completed(output=output))
    assert_valid_event_sequence(events, allow_error=False)
    streamed, answer = final_message(events), _json_answer(output)
    if case == "search":  # the text went out first; the search's blocks can only follow it
        assert sorted(map(json.dumps, streamed["content"])) == sorted(map(json.dumps, answer["content"]))
    else:
        assert streamed["content"] == answer["content"]
    assert streamed["usage"] == answer["usage"]


def test_calls_in_the_final_object_are_kept_when_text_events_named_no_item() -> None:
    """Text deltas with neither output_index nor item_id, then response.completed with the message
    and a call: the call was dropped (stop_reason end_turn, Claude Code ended the turn)."""
    call = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "Read", "arguments": '{"path":"a"}'}
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "B"}
    output = [reasoning, _message(1, "Let me read it."), call]
    events = feed(make_fold(), CREATED, {"type": "response.output_text.delta", "delta": "Let me read it."},
                  completed(output=output))
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    assert [b["type"] for b in message["content"]] == ["text", "thinking", "tool_use"]
    assert message["content"][2] == _json_answer(output)["content"][2]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize("with_text_done", [False, True])
def test_a_part_without_content_index_is_sent_once(with_text_done: bool) -> None:
    """Deltas with output_index and item_id but no content_index, then the message's .done: the text
    went out twice ([text "Hello", text "Hello"]). Likewise reasoning without summary_index."""
    objs: List[Dict[str, Any]] = [CREATED,
                                  {"type": "response.output_text.delta", "output_index": 0, "item_id": "msg_0", "delta": "Hel"},
                                  {"type": "response.output_text.delta", "output_index": 0, "item_id": "msg_0", "delta": "lo"}]
    if with_text_done:
        objs.append({"type": "response.output_text.done", "output_index": 0, "item_id": "msg_0", "text": "Hello"})
    objs.append({"type": "response.output_item.done", "output_index": 0, "item": _message(0, "Hello")})
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Plan"}],
                 "encrypted_content": "B"}
    objs += [{"type": "response.reasoning_summary_text.delta", "output_index": 1, "item_id": "rs_1", "delta": "Plan"},
             {"type": "response.reasoning_summary_text.done", "output_index": 1, "item_id": "rs_1", "text": "Plan"},
             {"type": "response.output_item.done", "output_index": 1, "item": reasoning}]
    output = [_message(0, "Hello"), reasoning]
    events = feed(make_fold(), *objs, completed(output=output))
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["content"] == _json_answer(output)["content"]


def test_late_text_only_in_done_for_a_closed_part_is_not_lost() -> None:
    """Item 0 streams "Hel", call 1 comes whole, then item 0's output_text.done says "Hello" with no
    delta for "lo": the "lo" was dropped. It goes after the call, as a late delta would."""
    call = _call(1, "{}")
    events = feed(make_fold(), CREATED, _text_delta(0, "Hel"),
                  {"type": "response.output_item.added", "output_index": 1, "item": call},
                  {"type": "response.output_item.done", "output_index": 1, "item": call},
                  {"type": "response.output_text.done", "output_index": 0, "item_id": "msg_0", "content_index": 0,
                   "text": "Hello"},
                  {"type": "response.output_item.done", "output_index": 0, "item": _message(0, "Hello")},
                  completed(output=[_message(0, "Hello"), call]))
    assert_valid_event_sequence(events, allow_error=False)
    content = final_message(events)["content"]
    assert [(b["type"], b.get("text")) for b in content] == [("text", "Hel"), ("tool_use", None), ("text", "lo")]


def test_raw_reasoning_text_missed_by_its_deltas_comes_with_its_done_event() -> None:
    """gpt-oss-style servers stream raw reasoning (reasoning_text): its ``.done`` event carries the
    whole text, and what the deltas missed goes out then, so the thinking block holds all of it, as
    the JSON answer has it (probe AM 2.9)."""
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [],
                 "content": [{"type": "reasoning_text", "text": "User says hi."}]}
    part = {"output_index": 0, "item_id": "rs_1", "content_index": 0}
    events = feed(make_fold(), CREATED,
                  {"type": "response.output_item.added", "output_index": 0, "item": {**reasoning, "content": []}},
                  {"type": "response.reasoning_text.delta", **part, "delta": "User says"},
                  {"type": "response.reasoning_text.done", **part, "text": "User says hi."},
                  {"type": "response.output_item.done", "output_index": 0, "item": reasoning},
                  _text_delta(1, "Hello!"), completed(output=[reasoning, _message(1, "Hello!")]))
    assert_valid_event_sequence(events, allow_error=False)
    deltas = [e["delta"]["thinking"] for e in events if e["type"] == "content_block_delta"
              and e["delta"]["type"] == "thinking_delta"]
    assert deltas == ["User says", " hi."]
    [thinking] = [b for b in final_message(events)["content"] if b["type"] == "thinking"]
    assert thinking["thinking"] == "User says hi."


def test_reasoning_the_client_did_not_ask_for_gives_no_thinking_block() -> None:
    """gpt-oss-style servers send raw reasoning (reasoning_text) unasked: with thinking=False (the
    request had none) neither the stream nor the JSON answer has a thinking block."""
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [],
                 "content": [{"type": "reasoning_text", "text": "User says hi."}]}
    output = [reasoning, _message(1, "Hello!")]
    streamed = feed(make_fold(thinking=False), CREATED,
                    {"type": "response.output_item.added", "output_index": 0, "item": {**reasoning, "content": []}},
                    {"type": "response.reasoning_text.delta", "output_index": 0, "item_id": "rs_1", "content_index": 0,
                     "delta": "User says hi."},
                    {"type": "response.output_item.done", "output_index": 0, "item": reasoning},
                    _text_delta(1, "Hello!"), completed(output=output))
    only_final = feed(make_fold(thinking=False), CREATED, completed(output=output))
    body = {"id": "resp_x", "status": "completed", "output": output, "usage": {"input_tokens": 3, "output_tokens": 2}}
    answer = to_messages_response(body, model="m", new_id=counter_ids(), tool_names={}, thinking=False)
    from_json = make_fold(thinking=False).from_json(body)
    for events in (streamed, only_final, from_json):
        assert_valid_event_sequence(events, allow_error=False)
        assert final_message(events)["content"] == [{"type": "text", "text": "Hello!"}]
    assert answer["content"] == [{"type": "text", "text": "Hello!"}]
    assert [b["type"] for b in _json_answer(output)["content"]] == ["thinking", "text"]  # asked for: shown


# --------------------------------------------------------------------------
# Fuzz: any interleaving of well-formed items gives what the JSON answer gives.

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _pieces(text: str, rng: random.Random) -> List[str]:
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 6)
        out.append(text[i:i + n])
        i += n
    return out


def _fuzz_output(rng: random.Random) -> List[Dict[str, Any]]:
    """1-4 items. Each text part is written with letters of its own, so a streamed text block can be
    told apart by its letters (a part's text may be split where another item's block came between)."""
    output: List[Dict[str, Any]] = []
    alphabet = iter(_LETTERS[i:i + 3] for i in range(0, len(_LETTERS), 3))
    for n in range(rng.randint(1, 4)):
        kind = rng.choice(["reasoning", "message", "function_call", "function_call"])
        if kind == "reasoning":
            summary = [{"type": "summary_text", "text": f"think{n}.{k} " + "r" * rng.randint(1, 8)}
                       for k in range(rng.randint(1, 2))]
            output.append({"type": "reasoning", "id": f"rs_{n}", "summary": summary, "encrypted_content": f"blob{n}"})
        elif kind == "message":
            parts = [{"type": "output_text", "annotations": [], "text": _letters_text(next(alphabet), rng)}
                     for _ in range(rng.randint(1, 2))]
            output.append({"type": "message", "id": f"msg_{n}", "role": "assistant", "content": parts})
        else:
            args = json.dumps({"path": f"p{n}", "content": "c\"\\é" * rng.randint(0, 4), "n": [n, {"k": None}]})
            output.append({"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}", "name": "Write",
                           "arguments": args})
    return output


def _letters_text(letters: str, rng: random.Random) -> str:
    return "".join(rng.choice(letters) for _ in range(rng.randint(1, 12)))


def _item_events(oi: int, item: Dict[str, Any], rng: random.Random) -> List[Dict[str, Any]]:
    """One item's events in the order OpenAI sends them."""
    base = {"item_id": item["id"], "output_index": oi}
    kind = item["type"]
    events: List[Dict[str, Any]] = []
    if kind == "reasoning":
        events.append({"type": "response.output_item.added", "output_index": oi,
                       "item": {**item, "summary": [], "encrypted_content": None}})
        for si, part in enumerate(item["summary"]):
            events += [{"type": "response.reasoning_summary_text.delta", **base, "summary_index": si, "delta": p}
                       for p in _pieces(part["text"], rng)]
            events.append({"type": "response.reasoning_summary_text.done", **base, "summary_index": si,
                           "text": part["text"]})
    elif kind == "message":
        events.append({"type": "response.output_item.added", "output_index": oi, "item": {**item, "content": []}})
        for ci, part in enumerate(item["content"]):
            events += [{"type": "response.output_text.delta", **base, "content_index": ci, "delta": p}
                       for p in _pieces(part["text"], rng)]
            events.append({"type": "response.output_text.done", **base, "content_index": ci, "text": part["text"]})
            events.append({"type": "response.content_part.done", **base, "content_index": ci, "part": part})
    else:
        events.append({"type": "response.output_item.added", "output_index": oi, "item": {**item, "arguments": ""}})
        events += [{"type": "response.function_call_arguments.delta", **base, "delta": p}
                   for p in _pieces(item["arguments"], rng)]
        events.append({"type": "response.function_call_arguments.done", **base, "arguments": item["arguments"]})
    events.append({"type": "response.output_item.done", "output_index": oi, "item": item})
    return events


def _texts_by_part(content: List[Dict[str, Any]]) -> Dict[str, str]:
    """Text blocks joined per part (its letters): each block must be of one part."""
    out: Dict[str, str] = {}
    for block in content:
        if block["type"] == "text":
            letters = _LETTERS[_LETTERS.index(block["text"][0]) // 3 * 3:][:3]
            assert set(block["text"]) <= set(letters), block
            out[letters] = out.get(letters, "") + block["text"]
    return out


@pytest.mark.parametrize("seed", range(500))
def test_interleaved_items_give_what_the_json_answer_gives(seed: int) -> None:
    """Random items, each with its well-formed event sequence; the sequences interleaved at random
    (every fifth case in order). The stream's message must be the JSON answer's: each call's input
    whole, one thinking block per reasoning item with its text and blob, every text character once
    (a part's text may be split where another item came between, never lost or repeated);
    in order, block for block the same."""
    rng = random.Random(seed)
    output = _fuzz_output(rng)
    queues = [_item_events(oi, item, rng) for oi, item in enumerate(output)]
    objs: List[Dict[str, Any]] = [CREATED]
    if seed % 5 == 0:
        objs += [e for queue in queues for e in queue]
    while any(queues):
        objs.append(rng.choice([q for q in queues if q]).pop(0))
    objs.append(completed(output=output))
    events = feed(make_fold(), *objs)
    assert_valid_event_sequence(events, allow_error=False)
    got, want = final_message(events), _json_answer(output)
    assert got["stop_reason"] == want["stop_reason"]
    if seed % 5 == 0:
        assert got["content"] == want["content"]
    by_id = sorted((b for b in got["content"] if b["type"] == "tool_use"), key=lambda b: b["id"])
    assert by_id == [b for b in want["content"] if b["type"] == "tool_use"]
    thinking = sorted((b for b in got["content"] if b["type"] == "thinking"), key=lambda b: b["signature"])
    assert thinking == sorted((b for b in want["content"] if b["type"] == "thinking"), key=lambda b: b["signature"])
    assert _texts_by_part(got["content"]) == _texts_by_part(want["content"])


def test_a_stop_string_in_text_the_final_object_finished_ends_the_answer_once() -> None:
    """A message the stream left unfinished ("Hi"), finished from response.completed ("Hi END
    there"): the client's stop string in the filled-in text ends the answer there, with one
    message_delta; the call after it is not the answer."""
    message = _message(0, "Hi END there")
    events = feed(stop_fold("END"), CREATED,
                  {"type": "response.output_item.added", "output_index": 0, "item": {**message, "content": []}},
                  delta("Hi"), completed(output=[message, _call(1, "{}")]))
    assert_valid_event_sequence(events, allow_error=False)
    got = final_message(events)
    assert got["content"] == [{"type": "text", "text": "Hi "}]
    assert (got["stop_reason"], got["stop_sequence"]) == ("stop_sequence", "END")


def test_what_waits_behind_an_unending_item_is_bounded(monkeypatch: Any) -> None:
    """An item that never ends while another streams on: the other's events wait only up to
    MAX_HELD_BYTES (a stream is relayed, not kept). Then a reasoning item's block closes and the text
    goes out as it comes, nothing lost; a call's arguments are never cut (the client would run half
    an input): the stream ends with an error."""
    from claudeproxy.apis.responses import stream as stream_module

    monkeypatch.setattr(stream_module, "MAX_HELD_BYTES", 2000)
    reasoning = {"type": "reasoning", "id": "rs_0", "summary": []}
    fold = make_fold()
    head = feed(fold, CREATED, {"type": "response.output_item.added", "output_index": 0, "item": reasoning},
                {"type": "response.reasoning_summary_text.delta", "item_id": "rs_0", "output_index": 0,
                 "summary_index": 0, "delta": "Thinking."},
                {"type": "response.output_item.added", "output_index": 1, "item": _message(1, "")})
    waited = feed(fold, *[_text_delta(1, f"word{i} ") for i in range(8)])
    assert waited == []  # under the cap: held behind the reasoning item
    released = feed(fold, *[_text_delta(1, f"more{i} ") for i in range(30)])
    assert any(e.get("delta", {}).get("type") == "text_delta" for e in released)  # the cap let them go
    assert fold.held_bytes == 0
    later = feed(fold, _text_delta(1, "end."), completed(output=[reasoning, _message(1, "x")]))
    events = head + waited + released + later
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    assert message["content"][0]["thinking"] == "Thinking."
    assert message["content"][1]["text"] == "".join(f"word{i} " for i in range(8)) + "".join(
        f"more{i} " for i in range(30)) + "end."

    call = {"type": "function_call", "id": "fc_0", "call_id": "call_0", "name": "Write", "arguments": ""}
    fold = make_fold()
    feed(fold, CREATED, {"type": "response.output_item.added", "output_index": 0, "item": call},
         _args(0, WRITE_ARGS[:20]), {"type": "response.output_item.added", "output_index": 1, "item": _message(1, "")})
    with pytest.raises(UpstreamUnavailable, match="tool call's arguments open"):
        feed(fold, *[_text_delta(1, f"word{i} ") for i in range(40)])


# ---------------------------------------------------------------------------
# A long answer in many small deltas costs time in proportion to its length.


def _long_answer(kind: str, n: int) -> Tuple[List[Dict[str, Any]], float]:
    """Events of an answer of ``n`` 10-character deltas of ``kind``, and the CPU seconds the deltas took."""
    piece = "0123456789"
    fold = stop_fold("\x01never") if kind == "stop strings" else make_fold()
    closing: List[Dict[str, Any]] = []
    if kind == "arguments":
        opening = [{"type": "response.output_item.added", "output_index": 0, "item": _call(0)}, _args(0, '{"c":"')]
        deltas = [sse(_args(0, piece)) for _ in range(n)] + [sse(_args(0, '"}'))]
        closing = [{"type": "response.output_item.done", "output_index": 0,
                    "item": _call(0, '{"c":"' + piece * n + '"}')}]  # the whole arguments again
    elif kind in ("summary", "reasoning_text"):
        opening = [{"type": "response.output_item.added", "output_index": 0,
                    "item": {"type": "reasoning", "id": "rs_0", "summary": []}}]
        field = "summary_index" if kind == "summary" else "content_index"
        event = "response.reasoning_summary_text.delta" if kind == "summary" else "response.reasoning_text.delta"
        deltas = [sse({"type": event, "item_id": "rs_0", "output_index": 0, field: 0, "delta": piece})
                  for _ in range(n)]
    else:
        opening = [{"type": "response.output_item.added", "output_index": 0, "item": _message(0, "")}]
        event = "response.refusal.delta" if kind == "refusal" else "response.output_text.delta"
        deltas = [sse({**_text_delta(0, piece), "type": event}) for _ in range(n)]
    events = feed(fold, CREATED, *opening)
    started = time.thread_time()
    for line in deltas:
        events += fold.feed_line(line)
    took = time.thread_time() - started
    return events + feed(fold, *closing, completed()), took


@pytest.mark.parametrize("kind", ["text", "reasoning_text", "arguments", "stop strings"])
def test_a_long_answer_in_small_deltas_takes_linear_time(kind: str) -> None:
    """Each part's text (and a call's arguments) was grown with ``+=``, copying all of it at every
    delta: 1.5 MB in 10-character deltas took 13 s as text, 11 s as reasoning, 4.5 s with stop strings
    and 4.3 s as arguments, where linear code takes about 1.5 s. Eight times the deltas cost 9-12
    times the CPU here (the collector walks a growing heap), the old code 35-68 times: the ratio of
    two runs in this thread's CPU time, which neither a slow machine nor one loaded by other work
    moves as it moves a bound in seconds (CI on 3.8 beside other work took 4.2 s of CPU for the
    linear code)."""
    n = 150000
    small = min(_long_answer(kind, n // 8)[1] for _ in range(3))
    events, took = _long_answer(kind, n)
    assert_valid_event_sequence(events, allow_error=False)
    block = final_message(events)["content"][0]
    got = {"arguments": lambda: block["input"]["c"], "summary": lambda: block["thinking"],
           "reasoning_text": lambda: block["thinking"]}.get(kind, lambda: block["text"])()
    assert got == "0123456789" * n  # nothing lost on the way
    ratio = took / max(small, 1e-3)
    assert ratio < 20, f"{n} deltas took {took:.2f} s of CPU, {ratio:.1f}x what {n // 8} took"


def test_growing_text_reads_whole_and_from_any_point() -> None:
    from claudeproxy.apis.growing import Growing

    grown = Growing("ab")
    for piece in ("cde", "", "f", "ghij"):
        grown.add(piece)
    assert len(grown) == 10 and bool(grown) and not Growing()
    assert [grown.since(k) for k in (0, 1, 2, 4, 5, 6, 9, 10, 11, -3)] == [
        "abcdefghij", "bcdefghij", "cdefghij", "efghij", "fghij", "ghij", "j", "", "", "abcdefghij"]
    assert grown.text() == "abcdefghij" and grown.text() == "abcdefghij"
    grown.add("k")
    assert grown.since(9) == "jk" and grown.text() == "abcdefghijk" and Growing().text() == ""


def test_a_call_id_outside_anthropics_id_form_is_given_in_it() -> None:
    item = {"type": "function_call", "call_id": "functions.Read:0", "name": "Read", "arguments": '{"p": 1}'}
    events = feed(make_fold(), CREATED, {"type": "response.output_item.added", "output_index": 0, "item": item},
                  {"type": "response.output_item.done", "output_index": 0, "item": item}, completed())
    [block] = final_message(events)["content"]
    assert block["id"].startswith("toolu_b64_") and block["id"].replace("_", "").replace("-", "").isalnum()
    assert upstream_tool_id(block["id"]) == "functions.Read:0"


def test_an_object_placeholder_when_a_call_is_added_is_not_its_arguments() -> None:
    call = {"type": "function_call", "call_id": "c1", "name": "f"}
    events = feed(make_fold(), CREATED,
                  {"type": "response.output_item.added", "output_index": 0, "item": {**call, "arguments": {}}},
                  {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": '{"path": "/a"}'},
                  {"type": "response.output_item.done", "output_index": 0, "item": {**call, "arguments": '{"path": "/a"}'}},
                  completed())
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["content"] == [{"type": "tool_use", "id": "c1", "name": "f", "input": {"path": "/a"}}]


def test_a_data_line_that_is_only_an_error_object_is_that_error() -> None:
    """``data: {"error": {...}}`` without a type: the error it says (401 here), as on Chat; it was
    "upstream stream ended early", a 502 with the upstream's status and message lost (a probe)."""
    fold = make_fold()
    line = b'data: {"error": {"message": "bad key", "type": "invalid_request_error", "code": "invalid_api_key"}}\n\n'
    with pytest.raises(ProxyError) as info:
        fold.feed_line(line)
    assert (info.value.status, info.value.error_type) == (401, "authentication_error")
    assert "bad key" in info.value.message
