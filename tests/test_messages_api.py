"""The Messages API upstream (``--passthrough``) against a fake Anthropic-style server.

The body is forwarded unchanged except for the model name (the route's upstream
model) and a ``max_tokens`` over the model's cap; headers follow the provider's
rules; answers come back with the client's model name; streams go through the
one relay, so the faults measured in the old passthrough are gone: an error body
echoing the key is redacted, a close after ``message_stop`` is the end (not a
second end event), a short or oversized body is a 502 and not a 200 with broken
JSON, ``--request-timeout`` holds. PROTOCOL.md 4.4, RELIABILITY.md 5 #3, issue 6.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Dict, List

import pytest
from conftest import CLIENT_KEY, UPSTREAM_KEY, minimal_request, quota_probe, record_for, request
from fakes import Fault, Gate, Reply, Sleep, StreamClient, json_reply
from sse_checks import assert_valid_event_sequence, events_of, final_message

import claudeproxy
from claudeproxy.apis.messages import input_estimate
from claudeproxy.config import Provider, Route, RouteTarget

SHARED_SERVERS = True  # one fake upstream and its proxies serve the whole module (conftest)


def anthropic_event(payload: Dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode("utf-8")


MESSAGE_START = {"type": "message_start", "message": {
    "id": "msg_01UP", "type": "message", "role": "assistant", "model": "upstream-model-x", "content": [],
    "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 25, "output_tokens": 1,
                                                          "cache_read_input_tokens": 7}}}
HEAD_EVENTS = [
    MESSAGE_START,
    {"type": "ping"},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
]
TAIL_EVENTS = [
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
     "usage": {"output_tokens": 15}},
    {"type": "message_stop"},
]
ANSWER = {"id": "msg_1", "type": "message", "role": "assistant", "model": "upstream-model-x",
          "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "stop_sequence": None,
          "usage": {"input_tokens": 12, "output_tokens": 3}}


def sse(*steps: Any, chunked: bool = True) -> Reply:
    return Reply(200, (("Content-Type", "text/event-stream"), ("request-id", "req_upstream1")), list(steps),
                 chunked=chunked, close_delimited=not chunked)


def events_bytes(events: List[Dict[str, Any]]) -> bytes:
    return b"".join(anthropic_event(e) for e in events)


_RECORDS: List[Any] = []  # the metrics sink of the module's passthrough proxy


@pytest.fixture
def records() -> List[Any]:
    _RECORDS.clear()
    return _RECORDS


@pytest.fixture
def through(make_proxy, records):
    return make_proxy(passthrough=True, metrics_sink=_RECORDS.append)


def post(server: Any, body: Any, path: str = "/v1/messages", headers: Any = None) -> Any:
    hdrs = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
    hdrs.update(headers or {})
    return request(server.url, "POST", path, body, hdrs)


# ---------------------------------------------------------------------------
# Requests.


def test_body_goes_through_unchanged_but_for_the_model(make_proxy, fake_upstream):
    server = make_proxy(passthrough=True, model="upstream-model-x")
    body = {"model": "claude-opus-4-1", "max_tokens": 5, "unknown_field": {"kept": True},
            "messages": [{"role": "user", "content": [{"type": "text", "text": "h\u00e9", "cache_control": {
                "type": "ephemeral"}}]}], "thinking": {"type": "adaptive"}, "context_management": {"edits": []}}
    fake_upstream.push(json_reply(ANSWER))
    resp = post(server, body, path="/v1/messages?beta=true")
    assert resp.status == 200, resp
    sent = fake_upstream.last
    assert sent.json == {**body, "model": "upstream-model-x"}  # every other field exactly as the client sent it
    assert sent.path == "/v1/messages"  # the base URL ends in /v1: not doubled; the query is Anthropic's only
    assert resp.json["model"] == "claude-opus-4-1"  # the client sees its own model name


def test_a_refusal_that_did_not_count_the_prompt_gets_the_room_beside_its_estimate(make_proxy, fake_upstream):
    """Probe AH 1, on vLLM's /v1/messages: "you requested 12288 output tokens and your prompt contains
    at least 12289 input tokens" was "prompt is too long" for a 12.5k prompt in a 24.5k window: the
    request goes again with what fits beside the estimate of the prompt, parsed for it here."""
    server = make_proxy(passthrough=True, model="Qwen/Qwen3-8B-uncounted")
    message = ("This model's maximum context length is 24576 tokens. However, you requested 12288 output tokens "
               "and your prompt contains at least 12289 input tokens, for a total of at least 24577 tokens.")
    refusal = {"type": "error", "error": {"type": "BadRequestError", "message": message}}
    fake_upstream.push(Reply(400, (("Content-Type", "application/json"),), [json.dumps(refusal).encode()]),
                       json_reply(ANSWER))
    body = {"model": "claude-sonnet-4-5", "max_tokens": 12288, "messages": [{"role": "user", "content": "word " * 8800}]}
    resp = post(server, body)
    assert resp.status == 200, resp
    first, retried = [r.json["max_tokens"] for r in fake_upstream.requests]
    assert first == 12288 and 6144 < retried < 12288, retried
    assert fake_upstream.last.json["messages"] == body["messages"]


@pytest.mark.parametrize("cap,thinking", [
    (8192, {"type": "enabled", "budget_tokens": 8191}),  # lowered with the cap: budget < max_tokens
    (1000, None),                                        # no budget fits below this cap (min 1024)
])
def test_a_thinking_budget_stays_below_the_capped_max_tokens(make_proxy, fake_upstream, cap, thinking):
    from claudeproxy.model_facts import ModelFacts

    provider = Provider("native", fake_upstream.url, api="messages", models=(("small-*", ModelFacts(max_output=cap)),))
    server = make_proxy(providers=(provider,), routes=(Route("*", RouteTarget("native", "small-one")),), upstream=None)
    fake_upstream.push(json_reply(ANSWER))
    body = minimal_request(max_tokens=32000, thinking={"type": "enabled", "budget_tokens": 16000})
    assert post(server, body).status == 200
    assert fake_upstream.last.json["max_tokens"] == cap
    assert fake_upstream.last.json.get("thinking") == thinking


ADAPTIVE_REFUSED = {"type": "error", "error": {"type": "invalid_request_error", "message": (
    "thinking: Input tag 'adaptive' found using 'type' does not match any of the expected tags: "
    "'disabled', 'enabled'")}}  # a gateway validating an older schema (anthropics/claude-code#33506)


def _fresh_model(name: str) -> str:
    """A model of its own for a test: the module's proxy remembers what each model refused."""
    return f"refusing-{name}-{time.monotonic_ns()}"


def _without(value: Any, key: str) -> Any:
    """``value`` with ``key`` taken out of every object in it."""
    if isinstance(value, dict):
        return {k: _without(v, key) for k, v in value.items() if k != key}
    return [_without(v, key) for v in value] if isinstance(value, list) else value


def _extra_forbidden(*loc: str) -> Reply:
    """A pydantic server's 422 for a field its schema does not have."""
    return json_reply({"detail": [{"type": "extra_forbidden", "loc": ["body", *loc],
                                   "msg": "Extra inputs are not permitted", "input": {}}]}, status=422)


@pytest.mark.parametrize("stream", [False, True])
def test_adaptive_thinking_a_server_refuses_goes_as_a_budget_from_then_on(through, fake_upstream, caplog, stream):
    """Claude Code asks for adaptive thinking with an effort; a server that knows only the older
    form refuses every turn with the same 400, and Claude Code stops there. The proxy asks again
    with a budget in the effort's bucket (below max_tokens), and that model gets the older form
    from then on: one refused round trip, said once in the log."""
    caplog.set_level(logging.WARNING, logger="claudeproxy")
    body = minimal_request(model=_fresh_model("adaptive"), max_tokens=32000, stream=stream,
                           thinking={"type": "adaptive", "display": "summarized"}, output_config={"effort": "high"})
    fake_upstream.push(json_reply(ADAPTIVE_REFUSED, status=400), json_reply(ANSWER), json_reply(ANSWER))
    before = fake_upstream.request_count
    first = post(through, body)
    assert first.status == 200
    refused, accepted = fake_upstream.requests[-2:]
    assert refused.json["thinking"] == {"type": "adaptive", "display": "summarized"}
    assert accepted.json["thinking"] == {"type": "enabled", "display": "summarized", "budget_tokens": 16384}
    assert accepted.json["output_config"] == {"effort": "high"}  # only what was refused changes
    assert post(through, body).status == 200
    assert fake_upstream.request_count - before == 3  # the next turn goes in the older form at once
    assert fake_upstream.last.json["thinking"]["type"] == "enabled"
    said = [r.getMessage() for r in caplog.records if "adaptive thinking" in r.getMessage()]
    assert len(said) == 1 and "thinking with a budget" in said[0]


@pytest.mark.parametrize("max_tokens,effort,thinking", [
    (32000, None, {"type": "enabled", "budget_tokens": 8192}),     # no effort: Claude Code's default, medium
    (32000, "low", {"type": "enabled", "budget_tokens": 2048}),
    (32000, "max", {"type": "enabled", "budget_tokens": 32000 - 1}),  # below max_tokens
    (1000, "high", None),                                           # no budget fits (Anthropic's least is 1024)
])
def test_the_budget_for_a_refused_adaptive_thinking(through, fake_upstream, max_tokens, effort, thinking):
    extra = {"output_config": {"effort": effort}} if effort else {}
    fake_upstream.push(json_reply(ADAPTIVE_REFUSED, status=400), json_reply(ANSWER))
    body = minimal_request(model=_fresh_model("budget"), max_tokens=max_tokens, thinking={"type": "adaptive"}, **extra)
    assert post(through, body).status == 200
    assert fake_upstream.last.json.get("thinking") == thinking


def test_newer_fields_a_server_refuses_are_left_out_from_then_on(through, fake_upstream):
    """A strict server refuses one field an answer (a 422 each, which costs nothing): Claude Code's
    context_management, output_config and thinking's display go, one by one, and stay gone."""
    body = minimal_request(model=_fresh_model("fields"),
                           thinking={"type": "enabled", "budget_tokens": 2000, "display": "updates"},
                           context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
                           output_config={"effort": "medium"})
    fake_upstream.push(_extra_forbidden("context_management"), _extra_forbidden("thinking", "display"),
                       _extra_forbidden("output_config"), json_reply(ANSWER), json_reply(ANSWER))
    before = fake_upstream.request_count
    assert post(through, body).status == 200
    assert fake_upstream.request_count - before == 4
    last = fake_upstream.last.json
    assert "context_management" not in last and "output_config" not in last
    assert last["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert last["messages"] == body["messages"] and last["max_tokens"] == body["max_tokens"]
    assert post(through, body).status == 200
    assert fake_upstream.request_count - before == 5 and fake_upstream.last.json == last
    # Claude Code's count_tokens carries the same fields: the server gets them as it took them.
    fake_upstream.push(json_reply({"input_tokens": 21}))
    counted = {k: v for k, v in body.items() if k != "max_tokens"}
    assert post(through, counted, path="/v1/messages/count_tokens").json == {"input_tokens": 21}
    sent = fake_upstream.last
    assert sent.path.endswith("/count_tokens") and "context_management" not in sent.json
    assert "output_config" not in sent.json and sent.json["thinking"] == {"type": "enabled", "budget_tokens": 2000}


@pytest.mark.parametrize("message", [
    "messages.0.content.0.text.cache_control: Extra inputs are not permitted",  # Vertex through a gateway
    "tools.0.cache_control: Extra inputs are not permitted",
])
def test_prompt_cache_marks_a_server_refuses_are_left_out_from_then_on(through, fake_upstream, message):
    """A server without Anthropic's prompt cache (an older model behind a gateway) may refuse the
    cache_control marks Claude Code puts on its system, tools and last message: they all go, in
    every place they sit (a tool result's own blocks too), the client's JSON left as it was."""
    marked = {"type": "ephemeral"}
    body = minimal_request(
        model=_fresh_model("uncached"),
        system=[{"type": "text", "text": "You are terse.", "cache_control": marked}],
        tools=[{"name": "f", "input_schema": {"type": "object"}, "cache_control": {**marked, "ttl": "1h"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hello", "cache_control": marked}]},
                  {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                      {"type": "text", "text": "done", "cache_control": marked}]}]}])
    sent_before = json.dumps(body)
    fake_upstream.push(json_reply({"type": "error", "error": {"type": "invalid_request_error", "message": message}},
                                  status=400), json_reply(ANSWER), json_reply(ANSWER))
    before = fake_upstream.request_count
    assert post(through, body).status == 200
    last = fake_upstream.last.json
    assert "cache_control" not in json.dumps(last)
    assert {**last, "model": body["model"]} == _without(json.loads(sent_before), "cache_control")  # nothing else
    assert post(through, body).status == 200
    assert fake_upstream.request_count - before == 3 and "cache_control" not in json.dumps(fake_upstream.last.json)


# How servers word a refusal of the newer request (pydantic, Go's encoding/json, Rust's serde),
# and what the retry leaves out or changes.
WORDINGS = [
    ("unknown variant `adaptive`, expected `enabled` or `disabled` at line 1 column 412", "thinking",
     {"type": "enabled", "budget_tokens": 8192}),
    ("thinking.type: unknown variant `adaptive`, expected `enabled` or `disabled`", "thinking",
     {"type": "enabled", "budget_tokens": 8192}),
    ('json: unknown field "context_management"', "context_management", None),
    ("context_management: Extra inputs are not permitted", "context_management", None),
    ("Failed to deserialize the JSON body into the target type: unknown field `context_management`, expected "
     "one of `model`, `messages`", "context_management", None),
    ("unknown field `cache_control`, expected `type` or `text` at line 1 column 90", "cache_control", None),
    ("adaptive thinking is not supported on this model", "thinking", {"type": "enabled", "budget_tokens": 8192}),
    ("Invalid value for thinking.type: adaptive", "thinking", {"type": "enabled", "budget_tokens": 8192}),
    ("thinking.type: Input should be 'enabled' or 'disabled'", "thinking", {"type": "enabled", "budget_tokens": 8192}),
    ('json: unknown field "display"', "display", None),
    ("Failed to deserialize the JSON body into the target type: thinking: unknown field `display`, expected `type`",
     "display", None),
]


@pytest.mark.parametrize("message,what,after", WORDINGS, ids=[w[0][:40] for w in WORDINGS])
def test_refusals_as_servers_word_them(through, fake_upstream, message, what, after):
    thinking = {"type": "adaptive", "display": "summarized"} if what == "display" else {"type": "adaptive"}
    body = minimal_request(model=_fresh_model("wording"), max_tokens=32000, thinking=thinking,
                           context_management={"edits": []},
                           system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}])
    fake_upstream.push(json_reply({"type": "error", "error": {"type": "invalid_request_error", "message": message}},
                                  status=400), json_reply(ANSWER))
    assert post(through, body).status == 200
    last = fake_upstream.last.json
    if what == "cache_control":
        assert "cache_control" not in json.dumps(last) and last["system"][0]["text"] == "Be brief."
    elif what == "thinking":
        assert last["thinking"] == after and "context_management" in last
    elif what == "display":
        assert last["thinking"] == {"type": "adaptive"} and "context_management" in last
    else:
        assert what not in last and last["thinking"] == {"type": "adaptive"}


def test_thinking_a_server_does_not_offer_is_not_asked_for_again(through, fake_upstream):
    refusal = {"type": "error", "error": {"type": "invalid_request_error",
                                          "message": "thinking is not supported for this model"}}
    fake_upstream.push(json_reply(refusal, status=400), json_reply(ANSWER), json_reply(ANSWER))
    body = minimal_request(model=_fresh_model("off"), thinking={"type": "enabled", "budget_tokens": 2000})
    before = fake_upstream.request_count
    assert post(through, body).status == 200 and "thinking" not in fake_upstream.last.json
    assert post(through, body).status == 200 and "thinking" not in fake_upstream.last.json
    assert fake_upstream.request_count - before == 3


