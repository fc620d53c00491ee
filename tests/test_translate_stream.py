"""StreamTranslator / ChatFold: golden transcripts and playbook tests (PROTOCOL.md section 3).

Every ``fixtures/streams/<case>.openai.sse`` is fed through the real sans-io core the
way the relay feeds it (``stream_playbook.run_transcript``); the result must equal the
hand-written ``<case>.anthropic.sse``, pass the shared grammar check, and encode to SSE
frames whose ``event:`` line equals the payload ``type``. The playbook tests below cover
rules that a single transcript cannot show: when events come out (live tool input,
completion before EOF), the usage fallback, state isolation, ``events_for_message``.
"""

from __future__ import annotations

import json
import math
import random
import time
from typing import Any, Dict, List

import pytest

from claudeproxy.errors import ProxyError
from claudeproxy.apis.chat.wire import parse_chat_chunk
from claudeproxy.sse import encode_event
from claudeproxy.apis.chat.stream import StreamTranslator, ChatFold, events_for_message
from sse_checks import assert_valid_event_sequence, events_of, final_message
from stream_playbook import (
    Playbook,
    case_stems,
    chunk,
    decode_cpx1,
    diff_text,
    load_case,
    run_transcript,
    same_events,
    sse_data,
    tool_delta,
)

CASES = case_stems()


# One fixture per PROTOCOL.md case / FIELD-NOTES item / dialect quirk; a lost file would
# otherwise just shrink the parametrized tests without a failure.
REQUIRED = {
    "text_plain": "case 48", "role_chunk_empty_content": "case 49, FN 12",
    "reasoning_content_then_text": "cases 50, 44 (DeepSeek)", "reasoning_openrouter": "case 44 (reasoning)",
    "reasoning_details_openrouter": "FN 4", "tools_parallel_interleaved": "case 51",
    "tool_one_call_20_fragments": "case 51b", "tools_no_index_ollama": "case 52, FN 1",
    "tool_id_name_repeated": "case 53", "tool_whole_args_one_chunk": "case 54",
    "tool_final_repeat_args": "case 55", "tool_final_repeat_reformatted": "case 55",
    "tool_cumulative_snapshots": "FN 19", "tools_several_in_one_chunk": "FN 19",
    "tools_all_index0_distinct_ids": "FN 1", "tool_calls_empty_list_with_content": "FN 18",
    "usage_only_chunk": "case 56", "finish_and_usage_same_chunk_no_done": "case 57",
    "finish_no_done_eof": "3.6 clean EOF", "eof_no_finish_no_done": "S12 (over case 58)",
    "comments_and_event_lines": "3.2, F12", "crlf_line_ends": "3.2, F12", "cr_line_ends": "3.2",
    "multiline_data": "3.2", "last_event_no_blank_line": "3.2", "bad_json_skipped": "3.2, F12",
    "error_object_after_text": "case 59", "openrouter_finish_error": "case 60",
    "error_object_code_429": "4.3", "sse_event_named_error": "3.4 step 1",
    "reset_mid_tool": "case 61, F18", "read_timeout_mid_text": "4.3", "finish_then_reset": "F19",
    "tool_calls_finish_stop": "2.4 rule 2", "finish_length": "2.4 rule 1", "content_filter": "2.4 rule 4",
    "finish_tool_calls_without_tools": "2.4 rule 3", "stop_sequence_vllm": "2.4 rule 5a",
    "stop_sequence_in_text": "2.4 rule 5b", "thinking_text_two_tools": "case 66",
    "worked_example_3_8": "3.8", "gemini_thought_signature": "5.9, FN 1", "groq_x_groq_usage": "5.5",
    "think_tags_split": "2.2 think_tags", "deepseek_usage": "case 46", "refusal_delta": "case 40",
    "text_after_live_tool": "3.4 step 7", "text_inside_live_tool_args": "3.4 step 7",
    "tool_double_encoded_args": "case 43", "tool_args_after_finish_reason": "FN 19",
    "legacy_function_call": "3.4 step 7",
}


def test_there_is_a_fixture_per_listed_case() -> None:
    assert sorted(set(REQUIRED) - set(CASES)) == []


@pytest.mark.parametrize("stem", CASES)
def test_golden_transcript(stem: str) -> None:
    case = load_case(stem)
    got = run_transcript(case.upstream, **case.meta)
    assert same_events(got, case.expected, merge=bool(case.meta.get("coalesce"))), diff_text(got, case.expected)


@pytest.mark.parametrize("stem", CASES)
def test_golden_transcripts_obey_the_grammar(stem: str) -> None:
    case = load_case(stem)
    got = run_transcript(case.upstream, **case.meta)
    assert_valid_event_sequence(got)
    assert_valid_event_sequence(case.expected)  # the golden file itself must be a valid stream
    wire = b"".join(encode_event(e) for e in got)
    assert events_of(wire) == got  # every frame: one event: line equal to its type, one data line


@pytest.mark.parametrize("stem", CASES)
def test_signatures_are_proxy_signatures(stem: str) -> None:
    case = load_case(stem)
    for event in run_transcript(case.upstream, **case.meta):
        delta = event.get("delta") or {}
        if delta.get("type") == "signature_delta":
            assert delta["signature"].startswith("cpx1.") and decode_cpx1(delta["signature"])["p"]


# ----------------------------------------------------------------------------
# Live streaming of tool input (PROTOCOL.md 3.4 step 7, case 51b).


def test_first_tool_call_streams_fragment_by_fragment() -> None:
    pb = Playbook()
    args = '{"path": "/tmp/x", "content": "' + "abcdefghij" * 2 + '"}'
    pieces = [args[i:i + 3] for i in range(0, len(args), 3)]
    first = pb.feed(chunk(tool_delta(0, "call_1", "write", pieces[0])))
    kinds = [e["type"] for e in first]
    assert kinds == ["message_start", "content_block_start", "content_block_delta"]
    # '{"p': live at the key's quote; the key itself waits for its value to begin (toolargs.ArgsScan).
    assert first[2]["delta"] == {"type": "input_json_delta", "partial_json": "{"}
    sent, end = "{", len(pieces[0])
    content = args.index("abc")
    for piece in pieces[1:]:
        got = pb.feed(chunk(tool_delta(0, arguments=piece)))
        end += len(piece)
        assert len(got) <= 1 and all(e["type"] == "content_block_delta" and e["index"] == 0 for e in got)
        sent += "".join(e["delta"]["partial_json"] for e in got)
        assert args.startswith(sent)
        if end > content:  # the value has begun: all of it goes out at once
            assert sent == args[:end]
        if end - len(piece) >= content:  # a fragment inside the value (or its end): one delta, as it came
            assert got == [{"type": "content_block_delta", "index": 0,
                            "delta": {"type": "input_json_delta", "partial_json": piece}}]
    assert sent == args
    assert not pb.complete


