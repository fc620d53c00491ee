"""Tool-call ids are unique within a conversation, as Anthropic's are.

Some OpenAI-compatible servers number each answer's calls from ``call_0``. The proxy passed them on,
so an answer's call could carry an id the conversation already held, and Claude Code left that
call and its result out of its next request: the model never saw them (a probe with the real
Claude Code CLI). All traffic on loopback.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List

import pytest

from conftest import CLIENT_KEY, minimal_request, request
from fakes import FakeUpstream, chunk, completion, json_reply, sse_reply, upstream_tool_pairs
from sse_checks import answer_content, events_of, final_message

TOOLS = [{"name": "Read", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}]
# Turn 1 of the conversation: the upstream's first answer was a call numbered call_0.
HISTORY = [
    {"role": "user", "content": "read a, then b"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "call_0", "name": "Read", "input": {"path": "a"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_0", "content": "A"}]},
]


def _answer(api: str, stream: bool) -> Any:
    """Turn 2's answer: again a call numbered call_0, reading b."""
    if api == "chat":
        call = {"id": "call_0", "type": "function", "function": {"name": "Read", "arguments": '{"path": "b"}'}}
        if stream:
            return sse_reply(chunk({"role": "assistant", "tool_calls": [{**call, "index": 0}]}),
                             chunk({}, "tool_calls", usage={"prompt_tokens": 5, "completion_tokens": 5}))
        return json_reply(completion(None, finish="tool_calls", tool_calls=[call]))
    item = {"type": "function_call", "id": "fc_2", "call_id": "call_0", "name": "Read", "arguments": '{"path": "b"}',
            "status": "completed"}
    done = {"id": "resp_2", "object": "response", "status": "completed", "output": [item],
            "usage": {"input_tokens": 5, "output_tokens": 5}}
    if not stream:
        return json_reply(done)
    return sse_reply({"type": "response.created", "response": {**done, "status": "in_progress", "output": [], "usage": None}},
                     {"type": "response.output_item.added", "output_index": 0, "item": {**item, "arguments": ""}},
                     {"type": "response.function_call_arguments.delta", "output_index": 0, "item_id": "fc_2",
                      "delta": '{"path": "b"}'},
                     {"type": "response.output_item.done", "output_index": 0, "item": item},
                     {"type": "response.completed", "response": done}, done=False)


def _ask(proxy: Any, body: Dict[str, Any]) -> Any:
    return request(proxy.url, "POST", "/v1/messages", body, {"x-api-key": CLIENT_KEY})


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("api", ["chat", "responses"])
def test_an_answers_call_never_repeats_an_id_of_the_conversation(make_proxy: Any, fake_upstream: FakeUpstream,
                                                                 api: str, stream: bool) -> None:
    settings: Dict[str, Any] = {"upstream_api": "responses", "model": "gpt-5"} if api == "responses" else {}
    proxy = make_proxy(**settings)
    fake_upstream.push(_answer(api, stream))
    resp = _ask(proxy, minimal_request(messages=HISTORY, tools=TOOLS, stream=stream))
    assert resp.status == 200, resp
    content = answer_content(resp, stream)
    [call] = [b for b in content if b["type"] == "tool_use"]
    assert call["id"] != "call_0" and call["input"] == {"path": "b"}, call
    # Turn 3: both calls and both results go up, each result with its own call.
    fake_upstream.push(json_reply(completion("done")) if api == "chat" else json_reply(
        {"id": "resp_3", "object": "response", "status": "completed", "usage": {"input_tokens": 5, "output_tokens": 1},
         "output": [{"type": "message", "id": "m", "role": "assistant", "status": "completed",
                     "content": [{"type": "output_text", "text": "done", "annotations": []}]}]}))
    history = HISTORY + [{"role": "assistant", "content": content},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "B"}]}]
    assert _ask(proxy, minimal_request(messages=history, tools=TOOLS)).status == 200
    calls, results = upstream_tool_pairs(json.loads(fake_upstream.requests[-1].body), api)
    assert len(set(calls)) == 2 and calls == results, (calls, results)