@pytest.mark.parametrize("message", [
    "messages.1.content.0.thinking.signature: Field required",  # about the history's thinking blocks
    "tools.0.input_schema: Field required",                     # about a field the request needs
])
def test_a_refusal_the_older_form_cannot_meet_reaches_the_client(through, fake_upstream, message):
    """Nothing is left out for an error that is not about the form of the request (asking for
    thinking, or an optional field): the client gets the server's 400 after one round trip."""
    fake_upstream.push(json_reply({"type": "error", "error": {"type": "invalid_request_error", "message": message}},
                                  status=400))
    before = fake_upstream.request_count
    resp = post(through, minimal_request(model=_fresh_model("other"), thinking={"type": "adaptive"},
                                         tools=[{"name": "f", "input_schema": {"type": "object"}}]))
    assert resp.status == 400 and message in resp.json["error"]["message"]
    assert fake_upstream.request_count - before == 1


CLAUDE_CODE_TURNS = [  # 2.1.331: its "# Environment" turn is a system message (with an effort of its own)
    {"role": "user", "content": [{"type": "text", "text": "fix the bug"}]},
    {"role": "system", "content": "# Environment\ncwd: /p", "output_config": {"effort": "medium"}},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x = 1"}]},
    {"role": "system", "content": "<total_tokens>9000 tokens left</total_tokens>"},
]


@pytest.mark.parametrize("status, message", [
    (500, "Jinja Exception: System message must be at the beginning."),  # llama.cpp, Qwen3.5's template
    (400, "Only user and assistant roles are supported, with the exception of an initial optional system message!"),
    (400, "Conversation roles must alternate user/assistant/user/assistant/..."),  # Gemma's
], ids=["qwen-500", "mistral", "gemma"])
def test_a_template_that_takes_no_late_system_turn_gets_them_as_user_turns(through, fake_upstream, status, message):
    """Probe AH 4: Claude Code's system turns inside `messages`, forwarded to llama.cpp's own
    /v1/messages, met a template that takes a system message only first: every request failed. The
    request goes again with each one a user turn, its text at the end of the user turn beside it (after a
    tool result, which must come first), and so for that model from then on."""
    model = _fresh_model("late-system")
    fake_upstream.push(_refusal(message, status), json_reply(ANSWER), json_reply(ANSWER))
    body = minimal_request(model=model, messages=CLAUDE_CODE_TURNS)
    assert post(through, body).status == 200
    assert post(through, body).status == 200
    first, again, later = [r.json["messages"] for r in fake_upstream.requests[-3:]]
    assert first == CLAUDE_CODE_TURNS
    assert again == later == [
        {"role": "user", "content": [{"type": "text", "text": "fix the bug"},
                                     {"type": "text", "text": "# Environment\ncwd: /p"}]},
        CLAUDE_CODE_TURNS[2],
        {"role": "user", "content": [CLAUDE_CODE_TURNS[3]["content"][0],
                                     {"type": "text", "text": "<total_tokens>9000 tokens left</total_tokens>"}]},
    ]
    assert body["messages"] == CLAUDE_CODE_TURNS  # the client's objects untouched


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
WITH_IMAGES = [
    {"role": "user", "content": [IMAGE, {"type": "text", "text": "what is this?"}]},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_9", "name": "Read", "input": {}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9",
                                  "content": [{**IMAGE, "cache_control": {"type": "ephemeral"}}]}]},
]
AS_TEXT = [
    {"role": "user", "content": [{"type": "text", "text": "[image omitted: this model takes text only]"},
                                 {"type": "text", "text": "what is this?"}]},
    WITH_IMAGES[1],
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": [
        {"type": "text", "text": "[image omitted: this model takes text only]", "cache_control": {"type": "ephemeral"}}]}]},
]


def test_a_text_only_model_gets_placeholders_for_images_in_passthrough_too(make_proxy, fake_upstream):
    """Probe AH 2: the models table's text_only (and the built-in facts', gpt-oss's) was ignored on a
    Messages provider: llama-server without its projector answered the screenshot with a 500, and
    every later turn too (the image stays in the history)."""
    server = make_proxy(passthrough=True, model="gpt-oss:20b")
    fake_upstream.push(json_reply(ANSWER))
    assert post(server, minimal_request(messages=WITH_IMAGES)).status == 200
    assert fake_upstream.last.json["messages"] == AS_TEXT


def test_an_image_refusal_in_passthrough_is_learned_and_the_request_goes_again(make_proxy, fake_upstream):
    server = make_proxy(passthrough=True, model="qwen3-8b-no-mmproj")
    refusal = {"error": {"code": 500, "message": "image input is not supported - hint: if this is unexpected, you may "
                                                 "need to provide the mmproj", "type": "server_error"}}
    fake_upstream.push(json_reply(refusal, status=500), json_reply(ANSWER), json_reply(ANSWER))
    before = fake_upstream.request_count
    assert post(server, minimal_request(messages=WITH_IMAGES)).status == 200
    assert post(server, minimal_request(messages=WITH_IMAGES)).status == 200
    assert fake_upstream.request_count - before == 3  # refused once; the next went so at once
    assert [r.json["messages"] for r in fake_upstream.requests[-2:]] == [AS_TEXT, AS_TEXT]


PDF = {"type": "document", "title": "spec.pdf", "cache_control": {"type": "ephemeral"},
       "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}}
WITH_DOCUMENTS = [
    {"role": "user", "content": [{"type": "text", "text": "summarise"}, PDF]},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_7", "name": "Read", "input": {}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_7", "content": [
        {"type": "document", "title": "notes.txt", "source": {"type": "text", "media_type": "text/plain",
                                                              "data": "line one"}}]}]},
]
DOCUMENTS_AS_TEXT = [  # by hand: the Chat translation's words for a PDF; a text document's title and text
    {"role": "user", "content": [{"type": "text", "text": "summarise"},
                                 {"type": "text", "text": "[PDF document omitted: spec.pdf]",
                                  "cache_control": {"type": "ephemeral"}}]},
    WITH_DOCUMENTS[1],
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_7", "content": [
        {"type": "text", "text": "notes.txt\nline one"}]}]},
]
CLAUDE_CODE_TOOLS = [{"name": "Read", "input_schema": {"type": "object"}},
                     {"type": "web_search_20250305", "name": "web_search", "max_uses": 8}]


def _vllm_400(*errors: str) -> Any:
    """vLLM's answer to a body its pydantic schema refuses: an OpenAI-shaped 400 listing each error."""
    return json_reply({"error": {"message": str(list(errors)), "type": "Bad Request", "param": None, "code": 400}},
                      status=400)


def test_a_server_that_refuses_documents_and_server_tools_gets_the_request_without_them(through, fake_upstream):
    """Probe AH 5: vLLM's own /v1/messages refuses document blocks and tools without input_schema.
    Claude Code's WebSearch failed every time, and a PDF in the history failed every later turn
    until /clear. The server tools are left out and each document becomes its text (a PDF a
    placeholder), and so for that model from then on."""
    model = _fresh_model("vllm-schema")
    tag = ("messages.0.content.list[AnthropicContentBlock].1.type: Input should be 'text', 'image', 'tool_use', "
           "'tool_result', 'tool_reference', 'thinking' or 'redacted_thinking'")
    nested = tag.replace("messages.0.content.list[AnthropicContentBlock].1",
                         "messages.2.content.list[AnthropicContentBlock].0.content.list[AnthropicContentBlock].0")
    fake_upstream.push(_vllm_400(tag, nested, "tools.1.input_schema: Field required"), _vllm_400(tag, nested),
                       json_reply(ANSWER), json_reply(ANSWER))
    body = minimal_request(model=model, messages=WITH_DOCUMENTS, tools=CLAUDE_CODE_TOOLS,
                           tool_choice={"type": "tool", "name": "web_search"})
    before = fake_upstream.request_count
    assert post(through, body).status == 200
    assert post(through, body).status == 200
    assert fake_upstream.request_count - before == 4  # refused twice (one step each); the next went so at once
    for sent in [r.json for r in fake_upstream.requests[-2:]]:
        assert sent["messages"] == DOCUMENTS_AS_TEXT
        assert sent["tools"] == CLAUDE_CODE_TOOLS[:1] and "tool_choice" not in sent  # it named the one left out
    assert body["messages"] == WITH_DOCUMENTS and body["tools"] == CLAUDE_CODE_TOOLS  # the client's objects untouched


def test_a_dropped_server_tools_cache_mark_goes_to_the_last_tool_left() -> None:
    """The mark on the last tool ends the tools' cached prefix (review AO 15)."""
    from claudeproxy.apis.older_form import older_form

    body = {"tools": [CLAUDE_CODE_TOOLS[0], {**CLAUDE_CODE_TOOLS[1], "cache_control": {"type": "ephemeral"}}]}
    older_form(body, frozenset({"no_server_tools"}))
    assert body["tools"] == [{**CLAUDE_CODE_TOOLS[0], "cache_control": {"type": "ephemeral"}}]
    assert "cache_control" not in CLAUDE_CODE_TOOLS[0]  # the client's objects untouched
    for tools in ([], ["not a tool"], [{"type": "web_search_20250305", "name": "web_search"}]):
        empty = {"tools": list(tools), "tool_choice": {"type": "auto"}}
        older_form(empty, frozenset({"no_server_tools"}))  # no IndexError once the step is learned (review AQ 1)
        assert empty.get("tools") == ([t for t in tools if not isinstance(t, dict)] or None)


@pytest.mark.parametrize("block, text", [
    ({"type": "document", "source": {"type": "url", "url": "https://x.example/a.pdf"}}, "[document: https://x.example/a.pdf]"),
    ({"type": "document", "source": {"type": "file", "file_id": "file_011"}}, "[document file file_011 omitted]"),
    ({"type": "document", "title": "t", "context": "c", "source": {"type": "content", "content": [
        {"type": "text", "text": "a"}, {"type": "image", "source": {}}, {"type": "text", "text": "b"}]}}, "t\nc\na\nb"),
    ({"type": "document", "source": {"type": "text", "data": ""}}, "[empty document]"),  # an empty text block is refused
])
def test_a_document_becomes_the_text_a_model_without_documents_reads(block: Dict[str, Any], text: str) -> None:
    from claudeproxy.apis.older_form import document_as_text

    assert document_as_text(block) == text


@pytest.mark.parametrize("message", [
    "tools.0.input_schema: Field required",  # a tool of the client's own, with a schema: about something else
    "messages.0.content.list[AnthropicContentBlock].0.type: Input should be 'text'",  # a text block: not a document
])
def test_a_refusal_naming_no_document_or_server_tool_changes_nothing(through, fake_upstream, message):
    fake_upstream.push(_vllm_400(message))
    before = fake_upstream.request_count
    resp = post(through, minimal_request(model=_fresh_model("not-form"), messages=WITH_DOCUMENTS,
                                         tools=CLAUDE_CODE_TOOLS))
    assert resp.status == 400 and fake_upstream.request_count - before == 1, resp


def test_a_500_is_learned_from_only_for_a_late_system_turn_or_an_image(through, fake_upstream):
    """The 500s a template or a server without a projector answers with are read; any other 500 is a
    server's failure, whose words teach nothing (a field named there stays in later requests)."""
    model = _fresh_model("plain-500")
    for message in ("context_management: Extra inputs are not permitted",
                    "image input is not supported; context_management: Extra inputs are not permitted"):  # no image
        fake_upstream.push(_refusal(message, 500))
        before = fake_upstream.request_count
        resp = post(through, minimal_request(model=model, context_management={"edits": []}))
        assert resp.status == 500 and fake_upstream.request_count - before == 1, resp
    fake_upstream.push(json_reply(ANSWER))
    assert post(through, minimal_request(model=model, context_management={"edits": []})).status == 200
    assert "context_management" in fake_upstream.last.json


def test_a_system_turn_after_an_assistant_turn_joins_the_user_turn_after_it() -> None:
    from claudeproxy.apis.older_form import system_as_user

    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
             {"role": "system", "content": [{"type": "text", "text": "s"}]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "r"}]}]
    assert system_as_user(turns) == [
        turns[0], turns[1],
        {"role": "user", "content": [turns[3]["content"][0], {"type": "text", "text": "s"}]}]
    assert system_as_user([{"role": "system", "content": "only"}]) == [
        {"role": "user", "content": [{"type": "text", "text": "only"}]}]
    # A leading system turn keeps its place: before the user's text (review AJ R7).
    assert system_as_user([{"role": "system", "content": "env"}, {"role": "user", "content": "hi"}]) == [
        {"role": "user", "content": [{"type": "text", "text": "env"}, {"type": "text", "text": "hi"}]}]


def _refusal(message: str, status: int = 400) -> Reply:
    return json_reply({"type": "error", "error": {"type": "invalid_request_error", "message": message}}, status=status)


def test_a_cache_marks_ttl_a_server_refuses_goes_and_the_marks_stay(through, fake_upstream):
    """Bedrock's "...cache_control.ephemeral.ttl: Extra inputs are not permitted": the 1-hour ttl goes,
    the 5-minute marks stay (without them every later turn is a full-price cache miss)."""
    body = minimal_request(model=_fresh_model("ttl"), system=[
        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}}])
    fake_upstream.push(_refusal("system.0.cache_control.ephemeral.ttl: Extra inputs are not permitted"),
                       json_reply(ANSWER))
    assert post(through, body).status == 200
    assert [b["cache_control"] for b in fake_upstream.last.json["system"]] == [{"type": "ephemeral"}] * 2


@pytest.mark.parametrize("message", ["messages.2.content.0.cache_control.ttl: Extra inputs are not permitted",
                                     "cache_control.ttl '1h' is not supported for this model"])
def test_a_ttl_refused_where_none_was_sent_changes_nothing(through, fake_upstream, message):
    body = minimal_request(model=_fresh_model("no-ttl"), system=[
        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}])
    fake_upstream.push(_refusal(message))
    before = fake_upstream.request_count
    assert post(through, body).status == 400 and fake_upstream.request_count - before == 1


def test_a_refused_top_level_cache_control_goes_alone(through, fake_upstream):
    """Automatic caching's top-level cache_control refused as a field: the block marks stay."""
    mark = {"type": "ephemeral"}
    body = minimal_request(model=_fresh_model("top"), cache_control=mark,
                           system=[{"type": "text", "text": "a", "cache_control": mark}])
    fake_upstream.push(_refusal("cache_control: Extra inputs are not permitted"), json_reply(ANSWER))
    assert post(through, body).status == 200
    last = fake_upstream.last.json
    assert "cache_control" not in last and last["system"][0]["cache_control"] == mark


@pytest.mark.parametrize("message", [
    "Thinking is not supported when tool_choice forces tool use",        # together with something
    "thinking budget_tokens above 32000 not supported for this model",   # a value
    "thinking blocks in previous assistant turns are not supported",     # the history
    "output_config.effort: 'xhigh' is not supported; adaptive thinking supports low, medium, high",
])
def test_a_refusal_of_thinking_with_something_else_changes_nothing(through, fake_upstream, message):
    """Such a refusal is the client's to read, and later requests of the model keep their thinking."""
    model = _fresh_model("conditional")
    body = minimal_request(model=model, max_tokens=32000, thinking={"type": "adaptive"}, output_config={"effort": "xhigh"})
    fake_upstream.push(_refusal(message), json_reply(ANSWER))
    before = fake_upstream.request_count
    assert post(through, body).status == 400 and fake_upstream.request_count - before == 1
    assert post(through, minimal_request(model=model, max_tokens=32000, thinking={"type": "adaptive"})).status == 200
    assert fake_upstream.last.json["thinking"] == {"type": "adaptive"}


