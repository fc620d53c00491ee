"""Anthropic-defined client tools through the real server (claudeproxy/anthropic_tools.py).

An SDK agent that sends ``{"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}``
runs the tool itself: the upstream must be offered it as a function with the documented input,
and the model's call must come back as a ``tool_use`` block under that name, as Claude's would.
Before, the tools were dropped as server tools and the answer was plain text with ``end_turn``.
"""

from __future__ import annotations

import json
from typing import Any, Dict

from conftest import CLIENT_KEY, request
from fakes import StreamClient, chunk, completion, json_reply, sse_reply
from sse_checks import assert_valid_event_sequence, final_message

SHARED_SERVERS = True  # one fake upstream and its proxies serve the whole module (conftest)
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
EDITOR = {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool", "max_characters": 10000}
BASH = {"type": "bash_20250124", "name": "bash"}
MEMORY = {"type": "memory_20250818", "name": "memory"}
CALL = {"command": "str_replace", "path": "/repo/app.py", "old_str": "retrun x", "new_str": "return x"}


def ask(**extra: Any) -> Dict[str, Any]:
    body: Dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 300,
                            "messages": [{"role": "user", "content": "Fix the typo in /repo/app.py"}],
                            "tools": [EDITOR, BASH, MEMORY]}
    body.update(extra)
    return body


def _offered(tools: Any, flat: bool) -> Dict[str, Any]:
    """The functions the upstream was offered, by name (Responses tools are flat)."""
    return {(t["name"] if flat else t["function"]["name"]): (t if flat else t["function"]) for t in tools}


def _assert_editor_offered(function: Dict[str, Any]) -> None:
    params = function["parameters"]
    assert params["properties"]["command"]["enum"] == ["view", "create", "str_replace", "insert"]
    assert params["required"] == ["command", "path"]
    assert {"old_str", "new_str", "insert_line", "insert_text", "view_range", "file_text"} <= set(params["properties"])
    assert function["description"].startswith("View, create and edit text files.")


def test_chat_upstream_is_offered_the_tools_and_the_call_comes_back_as_tool_use(make_proxy: Any,
                                                                             fake_upstream: Any) -> None:
    proxy = make_proxy()
    call = {"id": "call_1", "type": "function",
            "function": {"name": "str_replace_based_edit_tool", "arguments": json.dumps(CALL)}}
    fake_upstream.push(json_reply(completion(None, finish="tool_calls", tool_calls=[call])))
    resp = request(proxy.url, "POST", "/v1/messages", ask(tool_choice={"type": "tool", "name": "bash"}), HEADERS)
    assert resp.status == 200, resp
    sent = fake_upstream.last.json
    offered = _offered(sent["tools"], flat=False)
    assert list(offered) == ["str_replace_based_edit_tool", "bash", "memory"]
    _assert_editor_offered(offered["str_replace_based_edit_tool"])
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "bash"}}
    assert resp.json["stop_reason"] == "tool_use"
    [block] = resp.json["content"]
    assert (block["type"], block["name"], block["input"]) == ("tool_use", "str_replace_based_edit_tool", CALL)


def test_chat_stream_gives_the_tool_use_block_and_the_next_turn_sends_its_result(make_proxy: Any,
                                                                              fake_upstream: Any) -> None:
    proxy = make_proxy()
    arguments = json.dumps(CALL)
    fake_upstream.push(sse_reply(
        chunk({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                    "function": {"name": "str_replace_based_edit_tool",
                                                                 "arguments": arguments[:20]}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[20:]}}]}),
        chunk({}, finish="tool_calls"),
    ))
    with StreamClient(proxy.url, ask(stream=True), headers=HEADERS) as client:
        events = client.read_all(timeout=10)
    assert_valid_event_sequence(events)
    message = final_message(events)
    [block] = message["content"]
    assert (block["name"], block["input"], message["stop_reason"]) == ("str_replace_based_edit_tool", CALL, "tool_use")
    assert "str_replace_based_edit_tool" in _offered(fake_upstream.last.json["tools"], flat=False)
    # The client ran the edit: the history with the call and its result goes up as a call and a tool message.
    fake_upstream.push(json_reply(completion("Fixed.")))
    follow = ask(messages=[*ask()["messages"], {"role": "assistant", "content": [block]},
                           {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block["id"],
                                                         "content": "The file /repo/app.py has been edited."}]}])
    resp = request(proxy.url, "POST", "/v1/messages", follow, HEADERS)
    assert resp.status == 200, resp
    sent = fake_upstream.last.json["messages"]
    assert sent[1]["tool_calls"][0]["function"]["name"] == "str_replace_based_edit_tool"
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == CALL
    assert sent[2] == {"role": "tool", "tool_call_id": sent[1]["tool_calls"][0]["id"],
                       "content": "The file /repo/app.py has been edited."}


def test_responses_upstream_is_offered_the_tools_and_the_call_comes_back_as_tool_use(make_proxy: Any,
                                                                                  fake_upstream: Any) -> None:
    proxy = make_proxy(upstream_api="responses", model="gpt-5")
    fake_upstream.push(json_reply({
        "id": "resp_1", "object": "response", "status": "completed", "model": "gpt-5",
        "output": [{"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_1",
                    "name": "str_replace_based_edit_tool", "arguments": json.dumps(CALL)}],
        "usage": {"input_tokens": 50, "output_tokens": 20, "total_tokens": 70},
    }))
    resp = request(proxy.url, "POST", "/v1/messages",
                   ask(tool_choice={"type": "tool", "name": "str_replace_based_edit_tool"}), HEADERS)
    assert resp.status == 200, resp
    sent = fake_upstream.last
    assert sent.path == "/v1/responses"
    offered = _offered(sent.json["tools"], flat=True)
    assert list(offered) == ["str_replace_based_edit_tool", "bash", "memory"]
    assert all(t["type"] == "function" and t["strict"] is False for t in offered.values())
    _assert_editor_offered(offered["str_replace_based_edit_tool"])
    assert sent.json["tool_choice"] == {"type": "function", "name": "str_replace_based_edit_tool"}
    assert resp.json["stop_reason"] == "tool_use"
    [block] = resp.json["content"]
    assert (block["type"], block["name"], block["input"]) == ("tool_use", "str_replace_based_edit_tool", CALL)


def test_a_wrong_name_for_the_type_is_refused_like_anthropic_does(make_proxy: Any, fake_upstream: Any) -> None:
    proxy = make_proxy()
    resp = request(proxy.url, "POST", "/v1/messages", ask(tools=[EDITOR, {"type": "bash_20250124", "name": "shell"}]),
                   HEADERS)
    assert resp.status == 400
    assert resp.json["error"]["type"] == "invalid_request_error"
    assert resp.json["error"]["message"].startswith("tools[1].name: ")
    assert "'bash'" in resp.json["error"]["message"]
    assert fake_upstream.requests == []
