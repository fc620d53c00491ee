"""Provider quirks a user notices over a whole session: a Kimi tool loop on Moonshot, DeepSeek's
cut-off answers, Mistral's thinking (dialects.py).

Each test runs the real proxy against a fake upstream on 127.0.0.1 that answers as the provider
does, and asserts what the client gets and what the upstream is sent on the next turn.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List

import pytest

from conftest import CLIENT_KEY, load_json, minimal_request, request
from fakes import FakeUpstream, chunk, completion, json_reply, sse_reply
from sse_checks import answer_content, assert_valid_event_sequence, events_of, final_message

from claudeproxy.apis.names import client_tool_id, upstream_tool_id

# Anthropic's tool_use id pattern (the API refuses other ids in a request).
ANTHROPIC_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
BASH = {"name": "Bash", "description": "run a command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}


def ask(proxy: Any, body: Any) -> Any:
    return request(proxy.url, "POST", "/v1/messages", body, {"x-api-key": CLIENT_KEY})


def sent(fake: FakeUpstream) -> List[Dict[str, Any]]:
    return [r.json for r in fake.requests]


# --------------------------------------------------------------------------
# Moonshot (Kimi): reasoning_content back on tool-call turns, its own tool ids.

def kimi_tool_turn() -> Any:
    """A kimi-k2.6 stream as Moonshot sends it: reasoning, then a call named functions.Bash:0,
    with the usage inside the final choice."""
    call = {"index": 0, "id": "functions.Bash:0", "type": "function",
            "function": {"name": "Bash", "arguments": ""}}
    usage = {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}
    last = chunk({}, "tool_calls")
    last["choices"][0]["usage"] = usage
    return sse_reply(
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "I should list "}),
        chunk({"reasoning_content": "the files."}),
        chunk({"tool_calls": [call]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"command": "ls"}'}}]}),
        last,
    )


def test_a_kimi_tool_loop_keeps_its_reasoning_and_its_ids(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """Moonshot answered the second turn of every Kimi tool loop with 400 "thinking is enabled but
    reasoning_content is missing in assistant tool call message", and its ids broke Anthropic's."""
    proxy = make_proxy(upstream=fake_upstream.url, provider="moonshot", model="kimi-k2.6")
    fake_upstream.push(kimi_tool_turn(), json_reply(completion("two files")))
    first = {"model": "claude-sonnet-4-5", "max_tokens": 4096, "stream": True, "tools": [BASH],
             "thinking": {"type": "enabled", "budget_tokens": 2048},
             "messages": [{"role": "user", "content": "what is here?"}]}
    resp = ask(proxy, first)
    assert resp.status == 200, resp
    events = events_of(resp.body)
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    thinking, tool_use = message["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] == "I should list the files."
    assert tool_use["type"] == "tool_use" and tool_use["input"] == {"command": "ls"}
    assert ANTHROPIC_TOOL_ID.match(tool_use["id"]), tool_use["id"]
    assert message["stop_reason"] == "tool_use" and message["usage"]["output_tokens"] == 12
    assert sent(fake_upstream)[0]["thinking"] == {"type": "enabled"}

    # Claude Code's next turn: the history as it got it, and the tool's result.
    second = dict(first, stream=False, messages=[
        *first["messages"],
        {"role": "assistant", "content": [thinking, tool_use]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "a b"}]},
    ])
    resp = ask(proxy, second)
    assert resp.status == 200, resp
    assistant, tool = sent(fake_upstream)[1]["messages"][1:3]
    assert assistant["reasoning_content"] == "I should list the files."
    assert assistant["tool_calls"][0]["id"] == "functions.Bash:0"  # Kimi gets its own id back
    assert tool == {"role": "tool", "content": "a b", "tool_call_id": "functions.Bash:0"}