def test_the_answers_own_calls_stay_apart_from_the_conversations(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """Two calls of one streamed answer, call_0 live and call_1 whole at the end, beside a history
    holding both names: each gets an id of its own."""
    proxy = make_proxy()
    history: List[Any] = HISTORY[:-1] + [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "call_0", "name": "Read", "input": {"path": "a"}},
        {"type": "tool_use", "id": "call_0-2", "name": "Read", "input": {"path": "c"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_0", "content": "A"},
                                     {"type": "tool_result", "tool_use_id": "call_0-2", "content": "C"}]}]
    calls = [{"index": i, "id": f"call_{i}", "type": "function",
              "function": {"name": "Read", "arguments": json.dumps({"path": p})}} for i, p in enumerate("bd")]
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "tool_calls": calls}), chunk({}, "tool_calls")))
    resp = _ask(proxy, minimal_request(messages=history, tools=TOOLS, stream=True))
    content = final_message(events_of(resp.body))["content"]
    ids = [b["id"] for b in content if b["type"] == "tool_use"]
    assert len(ids) == 2 and len(set(ids) | {"call_0", "call_0-2"}) == 4, ids


@pytest.mark.parametrize("pieces, name", [(["Re", "ad"], "Read"), (["Read", "Read"], "Read"), (["Read"], "Read")])
def test_a_tool_name_sent_in_pieces_is_joined(make_proxy: Any, fake_upstream: FakeUpstream, pieces: List[str],
                                              name: str) -> None:
    """A server that splits a call's name over deltas gave Claude Code a tool "Re" ("No such tool
    available": a probe); one that repeats the whole name in every fragment keeps it whole."""
    proxy = make_proxy()
    first = {"index": 0, "id": "call_x", "type": "function", "function": {"name": pieces[0], "arguments": ""}}
    rest = [{"index": 0, "function": {"name": piece}} for piece in pieces[1:]]
    args = {"index": 0, "function": {"arguments": '{"path": "b"}'}}
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "tool_calls": [first]}),
                                 *[chunk({"tool_calls": [piece]}) for piece in rest],
                                 chunk({"tool_calls": [args]}), chunk({}, "tool_calls")))
    resp = _ask(proxy, minimal_request(messages=[{"role": "user", "content": "read b"}], tools=TOOLS, stream=True))
    [call] = [b for b in final_message(events_of(resp.body))["content"] if b["type"] == "tool_use"]
    assert (call["name"], call["input"]) == (name, {"path": "b"})



