"""The Responses API through the real server, against a fake ``/v1/responses`` upstream (issue 10).

The stream and JSON fixtures of ``fixtures/responses_api`` go through the whole
proxy (handler, pipeline, the one relay); a reasoning model's encrypted
reasoning survives three turns of Claude Code's tool rounds; errors before and
after the start map as on Chat Completions; OpenAI-only models switch API by
themselves; web search is offered only where the provider can search.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Dict, List

import pytest

from conftest import CLIENT_KEY, UPSTREAM_KEY, minimal_request, request
from fakes import Reply, StreamClient, json_reply
from sse_checks import assert_valid_event_sequence, events_of, final_message, parse_sse

SHARED_SERVERS = True
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures", "responses_api")
STREAMS = os.path.join(FIXTURES, "streams")
HEADERS = {"x-api-key": CLIENT_KEY}
TOOL = {"name": "Read", "description": "Read a file", "input_schema": {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}


def read(*parts: str) -> bytes:
    with open(os.path.join(FIXTURES, *parts), "rb") as fh:
        return fh.read()


def sse(body: bytes) -> Reply:
    """A stream fixture as the fake sends it: one step per event, as OpenAI flushes them."""
    steps = [part + b"\n\n" for part in body.split(b"\n\n") if part.strip()]
    return Reply(200, (("Content-Type", "text/event-stream"),), steps, chunked=True)


# The golden transcripts are answers to a client that asked for thinking (their reasoning is shown).
THINKING = {"type": "enabled", "budget_tokens": 1024}


def ask(**overrides: Any) -> Dict[str, Any]:
    body: Dict[str, Any] = {"model": "claude-test", "max_tokens": 2048,
                            "messages": [{"role": "user", "content": "Write a haiku."}]}
    body.update(overrides)
    return body


@pytest.fixture
def proxy(make_proxy: Any) -> Any:
    return make_proxy(upstream_api="responses", model="gpt-5")


def without_ids(events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Message ids are minted per server; the rest must match the golden transcript exactly."""
    out = json.loads(json.dumps(events))
    for event in out:
        if event["type"] == "message_start":
            event["message"]["id"] = "msg_x"
    return out


STREAM_CASES = ["text", "parallel_calls", "reasoning_summary", "incomplete_max_tokens", "refusal",
                "web_search_citations", "compat_args_only_at_done", "failed_after_text", "error_event_mid_stream"]


@pytest.mark.parametrize("case", STREAM_CASES)
def test_stream_fixtures_through_the_server(proxy: Any, fake_upstream: Any, case: str) -> None:
    fake_upstream.push(sse(read("streams", f"{case}.upstream.sse")))
    with StreamClient(proxy.url, ask(stream=True, thinking=THINKING), headers=HEADERS) as client:
        events = client.read_all(timeout=10)
    assert_valid_event_sequence(events)
    golden = [payload for _, payload in parse_sse(read("streams", f"{case}.anthropic.sse"))]
    got, want = without_ids(events), without_ids(golden)
    # The golden files carry signatures in their decoded form: compare the rest event by event.
    assert [e["type"] for e in got] == [e["type"] for e in want]
    assert final_message(events)["content"] == _plain(final_message(golden)["content"], events)
    sent = fake_upstream.last
    assert (sent.method, sent.path) == ("POST", "/v1/responses")
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.json["model"] == "gpt-5" and sent.json["store"] is False and sent.json["stream"] is True


def _plain(blocks: List[Dict[str, Any]], events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The golden blocks with each decoded signature replaced by the wire signature the proxy sent."""
    sent = [e["delta"]["signature"] for e in events
            if e["type"] == "content_block_delta" and e["delta"]["type"] == "signature_delta"]
    out = json.loads(json.dumps(blocks))
    for block in out:
        if block["type"] == "thinking" and not isinstance(block["signature"], str):
            block["signature"] = sent.pop(0)
    return out


@pytest.mark.parametrize("case", ["text", "parallel_calls", "reasoning_summary", "refusal", "incomplete_max_tokens"])
def test_json_fixtures_through_the_server(proxy: Any, fake_upstream: Any, case: str) -> None:
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"),), [read("responses", f"{case}.response.json")]))
    resp = request(proxy.url, "POST", "/v1/messages", ask(thinking=THINKING), HEADERS)
    assert resp.status == 200, resp
    golden = json.loads(read("responses", f"{case}.anthropic.json"))
    assert resp.json["stop_reason"] == golden["stop_reason"] and resp.json["usage"] == golden["usage"]
    assert [b["type"] for b in resp.json["content"]] == [b["type"] for b in golden["content"]]
    assert resp.json["model"] == "claude-test"
    assert fake_upstream.last.json["stream"] is False


@pytest.mark.parametrize("stream", [False, True])
def test_one_call_of_parallel_ones_when_the_client_forbids_them(proxy: Any, fake_upstream: Any, stream: bool) -> None:
    """Probe AD D3: ``parallel_tool_calls: false`` is sent, but an upstream that makes two calls
    anyway (the parallel_calls fixture) gives the client the first only, as Anthropic's API would."""
    tools = [TOOL, {"name": "Grep", "input_schema": {"type": "object"}}]
    body = ask(thinking=THINKING, tools=tools, tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    if stream:
        fake_upstream.push(sse(read("streams", "parallel_calls.upstream.sse")))
        with StreamClient(proxy.url, dict(body, stream=True), headers=HEADERS) as client:
            events = client.read_all(timeout=10)
        assert_valid_event_sequence(events, allow_error=False)
        message = final_message(events)
        golden = final_message([payload for _, payload in parse_sse(read("streams", "parallel_calls.anthropic.sse"))])
    else:
        fake_upstream.push(Reply(200, (("Content-Type", "application/json"),),
                                 [read("responses", "parallel_calls.response.json")]))
        message = request(proxy.url, "POST", "/v1/messages", body, HEADERS).json
        golden = json.loads(read("responses", "parallel_calls.anthropic.json"))
    assert fake_upstream.last.json["parallel_tool_calls"] is False
    calls = [b for b in golden["content"] if b["type"] == "tool_use"]
    assert len(calls) == 2  # the fixture's two calls
    assert [b for b in message["content"] if b["type"] == "tool_use"] == calls[:1]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize("stream", [False, True])
def test_no_thinking_block_for_a_client_that_did_not_ask(proxy: Any, fake_upstream: Any, stream: bool) -> None:
    """gpt-oss-style servers send their reasoning unasked (reasoning_text): a client that asked for
    no thinking gets no thinking block, in the JSON answer and the stream (Anthropic returns none
    unasked; a script reading content[0].text found the thinking there)."""
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [],
                 "content": [{"type": "reasoning_text", "text": "User says hi."}]}
    message = {"type": "message", "id": "msg_1", "role": "assistant",
               "content": [{"type": "output_text", "text": "Hello!", "annotations": []}]}
    obj = {"id": "resp_1", "status": "completed", "output": [reasoning, message],
           "usage": {"input_tokens": 5, "output_tokens": 7}}
    if stream:
        events = [{"type": "response.output_item.added", "output_index": 0, "item": {**reasoning, "content": []}},
                  {"type": "response.reasoning_text.delta", "output_index": 0, "item_id": "rs_1", "content_index": 0,
                   "delta": "User says hi."},
                  {"type": "response.output_item.done", "output_index": 0, "item": reasoning},
                  {"type": "response.output_text.delta", "output_index": 1, "item_id": "msg_1", "content_index": 0,
                   "delta": "Hello!"},
                  {"type": "response.output_item.done", "output_index": 1, "item": message},
                  {"type": "response.completed", "response": obj}]
        fake_upstream.push(sse(b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json.dumps(e).encode())
                                        for e in events)))
        with StreamClient(proxy.url, ask(stream=True), headers=HEADERS) as client:
            got = client.read_all(timeout=10)
        assert_valid_event_sequence(got)
        content = final_message(got)["content"]
    else:
        fake_upstream.push(json_reply(obj))
        resp = request(proxy.url, "POST", "/v1/messages", ask(), HEADERS)
        assert resp.status == 200, resp
        content = resp.json["content"]
    assert content == [{"type": "text", "text": "Hello!"}]
    assert "reasoning" not in fake_upstream.last.json and "include" not in fake_upstream.last.json