def test_a_kimi_json_answer_gives_an_id_anthropic_accepts(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(upstream=fake_upstream.url, provider="moonshot", model="kimi-k2.6")
    calls = [{"id": "functions.Bash:0", "type": "function", "function": {"name": "Bash", "arguments": "{}"}},
             {"id": "functions.Bash:1", "type": "function", "function": {"name": "Bash", "arguments": "{}"}}]
    fake_upstream.push(json_reply(completion(None, finish="tool_calls", tool_calls=calls)))
    resp = ask(proxy, minimal_request(tools=[BASH]))
    assert resp.status == 200, resp
    ids = [b["id"] for b in resp.json["content"] if b["type"] == "tool_use"]
    assert len(set(ids)) == 2 and all(ANTHROPIC_TOOL_ID.match(i) for i in ids), ids
    assert [upstream_tool_id(i) for i in ids] == ["functions.Bash:0", "functions.Bash:1"]


@pytest.mark.parametrize("upstream_id", ["functions.Bash:0", "call_abc123", "toolu_01A", "a b/c", "é:1", "x" * 300])
def test_tool_ids_reach_the_client_valid_and_go_back_as_they_came(upstream_id: str) -> None:
    shown = client_tool_id(upstream_id)
    assert ANTHROPIC_TOOL_ID.match(shown)
    assert upstream_tool_id(shown) == upstream_id


@pytest.mark.parametrize("client_id", ["toolu_b64_", "toolu_b64_!!", "toolu_b64_YWJj", "toolu_b64_ZnVuY3Rpb25zLkJhc2g6MA_2"])
def test_a_client_id_that_only_looks_encoded_goes_up_unchanged(client_id: str) -> None:
    """YWJj is "abc", an id that never needed encoding; "_2" is a duplicate's suffix."""
    assert upstream_tool_id(client_id) == client_id


def test_a_kimi_tool_turn_without_thinking_still_carries_reasoning(make_proxy: Any,
                                                                   fake_upstream: FakeUpstream) -> None:
    """A tool call from before thinking was on (or from another model): Moonshot takes an empty
    reasoning_content for a missing one, and refuses the request the same way."""
    proxy = make_proxy(upstream=fake_upstream.url, provider="moonshot", model="kimi-k2.6")
    fake_upstream.push(json_reply(completion("done")))
    body = minimal_request(tools=[BASH], messages=[
        {"role": "user", "content": "run ls"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash",
                                           "input": {"command": "ls"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a"}]},
    ])
    assert ask(proxy, body).status == 200
    assistant = sent(fake_upstream)[0]["messages"][1]
    assert assistant["tool_calls"][0]["id"] == "toolu_1" and assistant["reasoning_content"].strip() == ""
    assert assistant["reasoning_content"] != ""


def test_thinking_off_is_said_to_kimi_and_no_effort_is_sent(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(upstream=fake_upstream.url, provider="moonshot", model="kimi-k2.6")
    fake_upstream.push(json_reply(completion("hi")))
    assert ask(proxy, minimal_request(thinking={"type": "disabled"}, output_config={"effort": "high"})).status == 200
    body = sent(fake_upstream)[0]
    assert body["thinking"] == {"type": "disabled"} and "reasoning_effort" not in body


@pytest.mark.parametrize("provider", ["vllm", "llamacpp"])
@pytest.mark.parametrize("stream", [False, True])
def test_think_tags_in_a_local_servers_content_are_thinking(make_proxy: Any, fake_upstream: FakeUpstream,
                                                           provider: str, stream: bool) -> None:
    """Probe AN 3: vLLM started without --reasoning-parser (the usual Qwen3 case) sends the model's
    <think>...</think> in the content; they reached Claude Code's answer and its history as text."""
    proxy = make_proxy(upstream=fake_upstream.url, provider=provider, model="Qwen/Qwen3-8B")
    text = "<think>I will run echo.</think>Running it."
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": text[:12]}), chunk({"content": text[12:]}),
                                 chunk({}, "stop")) if stream else json_reply(completion(text)))
    resp = ask(proxy, minimal_request(stream=stream, thinking={"type": "enabled", "budget_tokens": 2000}))
    assert resp.status == 200, resp
    content = final_message(events_of(resp.body))["content"] if stream else resp.json["content"]
    assert [(b["type"], b.get("thinking", b.get("text"))) for b in content] == \
        [("thinking", "I will run echo."), ("text", "Running it.")]


# --------------------------------------------------------------------------
# DeepSeek: an answer cut off for lack of resources is an overload, not a finished answer.

CUT = "insufficient_system_resource"


def test_a_json_answer_cut_for_lack_of_resources_is_overloaded(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """It was end_turn: a cut answer looked complete."""
    proxy = make_proxy(upstream=fake_upstream.url, provider="deepseek", model="deepseek-chat", retries=0)
    fake_upstream.push(json_reply(completion("The answer is", finish=CUT)))
    resp = ask(proxy, minimal_request())
    assert resp.status == 529, resp
    assert resp.json["error"]["type"] == "overloaded_error" and CUT in resp.json["error"]["message"]


def test_a_cut_json_answer_is_retried_like_any_overload(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(upstream=fake_upstream.url, provider="deepseek", model="deepseek-chat", retries=1)
    fake_upstream.push(json_reply(completion("The answer is", finish=CUT)), json_reply(completion("The answer is 42.")))
    resp = ask(proxy, minimal_request())
    assert resp.status == 200, resp
    assert resp.json["content"] == [{"type": "text", "text": "The answer is 42."}]
    assert len(fake_upstream.requests) == 2


def test_a_stream_cut_for_lack_of_resources_ends_with_an_overloaded_error(make_proxy: Any,
                                                                        fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(upstream=fake_upstream.url, provider="deepseek", model="deepseek-chat", retries=0)
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": "The answer"}),
                                 chunk({"content": " is"}, CUT)))
    resp = ask(proxy, minimal_request(stream=True))
    assert resp.status == 200, resp
    events = events_of(resp.body)
    assert_valid_event_sequence(events)
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "The answer is"  # what came, the last chunk's text too
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "overloaded_error"
    assert not [e for e in events if e["type"] in ("message_delta", "message_stop")]


def test_a_stream_cut_before_any_content_is_a_plain_529(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """Nothing went out yet: the client (and the proxy's retries) see an ordinary overload."""
    proxy = make_proxy(upstream=fake_upstream.url, provider="deepseek", model="deepseek-chat", retries=0)
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": ""}, CUT)))
    resp = ask(proxy, minimal_request(stream=True))
    assert resp.status == 529, resp
    assert resp.json["error"]["type"] == "overloaded_error"


def test_other_unknown_finish_reasons_still_end_the_turn(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(upstream=fake_upstream.url, provider="deepseek", model="deepseek-chat", retries=0)
    fake_upstream.push(json_reply(completion("done", finish="eos")))
    resp = ask(proxy, minimal_request())
    assert resp.status == 200 and resp.json["stop_reason"] == "end_turn", resp


# --------------------------------------------------------------------------
# Mistral's reasoning models: the thinking comes as a part of the content list.

def magistral(thinking: str, text: str) -> List[Dict[str, Any]]:
    parts: List[Dict[str, Any]] = []
    if thinking:
        parts.append({"type": "thinking", "thinking": [{"type": "text", "text": thinking}]})
    if text:
        parts.append({"type": "text", "text": text})
    return parts


THINKING = {"type": "adaptive"}  # thinking blocks come only to a client that asks for them


def test_magistral_thinking_is_a_thinking_block(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """Only the text parts were kept: the thinking was dropped."""
    proxy = make_proxy(upstream=fake_upstream.url, provider="mistral", model="magistral-medium-latest")
    fake_upstream.push(json_reply(completion(magistral("I think", "Answer"))))
    resp = ask(proxy, minimal_request(thinking=THINKING))
    assert resp.status == 200, resp
    thinking, text = resp.json["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] == "I think"
    assert text == {"type": "text", "text": "Answer"}


def test_magistral_streamed_thinking_is_a_thinking_block(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(upstream=fake_upstream.url, provider="mistral", model="magistral-medium-latest")
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": magistral("I ", "")}),
                                 chunk({"content": magistral("think", "")}),
                                 chunk({"content": magistral("", "Answer")}),
                                 chunk({}, "stop", usage={"prompt_tokens": 5, "completion_tokens": 4})))
    resp = ask(proxy, minimal_request(stream=True, thinking=THINKING))
    assert resp.status == 200, resp
    events = events_of(resp.body)
    assert_valid_event_sequence(events, allow_error=False)
    thinking, text = final_message(events)["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] == "I think"
    assert text == {"type": "text", "text": "Answer"}


# ---------------------------------------------------------------------------
# Reasoning the client did not ask for (gpt-oss, DeepSeek-R1, Qwen3 reason unasked).


@pytest.mark.parametrize("thinking, shown", [(None, False), ({"type": "disabled"}, False), (THINKING, True),
                                             ({"type": "enabled", "budget_tokens": 1024}, True)])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_reasoning_comes_back_only_to_a_client_that_asked_for_thinking(make_proxy: Any, fake_upstream: FakeUpstream,
                                                                        thinking: Any, shown: bool,
                                                                        stream: bool) -> None:
    """Anthropic returns no thinking block unasked: an SDK script reading content[0].text found
    one (AttributeError) whenever the upstream reasoned on its own."""
    proxy = make_proxy(upstream=fake_upstream.url, provider="vllm", model="gpt-oss-120b")
    if stream:
        fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": ""}),
                                     chunk({"reasoning_content": "The user says hi."}), chunk({"content": "Hello!"}),
                                     chunk({}, "stop", usage={"prompt_tokens": 5, "completion_tokens": 9})))
    else:
        fake_upstream.push(json_reply(completion("Hello!", reasoning_content="The user says hi.")))
    body = minimal_request(stream=stream, max_tokens=2048, **({"thinking": thinking} if thinking else {}))
    resp = ask(proxy, body)
    assert resp.status == 200, resp
    content = answer_content(resp, stream)
    if shown:
        assert [b["type"] for b in content] == ["thinking", "text"]
        assert content[0]["thinking"] == "The user says hi."
    else:
        assert content == [{"type": "text", "text": "Hello!"}]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_gemini_thought_signatures_still_round_trip_without_thinking(make_proxy: Any, fake_upstream: FakeUpstream,
                                                                    stream: bool) -> None:
    """Gemini wants each call's thought_signature back (a 400 without it): with no thinking asked,
    an empty thinking block still carries them, and the next turn sends them."""
    proxy = make_proxy(upstream=fake_upstream.url, provider="gemini", model="gemini-2.5-flash")
    call = {"id": "function-call-1", "type": "function", "function": {"name": "get_weather", "arguments": '{"c":1}'},
            "extra_content": {"google": {"thought_signature": "sigA=="}}}
    if stream:
        fake_upstream.push(sse_reply(chunk({"role": "assistant", "reasoning_content": "Weather, then.",
                                            "tool_calls": [{**call, "index": 0}]}),
                                     chunk({}, "tool_calls", usage={"prompt_tokens": 5, "completion_tokens": 9})))
    else:
        fake_upstream.push(json_reply(completion(None, finish="tool_calls", tool_calls=[call],
                                                 reasoning_content="Weather, then.")))
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    first = minimal_request(stream=stream, tools=tools)
    resp = ask(proxy, first)
    assert resp.status == 200, resp
    content = final_message(events_of(resp.body))["content"] if stream else resp.json["content"]
    # The carrier block comes first, streamed or not (the stream's followed the call: a probe).
    assert [b["type"] for b in content] == ["thinking", "tool_use"]
    carrier = next(b for b in content if b["type"] == "thinking")
    call_id = next(b["id"] for b in content if b["type"] == "tool_use")
    assert carrier["thinking"] == "" and carrier["signature"]  # the reasoning left out, the state kept
    fake_upstream.push(json_reply(completion("Sunny.")))
    history = first["messages"] + [{"role": "assistant", "content": content},
                                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id,
                                                                 "content": "sunny"}]}]
    assert ask(proxy, minimal_request(tools=tools, messages=history)).status == 200
    echoed = [m for m in fake_upstream.last.json["messages"] if m.get("tool_calls")][0]["tool_calls"][0]
    assert echoed["extra_content"] == {"google": {"thought_signature": "sigA=="}}


@pytest.mark.parametrize("usage", [None, {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}])
def test_a_json_answer_to_a_stream_request_gets_an_id_and_usage_as_a_json_request_would(
        make_proxy: Any, fake_upstream: FakeUpstream, usage: Any) -> None:
    # A server that ignores "stream" and repeats its id: each streamed answer still gets an id of its
    # own (Claude Code merges answers that share one), and with no usage in the answer the client
    # gets the input estimate, not 0 (Claude Code sizes its context by it) -- as a JSON request does.
    proxy = make_proxy()
    starts, deltas = [], []
    for stream in (True, True, False):
        body = completion("Hello!")
        if usage is None:
            del body["usage"]
        fake_upstream.push(json_reply(body))
        resp = request(proxy.url, "POST", "/v1/messages", minimal_request(stream=stream),
                       {"x-api-key": CLIENT_KEY})
        assert resp.status == 200, resp
        if stream:
            events = events_of(resp.body)
            assert_valid_event_sequence(events, allow_error=False)
            starts.append(events[0]["message"])
            deltas.append(next(e for e in events if e["type"] == "message_delta")["usage"])
        else:
            answer = resp.json
    ids = [m["id"] for m in starts]
    assert len(set(ids)) == 2 and all(i.startswith("msg_") and "abc123" not in i for i in ids), ids
    if usage is None:
        assert starts[0]["usage"]["input_tokens"] == answer["usage"]["input_tokens"] > 0
        assert deltas[0]["input_tokens"] == answer["usage"]["input_tokens"] and deltas[0]["output_tokens"] > 0
    else:
        assert deltas[0]["input_tokens"] == 10 and deltas[0]["output_tokens"] == 5


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_thinking_display_updates_is_taken_as_summarized(make_proxy: Any, fake_upstream: FakeUpstream,
                                                         stream: bool) -> None:
    """Claude Code 2.1.331 sends ``display: "updates"`` (Anthropic's newest models then write short
    notes between tool calls, which no other upstream does): the reasoning comes as it is."""
    proxy = make_proxy(upstream=fake_upstream.url, provider="deepseek", model="deepseek-reasoner")
    if stream:
        fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"reasoning_content": "a plan"}),
                                     chunk({"content": "Hello!"}),
                                     chunk({}, "stop", usage={"prompt_tokens": 5, "completion_tokens": 9})))
    else:
        fake_upstream.push(json_reply(completion("Hello!", reasoning_content="a plan")))
    body = minimal_request(stream=stream, max_tokens=4096, thinking={"type": "adaptive", "display": "updates"})
    resp = ask(proxy, body)
    assert resp.status == 200, resp
    content = answer_content(resp, stream)
    assert [(b["type"], b.get("thinking")) for b in content] == [("thinking", "a plan"), ("text", None)], content


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("api", ["chat", "responses"])
def test_thinking_display_omitted_gives_blocks_without_their_text(make_proxy: Any, fake_upstream: FakeUpstream,
                                                                 stream: bool, api: str) -> None:
    """``thinking.display: "omitted"``: thinking blocks with an empty text and their signature, as
    Anthropic gives them; the whole reasoning came back (an SDK probe)."""
    if api == "chat":
        proxy = make_proxy(upstream=fake_upstream.url, provider="deepseek", model="deepseek-reasoner")
        if stream:
            fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": ""}),
                                         chunk({"reasoning_content": "secret chain"}), chunk({"reasoning_content": " of thought"}),
                                         chunk({"content": "Hello!"}),
                                         chunk({}, "stop", usage={"prompt_tokens": 5, "completion_tokens": 9})))
        else:
            fake_upstream.push(json_reply(completion("Hello!", reasoning_content="secret chain of thought")))
    else:
        proxy = make_proxy(upstream=fake_upstream.url, upstream_api="responses", model="gpt-5")
        reasoning = {"type": "reasoning", "id": "rs_1", "encrypted_content": "ENC",
                     "summary": [{"type": "summary_text", "text": "secret chain of thought"}]}
        message = {"type": "message", "id": "m_1", "role": "assistant", "status": "completed",
                   "content": [{"type": "output_text", "text": "Hello!", "annotations": []}]}
        done = {"id": "resp_1", "object": "response", "status": "completed", "output": [reasoning, message],
                "usage": {"input_tokens": 5, "output_tokens": 9}}
        if stream:
            fake_upstream.push(sse_reply(
                {"type": "response.created", "response": {**done, "status": "in_progress", "output": [], "usage": None}},
                {"type": "response.output_item.added", "output_index": 0, "item": {**reasoning, "summary": []}},
                {"type": "response.reasoning_summary_text.delta", "output_index": 0, "item_id": "rs_1",
                 "summary_index": 0, "delta": "secret chain of thought"},
                {"type": "response.output_item.done", "output_index": 0, "item": reasoning},
                {"type": "response.output_item.added", "output_index": 1, "item": {**message, "content": []}},
                {"type": "response.output_text.delta", "output_index": 1, "item_id": "m_1", "content_index": 0,
                 "delta": "Hello!"},
                {"type": "response.output_item.done", "output_index": 1, "item": message},
                {"type": "response.completed", "response": done}, done=False))
        else:
            fake_upstream.push(json_reply(done))
    body = minimal_request(stream=stream, max_tokens=4096,
                           thinking={"type": "enabled", "budget_tokens": 2048, "display": "omitted"})
    resp = ask(proxy, body)
    assert resp.status == 200, resp
    content = answer_content(resp, stream)
    assert [b["type"] for b in content] == ["thinking", "text"], content
    assert content[0]["thinking"] == "" and content[0]["signature"], content
    assert "secret" not in resp.body.decode("utf-8")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_gemini_behind_a_gateway_gets_its_thought_signatures_back(make_proxy: Any, fake_upstream: FakeUpstream,
                                                                    stream: bool) -> None:
    """Gemini behind a gateway, or Vertex AI's OpenAI endpoint, is detected as generic: its calls'
    thought signatures were kept in the carrier block but never sent back, and Gemini 3 refuses a
    call without its own (a probe). A Gemini model gets them under any dialect, its carrier block
    before its calls, streamed or not; the gateway's GPT model does not (OpenAI refuses the field,
    a review found one gateway serving both)."""
    call = {"id": "function-call-1", "type": "function", "function": {"name": "get_weather", "arguments": '{"c":1}'},
            "extra_content": {"google": {"thought_signature": "sigG=="}}}
    if stream:
        fake_upstream.push(sse_reply(chunk({"role": "assistant", "tool_calls": [{**call, "index": 0}]}),
                                     chunk({}, "stop", usage={"prompt_tokens": 5, "completion_tokens": 9})))
    else:
        fake_upstream.push(json_reply(completion(None, finish="stop", tool_calls=[call])))
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    first = minimal_request(stream=stream, tools=tools)
    resp = ask(make_proxy(upstream=fake_upstream.url, model="google/gemini-3-pro-preview"), first)
    assert resp.status == 200, resp
    content = final_message(events_of(resp.body))["content"] if stream else resp.json["content"]
    assert [b["type"] for b in content] == ["thinking", "tool_use"]
    call_id = next(b["id"] for b in content if b["type"] == "tool_use")
    history = first["messages"] + [{"role": "assistant", "content": content},
                                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id,
                                                                 "content": "sunny"}]}]
    echoed = {}
    for provider, model in (("generic", "gemini-3-pro-preview"), ("generic", "gpt-4.1"), ("gemini", "gemini-3-pro"),
                            ("openai", "gpt-4.1")):
        fake_upstream.push(json_reply(completion("Sunny.")))
        proxy = make_proxy(upstream=fake_upstream.url, provider=provider, model=model)
        assert ask(proxy, minimal_request(tools=tools, messages=history)).status == 200
        sent_call = [m for m in fake_upstream.last.json["messages"] if m.get("tool_calls")][0]["tool_calls"][0]
        echoed[provider, model] = sent_call.get("extra_content")
    signature = {"google": {"thought_signature": "sigG=="}}
    assert echoed == {("generic", "gemini-3-pro-preview"): signature, ("generic", "gpt-4.1"): None,
                      ("gemini", "gemini-3-pro"): signature, ("openai", "gpt-4.1"): None}


