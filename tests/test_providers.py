"""One proxy, several providers: Claude Code's requests routed by family to a Chat Completions
provider and to a native Anthropic one (issue 6: providers, routes, /v1/models, 404 without a route).

Two fake upstreams on loopback stand for OpenAI and for a server that speaks
``/v1/messages`` itself (Ollama >= 0.14, DeepSeek's Anthropic endpoint, ...).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from conftest import CLIENT_KEY, UPSTREAM_KEY, load_json, record_for, request
from fakes import (
    FakeUpstream,
    Reply,
    StreamClient,
    chunk,
    completion,
    json_reply,
    sse_reply,
)
from sse_checks import assert_valid_event_sequence, final_message

import claudeproxy
from claudeproxy.config import Provider, Route, RouteTarget
from claudeproxy.model_facts import ModelFacts

CLAUDE_CODE = load_json("requests", "claude_code_2_1_331_followup.anthropic.json")
NATIVE_ANSWER = {"id": "msg_native", "type": "message", "role": "assistant", "model": "qwen3:8b",
                 "content": [{"type": "text", "text": "from the native server"}], "stop_reason": "end_turn",
                 "stop_sequence": None, "usage": {"input_tokens": 30, "output_tokens": 4}}


def anthropic_sse(events: List[Dict[str, Any]]) -> Reply:
    steps = [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode("utf-8") for e in events]
    return Reply(200, (("Content-Type", "text/event-stream"),), steps, chunked=True)


NATIVE_STREAM = [
    {"type": "message_start", "message": {**NATIVE_ANSWER, "content": [], "stop_reason": None,
                                          "usage": {"input_tokens": 30, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "native"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
     "usage": {"output_tokens": 4}},
    {"type": "message_stop"},
]


@pytest.fixture(scope="module")
def fakes() -> Iterator[Tuple[FakeUpstream, FakeUpstream]]:
    openai, native = FakeUpstream(), FakeUpstream()
    yield openai, native
    openai.close()
    native.close()


@pytest.fixture(scope="module")
def two_providers(fakes: Tuple[FakeUpstream, FakeUpstream]) -> Iterator[Any]:
    openai, native = fakes
    providers = (
        Provider("openai", openai.url, token=claudeproxy.static_token(UPSTREAM_KEY), dialect="openai"),
        Provider("local", f"http://127.0.0.1:{native.port}", api="messages",
                 models=(("qwen3:8b", ModelFacts(context_window=40960, max_output=8192)),)),
    )
    routes = (
        Route("opus", RouteTarget("openai", "gpt-4.1")),
        Route("sonnet", RouteTarget("openai", "gpt-4.1")),
        Route("haiku", RouteTarget("local", "qwen3:8b")),
    )
    server = claudeproxy.start(providers=providers, routes=routes)
    yield server
    server.shutdown(grace=1.0)


@pytest.fixture(autouse=True)
def fresh(fakes: Tuple[FakeUpstream, FakeUpstream]) -> None:
    for fake in fakes:
        fake.reset()


def post(server: Any, body: Any, path: str = "/v1/messages?beta=true") -> Any:
    return request(server.url, "POST", path, body, {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01",
                                                     "anthropic-beta": "claude-code-20250219"})


@pytest.mark.parametrize("model", ["claude-opus-5-5", "claude-sonnet-4-5-20250929", "claude-opus-4-1"])
def test_big_models_go_to_chat_completions(two_providers: Any, fakes: Any, model: str) -> None:
    openai, native = fakes
    openai.push(json_reply(completion("from openai")))
    resp = post(two_providers, {**CLAUDE_CODE, "model": model, "stream": False})
    assert resp.status == 200, resp
    assert resp.json["model"] == model and resp.json["content"] == [{"type": "text", "text": "from openai"}]
    sent = openai.last
    assert sent.path == "/v1/chat/completions" and sent.json["model"] == "gpt-4.1"
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "anthropic-beta" not in sent.headers and CLIENT_KEY not in repr(sent.raw_headers)
    assert native.requests == []


@pytest.mark.parametrize("model", ["claude-haiku-5-5", "claude-3-5-haiku-latest", "haiku"])
def test_small_models_go_to_the_native_server_unchanged(two_providers: Any, fakes: Any, model: str) -> None:
    openai, native = fakes
    answer = {**NATIVE_ANSWER, "id": f"msg_native_{model}"}  # the proxy gives no message id twice
    native.push(json_reply(answer))
    body = {**CLAUDE_CODE, "model": model, "stream": False}
    resp = post(two_providers, body)
    assert resp.status == 200, resp
    assert resp.json == {**answer, "model": model}
    sent = native.last
    assert sent.path == "/v1/messages"  # Claude Code's ?beta=true is for Anthropic itself
    # Unchanged but for the model, max_tokens capped at the model table's limit, and Claude Code's
    # billing line (a per-session value that would empty the server's prompt cache).
    system = [b for b in body["system"] if not b["text"].startswith("x-anthropic-billing-header:")]
    assert len(system) == len(body["system"]) - 1
    assert sent.json == {**body, "model": "qwen3:8b", "max_tokens": 8192, "system": system}
    assert openai.requests == []


def test_the_same_claude_code_stream_to_both_providers(two_providers: Any, fakes: Any) -> None:
    openai, native = fakes
    openai.push(sse_reply(chunk({"role": "assistant", "content": "chat "}), chunk({"content": "stream"}, "stop"),
                          chunk(usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})))
    native.push(anthropic_sse(NATIVE_STREAM))
    answers = []
    for model in ("claude-opus-5-5", "claude-haiku-5-5"):
        with StreamClient(two_providers.url, {**CLAUDE_CODE, "model": model},
                          headers={"x-api-key": CLIENT_KEY}) as client:
            events = client.read_all(timeout=10)
        assert_valid_event_sequence(events, allow_error=False)
        message = final_message(events)
        assert message["model"] == model
        answers.append(message["content"])
    assert answers == [[{"type": "text", "text": "chat stream"}], [{"type": "text", "text": "native"}]]
    assert openai.last.json["stream"] is True and native.last.json["stream"] is True


def test_a_model_no_route_serves_is_404_naming_it(two_providers: Any, fakes: Any) -> None:
    resp = post(two_providers, {**CLAUDE_CODE, "model": "gpt-9-turbo", "stream": False})
    assert resp.status == 404 and resp.json["error"]["type"] == "not_found_error"
    assert "gpt-9-turbo" in resp.json["error"]["message"]
    assert fakes[0].requests == [] and fakes[1].requests == []


def test_models_list_what_the_routes_serve_with_context_windows(two_providers: Any, fakes: Any) -> None:
    resp = request(two_providers.url, "GET", "/v1/models", headers={"x-api-key": CLIENT_KEY})
    assert resp.status == 200, resp
    listed = {m["id"]: m for m in resp.json["data"]}
    # Only names a client can send and get served: no default route, so "gpt-4.1" itself would be a 404.
    assert list(listed) == ["opus", "sonnet", "haiku", "fable", "mythos"]  # the last two take opus's route
    assert listed["fable"]["max_input_tokens"] == listed["opus"]["max_input_tokens"]
    assert listed["haiku"]["max_input_tokens"] == 40960 and listed["haiku"]["max_tokens"] == 8192
    assert listed["haiku"]["display_name"] == "haiku (local/qwen3:8b)"
    assert listed["opus"]["max_input_tokens"] > 1_000_000  # gpt-4.1, from the built-in table
    assert fakes[0].requests == [] and fakes[1].requests == []  # every route names its model: nothing to ask
    one = request(two_providers.url, "GET", "/v1/models/claude-haiku-4-5", headers={"x-api-key": CLIENT_KEY})
    assert one.status == 200 and one.json["max_input_tokens"] == 40960
    missing = request(two_providers.url, "GET", "/v1/models/gpt-9", headers={"x-api-key": CLIENT_KEY})
    assert missing.status == 404


def test_count_tokens_per_provider(two_providers: Any, fakes: Any) -> None:
    """The native server counts exactly; the chat provider's models get the local estimate."""
    openai, native = fakes
    native.push(json_reply({"input_tokens": 1234}))
    body = {"model": "claude-haiku-5-5", "messages": [{"role": "user", "content": "hello"}]}
    assert post(two_providers, body, "/v1/messages/count_tokens").json == {"input_tokens": 1234}
    local = post(two_providers, {**body, "model": "claude-opus-5-5"}, "/v1/messages/count_tokens")
    assert local.status == 200 and local.json["input_tokens"] > 0
    assert len(native.requests) == 1 and openai.requests == []


