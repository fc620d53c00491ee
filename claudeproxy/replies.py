"""Anthropic replies made whole: a complete message as its stream of events, and local replies.

Pure. ``events_for_message`` turns a complete message into the event stream a
streaming client expects (a JSON answer to a stream request, a local reply);
``local_message`` builds the replies made without any upstream (the quota probe).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

from .anthropic_types import MessagesRequest, TextBlock
from .apis.toolargs import whole_members
from .ids import new_id
from .tokens import estimate_output_tokens

Event = Dict[str, Any]


def is_quota_probe(req: MessagesRequest) -> bool:
    """Claude Code's quota probe: ``max_tokens: 1`` and one user message, ``quota``.

    Only that shape is answered locally: another one-token request is a real question (a yes/no
    classifier, a label) and an invented "ok" would be a wrong answer.
    """
    if req.max_tokens != 1 or len(req.messages) != 1 or req.messages[0].role != "user":
        return False
    blocks = req.messages[0].content
    return len(blocks) == 1 and isinstance(blocks[0], TextBlock) and blocks[0].text.strip() == "quota"


def local_message(model: str, text: str, stop_reason: str, usage: Tuple[int, int]) -> Dict[str, Any]:
    """A reply made without the upstream (quota probe, ``max_tokens: 0``)."""
    return {
        "id": "msg_" + new_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}] if text else [],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage[0],
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": usage[1],
        },
    }


def as_answered(message: Dict[str, Any], message_id: str, input_tokens: int, reported: bool) -> Dict[str, Any]:
    """A translated answer as the client gets it, whole or as a stream: with the proxy's own id, never
    the upstream's (servers repeat theirs: Ollama's are chatcmpl-0 to -998, and Claude Code merges the
    answers that share one into one turn); where the upstream reported no usage, with the estimate
    (Claude Code sizes its context by it; 0s would say an empty one)."""
    message = {**message, "id": message_id}
    if not reported:
        message["usage"] = {**message["usage"], "input_tokens": input_tokens,
                            "output_tokens": estimate_output_tokens(message["content"])}
    return message


def message_start(message_id: str, model: str, input_tokens: int) -> Event:
    """The ``message_start`` a stream opens with, before anything of the answer is known."""
    message: Dict[str, Any] = {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": input_tokens, "output_tokens": 1}}
    return {"type": "message_start", "message": message}


def events_for_message(message: Dict[str, Any]) -> List[Event]:
    """A complete stream for a complete message (JSON answers to stream requests, local replies)."""
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    usage = dict(message.get("usage") or {})
    start["usage"] = {"input_tokens": usage.get("input_tokens", 0), "output_tokens": 1}
    events: List[Event] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(message.get("content") or []):
        events += block_events(index, block)
    delta = {"stop_reason": message.get("stop_reason") or "end_turn", "stop_sequence": message.get("stop_sequence")}
    events.append({"type": "message_delta", "delta": delta, "usage": usage})
    events.append({"type": "message_stop"})
    return events


def message_from_events(events: List[Event]) -> Dict[str, Any]:
    """The message a complete stream of events describes, as the SDKs accumulate one: the inverse of
    ``events_for_message`` (an upstream that streams an answer the client asked for whole).

    ValueError for events that make no message (a forwarded upstream's text that is no string,
    input that is no JSON): the translating folds never give such, a forwarding one may."""
    message: Dict[str, Any] = {}
    blocks: Dict[int, Dict[str, Any]] = {}
    pieces: Dict[int, List[str]] = {}  # each block's text, thinking or input JSON, joined once at its end
    for event in events:
        kind = event.get("type")
        if kind == "message_start":
            message = {**event["message"], "content": []}
        elif kind == "content_block_start":
            blocks[event["index"]] = dict(event["content_block"])
            pieces[event["index"]] = []
        elif kind == "content_block_delta":
            _add_delta(blocks[event["index"]], pieces[event["index"]], event["delta"])
        elif kind == "content_block_stop":
            _close_block(blocks[event["index"]], pieces.pop(event["index"]))
        elif kind == "message_delta":
            message.update(event.get("delta") or {})
            message["usage"] = {**(message.get("usage") or {}), **(event.get("usage") or {})}
    message["content"] = [blocks[index] for index in sorted(blocks)]
    return message


def _add_delta(block: Dict[str, Any], pieces: List[str], delta: Dict[str, Any]) -> None:
    kind = delta.get("type")
    if kind in ("text_delta", "thinking_delta", "input_json_delta"):
        piece = delta.get({"text_delta": "text", "thinking_delta": "thinking"}.get(kind, "partial_json"))
        if not isinstance(piece, str):
            raise ValueError(f"a {kind} without its text")
        pieces.append(piece)
    elif kind == "signature_delta":
        block["signature"] = delta.get("signature", "")
    elif kind == "citations_delta":
        block.setdefault("citations", []).append(delta.get("citation"))


def _close_block(block: Dict[str, Any], pieces: List[str]) -> None:
    joined = "".join(pieces)
    if block.get("type") in ("text", "thinking"):
        start = block.get(block["type"])
        block[block["type"]] = (start if isinstance(start, str) else "") + joined
    elif joined:  # a tool call's input: whole JSON (apis/toolargs.py), unless the output limit cut it
        try:
            block["input"] = json.loads(joined)
        except ValueError:
            members = whole_members(joined)  # as the SDKs make of a cut stream, and the JSON answer
            if members is None:
                raise
            block["input"] = members


def block_events(index: int, block: Dict[str, Any]) -> List[Event]:
    """One whole block as the start, deltas and stop a stream carries for it."""
    kind = block.get("type")
    deltas: List[Dict[str, Any]] = []
    if kind == "text":
        start: Dict[str, Any] = {"type": "text", "text": ""}
        if block.get("text"):  # an empty text_delta is noise the grammar forbids
            deltas.append({"type": "text_delta", "text": block["text"]})
        deltas += [{"type": "citations_delta", "citation": c} for c in block.get("citations") or ()]
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        if block.get("thinking"):
            deltas.append({"type": "thinking_delta", "thinking": block["thinking"]})
        deltas.append({"type": "signature_delta", "signature": block.get("signature") or ""})
    elif kind in ("tool_use", "server_tool_use"):
        start = {**block, "input": {}}
        if block.get("input"):
            deltas.append({"type": "input_json_delta", "partial_json": json.dumps(block["input"], ensure_ascii=False)})
    else:
        start = dict(block)  # redacted_thinking, web_search_tool_result: whole in their start event
    events: List[Event] = [{"type": "content_block_start", "index": index, "content_block": start}]
    events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
    events.append({"type": "content_block_stop", "index": index})
    return events