def test_an_event_stream_answer_to_a_json_request_is_made_whole(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """A gateway or server that streams whatever it is asked: the JSON request got a 502, "not JSON",
    though the proxy translates the same stream for a stream request (probe B). Now the answer is
    the stream made whole: what the stream request's final message is, text, tool call and usage."""
    proxy = make_proxy()
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    stream = [chunk({"role": "assistant", "content": "Let me "}), chunk({"content": "check."}),
              chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                     "function": {"name": "get_weather", "arguments": '{"city": '}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
              chunk(finish="tool_calls"), chunk(choices=[], usage={"prompt_tokens": 30, "completion_tokens": 9})]
    fake_upstream.push(sse_reply(*stream), sse_reply(*stream))
    whole = ask(proxy, minimal_request(tools=tools))
    streamed = ask(proxy, minimal_request(tools=tools, stream=True))
    assert whole.status == 200, whole
    assert whole.json["type"] == "message" and whole.json["id"].startswith("msg_")
    assert whole.json["content"] == [{"type": "text", "text": "Let me check."},
                                     {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]
    assert whole.json["stop_reason"] == "tool_use" and whole.json["usage"]["input_tokens"] == 30
    assert whole.json["usage"]["output_tokens"] == 9
    final = final_message(events_of(streamed.body))
    assert [whole.json[k] for k in ("content", "stop_reason", "usage")] == [final[k] for k in ("content", "stop_reason", "usage")]


def test_an_event_stream_cut_by_the_output_limit_inside_a_call_is_made_whole_as_a_cut_answer(
        make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """The stream passed the cut arguments on as they came; made whole, the call keeps its whole
    members, as the JSON answer of a cut call does (it was a 502: the joined input was no JSON)."""
    proxy = make_proxy()
    tools = [{"name": "Write", "input_schema": {"type": "object"}}]
    fake_upstream.push(sse_reply(
        chunk({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {
            "name": "Write", "arguments": '{"path": "a.py", "content": "print(1'}}]}),
        chunk(finish="length"), chunk(choices=[], usage={"prompt_tokens": 30, "completion_tokens": 9})))
    resp = ask(proxy, minimal_request(tools=tools))
    assert resp.status == 200, resp
    assert resp.json["content"] == [{"type": "tool_use", "id": "call_1", "name": "Write", "input": {"path": "a.py"}}]
    assert resp.json["stop_reason"] == "max_tokens"


def test_a_json_answer_labelled_as_an_event_stream_is_still_read_as_json(make_proxy: Any,
                                                                        fake_upstream: FakeUpstream) -> None:
    from fakes import Reply

    proxy = make_proxy()
    fake_upstream.push(Reply(200, (("Content-Type", "text/event-stream"),), [json.dumps(completion("Hi!")).encode()]))
    resp = ask(proxy, minimal_request())
    assert resp.status == 200 and resp.json["content"] == [{"type": "text", "text": "Hi!"}], resp


def test_an_event_stream_answer_to_a_json_request_that_fails_is_an_error_not_half_an_answer(
        make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy()
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": "Hal"}),
                                 {"error": {"message": "model overloaded", "type": "server_error"}}, done=False))
    resp = ask(proxy, minimal_request())
    assert resp.status >= 500 and resp.json["type"] == "error", resp
    assert "Hal" not in resp.body.decode("utf-8")


