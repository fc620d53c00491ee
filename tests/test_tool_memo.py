"""The tool sets a server has seen, parsed, counted and translated once (claudeproxy/tool_memo.py).

What a user would notice if it were wrong: another request's tools sent upstream, one
dialect's schema clean-up applied to another, a token count that lags behind a changed
set, a bad definition accepted the second time. The memo must be invisible otherwise.
"""

from __future__ import annotations

import copy
import gc
import json
import socket
import time
import tracemalloc
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from conftest import CLIENT_KEY, UPSTREAM_KEY, load_json, request
from fakes import FakeUpstream, Gate, Reply, StreamClient, chunk, completion, json_reply, sse_reply

import claudeproxy
from claudeproxy.anthropic_types import parse_messages_request, parse_tools
from claudeproxy.apis.base import encode_body, offered_translated
from claudeproxy.apis.chat.request import chat_tools, to_chat_request
from claudeproxy.apis.responses.request import responses_tools, to_responses_request
from claudeproxy.config import Provider, Route, RouteTarget
from claudeproxy.dialects import DIALECTS
from claudeproxy.errors import InvalidRequest
from claudeproxy.tokens import estimate_input_tokens, tools_chars
from claudeproxy.tool_memo import ToolMemo

CLAUDE_CODE = load_json("requests", "claude_code_2_1_331_followup.anthropic.json")


def fresh_copy(value: Any) -> Any:
    """The same JSON as another request would decode it: equal, and no object shared."""
    return json.loads(json.dumps(value))


def changed_set() -> List[Dict[str, Any]]:
    """Claude Code's tools with one property added to the first one's schema."""
    tools = fresh_copy(CLAUDE_CODE["tools"])
    tools[0]["input_schema"]["properties"]["extra_flag"] = {"type": "boolean"}
    return tools


# --------------------------------------------------------------------------
# The memo alone.


def test_equal_json_shares_one_parsed_set_and_different_json_does_not() -> None:
    memo = ToolMemo()
    first = memo.parse(fresh_copy(CLAUDE_CODE["tools"]))
    again = memo.parse(fresh_copy(CLAUDE_CODE["tools"]))
    other = memo.parse(changed_set())
    assert again is first
    assert other is not first
    assert first == parse_tools(CLAUDE_CODE["tools"])
    assert other == parse_tools(changed_set())
    assert "extra_flag" in other[0].input_schema["properties"]
    assert "extra_flag" not in first[0].input_schema["properties"]


def test_a_reordered_key_is_another_set_not_a_wrong_hit() -> None:
    memo = ToolMemo()
    tools = fresh_copy(CLAUDE_CODE["tools"])
    first = memo.parse(tools)
    reordered = [dict(reversed(list(t.items()))) for t in fresh_copy(CLAUDE_CODE["tools"])]
    assert memo.parse(reordered) is not first
    assert memo.parse(reordered) == first  # equal content all the same


def test_a_bad_set_raises_every_time_and_is_not_kept() -> None:
    memo = ToolMemo()
    bad = fresh_copy(CLAUDE_CODE["tools"])
    bad[2]["name"] = ""
    for _ in range(2):
        with pytest.raises(InvalidRequest) as caught:
            memo.parse(fresh_copy(bad))
        assert caught.value.path == "tools[2].name"
    assert memo.definitions(memo.parse(fresh_copy(CLAUDE_CODE["tools"]))) is not None


def test_derived_values_are_made_once_per_kept_set() -> None:
    memo = ToolMemo()
    tools = memo.parse(fresh_copy(CLAUDE_CODE["tools"]))
    calls: List[int] = []

    def make() -> int:
        calls.append(1)
        return tools_chars(tools)

    assert memo.derived(tools, "chars", make) == memo.derived(tools, "chars", make) == tools_chars(tools)
    assert len(calls) == 1
    loose = parse_tools(CLAUDE_CODE["tools"])  # parsed without the memo: nothing to share
    assert memo.derived(loose, "chars", make) == tools_chars(loose)
    assert memo.derived(loose, "chars", make) == tools_chars(loose)
    assert len(calls) == 3