def test_second_tool_call_arrives_whole_at_the_end() -> None:
    pb = Playbook()
    pb.feed(chunk(tool_delta(0, "a", "first", '{"x":')))
    assert pb.feed(chunk(tool_delta(1, "b", "second", '{"y":'))) == []
    assert pb.feed(chunk(tool_delta(0, arguments="1}"))) == [  # the key went out with its value
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '"x":1}'}}]
    assert pb.feed(chunk(tool_delta(1, arguments=' "z"}'))) == []
    end = pb.feed(chunk(finish="tool_calls", usage={"prompt_tokens": 3, "completion_tokens": 4}))
    assert [e["type"] for e in end] == [
        "content_block_stop", "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    assert end[1]["content_block"] == {"type": "tool_use", "id": "b", "name": "second", "input": {}}
    assert json.loads(end[2]["delta"]["partial_json"]) == {"y": "z"}
    assert pb.complete


def test_tool_call_is_not_started_before_its_name_is_known() -> None:
    pb = Playbook()
    assert pb.feed(chunk(tool_delta(0, "c", arguments='{"a"'))) == []  # nothing to say yet, not even message_start
    got = pb.feed(chunk(tool_delta(0, name="late_name", arguments=": 2}")))
    assert got[0]["type"] == "message_start"
    assert got[1]["content_block"]["name"] == "late_name"
    assert got[2]["delta"]["partial_json"] == '{"a": 2}'


def test_text_inside_incomplete_tool_arguments_does_not_cut_the_tool() -> None:
    # A text delta between two fragments of the live call must not close its block
    # while its JSON is still open: later fragments could then never be placed.
    pb = Playbook()
    pb.feed(chunk(tool_delta(0, "c", "edit", '{"a":')))
    assert pb.feed(chunk({"content": "note"})) == []
    pb.feed(chunk(tool_delta(0, arguments=' [1, 2]}')))
    pb.feed(chunk(finish="tool_calls", usage={"prompt_tokens": 1, "completion_tokens": 1}))
    message = final_message(pb.events)
    assert message["content"] == [
        {"type": "tool_use", "id": "c", "name": "edit", "input": {"a": [1, 2]}},
        {"type": "text", "text": "note"},
    ]
    assert_valid_event_sequence(pb.events, allow_error=False)


def test_huge_tool_arguments_stream_in_linear_time() -> None:
    # RELIABILITY.md F10: 5 MB of arguments in 1 KB fragments, with a text delta inside the
    # call and a second (buffered) call. Re-parsing the growing buffer per fragment took
    # ~4 s for 2 MB before; linear work takes well under a second.
    pb = Playbook()
    feed = lambda c: pb.stream.translator.feed(parse_chat_chunk(c))  # noqa: E731  (skip JSON round trips)
    feed(chunk(tool_delta(0, "a", "write", '{"content": "')))
    feed(chunk(tool_delta(1, "b", "write", '{"content": "')))
    assert feed(chunk({"content": "between"})) == []
    piece = "0123456789abcdef\\\"{}[]" * 40  # escapes and brackets inside the string, ~1 KB
    started = time.monotonic()
    for _ in range(5 * 1024 * 1024 // len(piece)):
        assert len(feed(chunk(tool_delta(0, arguments=piece)))) == 1  # one delta per fragment, at once
        feed(chunk(tool_delta(1, arguments="x" * 200)))
    out = feed(chunk(tool_delta(0, arguments='"}')))
    assert [e["type"] for e in out] == ["content_block_delta", "content_block_stop", "content_block_start",
                                        "content_block_delta"]  # the text waited for the closing brace
    feed(chunk(tool_delta(1, arguments='"}')))
    end = pb.stream.translator.finish()
    assert time.monotonic() - started < 8.0
    assert json.loads(end[-4]["delta"]["partial_json"])["content"] == "x" * 200 * (5 * 1024 * 1024 // len(piece))


def _live_tool_arguments(pb: Playbook, fragments: List[str]) -> str:
    sent = ""
    for piece in fragments:
        for event in pb.feed(chunk(tool_delta(0, "call_1" if not sent else "", "write", piece))):
            if event.get("delta", {}).get("type") == "input_json_delta":
                sent += event["delta"]["partial_json"]
    return sent


def test_a_large_live_call_keeps_a_digest_not_its_text_and_still_knows_repeats() -> None:
    # RELIABILITY.md F10 / M2: a live call's arguments went out as they came, but all of them were
    # kept too (20 calls of 5 MB: 100 MB). Past a small size a digest stands in for the text; a
    # final chunk repeating the whole arguments is still known for one and sends nothing.
    args = json.dumps({"content": "line of a file\n" * 20000})  # ~300 KB
    pb = Playbook()
    sent = _live_tool_arguments(pb, [args[i:i + 1024] for i in range(0, len(args), 1024)])
    tool = pb.stream.translator.tools[0]
    assert sent == args and tool.live and len(tool.text) == 0 and tool.digest is not None
    counted = pb.stream.translator.out_chars
    assert _live_tool_arguments(pb, [args]) == ""  # the whole arguments again: a repeat
    assert pb.stream.translator.out_chars == counted  # not counted twice in the output estimate
    pb.feed(chunk(finish="tool_calls", usage={"prompt_tokens": 3, "completion_tokens": 4}))
    assert_valid_event_sequence(pb.events, allow_error=False)
    assert final_message(pb.events)["content"][0]["input"] == json.loads(args)


def test_a_large_first_fragment_is_not_kept_either() -> None:
    args = json.dumps({"content": "y" * 200000})
    pb = Playbook()
    assert _live_tool_arguments(pb, [args]) == args
    assert len(pb.stream.translator.tools[0].text) == 0 and pb.stream.translator.tools[0].digest is not None


def test_cumulative_snapshots_of_a_large_live_call_send_each_new_suffix_once() -> None:
    # FIELD-NOTES 19: servers that send the arguments so far in every fragment. Past the kept size
    # the snapshot is still recognised (by its digest) and only what is new goes out.
    args = json.dumps({"content": "abcdefghij" * 20000})  # ~200 KB
    cuts = list(range(4096, len(args), 4096)) + [len(args)]
    pb = Playbook()
    sent = _live_tool_arguments(pb, [args[:cut] for cut in cuts])
    assert sent == args and pb.stream.translator.tools[0].digest is not None
    pb.feed(chunk(finish="tool_calls", usage={"prompt_tokens": 3, "completion_tokens": 4}))
    assert final_message(pb.events)["content"][0]["input"] == json.loads(args)


def test_a_reformatted_repeat_of_a_large_live_call_changes_nothing_the_client_sees() -> None:
    # Its text was let go, so the repeat cannot be compared; the object had closed, so the scan
    # passes nothing more on: the client's input is the arguments, once.
    args = json.dumps({"content": "z" * 100000})
    pb = Playbook()
    _live_tool_arguments(pb, [args[i:i + 1024] for i in range(0, len(args), 1024)])
    counted = pb.stream.translator.out_chars
    assert _live_tool_arguments(pb, [json.dumps(json.loads(args), indent=1)]) == ""
    assert pb.stream.translator.out_chars == counted  # a repeat, not output: the estimate stays
    pb.feed(chunk(finish="tool_calls", usage={"prompt_tokens": 3, "completion_tokens": 4}))
    assert_valid_event_sequence(pb.events, allow_error=False)
    assert final_message(pb.events)["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "write", "input": json.loads(args)}]


def test_text_waits_to_the_end_for_a_tool_call_that_never_closes() -> None:
    pb = Playbook()
    pb.feed(chunk(tool_delta(0, "c", "f", '{"a": [1, 2')))
    assert pb.feed(chunk({"content": "text"})) == []
    pb.feed(chunk(finish="length"))
    pb.done()
    types = [(e["type"], e.get("index")) for e in pb.events]
    assert types[-6:] == [("content_block_stop", 0), ("content_block_start", 1), ("content_block_delta", 1),
                          ("content_block_stop", 1), ("message_delta", None), ("message_stop", None)]
    assert pb.events[-4]["delta"]["text"] == "text"
    assert pb.events[-2]["delta"]["stop_reason"] == "max_tokens"


# ----------------------------------------------------------------------------
# Finishing (3.4 step 9, 3.6) and ready_to_finish.


def test_ready_to_finish_needs_finish_reason_and_usage() -> None:
    pb = Playbook()
    pb.feed(chunk({"content": "hi"}))
    assert not pb.translator.ready_to_finish
    pb.feed({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}})
    assert not pb.translator.ready_to_finish and not pb.complete  # usage alone is not the end
    got = pb.feed(chunk(finish="stop"))
    assert [e["type"] for e in got][-2:] == ["message_delta", "message_stop"]
    assert pb.complete and pb.translator.ready_to_finish


def test_finish_reason_alone_waits_for_usage_or_done() -> None:
    pb = Playbook()
    pb.feed(chunk({"content": "hi"}))
    assert [e["type"] for e in pb.feed(chunk(finish="stop"))] == []
    assert pb.translator.has_finish_reason and not pb.complete
    got = pb.done()
    assert [e["type"] for e in got] == ["content_block_stop", "message_delta", "message_stop"]
    assert pb.feed(chunk({"content": "after the end"})) == []  # nothing after message_stop


def test_a_running_usage_on_the_finish_chunk_waits_for_the_final_usage_chunk() -> None:
    """vLLM's continuous usage stats: every chunk carries a running usage without the cached tokens,
    the finish chunk too; the include_usage chunk after it has the full count. The stream ends at that
    chunk, and the client's message_delta (and the record) carry its counts, not the finish chunk's."""
    pb = Playbook()
    pb.feed(chunk({"content": "hi"}, usage={"prompt_tokens": 1000, "completion_tokens": 1}))
    got = pb.feed(chunk(finish="stop", usage={"prompt_tokens": 1000, "completion_tokens": 150}))
    assert [e["type"] for e in got] == [] and not pb.complete and pb.translator.has_finish_reason
    got = pb.feed({"choices": [], "usage": {"prompt_tokens": 1000, "completion_tokens": 200,
                                            "prompt_tokens_details": {"cached_tokens": 800}}})
    assert [e["type"] for e in got] == ["content_block_stop", "message_delta", "message_stop"] and pb.complete
    want = {"input_tokens": 200, "cache_read_input_tokens": 800, "output_tokens": 200}
    assert {k: got[1]["usage"][k] for k in want} == want
    assert {k: pb.stream.usage[k] for k in want} == want


def test_a_running_usage_ends_at_done_or_the_body_end_when_no_final_chunk_comes() -> None:
    """No usage-only chunk after the running count: [DONE] (or the body's end, or the relay's finish
    grace: ``end``) ends the stream with the last count read."""
    for ending in ("done", "eof"):
        pb = Playbook()
        pb.feed(chunk({"content": "hi"}, usage={"prompt_tokens": 10, "completion_tokens": 1}))
        pb.feed(chunk(finish="stop", usage={"prompt_tokens": 10, "completion_tokens": 2}))
        assert not pb.complete
        got = pb.done() if ending == "done" else pb.eof()[0]
        assert [e["type"] for e in got] == ["content_block_stop", "message_delta", "message_stop"]
        assert got[1]["usage"]["output_tokens"] == 2


def test_a_running_usage_and_a_finish_chunk_without_one_wait_for_the_final_usage_chunk() -> None:
    """Running usages on the content chunks and none on the finish chunk: the last running count
    (no cached tokens, the output one chunk short) is not the final one either."""
    pb = Playbook()
    pb.feed(chunk({"content": "hi"}, usage={"prompt_tokens": 1000, "completion_tokens": 2}))
    assert pb.feed(chunk(finish="stop")) == [] and not pb.complete
    got = pb.feed({"choices": [], "usage": {"prompt_tokens": 1000, "completion_tokens": 3,
                                            "prompt_tokens_details": {"cached_tokens": 800}}})
    assert pb.complete
    assert {k: got[1]["usage"][k] for k in ("input_tokens", "cache_read_input_tokens", "output_tokens")} == \
        {"input_tokens": 200, "cache_read_input_tokens": 800, "output_tokens": 3}


def test_the_only_usage_on_the_finish_chunk_ends_the_stream_at_once() -> None:
    """Mistral, Moonshot: the finish chunk carries the stream's one usage. Nothing more is awaited
    (PROTOCOL.md case 57: such a server may never send [DONE] nor close)."""
    pb = Playbook()
    pb.feed(chunk({"content": "hi"}))
    got = pb.feed(chunk(finish="stop", usage={"prompt_tokens": 10, "completion_tokens": 2}))
    assert [e["type"] for e in got][-2:] == ["message_delta", "message_stop"] and pb.complete


def test_usage_fallback_estimates_when_upstream_sends_none() -> None:
    pb = Playbook(input_tokens=321)
    text = "x" * 37
    pb.feed(chunk({"content": text}))
    pb.feed(chunk(finish="stop"))
    pb.done()
    delta = pb.events[-2]
    assert delta["usage"]["input_tokens"] == 321  # the message_start estimate
    assert delta["usage"]["output_tokens"] == math.ceil(37 / 4) > 0


def test_usage_read_before_a_cut_is_the_folds_usage() -> None:
    """A stream cut after its usage chunk (before finish_reason and [DONE]) still cost that: the fold's
    usage, which the call record reads, is the upstream's as soon as it came, whatever the ending."""
    pb = Playbook(input_tokens=321)
    pb.feed(chunk({"content": "hi"}))
    assert pb.stream.usage == {}  # nothing known yet: not 0 tokens
    pb.feed({"choices": [], "usage": {"prompt_tokens": 1000, "completion_tokens": 50,
                                      "prompt_tokens_details": {"cached_tokens": 200}}})
    _, error = pb.eof()
    assert error is not None  # cut: no finish_reason, no [DONE]
    assert pb.stream.usage == {"input_tokens": 800, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 200,
                               "output_tokens": 50}


def test_usage_inside_the_final_choice_is_the_upstreams_moonshot() -> None:
    """Moonshot/Kimi: usage in the final choice, not at the top level. It is the message's usage (not
    the estimate), and with the finish_reason beside it the stream is complete at that chunk."""
    pb = Playbook(input_tokens=321)
    pb.feed(chunk({"role": "assistant", "content": "hi"}))
    got = pb.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop",
                                "usage": {"prompt_tokens": 1000, "completion_tokens": 50}}]})
    assert [e["type"] for e in got][-2:] == ["message_delta", "message_stop"] and pb.complete
    assert got[-2]["usage"]["input_tokens"] == 1000 and got[-2]["usage"]["output_tokens"] == 50
    # A text chunk carrying the usage in its choice is not taken for plain text (which skips usage).
    pb = Playbook(input_tokens=321)
    pb.feed(chunk({"role": "assistant", "content": ""}))
    pb.feed({"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None,
                          "usage": {"prompt_tokens": 900, "completion_tokens": 7}}]})
    pb.feed(chunk(finish="stop"))
    # A usage on a content chunk makes it a running count: the stream ends at [DONE], with it.
    assert not pb.complete
    pb.done()
    assert pb.complete and final_message(pb.events)["usage"]["output_tokens"] == 7


