"""Case 67: the anthropic SDK's MessageStream over the proxy agrees with the non-streaming answer.

For every OpenAI stream (the fixtures in tests/fixtures/streams that end
normally, plus the inline ones below) the fake upstream serves the stream to a
streaming request and the ChatCompletion built from the same chunks to a
non-streaming one. ``stream.get_final_message()`` must equal
``messages.create()`` in content (text, thinking text, tool_use name, id and
input), stop_reason, stop_sequence and usage (PROTOCOL.md 3, 2). Also: errors
in and before the stream raise the SDK's exceptions (4.3, cases 59-63), and
pings never disturb the SDK (3.1, case 64).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

anthropic = pytest.importorskip("anthropic")

from conformance_helpers import FIXTURES, accumulate_chunks, ends_normally, stream_chunks  # noqa: E402
from conftest import CLIENT_KEY, request  # noqa: E402
from fakes import Fault, Reply, Sleep, chunk, json_reply, sse_reply  # noqa: E402
from sse_checks import assert_valid_event_sequence, events_of  # noqa: E402

pytestmark = pytest.mark.conformance
SHARED_SERVERS = True  # one fake upstream and its proxies serve the whole module (conftest)
MODEL = "claude-opus-5-5"
STREAMS = os.path.join(FIXTURES, "streams")


def make_client(url: str, **kw: Any) -> Any:
    return anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=0, timeout=20.0,
                               http_client=anthropic.DefaultHttpxClient(trust_env=False), **kw)


@pytest.fixture
def client(proxy: Any) -> Iterator[Any]:
    with make_client(proxy.url) as c:
        yield c


def params(**kw: Any) -> Dict[str, Any]:
    # Thinking asked for: the upstream's reasoning comes back as thinking only then (as from Anthropic).
    out: Dict[str, Any] = {"model": MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": "Go"}],
                           "thinking": {"type": "adaptive"}}
    out.update(kw)
    return out


# ----------------------------------------------------------------------
# The streams compared.


def sse(*chunks: Any, done: bool = True) -> bytes:
    """An OpenAI SSE body from chunk dicts (strings go out as they are)."""
    parts = [c if isinstance(c, str) else "data: " + json.dumps(c) + "\n\n" for c in chunks]
    return ("".join(parts) + ("data: [DONE]\n\n" if done else "")).encode("utf-8")


def tool_delta(index: Optional[int], tid: Optional[str], name: Optional[str], args: str) -> Dict[str, Any]:
    entry: Dict[str, Any] = {"type": "function", "function": {"arguments": args}}
    if index is not None:
        entry["index"] = index
    if tid:
        entry["id"] = tid
    if name:
        entry["function"]["name"] = name
    return chunk({"tool_calls": [entry]})


ROLE = chunk({"role": "assistant", "content": ""})
USAGE = {"choices": [], "usage": {"prompt_tokens": 120, "completion_tokens": 30,
                                  "prompt_tokens_details": {"cached_tokens": 100}}}
LONG_ARGS = json.dumps({"file_path": "/tmp/x.py", "content": "print('hello')\n" * 8})

INLINE: Dict[str, Tuple[bytes, Dict[str, Any]]] = {
    "plain_text": (sse(ROLE, chunk({"content": "He"}), chunk({"content": "llo"}), chunk({}, "stop"),
                       {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}), {}),
    # PROTOCOL.md 3.8, verbatim: reasoning, text, two parallel calls, usage alone, no [DONE].
    "worked_example": (sse(
        ROLE, chunk({"reasoning_content": "Need both."}), chunk({"content": "Checking."}),
        tool_delta(0, "call_a", "read", '{"p":'), tool_delta(1, "call_b", "ls", "{}"),
        tool_delta(0, None, None, '"x"}'), chunk({}, "tool_calls"), USAGE, done=False), {}),
    "tool_args_in_20_fragments": (sse(
        ROLE, tool_delta(0, "call_long", "Write", ""),
        *[tool_delta(0, None, None, LONG_ARGS[i:i + len(LONG_ARGS) // 20 + 1])
          for i in range(0, len(LONG_ARGS), len(LONG_ARGS) // 20 + 1)],
        chunk({}, "tool_calls"), USAGE), {}),
    "interleaved_parallel_tools": (sse(
        ROLE, tool_delta(0, "call_1", "Write", '{"file_path": "/a",'), tool_delta(1, "call_2", "Bash", '{"comm'),
        tool_delta(0, None, None, ' "content": "A"}'), tool_delta(1, None, None, 'and": "ls"}'),
        chunk({}, "tool_calls"), USAGE), {}),
    # Ollama / Gemini: no index, each call complete in one chunk, finish_reason "stop".
    "index_less_tools": (sse(
        ROLE, tool_delta(None, "call_x", "read", '{"p": "1"}'), tool_delta(None, "call_y", "read", '{"p": "2"}'),
        chunk({}, "stop"), USAGE), {}),
    "id_and_name_repeated_in_every_fragment": (sse(
        ROLE, tool_delta(0, "call_r", "read", '{"p":'), tool_delta(0, "call_r", "read", ' "z"}'),
        chunk({}, "tool_calls"), USAGE), {}),
    "reasoning_field_then_text": (sse(
        ROLE, chunk({"reasoning": "Let me think"}), chunk({"reasoning": " harder."}), chunk({"content": "42"}),
        chunk({}, "stop", usage={"prompt_tokens": 7, "completion_tokens": 11})), {}),
    "length": (sse(ROLE, chunk({"content": "cut sh"}), chunk({}, "length"), USAGE), {}),
    "content_filter": (sse(ROLE, chunk({"content": "I won"}), chunk({}, "content_filter"), USAGE), {}),
    "vllm_stop_sequence": (sse(
        ROLE, chunk({"content": "one two"}),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}]}, USAGE),
        {"stop_sequences": ["END"]}),
    "clean_eof_without_finish": (sse(ROLE, chunk({"content": "no finish"}), done=False), {}),
    "comments_and_usage_in_finish_chunk": (sse(
        ": OPENROUTER PROCESSING\n\n", ROLE, chunk({"content": "ok"}),
        chunk({}, "stop", usage={"prompt_tokens": 5, "completion_tokens": 1})), {}),
}


def fixture_meta(path: str) -> Dict[str, Any]:
    """``<name>.meta.json`` beside a fixture: the dialect it was written for, how it ends."""
    meta = path[: -len(".openai.sse")] + ".meta.json"
    if not os.path.exists(meta):
        return {}
    with open(meta, encoding="utf-8") as fh:
        return dict(json.load(fh))


def request_options(meta: Dict[str, Any]) -> Dict[str, Any]:
    """The request a fixture assumes: its stop sequences, and the client tool names it aliases."""
    options: Dict[str, Any] = {}
    if meta.get("stop_sequences"):
        options["stop_sequences"] = list(meta["stop_sequences"])
    if meta.get("tool_names"):
        options["tools"] = [{"name": name, "input_schema": {"type": "object", "properties": {}}}
                            for name in meta["tool_names"].values()]
    return options


def stream_cases() -> List[Any]:
    cases = [pytest.param(raw, kw, None, id=name) for name, (raw, kw) in INLINE.items()]
    for path in sorted(glob.glob(os.path.join(STREAMS, "*.openai.sse"))):
        with open(path, "rb") as fh:
            raw = fh.read()
        meta = fixture_meta(path)
        # Error streams (an error event or object, or a fault the meta file names) are covered below.
        if ends_normally(raw) and not str(meta.get("end", "")).startswith("error"):
            name = os.path.basename(path)[: -len(".openai.sse")]
            cases.append(pytest.param(raw, request_options(meta), meta.get("dialect"), id="fixture:" + name))
    return cases


def stream_reply(raw: bytes) -> Reply:
    """The fixture bytes as a chunked SSE answer, one line per write."""
    return Reply(200, (("Content-Type", "text/event-stream"),), raw.splitlines(keepends=True), chunked=True)


def is_carrier(block: Any) -> bool:
    """An empty thinking block that only carries provider state in its signature (PROTOCOL.md 3.7)."""
    return block.type == "thinking" and not block.thinking


def carriers(message: Any) -> List[str]:
    return sorted(b.signature for b in message.content if is_carrier(b))


def blocks(message: Any) -> List[Tuple[Any, ...]]:
    """The content a user sees, in order (state carriers are compared apart, see ``carriers``)."""
    out: List[Tuple[Any, ...]] = []
    for b in message.content:
        if is_carrier(b):
            continue
        if b.type == "text":
            out.append(("text", b.text))
        elif b.type == "thinking":
            out.append(("thinking", b.thinking, bool(b.signature)))
        elif b.type == "tool_use":
            out.append(("tool_use", b.name, b.input))
        else:
            out.append((b.type,))
    return out


_RANK = {"thinking": 0, "text": 1, "tool_use": 2}


def canonical(items: List[Tuple[Any, ...]]) -> List[Tuple[Any, ...]]:
    """Blocks in the non-streaming order: thinking, text, tool_use (PROTOCOL.md 2.2), neighbours of
    one kind joined. A stream may legally differ in order only: text that arrives after a live
    tool block, or reasoning after text, opens a new block (3.4), which the one-shot answer cannot."""
    out: List[Tuple[Any, ...]] = []
    for item in sorted(items, key=lambda b: _RANK.get(b[0], 3)):
        if out and item[0] in ("text", "thinking") and out[-1][0] == item[0]:
            out[-1] = (item[0], out[-1][1] + item[1], *item[2:])
        else:
            out.append(item)
    return out


def usage_of(message: Any) -> Tuple[int, ...]:
    u = message.usage
    return (u.input_tokens, u.output_tokens, u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0)


def upstream_ids(completion: Dict[str, Any]) -> List[str]:
    return [c["id"] for c in completion["choices"][0]["message"].get("tool_calls") or []]


@pytest.mark.parametrize("raw,kwargs,provider", stream_cases())
def test_stream_final_message_equals_non_streaming_answer(make_proxy: Any, fake_upstream: Any, raw: bytes,
                                                         kwargs: Dict[str, Any], provider: Optional[str]) -> None:
    chunks = stream_chunks(raw)
    completion = accumulate_chunks(chunks)
    server = make_proxy(provider=provider)
    fake_upstream.push(stream_reply(raw), json_reply(completion))
    with make_client(server.url) as client:
        with client.messages.stream(**params(**kwargs)) as stream:
            streamed = stream.get_final_message()
            assert stream.request_id and stream.request_id.startswith("req_")
        assert fake_upstream.requests[0].json.get("stream") is True
        created = client.messages.create(**params(**kwargs))
    assert fake_upstream.requests[1].json.get("stream") in (None, False)

    assert canonical(blocks(streamed)) == blocks(created)
    assert carriers(streamed) == carriers(created)
    assert (streamed.stop_reason, streamed.stop_sequence) == (created.stop_reason, created.stop_sequence)
    ids = upstream_ids(completion)
    if ids and all(ids) and len(set(ids)) == len(ids):  # the upstream's ids reach the client unchanged
        assert [b.id for b in streamed.content if b.type == "tool_use"] == ids
        assert [b.id for b in created.content if b.type == "tool_use"] == ids
    if "usage" in completion:
        assert usage_of(streamed) == usage_of(created)
    else:  # no upstream usage: the stream estimates (PROTOCOL.md 3.6), the JSON answer reports zeros
        assert streamed.usage.output_tokens >= 0 and streamed.usage.input_tokens >= 0
    assert streamed.model == created.model == MODEL


def test_tool_arguments_with_an_extra_brace_stream_as_the_object(client: Any, fake_upstream: Any) -> None:
    """Arguments '{"path":"a"}' then '}' (a model's extra brace): the stream sends the object and
    nothing after it, so its partial_json is strict JSON (the TypeScript SDK's MessageStream threw
    on the brace at content_block_stop), and the JSON answer gives the same input."""
    raw = sse(ROLE, tool_delta(0, "call_e", "read", '{"path":"a"}'), tool_delta(0, None, None, "}"),
              chunk({}, "tool_calls"), USAGE)
    fake_upstream.push(stream_reply(raw), json_reply(accumulate_chunks(stream_chunks(raw))))
    with client.messages.stream(**params()) as stream:
        deltas = [e.delta.partial_json for e in stream
                  if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
        streamed = stream.get_final_message()
    assert json.loads("".join(deltas)) == {"path": "a"}
    assert [(b.type, b.id, b.input) for b in streamed.content] == [("tool_use", "call_e", {"path": "a"})]
    created = client.messages.create(**params())
    assert [(b.type, b.id, b.input) for b in created.content] == [("tool_use", "call_e", {"path": "a"})]


@pytest.mark.parametrize("raw,kwargs,provider", stream_cases())
def test_stream_grammar_on_the_wire(make_proxy: Any, fake_upstream: Any, raw: bytes, kwargs: Dict[str, Any],
                                    provider: Optional[str]) -> None:
    """The same streams, read raw: every event named, indexes in order (PROTOCOL.md 3.1)."""
    server = make_proxy(provider=provider)
    fake_upstream.push(stream_reply(raw))
    resp = request(server.url, "POST", "/v1/messages", params(stream=True, **kwargs),
                   {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"})
    assert resp.status == 200, resp
    assert_valid_event_sequence(events_of(resp.body), allow_error=False)


# ----------------------------------------------------------------------
# Errors around the stream.


MID_STREAM_ERRORS = {
    "error_object_code_502": ({"error": {"message": "boom", "code": 502}}, "api_error"),
    # A rate limit after the stream began is said as an overload, which Claude Code asks again after.
    "error_object_code_429": ({"error": {"message": "boom: rate limited", "code": 429}}, "overloaded_error"),
    "openrouter_finish_error": ({"error": {"message": "boom: provider disconnected", "code": "server_error"},
                                 "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]},
                                "api_error"),
}


@pytest.mark.parametrize("error_chunk,kind", list(MID_STREAM_ERRORS.values()), ids=list(MID_STREAM_ERRORS))
def test_mid_stream_error_raises_from_the_sdk_iterator(client: Any, fake_upstream: Any,
                                                       error_chunk: Dict[str, Any], kind: str) -> None:
    """Cases 59/60: text first, then an upstream error -> ``event: error`` -> APIStatusError."""
    fake_upstream.push(sse_reply(ROLE, chunk({"content": "partial"}), error_chunk, done=False))
    seen: List[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(**params()) as stream:
            for event in stream:
                if event.type == "text":
                    seen.append(event.text)
    assert seen == ["partial"]  # the text before the error reached the user
    assert info.value.type == kind
    assert "boom" in str(info.value)
    assert info.value.request_id and info.value.request_id.startswith("req_")


def test_connection_reset_mid_stream_raises(client: Any, fake_upstream: Any) -> None:
    """Case 61."""
    reply = sse_reply(ROLE, chunk({"content": "partial"}), done=False)
    reply.body.append(Fault("rst"))
    fake_upstream.push(reply)
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(**params()) as stream:
            stream.get_final_message()
    assert info.value.type == "api_error"


def test_error_as_first_event_is_an_http_error(client: Any, fake_upstream: Any) -> None:
    """Case 63: nothing was streamed yet, so the SDK sees a plain 429 and its RateLimitError."""
    fake_upstream.push(sse_reply({"error": {"message": "slow down", "code": 429}}, done=False))
    with pytest.raises(anthropic.RateLimitError) as info:
        with client.messages.stream(**params()) as stream:
            stream.get_final_message()
    assert (info.value.status_code, info.value.type) == (429, "rate_limit_error")


def test_upstream_401_to_a_stream_request(client: Any, fake_upstream: Any) -> None:
    """Case 62."""
    fake_upstream.push(json_reply({"error": {"message": "bad key", "type": "invalid_api_key"}}, status=401))
    with pytest.raises(anthropic.AuthenticationError) as info:
        with client.messages.stream(**params()) as stream:
            stream.get_final_message()
    assert (info.value.status_code, info.value.type) == (401, "authentication_error")
    assert info.value.request_id == info.value.response.headers["request-id"]


# ----------------------------------------------------------------------
# Pings.


def slow_stream() -> Reply:
    reply = sse_reply(ROLE, chunk({"content": "a"}), chunk({"content": "b"}), chunk({}, "stop"),
                      {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    reply.body.insert(2, Sleep(0.8))  # silence after the first text: the proxy must ping
    return reply


def test_pings_are_ignored_by_the_sdk(make_proxy: Any, fake_upstream: Any) -> None:
    """Case 64 with a short interval: the wire carries pings, the SDK never shows them."""
    server = make_proxy(ping_interval=0.2)
    fake_upstream.push(slow_stream())
    resp = request(server.url, "POST", "/v1/messages", params(stream=True),
                   {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"})
    events = events_of(resp.body)
    assert any(e["type"] == "ping" for e in events), [e["type"] for e in events]
    assert_valid_event_sequence(events, allow_error=False)

    fake_upstream.push(slow_stream())
    with make_client(server.url) as c, c.messages.stream(**params()) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "ping" not in kinds
    assert blocks(final) == [("text", "ab")] and final.stop_reason == "end_turn"


def test_json_answer_to_a_stream_request(client: Any, fake_upstream: Any) -> None:
    """PROTOCOL.md 3.2: an upstream that ignores ``stream`` and answers JSON still gives the SDK a stream
    whose final message equals the non-streaming translation."""
    calls = [{"id": "call_j", "type": "function", "function": {"name": "read", "arguments": '{"p": "j"}'}}]
    body = {"id": "chatcmpl-j", "object": "chat.completion", "created": 1, "model": "gpt-test",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Reading.", "reasoning_content": "Need j.", "tool_calls": calls}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 9}}
    fake_upstream.push(json_reply(body), json_reply(body))
    with client.messages.stream(**params()) as stream:
        streamed = stream.get_final_message()
    created = client.messages.create(**params())
    assert blocks(streamed) == blocks(created) == [
        ("thinking", "Need j.", True), ("text", "Reading."), ("tool_use", "read", {"p": "j"})]
    assert streamed.stop_reason == created.stop_reason == "tool_use"
    assert usage_of(streamed) == usage_of(created) == (30, 9, 0, 0)


def test_upstream_529_before_the_stream(client: Any, fake_upstream: Any) -> None:
    fake_upstream.push(json_reply({"error": {"message": "overloaded"}}, status=529))
    with pytest.raises(anthropic.OverloadedError) as info:
        with client.messages.stream(**params()) as stream:
            stream.get_final_message()
    assert (info.value.status_code, info.value.type) == (529, "overloaded_error")


def test_reasoning_unasked_gives_the_sdk_text_first(client: Any, fake_upstream: Any) -> None:
    """A model that reasons on its own (gpt-oss, DeepSeek-R1): a script that did not ask for thinking
    reads ``content[0].text`` as it would from Anthropic, streamed or not."""
    body = {"id": "chatcmpl-r", "object": "chat.completion", "created": 1, "model": "gpt-oss",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": "Hi there.", "reasoning_content": "They greet me."}}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 6}}
    fake_upstream.push(json_reply(body), sse_reply(chunk({"role": "assistant", "reasoning_content": "They greet me."}),
                                                   chunk({"content": "Hi there."}), chunk({}, "stop")))
    plain = {k: v for k, v in params().items() if k != "thinking"}
    assert client.messages.create(**plain).content[0].text == "Hi there."
    with client.messages.stream(**plain) as stream:
        assert stream.get_final_message().content[0].text == "Hi there."