@pytest.mark.parametrize("message, finish, said", [
    ({"role": "assistant", "content": 5}, "stop", "its content is int, not text"),
    ({"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                                             "function": {"name": None, "arguments": "{}"}}]},
     "tool_calls", "finish_reason 'tool_calls' without a tool call that has a name"),
])
def test_a_malformed_answer_is_a_502_not_an_empty_success(make_proxy: Any, fake_upstream: FakeUpstream,
                                                          message: Dict[str, Any], finish: str, said: str) -> None:
    """Read as an empty answer, it was a 200 end_turn the client could not tell from a model that
    chose to say nothing (probe A). An empty answer that says nothing else stays one."""
    proxy = make_proxy()
    fake_upstream.push(json_reply({"id": "x", "choices": [{"index": 0, "message": message, "finish_reason": finish}]}),
                       json_reply({"id": "y", "choices": [{"index": 0, "message": {"role": "assistant", "content": ""},
                                                          "finish_reason": "stop"}]}))
    bad = ask(proxy, minimal_request())
    assert bad.status == 502 and bad.json["error"]["message"] == f"upstream answer is malformed: {said}"
    empty = ask(proxy, minimal_request())
    assert empty.status == 200 and empty.json["content"] == [] and empty.json["stop_reason"] == "end_turn"


def test_a_stream_that_says_tool_calls_with_no_call_is_an_error(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy()
    fake_upstream.push(sse_reply(chunk({"role": "assistant"}),
                                 chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": 5, "arguments": 7}}]}),
                                 chunk(finish="tool_calls")))
    resp = ask(proxy, minimal_request(stream=True))
    assert resp.status == 502 and "without a tool call that has a name" in resp.json["error"]["message"], resp


# --------------------------------------------------------------------------
# OpenRouter's Claude models: cached only where the request marks it.

def _recorded_turn(seq: int) -> Dict[str, Any]:
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "claude_code_session", "requests.jsonl")
    with open(path, encoding="utf-8") as fh:
        return next(row["body"] for row in map(json.loads, fh) if row["seq"] == seq)


def test_a_claude_code_turn_to_openrouters_claude_keeps_its_cache_marks(make_proxy: Any,
                                                                        fake_upstream: FakeUpstream) -> None:
    """The marks went nowhere on Chat Completions, and OpenRouter caches Anthropic's models only at
    marks: each turn of a session paid its whole prompt at the full input price. Claude Code's second
    turn (a tool result) keeps its mark on the system prompt and on the tool message, and what the
    cache read and wrote reaches the client as Anthropic's cache counts."""
    proxy = make_proxy(upstream=fake_upstream.url, provider="openrouter", model="anthropic/claude-sonnet-4.5")
    usage = {"prompt_tokens": 9000, "completion_tokens": 20, "total_tokens": 9020,
             "prompt_tokens_details": {"cached_tokens": 6000, "cache_write_tokens": 2900}}
    fake_upstream.push(json_reply(completion("Done.", usage=usage)))
    body = dict(_recorded_turn(2), stream=False)
    resp = ask(proxy, body)
    assert resp.status == 200, resp
    messages = sent(fake_upstream)[0]["messages"]
    assert messages[0]["role"] == "system" and messages[0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert messages[-1]["role"] == "tool"
    assert messages[-1]["content"] == [{"type": "text", "text": body["messages"][-1]["content"][-1]["content"],
                                        "cache_control": {"type": "ephemeral"}}]
    assert sum(json.dumps(m).count("cache_control") for m in messages) == 2
    got = json.loads(resp.body)["usage"]
    assert (got["input_tokens"], got["cache_read_input_tokens"], got["cache_creation_input_tokens"]) == (100, 6000, 2900)


# --------------------------------------------------------------------------
# Chat templates that take a system message only first (probe AC, D1).

QWEN_TEMPLATE_REFUSALS = {
    # llama.cpp renders the template itself: a 500 in its own error shape (server-common.cpp)
    "llamacpp": (500, {"error": {"code": 500, "message": "Jinja Exception: System message must be at the beginning.",
                                 "type": "server_error"}}),
    "vllm": (400, {"error": {"message": "System message must be at the beginning.", "type": "BadRequestError",
                             "param": None, "code": 400}}),
    "lmstudio": (400, {"error": "Error rendering prompt with jinja template: \"System message must be at the beginning.\""}),
    # Mistral's templates (probe AH 4), in llama.cpp's shape
    "generic": (500, {"error": {"code": 500, "message": "Jinja Exception: Only user and assistant roles are supported, "
                                "with the exception of an initial optional system message!", "type": "server_error"}}),
}


def template_refusing_late_system(status: int, error: Dict[str, Any]) -> Any:
    def answer(rec: Any) -> Any:
        roles = [m["role"] for m in rec.json["messages"]]
        if "system" in roles[1:]:
            return json_reply(error, status=status)
        return json_reply(completion("done"))
    return answer


@pytest.mark.parametrize("provider", sorted(QWEN_TEMPLATE_REFUSALS))
def test_a_template_that_takes_a_system_message_only_first_gets_later_ones_as_user_turns(
        make_proxy: Any, fake_upstream: FakeUpstream, provider: str) -> None:
    """Claude Code's "# Environment" turn is a system message after the first user turn; Qwen3.5's
    and 3.6's official template raises "System message must be at the beginning.", so every Claude
    Code request failed (llama.cpp's 500 was retried by Claude Code for three minutes). The request
    goes again with later system turns as user turns, and the model gets them so from then on."""
    status, error = QWEN_TEMPLATE_REFUSALS[provider]
    fake_upstream.responder = template_refusing_late_system(status, error)
    proxy = make_proxy(model="qwen3.6-27b", provider=provider)
    turn = load_json("requests", "claude_code_2_1_331_followup.anthropic.json")
    for _ in range(2):
        resp = request(proxy.url, "POST", "/v1/messages", {**turn, "stream": False}, {"x-api-key": CLIENT_KEY})
        assert resp.status == 200 and resp.json["content"] == [{"type": "text", "text": "done"}], resp
    sent = [[m["role"] for m in r.json["messages"]] for r in fake_upstream.requests]
    assert len(sent) == 3 and sent[0][2] == "system"  # refused once; the second request went so at once
    assert sent[1] == sent[2] and "system" not in sent[1][1:] and sent[1][:2] == ["system", "user"]
    assert "# Environment" in json.dumps(fake_upstream.requests[1].json["messages"][1]["content"])  # kept, as user text


def test_a_system_message_first_only_is_not_taken_for_such_a_refusal(make_proxy: Any,
                                                                    fake_upstream: FakeUpstream) -> None:
    """Without a later system turn the words are about something else: the refusal stands."""
    status, error = QWEN_TEMPLATE_REFUSALS["vllm"]
    fake_upstream.push(json_reply(error, status=status))
    proxy = make_proxy(model="qwen3.6-27b-other", provider="vllm")
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(system="Be brief."), {"x-api-key": CLIENT_KEY})
    assert resp.status == 400 and len(fake_upstream.requests) == 1, resp


# --------------------------------------------------------------------------
# Local thinking models think unless told not to (probe AC, D2, D6).


@pytest.mark.parametrize("thinking,ollama,template", [
    (None, {"reasoning_effort": "none"}, {"chat_template_kwargs": {"enable_thinking": False}}),
    ({"type": "disabled"}, {"reasoning_effort": "none"}, {"chat_template_kwargs": {"enable_thinking": False}}),
    ({"type": "adaptive"}, {}, {}),  # Claude Code's: the model's own default
    ({"type": "enabled", "budget_tokens": 20000}, {"reasoning_effort": "high"},
     {"chat_template_kwargs": {"enable_thinking": True}}),
])
def test_a_local_thinking_model_is_told_when_the_client_asked_for_no_thinking(
        make_proxy: Any, fake_upstream: FakeUpstream, thinking: Any, ollama: Dict[str, Any],
        template: Dict[str, Any]) -> None:
    """Qwen3 on Ollama, llama.cpp and vLLM thinks unless told not to (Ollama: an unset think is true
    for a thinking model): a request without thinking spent its max_tokens on reasoning the client
    never sees and came back empty with stop_reason max_tokens."""
    extra = {} if thinking is None else {"thinking": thinking}
    for provider, wanted in (("ollama", ollama), ("llamacpp", template), ("vllm", template)):
        proxy = make_proxy(model="qwen3:8b", provider=provider)
        fake_upstream.push(json_reply(completion("hi")))
        resp = request(proxy.url, "POST", "/v1/messages", minimal_request(max_tokens=30000, **extra),
                       {"x-api-key": CLIENT_KEY})
        assert resp.status == 200, resp
        sent = fake_upstream.last.json
        got = {k: sent[k] for k in ("reasoning_effort", "chat_template_kwargs") if k in sent}
        assert got == wanted, (provider, got)


def test_an_ollama_model_that_cannot_think_gets_no_effort_again(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """Ollama refuses a thinking budget for a model without thinking ('"llama3.2" does not support
    thinking', naming no field): every such request failed; it goes again without the effort."""
    proxy = make_proxy(model="llama3.2", provider="ollama")
    fake_upstream.push(json_reply({"error": '"llama3.2" does not support thinking'}, status=400),
                       json_reply(completion("one")), json_reply(completion("two")))
    body = minimal_request(max_tokens=30000, thinking={"type": "enabled", "budget_tokens": 8000})
    for answer in ("one", "two"):
        resp = request(proxy.url, "POST", "/v1/messages", body, {"x-api-key": CLIENT_KEY})
        assert resp.status == 200 and resp.json["content"][-1]["text"] == answer, resp
    assert [r.json.get("reasoning_effort") for r in fake_upstream.requests] == ["medium", None, None]


def test_an_older_ollama_that_refuses_the_off_switch_gets_no_effort_again(make_proxy: Any,
                                                                         fake_upstream: FakeUpstream) -> None:
    """Ollama 0.11.5 to 0.12.3 passed reasoning_effort on as the think value, and refused "none" for all
    but gpt-oss: every request without thinking would fail there (review of this round)."""
    proxy = make_proxy(model="qwen3:8b-older", provider="ollama")
    fake_upstream.push(json_reply({"error": 'think value "none" is not supported for this model'}, status=400),
                       json_reply(completion("one")), json_reply(completion("two")))
    for answer in ("one", "two"):
        resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), {"x-api-key": CLIENT_KEY})
        assert resp.status == 200 and resp.json["content"][-1]["text"] == answer, resp
    assert [r.json.get("reasoning_effort") for r in fake_upstream.requests] == ["none", None, None]


