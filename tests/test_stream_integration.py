"""Streaming through the real server: nothing buffered, pings, prompt endings, framing.

The proxy runs against ``FakeUpstream``; ``StreamClient`` reads the client
socket as bytes arrive. A ``Gate`` in the upstream script proves that an
event reached the client while the upstream still held its next chunk
(PROTOCOL.md 3.4 steps 9-10, 3.7; RELIABILITY.md S13, S14; cases 10, 51b,
57, 64, 65). Every stream is checked with ``assert_valid_event_sequence``.
"""

from __future__ import annotations

import gc
import json
import random
import time
import tracemalloc
from typing import Any, Dict, List

import pytest

from conftest import CLIENT_KEY, minimal_request, request
from fakes import Fault, Gate, Reply, ServerPool, Sleep, StreamClient, chunk, completion, json_reply, sse_reply
from sse_checks import assert_valid_event_sequence, final_message

SHARED_SERVERS = True  # one fake upstream and its proxies serve the whole module (conftest)

HEADERS = {"x-api-key": CLIENT_KEY}


THINKING = {"type": "adaptive"}  # thinking blocks come only to a client that asks for them


def open_stream(proxy: Any, **overrides: Any) -> StreamClient:
    return StreamClient(proxy.url, minimal_request(stream=True, **overrides), headers=HEADERS, timeout=8)


def kinds(events: List[Dict[str, Any]]) -> List[str]:
    return [e["type"] for e in events]


def usage_chunk(prompt: int, completion_tokens: int, **extra: Any) -> Dict[str, Any]:
    return {"id": "chatcmpl-abc123", "object": "chat.completion.chunk", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens, **extra}}




# ---------------------------------------------------------------------------
# Memory: a stream under way keeps none of its request.