def test_one_422_refusing_several_things_is_met_at_once(through, fake_upstream):
    """pydantic lists every error of a body: an extra output_config beside an adaptive thinking it does
    not know, and a budget value error it does not refuse as a field. One retry meets both refusals,
    and the budget comes from the effort the refused output_config carried."""
    detail = [{"type": "extra_forbidden", "loc": ["body", "output_config"], "msg": "Extra inputs are not permitted",
               "input": {"effort": "high"}},
              {"type": "union_tag_invalid", "loc": ["body", "thinking"], "input": {"type": "adaptive"},
               "msg": "Input tag 'adaptive' found using 'type' does not match any of the expected tags: "
                      "'disabled', 'enabled'"},
              {"type": "less_than", "loc": ["body", "max_tokens"], "msg": "Input should be less than 64001"}]
    fake_upstream.push(json_reply({"detail": detail}, status=422), json_reply(ANSWER))
    body = minimal_request(model=_fresh_model("several"), max_tokens=32000, thinking={"type": "adaptive"},
                           output_config={"effort": "high"})
    before = fake_upstream.request_count
    assert post(through, body).status == 200 and fake_upstream.request_count - before == 2
    last = fake_upstream.last.json
    assert "output_config" not in last and last["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    assert last["max_tokens"] == 32000


def test_a_display_refused_inside_adaptive_thinking_costs_only_the_display(through, fake_upstream):
    fake_upstream.push(_extra_forbidden("thinking", "adaptive", "display"), json_reply(ANSWER))
    body = minimal_request(model=_fresh_model("display"), max_tokens=32000,
                           thinking={"type": "adaptive", "display": "summarized"})
    assert post(through, body).status == 200
    assert fake_upstream.last.json["thinking"] == {"type": "adaptive"}


def test_an_output_config_with_a_format_is_never_left_out(through, fake_upstream):
    """Its format is structured output, the client's meaning: the refusal stands; an effort alone goes."""
    model = _fresh_model("format")
    fake_upstream.push(_refusal("output_config: Extra inputs are not permitted"))
    schema = {"type": "json_schema", "schema": {"type": "object"}}
    assert post(through, minimal_request(model=model, output_config={"format": schema})).status == 400
    fake_upstream.push(_refusal("output_config: Extra inputs are not permitted"), json_reply(ANSWER))
    assert post(through, minimal_request(model=model, output_config={"effort": "low"})).status == 200
    assert "output_config" not in fake_upstream.last.json
    fake_upstream.push(_refusal("output_config: Extra inputs are not permitted"))
    assert post(through, minimal_request(model=model, output_config={"format": schema})).status == 400
    assert fake_upstream.last.json["output_config"] == {"format": schema}  # learned or not, it went


@pytest.mark.parametrize("thinking", [{"type": "enabled", "budget_tokens": 4000}, {"type": "adaptive"}])
def test_a_pydantic_server_without_thinking_gets_none(through, fake_upstream, thinking):
    """FastAPI's 422 echoes the refused value ("input"): its words (budget_tokens, 'adaptive') are the
    body's, not the refusal's, and must not read as a budget refused or adaptive refused."""
    model = _fresh_model("no-thinking")
    fake_upstream.push(json_reply({"detail": [{"type": "extra_forbidden", "loc": ["body", "thinking"],
                                               "msg": "Extra inputs are not permitted", "input": thinking}]},
                                  status=422), json_reply(ANSWER), json_reply(ANSWER))
    body = minimal_request(model=model, max_tokens=32000, thinking=thinking)
    before = fake_upstream.request_count
    assert post(through, body).status == 200 and "thinking" not in fake_upstream.last.json
    assert post(through, body).status == 200 and "thinking" not in fake_upstream.last.json
    assert fake_upstream.request_count - before == 3


def test_a_step_the_server_refuses_as_well_is_forgotten(through, fake_upstream, caplog):
    """A refusal read as adaptive refused, then the budget form refused for something no form
    changes: the step taught nothing, and the model's next request goes as the client sent it."""
    caplog.set_level(logging.WARNING, logger="claudeproxy")
    model = _fresh_model("forgotten")
    body = minimal_request(model=model, max_tokens=32000, thinking={"type": "adaptive"})
    fake_upstream.push(_refusal("Invalid value for thinking.type: adaptive"),
                       _refusal("messages.0.content: Field required"))
    assert post(through, body).status == 400
    fake_upstream.push(json_reply(ANSWER))
    assert post(through, body).status == 200 and fake_upstream.last.json["thinking"] == {"type": "adaptive"}
    assert any("refused the older form too" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("message", [
    "Unrecognized key(s) in object: 'context_management'",                            # zod
    '{"error": {"message": "litellm.BadRequestError: {\\"message\\": \\"context_management: Extra inputs are '
    'not permitted\\"}"}}',                                                           # a wrapper's JSON in a string
    "body.context_management: Extra inputs are not permitted",                          # FastAPI's path
])
def test_more_wrappers_of_a_refused_field(through, fake_upstream, message):
    body = minimal_request(model=_fresh_model("wrapped"), context_management={"edits": []})
    fake_upstream.push(_refusal(message), json_reply(ANSWER))
    assert post(through, body).status == 200 and "context_management" not in fake_upstream.last.json


def test_a_refusal_openrouter_relays_in_its_metadata_is_read(through, fake_upstream):
    """OpenRouter answers "Provider returned error" and keeps the provider's own body in metadata.raw."""
    raw = json.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                                 "message": "context_management: Extra inputs are not permitted"}})
    fake_upstream.push(json_reply({"error": {"message": "Provider returned error", "code": 400,
                                             "metadata": {"raw": raw, "provider_name": "Google"}}}, status=400),
                       json_reply(ANSWER))
    body = minimal_request(model=_fresh_model("openrouter"), context_management={"edits": []})
    assert post(through, body).status == 200 and "context_management" not in fake_upstream.last.json


@pytest.mark.parametrize("api", ["messages", "chat"])
def test_a_refusal_nesting_json_deeply_is_passed_on(make_proxy, fake_upstream, api):
    """An upstream's words holding JSON nested deeper than Python's recursion limit (the proxy reads
    a 422's entries from them): the client gets the upstream's 400, never a 500 from a RecursionError."""
    provider = Provider("deep", fake_upstream.url, api=api, token=claudeproxy.static_token(UPSTREAM_KEY))
    server = make_proxy(providers=(provider,), routes=(Route("*", RouteTarget("deep", "deep-model")),),
                        upstream=None)
    deep = 'extra {"detail": ' + "[" * 3000  # the message is cut at 500 characters; metadata.raw at 4,000
    fake_upstream.push(json_reply({"error": {"message": "Provider returned error", "code": 400,
                                             "metadata": {"raw": deep}}}, status=400))
    resp = post(server, minimal_request(model=_fresh_model("deep"), context_management={"edits": []}))
    assert resp.status == 400 and resp.json["error"]["type"] == "invalid_request_error", resp.json


def test_one_entrys_echo_is_not_read_as_anothers_refusal(through, fake_upstream):
    """A 422 listing an extra context_management after an entry whose echo holds the cache marks:
    the marks were not refused, and stay."""
    mark = {"type": "ephemeral"}
    system = [{"type": "text", "text": "a", "cache_control": mark}]
    detail = [{"type": "string_too_long", "loc": ["body", "system", 0, "text"], "msg": "String should have at most "
               "100000 characters", "input": system[0]},
              {"type": "extra_forbidden", "loc": ["body", "context_management"], "msg": "Extra inputs are not permitted",
               "input": {}}]
    fake_upstream.push(json_reply({"detail": detail}, status=422), json_reply(ANSWER))
    body = minimal_request(model=_fresh_model("echo"), system=system, context_management={"edits": []})
    assert post(through, body).status == 200
    last = fake_upstream.last.json
    assert "context_management" not in last and last["system"] == system


@pytest.mark.parametrize("message", ["claude-x does not support thinking with top_k set",
                                     "claude-x does not support thinking in streaming mode",
                                     "temperature may only be set to 1 when thinking.type is 'adaptive'"])
def test_thinking_refused_only_in_some_case_stays(through, fake_upstream, message):
    model = _fresh_model("some-case")
    fake_upstream.push(_refusal(message), json_reply(ANSWER))
    before = fake_upstream.request_count
    body = minimal_request(model=model, max_tokens=32000, thinking={"type": "adaptive"})
    assert post(through, body).status == 400 and fake_upstream.request_count - before == 1
    assert post(through, body).status == 200 and fake_upstream.last.json["thinking"] == {"type": "adaptive"}


def _native_api_and_target() -> Any:
    from claudeproxy.apis.messages import MessagesApi
    from claudeproxy.model_facts import ModelFacts
    from claudeproxy.routing import Target

    target = Target(Provider("native", "http://127.0.0.1:9/anthropic", api="messages"), "house",
                    ModelFacts(), None, None, "messages")
    return MessagesApi(), target


def test_requests_prepared_before_a_refusal_was_learned_are_retried_too():
    """Claude Code sends requests in parallel (subagents, side requests): each refused in the newer
    form is retried in the older one, not only the first to come back."""
    from claudeproxy.apis.base import ClientRequest
    from claudeproxy.errors import UpstreamHTTPError

    api, target = _native_api_and_target()
    req = ClientRequest(minimal_request(max_tokens=32000, thinking={"type": "adaptive"}), "claude-x", False, {}, "")
    first, second = api.prepare(req, target, None), api.prepare(req, target, None)
    exc = UpstreamHTTPError(ADAPTIVE_REFUSED["error"]["message"], status=400)
    exc.upstream_message = ADAPTIVE_REFUSED["error"]["message"]
    for ex in (first, second):
        again = api.recover(exc, req, target, ex, None)
        assert again is not None and json.loads(again.body)["thinking"]["type"] == "enabled"
    older = api.prepare(req, target, None)
    assert api.recover(exc, req, target, older, None) is None  # the older form refused too: no loop


def test_the_clients_json_is_never_changed():
    """A fallback target and a retry read the same body: the older form is the proxy's copy."""
    import copy

    from claudeproxy.apis.base import ClientRequest
    from claudeproxy.errors import UpstreamHTTPError

    api, target = _native_api_and_target()
    mark = {"type": "ephemeral", "ttl": "1h"}
    body = minimal_request(max_tokens=32000, thinking={"type": "adaptive", "display": "summarized"},
                           context_management={"edits": []}, output_config={"effort": "low"},
                           system=[{"type": "text", "text": "s", "cache_control": mark}],
                           messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
                               {"type": "text", "text": "r", "cache_control": mark}]}]}])
    kept = copy.deepcopy(body)
    req = ClientRequest(body, "claude-x", False, {}, "")
    for message in ("system.0.cache_control.ttl: Extra inputs are not permitted", "thinking.display: Extra inputs "
                    "are not permitted", ADAPTIVE_REFUSED["error"]["message"], "context_management: Extra inputs "
                    "are not permitted", "tools.0.cache_control: Extra inputs are not permitted"):
        exc = UpstreamHTTPError(message, status=400)
        exc.upstream_message = message
        assert api.recover(exc, req, target, api.prepare(req, target, None), None) is not None, message
    sent = json.loads(api.prepare(req, target, None).body)
    assert "cache_control" not in json.dumps(sent) and "context_management" not in sent
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body == kept


def test_each_efforts_budget_is_in_that_efforts_bucket():
    """The same mapping the translated APIs use the other way (a budget to an effort)."""
    from claudeproxy.apis.older_form import BUDGET_FOR_EFFORT
    from claudeproxy.dialects import effort_for_budget

    assert {e: effort_for_budget(b) for e, b in BUDGET_FOR_EFFORT.items()} == {
        "low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


def test_anthropic_itself_gets_the_request_as_sent_after_a_refusal():
    """Anthropic's own 400 is the client's to read: its models' rules are the client's business."""
    from claudeproxy.apis.base import ClientRequest
    from claudeproxy.apis.messages import MessagesApi
    from claudeproxy.errors import UpstreamHTTPError
    from claudeproxy.routing import Target

    from claudeproxy.model_facts import ModelFacts

    api = MessagesApi()
    target = Target(Provider("anthropic", "https://api.anthropic.com", api="messages"), "claude-opus-4-1",
                    ModelFacts(), None, None, "messages")
    req = ClientRequest(minimal_request(thinking={"type": "adaptive"}), "claude-x", False, {}, "")
    ex = api.prepare(req, target, None)
    exc = UpstreamHTTPError(ADAPTIVE_REFUSED["error"]["message"], status=400)
    exc.upstream_message = ADAPTIVE_REFUSED["error"]["message"]
    assert api.recover(exc, req, target, ex, None) is None
    assert json.loads(api.prepare(req, target, None).body)["thinking"] == {"type": "adaptive"}


def test_thinking_this_proxy_signed_for_another_upstream_is_not_forwarded(through, fake_upstream):
    """After a fallback to a chat upstream, the history holds thinking signed "cpx1." by the proxy:
    a native upstream cannot check it and would refuse the request. Real signatures go on."""
    history = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "mine", "signature": "cpx1.eyJwIjoieCJ9"},
                                          {"type": "redacted_thinking", "data": "cpx1.eyJwIjoieSJ9"},
                                          {"type": "text", "text": "a"}]},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "real", "signature": "EqQBCkYIBxgC"},
                                          {"type": "text", "text": "b"}]},
        {"role": "user", "content": "three"},
    ]
    fake_upstream.push(json_reply(ANSWER))
    assert post(through, minimal_request(messages=history)).status == 200
    sent = fake_upstream.last.json["messages"]
    assert sent[1]["content"] == [{"type": "text", "text": "a"}]
    assert sent[3] == history[3] and sent[0::2] == history[0::2]
    # count_tokens sends the history as the messages call does.
    fake_upstream.push(json_reply({"input_tokens": 9}))
    assert post(through, {"model": "claude-x", "messages": history}, path="/v1/messages/count_tokens").status == 200
    assert fake_upstream.last.json["messages"] == sent
    # A turn that was only such thinking keeps its text, as text: an empty turn is refused too.
    only = [history[0], {"role": "assistant", "content": [history[1]["content"][0]]}, history[2]]
    fake_upstream.push(json_reply(ANSWER))
    assert post(through, minimal_request(messages=only)).status == 200
    assert fake_upstream.last.json["messages"][1]["content"] == [{"type": "text", "text": "mine"}]


def test_the_upstreams_word_on_retrying_is_passed_on(through, fake_upstream):
    fake_upstream.push(json_reply({"type": "error", "error": {"type": "api_error", "message": "no"}}, status=500,
                                  headers=(("x-should-retry", "false"),)))
    resp = post(through, minimal_request())
    assert resp.status == 500 and resp.headers["x-should-retry"] == "false"


def test_max_tokens_is_capped_at_the_models_output_cap(make_proxy, fake_upstream, caplog):
    """FIELD-NOTES 5: clamp down to the model's cap, and say so (a probe found no line about it):
    once a model, at INFO; Claude Code asks for 128000 every time."""
    from claudeproxy.model_facts import ModelFacts

    provider = Provider("native", fake_upstream.url, api="messages", models=(("small-*", ModelFacts(max_output=4096)),))
    server = make_proxy(providers=(provider,), routes=(Route("*", RouteTarget("native", "small-one")),), upstream=None)
    with caplog.at_level(logging.DEBUG, logger="claudeproxy"):
        for max_tokens in (128000, 64000, 1000):
            fake_upstream.push(json_reply(ANSWER))
            assert post(server, minimal_request(max_tokens=max_tokens)).status == 200
            assert fake_upstream.last.json["max_tokens"] == min(max_tokens, 4096)
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "capped at 4096" in r.getMessage()]
    assert [level for level, _ in said] == [logging.INFO, logging.DEBUG], said
    assert "small-one" in said[0][1] and "128000" in said[0][1]