def test_context_overflow_before_the_start_is_a_400_prompt_too_long(proxy: Any, fake_upstream: Any) -> None:
    fake_upstream.push(sse(read("streams", "failed_context_length.upstream.sse")))
    resp = request(proxy.url, "POST", "/v1/messages", ask(stream=True), HEADERS)
    assert resp.status == 400 and resp.json["error"]["type"] == "invalid_request_error"
    assert resp.json["error"]["message"].startswith("prompt is too long")


def test_http_error_status_maps_as_on_chat(proxy: Any, fake_upstream: Any) -> None:
    body = {"error": {"message": "Rate limit reached. Please try again in 1.2s.", "type": "tokens",
                      "code": "rate_limit_exceeded"}}
    fake_upstream.push(json_reply(body, status=429, headers=(("retry-after", "2"),)))
    resp = request(proxy.url, "POST", "/v1/messages", ask(), HEADERS)
    assert resp.status == 429 and resp.json["error"]["type"] == "rate_limit_error"
    assert resp.headers["retry-after"] == "2"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("body", [{}, {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}],
                         ids=["empty", "chat-completion"])
def test_a_200_that_is_no_response_object_is_a_502_not_an_empty_answer(proxy: Any, fake_upstream: Any,
                                                                     body: Dict[str, Any], stream: bool) -> None:
    """Chat answers such a body 502; here it was an empty end_turn (streamed: an empty answer)."""
    for _ in range(3):  # the retries see the same
        fake_upstream.push(json_reply(body))
    resp = request(proxy.url, "POST", "/v1/messages", ask(stream=stream), HEADERS)
    assert resp.status == 502 and resp.json["error"]["type"] == "api_error", resp
    assert "not a Response object" in resp.json["error"]["message"]


def test_reasoning_is_carried_across_three_turns(proxy: Any, fake_upstream: Any) -> None:
    """Turn 1 thinks and calls a tool; its reasoning item goes back upstream, in place, on turns 2 and 3."""
    fake_upstream.push(sse(read("streams", "parallel_calls.upstream.sse")))
    first = ask(stream=True, tools=[TOOL], thinking={"type": "enabled", "budget_tokens": 8000})
    with StreamClient(proxy.url, first, headers=HEADERS) as client:
        turn1 = final_message(client.read_all(timeout=10))
    thinking = [b for b in turn1["content"] if b["type"] == "thinking"]
    calls = [b for b in turn1["content"] if b["type"] == "tool_use"]
    assert thinking and calls
    history = first["messages"] + [
        {"role": "assistant", "content": turn1["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": c["id"], "content": "file text"}
                                     for c in calls]},
    ]
    fake_upstream.push(json_reply(json.loads(read("responses", "text.response.json"))))
    resp = request(proxy.url, "POST", "/v1/messages", {**first, "stream": False, "messages": history}, HEADERS)
    assert resp.status == 200, resp
    turn2 = fake_upstream.last.json["input"]
    kinds = [item.get("type") for item in turn2]
    reasoning = [item for item in turn2 if item.get("type") == "reasoning"]
    assert len(reasoning) == 1 and reasoning[0]["encrypted_content"]
    # The reasoning item sits right before the first function call it preceded, outputs after the calls.
    assert kinds.index("reasoning") + 1 == kinds.index("function_call")
    assert kinds.index("function_call_output") > max(i for i, k in enumerate(kinds) if k == "function_call")
    assert fake_upstream.last.json["include"] == ["reasoning.encrypted_content"]
    # Turn 3: the same history plus more; the earlier items come back byte for byte.
    history3 = history + [{"role": "assistant", "content": "done"}, {"role": "user", "content": "and now?"}]
    fake_upstream.push(json_reply(json.loads(read("responses", "text.response.json"))))
    assert request(proxy.url, "POST", "/v1/messages", {**first, "stream": False, "messages": history3},
                   HEADERS).status == 200
    turn3 = fake_upstream.last.json["input"]
    assert turn3[:len(turn2)] == turn2


