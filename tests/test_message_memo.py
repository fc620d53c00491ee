"""The messages a server has seen, parsed once per distinct message (claudeproxy/message_memo.py).

What a user would notice if it were wrong: an earlier request's message (or a tool call's old
arguments) sent upstream in place of the one the client sent, a bad message accepted the
second time or reported at the wrong path, memory that grows with every turn. The memo must
be invisible otherwise.
"""

from __future__ import annotations

import copy
import json
import threading
from typing import Any, Dict, List

import pytest
from conftest import CLIENT_KEY, request
from fakes import completion, json_reply

from claudeproxy.anthropic_types import parse_messages, parse_messages_request
from claudeproxy.apis.chat.request import to_chat_request
from claudeproxy.dialects import DIALECTS
from claudeproxy.errors import InvalidRequest
from claudeproxy.message_memo import MessageMemo


def conversation(rounds: int = 4, command: str = "ls") -> List[Dict[str, Any]]:
    """A Claude Code-like history: a question, tool rounds (with thinking), a last question."""
    out: List[Dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": "look around"}]}]
    for i in range(rounds):
        out.append({"role": "assistant", "content": [
            {"type": "thinking", "thinking": f"round {i}", "signature": "sig"},
            {"type": "text", "text": f"Running round {i}."},
            {"type": "tool_use", "id": f"toolu_{i:02d}", "name": "Bash", "input": {"command": command, "n": i}},
        ]})
        out.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{i:02d}", "content": [{"type": "text", "text": f"out {i}"}]},
        ]})
    out.append({"role": "user", "content": "and now?"})
    return out


def fresh(value: Any) -> Any:
    """The same JSON as another request decodes it: equal, no object shared."""
    return json.loads(json.dumps(value))


# --------------------------------------------------------------------------
# The memo alone.


def test_a_message_sent_again_is_the_message_parsed_before_and_a_changed_one_is_not() -> None:
    memo = MessageMemo()
    first = memo.parse(fresh(conversation()))
    again = memo.parse(fresh(conversation()))
    assert first == parse_messages(conversation())
    assert all(a is b for a, b in zip(first, again))
    changed = memo.parse(fresh(conversation(command="rm -rf build")))
    assert changed == parse_messages(conversation(command="rm -rf build"))
    tool_turns = [i for i, m in enumerate(conversation()) if m["role"] == "assistant"]
    for i in tool_turns:
        assert changed[i] is not first[i] and changed[i].content[2].input["command"] == "rm -rf build"
    assert changed[0] is first[0]  # the untouched ones are shared


def test_number_types_and_key_order_are_part_of_a_message_value() -> None:
    # 1, 1.0 and true are equal in Python: a memo keyed on equality would send the other one.
    memo = MessageMemo()
    forms = [{"n": 1}, {"n": 1.0}, {"n": True}, {"b": 2, "a": 1}, {"a": 1, "b": 2}]
    sent = []
    for value in forms:
        message = {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": value}]}
        (parsed,) = memo.parse([fresh(message)])
        sent.append(parsed.content[0].input_json)
    assert sent == ['{"n": 1}', '{"n": 1.0}', '{"n": true}', '{"b": 2, "a": 1}', '{"a": 1, "b": 2}']


def test_a_bad_message_raises_at_its_path_every_time_and_is_not_kept() -> None:
    memo = MessageMemo()
    good = conversation(rounds=1)
    memo.parse(fresh(good))
    bad = fresh(good) + [{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}]
    for _ in range(2):
        with pytest.raises(InvalidRequest) as caught:
            memo.parse(fresh(bad))
        assert caught.value.message.startswith("messages[4].content[0].source.media_type")
    with pytest.raises(InvalidRequest) as caught:
        parse_messages_request({"model": "m", "max_tokens": 5, "messages": fresh(bad)}, messages_parser=memo.parse)
    assert caught.value.message.startswith("messages[4].")


def test_the_keys_kept_stay_under_the_bound_and_a_large_message_is_never_kept() -> None:
    memo = MessageMemo(kept_bytes=4096, largest=1024)
    for i in range(200):
        memo.parse([{"role": "user", "content": f"question {i} " + "x" * 100}])
        assert memo._bytes <= 4096
    assert 20 <= len(memo._by_key) < 40  # ~130 bytes a key: the last ones are kept, the first are gone
    large = {"role": "user", "content": "y" * 2000}
    first, = memo.parse([fresh(large)])
    again, = memo.parse([fresh(large)])
    assert first == again and first is not again
    recent = {"role": "user", "content": "question 199 " + "x" * 100}
    assert memo.parse([recent])[0] is memo.parse([fresh(recent)])[0]


def test_threads_parsing_the_same_and_different_conversations_get_their_own_messages() -> None:
    memo = MessageMemo()
    errors: List[str] = []

    def work(command: str) -> None:
        for _ in range(30):
            got = memo.parse(fresh(conversation(command=command)))
            if got != parse_messages(conversation(command=command)):
                errors.append(command)

    threads = [threading.Thread(target=work, args=(c,)) for c in ("ls", "pwd", "ls", "cat x")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and not any(t.is_alive() for t in threads)


def test_translating_a_shared_message_leaves_it_as_it_was() -> None:
    memo = MessageMemo()
    body = {"model": "m", "max_tokens": 100, "messages": fresh(conversation()),
            "tools": [{"name": "Bash", "input_schema": {"type": "object"}}]}
    req = parse_messages_request(body, messages_parser=memo.parse)
    before = copy.deepcopy(req.messages)
    for name in ("openai", "gemini", "deepseek", "mistral"):
        json.dumps(to_chat_request(req, model="m", dialect=DIALECTS[name]).request.to_dict())
    assert req.messages == before
    assert memo.parse(fresh(conversation())) == before


# --------------------------------------------------------------------------
# Through the server.


def test_each_turn_goes_upstream_with_its_own_messages(make_proxy: Any, fake_upstream: Any) -> None:
    proxy = make_proxy()
    for command in ("ls", "ls -la", "ls", "git status"):
        fake_upstream.push(json_reply(completion("ok")))
        body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": conversation(command=command)}
        resp = request(proxy.url, "POST", "/v1/messages", body, {"x-api-key": CLIENT_KEY})
        assert resp.status == 200, resp
        sent = fake_upstream.last.json["messages"]
        calls = [c for m in sent for c in m.get("tool_calls") or []]
        assert len(calls) == 4
        assert all(json.loads(c["function"]["arguments"])["command"] == command for c in calls)
        assert sent[-1] == {"role": "user", "content": "and now?"}