@pytest.mark.parametrize("base,expected", [
    ("", "/v1/messages"),
    ("/v1", "/v1/messages"),
    ("/v1/", "/v1/messages"),
    ("/v1/messages", "/v1/messages"),
    ("/anthropic", "/anthropic/v1/messages"),
])
def test_upstream_path_joins_the_base_once(make_proxy, fake_upstream, base, expected):
    server = make_proxy(passthrough=True, upstream=f"http://127.0.0.1:{fake_upstream.port}{base}")
    fake_upstream.push(json_reply(ANSWER))
    post(server, minimal_request(), path="/v1/messages?beta=true")
    assert fake_upstream.last.path == expected


def test_query_with_bytes_http_client_refuses_is_no_502(through, fake_upstream):
    """Found by the request fuzz: a non-ASCII or control byte in the query was a 502 "could not reach".
    Another server than Anthropic gets no query at all (the client does not choose its parameters)."""
    from test_http_errors import json_post, raw_request

    fake_upstream.push(json_reply(ANSWER))
    raw = json_post(json.dumps(minimal_request()).encode(), path="/v1/messages?beta=%ff&x=\xe9\x01#f")
    resp = raw_request(through.url, raw)
    assert resp.status == 200, resp
    assert fake_upstream.last.path == "/v1/messages"
    fake_upstream.push(json_reply({"input_tokens": 5}))
    assert post(through, {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]},
                path="/v1/messages/count_tokens?beta=true&api-version=1").status == 200
    assert fake_upstream.last.path == "/v1/messages/count_tokens"


def test_the_query_goes_to_anthropic_itself_encoded() -> None:
    """Anthropic reads ?beta=true: it gets the client's query, encoded where http.client would refuse it."""
    from claudeproxy.apis.base import ClientRequest
    from claudeproxy.apis.messages import MessagesApi
    from claudeproxy.model_facts import ModelFacts
    from claudeproxy.routing import Target

    target = Target(Provider("anthropic", "https://api.anthropic.com", api="messages"), "claude-opus-4-1",
                    ModelFacts(), None, None, "messages")
    req = ClientRequest(minimal_request(), "claude-opus-4-1", False, {}, "beta=%ff&x=\xe9\x01#f")
    assert MessagesApi().prepare(req, target, None).url == "https://api.anthropic.com/v1/messages?beta=%ff&x=%E9%01%23f"
    req = ClientRequest(minimal_request(), "claude-opus-4-1", False, {}, "beta=true")
    assert MessagesApi().count_tokens(req, target).url == "https://api.anthropic.com/v1/messages/count_tokens?beta=true"


def test_header_hygiene(through, fake_upstream):
    fake_upstream.push(json_reply(ANSWER))
    post(through, minimal_request(), headers={
        "Connection": "keep-alive, X-Hop-Private", "X-Hop-Private": "secret-hop", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Proxy-Authorization": "Basic Zm9vOmJhcg==", "Accept-Encoding": "gzip, br",
        "anthropic-beta": "prompt-caching-2024-07-31", "X-Custom": "not-forwarded", "Cookie": "s=1"})
    got = fake_upstream.last.headers
    for name in ("x-hop-private", "keep-alive", "te", "proxy-authorization", "x-custom", "cookie"):
        assert name not in got, name
    assert got.get("accept-encoding", "identity") == "identity"  # never a compressed body we would have to relay
    assert got["anthropic-version"] == "2023-06-01"
    # A local server is not Anthropic: betas it may not know are dropped by default.
    assert "anthropic-beta" not in got
    assert got["host"] == f"127.0.0.1:{fake_upstream.port}"


def test_anthropic_version_defaults_and_odd_values_are_not_copied(through, fake_upstream):
    fake_upstream.push(json_reply(ANSWER), json_reply(ANSWER))
    request(through.url, "POST", "/v1/messages", minimal_request(), {"x-api-key": CLIENT_KEY})
    assert fake_upstream.last.headers["anthropic-version"] == "2023-06-01"
    post(through, minimal_request(), headers={"anthropic-version": "2023-06-01 <x>"})
    assert fake_upstream.last.headers["anthropic-version"] == "2023-06-01"


@pytest.mark.parametrize("policy,allowed,expected", [
    ("forward", (), "claude-code-20250219,interleaved-thinking-2025-05-14"),
    ("drop", (), None),
    ("auto", ("interleaved-thinking-2025-05-14",), "interleaved-thinking-2025-05-14"),
])
def test_beta_policy_per_provider(make_proxy, fake_upstream, policy, allowed, expected):
    provider = Provider("native", fake_upstream.url, api="messages", anthropic_beta=policy, allowed_betas=allowed)
    server = make_proxy(providers=(provider,), routes=(Route("*", RouteTarget("native")),), upstream=None)
    fake_upstream.push(json_reply(ANSWER))
    post(server, minimal_request(), headers={"anthropic-beta": "claude-code-20250219, interleaved-thinking-2025-05-14"})
    assert fake_upstream.last.headers.get("anthropic-beta") == expected


def test_configured_key_goes_the_way_the_provider_wants(through, fake_upstream):
    fake_upstream.push(json_reply(ANSWER))
    post(through, minimal_request(), headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    sent = fake_upstream.last
    # Not Anthropic's own host: the Bearer form the native endpoints document (ANTHROPIC_AUTH_TOKEN).
    assert [v for k, v in sent.raw_headers if k.lower() == "authorization"] == [f"Bearer {UPSTREAM_KEY}"]
    assert "x-api-key" not in sent.headers
    assert CLIENT_KEY not in repr(sent.raw_headers) + sent.body.decode("utf-8")


def test_x_api_key_style_on_request(make_proxy, fake_upstream):
    server = make_proxy(passthrough=True, upstream_auth="x-api-key")
    fake_upstream.push(json_reply(ANSWER))
    post(server, minimal_request())
    sent = fake_upstream.last
    assert [v for k, v in sent.raw_headers if k.lower() == "x-api-key"] == [UPSTREAM_KEY]
    assert "authorization" not in sent.headers


def test_a_forwarded_client_key_goes_the_way_the_provider_says(make_proxy, fake_upstream):
    """A provider that says auth bearer (a server checking only Authorization) gets the client's
    x-api-key as a Bearer token."""
    provider = Provider("native", fake_upstream.url, api="messages", auth="bearer", token=claudeproxy.static_token(""))
    server = make_proxy(providers=(provider,), routes=(Route("*", RouteTarget("native")),), upstream=None)
    fake_upstream.push(json_reply(ANSWER))
    assert post(server, minimal_request()).status == 200
    sent = fake_upstream.last
    assert [v for k, v in sent.raw_headers if k.lower() == "authorization"] == [f"Bearer {CLIENT_KEY}"]
    assert "x-api-key" not in sent.headers


def test_client_key_is_forwarded_when_none_is_configured(make_proxy, fake_upstream):
    server = make_proxy(passthrough=True, token=claudeproxy.static_token(""))
    fake_upstream.push(json_reply(ANSWER))
    post(server, minimal_request())
    assert [v for k, v in fake_upstream.last.raw_headers if k.lower() == "x-api-key"] == [CLIENT_KEY]


def test_the_proxys_own_client_key_is_never_forwarded(make_proxy, fake_upstream):
    server = make_proxy(passthrough=True, token=claudeproxy.static_token(""), auth_key=CLIENT_KEY)
    fake_upstream.push(json_reply(ANSWER))
    assert post(server, minimal_request()).status == 200
    assert CLIENT_KEY not in repr(fake_upstream.last.raw_headers)


def test_the_model_list_is_asked_with_the_forwarded_client_key(make_proxy, fake_upstream):
    """Without it, models.list() through a passthrough without a key of its own was always a 401."""
    server = make_proxy(passthrough=True, token=claudeproxy.static_token(""))
    fake_upstream.push(json_reply({"data": [{"type": "model", "id": "claude-a"}], "has_more": False}))
    resp = request(server.url, "GET", "/v1/models", headers={"x-api-key": CLIENT_KEY})
    assert resp.status == 200 and [m["id"] for m in resp.json["data"]] == ["claude-a"]
    assert [v for k, v in fake_upstream.last.raw_headers if k.lower() == "x-api-key"] == [CLIENT_KEY]
    # Never the proxy's own --auth-key.
    server = make_proxy(passthrough=True, token=claudeproxy.static_token(""), auth_key=CLIENT_KEY)
    fake_upstream.push(json_reply({"data": [{"type": "model", "id": "claude-a"}], "has_more": False}))
    request(server.url, "GET", "/v1/models", headers={"x-api-key": CLIENT_KEY})
    assert CLIENT_KEY not in repr(fake_upstream.last.raw_headers)


# ---------------------------------------------------------------------------
# JSON answers and errors.


def test_json_answer_is_relayed_with_usage_in_metrics(through, fake_upstream, records):
    answer = {**ANSWER, "id": "msg_relayed_json"}  # the module's proxy gives none twice (test_tool_ids)
    raw = json.dumps(answer, indent=1).encode("utf-8")
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"),), [raw]))
    resp = post(through, minimal_request(model="claude-haiku-4-5"))
    assert resp.status == 200
    assert resp.json == {**answer, "model": "claude-haiku-4-5"}
    rec = record_for(records, resp.headers["request-id"])
    assert (rec.input_tokens, rec.output_tokens, rec.stop_reason) == (12, 3, "end_turn")
    assert (rec.model, rec.provider, rec.route) == ("claude-haiku-4-5", "upstream", "*")


@pytest.mark.parametrize("status,ctype,body,error_type", [
    (429, "application/json", b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}',
     "rate_limit_error"),
    (529, "application/json", b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
     "overloaded_error"),
    (400, "application/json", b'{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}',
     "invalid_request_error"),
    (500, "text/html", b"<html>upstream broke</html>", "api_error"),
])
def test_upstream_error_keeps_status_and_type(through, fake_upstream, records, status, ctype, body, error_type):
    fake_upstream.push(Reply(status, (("Content-Type", ctype), ("retry-after", "7"), ("Keep-Alive", "timeout=5"),
                                      ("Proxy-Authenticate", "Basic")), [body]))
    resp = post(through, minimal_request(stream=True))
    assert resp.status == status
    assert resp.json["type"] == "error" and resp.json["error"]["type"] == error_type
    if status == 429:
        assert resp.headers["retry-after"] == "7"
    assert "keep-alive" not in resp.headers and "proxy-authenticate" not in resp.headers
    rec = record_for(records, resp.headers["request-id"])
    assert (rec.status, rec.error_type) == (status, error_type)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_upstream_errors_type_and_error_code_reach_the_sdk(through, fake_upstream, stream):
    """The SDKs pick an error's class by error.details.error_code (about 90 of them) and recover from
    some: a message thread Anthropic lost is replayed under a new one. The proxy dropped the details
    and named the type by the status (a billing_error on a 400 became invalid_request_error): the
    SDK raised a plain BadRequestError and its thread recovery failed (a probe of the SDKs)."""
    lost = {"type": "error", "error": {"type": "invalid_request_error", "message": "thread not found",
                                       "details": {"error_code": "thread_not_found"}}, "request_id": "req_up"}
    billing = {"type": "error", "error": {"type": "billing_error", "message": f"no credit for {UPSTREAM_KEY}",
                                          "details": {"error_code": "credit_exhausted", "key": UPSTREAM_KEY}}}
    fake_upstream.push(json_reply(lost, status=400), json_reply(billing, status=400))
    first, second = post(through, minimal_request(stream=stream)), post(through, minimal_request(stream=stream))
    assert (first.status, first.json["error"]["type"]) == (400, "invalid_request_error")
    assert first.json["error"]["details"] == {"error_code": "thread_not_found"}
    assert (second.status, second.json["error"]["type"]) == (400, "billing_error")
    assert second.json["error"]["details"]["error_code"] == "credit_exhausted"
    assert UPSTREAM_KEY not in second.body.decode("utf-8")


def test_an_answer_echoing_the_key_in_any_field_is_masked(through, fake_upstream):
    """An upstream that echoes the key it was sent in an extra field of a JSON answer, or of a known
    stream event: it reached the client (only unknown event kinds and errors were checked: probe A)."""
    answer = {**ANSWER, "debug": {"sent_key": UPSTREAM_KEY}}
    start = {**MESSAGE_START, "message": {**MESSAGE_START["message"], "debug": UPSTREAM_KEY}}
    events = [start, HEAD_EVENTS[2], {**HEAD_EVENTS[3], "echo": f"Bearer {UPSTREAM_KEY}"}, *TAIL_EVENTS[:2],
              {**TAIL_EVENTS[2], "debug": [UPSTREAM_KEY]}, TAIL_EVENTS[3]]
    fake_upstream.push(json_reply(answer), sse(events_bytes(events)))
    plain, streamed = post(through, minimal_request()), post(through, minimal_request(stream=True))
    assert plain.status == 200 and UPSTREAM_KEY not in plain.body.decode("utf-8")
    assert plain.json["debug"] == {"sent_key": "***"} and plain.json["content"] == ANSWER["content"]
    assert streamed.status == 200 and UPSTREAM_KEY not in streamed.body.decode("utf-8")
    got = events_of(streamed.body)
    assert_valid_event_sequence(got, allow_error=False)
    assert final_message(got)["content"][0]["text"] == "Hello there"


def _escaped(text: str, every: int = 1) -> str:
    """``text`` with every ``every``-th character written as a JSON \\u escape (one is enough)."""
    return "".join(f"\\u{ord(c):04x}" if i % every == 0 else c for i, c in enumerate(text))


def test_a_key_echoed_with_json_escapes_or_as_an_event_name_is_masked_or_dropped(through, fake_upstream):
    """The check read the event's raw text, the proxy writes it out decoded: a key spelled with one
    \\u escape reached the client plain, in a known event's field and in an event of a kind no
    client reads; an event named by the key went out under that name (probe E)."""
    raw = (anthropic_event(MESSAGE_START)
           + b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
             b'"content_block":{"type":"text","text":""}}\n\n'
           + ('event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":'
              '{"type":"text_delta","text":"Hello","debug":"%s"}}\n\n' % _escaped(UPSTREAM_KEY, 7)).encode()
           + ('event: my_debug\ndata: {"type":"my_debug","echo":"%s"}\n\n' % _escaped(UPSTREAM_KEY)).encode()
           + ('event: %s\ndata: {"note":"x"}\n\n' % UPSTREAM_KEY).encode()
           + events_bytes(TAIL_EVENTS))
    fake_upstream.push(sse(raw))
    resp = post(through, minimal_request(stream=True))
    body = resp.body.decode("utf-8")
    assert resp.status == 200 and UPSTREAM_KEY not in body
    got = events_of(resp.body)
    assert_valid_event_sequence(got, allow_error=False)
    assert [e["type"] for e in got if e["type"] not in ("ping",)].count("my_debug") == 0
    assert '"debug":"***"' in body and final_message(got)["content"][0]["text"] == "Hello there"


def test_a_json_answer_to_a_stream_request_is_masked_as_a_json_answer_is(through, fake_upstream):
    """A passthrough upstream that answers a stream request with JSON: its events are made from it,
    and a key it echoed went out in message_start (review G); masked now, model text as written."""
    answer = {**ANSWER, "content": [{"type": "text", "text": "hi", "debug": UPSTREAM_KEY}], "note": UPSTREAM_KEY}
    fake_upstream.push(json_reply(answer))
    streamed = post(through, minimal_request(stream=True))
    assert streamed.status == 200 and UPSTREAM_KEY not in streamed.body.decode("utf-8")
    got = events_of(streamed.body)
    assert_valid_event_sequence(got, allow_error=False)
    assert final_message(got)["content"][0]["text"] == "hi"