def test_a_thinking_block_from_elsewhere_is_never_sent(proxy: Any, fake_upstream: Any) -> None:
    history = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": [
                   {"type": "thinking", "thinking": "claude's own", "signature": "EqQBCkgIBhABGAIiQGm..."},
                   {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a"}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}]}]
    fake_upstream.push(json_reply(json.loads(read("responses", "text.response.json"))))
    assert request(proxy.url, "POST", "/v1/messages", ask(messages=history, tools=[TOOL]), HEADERS).status == 200
    assert "reasoning" not in [item.get("type") for item in fake_upstream.last.json["input"]]


WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}


def test_web_search_goes_to_a_provider_that_can_search(make_proxy: Any, fake_upstream: Any) -> None:
    server = make_proxy(upstream_api="responses", model="gpt-5", provider="openai")
    fake_upstream.push(sse(read("streams", "web_search_citations.upstream.sse")))
    with StreamClient(server.url, ask(stream=True, tools=[WEB_SEARCH]), headers=HEADERS) as client:
        events = client.read_all(timeout=10)
    message = final_message(events)
    kinds = [b["type"] for b in message["content"]]
    assert "server_tool_use" in kinds and "web_search_tool_result" in kinds
    results = [b for b in message["content"] if b["type"] == "web_search_tool_result"][0]["content"]
    assert results and all(r["url"].startswith("http") for r in results)
    assert any(b.get("citations") for b in message["content"] if b["type"] == "text")
    sent = fake_upstream.last.json
    assert {"type": "web_search"}.items() <= sent["tools"][0].items() and sent["max_tool_calls"] == 3


def test_web_search_is_dropped_where_the_provider_cannot_search(proxy: Any, fake_upstream: Any) -> None:
    fake_upstream.push(json_reply(json.loads(read("responses", "text.response.json"))))
    resp = request(proxy.url, "POST", "/v1/messages", ask(tools=[WEB_SEARCH, TOOL]), HEADERS)
    assert resp.status == 200
    assert [t["type"] for t in fake_upstream.last.json["tools"]] == ["function"]


def _opus_on_responses_and_sonnet_on_chat(server: Any, fake_upstream: Any, opus_model: str) -> None:
    """Opus's model goes to /v1/responses, Sonnet's (the other route) to /v1/chat/completions."""
    fake_upstream.push(json_reply(json.loads(read("responses", "text.response.json"))))
    assert request(server.url, "POST", "/v1/messages", ask(model="claude-opus-4-1"), HEADERS).status == 200
    assert fake_upstream.last.path == "/v1/responses" and fake_upstream.last.json["model"] == opus_model
    fake_upstream.push(json_reply({"id": "c", "choices": [{"index": 0, "message": {"role": "assistant",
                                                                                   "content": "hi"},
                                                           "finish_reason": "stop"}]}))
    assert request(server.url, "POST", "/v1/messages", ask(model="claude-sonnet-4-5"), HEADERS).status == 200
    assert fake_upstream.last.path == "/v1/chat/completions"


@pytest.mark.parametrize("opus_model", ["gpt-5-codex", "gpt-5.4", "gpt-5.5", "gpt-5.7", "gpt-6"])  # by pattern too
def test_responses_only_models_switch_api_on_their_own(make_proxy: Any, fake_upstream: Any, opus_model: str) -> None:
    """gpt-5.4 on take function tools with reasoning only on Responses: on Chat Completions every
    Claude Code turn was refused "Please use /v1/responses instead" (probe AN 6)."""
    server = make_proxy(provider="openai", opus_model=opus_model, model="gpt-4.1")
    _opus_on_responses_and_sonnet_on_chat(server, fake_upstream, opus_model)


def test_responses_only_from_a_models_table_switches_the_api_on_any_host(make_proxy: Any, fake_upstream: Any) -> None:
    """The built-in facts switch only OpenAI's and Azure's hosts (a gateway may serve OpenAI's names on
    Chat: gpt-5-codex stays on Chat here); a provider's own models table saying so is obeyed anywhere
    (it was ignored without a word)."""
    from claudeproxy.config import Provider, Route, RouteTarget
    from claudeproxy.model_facts import ModelFacts
    gateway = Provider("gw", f"http://127.0.0.1:{fake_upstream.port}/v1",
                       models=(("house-reasoner*", ModelFacts(responses_only=True)),))
    server = make_proxy(providers=(gateway,), routes=(Route("opus", RouteTarget("gw", "house-reasoner-1")),
                                                      Route("*", RouteTarget("gw", "gpt-5-codex"))))
    _opus_on_responses_and_sonnet_on_chat(server, fake_upstream, "house-reasoner-1")


