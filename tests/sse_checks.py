"""Reading Anthropic SSE transcripts, and the one grammar check every stream must pass.

``assert_valid_event_sequence`` encodes PROTOCOL.md 3.1 as the SDKs and
Claude Code rely on it; unit, integration and conformance tests all apply it.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Tuple

Event = Dict[str, Any]

BLOCK_DELTAS = {
    "text": {"text_delta", "citations_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
    "tool_use": {"input_json_delta"},
    "redacted_thinking": set(),
    # Server tools (web search on the Responses API): the call streams its input, the result comes whole.
    "server_tool_use": {"input_json_delta"},
    "web_search_tool_result": set(),
}


def dechunk(data: bytes) -> bytes:
    """The body of an HTTP/1.1 chunked message (as captured off a raw socket)."""
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


def parse_sse(raw: bytes) -> List[Tuple[str, Event]]:
    """(event name, payload) pairs of an SSE body; every event must have both lines."""
    out: List[Tuple[str, Event]] = []
    text = raw.decode("utf-8").replace("\r\n", "\n")
    for block in text.split("\n\n"):
        if block.strip():
            out.append(parse_event_block(block))
    return out


def parse_event_block(block: str) -> Tuple[str, Event]:
    """(event name, payload) of one SSE event's lines; both lines must be there."""
    name, data = "", []
    for line in block.split("\n"):
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    assert name, f"event without an event: line: {block!r}"
    assert data, f"event without data: {block!r}"
    return name, json.loads("\n".join(data))


def events_of(raw: bytes) -> List[Event]:
    pairs = parse_sse(raw)
    for name, payload in pairs:
        assert payload.get("type") == name, f"event name {name!r} != payload type {payload.get('type')!r}"
    return [payload for _, payload in pairs]


def assert_valid_event_sequence(events: Iterable[Event], *, allow_error: bool = True) -> None:
    """The Anthropic stream grammar (PROTOCOL.md 3.1), checked event by event."""
    events = [e for e in events if e["type"] != "ping"] if events else []
    assert events, "empty stream"
    assert events[0]["type"] == "message_start", f"first event is {events[0]['type']}"
    start = events[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["role"] == "assistant"
    assert isinstance(start["usage"]["input_tokens"], int) and start["id"].startswith("msg_")
    open_index = None
    open_type = None
    next_index = 0
    ended = None
    for i, event in enumerate(events[1:], 1):
        kind = event["type"]
        assert ended is None, f"event {kind} after {ended}"
        if kind == "content_block_start":
            assert open_index is None, f"block {event['index']} started while {open_index} is open"
            assert event["index"] == next_index, f"block index {event['index']}, expected {next_index}"
            open_index, open_type = event["index"], event["content_block"]["type"]
            assert open_type in BLOCK_DELTAS, f"unknown block type {open_type}"
            if open_type == "text":
                assert event["content_block"]["text"] == ""
            next_index += 1
        elif kind == "content_block_delta":
            assert event["index"] == open_index, f"delta for block {event['index']}, open is {open_index}"
            assert event["delta"]["type"] in BLOCK_DELTAS[open_type], f"{event['delta']['type']} in a {open_type} block"
            if event["delta"]["type"] == "text_delta":
                assert event["delta"]["text"], "empty text_delta"
        elif kind == "content_block_stop":
            assert event["index"] == open_index, f"stop for block {event['index']}, open is {open_index}"
            open_index = open_type = None
        elif kind == "message_delta":
            assert open_index is None, "message_delta while a block is open"
            assert event["delta"]["stop_reason"] in (
                "end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
                "model_context_window_exceeded",
            ), event["delta"]
            assert isinstance(event["usage"]["output_tokens"], int)
            assert events[i + 1:] and events[i + 1]["type"] == "message_stop", "message_delta not followed by message_stop"
        elif kind == "message_stop":
            ended = "message_stop"
        elif kind == "error":
            assert allow_error, f"unexpected error event: {event}"
            assert event["error"]["type"] and event["error"]["message"]
            ended = "error"
        else:
            raise AssertionError(f"unknown event type {kind}")
    assert ended is not None, "stream ended without message_stop or error"


def answer_content(resp: Any, stream: bool) -> List[Dict[str, Any]]:
    """The content blocks of a 200 answer: a JSON message's, or a stream's (held to the event grammar)."""
    if not stream:
        return resp.json["content"]  # type: ignore[no-any-return]
    events = events_of(resp.body)
    assert_valid_event_sequence(events, allow_error=False)
    return final_message(events)["content"]  # type: ignore[no-any-return]


def final_message(events: List[Event]) -> Dict[str, Any]:
    """Accumulate a stream into the message it describes (like the SDK's accumulate_event).

    Deltas are collected per block and joined once: ``+=`` per delta is quadratic, and a long
    stream's check would take longer than the stream."""
    message: Dict[str, Any] = {}
    pieces: Dict[Tuple[int, str], List[str]] = {}  # (block index, field) -> its deltas
    for event in events:
        kind = event["type"]
        if kind == "message_start":
            message = json.loads(json.dumps(event["message"]))
        elif kind == "content_block_start":
            message["content"].append(json.loads(json.dumps(event["content_block"])))
        elif kind == "content_block_delta":
            block, delta = message["content"][event["index"]], event["delta"]
            field = _DELTA_FIELDS.get(delta["type"])
            if field is not None:
                pieces.setdefault((event["index"], field), []).append(delta[_DELTA_KEYS[delta["type"]]])
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "citations_delta":
                block.setdefault("citations", []).append(delta["citation"])
        elif kind == "content_block_stop":
            _join_block(message, event["index"], pieces)
        elif kind == "message_delta":
            message["stop_reason"] = event["delta"]["stop_reason"]
            message["stop_sequence"] = event["delta"].get("stop_sequence")
            message["usage"].update({k: v for k, v in event["usage"].items() if v is not None})
    for index in range(len(message.get("content", []))):
        _join_block(message, index, pieces, parse=False)  # blocks a cut stream never stopped
    return message


_DELTA_FIELDS = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "input"}
_DELTA_KEYS = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}


def _join_block(message: Dict[str, Any], index: int, pieces: Dict[Tuple[int, str], List[str]],
                parse: bool = True) -> None:
    """The deltas of block ``index`` so far into the block (a stop of a block never started: nothing)."""
    for field in ("text", "thinking"):
        if (index, field) in pieces:
            message["content"][index][field] += "".join(pieces.pop((index, field)))
    if (index, "input") in pieces:
        text = "".join(pieces.pop((index, "input")))
        if parse:  # an unstopped block keeps the input it started with, as before
            message["content"][index]["input"] = json.loads(text)