def test_the_least_recently_used_set_goes_first() -> None:
    memo = ToolMemo(sets=2)
    sets = []
    for i in range(3):
        tools = fresh_copy(CLAUDE_CODE["tools"])
        tools[0]["description"] = f"variant {i}"
        sets.append(tools)
    a = memo.parse(fresh_copy(sets[0]))
    b = memo.parse(fresh_copy(sets[1]))
    assert memo.parse(fresh_copy(sets[0])) is a  # a is now the most recent
    memo.parse(fresh_copy(sets[2]))  # b goes
    assert memo.parse(fresh_copy(sets[0])) is a
    assert memo.definitions(b) is None
    assert memo.parse(fresh_copy(sets[1])) is not b
    calls: List[int] = []
    assert memo.derived(b, "x", lambda: calls.append(1) or 7) == 7
    assert memo.derived(b, "x", lambda: calls.append(1) or 7) == 7
    assert len(calls) == 2  # an evicted set's values are computed afresh, not looked up


def test_a_set_too_big_to_keep_is_parsed_each_time() -> None:
    memo = ToolMemo(kept_bytes=4 * 1000)
    tools = [{"name": "big", "description": "x" * 2000, "input_schema": {"type": "object"}}]
    assert memo.parse(fresh_copy(tools)) is not memo.parse(fresh_copy(tools))
    assert memo.parse(fresh_copy(tools)) == parse_tools(tools)


def test_client_tool_versions_are_sets_of_their_own() -> None:
    """Two sets that differ only in a client tool's version get their own definitions, counts and
    translations: Sonnet 3.7's editor (undo_edit, insert via new_str) is not Claude 4's."""
    memo = ToolMemo()
    older = [{"type": "text_editor_20250124", "name": "str_replace_editor"}, {"type": "bash_20250124", "name": "bash"}]
    newer = [{"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
             {"type": "bash_20250124", "name": "bash"}]
    made = {}
    for i, tools in enumerate((older, newer, older, newer)):
        parsed = memo.parse(fresh_copy(tools))
        functions, warnings = memo.derived(parsed, ("chat", DIALECTS["openai"]),
                                           lambda: chat_tools(parsed, DIALECTS["openai"]))
        made.setdefault(i % 2, (parsed, functions))
        assert made[i % 2][0] is parsed and made[i % 2][1] is functions  # kept and shared
        assert warnings == ()
    names = [[f["function"]["name"] for f in made[i][1]] for i in (0, 1)]
    assert names == [["str_replace_editor", "bash"], ["str_replace_based_edit_tool", "bash"]]
    enums = [made[i][1][0]["function"]["parameters"]["properties"]["command"]["enum"] for i in (0, 1)]
    assert "undo_edit" in enums[0] and "undo_edit" not in enums[1]
    assert memo.derived(made[0][0], "chars", lambda: tools_chars(made[0][0])) != \
        memo.derived(made[1][0], "chars", lambda: tools_chars(made[1][0]))


def test_no_tools_and_non_lists_are_parsed_as_without_a_memo() -> None:
    memo = ToolMemo()
    assert memo.parse([]) == ()
    with pytest.raises(InvalidRequest) as caught:
        memo.parse({"name": "x"})
    assert caught.value.path == "tools"


# --------------------------------------------------------------------------
# What is shared is never changed by the translators.


def test_translators_leave_shared_tools_and_their_translations_as_they_were() -> None:
    memo = ToolMemo()
    body = fresh_copy(CLAUDE_CODE)
    req = parse_messages_request(body, memo.parse)
    definitions = memo.definitions(req.tools)
    assert definitions is body["tools"]
    before = copy.deepcopy(definitions)
    made: List[Any] = []
    for name in ("openai", "gemini", "deepseek", "mistral"):
        dialect = DIALECTS[name]
        tools = offered_translated(memo, req, ("chat", dialect), lambda offered: chat_tools(offered, dialect))[0]
        snapshot = copy.deepcopy(tools)
        chat = to_chat_request(req, model="m", dialect=dialect, tools=tools).request
        json.dumps(chat.to_dict())
        assert tools == snapshot
        assert to_chat_request(req, model="m", dialect=dialect).request == chat  # as without the memo
        made.append(tools)
    for search in (False, True):
        tools = offered_translated(memo, req, ("responses", search), lambda offered: responses_tools(offered, search))[0]
        snapshot = copy.deepcopy(tools)
        out = to_responses_request(req, model="gpt-5", web_search=search, tools=tools).body
        assert out == to_responses_request(req, model="gpt-5", web_search=search).body
        assert tools == snapshot
    assert definitions == before
    assert estimate_input_tokens(req, tool_chars=tools_chars(req.tools)) == estimate_input_tokens(req)
    # Gemini's clean-up differs from OpenAI's for Claude Code's schemas: one dialect's is not another's.
    assert made[0] != made[1]


def test_a_body_with_its_tools_encoded_before_is_the_same_json() -> None:
    payload = {"model": "m", "tools": [{"name": "ß", "n": 1.5}], "stream": True}
    encoded = '[{"name": "ß", "n": 1.5}]'.encode("utf-8")
    assert encode_body(payload, "tools", encoded) == '{"model": "m", "stream": true, "tools": [{"name": "ß", "n": 1.5}]}'.encode("utf-8")
    assert encode_body({"tools": []}, "tools", b"[]") == b'{"tools": []}'
    assert encode_body({"model": "m"}, "tools", b"[1]") == b'{"model": "m"}'  # no tools in it: nothing added
    assert encode_body({"model": "日本"}) == '{"model": "日本"}'.encode("utf-8")  # not escaped: 3 bytes a character


# --------------------------------------------------------------------------
# Through the server: two dialects, two tool sets, interleaved.


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Tuple[FakeUpstream, FakeUpstream]]:
    openai, gemini = FakeUpstream(), FakeUpstream()
    yield openai, gemini
    openai.close()
    gemini.close()