def test_a_deployment_whose_name_hides_a_reasoning_model_is_told_by_the_models_table(make_proxy: Any,
                                                                                     fake_upstream: Any) -> None:
    """An Azure deployment of gpt-5 named prod-coder got no effort, no reasoning summaries and no
    encrypted reasoning to carry across tool rounds, and nothing could say it reasons (probe Y, D6)."""
    from claudeproxy.config import Provider, Route, RouteTarget
    from claudeproxy.model_facts import ModelFacts
    azure = Provider("az", f"http://127.0.0.1:{fake_upstream.port}", api="responses", dialect="azure",
                     models=(("prod-coder", ModelFacts(reasoning=True)), ("gpt-5-mini-deploy", ModelFacts(reasoning=False))))
    server = make_proxy(providers=(azure,), routes=(Route("opus", RouteTarget("az", "prod-coder")),
                                                    Route("*", RouteTarget("az", "gpt-5-mini-deploy"))))
    answer = json.loads(read("responses", "text.response.json"))
    fake_upstream.push(json_reply(answer), json_reply(answer))
    turn = ask(model="claude-opus-4-5", thinking={"type": "adaptive"}, output_config={"effort": "high"})
    assert request(server.url, "POST", "/v1/messages", turn, HEADERS).status == 200
    sent = fake_upstream.last.json
    assert sent["reasoning"] == {"effort": "high", "summary": "auto"}, sent
    assert sent["include"] == ["reasoning.encrypted_content"]
    assert request(server.url, "POST", "/v1/messages", {**turn, "model": "claude-sonnet-4-5"}, HEADERS).status == 200
    assert "reasoning" not in fake_upstream.last.json and "include" not in fake_upstream.last.json


def test_an_unverified_organisation_gets_no_summaries_again(make_proxy: Any, fake_upstream: Any) -> None:
    """OpenAI's own words (param reasoning.summary): the call goes again without summaries, and the
    provider's later calls never ask for them (RESPONSES.md 5)."""
    server = make_proxy(upstream_api="responses", model="gpt-5")
    refusal = {"error": {"message": "Your organization must be verified to generate reasoning summaries. Please "
                                    "go to: https://platform.openai.com/settings/organization/general",
                         "type": "invalid_request_error", "param": "reasoning.summary", "code": "unsupported_value"}}
    answer = json.loads(read("responses", "text.response.json"))
    fake_upstream.push(json_reply(refusal, status=400), json_reply(answer), json_reply(answer))
    turn = ask(thinking={"type": "adaptive"})
    assert request(server.url, "POST", "/v1/messages", turn, HEADERS).status == 200
    assert request(server.url, "POST", "/v1/messages", turn, HEADERS).status == 200
    asked = [r.json.get("reasoning", {}).get("summary") for r in fake_upstream.requests[-3:]]
    assert asked == ["auto", None, None]


@pytest.mark.parametrize("model,effort", [("gpt-5", "high"), ("o3", "high"), ("gpt-5.1-codex-max", "xhigh"),
                                          ("gpt-5.2", "xhigh")])
def test_effort_max_is_xhigh_only_where_the_model_takes_it(make_proxy: Any, fake_upstream: Any, model: str,
                                                           effort: str) -> None:
    server = make_proxy(upstream_api="responses", model=model)
    fake_upstream.push(json_reply(json.loads(read("responses", "text.response.json"))))
    assert request(server.url, "POST", "/v1/messages", ask(output_config={"effort": "max"}), HEADERS).status == 200
    assert fake_upstream.last.json["reasoning"]["effort"] == effort


def test_unreadable_reasoning_is_left_out_once(make_proxy: Any, fake_upstream: Any) -> None:
    """400 invalid_encrypted_content (another key or org): the request goes again without reasoning items."""
    server = make_proxy(upstream_api="responses", model="o3")
    fake_upstream.push(sse(read("streams", "reasoning_summary.upstream.sse")))
    first = ask(stream=True, thinking={"type": "enabled", "budget_tokens": 8000})
    with StreamClient(server.url, first, headers=HEADERS) as client:
        turn1 = final_message(client.read_all(timeout=10))
    history = first["messages"] + [{"role": "assistant", "content": turn1["content"]},
                                   {"role": "user", "content": "more"}]
    refusal = {"error": {"message": "The encrypted content for item rs_1 could not be verified.",
                         "type": "invalid_request_error", "code": "invalid_encrypted_content"}}
    fake_upstream.push(json_reply(refusal, status=400), json_reply(json.loads(read("responses", "text.response.json"))))
    resp = request(server.url, "POST", "/v1/messages", {**first, "stream": False, "messages": history}, HEADERS)
    assert resp.status == 200, resp
    tries = fake_upstream.requests[-2:]
    assert "reasoning" in [i.get("type") for i in tries[0].json["input"]]
    assert "reasoning" not in [i.get("type") for i in tries[1].json["input"]]


def _reasoning_ids(recorded: Any) -> List[str]:
    return [i["id"] for i in recorded.json["input"] if i.get("type") == "reasoning"]


def test_unreadable_reasoning_is_never_sent_again_and_reasoning_made_since_still_goes(make_proxy: Any,
                                                                                      fake_upstream: Any) -> None:
    """Claude Code keeps the unreadable items in its history: each later turn sent them again, was
    refused, and went again without any reasoning, the new turn's readable items too (probe Y, D1).
    Now the refused items are left out from the start, and only they; the refusal counts in /metrics.
    (A server of its own: a module's servers are shared, and what one learned stays.)"""
    server = make_proxy(upstream_api="responses", model="o4-mini")
    fake_upstream.push(sse(read("streams", "reasoning_summary.upstream.sse")))
    first = ask(stream=True, thinking={"type": "enabled", "budget_tokens": 8000})
    with StreamClient(server.url, first, headers=HEADERS) as client:
        turn1 = final_message(client.read_all(timeout=10))
    refusal = {"error": {"message": "The encrypted content could not be verified.",
                         "type": "invalid_request_error", "code": "invalid_encrypted_content"}}
    answer = json.loads(read("responses", "text.response.json"))
    made_since = dict(answer, output=[{"type": "reasoning", "id": "rs_made_since", "encrypted_content": "gNEW",
                                       "summary": [{"type": "summary_text", "text": "Fresh."}]}] + answer["output"])
    fake_upstream.push(json_reply(refusal, status=400), json_reply(made_since), json_reply(answer), json_reply(refusal))
    history = first["messages"] + [{"role": "assistant", "content": turn1["content"]},
                                   {"role": "user", "content": "more"}]
    second = {**first, "stream": False, "messages": history}
    resp = request(server.url, "POST", "/v1/messages", second, HEADERS)
    assert resp.status == 200, resp
    turn2 = json.loads(resp.body)
    old = _reasoning_ids(fake_upstream.requests[-2])
    assert old and _reasoning_ids(fake_upstream.requests[-1]) == []
    third = {**second, "messages": history + [{"role": "assistant", "content": turn2["content"]},
                                              {"role": "user", "content": "and more"}]}
    resp = request(server.url, "POST", "/v1/messages", third, HEADERS)
    assert resp.status == 200, resp
    assert _reasoning_ids(fake_upstream.requests[-1]) == ["rs_made_since"]  # in one request: no refusal first
    assert len(fake_upstream.requests) == 4
    metrics = request(server.url, "GET", "/metrics", None, HEADERS).body.decode()
    assert 'claudeproxy_upstream_failed_attempts_total{provider="upstream",model="o4-mini",status="400"} 1' in metrics
    # Refused again with nothing left to leave out: the client's error, not a loop.
    resp = request(server.url, "POST", "/v1/messages", {**first, "stream": False, "messages": [
        {"role": "user", "content": "hi"}]}, HEADERS)
    assert resp.status == 400 and len(fake_upstream.requests) == 5