def _held_by_the_proxy() -> int:
    """Bytes traced now, leaving out what the test and its fakes allocated themselves."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, "*/tests/*", all_frames=True), tracemalloc.Filter(False, tracemalloc.__file__)])
    return sum(stat.size for stat in snapshot.statistics("filename"))


def test_a_stream_under_way_holds_none_of_its_request(proxy, fake_upstream):
    # Once the first event is out nothing can be retried: the JSON body, its parsed form and
    # the translated upstream body are let go (64 Claude Code streams held 8 MiB of them).
    blocks = [{"type": "text", "text": f"part {i} " + "x" * 200} for i in range(2000)]
    size = len(json.dumps(blocks))
    # One stream first: what a server allocates once (caches, lazily built state) is not the point.
    fake_upstream.push(sse_reply(chunk({"content": "warm"}), chunk({}, "stop"), usage_chunk(5, 2)))
    with open_stream(proxy, messages=[{"role": "user", "content": blocks[:10]}]) as client:
        client.read_all(timeout=5)
    gates = [Gate() for _ in range(3)]
    for gate in gates:
        fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "one"}), gate,
                                     chunk({}, "stop"), usage_chunk(5, 2)))
    tracemalloc.start(12)  # deep enough to see whether a test or fake frame made the allocation
    try:
        before = _held_by_the_proxy()
        clients = [open_stream(proxy, messages=[{"role": "user", "content": blocks}]) for _ in gates]
        for client in clients:
            client.read_until("content_block_delta", timeout=8)
        deadline = time.monotonic() + 5  # the handler lets go just after it wrote the first events
        while True:
            held = _held_by_the_proxy() - before
            if held < size // 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        tracemalloc.stop()
        for gate in gates:
            gate.release()
    for client in clients:
        events = client.read_all(timeout=5)
        assert_valid_event_sequence(events, allow_error=False)
        assert final_message(events)["content"] == [{"type": "text", "text": "one"}]
        client.close()
    # Three streams of a 460 KB request: without the release they hold several times that.
    assert held < size // 2, f"{held} bytes held by 3 open streams (request {size} bytes)"


# ---------------------------------------------------------------------------
# No buffering.


def _framed(*events: bytes) -> bytes:
    """SSE events as HTTP/1.1 chunks, one each, as an upstream writes one chunk per token."""
    return b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)


def _data(obj: Dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode("utf-8") + b"\n\n"


def _pre_framed(*steps: Any) -> Reply:
    # The fake writes these bytes as they are: several chunks can go out in one write.
    return Reply(200, (("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")), list(steps),
                 close_delimited=True)


def test_a_burst_of_chunks_that_arrived_together_goes_out_in_one_write(proxy, fake_upstream):
    # A fast upstream (or a slow reader) leaves many chunks in one packet: folded and written
    # together, not one client write per upstream chunk.
    words = [f"w{i} " for i in range(50)]
    burst = _framed(_data(chunk({"role": "assistant", "content": ""})), *(_data(chunk({"content": w})) for w in words),
                    _data(chunk({}, "stop")), b"data: [DONE]\n\n")
    fake_upstream.push(_pre_framed(burst + b"0\r\n\r\n"))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["content"] == [{"type": "text", "text": "".join(words)}]
    with_text = [c for c in client.chunks if b"text_delta" in c]
    assert len(with_text) <= 3, f"{len(with_text)} client writes carried the 50 deltas"


@pytest.mark.parametrize("cut", ["end of chunk", "size line", "chunk data"])
def test_what_arrived_goes_out_while_the_next_chunk_is_still_incomplete(proxy, fake_upstream, cut):
    # Reading on for chunks already at hand must never wait for one that is not all there.
    first = _framed(_data(chunk({"role": "assistant", "content": "one"})))
    second = _framed(_data(chunk({"content": " two"})))
    both = first + second
    split = {"end of chunk": len(first) - 2, "size line": len(first) + 1,
             "chunk data": len(first) + second.index(b"\r\n") + 10}[cut]
    gate = Gate()
    fake_upstream.push(_pre_framed(both[:split], gate, both[split:],
                                   _framed(_data(chunk({}, "stop")), b"data: [DONE]\n\n") + b"0\r\n\r\n"))
    with open_stream(proxy) as client:
        delta = client.read_until("content_block_delta", timeout=5)
        assert delta["delta"] == {"type": "text_delta", "text": "one"}
        assert gate.reached.wait(5) and not gate.event.is_set()  # the rest was still held back
        gate.release()
        client.read_all(timeout=5)
    assert_valid_event_sequence(client.events, allow_error=False)
    assert final_message(client.events)["content"] == [{"type": "text", "text": "one two"}]


def test_first_delta_reaches_client_while_upstream_holds_its_second_chunk(proxy, fake_upstream):
    gate = Gate()
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "one"}), gate,
                                 chunk({"content": " two"}), chunk({}, "stop"), usage_chunk(5, 2)))
    with open_stream(proxy) as client:
        first = client.read_until("content_block_delta", timeout=3)
        # The upstream is parked at the gate: the delta cannot have come from a buffered body.
        # (It sets ``reached`` just after writing the chunk before it: wait for that, not race it.)
        assert gate.reached.wait(5) and not gate.event.is_set()
        assert first["delta"] == {"type": "text_delta", "text": "one"}
        gate.release()
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["content"] == [{"type": "text", "text": "one two"}]


def test_every_event_goes_out_as_it_is_translated(proxy, fake_upstream):
    """Three gates: message_start with the first text, then each delta, arrive one step at a time."""
    gates = [Gate(), Gate(), Gate()]
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "0"}), gates[0],
                                 chunk({"content": "a"}), gates[1], chunk({"content": "b"}), gates[2],
                                 chunk({}, "stop"), usage_chunk(3, 2)))
    with open_stream(proxy) as client:
        assert client.read_until("message_start", timeout=3)
        assert client.read_until("content_block_delta", timeout=3)["delta"]["text"] == "0"
        for gate, text in zip(gates, ("a", "b")):
            gate.release()
            assert client.read_until("content_block_delta", timeout=3)["delta"]["text"] == text
            assert not gates[-1].event.is_set()
        gates[-1].release()
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)


def test_text_and_an_error_event_in_one_read_keep_their_order(proxy, fake_upstream):
    """The relay folds all the lines of one read at once: the text that came before an
    error event in the same packet still reaches the client, then the one error event."""
    def data(obj: Dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(obj).encode() + b"\n\n"
    packet = (data(chunk({"role": "assistant", "content": ""})) + data(chunk({"content": "Partial"}))
              + data(chunk({"content": " answer"})) + data({"error": {"message": "overloaded", "code": 503}}))
    fake_upstream.push(sse_reply(packet, done=False))  # one step: one write, one chunk
    with open_stream(proxy) as client:
        assert client.status == 200
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events)
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "Partial answer"
    assert kinds(events)[-1] == "error" and kinds(events).count("error") == 1
    assert "message_stop" not in kinds(events)


def test_live_tool_input_reaches_client_before_the_last_fragment(proxy, fake_upstream):
    """Case 51b: a long tool input streams as it is generated, not at finalize."""
    args = json.dumps({"path": "/tmp/notes.txt", "content": "".join(f"line {i}\n" for i in range(40))})
    cuts = sorted(random.Random(51).sample(range(1, len(args)), 19))
    fragments = [args[a:b] for a, b in zip([0, *cuts], [*cuts, len(args)])]
    assert len(fragments) == 20 and fragments[0].startswith("{")
    steps: List[Any] = [chunk({"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_w", "type": "function", "function": {"name": "write", "arguments": fragments[0]}}]})]
    steps += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}) for f in fragments[1:-1]]
    gate = Gate()
    steps += [gate, chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragments[-1]}}]}),
              chunk({}, "tool_calls"), usage_chunk(9, 30)]
    fake_upstream.push(sse_reply(*steps))
    with open_stream(proxy) as client:
        start = client.read_until("content_block_start", timeout=3)
        assert start["content_block"] == {"type": "tool_use", "id": "call_w", "name": "write", "input": {}}
        delta = client.read_until("content_block_delta", timeout=3)
        assert delta["delta"]["type"] == "input_json_delta" and delta["delta"]["partial_json"]
        assert not gate.event.is_set()
        gate.release()
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    assert message["content"] == [{"type": "tool_use", "id": "call_w", "name": "write", "input": json.loads(args)}]
    assert message["stop_reason"] == "tool_use"


# ---------------------------------------------------------------------------
# Pings (case 64, PROTOCOL.md 3.4 step 10 and 3.7).


def test_pings_while_upstream_sends_only_comment_lines(make_proxy, fake_upstream):
    proxy = make_proxy(ping_interval=0.3)
    gate = Gate()
    comments = [step for _ in range(6) for step in (": OPENROUTER PROCESSING\n\n", Sleep(0.15))]
    fake_upstream.push(sse_reply(*comments, gate, chunk({"content": "late"}), chunk({}, "stop"), usage_chunk(4, 1)))
    with open_stream(proxy) as client:
        client.read_until("ping", timeout=3)
        client.read_until("ping", timeout=3)
        assert not gate.event.is_set()  # the pings came while the upstream had sent no event at all
        gate.release()
        events = client.read_all(timeout=5)
    # Committing to the stream means message_start first, then pings; never a ping before it.
    assert kinds(events)[:2] == ["message_start", "ping"]
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["content"] == [{"type": "text", "text": "late"}]


def test_pings_in_the_middle_of_a_stream(make_proxy, fake_upstream):
    proxy = make_proxy(ping_interval=0.3)
    fake_upstream.push(sse_reply(chunk({"content": "thinking about it"}), ": keep-alive\n\n", Sleep(1.0),
                                 chunk({"content": "."}), chunk({}, "stop"), usage_chunk(4, 3)))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=6)
    assert_valid_event_sequence(events, allow_error=False)
    between = kinds(events)[kinds(events).index("content_block_delta"):]
    assert between.count("ping") >= 2, kinds(events)
    assert between.index("ping") < len(between) - 1 - between[::-1].index("content_block_delta")


def test_every_write_of_a_stream_holds_the_relays_lock(make_proxy, fake_upstream, monkeypatch):
    """The handler thread and the watchdog (pings, the idle timeout) both act on a stream: every
    ``Relay._send`` (the events of a read, the timeout's error, the end) happens under the relay's
    lock, which it does not take itself."""
    from claudeproxy import relay as relay_module

    owned: List[bool] = []
    send = relay_module.Relay._send

    def checked(self: Any, events: List[Dict[str, Any]], end: bool = False) -> None:
        owned.append(self.lock._is_owned())  # noqa: SLF001 - RLock's own check, as Condition uses it
        send(self, events, end)

    monkeypatch.setattr(relay_module.Relay, "_send", checked)
    proxy = make_proxy(ping_interval=0.2, idle_timeout=1.2)
    fake_upstream.push(sse_reply(chunk({"content": "thinking about it"}), Sleep(0.7), chunk({"content": "."}),
                                 Sleep(2.0), chunk({}, "stop")))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=6)
    assert "ping" in kinds(events) and kinds(events)[-1] == "error", kinds(events)  # pings, then the idle timeout
    assert len(owned) >= 3 and all(owned), owned  # two reads' events and the error


def test_no_ping_when_events_flow(make_proxy, fake_upstream):
    proxy = make_proxy(ping_interval=0.3)
    steps = [step for i in range(8) for step in (chunk({"content": f"{i} "}), Sleep(0.1))]
    fake_upstream.push(sse_reply(*steps, chunk({}, "stop"), usage_chunk(4, 8)))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=6)
    assert_valid_event_sequence(events, allow_error=False)
    assert "ping" not in kinds(events)


# ---------------------------------------------------------------------------
# Ending promptly (case 57, PROTOCOL.md 3.4 step 9).


def test_finish_and_usage_end_the_stream_without_waiting_for_eof(proxy, fake_upstream):
    """Case 57: finish_reason + usage, then the upstream neither sends [DONE] nor closes."""
    fake_upstream.push(sse_reply(chunk({"content": "done"}), chunk({}, "stop", usage={"prompt_tokens": 7,
                                 "completion_tokens": 1}), Fault("hang"), done=False))
    with open_stream(proxy) as client:
        begun = time.monotonic()
        events = client.read_all(timeout=3)
        took = time.monotonic() - begun
    assert_valid_event_sequence(events, allow_error=False)
    assert kinds(events)[-2:] == ["message_delta", "message_stop"]
    assert events[-2]["usage"]["output_tokens"] == 1 and events[-2]["usage"]["input_tokens"] == 7
    assert took < 1.5, f"message_stop took {took:.2f} s"
    assert fake_upstream.wait_closed(2) is not None, "the proxy kept the finished upstream connection open"


def test_finish_reason_then_silence_ends_after_the_grace(make_proxy, fake_upstream):
    proxy = make_proxy(finish_grace=0.4)
    fake_upstream.push(sse_reply(chunk({"content": "hi"}), chunk({}, "length"), Fault("hang"), done=False))
    with open_stream(proxy) as client:
        client.read_until("content_block_delta", timeout=3)
        begun = time.monotonic()
        events = client.read_all(timeout=4)
        took = time.monotonic() - begun
    assert_valid_event_sequence(events, allow_error=False)
    assert events[-2]["delta"]["stop_reason"] == "max_tokens"
    assert events[-2]["usage"]["output_tokens"] >= 1  # estimated: the upstream sent no usage
    assert 0.25 <= took < 2.5, f"finalized after {took:.2f} s, grace 0.4 s"
    assert fake_upstream.wait_closed(2) is not None


def test_usage_arriving_after_finish_reason_is_waited_for(make_proxy, fake_upstream):
    """Usage follows finish_reason in its own chunk (case 56): the grace must not cut it off."""
    proxy = make_proxy(finish_grace=0.5)
    fake_upstream.push(sse_reply(chunk({"content": "hi"}), chunk({}, "stop"), Sleep(0.2),
                                 usage_chunk(321, 12), Fault("hang"), done=False))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=4)
    assert_valid_event_sequence(events, allow_error=False)
    assert events[-2]["usage"]["input_tokens"] == 321 and events[-2]["usage"]["output_tokens"] == 12


def test_clean_end_of_body_without_done_or_finish_reason_finishes(proxy, fake_upstream):
    """Case 58: a proper chunked terminator after text, no [DONE], no finish_reason."""
    fake_upstream.push(sse_reply(chunk({"content": "all"}), chunk({"content": " said"}), done=False))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=4)
    assert_valid_event_sequence(events, allow_error=False)
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    assert final_message(events)["content"] == [{"type": "text", "text": "all said"}]


def _tool_call_then(*arguments: str) -> List[Dict[str, Any]]:
    """A tool call's start (id, name, no arguments yet), then its arguments in the fragments given."""
    steps = [chunk({"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": ""}}]})]
    return steps + [chunk({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}) for a in arguments]