@pytest.fixture(scope="module")
def server(upstreams: Tuple[FakeUpstream, FakeUpstream]) -> Iterator[Any]:
    openai, gemini = upstreams
    providers = (
        Provider("openai", openai.url, token=claudeproxy.static_token(UPSTREAM_KEY), dialect="openai"),
        Provider("gemini", gemini.url, token=claudeproxy.static_token(UPSTREAM_KEY), dialect="gemini"),
    )
    routes = (Route("opus", RouteTarget("openai", "gpt-4.1")), Route("haiku", RouteTarget("gemini", "gemini-2.5")))
    srv = claudeproxy.start(providers=providers, routes=routes)
    yield srv
    srv.shutdown(grace=1.0)


def test_each_request_gets_its_own_tools_in_its_own_dialect(server: Any, upstreams: Any) -> None:
    openai, gemini = upstreams
    sets = [fresh_copy(CLAUDE_CODE["tools"]), changed_set()]
    expected_counts: Dict[int, int] = {}
    for round_no in range(3):
        for i, tools in enumerate(sets):
            for model, fake, dialect in (("claude-opus-4-1", openai, "openai"), ("claude-haiku-4-5", gemini, "gemini")):
                fake.push(json_reply(completion("ok")))
                body = {**fresh_copy(CLAUDE_CODE), "tools": fresh_copy(tools), "model": model, "stream": False}
                resp = request(server.url, "POST", "/v1/messages", body, {"x-api-key": CLIENT_KEY})
                assert resp.status == 200, resp
                offered = tuple(t for t in parse_tools(tools) if not t.deferred)  # none found by a search
                expected, _ = chat_tools(offered, DIALECTS[dialect])
                assert fake.last.json["tools"] == json.loads(json.dumps(list(expected))), (round_no, i, model)
            count = request(server.url, "POST", "/v1/messages/count_tokens",
                            {"model": "claude-opus-4-1", "messages": CLAUDE_CODE["messages"], "tools": tools},
                            {"x-api-key": CLIENT_KEY})
            assert count.status == 200
            expected_counts.setdefault(i, count.json["input_tokens"])
            assert count.json["input_tokens"] == expected_counts[i]
    assert expected_counts[1] > expected_counts[0]  # the changed set's own count, not the first set's


# --------------------------------------------------------------------------
# Memory: requests waiting for the upstream hold one copy of a repeated set.