def test_a_field_named_like_model_text_is_spared_only_where_it_is_model_text(through, fake_upstream):
    """text/thinking/input/partial_json pass as written only in a block (or delta) of the type that
    holds them: in a message_delta, a ping or a text block's stray "input" they are the upstream's
    own fields, and were passed on with the key in them (probe E)."""
    answer = {**ANSWER, "content": [{"type": "text", "text": "you pasted it", "input": UPSTREAM_KEY}]}
    events = [*HEAD_EVENTS[:3], {**HEAD_EVENTS[3], "delta": {"type": "text_delta", "text": "Hi",
                                                              "partial_json": UPSTREAM_KEY}},
              TAIL_EVENTS[1], {**TAIL_EVENTS[2], "delta": {**TAIL_EVENTS[2]["delta"], "text": UPSTREAM_KEY}},
              {"type": "ping", "delta": {"text": UPSTREAM_KEY}}, TAIL_EVENTS[3]]
    fake_upstream.push(json_reply(answer), sse(events_bytes(events)))
    plain, streamed = post(through, minimal_request()), post(through, minimal_request(stream=True))
    assert plain.json["content"] == [{"type": "text", "text": "you pasted it", "input": "***"}]
    assert streamed.status == 200 and UPSTREAM_KEY not in streamed.body.decode("utf-8")
    assert_valid_event_sequence(events_of(streamed.body), allow_error=False)


@pytest.mark.parametrize("answer", [[UPSTREAM_KEY], UPSTREAM_KEY, {"content": "x", "k": UPSTREAM_KEY}])
def test_an_answer_that_is_no_message_and_echoes_the_key_is_a_502(through, fake_upstream, answer):
    """Not an object: the masking read it as one, a 500 (review F); refused as before, unquoted."""
    fake_upstream.push(json_reply(answer))
    resp = post(through, minimal_request())
    assert resp.status == 502 and resp.json["error"]["message"] == "upstream returned a body that is not an Anthropic message"


def test_prompt_too_long_stays_what_claude_code_compacts_on(through, fake_upstream):
    body = {"type": "error", "error": {"type": "invalid_request_error",
                                       "message": "prompt is too long: 208310 tokens > 200000 maximum"}}
    fake_upstream.push(json_reply(body, status=400))
    resp = post(through, minimal_request())
    assert resp.status == 400 and resp.json["error"]["type"] == "invalid_request_error"
    assert resp.json["error"]["message"].startswith("prompt is too long")


def test_error_body_echoing_the_key_is_redacted(through, fake_upstream):
    echo = {"type": "error", "error": {"type": "authentication_error",
                                       "message": f"invalid x-api-key: {UPSTREAM_KEY}"}}
    fake_upstream.push(json_reply(echo, status=401))
    resp = post(through, minimal_request())
    assert resp.status == 401 and resp.json["error"]["type"] == "authentication_error"
    assert UPSTREAM_KEY not in resp.body.decode("utf-8")


def test_error_inside_a_200_body_is_an_error(through, fake_upstream):
    fake_upstream.push(json_reply({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}))
    resp = post(through, minimal_request())
    assert resp.status == 529 and resp.json["error"]["type"] == "overloaded_error"


def test_short_body_is_a_502_not_a_broken_200(through, fake_upstream):
    raw = json.dumps(ANSWER).encode("utf-8")
    # Content-Length says more than comes: the connection drops after a body that parses.
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"), ("Content-Length", str(len(raw) + 50))),
                             [raw, Fault("fin")], close_delimited=True))
    resp = post(through, minimal_request())
    assert resp.status == 502 and resp.json["error"]["type"] == "api_error", resp


def test_body_over_the_limit_is_a_502(make_proxy, fake_upstream):
    server = make_proxy(passthrough=True, max_body_bytes=4096)
    big = {**ANSWER, "content": [{"type": "text", "text": "x" * 20000}]}
    fake_upstream.push(json_reply(big))
    resp = post(server, minimal_request())
    assert resp.status == 502 and "larger than" in resp.json["error"]["message"]


@pytest.mark.parametrize("passthrough", [True, False])
def test_an_answer_of_millions_of_tiny_values_is_a_502_before_it_is_decoded(make_proxy, fake_upstream, passthrough):
    """Bounded in bytes only, an upstream answer of "{}"s took 28 times its size to decode (1.7 GB for
    61 MB, probe AA F-3): it is held to the client's body's counts, and not asked for again."""
    server = make_proxy(passthrough=passthrough)
    pad = b"[" + b"{}," * 1_200_000 + b"{}]"
    body = json.dumps(ANSWER if passthrough else {"choices": []}).encode()[:-1] + b', "pad": ' + pad + b"}"
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"),), [body]))
    resp = post(server, minimal_request())
    assert resp.status == 502, resp
    message = resp.json["error"]["message"]
    assert re.fullmatch(r"upstream response holds 1,200,0\d\d JSON objects and arrays; at most 1,000,000 are taken",
                        message), message
    assert resp.headers.get("x-should-retry") == "false"
    assert len(fake_upstream.requests) == 1


def test_not_a_message_is_a_502(through, fake_upstream):
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"),), [b"[1, 2, 3]"]))
    assert post(through, minimal_request()).status == 502


def test_request_timeout_holds_for_a_dripping_body(make_proxy, fake_upstream):
    server = make_proxy(passthrough=True, request_timeout=0.6)
    raw = json.dumps(ANSWER).encode("utf-8")
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"),), [raw[:10], Sleep(3), raw[10:]]))
    started = time.monotonic()
    resp = post(server, minimal_request())
    assert resp.status == 504 and resp.json["error"]["type"] == "timeout_error", resp
    assert time.monotonic() - started < 2.5


def test_redirect_is_not_followed(through, fake_upstream):
    fake_upstream.push(Reply(302, (("Location", "http://127.0.0.1:9/steal"),), [b""]))
    resp = post(through, minimal_request())
    assert resp.status == 502 and resp.json["error"]["type"] == "api_error"
    assert len(fake_upstream.requests) == 1


# ---------------------------------------------------------------------------
# Streams.


def test_stream_is_relayed_as_it_arrives(through, fake_upstream, records):
    """Gate proof: the first text delta reaches the client while the upstream holds the rest."""
    gate = Gate()
    first = {**MESSAGE_START, "message": {**MESSAGE_START["message"], "id": "msg_relayed_stream"}}
    fake_upstream.push(sse(events_bytes([first] + HEAD_EVENTS[1:]), gate, events_bytes(TAIL_EVENTS)))
    before = request(through.url, "GET", "/metrics?format=json").json
    body = minimal_request(stream=True, model="claude-sonnet-4-5")
    with StreamClient(through.url, body, headers={"x-api-key": CLIENT_KEY}) as client:
        assert client.status == 200 and client.headers["content-type"].startswith("text/event-stream")
        assert client.headers["transfer-encoding"] == "chunked"
        delta = client.read_until("content_block_delta", timeout=3)
        assert delta["delta"]["text"] == "Hello" and not gate.event.is_set()
        gate.release()
        events = client.read_all(timeout=5)
        request_id = client.headers["request-id"]
    assert_valid_event_sequence(events, allow_error=False)
    # Every event as the upstream sent it, but the model name is the client's.
    start = {**first, "message": {**first["message"], "model": "claude-sonnet-4-5"}}
    assert events == [start] + HEAD_EVENTS[1:] + TAIL_EVENTS
    assert final_message(events)["content"] == [{"type": "text", "text": "Hello there"}]
    rec = record_for(records, request_id)
    assert (rec.input_tokens, rec.output_tokens, rec.cache_read_input_tokens) == (25, 15, 7)
    assert rec.stop_reason == "end_turn" and rec.status == 200
    after = request(through.url, "GET", "/metrics?format=json").json
    assert after["output_tokens"] - before["output_tokens"] == 15
    assert after["input_tokens"] - before["input_tokens"] == 25


@pytest.mark.parametrize("fault", ["rst", "fin", "truncate"])
def test_close_after_message_stop_is_the_end(through, fake_upstream, fault):
    """A complete stream then a dropped connection: one end, never an error event after message_stop."""
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS + TAIL_EVENTS), Fault(fault)))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    assert [e["type"] for e in events][-2:] == ["message_delta", "message_stop"]
    assert "error" not in [e["type"] for e in events]


def test_close_delimited_complete_stream_ends_once(through, fake_upstream):
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS + TAIL_EVENTS), chunked=False))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    assert [e["type"] for e in events].count("message_stop") == 1


def test_stream_cut_after_message_delta_is_finished(through, fake_upstream):
    """Everything but message_stop arrived: the answer is whole, so the proxy ends it normally."""
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS + TAIL_EVENTS[:-1]), Fault("fin")))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    assert events[-1] == {"type": "message_stop"}


@pytest.mark.parametrize("after", ["error event", "line over the cap", "error event cut off by the end"])
def test_failure_after_message_delta_still_ends_with_message_stop(through, fake_upstream, after):
    """Found by the upstream fuzz: message_delta went out, so only message_stop may follow (not an error).

    The last variant (seed 1): an error event whose body ends in the middle of it, flushed at the end."""
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    tail = {"error event": anthropic_event(error), "line over the cap": b"data: " + b"x" * (2 * 1024 * 1024) + b"\n\n",
            "error event cut off by the end": anthropic_event(error)[:-20]}[after]
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS + TAIL_EVENTS[:-1]), tail))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    assert events[-1] == {"type": "message_stop"}


_COUNT_ALONG_THE_WAY = {"type": "message_delta", "delta": {"stop_reason": None, "stop_sequence": None},
                        "usage": {"output_tokens": 7}}


@pytest.mark.parametrize("after", ["error event", "rst", "fin"])
def test_a_message_delta_without_a_stop_reason_does_not_end_the_answer(through, fake_upstream, records, after):
    """A usage update along the way (a message_delta whose stop reason is null) was taken for the
    end: an error or a cut after it reached the client as a whole answer with stop_reason None
    (probe C). It is the client's error, and the record's."""
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    tail = {"error event": (anthropic_event(error),), "rst": (Fault("rst"),), "fin": (Fault("fin"),)}[after]
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS + [_COUNT_ALONG_THE_WAY]), *tail))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
        request_id = client.headers["request-id"]
    assert_valid_event_sequence(events, allow_error=True)
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "error" and "message_stop" not in kinds and "message_delta" not in kinds, kinds
    if after == "error event":
        assert events[-1]["error"]["type"] == "overloaded_error"
    assert record_for(records, request_id).error_type is not None


def test_a_cut_after_a_count_along_the_way_leaves_the_output_unknown(through, fake_upstream, records):
    """The count of a message_delta without a stop reason is the output so far: cut after it, more was
    generated than it says, so the record's output and cost are unknown, as for any forwarded stream
    cut before its end (a review: the partial count was billed as the whole)."""
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS + [_COUNT_ALONG_THE_WAY]), Fault("rst")))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        client.read_all(timeout=5)
        request_id = client.headers["request-id"]
    rec = record_for(records, request_id)
    assert (rec.input_tokens, rec.output_tokens, rec.cost_usd) == (25, None, None)


def test_a_count_along_the_way_is_the_output_of_an_answer_that_ends_whole(through, fake_upstream, records):
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}}  # no usage
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS + [_COUNT_ALONG_THE_WAY, end, {"type": "message_stop"}])))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
        request_id = client.headers["request-id"]
    assert_valid_event_sequence(events, allow_error=False)
    assert next(e for e in events if e["type"] == "message_delta")["usage"]["output_tokens"] == 7
    assert record_for(records, request_id).output_tokens == 7


def test_a_message_delta_without_a_stop_reason_then_the_rest_of_the_answer(through, fake_upstream):
    """Counted along the way, then more text and the real end: one message_delta, the last counts."""
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS + [_COUNT_ALONG_THE_WAY] + TAIL_EVENTS)))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    deltas = [e for e in events if e["type"] == "message_delta"]
    assert len(deltas) == 1 and deltas[0]["delta"]["stop_reason"] == "end_turn"
    assert deltas[0]["usage"]["output_tokens"] == 15
    assert final_message(events)["content"] == [{"type": "text", "text": "Hello there"}]


def test_a_message_delta_without_a_stop_reason_then_message_stop_gets_one(through, fake_upstream):
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS + [_COUNT_ALONG_THE_WAY, {"type": "message_stop"}])))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] == 7


def test_event_whose_type_is_not_a_string_is_named_by_its_event_line(through, fake_upstream):
    """Found by the upstream fuzz: "type": 5 under "event: message_stop" ended the stream for the proxy,
    but the client got an event named 5 and never a message_stop."""
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS + TAIL_EVENTS[:-1]), b'event: message_stop\ndata: {"type": 5}\n\n'))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    assert events[-1] == {"type": "message_stop"}


@pytest.mark.parametrize("usage", [{"input_tokens": {}}, {"output_tokens": [1]}, {"input_tokens": "x"},
                                   {"output_tokens": 1e999}])
def test_odd_usage_values_in_a_forwarded_answer_are_no_500(through, fake_upstream, usage):
    """Found by the upstream fuzz: the call record's int() of a usage value that is an object raised
    TypeError after the answer was read (a 500 "internal error" for an answer the upstream gave)."""
    fake_upstream.push(json_reply({**ANSWER, "usage": usage}))
    resp = post(through, minimal_request())
    assert resp.status == 200, resp
    assert {k: resp.json["usage"][k] for k in usage} == usage  # passed on as given (a missing count is 0)


@pytest.mark.parametrize("usage", [None, {}, {"input_tokens": "12"}])
def test_a_forwarded_answer_without_usage_has_unknown_tokens_and_cost(through, fake_upstream, records, usage):
    """No count at all: the record says unknown (None), not a measured 0 tokens at $0."""
    fake_upstream.push(json_reply({**ANSWER, "usage": usage}))
    resp = post(through, minimal_request())
    assert resp.status == 200, resp
    rec = record_for(records, resp.headers["request-id"])
    assert (rec.input_tokens, rec.output_tokens, rec.cost_usd) == (None, None, None)
    # The client still gets the counts the SDKs' Usage requires (message.usage.output_tokens was an
    # AttributeError on a null usage), never recorded as a count: the proxy's estimates, as for a
    # translated answer (they were 0s, which tell Claude Code its context is empty: probe C); an odd
    # value goes on as given.
    given = resp.json["usage"]
    assert given["output_tokens"] == 1  # "hi": a quarter of its characters, rounded up
    assert given["input_tokens"] == "12" if usage else given["input_tokens"] == input_estimate(minimal_request()) > 0


@pytest.mark.parametrize("bad", [{"content": [5]}, {"content": ["text"]}, {"usage": 1.5}, {"usage": [1]},
                                 {"content": [{"type": "text", "text": "a", "citations": 7}]}])
def test_malformed_json_message_to_a_stream_request_is_502(through, fake_upstream, bad):
    """Found by the upstream fuzz: turning such a JSON answer into events raised AttributeError (a 500)."""
    fake_upstream.push(json_reply({**ANSWER, **bad}))
    resp = post(through, minimal_request(stream=True))
    assert resp.status == 502 and resp.json["error"]["type"] == "api_error", resp


@pytest.mark.parametrize("fault", ["rst", "fin", "truncate"])
def test_broken_stream_ends_with_one_error_event(through, fake_upstream, records, fault):
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS), Fault(fault)))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
        request_id = client.headers["request-id"]
    assert_valid_event_sequence(events)
    assert [e["type"] for e in events].count("error") == 1 and events[-1]["type"] == "error"
    assert events[-1]["error"]["type"] == "api_error"
    assert record_for(records, request_id).error_type == "api_error"


def test_upstream_error_event_mid_stream_is_redacted_and_ends_it(through, fake_upstream):
    error = {"type": "error", "error": {"type": "overloaded_error", "message": f"busy for {UPSTREAM_KEY}"}}
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS), anthropic_event(error), events_bytes(TAIL_EVENTS)))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
        assert UPSTREAM_KEY.encode() not in client.body
    assert_valid_event_sequence(events)
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "overloaded_error"
    assert "message_stop" not in [e["type"] for e in events]


# A client key of no known shape: only the call's own list of secrets can mask it.
PLAIN_CLIENT_KEY = "client-key-CLIENTSECRET123"