def test_streamed_output_includes_reasoning_that_completion_tokens_left_out() -> None:
    """Gemini's OpenAI-compatible stream: total = prompt + completion + reasoning. The message_delta's
    output_tokens includes the thinking (250), as the JSON answer's does."""
    pb = Playbook()
    pb.feed(chunk({"role": "assistant", "content": "hi"}, "stop"))
    pb.feed({"choices": [], "usage": {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1250,
                                      "completion_tokens_details": {"reasoning_tokens": 200}}})
    assert final_message(pb.events)["usage"]["output_tokens"] == 250


def test_message_start_usage_is_the_estimate_and_message_delta_the_real_numbers() -> None:
    # PROTOCOL.md case 65 and FIELD-NOTES 8: message_delta overwrites the placeholder.
    pb = Playbook(input_tokens=1234)
    assert pb.feed(chunk({"role": "assistant", "content": ""})) == []  # message_start waits for content
    start = pb.feed(chunk({"content": "ok"}, "stop"))[0]
    assert start["message"]["usage"] == {"input_tokens": 1234, "output_tokens": 1}
    pb.feed({"choices": [], "usage": {"prompt_tokens": 900, "completion_tokens": 2,
                                      "prompt_tokens_details": {"cached_tokens": 400}}})
    message = final_message(pb.events)
    assert message["usage"]["input_tokens"] == 500
    assert message["usage"]["cache_read_input_tokens"] == 400
    assert message["usage"]["output_tokens"] == 2