CUT_TOOL_CALLS = {
    "cut-off": _tool_call_then('{"command": "rm -rf', ' /tmp/x'),
    "none": _tool_call_then(),
    # The first call is whole (streamed live); the second, assembled to be sent at the end, is cut.
    "second-cut": _tool_call_then('{"command": "ls"}') + [chunk({"tool_calls": [
        {"index": 1, "id": "call_2", "type": "function", "function": {"name": "Bash", "arguments": '{"comm'}}]})],
}


@pytest.mark.parametrize("case", sorted(CUT_TOOL_CALLS))
def test_clean_end_inside_tool_arguments_is_an_error(proxy, fake_upstream, case):
    """A proper chunked terminator, no [DONE], no finish_reason, but a tool call's arguments are not a
    whole JSON object: the body was cut inside them. Never a tool_use answer with a cut or empty input."""
    fake_upstream.push(sse_reply(*CUT_TOOL_CALLS[case], done=False))
    with open_stream(proxy) as client:
        if case == "none":
            # Nothing had gone to the client (a call's name alone opens no block until its first
            # argument decides how it streams): a plain HTTP error, which the SDKs may retry.
            assert client.status == 502
            error = client.json["error"]
            assert error["type"] == "api_error" and "ended early inside a tool call's arguments" in error["message"]
            return
        events = client.read_all(timeout=4)
    assert_valid_event_sequence(events)
    names = kinds(events)
    assert names[-1] == "error" and names.count("error") == 1, names
    assert "message_delta" not in names and "message_stop" not in names, names
    assert events[-1]["error"]["type"] == "api_error"
    assert "ended early inside a tool call's arguments" in events[-1]["error"]["message"]