def test_a_forwarded_client_key_is_masked_in_a_stream_error_and_in_the_logs(make_proxy, fake_upstream, caplog):
    """With no key configured the client's key goes upstream; an upstream that repeats it after the
    stream began has it masked in the error event, the relay's warning and the debug lines."""
    caplog.set_level(logging.DEBUG)
    server = make_proxy(passthrough=True, token=claudeproxy.static_token(""), log_bodies=True)
    error = {"type": "error", "error": {"type": "overloaded_error", "message": f"key {PLAIN_CLIENT_KEY} over quota"}}
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS), anthropic_event(error)),
                       Reply(401, (("Content-Type", "text/plain"),), [f"bad key {PLAIN_CLIENT_KEY}".encode()]))
    with StreamClient(server.url, minimal_request(stream=True), headers={"x-api-key": PLAIN_CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
        assert b"CLIENTSECRET" not in client.body
    assert [v for k, v in fake_upstream.last.raw_headers if k.lower() == "x-api-key"] == [PLAIN_CLIENT_KEY]
    # (The upstream sent a 200 and an error event: its message names no status nobody sent.)
    assert events[-1]["type"] == "error" and events[-1]["error"]["message"] == "upstream error: key *** over quota"
    resp = post(server, minimal_request(), headers={"x-api-key": PLAIN_CLIENT_KEY})
    assert resp.status == 401 and "CLIENTSECRET" not in resp.body.decode()
    assert server.server.wait_idle(2)
    records = [r.getMessage() for r in caplog.records]
    assert any("stream failed after it began" in r for r in records)
    assert any(r.startswith("upstream stream line") for r in records)  # the raw lines were logged
    assert [r for r in records if "CLIENTSECRET" in r] == []


def test_upstream_error_event_first_is_a_plain_http_error(through, fake_upstream):
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    fake_upstream.push(sse(anthropic_event(error)))
    resp = post(through, minimal_request(stream=True))
    assert resp.status == 529 and resp.json["error"]["type"] == "overloaded_error"
    assert resp.json["error"]["message"] == "upstream error: Overloaded"  # a 200 came, not a 529


def test_an_event_of_a_few_megabytes_goes_through(through, fake_upstream):
    """A web fetch's PDF (base64) in its block's start, Ollama's whole tool input in one delta: a
    1.2 MB event ended the stream at the 1 MiB line cap (probe L), where the JSON answer went through.
    A line past 16 MiB still ends it."""
    blob = "JVBERi0xLjcK" + "A" * 1_200_000  # (as large a server tool result, in the block kind the checks know)
    fetched = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [
        {"type": "web_search_result", "url": "https://example.com/a.pdf", "title": "a", "encrypted_content": blob}]}
    text = "x" * 1_200_000
    events = [MESSAGE_START, {"type": "content_block_start", "index": 0, "content_block": fetched},
              _stop(0), _start(1, "tool_use", id="toolu_big", name="Write", input={}),
              _delta(1, "input_json_delta", partial_json=json.dumps({"content": text})), _stop(1),
              {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
               "usage": {"output_tokens": 9}}, {"type": "message_stop"}]
    fake_upstream.push(sse(events_bytes(events)))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        got = client.read_all(timeout=10)
    assert_valid_event_sequence(got, allow_error=False)
    content = final_message(got)["content"]
    assert content[0]["content"][0]["encrypted_content"] == blob
    assert content[1]["input"] == {"content": text}
    endless = b"event: content_block_delta\ndata: " + b"x" * (17 * 1024 * 1024)
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS), endless))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        got = client.read_all(timeout=10)
    assert got[-1]["type"] == "error" and "longer than" in got[-1]["error"]["message"]


def test_idle_stream_times_out_with_an_error_event(make_proxy, fake_upstream):
    server = make_proxy(passthrough=True, idle_timeout=0.5)
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS), Fault("hang")))
    with StreamClient(server.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "timeout_error"
    assert "0.5 s" in events[-1]["error"]["message"]


def test_slow_first_byte_gets_pings_and_one_message_start(make_proxy, fake_upstream):
    server = make_proxy(passthrough=True, ping_interval=0.2)
    fake_upstream.push(sse(Sleep(0.7), events_bytes(HEAD_EVENTS + TAIL_EVENTS)))
    with StreamClient(server.url, minimal_request(stream=True, model="claude-x"),
                      headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    types = [e["type"] for e in events]
    assert types.count("message_start") == 1 and "ping" in types[:3]
    assert events[0]["message"]["model"] == "claude-x"
    assert final_message(events)["content"] == [{"type": "text", "text": "Hello there"}]
    # The upstream's message_start came after ours: its input and cache counts reach the client in
    # the message_delta (FIELD-NOTES 8: Claude Code tracks its context with them).
    [delta] = [e for e in events if e["type"] == "message_delta"]
    assert delta["usage"] == {"input_tokens": 25, "cache_read_input_tokens": 7, "output_tokens": 15}
    assert final_message(events)["usage"]["input_tokens"] == 25
    # Ours, before the upstream said anything: the proxy's estimate, not 0 (a review: Claude Code
    # sizes its context by it until the message_delta).
    estimate = input_estimate(minimal_request(stream=True, model="claude-x"))
    assert estimate > 0 and events[0]["message"]["usage"]["input_tokens"] == estimate


def test_json_answer_to_a_stream_request_becomes_a_stream(through, fake_upstream):
    fake_upstream.push(json_reply(ANSWER))
    with StreamClient(through.url, minimal_request(stream=True, model="claude-y"),
                      headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    assert message["content"] == [{"type": "text", "text": "hi"}] and message["model"] == "claude-y"


def test_client_disconnect_frees_the_upstream(through, fake_upstream):
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS), Fault("hang")))
    client = StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY})
    client.read_until("content_block_delta", timeout=3)
    closed = time.monotonic()
    client.close()
    upstream_closed = fake_upstream.wait_closed(3)
    assert upstream_closed is not None and upstream_closed - closed <= 1.0


# ---------------------------------------------------------------------------
# count_tokens.


def test_count_tokens_is_forwarded_with_the_upstream_model(make_proxy, fake_upstream):
    server = make_proxy(passthrough=True, model="upstream-model-x")
    fake_upstream.push(json_reply({"input_tokens": 42}))
    resp = post(server, {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]},
                path="/v1/messages/count_tokens")
    assert resp.status == 200 and resp.json == {"input_tokens": 42}
    assert fake_upstream.last.path == "/v1/messages/count_tokens"
    assert fake_upstream.last.json["model"] == "upstream-model-x"


def test_count_tokens_gets_the_betas_the_messages_call_gets(make_proxy, fake_upstream):
    """A body using a beta feature (context_management) is refused by a count without the beta."""
    provider = Provider("native", fake_upstream.url, api="messages", anthropic_beta="forward")
    server = make_proxy(providers=(provider,), routes=(Route("*", RouteTarget("native")),), upstream=None)
    fake_upstream.push(json_reply({"input_tokens": 42}))
    resp = post(server, {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]},
                path="/v1/messages/count_tokens", headers={"anthropic-beta": "context-management-2025-06-27"})
    assert resp.status == 200 and fake_upstream.last.headers.get("anthropic-beta") == "context-management-2025-06-27"


@pytest.mark.parametrize("status", [400, 404, 405, 422, 501])
def test_count_tokens_falls_back_to_the_local_estimate(through, fake_upstream, status):
    fake_upstream.push(json_reply({"type": "error", "error": {"type": "not_found_error", "message": "no"}},
                                  status=status))
    text = "count these words please " * 40
    resp = post(through, {"model": "claude-x", "messages": [{"role": "user", "content": text}]},
                path="/v1/messages/count_tokens")
    assert resp.status == 200, resp
    assert resp.json["input_tokens"] >= len(text) // 5


def test_a_server_without_count_tokens_is_not_asked_again(make_proxy, fake_upstream):
    """Probe AH 7: Ollama and LM Studio have no /v1/messages/count_tokens: each call paid a round
    trip and a 404 before the local estimate. Asked once; a 400 (about that body) is asked again."""
    server = make_proxy(passthrough=True, model="no-counter-model")
    body = {"model": "claude-x", "messages": [{"role": "user", "content": "count these " * 40}]}
    fake_upstream.push(Reply(404, (("Content-Type", "text/plain"),), [b"404 page not found"]))
    before = fake_upstream.request_count
    for _ in range(3):
        resp = post(server, body, path="/v1/messages/count_tokens")
        assert resp.status == 200 and resp.json["input_tokens"] >= 80, resp
    assert fake_upstream.request_count - before == 1
    other = make_proxy(passthrough=True, model="refused-body-model")
    fake_upstream.push(json_reply({"type": "error", "error": {"type": "invalid_request_error", "message": "no"}},
                                  status=400), json_reply({"input_tokens": 77}))
    assert post(other, body, path="/v1/messages/count_tokens").status == 200
    assert post(other, body, path="/v1/messages/count_tokens").json == {"input_tokens": 77}
    # A 404 about the model (vLLM's "The model `x` does not exist."): the server has a counter (AJ R3).
    third = make_proxy(passthrough=True, model="unknown-to-vllm")
    fake_upstream.push(json_reply({"type": "error", "error": {"type": "NotFoundError",
                                                               "message": "The model `unknown-to-vllm` does not exist."}},
                                  status=404), json_reply({"input_tokens": 78}))
    assert post(third, body, path="/v1/messages/count_tokens").status == 200
    assert post(third, body, path="/v1/messages/count_tokens").json == {"input_tokens": 78}


def test_count_tokens_falls_back_on_a_page_that_is_no_count(through, fake_upstream):
    """A server that answers every path with its HTML index: no count there, ever."""
    fake_upstream.push(Reply(200, (("Content-Type", "text/html"),), [b"<html><body>Welcome</body></html>"]))
    resp = post(through, {"model": "claude-x", "messages": [{"role": "user", "content": "hi " * 200}]},
                path="/v1/messages/count_tokens")
    assert resp.status == 200 and resp.json["input_tokens"] >= 100, resp


@pytest.mark.parametrize("status,error_type", [(401, "authentication_error"), (403, "permission_error"),
                                               (429, "rate_limit_error"), (503, "api_error")])
def test_count_tokens_passes_on_a_key_problem_or_a_passing_one(through, fake_upstream, status, error_type):
    fake_upstream.push(json_reply({"type": "error", "error": {"type": error_type, "message": "no"}}, status=status))
    resp = post(through, {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]},
                path="/v1/messages/count_tokens")
    assert resp.status == status, resp


@pytest.mark.parametrize("counted", [-7, 1.5, "70", True, None])
def test_count_tokens_refuses_an_upstream_count_that_is_no_count(through, fake_upstream, records, counted):
    """A negative, fractional, string or bool count never reaches the client: the local estimate
    serves, as for an upstream without count_tokens (pipeline._upstream_count says why not a 502)."""
    fake_upstream.push(json_reply({"input_tokens": counted}))
    text = "count these words please " * 40
    resp = post(through, {"model": "claude-x", "messages": [{"role": "user", "content": text}]},
                path="/v1/messages/count_tokens")
    assert resp.status == 200, resp
    assert type(resp.json["input_tokens"]) is int and resp.json["input_tokens"] >= len(text) // 5
    assert record_for(records, resp.headers["request-id"]).local


def test_stream_usage_that_is_no_count_leaves_message_starts_counts():
    """A bad count in a message_delta (negative, a string, a float) is ignored: message_start's stands,
    but for the output count, which message_start only holds a placeholder of: not known then."""
    from claudeproxy.apis.messages import MessagesFold

    fold = MessagesFold(message_id="msg_1", model="claude-x", input_tokens=0)
    bad = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
           "usage": {"input_tokens": -100000, "output_tokens": "70", "cache_read_input_tokens": 1.9,
                     "cache_creation_input_tokens": True}}
    fold.feed_line(events_bytes(HEAD_EVENTS + [bad]))
    assert fold.counts == {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 7}
    assert fold.usage == {"input_tokens": 25, "cache_read_input_tokens": 7}


# ---------------------------------------------------------------------------
# No second relay: the messages API is one upstream API among three.


def test_passthrough_has_no_module_of_its_own() -> None:
    import importlib.util

    assert importlib.util.find_spec("claudeproxy.passthrough") is None
    assert importlib.util.find_spec("claudeproxy.streaming") is None


def test_quota_probe_and_max_tokens_0_are_answered_here_but_by_anthropic(through, fake_upstream, monkeypatch):
    """Probe AH 6: forwarded to a local server's /v1/messages, max_tokens 0 was Ollama's and vLLM's
    400, and the probe a prompt evaluation on a CPU. Both are answered here, as on the translated APIs;
    Anthropic's own API still answers them (its answer to the probe carries the account's limits)."""
    import claudeproxy.pipeline as pipeline

    answer = post(through, quota_probe())
    assert answer.status == 200 and answer.json["content"] == [{"type": "text", "text": "ok"}], answer
    warm = post(through, minimal_request(max_tokens=0))
    assert warm.status == 200 and warm.json["stop_reason"] == "max_tokens" and warm.json["content"] == []
    fake_upstream.push(json_reply(ANSWER))
    assert post(through, minimal_request(max_tokens=1)).status == 200  # a one-token question goes
    assert len(fake_upstream.requests) == 1
    monkeypatch.setattr(pipeline, "is_anthropic_host", lambda url: True)
    fake_upstream.push(json_reply(ANSWER))
    assert post(through, quota_probe()).status == 200
    assert len(fake_upstream.requests) == 2


# ---------------------------------------------------------------------------
# A warm prompt cache upstream (issue 8): Claude Code's billing line stays home.

BILLING = "x-anthropic-billing-header: cc_version=2.1.331.f2b; cc_entrypoint=cli;"


def test_billing_line_does_not_reach_a_non_anthropic_upstream(through, fake_upstream):
    system = [{"type": "text", "text": BILLING},
              {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
              {"type": "text", "text": BILLING + "\nLong instructions."}]
    fake_upstream.push(json_reply(ANSWER), json_reply(ANSWER))
    post(through, minimal_request(system=system))
    assert fake_upstream.last.json["system"] == [
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Long instructions."}]
    post(through, minimal_request(system=BILLING + "\nPlain system text."))
    assert fake_upstream.last.json["system"] == "Plain system text."


def test_billing_line_still_reaches_anthropic_itself() -> None:
    from claudeproxy.apis.base import ClientRequest
    from claudeproxy.apis.messages import MessagesApi
    from claudeproxy.model_facts import ModelFacts
    from claudeproxy.routing import Target

    target = Target(Provider("anthropic", "https://api.anthropic.com", api="messages"), "claude-opus-4-1",
                    ModelFacts(), None, None, "messages")
    body = minimal_request(system=[{"type": "text", "text": BILLING}])
    ex = MessagesApi().prepare(ClientRequest(body, "claude-opus-4-1", False, {}), target, None)
    assert json.loads(ex.body)["system"] == [{"type": "text", "text": BILLING}]


def test_an_event_without_a_type_is_skipped_or_named_by_its_event_line(through, fake_upstream):
    nameless = b'data: {"index": 0, "delta": {"type": "text_delta", "text": "lost"}}\n\n'
    named = b'event: content_block_delta\ndata: {"index": 0, "delta": {"type": "text_delta", "text": "!"}}\n\n'
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS), nameless, named, events_bytes(TAIL_EVENTS)))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["content"] == [{"type": "text", "text": "Hello! there"}]


# ---------------------------------------------------------------------------
# The block grammar of a forwarded stream: the upstream is held to Anthropic's.


def _start(index: int, block_type: str, **block: Any) -> Dict[str, Any]:
    defaults = {"text": {"text": ""}, "thinking": {"thinking": "", "signature": ""},
                "tool_use": {"id": "toolu_01A", "name": "Bash", "input": {}}}[block_type]
    return {"type": "content_block_start", "index": index, "content_block": {"type": block_type, **defaults, **block}}


