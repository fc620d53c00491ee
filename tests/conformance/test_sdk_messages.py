"""The official anthropic Python SDK drives the proxy (non-streaming) against the fake upstream.

What a user of ``anthropic.Anthropic(base_url=proxy)`` notices: responses parse
into the SDK's typed ``Message`` (PROTOCOL.md 2, cases 36-47), count_tokens and
models work (4.5, cases 72-73), errors raise the SDK exception class that
matches the status, with ``.type`` and ``request_id`` set (4.1/4.2, cases
68-71), and the SDK's own retry honours the proxy's ``retry-after`` headers.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterator

import pytest

anthropic = pytest.importorskip("anthropic")

from anthropic.types import (  # noqa: E402
    Message,
    MessageTokensCount,
    ModelInfo,
    TextBlock,
    ThinkingBlock,
    ToolUseBlock,
)
from conformance_helpers import ScriptedUpstream  # noqa: E402
from conftest import UPSTREAM_KEY  # noqa: E402
from fakes import Reply, completion, json_reply  # noqa: E402


pytestmark = pytest.mark.conformance
SHARED_SERVERS = True  # one fake upstream and its proxies serve the whole module (conftest)
MODEL = "claude-opus-5-5"  # not in the SDK's deprecated list (that warning is an error here)
USER = [{"role": "user", "content": "Hello"}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def make_client(url: str, **kw: Any) -> Any:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 20.0)
    # trust_env=False: a proxy variable on the machine must not divert loopback traffic.
    return anthropic.Anthropic(base_url=url, api_key="sk-ant-test",
                               http_client=anthropic.DefaultHttpxClient(trust_env=False), **kw)


@pytest.fixture
def client(proxy: Any) -> Iterator[Any]:
    with make_client(proxy.url) as c:
        yield c


def create(client: Any, **kw: Any) -> Any:
    kw.setdefault("model", MODEL)
    kw.setdefault("max_tokens", 256)
    kw.setdefault("messages", USER)
    return client.messages.create(**kw)


def error_body(message: str, code: Any = None, kind: str = "upstream_error") -> Dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code}}


# ----------------------------------------------------------------------
# Successful answers parse into typed Messages.


def test_text_answer_parses_into_message(client: Any, fake_upstream: Any) -> None:
    fake_upstream.push(json_reply(completion("Hi there", usage={"prompt_tokens": 12, "completion_tokens": 3})))
    msg = create(client)
    assert isinstance(msg, Message)
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.id.startswith("msg_") and msg.model == MODEL
    assert len(msg.content) == 1 and isinstance(msg.content[0], TextBlock)
    assert msg.content[0].text == "Hi there"
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (12, 3)
    assert msg._request_id is not None and msg._request_id.startswith("req_")


def test_thinking_then_text(client: Any, fake_upstream: Any) -> None:
    fake_upstream.push(json_reply(completion("The answer is 4.", reasoning_content="2+2 is 4")))
    msg = create(client, thinking={"type": "enabled", "budget_tokens": 2048}, max_tokens=4096)
    assert [type(b) for b in msg.content] == [ThinkingBlock, TextBlock]
    thinking = msg.content[0]
    assert thinking.thinking == "2+2 is 4"
    assert isinstance(thinking.signature, str) and thinking.signature  # required by the SDK and by round trips
    assert msg.content[1].text == "The answer is 4."


def test_tool_use_answer(client: Any, fake_upstream: Any) -> None:
    calls = [{"id": "call_abc", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    fake_upstream.push(json_reply(completion("Let me check.", finish="tool_calls", tool_calls=calls)))
    msg = create(client, tools=[WEATHER_TOOL])
    assert [type(b) for b in msg.content] == [TextBlock, ToolUseBlock]
    tool = msg.content[1]
    assert (tool.id, tool.name, tool.input) == ("call_abc", "get_weather", {"city": "Paris"})
    assert msg.stop_reason == "tool_use"


def test_tool_name_alias_round_trip(fake_upstream: Any, make_proxy: Any) -> None:
    """Case 29: a name OpenAI would reject is aliased upstream and restored in the SDK's ToolUseBlock."""

    def script(rec: Any) -> Reply:
        sent = rec.json["tools"][0]["function"]["name"]
        calls = [{"id": "call_1", "type": "function", "function": {"name": sent, "arguments": '{"q": "x"}'}}]
        return json_reply(completion(None, finish="tool_calls", tool_calls=calls))

    scripted = ScriptedUpstream(script)
    try:
        server = make_proxy(upstream=scripted.url)
        tool = {"name": "search.web", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
        with make_client(server.url) as c:
            msg = create(c, tools=[tool])
        sent = scripted.chat_bodies()[0]["tools"][0]["function"]["name"]
        assert sent != "search.web"
        assert [(b.type, b.name, b.input) for b in msg.content] == [("tool_use", "search.web", {"q": "x"})]
    finally:
        scripted.close()


def test_refusal(client: Any, fake_upstream: Any) -> None:
    fake_upstream.push(json_reply(completion(None, finish="stop", refusal="I can't help with that.")))
    msg = create(client)
    assert msg.stop_reason == "refusal"
    assert [b.text for b in msg.content if b.type == "text"] == ["I can't help with that."]
    fake_upstream.push(json_reply(completion("partial", finish="content_filter")))
    assert create(client).stop_reason == "refusal"


def test_stop_sequence_reported_by_server(client: Any, fake_upstream: Any) -> None:
    body = completion("one two")
    body["choices"][0]["stop_reason"] = "END"  # vLLM names the matched stop string
    fake_upstream.push(json_reply(body))
    msg = create(client, stop_sequences=["END", "STOP"])
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "END")
    assert fake_upstream.last.json["stop"] == ["END", "STOP"]