def test_eof_without_finish_reason_is_an_error_not_a_success() -> None:
    # RELIABILITY.md S12: a silent EOF (a FIN, a close-delimited end) can be a cut connection.
    pb = Playbook()
    pb.feed(chunk({"content": "half an ans"}))
    events, error = pb.eof()
    assert events == [] and isinstance(error, ProxyError) and error.error_type == "api_error"


def test_clean_end_of_body_after_a_chunk_finishes() -> None:
    # PROTOCOL.md 3.6 / case 58: the chunked terminator (or full Content-Length) is a real end.
    pb = Playbook()
    pb.feed(chunk({"content": "all said"}))
    events, error = pb.stream.end(clean=True)
    assert error is None and [e["type"] for e in events] == [
        "content_block_stop", "message_delta", "message_stop"]
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


def test_clean_end_without_any_chunk_is_still_an_error() -> None:
    pb = Playbook()
    events, error = pb.stream.end(clean=True)
    assert events == [] and isinstance(error, ProxyError)


def test_eof_after_finish_reason_finishes() -> None:
    pb = Playbook()
    pb.feed(chunk({"content": "done"}, "stop"))
    events, error = pb.eof()
    assert error is None and [e["type"] for e in events][-2:] == ["message_delta", "message_stop"]


def test_error_before_any_event_is_raised_for_an_http_error() -> None:
    # The relay answers a stream whose first event is an error with a plain HTTP error (3.7).
    with pytest.raises(ProxyError) as info:
        run_transcript(sse_data({"error": {"code": 429, "message": "slow down"}}))
    assert info.value.status == 429 and info.value.error_type == "rate_limit_error"


def test_error_after_start_is_the_last_event() -> None:
    pb = Playbook()
    pb.feed(chunk({"content": "a"}))
    with pytest.raises(ProxyError) as info:
        pb.feed({"error": {"message": "boom", "code": 502}})
    tail = pb.translator.fail(info.value)
    assert tail == [{"type": "error", "error": {"type": "api_error", "message": info.value.message}}]
    assert pb.translator.finish() == [] and pb.translator.fail(info.value) == []  # terminal


def test_event_named_error_with_plain_text_data_is_an_error() -> None:
    body = sse_data(chunk({"content": "a"})) + b"event: error\ndata: upstream overloaded, try later\n\n"
    got = run_transcript(body + sse_data(chunk({"content": "never"}, "stop")))
    assert got[-1]["type"] == "error" and "upstream overloaded" in got[-1]["error"]["message"]
    assert not any(e.get("delta", {}).get("text") == "never" for e in got)


def test_too_long_line_fails_the_stream() -> None:
    # RELIABILITY.md F11 / S13: a line over the cap is an error, never a buffer.
    body = sse_data(chunk({"content": "ok"})) + b"data: " + b"x" * 5000 + b"\n\n"
    got = run_transcript(body, max_line_bytes=1024)
    assert got[-1]["type"] == "error" and got[-1]["error"]["type"] == "api_error"
    assert_valid_event_sequence(got)


def test_fifty_bad_events_in_a_row_fail_the_stream() -> None:
    body = sse_data(chunk({"content": "ok"})) + b"data: {nope\n\n" * 50
    got = run_transcript(body)
    assert got[-1]["type"] == "error"
    fine = sse_data(chunk({"content": "ok"})) + b"data: {nope\n\n" * 49 + sse_data(chunk(finish="stop"))
    assert run_transcript(fine)[-1]["type"] == "message_stop"


# ----------------------------------------------------------------------------
# Stop sequences and think tags in a stream.


def test_text_that_is_only_the_stop_sequence_opens_no_block() -> None:
    pb = Playbook(stop_sequences=["<END>"])
    pb.feed(chunk({"content": "<EN"}))
    pb.feed(chunk({"content": "D>"}, "stop"))
    pb.done()
    assert [e["type"] for e in pb.events] == ["message_start", "message_delta", "message_stop"]
    assert pb.events[1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "<END>"}


def test_held_back_stop_prefix_is_released_when_text_goes_on() -> None:
    pb = Playbook(stop_sequences=["<END>"])
    pb.feed(chunk({"content": "a <E"}))
    pb.feed(chunk({"content": "N but more"}, "stop"))
    pb.done()
    message = final_message(pb.events)
    assert message["content"] == [{"type": "text", "text": "a <EN but more"}]
    assert message["stop_reason"] == "end_turn"


def test_stop_sequence_text_before_a_tool_call_is_kept() -> None:
    pb = Playbook(stop_sequences=["."])
    pb.feed(chunk({"content": "Calling."}))
    pb.feed(chunk(tool_delta(0, "c", "f", "{}")))
    pb.feed(chunk(finish="tool_calls"))
    pb.done()
    message = final_message(pb.events)
    assert message["content"][0] == {"type": "text", "text": "Calling."}
    assert message["stop_reason"] == "tool_use"


def test_held_stop_prefix_keeps_its_place_before_later_reasoning() -> None:
    pb = Playbook(stop_sequences=["STOP"])
    pb.feed(chunk({"reasoning_content": "a"}))
    pb.feed(chunk({"content": "ST"}))  # held: it may be the stop sequence
    pb.feed(chunk({"reasoning_content": "b"}))  # it was not; the text still comes first
    pb.feed(chunk(finish="stop"))
    pb.done()
    content = final_message(pb.events)["content"]
    assert [(b["type"], b.get("text", b.get("thinking"))) for b in content] == [
        ("thinking", "a"), ("text", "ST"), ("thinking", "b")]
    assert_valid_event_sequence(pb.events, allow_error=False)