@pytest.mark.parametrize("stream", [False, True])
def test_no_id_is_made_in_the_form_claude_code_gives_a_batch_calls_pieces(make_proxy: Any, fake_upstream: FakeUpstream,
                                                                          stream: bool) -> None:
    """probe H: Claude Code names the n-th piece of a batch call X "X_n" and takes "_n" off again to
    find X; a call_0_2 beside call_0 was taken for a piece of call_0, and its result was left out of
    the next request ("[Tool result missing due to internal error]"). A server that numbers each
    answer's calls from call_0 met that on its second tool turn."""
    proxy = make_proxy()
    history: List[Any] = HISTORY[:-1] + [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "call_0", "name": "Read", "input": {"path": "a"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_0", "content": "A"}]}]
    # This answer's own: call_0 again, twice, and call_0_1, which reads as a piece of call_0.
    calls = [{"index": i, "id": cid, "type": "function", "function": {"name": "Read", "arguments": json.dumps({"path": p})}}
             for i, (cid, p) in enumerate([("call_0", "b"), ("call_0", "c"), ("call_0_1", "d")])]
    message = {"role": "assistant", "content": None, "tool_calls": calls}
    if stream:
        fake_upstream.push(sse_reply(chunk({"role": "assistant", "tool_calls": calls}), chunk({}, "tool_calls")))
    else:
        fake_upstream.push(json_reply({"id": "x", "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}))
    resp = _ask(proxy, minimal_request(messages=history, tools=TOOLS, stream=stream))
    content = final_message(events_of(resp.body))["content"] if stream else resp.json["content"]
    ids = [b["id"] for b in content if b["type"] == "tool_use"]
    seen = ["call_0"] + ids
    assert len(set(seen)) == 4, ids
    for one in seen:
        parent = re.sub(r"_[0-9]+$", "", one)
        assert parent == one or parent not in seen, (one, seen)


READ_TOOL = [{"name": "Read", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}]


def _item(cid: str, p: str, i: int) -> Any:
    return {"type": "function_call", "id": f"fc_{i}", "call_id": cid, "name": "Read",
            "arguments": json.dumps({"path": p}), "status": "completed"}


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_piece_that_comes_before_its_parent_is_renamed_too(make_proxy: Any, fake_upstream: FakeUpstream, stream: bool, api: str) -> None:
    """Review H: an upstream's call_0_1 before its call_0 in one answer kept both names on the Chat
    stream and on both Responses paths, a pair Claude Code drops a result of."""
    order = [("call_0_1", "d"), ("call_0", "b")]
    if api == "chat":
        proxy = make_proxy()
        calls = [{"index": i, "id": cid, "type": "function", "function": {"name": "Read", "arguments": json.dumps({"path": p})}}
                 for i, (cid, p) in enumerate(order)]
        if stream:
            fake_upstream.push(sse_reply(chunk({"role": "assistant", "tool_calls": calls[:1]}),
                                         chunk({"tool_calls": calls[1:]}), chunk({}, "tool_calls")))
        else:
            fake_upstream.push(json_reply({"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": calls}, "finish_reason": "tool_calls"}]}))
    else:
        proxy = make_proxy(upstream_api="responses", model="gpt-5")
        items = [_item(cid, p, i) for i, (cid, p) in enumerate(order)]
        done = {"id": "resp_2", "object": "response", "status": "completed", "output": items,
                "usage": {"input_tokens": 5, "output_tokens": 5}}
        if not stream:
            fake_upstream.push(json_reply(done))
        else:
            evs: List[Any] = [{"type": "response.created", "response": {**done, "status": "in_progress", "output": [], "usage": None}}]
            for i, it in enumerate(items):
                evs += [{"type": "response.output_item.added", "output_index": i, "item": {**it, "arguments": ""}},
                        {"type": "response.function_call_arguments.delta", "output_index": i, "item_id": it["id"], "delta": it["arguments"]},
                        {"type": "response.output_item.done", "output_index": i, "item": it}]
            evs.append({"type": "response.completed", "response": done})
            fake_upstream.push(sse_reply(*evs, done=False))
    resp = request(proxy.url, "POST", "/v1/messages",
                   minimal_request(messages=[{"role": "user", "content": "read"}], tools=READ_TOOL, stream=stream),
                   {"x-api-key": CLIENT_KEY})
    content = final_message(events_of(resp.body))["content"] if stream else resp.json["content"]
    ids = [b["id"] for b in content if b["type"] == "tool_use"]
    for one in ids:
        parent = re.sub(r"_[0-9]+$", "", one)
        assert parent == one or parent not in ids, (one, ids)


def test_a_call_whose_piece_the_history_holds_is_renamed(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """The history holds call_0_1 (kept: no call_0 then); this answer's call_0 would make it a piece."""
    proxy = make_proxy()
    history: List[Any] = [{"role": "user", "content": "read"},
                          {"role": "assistant", "content": [{"type": "tool_use", "id": "call_0_1", "name": "Read",
                                                             "input": {"path": "a"}}]},
                          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_0_1", "content": "A"}]}]
    calls = [{"index": 0, "id": "call_0", "type": "function", "function": {"name": "Read", "arguments": '{"path": "b"}'}}]
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "tool_calls": calls}), chunk({}, "tool_calls")))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(messages=history, tools=READ_TOOL, stream=True),
                   {"x-api-key": CLIENT_KEY})
    ids = [b["id"] for b in final_message(events_of(resp.body))["content"] if b["type"] == "tool_use"]
    assert ids == ["call_0-2"], ids