def test_stop_sequence_found_at_end_of_text(client: Any, fake_upstream: Any) -> None:
    fake_upstream.push(json_reply(completion("one two STOP")))
    msg = create(client, stop_sequences=["END", "STOP"])
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "STOP")
    assert msg.content[0].text == "one two "


def test_max_tokens(client: Any, fake_upstream: Any) -> None:
    fake_upstream.push(json_reply(completion("cut sh", finish="length")))
    msg = create(client, max_tokens=5)
    assert msg.stop_reason == "max_tokens" and msg.content[0].text == "cut sh"


def test_cached_usage(client: Any, fake_upstream: Any) -> None:
    usage = {"prompt_tokens": 100, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": 80}}
    fake_upstream.push(json_reply(completion("ok", usage=usage)))
    u = create(client).usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens, u.output_tokens) == (20, 80, 0, 20)


def test_max_tokens_zero_needs_no_upstream(client: Any, fake_upstream: Any) -> None:
    msg = create(client, max_tokens=0)
    assert (msg.content, msg.stop_reason) == ([], "max_tokens")
    assert fake_upstream.requests == []


# ----------------------------------------------------------------------
# count_tokens and models.


def test_count_tokens(client: Any, fake_upstream: Any) -> None:
    small = client.messages.count_tokens(model=MODEL, messages=USER)
    big = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "word " * 2000}],
                                       system="You are terse.", tools=[WEATHER_TOOL])
    assert isinstance(small, MessageTokensCount) and isinstance(big, MessageTokensCount)
    assert 0 < small.input_tokens < big.input_tokens
    assert fake_upstream.requests == []