# Stop strings the upstream was not sent (past max_stop, or a model that takes none): the
# proxy ends the answer at the first one itself (PROTOCOL.md 2.4, ChatApi.prepare).

FIVE = ["A1", "B2", "C3", "D4", "E5"]


def _local(**meta: Any) -> Playbook:
    return Playbook(stop_sequences=FIVE, local_stops=["E5"], **meta)


def test_an_unsent_stop_string_split_across_deltas_ends_the_message_at_once() -> None:
    pb = _local()
    pb.feed(chunk({"role": "assistant", "content": "first part E"}))
    assert not pb.complete
    got = pb.feed(chunk({"content": "5 second part"}))
    assert pb.complete  # the relay stops reading and closes the upstream response
    assert [e["type"] for e in got] == ["content_block_stop", "message_delta", "message_stop"]  # "E" was held
    message = final_message(pb.events)
    assert message["content"] == [{"type": "text", "text": "first part "}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "E5")
    assert message["usage"]["input_tokens"] == 25 and message["usage"]["output_tokens"] > 0  # estimated
    assert pb.feed(chunk({"content": " more"}, "stop")) == [] and pb.eof() == ([], None)
    assert_valid_event_sequence(pb.events, allow_error=False)


def test_an_unsent_stop_string_in_one_delta_cuts_it() -> None:
    pb = _local()
    pb.feed(chunk({"content": "first part E5 second part"}))
    assert pb.complete
    assert final_message(pb.events)["content"] == [{"type": "text", "text": "first part "}]


def test_nothing_after_an_unsent_stop_string_is_sent_not_even_tool_calls() -> None:
    pb = Playbook(stop_sequences=["STOP"], local_stops=["STOP"])
    pb.feed(chunk({"content": "Calling. STOP", **tool_delta(0, "c1", "f", '{"a": 1}')}))
    message = final_message(pb.events)
    assert message["content"] == [{"type": "text", "text": "Calling. "}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "STOP")
    assert_valid_event_sequence(pb.events, allow_error=False)


def test_usage_already_known_is_reported_at_an_unsent_stop_string() -> None:
    pb = Playbook(stop_sequences=["END"], local_stops=["END"])
    pb.feed(chunk({"content": "a END b"}, usage={"prompt_tokens": 40, "completion_tokens": 3}))
    assert final_message(pb.events)["usage"]["output_tokens"] == 3


def test_text_that_starts_with_an_unsent_stop_string_opens_no_block() -> None:
    pb = Playbook(stop_sequences=["<END>"], local_stops=["<END>"])
    pb.feed(chunk({"content": "<EN"}))
    pb.feed(chunk({"content": "D> and on"}))
    assert [e["type"] for e in pb.events] == ["message_start", "message_delta", "message_stop"]
    assert pb.events[1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "<END>"}


def test_the_stop_string_that_ends_first_wins_and_the_longest_at_the_same_end() -> None:
    pb = Playbook(stop_sequences=["XYZ", "Y"], local_stops=["XYZ", "Y"])
    pb.feed(chunk({"content": "aXY"}))
    assert final_message(pb.events)["content"] == [{"type": "text", "text": "aX"}]
    pb = Playbook(stop_sequences=["END", "THE END"], local_stops=["END", "THE END"])
    for piece in ["story. TH", "E EN", "D!"]:
        pb.feed(chunk({"content": piece}))
    message = final_message(pb.events)
    assert message["content"] == [{"type": "text", "text": "story. "}] and message["stop_sequence"] == "THE END"


def test_reasoning_is_not_searched_for_unsent_stop_strings() -> None:
    pb = _local()
    pb.feed(chunk({"reasoning_content": "think E5 think"}))
    pb.feed(chunk({"content": "answer E"}))
    pb.feed(chunk({"reasoning_content": "more"}))  # the held "E" goes out first: no match across blocks
    pb.feed(chunk({"content": "5 tail E5 cut"}))
    content = final_message(pb.events)["content"]
    assert [(b["type"], b.get("text", b.get("thinking"))) for b in content] == [
        ("thinking", "think E5 think"), ("text", "answer E"), ("thinking", "more"), ("text", "5 tail ")]
    assert_valid_event_sequence(pb.events, allow_error=False)


def test_think_tags_are_reasoning_not_text_for_unsent_stop_strings() -> None:
    pb = _local(think_tags=True)
    for piece in ["<think>E5 is", " a plan</think>", "Answer E", "5 rest"]:
        pb.feed(chunk({"content": piece}))
    content = final_message(pb.events)["content"]
    assert [(b["type"], b.get("text", b.get("thinking"))) for b in content] == [
        ("thinking", "E5 is a plan"), ("text", "Answer ")]


def test_an_unsent_stop_string_held_back_to_the_end_of_the_stream_still_ends_it() -> None:
    pb = _local(think_tags=True)
    pb.feed(chunk({"content": "<thi"}))  # may still become <think>: held by the tag splitter
    pb.feed(chunk({}, "stop"))
    pb.done()
    assert final_message(pb.events)["content"] == [{"type": "text", "text": "<thi"}]
    pb = _local(think_tags=True)
    pb.feed(chunk({"content": "E"}))
    pb.feed(chunk({"content": "5"}, "length"))  # the stop string came before the limit
    pb.done()
    message = final_message(pb.events)
    assert message["content"] == [] and message["stop_reason"] == "stop_sequence"