def test_clean_end_after_whole_tool_arguments_finishes(proxy, fake_upstream):
    """The same clean end after arguments that make a whole JSON object: the tool_use answer completes."""
    fake_upstream.push(sse_reply(*_tool_call_then('{"command": "ls', ' /tmp/x"}'), done=False))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=4)
    assert_valid_event_sequence(events, allow_error=False)
    assert events[-2]["delta"]["stop_reason"] == "tool_use" and events[-1]["type"] == "message_stop"
    [block] = final_message(events)["content"]
    assert block["type"] == "tool_use" and block["name"] == "Bash" and block["input"] == {"command": "ls /tmp/x"}


def test_close_delimited_body_without_done_or_finish_reason_is_an_error(proxy, fake_upstream):
    """A body that ends only by the socket closing cannot tell an end from a drop (S12): error."""
    reply = sse_reply(chunk({"content": "half"}), done=False)
    reply.chunked, reply.close_delimited = False, True
    fake_upstream.push(reply)
    with open_stream(proxy) as client:
        events = client.read_all(timeout=4)
    assert_valid_event_sequence(events)
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "api_error"
    assert not any(e["type"] == "message_stop" for e in events)


def test_close_delimited_body_with_finish_reason_finishes(proxy, fake_upstream):
    reply = sse_reply(chunk({"content": "whole"}), chunk({}, "stop"), done=False)
    reply.chunked, reply.close_delimited = False, True
    fake_upstream.push(reply)
    with open_stream(proxy) as client:
        events = client.read_all(timeout=4)
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["content"] == [{"type": "text", "text": "whole"}]