def test_models_list_and_retrieve(client: Any, fake_upstream: Any) -> None:
    listing = {"object": "list", "data": [{"id": "gpt-a", "object": "model", "created": 1700000000},
                                          {"id": "gpt-b", "object": "model"}]}
    for _ in range(3):
        fake_upstream.push(json_reply(listing))
    models = list(client.models.list())
    assert [m.id for m in models] == ["gpt-a", "gpt-b"]
    assert all(isinstance(m, ModelInfo) and m.type == "model" and m.display_name for m in models)
    assert models[0].created_at.year == 2023 and models[0].created_at.utcoffset() is not None
    one = client.models.retrieve("gpt-a")
    assert isinstance(one, ModelInfo) and one.id == "gpt-a"
    with pytest.raises(anthropic.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.status_code == 404 and info.value.type == "not_found_error"


# ----------------------------------------------------------------------
# Errors: SDK class, status, error.type and request_id.

ERROR_CASES = [
    (400, "BadRequestError", "invalid_request_error"),
    (401, "AuthenticationError", "authentication_error"),
    (402, "PaymentRequiredError", "billing_error"),
    (403, "PermissionDeniedError", "permission_error"),
    (404, "NotFoundError", "not_found_error"),
    (422, "UnprocessableEntityError", "invalid_request_error"),
    (429, "RateLimitError", "rate_limit_error"),
    (500, "InternalServerError", "api_error"),
    (502, "InternalServerError", "api_error"),
    (503, "ServiceUnavailableError", "overloaded_error"),
    (504, "GatewayTimeoutError", "timeout_error"),
    (529, "OverloadedError", "overloaded_error"),
]


def check_error(exc: Any, cls_name: str, status: int, kind: str) -> None:
    cls = getattr(anthropic, cls_name)
    assert isinstance(exc, cls), f"{type(exc).__name__} is not {cls_name}"
    assert isinstance(exc, anthropic.APIStatusError)
    assert exc.status_code == status
    assert exc.type == kind, exc.body
    assert exc.request_id and exc.request_id.startswith("req_")
    assert exc.request_id == exc.response.headers["request-id"]
    assert exc.body["type"] == "error" and exc.body["request_id"] == exc.request_id


@pytest.mark.parametrize("status,cls_name,kind", ERROR_CASES, ids=[str(c[0]) for c in ERROR_CASES])
def test_upstream_status_raises_matching_sdk_error(client: Any, fake_upstream: Any, status: int, cls_name: str,
                                                   kind: str) -> None:
    fake_upstream.push(json_reply(error_body(f"upstream says {status}"), status=status))
    with pytest.raises(anthropic.APIStatusError) as info:
        create(client)
    check_error(info.value, cls_name, status, kind)
    assert f"upstream says {status}" in info.value.message
    assert UPSTREAM_KEY not in info.value.message


@pytest.mark.parametrize("status", [400, 413])
def test_upstream_context_overflow_is_a_bad_request_saying_prompt_is_too_long(client: Any, fake_upstream: Any,
                                                                              status: int) -> None:
    """FIELD-NOTES 16: what Claude Code compacts on is a BadRequestError whose message begins so."""
    message = ("This model's maximum context length is 128000 tokens. However, your messages resulted in "
               "130532 tokens. Please reduce the length of the messages.")
    fake_upstream.push(json_reply(error_body(message, code="context_length_exceeded"), status=status))
    with pytest.raises(anthropic.BadRequestError) as info:
        create(client)
    check_error(info.value, "BadRequestError", 400, "invalid_request_error")
    assert info.value.body["error"]["message"].startswith("prompt is too long: 130532 tokens > 128000 maximum")


def test_error_object_in_a_200_body(client: Any, fake_upstream: Any) -> None:
    """Case 47: some gateways answer 200 with an error object; its code decides the class."""
    fake_upstream.push(json_reply(error_body("slow down", code=429)))
    with pytest.raises(anthropic.RateLimitError) as info:
        create(client)
    check_error(info.value, "RateLimitError", 429, "rate_limit_error")


def test_invalid_request_is_rejected_locally(client: Any, fake_upstream: Any) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        create(client, messages=[{"role": "user", "content": [{"type": "text"}]}])
    check_error(info.value, "BadRequestError", 400, "invalid_request_error")
    assert "messages" in info.value.message  # the message names the JSON path
    assert fake_upstream.requests == []


def test_connection_refused_is_502(make_proxy: Any, refused_port: int) -> None:
    server = make_proxy(upstream=f"http://127.0.0.1:{refused_port}/v1")
    with make_client(server.url) as c, pytest.raises(anthropic.InternalServerError) as info:
        create(c)
    check_error(info.value, "InternalServerError", 502, "api_error")


def test_upstream_header_timeout_is_504(make_proxy: Any, fake_upstream: Any) -> None:
    # A non-streaming call waits for its answer until the request timeout (not the idle timeout).
    server = make_proxy(idle_timeout=0.5, request_timeout=1.0)
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"),), [b"{}"], delay=3.0))
    started = time.monotonic()
    with make_client(server.url) as c, pytest.raises(anthropic.GatewayTimeoutError) as info:
        create(c)
    check_error(info.value, "GatewayTimeoutError", 504, "timeout_error")
    assert time.monotonic() - started < 2.5


# ----------------------------------------------------------------------
# The SDK's retry obeys the proxy's retry headers.


def _rate_limited(header: str, value: str) -> Reply:
    return json_reply(error_body("slow down"), status=429, headers=((header, value),))


def _timed_retry(proxy: Any, fake_upstream: Any, header: str, value: str) -> float:
    fake_upstream.push(_rate_limited(header, value), json_reply(completion("after retry")))
    with make_client(proxy.url, max_retries=1) as c:
        started = time.monotonic()
        msg = create(c)
        elapsed = time.monotonic() - started
    assert msg.content[0].text == "after retry"
    assert len(fake_upstream.requests) == 2
    return elapsed


def test_retry_after_ms_is_honoured(proxy: Any, fake_upstream: Any) -> None:
    # Without the header the SDK backs off at least 0.375 s; 50 ms proves the header got through.
    assert _timed_retry(proxy, fake_upstream, "retry-after-ms", "50") < 0.35


def test_retry_after_seconds_is_honoured(proxy: Any, fake_upstream: Any) -> None:
    # The SDK's own first backoff is at most 0.5 s; waiting about 1 s means it read retry-after.
    assert _timed_retry(proxy, fake_upstream, "retry-after", "1") >= 0.9


def test_retry_after_header_reaches_the_sdk(client: Any, fake_upstream: Any) -> None:
    fake_upstream.push(_rate_limited("retry-after", "7"))
    with pytest.raises(anthropic.RateLimitError) as info:
        create(client)
    assert info.value.response.headers.get("retry-after") == "7"


def test_overloaded_503_keeps_retry_after(client: Any, fake_upstream: Any) -> None:
    fake_upstream.push(json_reply(error_body("busy"), status=503, headers=(("retry-after", "3"),)))
    with pytest.raises(anthropic.ServiceUnavailableError) as info:
        create(client)
    check_error(info.value, "ServiceUnavailableError", 503, "overloaded_error")
    assert info.value.response.headers.get("retry-after") == "3"


def test_sdk_headers_are_not_forwarded(client: Any, fake_upstream: Any) -> None:
    """Case 74: the SDK's x-api-key and anthropic-* headers stay at the proxy, and so does Claude Code's
    ``Accept-Encoding: br, zstd``, which a stdlib client could not decode (CLAUDE-CODE.md, Headers)."""
    create(client, extra_headers={"Accept-Encoding": "gzip, deflate, br, zstd", "anthropic-beta": "x-2025-01-01"})
    sent = {k.lower() for k, _ in fake_upstream.last.raw_headers}
    assert "x-api-key" not in sent and not any(k.startswith("anthropic-") for k in sent)
    encoding = fake_upstream.last.headers.get("accept-encoding", "identity")
    assert "br" not in encoding and "zstd" not in encoding
    assert fake_upstream.last.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "sk-ant-test" not in fake_upstream.last.body.decode() + repr(fake_upstream.last.raw_headers)



# ----------------------------------------------------------------------
# The beta surface (Claude Code's path) and errors the proxy makes itself.


def test_beta_messages_with_betas_header(client: Any, fake_upstream: Any) -> None:
    """``client.beta.messages`` calls ``/v1/messages?beta=true`` with ``anthropic-beta``, like Claude Code."""
    fake_upstream.push(json_reply(completion("beta ok")))
    msg = client.beta.messages.create(model=MODEL, max_tokens=256, messages=USER,
                                      betas=["interleaved-thinking-2025-05-14", "context-management-2025-06-27"])
    assert msg.content[0].text == "beta ok" and msg.stop_reason == "end_turn"
    counted = client.beta.messages.count_tokens(model=MODEL, messages=USER, betas=["token-counting-2024-11-01"])
    assert counted.input_tokens > 0
    assert len(fake_upstream.requests) == 1


def test_quota_probe_is_answered_locally(client: Any, fake_upstream: Any) -> None:
    """Case 6: Claude Code's ``max_tokens: 1`` probe parses as a normal Message without an upstream call."""
    msg = create(client, max_tokens=1, messages=[{"role": "user", "content": "quota"}])
    assert isinstance(msg, Message) and msg.stop_reason in ("end_turn", "max_tokens")
    assert fake_upstream.requests == []


def test_proxy_client_key_checked(make_proxy: Any, fake_upstream: Any) -> None:
    server = make_proxy(auth_key="sk-ant-test")
    with make_client(server.url) as good:
        assert create(good).content[0].text == "Hello!"
    with anthropic.Anthropic(base_url=server.url, api_key="sk-ant-wrong", max_retries=0,
                             http_client=anthropic.DefaultHttpxClient(trust_env=False)) as bad:
        with pytest.raises(anthropic.AuthenticationError) as info:
            create(bad)
    check_error(info.value, "AuthenticationError", 401, "authentication_error")
    assert len(fake_upstream.requests) == 1


def test_body_over_the_limit_is_413(make_proxy: Any, fake_upstream: Any) -> None:
    server = make_proxy(max_body_bytes=4096)
    with make_client(server.url) as c, pytest.raises(anthropic.ContentTooLargeError) as info:
        create(c, messages=[{"role": "user", "content": "x" * 10000}])
    check_error(info.value, "ContentTooLargeError", 413, "request_too_large")
    assert fake_upstream.requests == []


def test_tool_runner_keeps_the_whole_conversation(client: Any, fake_upstream: Any) -> None:
    """The SDK's tool runner uses message threads: after the first turn it would send only the tool
    result, trusting the server to keep the rest. The proxy refuses the thread with the code the
    runner recovers from, and every turn that reaches the upstream holds the whole conversation."""
    from anthropic import beta_tool

    @beta_tool
    def get_weather(city: str) -> str:
        """Weather for a city.

        Args:
            city: the city
        """
        return f"sunny in {city}"

    call = {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    fake_upstream.push(json_reply(completion(None, finish="tool_calls", tool_calls=[call])))
    fake_upstream.push(json_reply(completion("It is sunny in Paris.")))
    runner = client.beta.messages.tool_runner(model=MODEL, max_tokens=256, tools=[get_weather],
                                              messages=[{"role": "user", "content": "Weather in Paris?"}])
    final = runner.until_done()
    assert [b.text for b in final.content if b.type == "text"] == ["It is sunny in Paris."]
    first, second = fake_upstream.requests
    assert [m["role"] for m in second.json["messages"]] == ["user", "assistant", "tool"]
    assert second.json["messages"][0]["content"] in ("Weather in Paris?", [{"type": "text", "text": "Weather in Paris?"}])
    assert second.json["messages"][1]["tool_calls"][0]["id"] == "call_w1"
    assert second.json["messages"][2] == {"role": "tool", "tool_call_id": "call_w1", "content": "sunny in Paris"}