def test_text_deferred_behind_a_live_tool_is_cut_when_released() -> None:
    pb = Playbook(stop_sequences=["STOP"], local_stops=["STOP"])
    pb.feed(chunk(tool_delta(0, "c1", "f", '{"a": ')))
    pb.feed(chunk({"content": "x STOP y"}))  # waits: the tool's JSON is still open
    pb.feed(chunk(tool_delta(0, arguments="1}")))
    assert pb.complete
    message = final_message(pb.events)
    assert message["content"] == [{"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}},
                                  {"type": "text", "text": "x "}]
    assert message["stop_reason"] == "tool_use"  # the call was shown before the stop string came
    assert_valid_event_sequence(pb.events, allow_error=False)


def test_a_json_answer_to_a_stream_request_is_cut_too() -> None:
    pb = _local()
    from fakes import completion
    events = pb.stream.from_json(completion("first part E5 second part"))
    message = final_message(events)
    assert message["content"] == [{"type": "text", "text": "first part "}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "E5")


def test_without_unsent_stop_strings_the_plain_fold_is_used() -> None:
    assert type(Playbook(stop_sequences=["END"]).stream) is ChatFold
    assert type(Playbook(stop_sequences=["END"]).translator) is StreamTranslator


def test_think_tags_matching_the_non_streaming_split() -> None:
    pb = Playbook(think_tags=True)
    for piece in ["  <think>", " deep ", "thought ", "</think>", "\n", "\nAnswer"]:
        pb.feed(chunk({"content": piece}))
    pb.feed(chunk(finish="stop"))
    pb.done()
    content = final_message(pb.events)["content"]
    assert [(b["type"], b.get("thinking", b.get("text"))) for b in content] == [
        ("thinking", "deep thought"), ("text", "Answer")]


@pytest.mark.parametrize("seed", range(4))
def test_think_tags_stream_as_the_json_answer_splits_them(seed: int) -> None:
    """PROTOCOL.md case 67 on random content cut at random places: the stream's thinking and text
    are the JSON answer's. Two ways they differed: a reasoning cut short (no ``</think>``, the
    output limit) lost any run of 8 blanks inside it, and a bare ``<think>`` came out as text."""
    from claudeproxy.apis.chat.response import split_think_tags

    rng = random.Random(seed)
    pieces = ["<think>", "</think>", "<", "</", "think", ">", "<th", "ink>", " ", "\n", " \n\t", "\n" * 9,
              "a", "b c", " x ", ""]
    for _ in range(300):
        parts = [rng.choice(pieces) for _ in range(rng.randint(1, 20))]
        pb = Playbook(think_tags=True)
        for part in parts:
            pb.feed(chunk({"content": part}))
        pb.feed(chunk(finish="stop"))
        pb.done()
        blocks = final_message(pb.events)["content"]
        got = ("".join(b.get("thinking", "") for b in blocks), "".join(b.get("text", "") for b in blocks))
        assert got == split_think_tags("".join(parts)), parts


def test_think_tags_off_leaves_tags_in_the_text() -> None:
    pb = Playbook()
    pb.feed(chunk({"content": "<think>x</think>y"}, "stop"))
    pb.done()
    assert final_message(pb.events)["content"] == [{"type": "text", "text": "<think>x</think>y"}]


def test_content_that_does_not_open_with_think_is_plain_text() -> None:
    pb = Playbook(think_tags=True)
    pb.feed(chunk({"content": "<th"}))
    pb.feed(chunk({"content": "is is text"}, "stop"))
    pb.done()
    assert final_message(pb.events)["content"] == [{"type": "text", "text": "<this is text"}]


# ----------------------------------------------------------------------------
# Isolation, message id, events_for_message.


def test_two_translators_never_share_state() -> None:
    a, b = Playbook(), Playbook()
    a.feed(chunk(tool_delta(0, "ta", "fa", '{"a":')))
    b.feed(chunk({"reasoning_content": "b thinks"}))
    a.feed(chunk(tool_delta(0, arguments="1}")))
    b.feed(chunk({"content": "b text"}))
    a.feed(chunk(finish="tool_calls", usage={"prompt_tokens": 1, "completion_tokens": 1}))
    b.feed(chunk(finish="stop", usage={"prompt_tokens": 2, "completion_tokens": 2}))
    ma, mb = final_message(a.events), final_message(b.events)
    assert [blk["type"] for blk in ma["content"]] == ["tool_use"]
    assert [blk["type"] for blk in mb["content"]] == ["thinking", "text"]
    assert ma["stop_reason"] == "tool_use" and mb["stop_reason"] == "end_turn"
    solo = Playbook()
    solo.feed(chunk({"reasoning_content": "b thinks"}))
    solo.feed(chunk({"content": "b text"}))
    solo.feed(chunk(finish="stop", usage={"prompt_tokens": 2, "completion_tokens": 2}))
    assert same_events(b.events, solo.events)


@pytest.mark.parametrize("cls", [StreamTranslator, ChatFold])
def test_no_class_level_mutable_state(cls: type) -> None:
    # STYLE.md section 2: LiteLLM's class-level deque mixed up concurrent streams.
    shared = [k for k, v in vars(cls).items() if isinstance(v, (list, dict, set, bytearray))]
    assert shared == []


def test_message_id_is_the_one_given_never_the_upstreams() -> None:
    """Servers repeat their ids (Ollama: chatcmpl-0 to -998); Claude Code merges answers sharing one."""
    pb = Playbook()
    start = pb.feed({"id": "chatcmpl-A/b c", "choices": [{"index": 0, "delta": {"content": "x"}}]})[0]
    assert start["message"]["id"] == "msg_test"


def test_generated_tool_ids_are_unique() -> None:
    pb = Playbook()
    pb.feed(chunk({"tool_calls": [
        {"index": 0, "id": "dup", "function": {"name": "f", "arguments": "{}"}},
        {"index": 1, "id": "dup", "function": {"name": "g", "arguments": "{}"}},
        {"index": 2, "function": {"name": "h", "arguments": "{}"}},
    ]}))
    pb.feed(chunk(finish="tool_calls"))
    pb.done()
    ids = [b["id"] for b in final_message(pb.events)["content"]]
    assert ids == ["dup", "dup-2", "toolu_gen1"]


MESSAGE: Dict[str, Any] = {
    "id": "msg_whole",
    "type": "message",
    "role": "assistant",
    "model": "claude-test",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "cpx1.e30"},
        {"type": "text", "text": "Here."},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": [1, "é"]}},
        {"type": "tool_use", "id": "toolu_2", "name": "g", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 3, "output_tokens": 7},
}


@pytest.mark.parametrize("content", [MESSAGE["content"], [], [{"type": "text", "text": ""}],
                                     [{"type": "thinking", "thinking": "", "signature": "s"}],
                                     [{"type": "redacted_thinking", "data": "cpx1.abc"}]],
                         ids=["mixed", "empty", "empty-text", "empty-thinking", "redacted"])
def test_events_for_message_round_trips(content: List[Dict[str, Any]]) -> None:
    message = dict(MESSAGE, content=content)
    events = events_for_message(message)
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events) == message
    wire = b"".join(encode_event(e) for e in events)
    assert events_of(wire) == events


# Transcripts that end in an error describe no message, so they have nothing to rebuild.
COMPLETE_CASES = [s for s in CASES if load_case(s).expected[-1]["type"] == "message_stop"]


@pytest.mark.parametrize("stem", COMPLETE_CASES)
def test_events_for_message_of_each_golden_result(stem: str) -> None:
    message = final_message(load_case(stem).expected)
    assert final_message(events_for_message(message)) == message


def test_openrouter_reasoning_details_of_every_delta_take_linear_time() -> None:
    """OpenRouter sends a ``reasoning_details`` entry with each reasoning delta; they were kept in a
    new list per chunk (80,000 chunks: 12 s). All of them still reach the thinking block's signature,
    joined in one pass, and details that come after it closed still get a block of their own."""
    from claudeproxy.signatures import decode_signature

    pb = Playbook(dialect="openrouter")
    feed = lambda c: pb.stream.translator.feed(parse_chat_chunk(c))  # noqa: E731  (skip JSON round trips)
    n = 80000
    events = feed(chunk({"role": "assistant", "content": ""}))
    started = time.thread_time()  # CPU: a loaded machine stretches the wall clock
    for i in range(n):
        detail = {"type": "reasoning.text", "text": f"s{i} ", "format": "anthropic-claude-v1", "index": 0}
        events += feed(chunk({"reasoning": f"s{i} ", "reasoning_details": [detail]}))
    took = time.thread_time() - started
    events += feed(chunk({"content": "Done"}))
    late = {"type": "reasoning.encrypted", "data": "ZW5j", "format": "anthropic-claude-v1", "index": 1}
    events += feed(chunk({"reasoning_details": [late]}))  # after the thinking block closed
    events += feed(chunk({}, "stop")) + pb.stream.translator.finish()
    assert_valid_event_sequence(events, allow_error=False)
    blocks = final_message(events)["content"]
    assert [b["type"] for b in blocks] == ["thinking", "text", "thinking"]
    assert blocks[0]["thinking"] == "".join(f"s{i} " for i in range(n))
    first = decode_signature(blocks[0]["signature"], "openrouter")["reasoning_details"]
    # One detail again, its text whole: the pieces of one index (whole_details).
    assert len(first) == 1 and first[0]["text"] == blocks[0]["thinking"]
    assert decode_signature(blocks[2]["signature"], "openrouter")["reasoning_details"][-1] == late
    assert took < 6.0, f"{n} chunks took {took:.1f} s"