# ---------------------------------------------------------------------------
# JSON answers to stream requests; the upstream request; usage (cases 10, 65).


def _tool_completion() -> Dict[str, Any]:
    return completion("Let me look.", finish="tool_calls", reasoning_content="Check the file first.",
                      tool_calls=[{"id": "call_1", "type": "function",
                                   "function": {"name": "read", "arguments": "{\"path\": \"a.txt\"}"}}],
                      usage={"prompt_tokens": 120, "completion_tokens": 30, "prompt_tokens_details": {"cached_tokens": 100}})


def test_json_answer_to_a_stream_request_becomes_the_same_message(proxy, fake_upstream, post):
    fake_upstream.push(json_reply(_tool_completion()), json_reply(_tool_completion()))
    plain = post(minimal_request(thinking=THINKING))
    assert plain.status == 200, plain
    with open_stream(proxy, thinking=THINKING) as client:
        events = client.read_all(timeout=5)
        assert client.headers["content-type"].startswith("text/event-stream")
    assert_valid_event_sequence(events, allow_error=False)
    streamed = final_message(events)
    expected = plain.json
    assert [b["type"] for b in expected["content"]] == ["thinking", "text", "tool_use"]
    for key in ("content", "stop_reason", "stop_sequence", "usage", "model", "role", "type"):
        assert streamed[key] == expected[key], key
    assert streamed["usage"] == {"input_tokens": 20, "cache_read_input_tokens": 100,
                                 "cache_creation_input_tokens": 0, "output_tokens": 30}


def test_upstream_is_asked_to_stream_with_usage(proxy, fake_upstream):
    """Case 10: stream: true and stream_options.include_usage; Accept asks for SSE."""
    fake_upstream.push(sse_reply(chunk({"content": "x"}), chunk({}, "stop"), usage_chunk(1, 1)))
    with open_stream(proxy) as client:
        client.read_all(timeout=4)
    sent = fake_upstream.last
    assert sent.json["stream"] is True
    assert sent.json["stream_options"] == {"include_usage": True}
    assert sent.headers["accept"] == "text/event-stream"


def test_message_start_estimates_input_and_message_delta_carries_upstream_usage(proxy, fake_upstream):
    """Case 65 / FIELD-NOTES 8: an estimate first, the upstream's numbers at the end."""
    fake_upstream.push(sse_reply(chunk({"content": "ok"}), chunk({}, "stop"),
                                 usage_chunk(1234, 56, prompt_tokens_details={"cached_tokens": 1000})))
    long_text = "Please summarise this paragraph about stream relays. " * 20
    with open_stream(proxy, messages=[{"role": "user", "content": long_text}]) as client:
        events = client.read_all(timeout=4)
    assert_valid_event_sequence(events, allow_error=False)
    assert events[0]["message"]["usage"]["input_tokens"] > 100  # about a thousand characters of prompt
    assert events[-2]["usage"] == {"input_tokens": 234, "cache_read_input_tokens": 1000,
                                   "cache_creation_input_tokens": 0, "output_tokens": 56}