def _delta(index: int, kind: str, **fields: Any) -> Dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": {"type": kind, **fields}}


def _stop(index: int) -> Dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


TOOL_USE_END = [{"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                 "usage": {"output_tokens": 40}}, {"type": "message_stop"}]
THREE_BLOCKS = [
    MESSAGE_START,
    _start(0, "thinking"), _delta(0, "thinking_delta", thinking="List it."), _delta(0, "signature_delta", signature="sig=="),
    _stop(0),
    _start(1, "text"), _delta(1, "text_delta", text="Listing."), _stop(1),
    _start(2, "tool_use"), _delta(2, "input_json_delta", partial_json='{"command": '),
    _delta(2, "input_json_delta", partial_json='"ls"}'), _stop(2),
] + TOOL_USE_END


def test_a_thinking_text_and_tool_use_stream_is_forwarded_unchanged(through, fake_upstream):
    first = {**MESSAGE_START, "message": {**MESSAGE_START["message"], "id": "msg_three_blocks"}}
    fake_upstream.push(sse(events_bytes([first] + THREE_BLOCKS[1:])))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    start = {**first, "message": {**first["message"], "model": "claude-test"}}
    assert events == [start] + THREE_BLOCKS[1:]
    assert [b["type"] for b in final_message(events)["content"]] == ["thinking", "text", "tool_use"]


# (the upstream's events after its message_start, how many of them reach the client, the error's words)
BROKEN_ORDERS = {
    "delta before start": ([_delta(0, "text_delta", text="Hi"), _start(0, "text"), _stop(0)], 0,
                           "content_block_delta for block 0 before its content_block_start"),
    "stop before start": ([_stop(0), _start(0, "text"), _delta(0, "text_delta", text="Hi"), _stop(0)], 0,
                          "content_block_stop for block 0 before its content_block_start"),
    # An empty first block waits with the message_start for what follows it: nothing went out yet.
    "delta for a later block": ([_start(0, "text"), _delta(1, "text_delta", text="Hi"), _stop(0)], 0,
                                "content_block_delta for block 1 before its content_block_start"),
    "second start": ([_start(0, "text"), _delta(0, "text_delta", text="Hi"), _start(0, "tool_use"),
                      _delta(0, "input_json_delta", partial_json="{}"), _stop(0)], 2,
                     "a second content_block_start for block 0"),
    "delta after stop": ([_start(0, "text"), _stop(0), _delta(0, "text_delta", text="late")], 2,
                         "content_block_delta for block 0 after its content_block_stop"),
    "delta of another block type": ([_start(0, "thinking"), _delta(0, "text_delta", text="Hi"), _stop(0)], 0,
                                    "text_delta for block 0, which is a thinking block"),
    "tool input in a text block": ([_start(0, "text"), _delta(0, "input_json_delta", partial_json="{}"), _stop(0)], 0,
                                   "input_json_delta for block 0, which is a text block"),
    "an index skipped": ([_start(0, "text"), _stop(0), _start(2, "text"), _stop(2)], 2,
                         "content_block_start for block 2 where block 1 comes next"),
    "not starting at 0": ([_start(1, "text"), _stop(1)], 0, "content_block_start for block 1 where block 0 comes next"),
    "a start without its block": ([{"type": "content_block_start", "index": 0}, _stop(0)], 0,
                                  "content_block_start for block 0 without a content_block"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_ORDERS))
def test_a_block_event_out_of_order_ends_the_stream_with_one_error(through, fake_upstream, case):
    """Forwarded as it came, a delta for a block never started (or a second start, or a delta its block
    does not take) would give the client a broken grammar, which the SDK's accumulator crashes on."""
    body, passed, words = BROKEN_ORDERS[case]
    fake_upstream.push(sse(events_bytes([MESSAGE_START] + body + TOOL_USE_END)))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        if not passed:
            # Broken before any block went out: nothing had reached the client (message_start, and an
            # empty first block, wait for the next event), so the error is a plain HTTP one.
            assert client.status == 502
            assert client.json["error"] == {"type": "api_error", "message": f"upstream stream broke the event order: {words}"}
            return
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events)
    assert [e["type"] for e in events] == ["message_start"] + [e["type"] for e in body[:passed]] + ["error"]
    assert events[1:-1] == body[:passed]
    assert events[-1]["error"] == {"type": "api_error",
                                   "message": f"upstream stream broke the event order: {words}"}


# ---------------------------------------------------------------------------
# The model list of an Anthropic-compatible upstream (paged there too).


def test_models_of_a_messages_upstream_every_page_with_its_display_names(through, fake_upstream):
    """Its list is paged (20 a page by default): each page is asked for, with the display names it gives."""
    fake_upstream.push(json_reply({"data": [{"type": "model", "id": "claude-a", "display_name": "Claude A",
                                             "created_at": "2025-01-02T03:04:05Z"}],
                                   "has_more": True, "first_id": "claude-a", "last_id": "claude-a"}))
    fake_upstream.push(json_reply({"data": [{"type": "model", "id": "claude-b"}],
                                   "has_more": False, "first_id": "claude-b", "last_id": "claude-b"}))
    resp = request(through.url, "GET", "/v1/models", headers={"x-api-key": CLIENT_KEY})
    assert resp.status == 200, resp
    assert [(m["id"], m["display_name"]) for m in resp.json["data"]] == [("claude-a", "Claude A"), ("claude-b", "claude-b")]
    assert resp.json["data"][0]["created_at"] == "2025-01-02T03:04:05Z"
    first, second = fake_upstream.requests
    assert first.path == "/v1/models?limit=1000"
    assert second.path == "/v1/models?limit=1000&after_id=claude-a"


def test_models_of_a_messages_upstream_stop_at_a_cursor_that_never_ends(through, fake_upstream):
    for _ in range(8):
        fake_upstream.push(json_reply({"data": [{"id": "claude-a"}], "has_more": True, "last_id": "claude-a"}))
    resp = request(through.url, "GET", "/v1/models", headers={"x-api-key": CLIENT_KEY})
    assert resp.status == 200 and [m["id"] for m in resp.json["data"]] == ["claude-a"]
    assert len(fake_upstream.requests) == 5


@pytest.mark.parametrize("kind", [
    'x\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    '"delta":{"type":"text_delta","text":"INJECTED"}}\n\nevent: x',
    "a\rb", "has space", "", "é",
])
def test_an_event_type_that_is_no_event_name_is_not_passed_on(kind: str) -> None:
    """The type goes out as the "event:" line: a line break in it would write events the fold
    never checked or counted (a forged delta, message_stop or usage)."""
    from claudeproxy.apis.messages import MessagesFold
    from claudeproxy.sse import encode_event

    fold = MessagesFold(message_id="msg_1", model="claude-x", input_tokens=0)
    events = fold.feed_line(events_bytes(HEAD_EVENTS) + b"event: x\ndata: " + json.dumps({"type": kind}).encode() + b"\n\n")
    written = b"".join(encode_event(e) for e in events)
    assert b"INJECTED" not in written and written.count(b"event: ") == len(HEAD_EVENTS)
    assert fold.skipped_events == 1


def test_an_unknown_event_with_a_plain_name_is_still_passed_on() -> None:
    from claudeproxy.apis.messages import MessagesFold

    fold = MessagesFold(message_id="msg_1", model="claude-x", input_tokens=0)
    events = fold.feed_line(events_bytes(HEAD_EVENTS + [{"type": "future_event.v2", "x": 1}]))
    assert events[-1] == {"type": "future_event.v2", "x": 1}


# ---------------------------------------------------------------------------
# Events missing what the SDKs need, and a message that ends with blocks open: the client gets a
# whole answer or an error, never a Python exception inside get_final_message().

_BARE_START = {"type": "message_start"}
_NO_USAGE_DELTA = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}}
_TEXT = [_start(0, "text"), _delta(0, "text_delta", text="Hi"), _stop(0)]
MISSING_FIELDS = {
    "message_delta without usage": [MESSAGE_START] + _TEXT + [_NO_USAGE_DELTA, {"type": "message_stop"}],
    "message_start usage null": [{**MESSAGE_START, "message": {**MESSAGE_START["message"], "usage": None}}] + _TEXT
    + TAIL_EVENTS[2:],
    "message_start without usage": [{**MESSAGE_START, "message": {
        k: v for k, v in MESSAGE_START["message"].items() if k != "usage"}}] + _TEXT + TAIL_EVENTS[2:],
    "message_start without content": [{**MESSAGE_START, "message": {
        k: v for k, v in MESSAGE_START["message"].items() if k != "content"}}] + _TEXT + TAIL_EVENTS[2:],
    "bare message_start": [_BARE_START] + _TEXT + TAIL_EVENTS[2:],
    "text block without text": [MESSAGE_START, {"type": "content_block_start", "index": 0, "content_block": {
        "type": "text"}}, _delta(0, "text_delta", text="Hi"), _stop(0)] + TAIL_EVENTS[2:],
    "thinking block without its fields": [MESSAGE_START, {"type": "content_block_start", "index": 0, "content_block": {
        "type": "thinking"}}, _delta(0, "thinking_delta", thinking="Hm"), _stop(0)] + _TEXT[:0] + TAIL_EVENTS[2:],
    "tool_use block without input": [MESSAGE_START, {"type": "content_block_start", "index": 0, "content_block": {
        "type": "tool_use", "id": "toolu_01A", "name": "Bash"}}, _stop(0)] + TOOL_USE_END,
}


