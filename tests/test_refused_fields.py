"""An optional field the upstream refuses by name is dropped, the request sent again, and the
refusal remembered for that model (``ChatApi.recover``).

Claude Code asks for an effort on every turn; an upstream the proxy does not recognise (a
corporate gateway, vLLM on port 8000) gets it as ``reasoning_effort``, and OpenAI refuses that
for a model without reasoning. Found by a walk-through as a new user: every Claude Code turn
failed with the upstream's 400 until ``--provider openai`` was given.
"""

from __future__ import annotations

import json
from typing import Any, List, Set

import pytest

from conftest import CLIENT_KEY, minimal_request, record_for, request
from fakes import FakeUpstream, chunk, completion, json_reply, sse_reply
from sse_checks import assert_valid_event_sequence, events_of

from claudeproxy.apis.base import refused_fields
from claudeproxy.apis.chat.api import DROPPABLE_FIELDS

# OpenAI's answer for gpt-4.1 (the body as its API sends it).
OPENAI_REFUSAL = {"error": {"message": "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
                            "type": "invalid_request_error", "param": "reasoning_effort",
                            "code": "unsupported_parameter"}}
# A strict pydantic server (FastAPI): 422 and the field's location.
PYDANTIC_REFUSAL = {"detail": [{"type": "extra_forbidden", "loc": ["body", "parallel_tool_calls"],
                                "msg": "Extra inputs are not permitted", "input": False}]}
TOOL = {"name": "read", "description": "read a file", "input_schema": {"type": "object", "properties": {}}}