def test_worked_example_parallel_tools_usage_chunk_no_done(proxy, fake_upstream):
    """PROTOCOL.md 3.8, end to end, with the upstream closing without [DONE]."""
    d = {"role": "assistant", "content": ""}
    fake_upstream.push(sse_reply(
        chunk(d), chunk({"reasoning_content": "Need both."}), chunk({"content": "Checking."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "read", "arguments": "{\"p\":"}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "ls", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"x\"}"}}]}),
        chunk({}, "tool_calls"),
        usage_chunk(120, 30, prompt_tokens_details={"cached_tokens": 100}), done=False))
    with open_stream(proxy, thinking=THINKING) as client:
        events = client.read_all(timeout=4)
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    assert [b["type"] for b in message["content"]] == ["thinking", "text", "tool_use", "tool_use"]
    assert message["content"][0]["thinking"] == "Need both." and message["content"][0]["signature"]
    assert message["content"][1] == {"type": "text", "text": "Checking."}
    assert message["content"][2] == {"type": "tool_use", "id": "call_a", "name": "read", "input": {"p": "x"}}
    assert message["content"][3] == {"type": "tool_use", "id": "call_b", "name": "ls", "input": {}}
    assert message["stop_reason"] == "tool_use"
    assert events[-2]["usage"] == {"input_tokens": 20, "cache_read_input_tokens": 100,
                                   "cache_creation_input_tokens": 0, "output_tokens": 30}


ONE_CALL_TOOLS = [{"name": n, "input_schema": {"type": "object"}} for n in ("read", "ls", "grep")]
ONE_CALL = {"type": "auto", "disable_parallel_tool_use": True}