def test_a_refused_max_output_tokens_is_learned_and_the_call_goes_again(make_proxy: Any, fake_upstream: Any) -> None:
    """OpenAI's 400 for max_output_tokens above the model's cap (Claude Code asks for 128000): the call
    goes again with the cap it names, and later calls start there; the client sees only the answer."""
    server = make_proxy(upstream_api="responses", model="my-deployment")
    refusal = {"error": {"message": "Invalid 'max_output_tokens': integer above maximum value. Expected a value "
                                    "<= 32768, but got 128000 instead.", "type": "invalid_request_error",
                         "param": "max_output_tokens", "code": "integer_above_max_value"}}
    answer = json.loads(read("responses", "text.response.json"))
    fake_upstream.push(json_reply(refusal, status=400), json_reply(answer), json_reply(answer))
    assert request(server.url, "POST", "/v1/messages", ask(max_tokens=128000), HEADERS).status == 200
    assert request(server.url, "POST", "/v1/messages", ask(max_tokens=128000), HEADERS).status == 200
    assert [r.json["max_output_tokens"] for r in fake_upstream.requests[-3:]] == [128000, 32768, 32768]


def test_a_refused_temperature_is_dropped_and_remembered_for_the_model(make_proxy: Any, fake_upstream: Any) -> None:
    """A reasoning model behind a name that does not say so (an Azure deployment) refuses the
    temperature the client sent: the call goes again without it, and the model never gets it again,
    as on Chat Completions. It used to reach the client as a 400 on every turn."""
    server = make_proxy(upstream_api="responses", model="prod-deploy")
    refusal = {"error": {"message": "Unsupported parameter: 'temperature' is not supported with this model.",
                         "type": "invalid_request_error", "param": "temperature", "code": "unsupported_parameter"}}
    answer = json.loads(read("responses", "text.response.json"))
    fake_upstream.push(json_reply(refusal, status=400), json_reply(answer), json_reply(answer))
    turn = ask(temperature=0.7)
    resp = request(server.url, "POST", "/v1/messages", turn, HEADERS)
    assert resp.status == 200, resp
    assert request(server.url, "POST", "/v1/messages", turn, HEADERS).status == 200
    assert [r.json.get("temperature") for r in fake_upstream.requests[-3:]] == [0.7, None, None]


def test_the_end_user_goes_as_safety_identifier_and_a_server_refusing_it_gets_none(make_proxy: Any,
                                                                                  fake_upstream: Any) -> None:
    """metadata.user_id is the Responses API's safety_identifier (Chat's ``user``; 64 characters at
    most, so a longer one as its digest; Claude Code's without its session); a server that does not
    know the field is asked again without it, and its model never gets it again."""
    server = make_proxy(upstream_api="responses", model="local-model")
    refusal = {"error": {"message": "Unknown parameter: 'safety_identifier'.", "type": "invalid_request_error"}}
    answer = json.loads(read("responses", "text.response.json"))
    fake_upstream.push(json_reply(refusal, status=400), json_reply(answer), json_reply(answer))
    long_id = '{"device_id":"' + "d" * 64 + '","session_id":"s"}'
    assert request(server.url, "POST", "/v1/messages", ask(metadata={"user_id": "user-7"}), HEADERS).status == 200
    assert request(server.url, "POST", "/v1/messages", ask(metadata={"user_id": long_id}), HEADERS).status == 200
    assert [r.json.get("safety_identifier") for r in fake_upstream.requests[-3:]] == ["user-7", None, None]
    other = make_proxy(upstream_api="responses", model="gpt-5")
    fake_upstream.push(json_reply(answer))
    assert request(other.url, "POST", "/v1/messages", ask(metadata={"user_id": long_id}), HEADERS).status == 200
    # The user without the session (the same in every session of one user), as its digest: 78 characters.
    user = '{"device_id":"' + "d" * 64 + '"}'
    assert fake_upstream.requests[-1].json["safety_identifier"] == hashlib.sha256(user.encode()).hexdigest()


@pytest.mark.parametrize("choice, sent", [({"type": "auto"}, ["auto", None]), ({"type": "any"}, ["required"])])
def test_a_refused_tool_choice_is_dropped_only_as_auto(make_proxy: Any, fake_upstream: Any, choice: Any,
                                                      sent: Any) -> None:
    """As on Chat Completions: auto means what none means, a forced choice is the client's."""
    server = make_proxy(upstream_api="responses", model="prod-deploy")
    refusal = {"error": {"message": "Unsupported parameter: 'tool_choice'.", "type": "invalid_request_error"}}
    fake_upstream.push(json_reply(refusal, status=400), json_reply(json.loads(read("responses", "text.response.json"))))
    tools = [{"name": "read", "description": "read a file", "input_schema": {"type": "object", "properties": {}}}]
    resp = request(server.url, "POST", "/v1/messages", ask(tools=tools, tool_choice=choice), HEADERS)
    assert resp.status == (200 if len(sent) == 2 else 400), resp
    assert [r.json.get("tool_choice") for r in fake_upstream.requests] == sent


