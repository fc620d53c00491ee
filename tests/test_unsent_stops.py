"""Stop strings the upstream is not sent are matched by the proxy, through the real server.

Chat upstreams get at most the dialect's ``max_stop`` strings (4 for OpenAI); OpenAI's
reasoning models get none (they refuse ``stop``); the Responses API has no such
parameter. Found by outside probes: a fifth stop string, or any on Responses, was
ignored (the whole text, ``end_turn``), and every o3/gpt-5 request with stop strings
failed with 400. Anthropic ends the answer at the first stop string: so does the proxy.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List

from conftest import CLIENT_KEY, minimal_request, request
from fakes import Fault, FakeUpstream, Gate, Reply, chunk, completion, json_reply, sse_reply
from sse_checks import assert_valid_event_sequence, events_of, final_message

FIVE = ["A1", "B2", "C3", "D4", "E5"]
ERR_STOP = {"error": {"message": "Unsupported parameter: 'stop' is not supported with this model.",
                      "type": "invalid_request_error", "param": "stop", "code": "unsupported_parameter"}}


def ask(proxy: Any, **overrides: Any) -> Any:
    return request(proxy.url, "POST", "/v1/messages", minimal_request(**overrides), {"x-api-key": CLIENT_KEY},
                   timeout=10)


def streamed(proxy: Any, **overrides: Any) -> Dict[str, Any]:
    resp = ask(proxy, stream=True, **overrides)
    assert resp.status == 200, resp
    events = events_of(resp.body)
    assert_valid_event_sequence(events, allow_error=False)
    return final_message(events)


def text_and_stop(message: Dict[str, Any]) -> List[Any]:
    return [[b.get("text") for b in message["content"]], message["stop_reason"], message["stop_sequence"]]


def refusing_stop(rec: Any) -> Any:
    """An OpenAI reasoning model: 400 for a body with stop, else one answer with the stop string in it."""
    return json_reply(ERR_STOP, status=400) if "stop" in rec.json else json_reply(completion("one END two"))


# ----------------------------------------------------------------------------
# Chat Completions: the strings past max_stop.


def test_a_fifth_stop_string_ends_a_json_answer(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(model="gpt-4o")
    fake_upstream.push(json_reply(completion("first part E5 second part")))
    resp = ask(proxy, stop_sequences=FIVE)
    assert resp.status == 200, resp
    assert text_and_stop(resp.json) == [["first part "], "stop_sequence", "E5"]
    assert fake_upstream.requests[0].json["stop"] == FIVE[:4]


def test_a_fifth_stop_string_split_across_chunks_ends_a_stream(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(model="gpt-4o")
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": "first part E"}),
                                 chunk({"content": "5 second part"}), chunk({}, finish="stop")))
    assert text_and_stop(streamed(proxy, stop_sequences=FIVE)) == [["first part "], "stop_sequence", "E5"]


def test_the_stream_ends_at_the_stop_string_without_waiting_for_the_upstream(
        make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """The fold completes at the match: the relay closes the upstream response, however long it goes on."""
    proxy = make_proxy(model="gpt-4o")
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": "first part E5"}), Fault("hang"), done=False))
    began = time.monotonic()
    assert text_and_stop(streamed(proxy, stop_sequences=FIVE)) == [["first part "], "stop_sequence", "E5"]
    assert time.monotonic() - began < 5
    assert fake_upstream.wait_connections_closed(1, 5)  # the proxy let go of it


def test_the_client_gets_its_end_before_the_proxy_drains_a_kept_alive_upstream(
        make_proxy: Any, fake_upstream: FakeUpstream, monkeypatch: Any) -> None:
    """A kept-alive upstream still generating after the match is drained (for reuse) only after the
    client has its whole answer: the drain may take upstream.DRAIN_SECONDS, here made 60 s."""
    import claudeproxy.upstream

    monkeypatch.setattr(claudeproxy.upstream, "DRAIN_SECONDS", 60.0)
    fake_upstream.keep_alive = True
    proxy = make_proxy(model="gpt-4o")
    gate = Gate()
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": "first part E5"}), gate, chunk({"content": "x"}),
                                 chunk({}, finish="stop")))
    try:
        assert text_and_stop(streamed(proxy, stop_sequences=FIVE)) == [["first part "], "stop_sequence", "E5"]
    finally:
        gate.release()


def test_no_stop_strings_no_local_matching(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(model="gpt-4o")
    fake_upstream.push(json_reply(completion("text E5 text")))
    assert text_and_stop(ask(proxy).json) == [["text E5 text"], "end_turn", None]


# ----------------------------------------------------------------------------
# OpenAI reasoning models: no stop at all.


def test_openai_reasoning_models_are_not_sent_stop(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    fake_upstream.responder = refusing_stop
    for model in ("o3", "gpt-5"):
        proxy = make_proxy(model=model, provider="openai")
        resp = ask(proxy, stop_sequences=["END"])
        assert resp.status == 200, resp
        assert text_and_stop(resp.json) == [["one "], "stop_sequence", "END"]
    assert all("stop" not in rec.json for rec in fake_upstream.requests) and len(fake_upstream.requests) == 2


# ----------------------------------------------------------------------------
# The Responses API: no stop parameter at all.


def response(text: str) -> Dict[str, Any]:
    return {"id": "resp_1", "object": "response", "status": "completed", "model": "gpt-4.1",
            "output": [{"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            "usage": {"input_tokens": 11, "output_tokens": 4}}


def event(obj: Dict[str, Any]) -> bytes:
    return f"event: {obj['type']}\ndata: ".encode() + json.dumps(obj).encode() + b"\n\n"


def text_delta(text: str) -> bytes:
    return event({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                  "content_index": 0, "delta": text})


def test_responses_json_answer_ends_at_a_stop_string(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(model="gpt-4.1", upstream_api="responses")
    fake_upstream.push(json_reply(response("first part E5 second part")))
    resp = ask(proxy, stop_sequences=["E5"])
    assert resp.status == 200, resp
    assert text_and_stop(resp.json) == [["first part "], "stop_sequence", "E5"]
    assert resp.json["usage"]["output_tokens"] == 4
    assert "stop" not in fake_upstream.requests[0].json


def test_responses_stream_ends_at_a_stop_string_split_across_deltas(
        make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(model="gpt-4.1", upstream_api="responses")
    created = event({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "output": []}})
    fake_upstream.push(Reply(200, (("Content-Type", "text/event-stream"),),
                             [created, text_delta("first part E"), text_delta("5 second part"), Fault("hang")],
                             chunked=True))
    began = time.monotonic()
    assert text_and_stop(streamed(proxy, stop_sequences=["E5"])) == [["first part "], "stop_sequence", "E5"]
    assert time.monotonic() - began < 5 and fake_upstream.wait_connections_closed(1, 5)