def _three_calls_around_text() -> Reply:
    """Three calls in one turn, text streamed while the first is open (it comes after its block)."""
    return sse_reply(
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "read", "arguments": "{\"p\":"}}]}),
        chunk({"content": "Also listing."}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "ls", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"x\"}"}}]}),
        chunk({"tool_calls": [{"index": 2, "id": "call_c", "function": {"name": "grep", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"), usage_chunk(50, 9))


def test_one_tool_call_when_the_client_forbids_parallel_ones(proxy, fake_upstream, post):
    """Probe AD D3: an upstream that ignores parallel_tool_calls: false (or refused it, and is no
    longer sent it) gave the client several tool_use blocks though it asked for one at most."""
    fake_upstream.push(_three_calls_around_text(), _three_calls_around_text())
    with open_stream(proxy, tools=ONE_CALL_TOOLS, tool_choice=ONE_CALL) as client:
        events = client.read_all(timeout=5)
    assert fake_upstream.last.json["parallel_tool_calls"] is False
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    assert [b["type"] for b in message["content"]] == ["tool_use", "text"]
    assert message["content"][0] == {"type": "tool_use", "id": "call_a", "name": "read", "input": {"p": "x"}}
    assert message["stop_reason"] == "tool_use"
    starts = [e["index"] for e in events if e["type"] == "content_block_start"]
    assert starts == list(range(len(starts)))  # no gap where a call was left out
    with open_stream(proxy, tools=ONE_CALL_TOOLS) as client:  # parallel calls allowed: all three
        assert [b["type"] for b in final_message(client.read_all(timeout=5))["content"]] == [
            "tool_use", "text", "tool_use", "tool_use"]


def test_one_tool_call_in_a_json_answer_when_the_client_forbids_parallel_ones(fake_upstream, post):
    calls = [{"id": f"call_{n}", "type": "function", "function": {"name": n, "arguments": "{}"}}
             for n in ("read", "ls")]
    fake_upstream.push(json_reply(completion("Two.", finish="tool_calls", tool_calls=calls)))
    answer = post(minimal_request(tools=ONE_CALL_TOOLS, tool_choice={"type": "any", "disable_parallel_tool_use": True}))
    assert answer.status == 200, answer
    assert [(b["type"], b.get("name")) for b in answer.json["content"]] == [("text", None), ("tool_use", "read")]


# ---------------------------------------------------------------------------
# Framing.


def test_stream_is_chunked_http11_event_stream(proxy, fake_upstream):
    fake_upstream.push(sse_reply(chunk({"content": "a"}), chunk({"content": "b"}), chunk({}, "stop"), usage_chunk(2, 2)))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=4)
        assert client.status == 200
        assert client.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in client.headers
        assert client.headers["content-type"].split(";")[0] == "text/event-stream"
        assert client.headers["cache-control"] == "no-cache"
        assert client.headers["request-id"].startswith("req_")
        assert client.ended  # the 0-size terminator came, so the connection can be reused
        # One write per batch: every chunk holds whole events only.
        assert all(c.endswith(b"\n\n") and c.startswith(b"event: ") for c in client.chunks)
    assert_valid_event_sequence(events, allow_error=False)


def test_connection_is_reused_after_a_stream(proxy, fake_upstream):
    """Keep-alive: after the chunked terminator a second request on the same socket is answered."""
    fake_upstream.push(sse_reply(chunk({"content": "a"}), chunk({}, "stop"), usage_chunk(2, 1)))
    with open_stream(proxy) as client:
        assert_valid_event_sequence(client.read_all(timeout=4), allow_error=False)
        client.send(minimal_request(), headers=HEADERS)
        assert client.status == 200 and client.headers["content-type"] == "application/json"
        assert client.json["content"] == [{"type": "text", "text": "Hello!"}]


# ---------------------------------------------------------------------------
# Re-chunking: the same upstream bytes split anywhere give the same events.

_STREAMS: Dict[str, bytes] = {
    "text": b"".join(b"data: " + json.dumps(c, ensure_ascii=False).encode() + b"\n\n" for c in [
        chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo, w\u00f6rld \u2603"}),
        chunk({}, "stop"), usage_chunk(11, 4)]) + b"data: [DONE]\n\n",
    "tools_crlf": b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in [
        chunk({"reasoning_content": "Plan: read then list."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "read", "arguments": "{\"p\":"}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "ls", "arguments": "{\"d\":"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"x\"}"}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": "\"/\"}"}}]}),
        chunk({}, "tool_calls"), usage_chunk(50, 20)]) + b"data: [DONE]\r\n\r\n",
    "comments_multiline": b": OPENROUTER PROCESSING\n\n" + b"".join(
        b"data:" + json.dumps(c).encode() + b"\n\n" for c in [chunk({"content": "a\nb"}), chunk({"content": "c"})]
    ) + b"event: ignored\ndata: {\"choices\":[{\"index\":0,\"delta\":\ndata: {\"content\":\"d\"}}]}\n\n"
      + b"data: " + json.dumps(chunk({}, "stop")).encode() + b"\n\n" + b"data: [DONE]",
}