@pytest.mark.parametrize("where", ["inside <think>", "before any tag"])
def test_a_model_looping_on_newlines_costs_linear_time(where: str) -> None:
    """think_tags: blank deltas are held (they may end the reasoning, or come before ``<think>``)
    and were re-stripped whole at every delta: 80,000 newlines took 11 to 23 s."""
    pb = Playbook(think_tags=True)
    feed = lambda c: pb.stream.translator.feed(parse_chat_chunk(c))  # noqa: E731  (skip JSON round trips)
    n = 80000
    events = feed(chunk({"role": "assistant", "content": "<think>Plan" if where == "inside <think>" else ""}))
    started = time.monotonic()
    for _ in range(n):
        events += feed(chunk({"content": "\n"}))
    took = time.monotonic() - started
    events += feed(chunk({"content": "step"})) + feed(chunk({}, "stop")) + pb.stream.translator.finish()
    assert_valid_event_sequence(events, allow_error=False)
    blocks = final_message(events)["content"]
    if where == "inside <think>":  # the newlines were reasoning after all, and reach the client
        assert [b["type"] for b in blocks] == ["thinking"] and blocks[0]["thinking"] == "Plan" + "\n" * n + "step"
    else:  # no tag came: all of it is text
        assert [b["type"] for b in blocks] == ["text"] and blocks[0]["text"] == "\n" * n + "step"
    assert took < 6.0, f"{n} deltas took {took:.1f} s"


def _calls_of(fragments: List[Dict[str, Any]]) -> List[Any]:
    pb = Playbook()
    pb.feed(chunk({"role": "assistant", "content": ""}))
    for fragment in fragments:
        pb.feed(chunk({"tool_calls": [{"index": 0, "type": "function", **fragment}]}))
    pb.feed(chunk(finish="tool_calls"))
    pb.done()
    assert_valid_event_sequence(pb.events, allow_error=False)
    return [(b["name"], b["input"]) for b in final_message(pb.events)["content"]]


@pytest.mark.parametrize("rest, calls", [
    # Every call at index 0 and no id for the next (FIELD-NOTES 1): another tool's name after the
    # first call closed is the next call, whether its arguments come with it or after it. It was
    # dropped as text after a closed object.
    ([{"function": {"name": "Bash", "arguments": '{"cmd": "ls"}'}}], [("Read", {"path": "a"}), ("Bash", {"cmd": "ls"})]),
    ([{"function": {"name": "Bash", "arguments": ""}}, {"function": {"arguments": '{"cmd": '}},
      {"function": {"arguments": '"ls"}'}}], [("Read", {"path": "a"}), ("Bash", {"cmd": "ls"})]),
    # The same tool's name with the same object stays the first call's: a repeat, reformatted,
    # after junk, a snapshot; a second call alike cannot be told from the first sent twice
    # (running one twice is worse).
    ([{"function": {"name": "Read", "arguments": '{"path": "a"}'}}], [("Read", {"path": "a"})]),
    ([{"function": {"name": "Read", "arguments": '{ "path" : "a" }'}}], [("Read", {"path": "a"})]),
    ([{"function": {"arguments": " <|call|>"}}, {"function": {"name": "Read", "arguments": '{"path": "a"}'}}],
     [("Read", {"path": "a"})]),
    ([{"function": {"name": "Read", "arguments": '{"path": "a"} '}}], [("Read", {"path": "a"})]),
    ([{"function": {"arguments": '{"path": "a"}'}}], [("Read", {"path": "a"})]),
    ([{"function": {"name": "Read", "arguments": ""}}, {"function": {"arguments": '{"path": "a"}'}}],
     [("Read", {"path": "a"})]),
    # The same tool with another object is the next call (two reads, every call at index 0 without
    # ids: a probe's upstream lost the second): named with it, or in a fragment of its own just
    # before, whole or in pieces. An object with no name before it stays (junk, as before).
    ([{"function": {"name": "Read", "arguments": '{"path": "b"}'}}], [("Read", {"path": "a"}), ("Read", {"path": "b"})]),
    ([{"function": {"name": "Read", "arguments": ""}}, {"function": {"arguments": "{"}},
      {"function": {"arguments": '"path": "b"}'}}], [("Read", {"path": "a"}), ("Read", {"path": "b"})]),
    ([{"function": {"name": "Read", "arguments": '{"pa'}}, {"function": {"arguments": 'th": "b"}'}}],
     [("Read", {"path": "a"}), ("Read", {"path": "b"})]),
    ([{"function": {"arguments": '{"path": "b"}'}}], [("Read", {"path": "a"})]),
    # The same call resent in pieces looks like another object at first: one that closes as the same
    # object is that call again (a review found each of these made two calls, the tool run twice).
    ([{"function": {"name": "Read", "arguments": ""}}, {"function": {"arguments": '{"path": '}},
      {"function": {"arguments": '"a"}'}}], [("Read", {"path": "a"})]),
    ([{"function": {"name": "Read", "arguments": '{"path": '}}, {"function": {"name": "Read", "arguments": '"a"}'}}],
     [("Read", {"path": "a"})]),
    ([{"function": {"name": "Read", "arguments": "{"}}, {"function": {"name": "Read", "arguments": '"path": "a"}'}}],
     [("Read", {"path": "a"})]),
    ([{"function": {"name": "Read", "arguments": '{ "path": "a" }<|call|>'}}], [("Read", {"path": "a"})]),
    ([{"function": {"name": "Read", "arguments": '{"path": '}}, {"function": {"name": "Read", "arguments": '"b"}'}}],
     [("Read", {"path": "a"}), ("Read", {"path": "b"})]),
    # A call resent after another (the whole list resent), or resent and cut off: still one each
    # (a second review). Objects are told apart as JSON: true is no 1.
    ([{"function": {"name": "Read", "arguments": '{"path": "b"}'}}, {"function": {"name": "Read", "arguments": '{"path": "a"}'}}],
     [("Read", {"path": "a"}), ("Read", {"path": "b"})]),
    ([{"function": {"name": "Bash", "arguments": '{"cmd": "ls"}'}}, {"function": {"name": "Read", "arguments": '{"path": "a"}'}},
      {"function": {"name": "Bash", "arguments": '{"cmd": "ls"}'}}], [("Read", {"path": "a"}), ("Bash", {"cmd": "ls"})]),
    ([{"function": {"name": "Read", "arguments": '{"path": '}}, {"function": {"arguments": '"a"'}}], [("Read", {"path": "a"})]),
    ([{"function": {"name": "Read", "arguments": '{"path": true}'}}], [("Read", {"path": "a"}), ("Read", {"path": True})]),
    # A blank fragment between a name alone and the next call's arguments leaves the name standing.
    ([{"function": {"name": "Read", "arguments": ""}}, {"function": {"arguments": " "}}, {"function": {}},
      {"function": {"arguments": '{"path": "b"}'}}], [("Read", {"path": "a"}), ("Read", {"path": "b"})]),
])
def test_a_call_at_a_reused_index_without_an_id(rest: List[Dict[str, Any]], calls: List[Any]) -> None:
    first = {"id": "call_1", "function": {"name": "Read", "arguments": '{"path": "a"}'}}
    assert _calls_of([first] + rest) == calls