# Passthrough: a server that speaks Anthropic's API itself (a local one translating from its own
# chat format, say) may number its calls anew in every answer too; the forwarded answer is held to
# the same rule. Anthropic's own ids are unique and pass as they are.

def _anthropic_answer(calls: List[Dict[str, Any]], stream: bool) -> Any:
    blocks = [{"type": "tool_use", "name": "Read", "input": {"path": p}, **({} if i is None else {"id": i})}
              for i, p in calls]
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": blocks,
               "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 5}}
    if not stream:
        return json_reply(message)
    events: List[Any] = [{"type": "message_start", "message": {**message, "content": [], "stop_reason": None}}]
    for n, block in enumerate(blocks):
        events += [{"type": "content_block_start", "index": n, "content_block": {**block, "input": {}}},
                   {"type": "content_block_delta", "index": n,
                    "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}},
                   {"type": "content_block_stop", "index": n}]
    events += [{"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 5}}, {"type": "message_stop"}]
    return sse_reply(*(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events), done=False)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_passthrough_makes_a_repeated_call_id_unique(make_proxy: Any, fake_upstream: FakeUpstream, stream: bool) -> None:
    """History holds call_0; the answer calls call_0 twice and one call without an id."""
    proxy = make_proxy(passthrough=True)
    fake_upstream.push(_anthropic_answer([("call_0", "b"), ("call_0", "c"), (None, "d")], stream))
    resp = _ask(proxy, minimal_request(messages=HISTORY, tools=TOOLS, stream=stream))
    assert resp.status == 200, resp
    calls = [b for b in answer_content(resp, stream) if b["type"] == "tool_use"]
    ids = [c["id"] for c in calls]
    assert ids[:2] == ["call_0-2", "call_0-3"], ids
    assert re.fullmatch(r"toolu_[A-Za-z0-9]{24}", ids[2]), ids
    assert [c["input"] for c in calls] == [{"path": p} for p in "bcd"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_passthrough_keeps_ids_that_are_already_unique(make_proxy: Any, fake_upstream: FakeUpstream, stream: bool) -> None:
    proxy = make_proxy(passthrough=True)
    fake_upstream.push(_anthropic_answer([("toolu_01A", "b"), ("toolu_01B", "c")], stream))
    resp = _ask(proxy, minimal_request(messages=HISTORY, tools=TOOLS, stream=stream))
    assert [b["id"] for b in answer_content(resp, stream)] == ["toolu_01A", "toolu_01B"]


def test_passthrough_gives_no_message_id_twice(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """A server that answers every turn as msg_1 (Claude Code merges two answers of one id into
    one message): the first keeps it, a later one (streamed or not) gets the proxy's own; an
    answer without an id gets one too."""
    proxy = make_proxy(passthrough=True)
    ids = []
    for stream in (False, True, False):
        fake_upstream.push(_anthropic_answer([("toolu_01A", "b")], stream))
        resp = _ask(proxy, minimal_request(stream=stream))
        ids.append(final_message(events_of(resp.body))["id"] if stream else resp.json["id"])
    without = {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "hi"}],
               "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}}
    fake_upstream.push(json_reply(without))
    ids.append(_ask(proxy, minimal_request()).json["id"])
    assert ids[0] == "msg_1", ids
    assert len(set(ids)) == 4 and all(re.fullmatch(r"msg_[A-Za-z0-9]{24}", i) for i in ids[1:]), ids