def claude_code_turn(**overrides: Any) -> Any:
    """What matters here of a Claude Code request: an effort, tools, one at a time."""
    fields = dict(output_config={"effort": "medium"}, tools=[TOOL],
                  tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    return minimal_request(**{**fields, **overrides})


def ask(proxy: Any, body: Any) -> Any:
    return request(proxy.url, "POST", "/v1/messages", body, {"x-api-key": CLIENT_KEY})


def sent(fake: FakeUpstream) -> List[Any]:
    return [r.json for r in fake.requests]


def test_a_refused_reasoning_effort_is_dropped_and_remembered(make_proxy: Any, fake_upstream: FakeUpstream,
                                                             caplog: Any) -> None:
    proxy = make_proxy(upstream=fake_upstream.url, model="grok-4")
    fake_upstream.push(json_reply(OPENAI_REFUSAL, status=400), json_reply(completion("first")),
                       json_reply(completion("second")))
    with caplog.at_level("WARNING", logger="claudeproxy"):
        first = ask(proxy, claude_code_turn())
    assert first.status == 200, first
    assert first.json["content"] == [{"type": "text", "text": "first"}]
    bodies = sent(fake_upstream)
    assert bodies[0]["reasoning_effort"] == "medium" and "reasoning_effort" not in bodies[1]
    assert {k: v for k, v in bodies[0].items() if k != "reasoning_effort"} == bodies[1]  # nothing else changed
    assert any("refused reasoning_effort" in r.getMessage() for r in caplog.records)
    # The next turn goes without it at once: one upstream call, not two.
    second = ask(proxy, claude_code_turn())
    assert second.status == 200 and len(fake_upstream.requests) == 3
    assert "reasoning_effort" not in sent(fake_upstream)[2]


def test_a_strict_servers_422_names_the_field_too(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    records: List[Any] = []
    proxy = make_proxy(upstream=fake_upstream.url, model="local-model", metrics_sink=records.append)
    fake_upstream.push(json_reply(PYDANTIC_REFUSAL, status=422), json_reply(completion("ok")))
    resp = ask(proxy, claude_code_turn())
    assert resp.status == 200, resp
    bodies = sent(fake_upstream)
    assert bodies[0]["parallel_tool_calls"] is False and "parallel_tool_calls" not in bodies[1]
    assert bodies[1]["tools"] == bodies[0]["tools"]
    # Two calls to the upstream (probe I: attempts counts them all).
    assert record_for(records, resp.headers["request-id"]).attempts == 2


def test_a_server_refusing_fields_one_by_one_still_answers_the_first_turn(make_proxy: Any,
                                                                           fake_upstream: FakeUpstream) -> None:
    """A strict server names one field per 422; the first turn failed at the third (a probe)."""
    proxy = make_proxy(upstream=fake_upstream.url, model="local-model")
    body = claude_code_turn(stream=True, metadata={"user_id": "user_1"})
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": "ok"}), chunk({}, finish="stop")))
    assert ask(proxy, body).status == 200
    fields = [f for f in DROPPABLE_FIELDS if f in sent(fake_upstream)[0]]
    assert len(fields) >= 3, fields  # what a Claude Code turn carries to a server the proxy does not know
    fake_upstream.requests.clear()
    refusals = [json_reply({"detail": [{"type": "extra_forbidden", "loc": ["body", f], "msg": "Extra inputs are not "
                                        "permitted"}]}, status=422) for f in fields]
    fake_upstream.push(*refusals, sse_reply(chunk({"role": "assistant", "content": "ok"}), chunk({}, finish="stop")))
    resp = ask(proxy, {**body, "model": "claude-other"})  # the same upstream model: nothing learned yet
    assert resp.status == 200 and events_of(resp.body), resp
    bodies = sent(fake_upstream)
    assert len(bodies) == len(fields) + 1 and not set(fields) & set(bodies[-1])


def test_what_is_remembered_is_per_model(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(upstream=fake_upstream.url, model_map=(("claude-a*", "plain-model"),
                                                              ("claude-b*", "reasoning-model")))
    fake_upstream.push(json_reply(OPENAI_REFUSAL, status=400), json_reply(completion()), json_reply(completion()))
    assert ask(proxy, claude_code_turn(model="claude-a-1")).status == 200
    assert ask(proxy, claude_code_turn(model="claude-b-1")).status == 200
    assert sent(fake_upstream)[2]["reasoning_effort"] == "medium"  # the other model still gets it


def test_a_refused_field_the_client_means_is_not_dropped(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """Only fields the request means the same without: the output schema is the client's."""
    proxy = make_proxy(upstream=fake_upstream.url, model="m")
    refusal = {"error": {"message": "Unsupported parameter: 'response_format' is not supported with this model.",
                         "type": "invalid_request_error"}}
    fake_upstream.push(json_reply(refusal, status=400), json_reply(completion()))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    resp = ask(proxy, minimal_request(output_config={"format": {"type": "json_schema", "schema": schema}}))
    assert resp.status == 400 and "'response_format'" in resp.json["error"]["message"]
    assert len(fake_upstream.requests) == 1


def test_a_refused_stop_is_dropped_and_matched_by_the_proxy(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """stop is the client's, but the proxy can end the text at the stop string itself: a model
    that refuses it (an OpenAI reasoning model behind a gateway URL) still answers as Anthropic would."""
    proxy = make_proxy(upstream=fake_upstream.url, model="m")
    refusal = {"error": {"message": "Unsupported parameter: 'stop' is not supported with this model.",
                         "type": "invalid_request_error", "param": "stop", "code": "unsupported_parameter"}}
    fake_upstream.push(json_reply(refusal, status=400), json_reply(completion("one END two")),
                       sse_reply(chunk({"role": "assistant", "content": "three E"}), chunk({"content": "ND four"}),
                                 chunk({}, "stop")))
    first = ask(proxy, minimal_request(stop_sequences=["END"]))
    assert first.status == 200, first
    assert first.json["content"] == [{"type": "text", "text": "one "}]
    assert (first.json["stop_reason"], first.json["stop_sequence"]) == ("stop_sequence", "END")
    bodies = sent(fake_upstream)
    assert bodies[0]["stop"] == ["END"] and "stop" not in bodies[1]
    second = ask(proxy, minimal_request(stop_sequences=["END"], stream=True))  # remembered: one call
    events = events_of(second.body)
    assert_valid_event_sequence(events, allow_error=False)
    assert len(fake_upstream.requests) == 3 and "stop" not in sent(fake_upstream)[2]
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "three "
    assert events[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_a_400_that_names_no_field_sent_is_the_clients_error(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(upstream=fake_upstream.url, model="m")
    refusal = {"error": {"message": "Unsupported parameter: 'top_k' is not supported.", "type": "invalid_request_error"}}
    fake_upstream.push(json_reply(refusal, status=400), json_reply(completion()))
    assert ask(proxy, minimal_request()).status == 400  # no top_k was sent: nothing to drop
    assert len(fake_upstream.requests) == 1


def test_a_stream_request_recovers_the_same_way(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(upstream=fake_upstream.url, model="grok-4")
    fake_upstream.push(json_reply(OPENAI_REFUSAL, status=400),
                       sse_reply(chunk({"role": "assistant", "content": "hi"}), chunk({}, "stop")))
    resp = ask(proxy, claude_code_turn(stream=True))
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream"), resp
    events = events_of(resp.body)
    assert_valid_event_sequence(events, allow_error=False)
    assert "reasoning_effort" not in sent(fake_upstream)[1]


# Mistral's answer to stream_options (openai/openai-agents-python#442): the location goes one level
# deeper than the field the proxy sent.
MISTRAL_REFUSAL = {"object": "error", "message": {"detail": [
    {"type": "extra_forbidden", "loc": ["body", "stream_options", "include_usage"],
     "msg": "Extra inputs are not permitted", "input": True}]},
    "type": "invalid_request_error", "param": None, "code": None}


def test_a_mistral_stream_asks_for_no_stream_options_and_still_has_its_usage(
        make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """Mistral refused every streaming request with 422; it sends the usage in the last chunk unasked."""
    proxy = make_proxy(upstream=fake_upstream.url, provider="mistral", model="mistral-large-latest")
    usage = {"prompt_tokens": 21, "completion_tokens": 3, "total_tokens": 24}
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": "hi"}), chunk({}, "stop", usage=usage)))
    resp = ask(proxy, minimal_request(stream=True))
    assert resp.status == 200, resp
    events = events_of(resp.body)
    assert_valid_event_sequence(events, allow_error=False)
    assert events[-2]["usage"]["input_tokens"] == 21 and events[-2]["usage"]["output_tokens"] == 3
    (body,) = sent(fake_upstream)
    assert body["stream"] is True and "stream_options" not in body


def test_an_unknown_server_refusing_a_field_deeper_down_recovers(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """A Mistral-like server the proxy does not recognise: the field sent is the top-level one."""
    proxy = make_proxy(upstream=fake_upstream.url, model="some-model")
    fake_upstream.push(json_reply(MISTRAL_REFUSAL, status=422),
                       sse_reply(chunk({"role": "assistant", "content": "hi"}), chunk({}, "stop")),
                       sse_reply(chunk({"role": "assistant", "content": "again"}), chunk({}, "stop")))
    resp = ask(proxy, minimal_request(stream=True))
    assert resp.status == 200, resp
    assert_valid_event_sequence(events_of(resp.body), allow_error=False)
    first, second = sent(fake_upstream)
    assert first["stream_options"] == {"include_usage": True} and "stream_options" not in second
    assert {k: v for k, v in first.items() if k != "stream_options"} == second
    assert ask(proxy, minimal_request(stream=True)).status == 200  # remembered: one call
    assert "stream_options" not in sent(fake_upstream)[2] and len(fake_upstream.requests) == 3


def test_a_refusal_in_openrouters_metadata_is_met(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """OpenRouter answers "Provider returned error" and keeps the provider's words in metadata.raw:
    the field refused there goes, as if the provider had answered itself."""
    proxy = make_proxy(upstream=fake_upstream.url, model="some/model")
    raw = json.dumps({"error": {"message": "Unsupported parameter: 'reasoning_effort' is not supported with this model."}})
    fake_upstream.push(json_reply({"error": {"message": "Provider returned error", "code": 400,
                                             "metadata": {"raw": raw, "provider_name": "Azure"}}}, status=400),
                       json_reply(completion("ok")))
    assert ask(proxy, claude_code_turn()).status == 200
    bodies = sent(fake_upstream)
    assert "reasoning_effort" in bodies[0] and "reasoning_effort" not in bodies[1]


# xAI's answer for grok-4 (and grok-3, grok-4-fast, grok-code-fast-1) to reasoning_effort.
XAI_REFUSAL = {"code": "Client specified an invalid argument",
               "error": "Model grok-4 does not support parameter reasoningEffort."}


def test_grok_refusing_reasoning_effort_in_camel_case_recovers(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """api.x.ai is a generic upstream: Claude Code's effort goes up as reasoning_effort, and grok-4
    refused every turn."""
    proxy = make_proxy(upstream=fake_upstream.url, model="grok-4")
    fake_upstream.push(json_reply(XAI_REFUSAL, status=400), json_reply(completion("first")),
                       json_reply(completion("second")))
    first = ask(proxy, claude_code_turn())
    assert first.status == 200, first
    assert first.json["content"] == [{"type": "text", "text": "first"}]
    bodies = sent(fake_upstream)
    assert bodies[0]["reasoning_effort"] == "medium" and "reasoning_effort" not in bodies[1]
    assert ask(proxy, claude_code_turn()).status == 200
    assert len(fake_upstream.requests) == 3 and "reasoning_effort" not in sent(fake_upstream)[2]


# Error messages as upstreams word them, and the fields they refuse as such (not for a value).
MESSAGES = [
    ("Unsupported parameter: 'reasoning_effort' is not supported with this model.", {"reasoning_effort"}),
    ("Unrecognized request argument supplied: parallel_tool_calls", {"parallel_tool_calls"}),
    ("Unknown parameter: 'prompt_cache_key'.", {"prompt_cache_key"}),
    ("property 'reasoning_effort' is unsupported, did you mean 'response_format'?", {"reasoning_effort"}),
    ('{"detail":[{"type":"extra_forbidden","loc":["body","top_k"],"msg":"Extra inputs are not permitted"}]}',
     {"top_k"}),
    (json.dumps(MISTRAL_REFUSAL), {"stream_options"}),
    ("Model grok-4 does not support parameter reasoningEffort.", {"reasoning_effort"}),
    ("Model grok-4 does not support parameter stop.", {"stop"}),
    ('Invalid JSON payload received. Unknown name "parallel_tool_calls": Cannot find field.',
     {"parallel_tool_calls"}),
    # Gemini naming a field inside a message: not the top-level one.
    ('Invalid JSON payload received. Unknown name "user" at \'messages[0]\': Cannot find field.', set()),
    # A refused value: the field stays (a lower effort would do; without it, none is asked for).
    ("Unsupported value: 'reasoning_effort' does not support 'max' with this model. Supported values are: "
     "'low', 'medium', and 'high'.", set()),
    ("Unsupported value: 'temperature' does not support 0.7 with this model.", set()),
    # Groq names the field alone, first ("reasoning_format is not supported with this model").
    ("reasoning_format is not supported with this model", {"reasoning_format"}),
    ("`reasoning_effort` is not supported with this model", {"reasoning_effort"}),
    ("Invalid parameter: tool_choice is not supported in thinking mode", {"tool_choice"}),  # DeepSeek
    ("Unsupported parameter: 'tool_choice'", {"tool_choice"}),
    # Refused values: the field stays (another value works; a review found the whole field dropped).
    ("Budget 0 is invalid. This model only works in thinking mode.", set()),  # Gemini 2.5 Pro: "none" only
    ("invalid temperature: only 1 is allowed for this model", set()),  # Kimi K2.5: the client's value
    ("`reasoning_effort` must be one of `none` or `default`", set()),  # Groq's qwen3
    # pydantic's words with the path in front, as Anthropic-style servers print them: a top-level
    # name is the field; a dotted path is a key inside one.
    ("stream_options: Extra inputs are not permitted", {"stream_options"}),
    ("1 validation error for ChatRequest\nstream_options: Extra inputs are not permitted", {"stream_options"}),
    ("messages.0.stream_options: Extra inputs are not permitted", set()),
    # Entries read one by one, whatever the order of their keys, a value error beside them ignored.
    ('{"detail":[{"type":"value_error","loc":["body","messages",0],"msg":"bad"},'
     '{"loc":["body","stream_options"],"type":"extra_forbidden","msg":"Extra inputs are not permitted"}]}',
     {"stream_options"}),
    ("Unrecognized key(s) in object: 'stream_options', 'reasoning_effort'", {"stream_options", "reasoning_effort"}),
    # Errors about a message that only mention a field's name.
    ('{"detail":[{"type":"extra_forbidden","loc":["body","messages",1,"user","cache_control"],'
     '"msg":"Extra inputs are not permitted"}]}', set()),
    ("Invalid 'messages[1]': role 'user' content type 'input_audio' is not supported.", set()),
    ("messages with role 'tool' must be a response to a preceeding message with 'tool_calls'", set()),
]


@pytest.mark.parametrize("message, fields", MESSAGES, ids=[m[0][:40] for m in MESSAGES])
def test_which_fields_a_message_refuses(message: str, fields: Set[str]) -> None:
    assert refused_fields(message) & set(DROPPABLE_FIELDS) == fields


def test_a_refused_value_is_the_clients_error(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(upstream=fake_upstream.url, model="grok-4")
    refusal = {"error": {"message": MESSAGES[5][0], "type": "invalid_request_error", "param": "reasoning_effort",
                         "code": "unsupported_value"}}
    fake_upstream.push(json_reply(refusal, status=400), json_reply(completion()))
    body = claude_code_turn()
    body["output_config"] = {"effort": "max"}
    assert ask(proxy, body).status == 400
    assert len(fake_upstream.requests) == 1  # not sent again, and the next turn still asks for an effort


def test_a_refused_max_tokens_becomes_max_completion_tokens(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """A reasoning model behind a URL the dialects do not know (a gateway): FIELD-NOTES 6."""
    proxy = make_proxy(upstream=fake_upstream.url, model="gpt-5")
    refusal = {"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                                    "'max_completion_tokens' instead.", "type": "invalid_request_error",
                         "param": "max_tokens", "code": "unsupported_parameter"}}
    fake_upstream.push(json_reply(refusal, status=400), json_reply(completion("one")), json_reply(completion("two")))
    assert ask(proxy, claude_code_turn(max_tokens=3000)).status == 200
    assert ask(proxy, claude_code_turn(max_tokens=2000)).status == 200
    first, second, third = sent(fake_upstream)
    assert first["max_tokens"] == 3000 and "max_completion_tokens" not in first
    assert second["max_completion_tokens"] == 3000 and "max_tokens" not in second
    assert third["max_completion_tokens"] == 2000 and "max_tokens" not in third  # remembered: one call


# OpenAI's answer to gpt-5 asked for more effort than it takes.
EFFORT_VALUE_REFUSAL = {"error": {
    "message": "Unsupported value: 'reasoning_effort' does not support 'max' with this model. Supported values are: "
               "'minimal', 'low', 'medium', and 'high'.",
    "type": "invalid_request_error", "param": "reasoning_effort", "code": "unsupported_value"}}


@pytest.mark.parametrize("stream", [False, True])
def test_an_effort_above_the_models_is_lowered_to_its_most_and_remembered(make_proxy: Any, fake_upstream: FakeUpstream,
                                                                         stream: bool) -> None:
    """Claude Code's /effort max on a model whose most is "high": every turn was the upstream's 400."""
    proxy = make_proxy(upstream=fake_upstream.url, model="gpt-5", provider="openai")
    answer = (sse_reply(chunk({"role": "assistant", "content": "done"}), chunk({}, "stop")) if stream
              else json_reply(completion("done")))
    fake_upstream.push(json_reply(EFFORT_VALUE_REFUSAL, status=400), answer, answer)
    first = ask(proxy, claude_code_turn(output_config={"effort": "max"}, stream=stream))
    assert first.status == 200, first
    if stream:
        assert_valid_event_sequence(events_of(first.body), allow_error=False)
    bodies = sent(fake_upstream)
    assert [b["reasoning_effort"] for b in bodies] == ["max", "high"]
    assert {k: v for k, v in bodies[0].items() if k != "reasoning_effort"} == \
        {k: v for k, v in bodies[1].items() if k != "reasoning_effort"}
    # The next turn asks for the most the model takes at once; a lower effort is left as it is.
    assert ask(proxy, claude_code_turn(output_config={"effort": "xhigh"}, stream=stream)).status == 200
    assert sent(fake_upstream)[2]["reasoning_effort"] == "high"
    fake_upstream.push(answer)
    assert ask(proxy, claude_code_turn(output_config={"effort": "low"}, stream=stream)).status == 200
    assert sent(fake_upstream)[3]["reasoning_effort"] == "low"


def test_a_least_effort_the_model_refuses_is_raised_to_the_least_it_takes(make_proxy: Any,
                                                                          fake_upstream: FakeUpstream) -> None:
    """Thinking disabled asks an OpenAI reasoning model for its least effort (gpt-5: "minimal"); a
    deployment that refuses it gets the least it names, remembered: the check was the client's 400."""
    proxy = make_proxy(upstream=fake_upstream.url, model="gpt-5", provider="openai")
    refusal = {"error": {**EFFORT_VALUE_REFUSAL["error"], "message": (
        "Unsupported value: 'reasoning_effort' does not support 'minimal' with this model. Supported values are: "
        "'low', 'medium', and 'high'.")}}
    fake_upstream.push(json_reply(refusal, status=400), json_reply(completion("<severity>1")),
                       json_reply(completion("<severity>1")))
    check = claude_code_turn(max_tokens=64, thinking={"type": "disabled"})
    assert ask(proxy, check).status == 200
    assert ask(proxy, check).status == 200
    assert [b["reasoning_effort"] for b in sent(fake_upstream)] == ["minimal", "low", "low"]


@pytest.mark.parametrize("message,sent,raised", [
    ("Unsupported value: 'reasoning_effort' does not support 'minimal' with this model. Supported values are: "
     "'low', 'medium', and 'high'.", "minimal", "low"),
    ("Unsupported value: 'reasoning_effort' does not support 'none' with this model. Supported values are: "
     "'minimal', 'low', 'medium', and 'high'.", "none", "minimal"),
    ("Unsupported value: 'reasoning_effort' does not support 'minimal' with this model.", "minimal", None),
    # A gpt-5 deployment that runs gpt-5.1 on: its least is none, offered (review AO 4).
    ("Unsupported value: 'reasoning_effort' does not support 'minimal' with this model. Supported values are: "
     "'none', 'low', 'medium', and 'high'.", "minimal", "none"),
    (EFFORT_VALUE_REFUSAL["error"]["message"], "minimal", None),  # about another value
    ("Budget 0 is invalid. This model only works in thinking mode (reasoning_effort 'none').", "none", None),
])
def test_raised_effort_reads_the_refused_least_value_first(message: str, sent: str, raised: Any) -> None:
    from claudeproxy.apis.chat.api import raised_effort

    assert raised_effort(message, sent) == raised


@pytest.mark.parametrize("message,sent,lowered", [
    (EFFORT_VALUE_REFUSAL["error"]["message"], "max", "high"),
    ("Unsupported value: 'reasoning_effort' does not support 'xhigh' with this model.", "xhigh", "high"),
    ("Invalid value 'max' for reasoning_effort: expected one of 'low', 'medium'", "max", "medium"),
    (EFFORT_VALUE_REFUSAL["error"]["message"], "high", None),    # about another value
    ("Unsupported parameter: 'reasoning_effort' is not supported with this model.", "max", None),  # the field
    ("reasoning_effort must be one of low, high", "max", None),  # names no value it refused: not guessed
    # Only the ones it takes, quoted (Groq's wording): the most of those below (a review: the field was dropped).
    ("`reasoning_effort` must be one of `low`, `medium`, or `high`", "max", "high"),
    ("`reasoning_effort` must be one of `low`, `medium`, or `high`", "xhigh", "high"),
    ("`reasoning_effort` must be one of `none` or `default`", "high", None),  # no effort of ours below
    ("Unsupported value: 'reasoning_effort' does not support 'xhigh'. Supported values are: 'low', 'high'.", "max", None),
    ("Unsupported value: 'temperature' does not support 0.2", "max", None),
    # Gemini's words of its thinking level are refused_level's, not a range's top.
    ("Thinking level MEDIUM is not supported for this model. Please retry with other thinking level", "medium", None),
])
def test_lower_effort_reads_the_refused_value_first(message: str, sent: str, lowered: Any) -> None:
    from claudeproxy.apis.chat.api import lower_effort

    assert lower_effort(message, sent) == lowered


def test_what_is_learned_per_model_stays_bounded_whatever_names_clients_send() -> None:
    """Without --model the client names the model: 2,000 names each refusing a field must not grow
    the memory without end. The oldest is forgotten (one more refused round trip for it), the
    newest kept."""
    from claudeproxy.apis.base import MODELS_REMEMBERED, RefusedFields

    memory = RefusedFields(DROPPABLE_FIELDS)
    for i in range(2000):
        assert memory.learn(frozenset({"top_k"}), {"top_k": 5}, ("p", f"model-{i}"), "p/model")
    assert len(memory._by_model) == MODELS_REMEMBERED
    for i, kept in ((0, True), (1999, False)):
        payload = {"top_k": 5}
        memory.drop(payload, ("p", f"model-{i}"))
        assert ("top_k" in payload) is kept


@pytest.mark.parametrize("provider, asked", [("openai", True), ("mistral", False)])
def test_the_exchange_context_says_by_name_whether_a_usage_chunk_was_asked(provider: str, asked: bool) -> None:
    """``ChatApi.prepare`` leaves what reading the answer needs in a ``ChatContext``; the fold waits
    for a usage chunk (``usage_chunk_asked``) only where stream_options was sent."""
    from claudeproxy.apis.base import ClientRequest
    from claudeproxy.apis.chat.api import ChatApi, ChatContext
    from claudeproxy.config import Provider
    from claudeproxy.dialects import dialect_for
    from claudeproxy.model_facts import ModelFacts
    from claudeproxy.routing import Target
    from claudeproxy.tool_memo import ToolMemo

    api = ChatApi(ToolMemo())
    target = Target(Provider(provider, "http://127.0.0.1:9"), "m", ModelFacts(), None, dialect_for(provider, "m"))
    body = minimal_request(stream=True, tools=[TOOL], stop_sequences=["END"])
    req = ClientRequest(body, "claude-sonnet-4", True, {}, parsed=api.parse(body))
    ex = api.prepare(req, target, None)
    ctx = ex.context
    assert isinstance(ctx, ChatContext) and ctx.target is target and ctx.dialect is target.dialect
    assert ctx.usage_chunk_asked is asked and ("stream_options" in json.loads(ex.body)) is asked
    assert ctx.local_stops == ()  # the stop string was sent: the upstream matches it
    fold = api.fold(req, ex, message_id="msg_1", input_tokens=1)
    assert fold.translator.usage_chunk_asked is asked


GEMINI_NO_OFF = [{"error": {"code": 400, "message": "Budget 0 is invalid. This model only works in thinking mode.",
                            "status": "INVALID_ARGUMENT"}}]


def test_a_model_that_cannot_stop_thinking_loses_effort_none_only(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """A model the Gemini rule does not know (gemini-2.0-pro-exp) refused thinking "disabled"'s effort
    "none". Only "none" goes from then on: a thinking budget still sends its effort (a review found
    every later effort dropped)."""
    proxy = make_proxy(upstream=fake_upstream.url, provider="gemini", model="gemini-2.0-pro-exp")
    fake_upstream.push(json_reply(GEMINI_NO_OFF, status=400), json_reply(completion("a")), json_reply(completion("b")),
                       json_reply(completion("c")))
    assert ask(proxy, minimal_request(thinking={"type": "disabled"})).status == 200
    assert ask(proxy, minimal_request(thinking={"type": "disabled"})).status == 200
    assert ask(proxy, minimal_request(max_tokens=8000, thinking={"type": "enabled", "budget_tokens": 2000})).status == 200
    assert [b.get("reasoning_effort") for b in sent(fake_upstream)] == ["none", None, None, "low"]


@pytest.mark.parametrize("choice, dropped", [({"type": "auto"}, True), ({"type": "any"}, False),
                                             ({"type": "tool", "name": "read"}, False)])
def test_a_refused_tool_choice_is_dropped_only_where_it_meant_the_default(
        make_proxy: Any, fake_upstream: FakeUpstream, choice: Any, dropped: bool) -> None:
    """deepseek-reasoner refuses tool_choice in thinking mode (FIELD-NOTES 10; a probe's client got
    the 400 every time). "auto" is what no tool_choice means: sent again without it, and never again
    to that model. A forced tool is the client's: dropping it would answer another question."""
    proxy = make_proxy(upstream=fake_upstream.url, model="deepseek-reasoner")
    refusal = {"error": {"message": "Invalid parameter: tool_choice is not supported in thinking mode",
                         "type": "invalid_request_error"}}
    fake_upstream.push(json_reply(refusal, status=400), json_reply(completion()), json_reply(completion()))
    turn = claude_code_turn(tool_choice=choice)
    first = ask(proxy, turn)
    if not dropped:
        assert first.status == 400 and "tool_choice" in first.json["error"]["message"]
        assert len(fake_upstream.requests) == 1
        return
    assert first.status == 200, first
    assert ask(proxy, turn).status == 200
    bodies = sent(fake_upstream)
    assert bodies[0]["tool_choice"] == "auto" and "tool_choice" not in bodies[1] and "tool_choice" not in bodies[2]
    assert {k: v for k, v in bodies[0].items() if k != "tool_choice"} == bodies[1]
    fake_upstream.push(json_reply(completion()))
    forced = ask(proxy, claude_code_turn(tool_choice={"type": "any"}))  # the model refused "auto" only
    assert forced.status == 200 and sent(fake_upstream)[-1]["tool_choice"] == "required"


PNG = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}


def read_image_turns() -> Any:
    """Claude Code's Read of an image: the picture comes back in a tool_result."""
    return [{"role": "user", "content": "look at pic.png"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "read",
                                               "input": {"file_path": "pic.png"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [PNG]}]}]


# Each server's own words that the model takes no images, with the status it says them with.
NO_IMAGE_REFUSALS = [
    (400, {"error": {"message": "messages[3].content must be a string", "type": "invalid_request_error",
                     "param": "messages[3].content"}}),  # Groq (sam3gp8/jarvis-aio#17)
    (400, {"error": {"message": "'messages.3' : for 'role:user' the following must be satisfied"
                                "[('messages.3.content' : value must be a string)]",
                     "type": "invalid_request_error"}}),  # Groq, the older form (OpenHands#4643)
    (500, {"error": {"code": 500, "message": "image input is not supported - hint: if this is unexpected, you may "
                                             "need to provide the mmproj", "type": "server_error"}}),  # llama.cpp
    (404, {"error": {"code": 404, "message": "No endpoints found that support image input"}}),  # OpenRouter
    (400, {"object": "error", "message": "Qwen3-8B is not a multimodal model", "type": "BadRequestError",
           "code": 400}),  # vLLM (vllm#19144)
    (400, {"error": {"message": "Invalid content type. image_url is only supported by certain models.",
                     "type": "invalid_request_error", "param": "messages.[3].content.[0].type"}}),  # OpenAI
    (422, {"error": {"message": "Failed to deserialize the JSON body into the target type: messages[3]: unknown "
                                "variant `image_url`, expected `text`", "type": "invalid_request_error"}}),  # DeepSeek
]


@pytest.mark.parametrize("status,refusal", NO_IMAGE_REFUSALS)
def test_a_model_that_takes_no_images_gets_placeholders_from_its_first_refusal_on(
        make_proxy: Any, fake_upstream: FakeUpstream, caplog: Any, status: int, refusal: Any) -> None:
    """probe J: after Claude Code read one image, a text-only model (Groq's gpt-oss, llama.cpp without
    its projector) refused every later turn, /compact too, since the image stays in the history."""
    proxy = make_proxy(upstream=fake_upstream.url, model="text-model")
    fake_upstream.push(json_reply(refusal, status=status), json_reply(completion("a picture I cannot see")),
                       json_reply(completion("next")))
    with caplog.at_level("WARNING", logger="claudeproxy"):
        first = ask(proxy, minimal_request(messages=read_image_turns()))
    assert first.status == 200, first
    assert first.json["content"] == [{"type": "text", "text": "a picture I cannot see"}]
    refused, again = sent(fake_upstream)
    assert any(isinstance(m["content"], list) and any(p.get("type") == "image_url" for p in m["content"])
               for m in refused["messages"])
    assert "image_url" not in json.dumps(again)
    assert all(isinstance(m.get("content"), (str, type(None))) for m in again["messages"])
    assert "[image omitted: this model takes text only]" in json.dumps(again["messages"])
    assert [m["role"] for m in again["messages"]][-1] == "tool"  # nothing moved out of the tool message
    assert sum("takes no images" in r.getMessage() for r in caplog.records) == 1
    # The next turn goes with placeholders at once: one upstream call.
    assert ask(proxy, minimal_request(messages=read_image_turns())).status == 200
    assert len(fake_upstream.requests) == 3 and "image_url" not in json.dumps(sent(fake_upstream)[2])


def test_an_image_refusal_changes_nothing_for_a_request_without_images_or_another_model(
        make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(upstream=fake_upstream.url, model="text-model")
    status, refusal = NO_IMAGE_REFUSALS[0]
    fake_upstream.push(json_reply(refusal, status=status))
    resp = ask(proxy, minimal_request())  # no image sent: the refusal is about something else
    assert resp.status == 400 and "must be a string" in resp.json["error"]["message"], resp
    assert len(fake_upstream.requests) == 1
    # A refusal that names no image is not taken for one.
    fake_upstream.push(json_reply({"error": {"message": "tools param requires --jinja flag", "code": 500}}, status=500))
    resp = ask(proxy, minimal_request(messages=read_image_turns()))
    assert resp.status == 500 and len(fake_upstream.requests) == 2, resp


def test_an_image_refused_again_with_placeholders_is_not_asked_a_third_time(make_proxy: Any,
                                                                           fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(upstream=fake_upstream.url, model="text-model")
    status, refusal = NO_IMAGE_REFUSALS[0]
    fake_upstream.push(json_reply(refusal, status=status), json_reply(refusal, status=status))
    resp = ask(proxy, minimal_request(messages=read_image_turns()))
    assert resp.status == 400 and len(fake_upstream.requests) == 2, resp


@pytest.mark.parametrize("message,sent_effort,refused", [
    ("Thinking level MEDIUM is not supported for this model. Please retry with other thinking level", "medium", "medium"),
    ("Thinking level HIGH is not supported for this model.", "high", "high"),
    ("Thinking level LOW is not supported for this model.", "medium", None),  # another level than the one sent
    ("Unsupported value: 'reasoning_effort' does not support 'max' with this model.", "max", None),
])
def test_refused_level_names_the_level_sent_alone(message: str, sent_effort: str, refused: Any) -> None:
    from claudeproxy.apis.chat.api import refused_level

    assert refused_level(message, sent_effort) == refused


def test_gemini_refusing_a_thinking_level_gets_the_next_below_for_that_level_alone(make_proxy: Any,
                                                                                   fake_upstream: FakeUpstream) -> None:
    """probe J F5: a thinking budget of 4,096-16,383 is effort medium, which Gemini 3 Pro refuses (it
    takes low and high). Review H: remembered as the most it takes, it sent every high as low."""
    refusal = [{"error": {"code": 400, "message": "Thinking level MEDIUM is not supported for this model. Please "
                                                  "retry with other thinking level", "status": "INVALID_ARGUMENT"}}]
    proxy = make_proxy(upstream=fake_upstream.url, model="gemini-3-pro-preview", provider="gemini")
    fake_upstream.push(json_reply(refusal, status=400), *[json_reply(completion("thought"))] * 3)
    medium = minimal_request(thinking={"type": "enabled", "budget_tokens": 10000}, max_tokens=40000)
    high = minimal_request(thinking={"type": "enabled", "budget_tokens": 30000}, max_tokens=40000)
    assert ask(proxy, medium).status == 200
    assert [b.get("reasoning_effort") for b in sent(fake_upstream)] == ["medium", "low"]
    assert ask(proxy, medium).status == 200 and ask(proxy, high).status == 200
    assert [b.get("reasoning_effort") for b in sent(fake_upstream)][2:] == ["low", "high"]  # at once: one call each



@pytest.mark.parametrize("message", [
    "This model does not support images larger than 20MB",
    "The model does not support images in this format: image/tiff",
    "does not support images from URLs; send base64",
    "Invalid image: could not decode",
])
def test_a_refusal_of_one_image_is_no_refusal_of_images(message: str) -> None:
    """Review H: a size or format refusal taken for "no images" would give a vision model
    placeholders for every image until a restart."""
    from claudeproxy.apis.base import refuses_images

    assert not refuses_images(400, message)


def test_a_request_with_images_refused_after_another_taught_it_goes_again_with_placeholders(
        make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """Review H: two requests with images in flight; the second's refusal came after the first had
    taught "no images", and reached the client."""
    proxy = make_proxy(upstream=fake_upstream.url, model="text-model")
    status, refusal = NO_IMAGE_REFUSALS[0]
    fake_upstream.push(json_reply(refusal, status=status), json_reply(completion("one")))
    assert ask(proxy, minimal_request(messages=read_image_turns())).status == 200  # taught
    # The second was prepared before the lesson: sent with its image, refused, and sent again.
    fake_upstream.push(json_reply(refusal, status=status), json_reply(completion("two")))
    from claudeproxy.apis.chat.api import ChatApi

    original = ChatApi.prepare
    calls = []

    def prepare_as_before(self: Any, req: Any, target: Any, cap: Any) -> Any:
        key = (target.provider.name, target.model)
        if not calls:  # the first preparation of this request: as if the lesson had not come yet
            calls.append(1)
            with self._lock:
                learned = self._no_images.pop(key, None)
            try:
                return original(self, req, target, cap)
            finally:
                with self._lock:
                    if learned is not None:
                        self._no_images[key] = learned
        return original(self, req, target, cap)

    ChatApi.prepare = prepare_as_before  # type: ignore[assignment]
    try:
        resp = ask(proxy, minimal_request(messages=read_image_turns()))
    finally:
        ChatApi.prepare = original  # type: ignore[assignment]
    assert resp.status == 200 and resp.json["content"] == [{"type": "text", "text": "two"}], resp
    assert "image_url" in json.dumps(sent(fake_upstream)[2]) and "image_url" not in json.dumps(sent(fake_upstream)[3])