def test_parallel_reads_at_index_0_without_any_id_are_each_a_call() -> None:
    """A probe's upstream: every call at index 0, none with an id, each whole in one chunk; the
    second read was dropped without a word, and Claude Code fans out parallel reads."""
    frags = [{"function": {"name": "Read", "arguments": '{"path": "%s"}' % p}} for p in "abc"]
    assert _calls_of(frags) == [("Read", {"path": "a"}), ("Read", {"path": "b"}), ("Read", {"path": "c"})]


def test_calls_without_index_or_id_each_whole_stay_apart_even_to_one_tool() -> None:
    """No index, no id (servers that send each call whole in one fragment): two reads in one turn
    are two calls, unlike the same name at a reused index; a name before the last call's arguments
    closed is still that call's."""
    pb = Playbook()
    pb.feed(chunk({"role": "assistant", "content": ""}))
    for fragment in ({"function": {"name": "Read", "arguments": '{"path": "a"}'}},
                     {"function": {"name": "Read", "arguments": '{"path": "b"}'}},
                     {"function": {"name": "Bash", "arguments": '{"cmd": '}},
                     {"function": {"name": "Bash", "arguments": '"ls"}'}}):
        pb.feed(chunk({"tool_calls": [{"type": "function", **fragment}]}))
    pb.feed(chunk(finish="tool_calls"))
    pb.done()
    assert_valid_event_sequence(pb.events, allow_error=False)
    assert [(b["name"], b["input"]) for b in final_message(pb.events)["content"]] == [
        ("Read", {"path": "a"}), ("Read", {"path": "b"}), ("Bash", {"cmd": "ls"})]


def test_another_tool_named_before_the_first_call_closed_stays_in_it() -> None:
    """Not closed yet: the fragment is the first call's, whatever name it repeats (as before)."""
    frags = [{"id": "call_1", "function": {"name": "Read", "arguments": '{"path": '}},
             {"function": {"name": "Bash", "arguments": '"a"}'}}]
    assert _calls_of(frags) == [("Read", {"path": "a"})]


def test_a_server_naming_the_call_in_every_fragment_makes_one_call() -> None:
    frags = [{"function": {"name": "Read", "arguments": piece}} for piece in ('{"pa', 'th": ', '"a"}', '{"path": "a"}')]
    assert _calls_of([{"id": "call_1", **frags[0]}] + frags[1:]) == [("Read", {"path": "a"})]


def test_openrouter_reasoning_detail_pieces_are_one_detail_again() -> None:
    """A stream sends one detail's text in pieces and its signature in a piece after them, all of one
    index; echoed as they came, the next turn carried the text without its signature (a probe)."""
    from claudeproxy.apis.chat.stream import whole_details

    pieces = [{"type": "reasoning.text", "text": "Step 1", "format": "f", "index": 0},
              {"type": "reasoning.text", "text": ". Step 2", "format": "f", "index": 0},
              {"type": "reasoning.text", "text": None, "signature": "c2ln", "format": "f", "index": 0},
              {"type": "reasoning.encrypted", "data": "ZW5j", "index": 1},
              {"type": "reasoning.summary", "summary": "a", "index": 2},
              {"type": "reasoning.summary", "summary": "b", "index": 2},
              {"type": "reasoning.text", "text": "no index"}, {"type": "reasoning.text", "text": "no index either"},
              "not a detail"]
    assert whole_details(pieces) == [
        {"type": "reasoning.text", "text": "Step 1. Step 2", "signature": "c2ln", "format": "f", "index": 0},
        {"type": "reasoning.encrypted", "data": "ZW5j", "index": 1},
        {"type": "reasoning.summary", "summary": "ab", "index": 2},
        {"type": "reasoning.text", "text": "no index"}, {"type": "reasoning.text", "text": "no index either"},
        "not a detail"]
    assert pieces[0]["text"] == "Step 1"  # what came stays as it came


def test_openrouter_state_that_came_before_the_text_goes_in_a_block_before_it() -> None:
    """probe J F7: a client that asked for no thinking got OpenRouter's reasoning_details in a block
    after the text, or between two tool calls; Anthropic's thinking comes first. The state still
    goes back whole (the last block that carries it wins)."""
    from claudeproxy.signatures import decode_signature

    pb = Playbook(dialect="openrouter", thinking=False)
    detail = {"type": "reasoning.text", "text": "plan", "signature": "c2ln", "format": "anthropic-claude-v1", "index": 0}
    pb.feed(chunk({"role": "assistant", "content": "", "reasoning": "plan", "reasoning_details": [detail]}))
    pb.feed(chunk({"content": "Reading both."}))
    calls = [{"index": i, "id": f"call_{i}", "type": "function", "function": {"name": "Read", "arguments": '{"p": 1}'}}
             for i in range(2)]
    pb.feed(chunk({"tool_calls": calls}))
    pb.feed(chunk({}, "tool_calls"))
    pb.done()
    assert_valid_event_sequence(pb.events, allow_error=False)
    blocks = final_message(pb.events)["content"]
    assert [b["type"] for b in blocks] == ["thinking", "text", "tool_use", "tool_use"]
    assert blocks[0]["thinking"] == ""  # not asked for: the state alone
    assert decode_signature(blocks[0]["signature"], "openrouter")["reasoning_details"] == [detail]


def test_a_state_block_before_the_text_leaves_text_held_for_a_stop_string_in_its_place() -> None:
    """Review H: the block carrying OpenRouter's state, opened as the text began, sent the text held
    back for a stop string first: "Hello STILL here." came out as "ST", then "Hello ILL here."."""
    pb = Playbook(dialect="openrouter", thinking=False, stop_sequences=["STOP!"])
    detail = {"type": "reasoning.text", "text": "plan", "signature": "c2ln", "format": "anthropic-claude-v1", "index": 0}
    pb.feed(chunk({"role": "assistant", "content": "", "reasoning": "plan", "reasoning_details": [detail]}))
    pb.feed(chunk({"content": "Hello ST"}))  # "ST" may begin STOP!: held back
    pb.feed(chunk({"content": "ILL here."}))
    pb.feed(chunk({}, "stop"))
    pb.done()
    assert_valid_event_sequence(pb.events, allow_error=False)
    blocks = final_message(pb.events)["content"]
    assert [(b["type"], b.get("text")) for b in blocks] == [("thinking", None), ("text", "Hello STILL here.")]