def test_a_two_mb_write_survives_the_done_events_that_repeat_its_arguments(proxy: Any, fake_upstream: Any) -> None:
    """OpenAI repeats a call's whole arguments in ``function_call_arguments.done``,
    ``output_item.done`` and ``response.completed``, one SSE line each. Past the 1 MiB line
    cap, a 2 MB Write failed with an error event after all its deltas had gone out; the cap
    now grows with the body before a line, so the call ends whole and nothing else changes."""
    content = "".join(f"line {i}: \"quoted\" \\ path\n" for i in range(70000))  # ~2 MB, escapes included
    args = json.dumps({"file_path": "/tmp/big.txt", "content": content})
    call = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "Write", "status": "completed"}

    def event(obj: Dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    steps = [event({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "output": []}}),
             event({"type": "response.output_item.added", "output_index": 0, "item": {**call, "arguments": ""}})]
    steps += [event({"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 0,
                     "delta": args[i:i + 1024]}) for i in range(0, len(args), 1024)]
    steps += [event({"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": 0,
                     "arguments": args}),
              event({"type": "response.output_item.done", "output_index": 0, "item": {**call, "arguments": args}}),
              event({"type": "response.completed", "response": {
                  "id": "resp_1", "status": "completed", "output": [{**call, "arguments": args}],
                  "usage": {"input_tokens": 40, "output_tokens": 520000}}})]
    assert len(steps[-1]) > 2 * 1024 * 1024  # each repeat is over the cap
    fake_upstream.push(Reply(200, (("Content-Type", "text/event-stream"),), steps, chunked=True))
    write = {"name": "Write", "description": "Write a file", "input_schema": {"type": "object", "properties": {
        "file_path": {"type": "string"}, "content": {"type": "string"}}, "required": ["file_path", "content"]}}
    with StreamClient(proxy.url, ask(stream=True, tools=[write]), headers=HEADERS) as client:
        events = client.read_all(timeout=30)
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    assert [b["type"] for b in message["content"]] == ["tool_use"]
    assert message["content"][0]["input"] == {"file_path": "/tmp/big.txt", "content": content}
    assert message["stop_reason"] == "tool_use" and message["usage"]["output_tokens"] == 520000


def test_a_json_response_to_a_stream_request_gets_an_id_of_its_own_and_the_estimate(
        proxy: Any, fake_upstream: Any) -> None:
    # As the Chat path: never the upstream's id (msg_ + resp_...), the estimate where no usage came.
    body = json.loads(read("responses", "text.response.json"))
    body.pop("usage", None)
    starts, deltas = [], []
    for _ in range(2):
        fake_upstream.push(json_reply(body))
        resp = request(proxy.url, "POST", "/v1/messages",
                       {"model": "claude-x", "max_tokens": 100, "stream": True,
                        "messages": [{"role": "user", "content": "hi"}]}, HEADERS)
        assert resp.status == 200, resp
        events = events_of(resp.body)
        starts.append(events[0]["message"])
        deltas.append(next(e for e in events if e["type"] == "message_delta")["usage"])
    assert starts[0]["id"] != starts[1]["id"] and body["id"] not in starts[0]["id"]
    assert starts[0]["usage"]["input_tokens"] > 0 and deltas[0]["input_tokens"] == starts[0]["usage"]["input_tokens"]
    assert deltas[0]["output_tokens"] > 0