def _held_by_the_proxy() -> int:
    """Bytes traced now, leaving out what the test and its fakes allocated themselves."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, "*/tests/*", all_frames=True), tracemalloc.Filter(False, tracemalloc.__file__)])
    return sum(stat.size for stat in snapshot.statistics("filename"))


def _big_tool_set() -> List[Dict[str, Any]]:
    """16 tools of 10 properties each: ~15 KB of JSON, several times that as objects."""
    def schema(i: int) -> Dict[str, Any]:
        props = {f"field_{i}_{j}": {"type": "string", "description": f"what field {j} of tool {i} holds"}
                 for j in range(10)}
        return {"type": "object", "properties": props, "required": [f"field_{i}_0"]}
    return [{"name": f"tool_{i}", "description": f"tool number {i}", "input_schema": schema(i)} for i in range(16)]


def _held_while_waiting(server: Any, fake_upstream: Any, body: Dict[str, Any]) -> int:
    """Bytes the proxy holds while three requests with ``body`` wait for the upstream's first byte."""
    fake_upstream.push(sse_reply(chunk({"content": "warm"}), chunk({}, "stop")))
    with StreamClient(server.url, body, headers={"x-api-key": CLIENT_KEY}, timeout=8) as client:
        client.read_all(timeout=5)  # the set is seen once (and kept, or not) before the measurement
    gates = [Gate() for _ in range(3)]
    for gate in gates:
        fake_upstream.push(Reply(200, (("Content-Type", "text/event-stream"),),
                                 [gate, b"data: " + json.dumps(chunk({"content": "one"}, "stop")).encode() + b"\n\n",
                                  b"data: [DONE]\n\n"], chunked=True))
    data = json.dumps(body).encode("utf-8")
    host, port = server.url.split("//", 1)[1].rsplit(":", 1)
    head = (f"POST /v1/messages HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"x-api-key: {CLIENT_KEY}\r\nConnection: close\r\nContent-Length: {len(data)}\r\n\r\n")
    socks: List[socket.socket] = []
    tracemalloc.start(12)
    try:
        before = _held_by_the_proxy()
        for _ in gates:  # the proxy answers nothing before the upstream's first event: no head to wait for
            sock = socket.create_connection((host, int(port)), timeout=8)
            sock.sendall(head.encode("latin-1") + data)
            socks.append(sock)
        deadline = time.monotonic() + 5
        while not all(gate.reached.is_set() for gate in gates) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(gate.reached.is_set() for gate in gates), "the requests did not reach the upstream"
        held = _held_by_the_proxy() - before
    finally:
        tracemalloc.stop()
        for gate in gates:
            gate.release()
    for sock in socks:
        answer = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
        sock.close()
        assert answer.startswith(b"HTTP/1.1 200") and b'"text":"one"' in answer.replace(b" ", b""), answer[:300]
    return held


def test_requests_waiting_for_the_upstream_share_one_copy_of_their_tools(make_proxy: Any,
                                                                         fake_upstream: Any) -> None:
    # Each waiting request holds its upstream body (a retry resends it), but not its own copy
    # of a tool set the server has seen: without the memo, three requests held 3x as much.
    body = {"model": "claude-opus-4-1", "max_tokens": 100, "stream": True, "tools": _big_tool_set(),
            "messages": [{"role": "user", "content": "hi"}]}
    unkept = make_proxy()
    unkept.server.proxy.tools._sets = 0  # keeps nothing: what every request held before the memo
    without = _held_while_waiting(unkept, fake_upstream, body)
    held = _held_while_waiting(make_proxy(), fake_upstream, body)
    assert held < without / 2, f"{held} bytes held by 3 waiting requests; {without} without the memo"


def test_a_waiting_request_lets_its_json_go_unless_a_target_forwards_it(make_proxy: Any, fake_upstream: Any) -> None:
    # Parsed, the JSON's dicts and lists are not needed by a target that translates; a route
    # whose fallback forwards the JSON (a /v1/messages provider) has to keep them.
    blocks = [{"type": "text", "text": f"part {i}"} for i in range(300)]
    body = {"model": "claude-opus-4-1", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": blocks}]}
    chat = Provider("chat", fake_upstream.url, token=claudeproxy.static_token(UPSTREAM_KEY))
    native = Provider("native", fake_upstream.url.rsplit("/v1", 1)[0], api="messages")
    keeps = make_proxy(providers=(chat, native), routes=(
        Route("*", RouteTarget("chat", "gpt-4.1"), fallbacks=(RouteTarget("native", "m"),)),))
    kept = _held_while_waiting(keeps, fake_upstream, body)
    held = _held_while_waiting(make_proxy(providers=(chat,), routes=(Route("*", RouteTarget("chat", "gpt-4.1")),)),
                               fake_upstream, body)
    assert held < kept * 0.8, f"{held} bytes held by 3 waiting requests; {kept} with a forwarding fallback"