def _sdk_final_message(server: Any) -> Any:
    anthropic = pytest.importorskip("anthropic")
    # Closed here: left to the garbage collector, its pooled socket may go before the client that
    # would close it (a ResourceWarning at the module's end, as the collector's timing has it).
    with anthropic.Anthropic(base_url=server.url, api_key=CLIENT_KEY, max_retries=0, timeout=10) as client, \
            client.messages.stream(model="claude-test", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
        return s.get_final_message()


@pytest.mark.parametrize("case", sorted(MISSING_FIELDS))
def test_events_missing_what_the_sdks_need_reach_the_client_whole(through, fake_upstream, case):
    fake_upstream.push(sse(events_bytes(MISSING_FIELDS[case])))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    start = events[0]["message"]
    assert start["content"] == [] and start["model"] == "claude-test"
    assert type(start["usage"]["input_tokens"]) is int and type(start["usage"]["output_tokens"]) is int
    delta = next(e for e in events if e["type"] == "message_delta")
    assert type(delta["usage"]["output_tokens"]) is int
    for block in final_message(events)["content"]:
        needed = {"text": ("text",), "thinking": ("thinking", "signature"), "tool_use": ("input",)}[block["type"]]
        assert all(block.get(k) is not None for k in needed), block


@pytest.mark.parametrize("case", sorted(MISSING_FIELDS))
def test_events_missing_what_the_sdks_need_reach_the_sdk_whole(through, fake_upstream, case):
    """What the user's program sees: the SDK's own accumulator, which crashed on each of these (a test
    of its own: the SDK is the conformance tier's, and the events' checks above need none)."""
    pytest.importorskip("anthropic")
    fake_upstream.push(sse(events_bytes(MISSING_FIELDS[case])))
    sdk = _sdk_final_message(through)
    assert sdk.usage.output_tokens >= 0 and sdk.stop_reason in ("end_turn", "tool_use")


def test_filled_usage_is_no_count_the_upstream_reported(through, fake_upstream, records):
    """A bare message_start and a message_delta without usage: the client gets the proxy's estimates
    (it got 0s: probe C), the record says unknown."""
    text = [_start(0, "text"), _delta(0, "text_delta", text="x" * 38), _stop(0)]
    fake_upstream.push(sse(events_bytes([_BARE_START] + text + [_NO_USAGE_DELTA, {"type": "message_stop"}])))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
        request_id = client.headers["request-id"]
    estimate = input_estimate(minimal_request(stream=True))
    assert estimate > 0 and events[0]["message"]["usage"] == {"input_tokens": estimate, "output_tokens": 0}
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["usage"]["output_tokens"] == 10  # a quarter of its 38 characters, rounded up
    rec = record_for(records, request_id)
    assert (rec.input_tokens, rec.output_tokens, rec.cost_usd) == (None, None, None)


def test_a_tool_call_still_open_when_the_message_ends_is_an_error(through, fake_upstream):
    """Its input may be cut ('rm -rf /tmp/x/y' without the rest): never a finished tool_use."""
    cut = [MESSAGE_START, _start(0, "tool_use"), _delta(0, "input_json_delta", partial_json='{"command": "rm -rf /tmp/x/y')]
    for end in (TOOL_USE_END, TOOL_USE_END[1:]):  # with and without message_delta
        fake_upstream.push(sse(events_bytes(cut + end)))
        with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
            events = client.read_all(timeout=5)
        assert_valid_event_sequence(events)
        assert [e["type"] for e in events] == ["message_start", "content_block_start", "content_block_delta", "error"]
        assert "tool_use block 0 still open" in events[-1]["error"]["message"]


def test_a_context_overflow_said_as_an_event_names_no_status_nobody_sent(through, fake_upstream):
    """Probe AH 8: llama.cpp's `event: error` at a stream's start became "prompt is too long: 50000
    tokens > 32768 maximum (upstream 502: ...)": it sent a 200 and the event, no 502."""
    error = {"code": 400, "message": "request (50000 tokens) exceeds the available context size (32768 tokens), "
             "try increasing it", "type": "exceed_context_size_error", "n_prompt_tokens": 50000, "n_ctx": 32768}
    fake_upstream.push(sse(b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"))
    resp = post(through, minimal_request(stream=True))
    assert resp.status == 400, resp
    assert resp.json["error"]["message"].startswith("prompt is too long: 50000 tokens > 32768 maximum (upstream: ")


def test_a_tool_call_whose_whole_input_came_is_closed_though_its_block_was_not(through, fake_upstream):
    """Probe AH 3: a gateway's stream (the shape LiteLLM #34692 quotes) ends the message right after a
    call's one delta, without its content_block_stop: the input is whole, and the stream failed, every
    retry of Claude Code's too. The block is closed; a cut input still fails (above)."""
    whole = [MESSAGE_START, _start(0, "tool_use"),
             _delta(0, "input_json_delta", partial_json='{"command": "ls -la", "n": [1, {"x": "}"}]}')]
    for end in (TOOL_USE_END, TOOL_USE_END[1:]):  # with and without message_delta
        fake_upstream.push(sse(events_bytes(whole + end)))
        with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
            events = client.read_all(timeout=5)
        assert_valid_event_sequence(events, allow_error=False)
        block = final_message(events)["content"][0]
        assert block["type"] == "tool_use" and block["input"] == {"command": "ls -la", "n": [1, {"x": "}"}]}
    fake_upstream.push(sse(events_bytes(whole + TOOL_USE_END)))  # a JSON request the upstream streamed
    resp = post(through, minimal_request())
    assert resp.status == 200 and resp.json["content"][0]["input"]["command"] == "ls -la", resp
    # Not whole (review AJ R6): text after the object (the client joins it in: no JSON), or no input at all.
    for deltas in ([_delta(0, "input_json_delta", partial_json='{"command": "ls"} and more')],
                   [_delta(0, "input_json_delta", partial_json='{"command": "ls"}'),
                    _delta(0, "input_json_delta", partial_json='}')],
                   []):
        fake_upstream.push(sse(events_bytes([MESSAGE_START, _start(0, "tool_use")] + deltas + TOOL_USE_END)))
        with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
            events = client.read_all(timeout=5)
        assert events[-1]["type"] == "error" and "tool_use block 0 still open" in events[-1]["error"]["message"]


def test_a_text_block_still_open_when_the_message_ends_is_closed(through, fake_upstream):
    fake_upstream.push(sse(events_bytes([MESSAGE_START, _start(0, "text"), _delta(0, "text_delta", text="Hi")]
                                        + TAIL_EVENTS[2:])))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    assert [e["type"] for e in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert final_message(events)["content"] == [{"type": "text", "text": "Hi"}]


def test_message_stop_without_message_delta_gets_one(through, fake_upstream, records):
    """The SDKs take the stop reason from message_delta only: without one it was None."""
    fake_upstream.push(sse(events_bytes([MESSAGE_START] + _TEXT + [{"type": "message_stop"}])))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
        request_id = client.headers["request-id"]
    assert_valid_event_sequence(events, allow_error=False)
    assert events[-2] == {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                          "usage": {"output_tokens": 1}}  # "Hi": a quarter of its characters, rounded up
    assert record_for(records, request_id).output_tokens is None  # the client's is an estimate
    assert final_message(events)["stop_reason"] == "end_turn"
    assert record_for(records, request_id).stop_reason == "end_turn"


# ---------------------------------------------------------------------------
# The upstream's rate limits reach the client (Claude Code warns of usage limits by the unified ones).

RATE_LIMITS = (("anthropic-ratelimit-requests-remaining", "49"),
               ("Anthropic-RateLimit-Unified-5h-Utilization", "0.93"),
               ("anthropic-ratelimit-unified-reset", "1767225600"))
NOT_RELAYED = (("anthropic-ratelimit-tokens-reset", "x" * 300), ("x-upstream-internal", "secret"))


@pytest.mark.parametrize("answer", ["json", "stream", "json to a stream request", "429"])
def test_rate_limit_headers_are_passed_back(through, fake_upstream, answer):
    head = RATE_LIMITS + NOT_RELAYED
    if answer == "stream":
        fake_upstream.push(Reply(200, (("Content-Type", "text/event-stream"),) + head,
                                 [events_bytes(HEAD_EVENTS + TAIL_EVENTS)], chunked=True))
    elif answer == "429":
        fake_upstream.push(json_reply({"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}},
                                      status=429, headers=head + (("x-should-retry", "false"),)))
    else:
        fake_upstream.push(json_reply(ANSWER, headers=head))
    if answer in ("stream", "json to a stream request"):
        with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
            assert client.status == 200
            headers = {k.lower(): v for k, v in client.headers.items()}
            client.read_all(timeout=5)
    else:
        resp = post(through, minimal_request())
        assert resp.status == (429 if answer == "429" else 200), resp
        headers = resp.headers
    assert headers["anthropic-ratelimit-requests-remaining"] == "49"
    assert headers["anthropic-ratelimit-unified-5h-utilization"] == "0.93"
    assert headers["anthropic-ratelimit-unified-reset"] == "1767225600"
    assert "anthropic-ratelimit-tokens-reset" not in headers and "x-upstream-internal" not in headers


def test_rate_limit_header_values_are_checked() -> None:
    from claudeproxy.apis.messages import ratelimit_headers

    assert ratelimit_headers({"anthropic-ratelimit-a": "1\r\nSet-Cookie: x", "anthropic-ratelimit-b": "\x01",
                              "anthropic-ratelimit-c": " 5 "}) == (("anthropic-ratelimit-c", "5"),)


def test_an_input_count_the_upstream_never_gave_is_unknown_not_0(through, fake_upstream, records):
    """message_start without usage, message_delta with output_tokens only: the input is not known."""
    fake_upstream.push(sse(events_bytes([_BARE_START] + _TEXT + TAIL_EVENTS[2:])))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        client.read_all(timeout=5)
        request_id = client.headers["request-id"]
    rec = record_for(records, request_id)
    assert (rec.input_tokens, rec.output_tokens, rec.cost_usd) == (None, 15, None)


_TOOL_CALL = [_start(1, "tool_use"), _delta(1, "input_json_delta", partial_json='{"command": "ls"}'), _stop(1)]
_SERVER_TOOL = [_start(1, "tool_use", type="server_tool_use", id="srvtoolu_1", name="web_search"), _stop(1)]


@pytest.mark.parametrize("blocks, end, reason", [
    (_TEXT + _TOOL_CALL, [{"type": "message_stop"}], "tool_use"),
    (_TEXT + _TOOL_CALL, [{"type": "message_delta", "delta": None, "usage": {"output_tokens": 9}},
                          {"type": "message_stop"}], "tool_use"),
    (_TEXT + _SERVER_TOOL, [{"type": "message_stop"}], "end_turn"),  # Anthropic's to run, not the client's
])
def test_an_end_the_upstream_did_not_say_follows_its_blocks(through, fake_upstream, records, blocks, end, reason):
    """Servers that end with message_stop alone: a tool call is still for the client to run (a tool
    runner that reads end_turn stops with the call unanswered)."""
    fake_upstream.push(sse(events_bytes([MESSAGE_START] + blocks + end)))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
        request_id = client.headers["request-id"]
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["stop_reason"] == reason
    assert record_for(records, request_id).stop_reason == reason


@pytest.mark.parametrize("status", [401, 403])
def test_count_tokens_says_whose_key_the_upstream_refused(through, fake_upstream, status):
    """Claude Code counts tokens in every interactive session: a bare 401 there reads as its own
    login gone, as it would on /v1/messages."""
    fake_upstream.push(json_reply({"type": "error", "error": {"type": "authentication_error", "message": "bad key"}},
                                  status=status))
    resp = post(through, {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]},
                path="/v1/messages/count_tokens")
    assert resp.status == status and resp.headers.get("x-should-retry") == "false"
    assert "the key claudeproxy sends to provider" in resp.json["error"]["message"]
    assert UPSTREAM_KEY not in resp.body.decode()


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_anthropics_own_401_for_the_proxys_key_does_not_send_claude_code_to_login(through, fake_upstream, path):
    """Claude Code shows any error naming x-api-key as "Not logged in · Please run /login", and Anthropic's
    own 401 says "invalid x-api-key": the user's login was fine, the key at fault the proxy's (probe Y, D4)."""
    fake_upstream.push(json_reply({"type": "error", "error": {"type": "authentication_error",
                                                              "message": "invalid x-api-key"}}, status=401))
    resp = post(through, minimal_request(), path=path)
    assert resp.status == 401
    assert resp.json["error"]["message"] == ("upstream 401: invalid API key (the key claudeproxy sends to provider "
                                             "'upstream')"), resp.json
    assert "x-api-key" not in resp.json["error"]["message"].lower()


def test_an_overload_right_after_message_start_is_retried(make_proxy, fake_upstream):
    """Anthropic may send message_start and then an overloaded_error event: nothing the client needs
    went out yet, so the proxy asks again (the upstream's message_start waits for the next event)."""
    server = make_proxy(passthrough=True, retries=1)
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    fake_upstream.push(sse(events_bytes([MESSAGE_START, {"type": "ping"}, overloaded])),
                       sse(events_bytes(HEAD_EVENTS + TAIL_EVENTS)))
    with StreamClient(server.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    assert [e["type"] for e in events][:3] == ["message_start", "ping", "content_block_start"]
    assert final_message(events)["content"] == [{"type": "text", "text": "Hello there"}]
    assert len(fake_upstream.requests) == 2


@pytest.mark.parametrize("block", [{"type": "text", "text": ""}, {"type": "thinking", "thinking": "", "signature": ""}])
def test_an_overload_right_after_the_first_empty_block_start_is_retried(make_proxy, fake_upstream, block):
    """Anthropic opens its first block right after message_start: an overload said then went to the
    client as an error mid-stream, where the same moment of a Chat or Responses stream is retried and
    falls back (probe U 5). The empty block waits with the message_start for what follows it."""
    server = make_proxy(passthrough=True, retries=1)
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    empty = {"type": "content_block_start", "index": 0, "content_block": block}
    fake_upstream.push(sse(events_bytes([MESSAGE_START, empty, {"type": "ping"}, overloaded])),
                       sse(events_bytes(HEAD_EVENTS + TAIL_EVENTS)))
    with StreamClient(server.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    assert [e["type"] for e in events].count("message_start") == 1
    assert final_message(events)["content"] == [{"type": "text", "text": "Hello there"}]
    assert len(fake_upstream.requests) == 2
    # A block that says something (a tool's name) goes out at once: an error after it is mid-stream.
    tool = {"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}}
    fake_upstream.push(sse(events_bytes([MESSAGE_START, tool, overloaded])))
    with StreamClient(server.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert [e["type"] for e in events] == ["message_start", "content_block_start", "error"]
    assert len(fake_upstream.requests) == 3


def test_a_held_empty_block_the_ping_sends_is_not_the_first_token(make_proxy, fake_upstream):
    """A first token slower than --ping-interval: the ping begins the stream with the held
    message_start and empty block start, which timed the first token at the ping (review X)."""
    records: List[Any] = []
    server = make_proxy(passthrough=True, ping_interval=0.2, metrics_sink=records.append)
    fake_upstream.push(sse(events_bytes(HEAD_EVENTS[:3]), Sleep(0.8), events_bytes(HEAD_EVENTS[3:] + TAIL_EVENTS)))
    with StreamClient(server.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
        rec = record_for(records, client.headers["request-id"])
    assert_valid_event_sequence(events, allow_error=False)
    assert rec.ttft_ms is not None and rec.ttft_ms >= 700, rec.ttft_ms


@pytest.mark.parametrize("delta_output", [9, 0])
def test_a_passthrough_json_answer_to_a_stream_request_counts_its_output(make_proxy, fake_upstream, delta_output):
    """A forwarded answer in JSON to a stream request carries the whole count; a message_delta's count
    stands even below message_start's placeholder (0 recorded as 1: a review)."""
    records: List[Any] = []
    server = make_proxy(passthrough=True, metrics_sink=records.append)
    fake_upstream.push(json_reply({**ANSWER, "usage": {"input_tokens": 25, "output_tokens": 9}}))
    first = post(server, minimal_request(stream=True))
    start = {"type": "message_start", "message": {**ANSWER, "content": [], "stop_reason": None,
                                                   "usage": {"input_tokens": 25, "output_tokens": 1}}}
    fake_upstream.push(sse(events_bytes([start, {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                                 "usage": {"output_tokens": delta_output}}, {"type": "message_stop"}])))
    second = post(server, minimal_request(stream=True))
    assert (first.status, second.status) == (200, 200)
    assert record_for(records, first.headers["request-id"]).output_tokens == 9
    assert record_for(records, second.headers["request-id"]).output_tokens == delta_output


@pytest.mark.parametrize("status", [400, 404])
def test_anthropics_own_count_tokens_error_reaches_the_client(make_proxy, fake_upstream, status):
    """The local estimate stands in for a server without a counter; Anthropic has one, and its 404 is a
    model it does not have: a 200 estimate hid it (an SDK probe). Reached through a forwarding proxy."""
    server = make_proxy(passthrough=True, upstream="http://api.anthropic.com",
                        proxy=f"http://127.0.0.1:{fake_upstream.port}")
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    fake_upstream.push(json_reply({"type": "error", "error": {"type": kind, "message": "model: nope"}}, status=status))
    resp = post(server, {"model": "claude-nope", "messages": [{"role": "user", "content": "hi"}]},
                path="/v1/messages/count_tokens")
    assert (resp.status, resp.json["error"]["type"]) == (status, kind), resp
    assert fake_upstream.requests[-1].path.endswith("/v1/messages/count_tokens")


# ---------------------------------------------------------------------------
# An upstream that breaks the grammar in ways the client need not see (probe R, a chaos soak).


def _passed_on(events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    from claudeproxy.apis.messages import MessagesFold

    fold = MessagesFold(message_id="msg_1", model="claude-x", input_tokens=0)
    out = fold.feed_line(events_bytes(events))
    tail, error = fold.end(clean=True)
    assert error is None
    return out + tail


def test_a_second_message_delta_merges_into_the_first() -> None:
    # Two went out as they came: the SDKs' grammar has one, with the stop reason and the final counts.
    second = {"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
              "usage": {"output_tokens": 9}}
    first = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": {"output_tokens": 4, "input_tokens": 30}}
    out = _passed_on([MESSAGE_START] + _TEXT + [first, second, {"type": "message_stop"}])
    assert_valid_event_sequence(out)
    deltas = [e for e in out if e["type"] == "message_delta"]
    assert len(deltas) == 1 and out[-2:] == [deltas[0], {"type": "message_stop"}]
    assert deltas[0]["delta"]["stop_reason"] == "max_tokens"
    assert deltas[0]["usage"]["output_tokens"] == 9 and deltas[0]["usage"]["input_tokens"] == 30


@pytest.mark.parametrize("second", [
    {"type": "message_delta", "usage": {"output_tokens": 3, "input_tokens": None}},  # no delta, a null count
    {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": "9"}},
])
def test_a_second_message_delta_that_says_less_takes_nothing_from_the_first(second: Dict[str, Any]) -> None:
    from claudeproxy.apis.messages import MessagesFold

    first = {"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
             "usage": {"output_tokens": 7, "input_tokens": 30}}
    fold = MessagesFold(message_id="msg_1", model="claude-x", input_tokens=0)
    out = fold.feed_line(events_bytes([MESSAGE_START] + _TEXT + [first, second, {"type": "message_stop"}]))
    assert_valid_event_sequence(out)
    delta = next(e for e in out if e["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] == "max_tokens" and fold.stop_reason == "max_tokens"
    assert delta["usage"]["output_tokens"] == 7 and delta["usage"]["input_tokens"] == 30
    assert fold.usage["output_tokens"] == 7  # the record counts what the client was told


@pytest.mark.parametrize("start_count, delta_count, recorded", [
    (36, 12, 12),  # message_start's was an estimate (another claudeproxy in front of a Chat upstream)
    (12, 0, 12),  # a server that says input_tokens 0 at the end: the count stands
    (12, 30, 30),
])
def test_the_record_takes_the_input_count_message_delta_gives(start_count: int, delta_count: int,
                                                              recorded: int) -> None:
    """The record counts what the client is told (the SDKs take message_delta's counts over
    message_start's); it kept the higher, and billed an estimate above the real count."""
    from claudeproxy.apis.messages import MessagesFold

    start = {**MESSAGE_START, "message": {**MESSAGE_START["message"],
                                          "usage": {"input_tokens": start_count, "output_tokens": 1}}}
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
           "usage": {"output_tokens": 5, "input_tokens": delta_count}}
    fold = MessagesFold(message_id="msg_1", model="claude-x", input_tokens=0)
    out = fold.feed_line(events_bytes([start] + _TEXT + [end, {"type": "message_stop"}]))
    assert_valid_event_sequence(out)
    assert fold.usage["input_tokens"] == recorded and fold.usage["output_tokens"] == 5


def test_content_after_message_delta_ends_the_answer_as_it_was() -> None:
    # The answer was whole at message_delta: a block begun after it would never be stopped.
    from claudeproxy.apis.messages import MessagesFold
    from claudeproxy.errors import ProxyError

    fold = MessagesFold(message_id="msg_1", model="claude-x", input_tokens=0)
    out = fold.feed_line(events_bytes([MESSAGE_START] + _TEXT + TAIL_EVENTS[2:3]))
    with pytest.raises(ProxyError, match="content_block_start after message_delta") as caught:
        fold.feed_line(events_bytes([_start(1, "text")]))
    out += fold.fail(caught.value)
    assert_valid_event_sequence(out)
    assert [e["type"] for e in out[-2:]] == ["message_delta", "message_stop"]


def test_pings_before_the_first_block_are_held_as_one(make_proxy, fake_upstream):
    """The pings after message_start are held with it until something is said: each was kept, and an
    upstream sending nothing but (padded) pings grew the proxy without end (probe AA, F-4)."""
    server = make_proxy(passthrough=True)
    padded = {"type": "ping", "pad": "x" * 1000}
    fake_upstream.push(sse(events_bytes([MESSAGE_START] + [padded] * 500 + HEAD_EVENTS[1:] + TAIL_EVENTS)))
    with StreamClient(server.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    first_block = [e["type"] for e in events].index("content_block_start")
    assert [e["type"] for e in events[:first_block]] == ["message_start", "ping"]
