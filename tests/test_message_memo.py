"""Messages a server has seen, parsed once (claudeproxy/message_memo.py).

What a user would notice if it were wrong: an earlier turn's message sent upstream in place
of the one the client sent now (a tool call's input, an edited text), a bad message accepted
the second time or blamed on the wrong place, one request's translation changing what the
next one sends. Otherwise the memo must be invisible.
"""

from __future__ import annotations

import copy
import json
import marshal
import os
import threading
from typing import Any, Dict, List

import pytest
from conftest import CLIENT_KEY, request
from fakes import completion, json_reply

from claudeproxy.anthropic_types import parse_message, parse_messages_request
from claudeproxy.apis.chat.request import to_chat_request
from claudeproxy.apis.responses.request import to_responses_request
from claudeproxy.dialects import DIALECTS
from claudeproxy.errors import InvalidRequest
from claudeproxy.message_memo import MessageMemo
from claudeproxy.tokens import estimate_input_tokens

HERE = os.path.dirname(os.path.abspath(__file__))
SESSION = os.path.join(HERE, "fixtures", "claude_code_session", "requests.jsonl")


def session_bodies() -> List[Dict[str, Any]]:
    """The /v1/messages bodies of a real Claude Code session, turn by turn."""
    with open(SESSION, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [row["body"] for row in rows if row["path"].startswith("/v1/messages") and "count_tokens" not in row["path"]
            and row["body"].get("messages")]


def fresh_copy(value: Any) -> Any:
    """The same JSON as another request would decode it: equal, and no object shared."""
    return json.loads(json.dumps(value))


TOOL_CALL = {"role": "assistant", "content": [
    {"type": "text", "text": "The loader checks every field; reading the tests next to see what they expect of it."},
    {"type": "tool_use", "id": "toolu_01HZ8yQm3kV7pX2cN4bT6wRd", "name": "Read",
     "input": {"file_path": "/tmp/cc-run-7f3a/tests/test_settings.py", "limit": 20}}]}


# --------------------------------------------------------------------------
# The memo alone.


def test_a_message_sent_again_is_the_same_object_and_a_changed_one_is_parsed_anew() -> None:
    memo = MessageMemo()
    first = memo.parse(fresh_copy(TOOL_CALL), "messages[1]")
    assert memo.parse(fresh_copy(TOOL_CALL), "messages[5]") is first  # its place does not matter
    changed = fresh_copy(TOOL_CALL)
    changed["content"][1]["input"]["limit"] = 21
    other = memo.parse(changed, "messages[1]")
    assert other is not first
    assert other.content[1].input["limit"] == 21
    assert first.content[1].input["limit"] == 20
    # 1 and 1.0, true and 1 are different JSON: never a hit for one another.
    as_float = fresh_copy(TOOL_CALL)
    as_float["content"][1]["input"]["limit"] = 20.0
    assert memo.parse(as_float, "messages[1]").content[1].input_json.endswith('"limit": 20.0}')
    assert first.content[1].input_json.endswith('"limit": 20}')


def test_a_bad_message_raises_every_time_naming_its_own_place() -> None:
    memo = MessageMemo()
    bad = {"role": "user", "content": [{"type": "text"}]}  # a text block without its text
    for place in ("messages[0]", "messages[7]", "messages[0]"):
        with pytest.raises(InvalidRequest) as caught:
            memo.parse(fresh_copy(bad), place)
        assert caught.value.path == f"{place}.content[0].text"
    for value in ("not an object", None, [TOOL_CALL]):
        with pytest.raises(InvalidRequest):
            memo.parse(value, "messages[0]")


def test_what_is_kept_stays_under_its_bound_and_the_oldest_goes_first() -> None:
    memo = MessageMemo(kept_bytes=40000)
    messages = [{"role": "user", "content": [{"type": "text", "text": f"question {i} " + "x" * 300}]} for i in range(30)]
    parsed = [memo.parse(m, "messages[0]") for m in messages]
    assert memo._bytes <= 40000
    assert memo.parse(fresh_copy(messages[-1]), "messages[0]") is parsed[-1]  # the newest are kept
    assert memo.parse(fresh_copy(messages[0]), "messages[0]") is not parsed[0]  # the oldest went
    big = {"role": "user", "content": [{"type": "text", "text": "y" * 1500}]}  # past an eighth of the bound
    assert memo.parse(big, "messages[0]") is not memo.parse(fresh_copy(big), "messages[0]")
    assert memo._bytes <= 40000


def test_many_small_distinct_messages_are_not_kept() -> None:
    # 3,000 one-line messages a request held 47 MiB under a bound that counted only their keys, and
    # parsed 2.3x slower than without the memo: a message this small is parsed, not looked up.
    memo = MessageMemo()
    for i in range(3000):
        memo.parse({"role": "user", "content": [{"type": "text", "text": f"line {i}"}]}, f"messages[{i}]")
    assert memo._bytes == 0 and not memo._kept


@pytest.mark.parametrize("content", [
    "a question asked as a plain string, which is one object to parse " * 8,
    [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo" * 400}}],
    [{"type": "tool_result", "tool_use_id": "toolu_01", "content": [
        {"type": "text", "text": "the screenshot"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo" * 400}}]}],
    [{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x" * 400}}],
], ids=["string", "image", "image-in-result", "pdf"])
def test_plain_text_and_media_messages_are_parsed_each_time(content: Any) -> None:
    # A string's parse is one object; an image's key would copy its base64 data every turn (17 ms for
    # 10 MB, against 0.2 ms to parse it).
    memo = MessageMemo()
    message = {"role": "user", "content": content}
    first = memo.parse(message, "messages[0]")
    assert memo.parse(fresh_copy(message), "messages[0]") == first
    assert memo.parse(fresh_copy(message), "messages[0]") is not first
    assert not memo._kept


def test_threads_parsing_the_same_messages_get_equal_messages() -> None:
    memo = MessageMemo()
    bodies = session_bodies()
    results: List[Any] = []
    errors: List[BaseException] = []

    def work() -> None:
        try:
            for body in bodies:
                results.append(tuple(memo.parse(fresh_copy(m), f"messages[{i}]")
                                     for i, m in enumerate(body["messages"])))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(results) == 6 * len(bodies)
    expected = [tuple(parse_message(m, "m") for m in body["messages"]) for body in bodies]
    assert all(result in expected for result in results)
    assert all(results.count(turn) >= 6 for turn in expected)


# --------------------------------------------------------------------------
# A real Claude Code session: each turn as without the memo, the history shared.


def test_each_turn_of_a_session_parses_and_translates_as_without_the_memo() -> None:
    memo = MessageMemo()
    bodies = session_bodies()
    assert len(bodies) >= 8
    shared = 0
    earlier: Dict[bytes, Any] = {}  # a kept message's exact JSON -> the object parsed for it
    for body in bodies:
        req = parse_messages_request(fresh_copy(body), message_parser=memo.parse)
        plain = parse_messages_request(fresh_copy(body))
        assert req == plain
        for raw, message in zip(body["messages"], req.messages):
            key = marshal.dumps(raw, 0)
            if key in earlier:  # sent before, identically: the same object, if it was kept
                shared += earlier[key] is message
            elif any(m is message for m in memo._kept.values()):
                earlier[key] = message
        before = copy.deepcopy(req.messages)
        for name in ("openai", "gemini", "deepseek", "mistral", "ollama"):
            dialect = DIALECTS[name]
            chat = to_chat_request(req, model="m", dialect=dialect).request
            # Against objects no dialect has translated before (what is kept on a message must be
            # kept per dialect: Mistral's call ids, DeepSeek's reasoning differ).
            alone = parse_messages_request(fresh_copy(body))
            assert chat == to_chat_request(alone, model="m", dialect=dialect).request, name
            json.dumps(chat.to_dict())
        alone = parse_messages_request(fresh_copy(body))
        assert to_responses_request(req, model="gpt-5").body == to_responses_request(alone, model="gpt-5").body
        assert estimate_input_tokens(req) == estimate_input_tokens(plain)
        assert req.messages == before  # no translation changed a message the next turn shares
    # Every turn after the first repeats most of the history: its kept messages were parsed once.
    assert shared >= 30, shared  # (38 in this session: its tool calls and results)
    assert all(message in memo._kept.values() for message in earlier.values())  # none evicted here


# --------------------------------------------------------------------------
# Through the server.


def test_the_upstream_gets_each_turn_as_its_client_sent_it(make_proxy: Any, fake_upstream: Any) -> None:
    # Two conversations sharing their first messages, then differing in a tool call's input and in
    # a text, interleaved: each request's upstream body carries its own.
    server = make_proxy()
    question = {"role": "user", "content": "Read the file, please."}

    def turn(limit: int, answer: str) -> Dict[str, Any]:
        call = fresh_copy(TOOL_CALL)
        call["content"][1]["input"]["limit"] = limit
        result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["content"][1]["id"],
                                               "content": answer + " (the file's 20 lines) " + "." * 300}]}
        return {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [question, call, result]}

    for limit, answer in ((20, "first"), (30, "second"), (20, "first"), (20, "third"), (30, "second")):
        fake_upstream.push(json_reply(completion("ok")))
        resp = request(server.url, "POST", "/v1/messages", turn(limit, answer), {"x-api-key": CLIENT_KEY})
        assert resp.status == 200, resp
        sent = fake_upstream.last.json["messages"]
        calls = [m for m in sent if m.get("tool_calls")]
        assert json.loads(calls[0]["tool_calls"][0]["function"]["arguments"])["limit"] == limit
        assert [m["content"].split(" ")[0] for m in sent if m["role"] == "tool"] == [answer]
    assert len(server.server.proxy.message_memo._kept) == 5  # two calls, three results: each repeat shared