@pytest.mark.parametrize("upstream_id", ["functions.Read:0", "call id/é+", "c" * 105])
def test_a_call_id_outside_anthropics_id_form_reaches_the_client_in_it_and_goes_back_as_it_came(
        proxy: Any, fake_upstream: Any, upstream_id: str) -> None:
    """Anthropic's tool_use ids match ^[a-zA-Z0-9_-]+$: a session that later goes to Claude (or a strict
    client) refuses others. The upstream gets its own id back with the call's output."""
    call = {"type": "function_call", "id": "fc_1", "call_id": upstream_id, "name": "Read", "status": "completed",
            "arguments": '{"path": "/a"}'}
    fake_upstream.push(json_reply({"id": "resp_1", "object": "response", "status": "completed", "output": [call],
                                   "usage": {"input_tokens": 5, "output_tokens": 3}}))
    first = ask(tools=[TOOL])
    resp = request(proxy.url, "POST", "/v1/messages", first, HEADERS)
    assert resp.status == 200, resp
    [block] = resp.json["content"]
    assert block["type"] == "tool_use" and block["input"] == {"path": "/a"}
    assert all(c.isascii() and (c.isalnum() or c in "_-") for c in block["id"])
    history = first["messages"] + [
        {"role": "assistant", "content": resp.json["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block["id"], "content": "text"}]}]
    fake_upstream.push(json_reply(json.loads(read("responses", "text.response.json"))))
    assert request(proxy.url, "POST", "/v1/messages", {**first, "messages": history}, HEADERS).status == 200
    sent = {item["type"]: item for item in fake_upstream.last.json["input"] if isinstance(item, dict) and "call_id" in item}
    assert sent["function_call"]["call_id"] == sent["function_call_output"]["call_id"]
    if len(upstream_id) <= 64:  # a longer one is clamped to the API's 64 characters, the same for both
        assert sent["function_call"]["call_id"] == upstream_id


@pytest.mark.parametrize("base, provider, path, key_header", [
    # Azure (its dialect, as its key goes in api-key): the resource's v1 surface.
    ("", "azure", "/openai/v1/responses", "api-key"),
    ("/openai/v1", "azure", "/openai/v1/responses", "api-key"),
    # A deployment's URL pasted from the portal: Responses takes the model in the body (verification of probe Z D7).
    ("/openai/deployments/gpt-5/chat/completions?api-version=2025-04-01-preview", "azure", "/openai/v1/responses",
     "api-key"),
    # A gateway whose query happens to name an Azure host is no Azure resource.
    ("/v1?target=r.openai.azure.com", None, "/v1/responses?target=r.openai.azure.com", "authorization"),
])
def test_the_responses_url_follows_the_providers_dialect(make_proxy: Any, fake_upstream: Any, base: str,
                                                          provider: Any, path: str, key_header: str) -> None:
    origin = fake_upstream.url[: -len("/v1")]
    proxy = make_proxy(upstream=origin + base, upstream_api="responses", model="gpt-5", provider=provider)
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"),), [read("responses", "text.response.json")]))
    resp = request(proxy.url, "POST", "/v1/messages", ask(), HEADERS)
    assert resp.status == 200, resp
    sent = fake_upstream.last
    assert sent.path == path and key_header in sent.headers


def test_a_call_cut_though_said_completed_is_max_tokens_through_the_server(proxy: Any, fake_upstream: Any,
                                                                           caplog: Any) -> None:
    """A compatible Responses server at its output limit says completed with half a Write's content:
    the client hears max_tokens with the call's whole members, and the log says why."""
    caplog.set_level(logging.WARNING, logger="claudeproxy")
    call = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "Write",
            "arguments": '{"file_path": "a.py", "content": "print(1'}
    fake_upstream.push(json_reply({"id": "resp_1", "object": "response", "status": "completed", "output": [call],
                                   "usage": {"input_tokens": 10, "output_tokens": 5}}))
    resp = request(proxy.url, "POST", "/v1/messages", ask(), HEADERS)
    assert resp.status == 200, resp
    assert resp.json["stop_reason"] == "max_tokens"
    assert [b["input"] for b in resp.json["content"]] == [{"file_path": "a.py"}]
    assert any("inside the arguments of tool call 'Write'" in r.getMessage() for r in caplog.records)


def test_unreadable_reasoning_is_forgotten_an_hour_after_the_last_refusal() -> None:
    """OpenAI refused blobs it could read during faults of its own (openai/codex#8119): what one such
    refusal left out would have stayed out for good (review AB, F1)."""
    from claudeproxy.apis.responses.api import UNREADABLE_FOR, _Unreadable
    memory = _Unreadable()
    assert memory.learn(["rs_1", "rs_2"], 100.0) == (True, ["rs_1", "rs_2"])
    assert memory.ids(100.0 + UNREADABLE_FOR - 1) == frozenset({"rs_1", "rs_2"})
    assert memory.learn(["rs_2", "rs_3"], 200.0) == (False, ["rs_3"])
    assert memory.ids(200.0 + UNREADABLE_FOR + 1) == frozenset()  # healed: sent again
    assert memory.learn(["rs_1"], 200.0 + UNREADABLE_FOR + 1) == (True, ["rs_1"])  # and learned afresh if refused


def test_a_400_that_only_mentions_encrypted_content_is_not_taken_for_unreadable_reasoning(make_proxy: Any,
                                                                                          fake_upstream: Any) -> None:
    """Any 400 saying "encrypted" took that path, and a refused optional field (here summaries, named in
    words that mention the encrypted include) was never left out (review AB, F6)."""
    server = make_proxy(upstream_api="responses", model="gpt-5.1")
    refusal = {"error": {"message": "Your organization must be verified to generate reasoning summaries (with "
                                    "reasoning.encrypted_content)", "type": "invalid_request_error",
                         "param": "reasoning.summary", "code": "unsupported_value"}}
    answer = json.loads(read("responses", "text.response.json"))
    fake_upstream.push(json_reply(refusal, status=400), json_reply(answer))
    assert request(server.url, "POST", "/v1/messages", ask(thinking={"type": "adaptive"}), HEADERS).status == 200
    asked = [r.json.get("reasoning", {}).get("summary") for r in fake_upstream.requests[-2:]]
    assert asked == ["auto", None], asked


UNREADABLE_FIRST_EVENT = (b'event: error\ndata: {"type": "error", "code": "invalid_encrypted_content", "message": '
                          b'"The encrypted content gAAA...== could not be verified.", "param": null, '
                          b'"sequence_number": 0}\n\n')


def first_event(body: bytes) -> Reply:
    """A stream whose first (and only) event is ``body``: a refusal said after the 200."""
    return Reply(200, (("Content-Type", "text/event-stream"),), [body], chunked=True)


def reasoned_turn_and_the_next(server: Any, fake_upstream: Any) -> Dict[str, Any]:
    """A stream turn answered with reasoning (its encrypted item kept by the client), and the next
    turn's request, which sends that reasoning back."""
    fake_upstream.push(sse(read("streams", "reasoning_summary.upstream.sse")))
    first = ask(stream=True, thinking={"type": "enabled", "budget_tokens": 8000})
    with StreamClient(server.url, first, headers=HEADERS) as client:
        turn1 = final_message(client.read_all(timeout=10))
    return {**first, "messages": first["messages"] + [{"role": "assistant", "content": turn1["content"]},
                                                      {"role": "user", "content": "more"}]}


def test_unreadable_reasoning_refused_as_a_streams_first_event_goes_again_without_it(make_proxy: Any,
                                                                                     fake_upstream: Any) -> None:
    """The refusal may come as the stream's first event rather than an HTTP 400: it reached the client,
    and every later turn of the session failed the same way (probe Y, D7). Nothing had reached the
    client, so the request goes again at once without the items, and so do the next ones."""
    server = make_proxy(upstream_api="responses", model="o4-mini-2025-04-16")
    second = reasoned_turn_and_the_next(server, fake_upstream)
    fake_upstream.push(first_event(UNREADABLE_FIRST_EVENT), sse(read("streams", "reasoning_summary.upstream.sse")),
                       sse(read("streams", "reasoning_summary.upstream.sse")))
    with StreamClient(server.url, second, headers=HEADERS) as client:
        events = client.read_all(timeout=10)
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["stop_reason"] == "end_turn"
    refused, again = fake_upstream.requests[-2:]
    assert _reasoning_ids(refused) and not _reasoning_ids(again)
    assert {k: v for k, v in again.json.items() if k != "input"} == {k: v for k, v in refused.json.items() if k != "input"}
    with StreamClient(server.url, second, headers=HEADERS) as client:
        assert final_message(client.read_all(timeout=10))["stop_reason"] == "end_turn"
    assert not _reasoning_ids(fake_upstream.requests[-1]) and len(fake_upstream.requests) == 4
    metrics = request(server.url, "GET", "/metrics", None, HEADERS).body.decode()
    failed = [line for line in metrics.splitlines() if line.startswith("claudeproxy_upstream_failed_attempts_total{")]
    assert len(failed) == 1 and 'status="400"' in failed[0] and failed[0].endswith(" 1"), failed


def test_a_second_refusal_as_a_streams_first_event_is_the_clients_answer(make_proxy: Any, fake_upstream: Any) -> None:
    """Sent again once: an upstream refusing the changed request too gives the client that refusal,
    as a plain HTTP 400 (nothing had begun), not a loop."""
    server = make_proxy(upstream_api="responses", model="o3-2025-04-16")  # a server of its own: nothing learned yet
    second = reasoned_turn_and_the_next(server, fake_upstream)
    unknown = (b'event: error\ndata: {"type": "error", "code": "invalid_value", "message": "Invalid value: '
               b"'frobnicate'.\", \"param\": \"input\", \"sequence_number\": 0}\n\n")
    fake_upstream.push(first_event(UNREADABLE_FIRST_EVENT), first_event(unknown))
    resp = request(server.url, "POST", "/v1/messages", second, HEADERS)
    assert resp.status == 400 and b"frobnicate" in resp.body, resp
    assert len(fake_upstream.requests) == 3


def _severity_answer(model: str) -> Dict[str, Any]:
    """A Responses answer to Claude Code's auto-mode check."""
    return {"id": "resp_1", "object": "response", "status": "completed", "model": model,
            "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": "<severity>1", "annotations": []}]}],
            "usage": {"input_tokens": 10, "output_tokens": 3, "total_tokens": 13}}