def test_an_ollama_tool_loop_sends_its_reasoning_back(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """Ollama reads an assistant turn's reasoning from ``reasoning`` (openai/openai.go: Thinking:
    msg.Reasoning), which gpt-oss needs across a tool loop; it was dropped (probe AC)."""
    proxy = make_proxy(model="gpt-oss:20b", provider="ollama")
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": '{"command": "ls"}'}}
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"reasoning": "List them."}),
                                 chunk({"tool_calls": [call]}), chunk({}, "tool_calls")),
                       json_reply(completion("two files")))
    first = {"model": "claude-sonnet-4-5", "max_tokens": 4096, "stream": True, "tools": [BASH],
             "thinking": {"type": "adaptive"}, "messages": [{"role": "user", "content": "what is here?"}]}
    thinking, tool_use = final_message(events_of(ask(proxy, first).body))["content"]
    assert thinking["thinking"] == "List them."
    second = dict(first, stream=False, messages=[
        *first["messages"], {"role": "assistant", "content": [thinking, tool_use]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "a b"}]}])
    assert ask(proxy, second).status == 200
    assistant = sent(fake_upstream)[1]["messages"][1]
    assert assistant["reasoning"] == "List them." and "reasoning_content" not in assistant


def test_ollama_gets_only_the_images_it_decodes(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """Ollama decodes JPEG, PNG and WebP data URLs only: a GIF is "invalid image input" and an image
    URL "image URLs are not currently supported"; refused, the image stayed in the history and every
    later turn failed (probe AC, D3). They go as text placeholders; a PNG still goes as an image."""
    proxy = make_proxy(model="qwen2.5vl:7b", provider="ollama")
    blocks = [{"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "R0lGODlh"}},
              {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
              {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
              {"type": "text", "text": "What are these?"}]
    fake_upstream.push(json_reply(completion("pictures")))
    body = minimal_request(messages=[{"role": "user", "content": blocks}])
    assert request(proxy.url, "POST", "/v1/messages", body, {"x-api-key": CLIENT_KEY}).status == 200
    parts = fake_upstream.last.json["messages"][-1]["content"]
    assert parts[:2] == [{"type": "text", "text": "[image omitted: this server takes no image/gif]"},
                         {"type": "text", "text": "[image: https://example.com/a.png]"}]
    assert parts[2] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


@pytest.mark.parametrize("choice,sent", [(None, True), ({"type": "auto"}, True), ({"type": "any"}, True),
                                         ({"type": "auto", "disable_parallel_tool_use": True}, False),
                                         ({"type": "none"}, None)])
def test_llamacpp_is_asked_for_parallel_calls_unless_the_client_forbade_them(
        make_proxy: Any, fake_upstream: FakeUpstream, choice: Any, sent: Any) -> None:
    """llama.cpp's parallel_tool_calls defaults to false, and its tool grammar then allows one call a
    turn: Claude Code's parallel Reads took a turn (a prompt evaluation) each (probe AC, D5)."""
    proxy = make_proxy(model="qwen3-8b", provider="llamacpp")
    tools = [{"name": "Read", "input_schema": {"type": "object", "properties": {}}}]
    extra = {} if choice is None else {"tool_choice": choice}
    fake_upstream.push(json_reply(completion("ok")))
    body = minimal_request(tools=tools, **extra)
    assert request(proxy.url, "POST", "/v1/messages", body, {"x-api-key": CLIENT_KEY}).status == 200
    assert fake_upstream.last.json.get("parallel_tool_calls") is sent
    proxy = make_proxy(model="qwen3-8b", provider="vllm")  # its default is parallel: nothing said
    fake_upstream.push(json_reply(completion("ok")))
    assert request(proxy.url, "POST", "/v1/messages", minimal_request(tools=tools), {"x-api-key": CLIENT_KEY}).status == 200
    assert "parallel_tool_calls" not in fake_upstream.last.json


def test_vllm_continues_a_prefill(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """A last assistant turn is a prefill the answer continues (Anthropic); vLLM opened a new
    assistant turn after it unless told continue_final_message (probe AC, D8)."""
    proxy = make_proxy(model="Qwen/Qwen3-8B", provider="vllm")
    messages = [{"role": "user", "content": "Name a colour as JSON."}, {"role": "assistant", "content": '{"colour": "'}]
    fake_upstream.push(json_reply(completion('blue"}')), json_reply(completion("hi")))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(messages=messages), {"x-api-key": CLIENT_KEY})
    assert resp.status == 200, resp
    sent = fake_upstream.last.json
    assert (sent["continue_final_message"], sent["add_generation_prompt"]) == (True, False)
    assert sent["messages"][-1] == {"role": "assistant", "content": '{"colour": "'}
    assert request(proxy.url, "POST", "/v1/messages", minimal_request(), {"x-api-key": CLIENT_KEY}).status == 200
    assert "continue_final_message" not in fake_upstream.last.json  # no prefill: nothing said


def test_llamacpp_gets_a_forced_tool_as_the_one_tool_required(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """llama.cpp reads tool_choice as a string only: the object naming a function was taken for
    "auto" ("Wrong type supplied for parameter 'tool_choice'"), and a forced tool went unforced: a
    text answer, end_turn (probe AC, D4). The named tool alone is offered, "required"."""
    proxy = make_proxy(model="qwen3-8b", provider="llamacpp")
    tools = [{"name": n, "input_schema": {"type": "object", "properties": {}}} for n in ("Read", "get_weather", "Bash")]
    for choice, names, sent in (({"type": "tool", "name": "get_weather"}, ["get_weather"], "required"),
                                ({"type": "any"}, ["Read", "get_weather", "Bash"], "required"),
                                (None, ["Read", "get_weather", "Bash"], None)):
        fake_upstream.push(json_reply(completion("ok")))
        body = minimal_request(tools=tools, **({"tool_choice": choice} if choice else {}))
        assert request(proxy.url, "POST", "/v1/messages", body, {"x-api-key": CLIENT_KEY}).status == 200
        got = fake_upstream.last.json
        assert [t["function"]["name"] for t in got["tools"]] == names and got.get("tool_choice") == sent, got
    proxy = make_proxy(model="qwen3-8b", provider="vllm")  # the object form, as OpenAI's
    fake_upstream.push(json_reply(completion("ok")))
    body = minimal_request(tools=tools, tool_choice={"type": "tool", "name": "get_weather"})
    assert request(proxy.url, "POST", "/v1/messages", body, {"x-api-key": CLIENT_KEY}).status == 200
    assert fake_upstream.last.json["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert len(fake_upstream.last.json["tools"]) == 3
