"""The shortest path through the whole proxy: one JSON and one streamed answer."""

from conftest import CLIENT_KEY, UPSTREAM_KEY, minimal_request
from fakes import chunk, sse_reply
from sse_checks import assert_valid_event_sequence, events_of, final_message


def test_non_streaming_round_trip(post, fake_upstream):
    resp = post(minimal_request())
    assert resp.status == 200, resp
    assert resp.json["content"] == [{"type": "text", "text": "Hello!"}]
    assert resp.json["model"] == "claude-test"
    sent = fake_upstream.last
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert CLIENT_KEY not in repr(sent.raw_headers) + sent.body.decode()


def test_streaming_round_trip(post, fake_upstream):
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}),
                                 chunk({}, "stop"), {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}))
    resp = post(minimal_request(stream=True))
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = events_of(resp.body)
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    assert message["content"] == [{"type": "text", "text": "Hi"}]
    assert message["usage"]["output_tokens"] == 1