def test_a_least_effort_the_model_refuses_for_thinking_off_is_left_out_from_then_on(make_proxy: Any,
                                                                                   fake_upstream: Any) -> None:
    """Review AO 3: thinking off sends a reasoning model its least effort; one that refuses it (a
    model the table knows wrong) gets the request again without it, and so from then on: it had
    failed every such request."""
    server = make_proxy(provider="openai", model="o3-mini", upstream_api="responses")
    refusal = {"error": {"message": "Unsupported value: 'reasoning.effort' does not support 'low' with this model. "
                                    "Supported values are: 'medium'.", "type": "invalid_request_error",
                         "param": "reasoning.effort", "code": "unsupported_value"}}
    answer = _severity_answer("o3-mini")
    fake_upstream.push(json_reply(refusal, status=400), json_reply(answer), json_reply(answer))
    check = minimal_request(max_tokens=64, thinking={"type": "disabled"})
    for _ in range(2):
        resp = request(server.url, "POST", "/v1/messages", check, timeout=10)
        assert resp.status == 200, resp
    assert [r.json.get("reasoning") for r in fake_upstream.requests] == [{"effort": "low"}, None, None]


def test_a_refused_least_effort_takes_the_least_the_refusal_names_as_on_chat(make_proxy: Any,
                                                                             fake_upstream: Any) -> None:
    """One mechanism for both APIs (base.raised_effort): a deployment named gpt-5 that refuses
    "minimal" and names "low" gets low for thinking off from then on (review AQ 5)."""
    server = make_proxy(provider="openai", model="gpt-5", upstream_api="responses")
    refusal = {"error": {"message": "Unsupported value: 'reasoning.effort' does not support 'minimal' with this "
                                    "model. Supported values are: 'low', 'medium', and 'high'.",
                         "type": "invalid_request_error", "param": "reasoning.effort", "code": "unsupported_value"}}
    answer = _severity_answer("gpt-5")
    fake_upstream.push(json_reply(refusal, status=400), json_reply(answer), json_reply(answer))
    check = minimal_request(max_tokens=64, thinking={"type": "disabled"})
    for _ in range(2):
        assert request(server.url, "POST", "/v1/messages", check, timeout=10).status == 200
    assert [r.json["reasoning"]["effort"] for r in fake_upstream.requests] == ["minimal", "low", "low"]


def test_a_chat_refusal_that_asks_for_the_responses_api_says_how_to_go_there(make_proxy: Any, fake_upstream: Any,
                                                                             caplog: Any) -> None:
    """A model the facts do not know as Responses-only (a gateway's name for gpt-5.4) refused every
    Claude Code turn on Chat, and only an INFO line said so (probe AP N2)."""
    server = make_proxy(provider="openai", model="house-model", retries=0)
    refusal = {"error": {"message": "Function tools with reasoning_effort are not supported for gpt-5.4 in "
                                    "/v1/chat/completions. Please use /v1/responses instead.",
                         "type": "invalid_request_error", "param": "reasoning_effort", "code": None}}
    fake_upstream.push(json_reply(refusal, status=400), json_reply(refusal, status=400))
    with caplog.at_level(logging.WARNING, logger="claudeproxy"):
        for _ in range(2):
            assert request(server.url, "POST", "/v1/messages", minimal_request(), timeout=10).status == 400
    said = [r.getMessage() for r in caplog.records if "only on the Responses API" in r.getMessage()]
    assert len(said) == 1 and "--upstream-api responses" in said[0], said