def test_metrics_name_the_provider_and_route(two_providers: Any, fakes: Any) -> None:
    records: List[Any] = []
    server = claudeproxy.start(config=two_providers.server.config, metrics_sink=records.append)
    try:
        fakes[1].push(json_reply(NATIVE_ANSWER))
        resp = post(server, {**CLAUDE_CODE, "model": "claude-haiku-5-5", "stream": False})
        assert resp.status == 200
        rec = record_for(records, resp.headers["request-id"])
        assert (rec.provider, rec.route, rec.model, rec.upstream_model) == ("local", "haiku", "claude-haiku-5-5",
                                                                            "qwen3:8b")
        assert (rec.input_tokens, rec.output_tokens) == (30, 4)
    finally:
        server.shutdown(grace=1.0)


def test_a_text_only_model_gets_placeholders_for_images(make_proxy: Any, fake_upstream: Any) -> None:
    """FIELD-NOTES 14: a model marked text_only is sent text where the client sent images, one
    string per message; another model of the same provider still gets the image parts."""
    provider = Provider("local", fake_upstream.url, models=(("qwen*", ModelFacts(text_only=True)),))
    routes = (Route("haiku", RouteTarget("local", "llava")), Route("*", RouteTarget("local", "qwen3:8b")))
    proxy = make_proxy(upstream=None, providers=(provider,), routes=routes)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    body = {"model": "claude-sonnet-4-5", "max_tokens": 50,
            "messages": [{"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}]}
    for model in ("claude-sonnet-4-5", "claude-haiku-4-5"):
        fake_upstream.push(json_reply(completion("a cat")))
        resp = request(proxy.url, "POST", "/v1/messages", {**body, "model": model}, {"x-api-key": CLIENT_KEY})
        assert resp.status == 200, resp
    text_only, vision = (r.json["messages"][-1]["content"] for r in fake_upstream.requests)
    assert text_only == "[image omitted: this model takes text only]\n\nWhat is this?"
    assert [p["type"] for p in vision] == ["image_url", "text"]


def test_a_providers_table_may_say_a_model_the_built_in_facts_call_text_only_takes_images(
        make_proxy: Any, fake_upstream: Any) -> None:
    """gpt-oss is text-only in the built-in facts; a host serving a vision build under the name says
    ``"text_only": false`` (review H: it could not be switched off)."""
    provider = Provider("local", fake_upstream.url, models=(("gpt-oss*", ModelFacts(text_only=False)),))
    proxy = make_proxy(upstream=None, providers=(provider,), routes=(Route("*", RouteTarget("local", "gpt-oss:20b")),
                                                                     ))
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    body = {"model": "claude-sonnet-4-5", "max_tokens": 50,
            "messages": [{"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}]}
    fake_upstream.push(json_reply(completion("a cat")))
    assert request(proxy.url, "POST", "/v1/messages", body, {"x-api-key": CLIENT_KEY}).status == 200
    assert [p["type"] for p in fake_upstream.requests[-1].json["messages"][-1]["content"]] == ["image_url", "text"]


def test_a_models_table_tells_chat_which_azure_deployments_reason(make_proxy: Any, fake_upstream: Any) -> None:
    """An Azure deployment of gpt-5 named prod-coder, on Chat Completions, was sent max_tokens,
    temperature and the GA api-version, which Azure refuses for every call: the models table's
    ``reasoning`` says what the name does not (verification of probe Y D6); ``false`` says the
    reverse of a name that looks like a reasoning model's."""
    provider = Provider("az", fake_upstream.url, dialect="azure",
                        models=(("prod-coder", ModelFacts(reasoning=True)), ("o3-lookalike", ModelFacts(reasoning=False))))
    routes = (Route("opus", RouteTarget("az", "prod-coder")), Route("*", RouteTarget("az", "o3-lookalike")))
    proxy = make_proxy(upstream=None, providers=(provider,), routes=routes)
    body = {"max_tokens": 1000, "temperature": 0.5, "system": "Be brief.", "stop_sequences": ["END"],
            "thinking": {"type": "enabled", "budget_tokens": 4000},
            "messages": [{"role": "user", "content": "Hello"}]}
    for model in ("claude-opus-4-5", "claude-sonnet-4-5"):
        fake_upstream.push(json_reply(completion("hi")))
        resp = request(proxy.url, "POST", "/v1/messages", {**body, "model": model}, {"x-api-key": CLIENT_KEY})
        assert resp.status == 200, resp
    reasons, chats = fake_upstream.requests
    assert reasons.path.endswith("?api-version=2025-04-01-preview"), reasons.path
    assert reasons.json["max_completion_tokens"] == 1000 and "max_tokens" not in reasons.json
    assert "temperature" not in reasons.json and "stop" not in reasons.json
    assert reasons.json["messages"][0]["role"] == "developer" and "reasoning_effort" in reasons.json
    assert chats.path.endswith("?api-version=2024-10-21"), chats.path
    assert chats.json["max_tokens"] == 1000 and chats.json["temperature"] == 0.5 and chats.json["stop"] == ["END"]
    assert chats.json["messages"][0]["role"] == "system" and "reasoning_effort" not in chats.json
