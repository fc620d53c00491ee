"""How a stream ends, decided once in the pure core (``ending.stream_end``) for every upstream API.

The relay and the test playbook both call ``stream_end``; this module tests the
decision itself, then the same endings through each API's fold: a stream that
said it was done finishes normally whatever happened to the connection after;
one that did not fails with one error; our own aborts say what they were.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import pytest

from claudeproxy.apis.chat.stream import ChatFold, StreamTranslator
from claudeproxy.apis.messages import MessagesFold
from claudeproxy.apis.responses.stream import ResponsesFold
from claudeproxy.ending import abort_error, stream_end
from claudeproxy.errors import ClientGone, ProxyError, UpstreamTimeout, UpstreamUnavailable

BROKEN = UpstreamUnavailable("upstream connection broke off (ConnectionResetError)")


class _Fold:
    """A fold that reports what ``end`` was asked, and finishes only if it was told it can."""

    def __init__(self, can_finish: bool) -> None:
        self.can_finish = can_finish
        self.asked: List[bool] = []

    def end(self, clean: bool) -> Tuple[List[Dict[str, Any]], Optional[ProxyError]]:
        self.asked.append(clean)
        if self.can_finish or clean:
            return [{"type": "message_stop"}], None
        return [], UpstreamUnavailable("upstream stream ended early")


@pytest.mark.parametrize("abort, kind", [("client", ClientGone), ("shutdown", ProxyError), ("deadline", UpstreamTimeout)])
def test_our_own_aborts_win_over_what_the_fold_saw(abort: str, kind: type) -> None:
    fold = _Fold(can_finish=True)
    events, error = stream_end(fold, clean=True, abort_reason=abort)  # type: ignore[arg-type]
    assert events == [] and isinstance(error, kind) and fold.asked == []
    if abort == "shutdown":
        assert error.status == 529  # type: ignore[union-attr]


def test_a_stream_that_said_it_was_done_finishes_after_a_broken_read() -> None:
    fold = _Fold(can_finish=True)
    assert stream_end(fold, clean=False, failure=BROKEN) == ([{"type": "message_stop"}], None)  # type: ignore[arg-type]
    assert fold.asked == [False]  # a broken read is never a clean end


def test_a_stream_that_did_not_fails_with_the_read_error() -> None:
    fold = _Fold(can_finish=False)
    events, error = stream_end(fold, clean=False, failure=BROKEN)  # type: ignore[arg-type]
    assert events == [] and error is BROKEN  # the read error says more than "ended early"


def test_finished_abort_is_not_an_error_and_not_clean() -> None:
    fold = _Fold(can_finish=True)
    assert stream_end(fold, clean=True, abort_reason="finished")[1] is None  # type: ignore[arg-type]
    assert fold.asked == [False]


def test_clean_end_is_passed_to_the_fold() -> None:
    fold = _Fold(can_finish=False)
    assert stream_end(fold, clean=True)[1] is None  # type: ignore[arg-type]
    assert fold.asked == [True]


def test_abort_error_names() -> None:
    assert abort_error(None) is None and abort_error("finished") is None
    assert isinstance(abort_error("client"), ClientGone)


# ---------------------------------------------------------------------------
# The same endings through every API's fold.


def _chat() -> Tuple[Any, bytes, bytes]:
    fold = ChatFold(StreamTranslator(message_id="msg_t", model="claude-x", input_tokens=3, new_id=lambda: "id1"))
    head = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
    done = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    return fold, head, done


def _messages() -> Tuple[Any, bytes, bytes]:
    fold = MessagesFold(message_id="msg_t", model="claude-x", input_tokens=3)
    start = {"type": "message_start", "message": {"id": "msg_u", "type": "message", "role": "assistant",
                                                  "model": "up", "content": [], "usage": {"input_tokens": 3}}}
    events = [start, {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
              {"type": "content_block_stop", "index": 0}]
    head = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
    done = b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":1}}\n\n'
    return fold, head, done


def _responses() -> Tuple[Any, bytes, bytes]:
    fold = ResponsesFold(message_id="msg_t", model="claude-x", input_tokens=3, new_id=lambda: "id1")
    item = {"type": "message", "id": "msg_1", "role": "assistant", "content": []}
    events = [{"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "output": []}},
              {"type": "response.output_item.added", "output_index": 0, "item": item},
              {"type": "response.content_part.added", "item_id": "msg_1", "output_index": 0, "content_index": 0,
               "part": {"type": "output_text", "text": ""}},
              {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0,
               "delta": "hi"}]
    head = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
    final = {"id": "resp_1", "status": "completed", "output": [
        {**item, "content": [{"type": "output_text", "text": "hi", "annotations": []}]}],
        "usage": {"input_tokens": 3, "output_tokens": 1}}
    done = ("event: response.completed\ndata: " + json.dumps({"type": "response.completed", "response": final})
            + "\n\n").encode()
    return fold, head, done


FOLDS = {"chat": _chat, "messages": _messages, "responses": _responses}


@pytest.mark.parametrize("api", sorted(FOLDS))
def test_a_stream_cut_before_its_end_fails_once_for_every_api(api: str) -> None:
    fold, head, _ = FOLDS[api]()
    events = fold.feed_line(head)
    assert events and events[0]["type"] == "message_start"
    tail, error = stream_end(fold, clean=False, failure=BROKEN)
    assert error is BROKEN and not [e for e in tail if e["type"] == "message_stop"]
    assert fold.fail(error) == [{"type": "error", "error": {"type": "api_error", "message": BROKEN.message}}]
    assert fold.fail(error) == []  # exactly one


@pytest.mark.parametrize("api", sorted(FOLDS))
def test_a_stream_that_said_it_was_done_ends_once_for_every_api(api: str) -> None:
    fold, head, done = FOLDS[api]()
    events = fold.feed_line(head) + fold.feed_line(done)
    tail, error = stream_end(fold, clean=False, failure=BROKEN)  # the connection dropped right after
    assert error is None
    types = [e["type"] for e in events + tail]
    assert types.count("message_stop") == 1 and types[-1] == "message_stop" and "error" not in types


# An upstream error event that is the body's last, without the blank line that would end it (the
# fuzzer found a truncated one), as each API sends it. Chat names no event, so its must be whole JSON.
LAST_ERRORS = {
    "chat": b'data: {"error": {"message": "Overloaded", "type": "server_error"}}',
    "messages": b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overl',
    "responses": b'event: error\ndata: {"type": "error", "code": "server_error", "message": "Overl',
}


@pytest.mark.parametrize("api", sorted(FOLDS))
def test_an_error_event_cut_off_by_the_end_of_the_body_is_returned_not_raised(api: str) -> None:
    fold, head, _ = FOLDS[api]()
    fold.feed_line(head)
    for line in LAST_ERRORS[api].split(b"\n"):
        assert fold.feed_line(line + b"\n") == []  # an event is whole only at its blank line
    tail, error = stream_end(fold, clean=True)
    assert tail == [] and isinstance(error, ProxyError)
    assert [e["type"] for e in fold.fail(error)] == ["error"]


def test_after_message_delta_an_error_cut_off_by_the_end_still_ends_with_message_stop() -> None:
    """The Messages API holds message_delta until message_stop (a second one would merge into it);
    once it came, the answer is whole: an error after it still ends the message with both."""
    fold, head, done = _messages()
    events = fold.feed_line(head) + fold.feed_line(done)
    assert events[-1]["type"] == "content_block_stop" and fold.finishing
    for line in LAST_ERRORS["messages"].split(b"\n"):
        fold.feed_line(line + b"\n")
    tail, error = stream_end(fold, clean=True)
    assert tail == [] and isinstance(error, ProxyError)
    ended = fold.fail(error)
    assert [e["type"] for e in ended] == ["message_delta", "message_stop"] and ended[0]["delta"]["stop_reason"]