def _split(data: bytes, rng: random.Random) -> List[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, min(40, len(data) - 1))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def _comparable(events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    out = json.loads(json.dumps(events))
    out[0]["message"].pop("id")
    return out


def _stream_of(pool: ServerPool, steps: List[bytes]) -> List[Dict[str, Any]]:
    fake, server = pool.fake, pool.get()
    fake.push(Reply(200, (("Content-Type", "text/event-stream"),), list(steps), chunked=True))
    with open_stream(server, thinking=THINKING) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    return _comparable(events)


@pytest.fixture(scope="module")
def whole(pool: ServerPool) -> Dict[str, List[Dict[str, Any]]]:
    return {name: _stream_of(pool, [data]) for name, data in _STREAMS.items()}


def test_whole_streams_translate_as_specified(whole):
    """The one-piece baselines themselves, checked by hand against PROTOCOL.md 3."""
    assert final_message(whole["text"])["content"] == [{"type": "text", "text": "Hello, w\u00f6rld \u2603"}]
    tools = final_message(whole["tools_crlf"])
    assert [b.get("input") for b in tools["content"][1:]] == [{"p": "x"}, {"d": "/"}]
    assert tools["content"][0]["thinking"] == "Plan: read then list."
    assert final_message(whole["comments_multiline"])["content"] == [{"type": "text", "text": "a\nbcd"}]


@pytest.mark.parametrize("seed", range(20))
def test_rechunked_upstream_gives_the_same_events(pool, whole, seed):
    rng = random.Random(seed)
    for name, data in _STREAMS.items():
        assert _stream_of(pool, _split(data, rng)) == whole[name], f"stream {name}, seed {seed}"


def test_slow_json_answer_to_a_stream_request_gets_pings_and_one_message_start(make_proxy, fake_upstream):
    """The upstream sends JSON headers, then thinks: pings commit the stream, the body still fits in."""
    proxy = make_proxy(ping_interval=0.3)
    body = json.dumps(completion("slow but sure")).encode("utf-8")
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"),), [Sleep(0.8), body]))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    assert kinds(events)[:2] == ["message_start", "ping"]
    assert kinds(events).count("message_start") == 1
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["content"] == [{"type": "text", "text": "slow but sure"}]


def test_broken_slow_json_answer_after_pings_is_one_error_event(make_proxy, fake_upstream):
    proxy = make_proxy(ping_interval=0.3)
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"),), [Sleep(0.6), b'{"id": "chatcmpl-1", "cho']))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    assert kinds(events)[:2] == ["message_start", "ping"]
    assert_valid_event_sequence(events)
    assert kinds(events)[-1] == "error" and kinds(events).count("error") == 1
    assert events[-1]["error"]["type"] == "api_error"


# ---------------------------------------------------------------------------
# Writes per stream: each write is a syscall and a wake-up of the client (the brief's trap:
# "write an SSE event in several writes and stream throughput halves").


class _Wire:
    """What ``ResponseWriter`` reads of its handler; ``writes`` holds each write."""

    protocol_version = request_version = "HTTP/1.1"
    command = "POST"
    close_connection = body_left_unread = False

    def __init__(self) -> None:
        self.writes: List[bytes] = []
        self.connection = self

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def date_time_string(self) -> str:
        return "Thu, 03 Dec 2026 00:00:00 GMT"

    def log_request(self, *args: Any) -> None:
        pass


def test_a_stream_goes_out_in_as_few_writes_as_it_has_reads() -> None:
    """The head goes with the first events, the terminating chunk with the last ones."""
    from claudeproxy.handler import ResponseWriter

    wire = _Wire()
    writer = ResponseWriter(wire, "req_1")  # type: ignore[arg-type]
    writer.start_stream()
    writer.events([{"type": "message_start", "message": {}}])
    writer.events([{"type": "ping"}])
    writer.events([{"type": "message_stop"}], end=True)
    writer.end_stream()  # nothing left to write
    assert len(wire.writes) == 3
    first, middle, last = wire.writes
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\n\r\n" in first and b"event: message_start" in first
    assert b"event: ping" in middle
    assert b"event: message_stop" in last and last.endswith(b"\r\n0\r\n\r\n")


def test_an_error_before_any_event_still_sends_the_head() -> None:
    from claudeproxy.handler import ResponseWriter

    wire = _Wire()
    writer = ResponseWriter(wire, "req_1")  # type: ignore[arg-type]
    writer.start_stream()
    writer.end_stream()
    assert len(wire.writes) == 1 and wire.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert wire.writes[0].endswith(b"\r\n\r\n0\r\n\r\n")


def test_answers_get_ids_of_their_own_though_the_upstream_repeats_its_own(proxy, fake_upstream):
    """Ollama's ids are chatcmpl-0 to -998 (some servers use one for everything): Claude Code merges
    answers that share a message id into one turn, scrambling its history. Streamed and not."""
    fake_upstream.push(json_reply(completion("one")), json_reply(completion("two")),
                       sse_reply(chunk({"content": "three"}), chunk(finish="stop")),
                       sse_reply(chunk({"content": "four"}), chunk(finish="stop")))
    ids = []
    for stream in (False, False, True, True):
        resp = request(proxy.url, "POST", "/v1/messages", minimal_request(stream=stream), {"x-api-key": CLIENT_KEY})
        assert resp.status == 200, resp
        body = resp.body.decode()
        ids.append(json.loads(body)["id"] if not stream else
                   json.loads(body.split("data: ", 1)[1].split("\n", 1)[0])["message"]["id"])
    assert len(set(ids)) == 4 and all(i.startswith("msg_") and "chatcmpl" not in i for i in ids), ids


def test_an_event_that_never_ends_is_a_502_not_a_proxy_that_grows(make_proxy: Any, fake_upstream: Any) -> None:
    """Data lines of just under the line cap and never the blank line that ends their event: the
    proxy gathered them all (3 GB of memory for 1.5 GB sent, probe AA F-4). Now the event is held to
    16 MiB, and the client gets the stream's failure."""
    proxy = make_proxy()
    line = b"data: " + b"x" * 1_000_000 + b"\n"
    fake_upstream.push(Reply(200, (("Content-Type", "text/event-stream"),), [line] * 20, chunked=True))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(stream=True), {"x-api-key": CLIENT_KEY},
                   timeout=20)
    assert resp.status == 502, resp
    assert b"SSE event of more than 16777216 characters" in resp.body
