"""Anthropic request -> OpenAI request (PROTOCOL.md section 1, acceptance cases 1-4, 7-35).

The golden pairs in ``fixtures/requests`` carry most of the weight: each
``<case>.anthropic.json`` is a client body, ``<case>.openai.json`` the exact
upstream body written by hand from the spec, and the optional
``<case>.meta.json`` names the provider, the upstream model and the output cap.
The unit tests below cover what a fixture cannot show well: aliases, ids,
warnings and sizes.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Dict, List, Optional

import pytest

from claudeproxy.anthropic_types import parse_messages_request
from claudeproxy.dialects import DIALECTS, dialect_for
from claudeproxy.apis.chat.wire import parse_chat_response
from claudeproxy.apis.chat.request import Translation, mistral_id, to_chat_request
from claudeproxy.apis.names import tool_alias
from claudeproxy.apis.chat.response import to_messages_response

HERE = os.path.dirname(os.path.abspath(__file__))
REQUESTS = os.path.join(HERE, "fixtures", "requests")
CASES = sorted(os.path.basename(p)[: -len(".anthropic.json")] for p in glob.glob(os.path.join(REQUESTS, "*.anthropic.json")))
OPENAI_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _load(name: str) -> Any:
    with open(os.path.join(REQUESTS, name), encoding="utf-8") as fh:
        return json.load(fh)


def translate(body: Dict[str, Any], provider: str = "generic", model: str = "", **kw: Any) -> Translation:
    req = parse_messages_request(body)
    upstream_model = model or req.model
    return to_chat_request(req, model=upstream_model, dialect=dialect_for(provider, upstream_model), **kw)


def user(content: Any) -> Dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> Dict[str, Any]:
    return {"role": "assistant", "content": content}


def body(messages: List[Dict[str, Any]], **extra: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {"model": "claude-test", "max_tokens": 100, "messages": messages}
    out.update(extra)
    return out


# --------------------------------------------------------------------------
# Golden fixtures.


def test_fixture_pairs_are_complete() -> None:
    assert len(CASES) >= 80
    for path in glob.glob(os.path.join(REQUESTS, "*.json")):
        stem = os.path.basename(path).rsplit(".", 2)[0]
        assert stem in CASES, f"{path} has no .anthropic.json partner"
    for case in CASES:
        assert os.path.exists(os.path.join(REQUESTS, f"{case}.openai.json")), case


@pytest.mark.parametrize("case", CASES)
def test_golden_request(case: str) -> None:
    meta_path = os.path.join(REQUESTS, f"{case}.meta.json")
    meta = _load(f"{case}.meta.json") if os.path.exists(meta_path) else {}
    translation = translate(
        _load(f"{case}.anthropic.json"),
        provider=meta.get("provider", "generic"),
        model=meta.get("model", ""),
        max_output_tokens=meta.get("max_output_tokens"),
        cache_key=meta.get("cache_key"),
    )
    assert translation.request.to_dict() == _load(f"{case}.openai.json")


@pytest.mark.parametrize("case", CASES)
def test_golden_request_is_json_and_leaves_no_anthropic_keys(case: str) -> None:
    """What goes upstream is plain JSON with none of the Anthropic-only keys OpenAI rejects."""
    meta_path = os.path.join(REQUESTS, f"{case}.meta.json")
    meta = _load(f"{case}.meta.json") if os.path.exists(meta_path) else {}
    sent = translate(_load(f"{case}.anthropic.json"), provider=meta.get("provider", "generic"),
                     model=meta.get("model", "")).request.to_dict()
    text = json.dumps(sent)
    # Cache marks go on only to OpenRouter's Claude models (PROTOCOL.md 1.4; tests/test_cache_marks.py).
    marks = dialect_for(meta.get("provider", "generic"), meta.get("model", "")).cache_marks
    for key in ("cache_control",) * (not marks) + ("defer_loading", "context_management", "output_config",
                                                   '"thinking": {"type": "adaptive'):
        assert key not in text, key
    assert "$schema" not in text


# --------------------------------------------------------------------------
# Tool names (PROTOCOL.md 1.5, case 29).

VALID_NAMES = ["Read", "mcp__github__create_issue", "a-b_c", "x" * 64]
ODD_NAMES = ["a.b", "a,b", "a b", "mcp.server/tool name", "工具", "x" * 65, "ns." + "y" * 200, "-", "a.b.c.d.e"]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_tool_alias_keeps_valid_names(name: str) -> None:
    assert tool_alias(name) == name


@pytest.mark.parametrize("name", ODD_NAMES)
def test_tool_alias_is_an_openai_name_and_stable(name: str) -> None:
    alias = tool_alias(name)
    assert OPENAI_NAME.match(alias), alias
    assert len(alias) <= 64
    assert tool_alias(name) == alias


def test_tool_alias_keeps_different_names_apart() -> None:
    aliases = [tool_alias(n) for n in ODD_NAMES + VALID_NAMES]
    assert len(set(aliases)) == len(aliases)


def _aliased_request() -> Dict[str, Any]:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    return body(
        [user("search"),
         assistant([{"type": "tool_use", "id": "t1", "name": "search.web", "input": {"q": "x"}}]),
         user([{"type": "tool_result", "tool_use_id": "t1", "content": "found"}])],
        tools=[{"name": "search.web", "input_schema": schema}, {"name": "fs/read file", "input_schema": schema},
               {"name": "Read", "input_schema": schema}],
        tool_choice={"type": "tool", "name": "search.web"},
    )


def test_aliases_are_used_everywhere_and_reversible() -> None:
    translation = translate(_aliased_request())
    sent = translation.request.to_dict()
    tool_names = [t["function"]["name"] for t in sent["tools"]]
    assert all(OPENAI_NAME.match(n) for n in tool_names)
    assert tool_names[2] == "Read"
    alias = tool_alias("search.web")
    assert tool_names[0] == alias
    assert sent["tool_choice"] == {"type": "function", "function": {"name": alias}}
    assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == alias
    # The map reverses exactly the aliased names; valid names need no entry.
    assert translation.tool_names == {alias: "search.web", tool_alias("fs/read file"): "fs/read file"}


def test_tool_call_with_alias_maps_back_to_client_name() -> None:
    """Case 29, end to end: the upstream calls the alias, the client sees its own name."""
    translation = translate(_aliased_request())
    alias = tool_alias("search.web")
    chat = parse_chat_response({"id": "c", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": alias, "arguments": "{\"q\": \"y\"}"}}]}}]})
    message, _ = to_messages_response(chat, model="claude-test", new_id=lambda: "abc", tool_names=translation.tool_names)
    assert message["content"] == [{"type": "tool_use", "id": "call_1", "name": "search.web", "input": {"q": "y"}}]


def test_alias_of_history_only_tool_is_reversible() -> None:
    """A tool_use in history whose tool is no longer offered still gets a valid, reversible name."""
    translation = translate(body([
        user("hi"),
        assistant([{"type": "tool_use", "id": "t1", "name": "old.tool", "input": {}}]),
        user([{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]),
    ]))
    name = translation.request.to_dict()["messages"][1]["tool_calls"][0]["function"]["name"]
    assert OPENAI_NAME.match(name)
    assert translation.tool_names[name] == "old.tool"


# --------------------------------------------------------------------------
# Mistral ids (PROTOCOL.md 5.10, case 33).

MISTRAL_ID = re.compile(r"^[a-zA-Z0-9]{9}$")


@pytest.mark.parametrize("tool_id", ["toolu_01ABC", "call_0", "toolu_01XFDUDYJgAACzvnptvVer6u", "x", "a" * 300, "abc-def-1"])
def test_mistral_id_is_nine_alphanumerics_and_deterministic(tool_id: str) -> None:
    assert MISTRAL_ID.match(mistral_id(tool_id))
    assert mistral_id(tool_id) == mistral_id(tool_id)


def test_mistral_id_keeps_valid_ids_and_separates_others() -> None:
    assert mistral_id("abcDEF123") == "abcDEF123"
    ids = [f"toolu_{i:05d}" for i in range(2000)]
    assert len({mistral_id(i) for i in ids}) == len(ids)


def test_mistral_ids_match_between_call_and_result_across_requests() -> None:
    request = body([
        user("go"),
        assistant([{"type": "tool_use", "id": "toolu_01ABC", "name": "f", "input": {}}]),
        user([{"type": "tool_result", "tool_use_id": "toolu_01ABC", "content": "r"}]),
    ], tools=[{"name": "f", "input_schema": {"type": "object", "properties": {}}}])
    first = translate(request, provider="mistral", model="mistral-large-latest").request.to_dict()
    second = translate(request, provider="mistral", model="mistral-large-latest").request.to_dict()
    assert first == second
    call_id = first["messages"][1]["tool_calls"][0]["id"]
    assert MISTRAL_ID.match(call_id)
    assert first["messages"][2] == {"role": "tool", "tool_call_id": call_id, "content": "r"}



@pytest.mark.parametrize("provider,model", [("openai", "gpt-4.1"), ("azure", "gpt-4.1"), ("openai", "o3")])
def test_a_long_tool_id_is_shortened_alike_in_call_and_result_for_openai(provider: str, model: str) -> None:
    """OpenAI refuses a tool-call id over 40 characters ("string too long. Expected a string with
    maximum length 40"), and the id stays in the history: every later turn failed. An id made elsewhere
    (another provider, a gateway) is shortened the same way in the call, its result and every turn
    (probe AD, D4); ids that differ only in their tails stay apart."""
    ids = ["portkey-" + "0123456789abcdef" * 3 + "-A", "portkey-" + "0123456789abcdef" * 3 + "-B", "toolu_01ABC"]
    request = body([
        user("go"),
        assistant([{"type": "tool_use", "id": i, "name": "f", "input": {}} for i in ids]),
        user([{"type": "tool_result", "tool_use_id": i, "content": "r"} for i in ids]),
    ], tools=[{"name": "f", "input_schema": {"type": "object", "properties": {}}}])
    first = translate(request, provider=provider, model=model).request.to_dict()
    calls = [c["id"] for c in first["messages"][1]["tool_calls"]]
    results = [m["tool_call_id"] for m in first["messages"][2:]]
    assert calls == results and all(len(c) <= 40 for c in calls) and len(set(calls)) == 3
    assert calls[2] == "toolu_01ABC" and calls[0].startswith("portkey-0123")
    assert translate(request, provider=provider, model=model).request.to_dict() == first
    generic = translate(request, model="gpt-4.1").request.to_dict()  # no limit known: as sent
    assert [c["id"] for c in generic["messages"][1]["tool_calls"]] == ids


# --------------------------------------------------------------------------
# The ``user`` field.

CLAUDE_CODE_USER_ID = json.dumps({
    "device_id": "5f0c9a7e4b2d1c8f6a3e9b0d7c4f1a2e8b5d3c6f9a0e7b4d1c2f8a5e3b6d9c0f",
    "account_uuid": "", "session_id": "3b1d6f2a-9c4e-4a8b-b7d5-0e2f1c9a6b3d"}, separators=(",", ":"))


def _user_sent(user_id: str, provider: str = "generic") -> Any:
    sent = translate(body([user("hi")], metadata={"user_id": user_id}), provider=provider, model="m").request.to_dict()
    # OpenAI's Chat Completions replaced ``user`` by ``safety_identifier`` (probe AL D7); the others keep it.
    return sent.get("safety_identifier" if provider == "openai" else "user")


def test_openai_gets_the_end_user_as_safety_identifier_and_others_as_user() -> None:
    sent = translate(body([user("hi")], metadata={"user_id": "u-1"}), provider="openai", model="m").request.to_dict()
    assert sent.get("safety_identifier") == "u-1" and "user" not in sent
    for provider in ("generic", "azure", "openrouter"):
        sent = translate(body([user("hi")], metadata={"user_id": "u-1"}), provider=provider, model="m").request.to_dict()
        assert sent.get("user") == "u-1" and "safety_identifier" not in sent, provider


def test_long_user_id_is_shortened_for_openai() -> None:
    """OpenAI rejects a ``user`` longer than 64 characters; Claude Code sends ~150."""
    assert len(CLAUDE_CODE_USER_ID) > 64
    sent = _user_sent(CLAUDE_CODE_USER_ID, "openai")
    assert isinstance(sent, str) and 0 < len(sent) <= 64
    assert sent == _user_sent(CLAUDE_CODE_USER_ID, "openai")
    # One user in every session (its session id changed the digest: review I); another device is another.
    assert _user_sent(CLAUDE_CODE_USER_ID.replace("3b1d6f2a", "3b1d6f2b"), "openai") == sent
    assert _user_sent(CLAUDE_CODE_USER_ID.replace("5f0c9a7e", "5f0c9a7f"), "openai") != sent
    legacy = "user_" + "ab" * 32 + "_account_1c2d_session_3b1d6f2a-9c4e-4a8b-b7d5-0e2f1c9a6b3d"
    assert _user_sent(legacy, "openai") == _user_sent(legacy.replace("3b1d6f2a", "00000000"), "openai")


@pytest.mark.parametrize("user_id", ["u1", "x" * 64])
def test_short_user_id_is_copied(user_id: str) -> None:
    assert _user_sent(user_id) == user_id


# --------------------------------------------------------------------------
# Warnings, stream switches, purity.


def test_warnings_name_dropped_server_tools() -> None:
    translation = translate(body([user("hi")], tools=[
        {"type": "web_search_20250305", "name": "web_search"},
        {"type": "code_execution_20250825", "name": "code_execution"},
        {"name": "f", "input_schema": {"type": "object", "properties": {}}},
    ]))
    assert translation.warnings == ("dropped tools the upstream cannot run (Anthropic server tools): "
                                    "web_search (web_search_20250305), code_execution (code_execution_20250825)",)
    assert [t["function"]["name"] for t in translation.request.to_dict()["tools"]] == ["f"]


def test_client_tools_are_functions_and_only_server_tools_and_computer_use_are_dropped() -> None:
    """A mixed list: the custom tool and Anthropic's client tools go up as functions, in the client's
    order; each warning names only what was really left out, and why."""
    translation = translate(body([user("hi")], tools=[
        {"type": "web_search_20250305", "name": "web_search"},
        {"type": "bash_20250124", "name": "bash"},
        {"name": "f", "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}},
        {"type": "computer_20250124", "name": "computer", "display_width_px": 1024, "display_height_px": 768},
        {"type": "memory_20250818", "name": "memory"},
        {"type": "text_editor_20250124", "name": "str_replace_editor"},
    ]))
    sent = translation.request.to_dict()["tools"]
    assert [t["function"]["name"] for t in sent] == ["bash", "f", "memory", "str_replace_editor"]
    assert sent[1]["function"]["parameters"] == {"type": "object", "properties": {"a": {"type": "string"}}}
    assert sent[0]["function"]["parameters"]["properties"]["command"]["type"] == "string"
    assert sent[3]["function"]["parameters"]["properties"]["command"]["enum"][-1] == "undo_edit"
    assert translation.warnings == (
        "dropped tools the upstream cannot run (Anthropic server tools): web_search (web_search_20250305)",
        "dropped computer use tools (not translated: they act on screenshots of a display): computer (computer_20250124)",
    )


def test_a_forced_client_tool_forces_its_function() -> None:
    """The outside probe's case: before, no tools and no tool_choice went up, and the answer was text."""
    tools = [{"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
             {"type": "bash_20250124", "name": "bash"}, {"type": "memory_20250818", "name": "memory"}]
    for provider in ("generic", "openai", "gemini", "mistral"):
        translation = translate(body([user("Do it")], tools=tools, tool_choice={"type": "tool", "name": "bash"}),
                                provider=provider, model="m")
        sent = translation.request.to_dict()
        assert [t["function"]["name"] for t in sent["tools"]] == ["str_replace_based_edit_tool", "bash", "memory"]
        assert sent["tool_choice"] == {"type": "function", "function": {"name": "bash"}}, provider
        assert translation.warnings == () and translation.tool_names == {}
    any_tool = translate(body([user("Do it")], tools=tools, tool_choice={"type": "any"})).request.to_dict()
    assert any_tool["tool_choice"] == "required"


def test_no_warnings_for_custom_tools_only() -> None:
    translation = translate(body([user("hi")], tools=[{"name": "f", "input_schema": {"type": "object"}}]))
    assert translation.warnings == ()


def test_stream_override_turns_streaming_off() -> None:
    """The pipeline calls non-streaming upstreams (stream_with_tools=false) with stream=False."""
    req = parse_messages_request(body([user("hi")], stream=True))
    sent = to_chat_request(req, model="m", dialect=DIALECTS["generic"], stream=False).request.to_dict()
    assert "stream" not in sent and "stream_options" not in sent


def test_stream_usage_flag_off_omits_stream_options() -> None:
    import dataclasses

    req = parse_messages_request(body([user("hi")], stream=True))
    dialect = dataclasses.replace(DIALECTS["generic"], stream_usage=False)
    sent = to_chat_request(req, model="m", dialect=dialect).request.to_dict()
    assert sent["stream"] is True and "stream_options" not in sent


def test_translation_does_not_change_the_client_body() -> None:
    request = _load("claude_code_2_1_331_first.anthropic.json")
    before = json.dumps(request, sort_keys=True)
    for provider in ("generic", "gemini", "deepseek", "mistral", "openrouter"):
        translate(request, provider=provider, model="m").request.to_dict()
    assert json.dumps(request, sort_keys=True) == before


# --------------------------------------------------------------------------
# Size: very large and deeply nested schemas.


def _deep_schema(depth: int) -> Dict[str, Any]:
    node: Dict[str, Any] = {"type": "string", "$schema": "x", "additionalProperties": False}
    for i in range(depth):
        node = {"type": "object", "additionalProperties": False, "$schema": "x",
                "properties": {f"p{i}": node, "list": {"type": "array", "items": {"type": "integer", "const": i}}}}
    return node


def _deepest(schema: Dict[str, Any]) -> Dict[str, Any]:
    node = schema
    while "properties" in node:
        node = next(v for k, v in node["properties"].items() if k != "list")
    return node


@pytest.mark.parametrize("provider", ["generic", "gemini"])
def test_deep_schema_translates(provider: str) -> None:
    """Nesting just under the handler's limit of 128 must not hit the recursion limit."""
    request = body([user("hi")], tools=[{"name": "deep", "input_schema": _deep_schema(60)}])
    params = translate(request, provider=provider, model="m").request.to_dict()["tools"][0]["function"]["parameters"]
    assert "$schema" not in json.dumps(params)
    leaf = _deepest(params)
    assert leaf["type"] == "string"
    if provider == "gemini":
        assert "additionalProperties" not in json.dumps(params)
        assert '"const"' not in json.dumps(params)


def test_very_large_schema_translates() -> None:
    props = {f"field_{i}": {"type": "string", "description": "d" * 50, "enum": [str(j) for j in range(20)]} for i in range(3000)}
    request = body([user("hi")], tools=[{"name": f"tool_{k}", "input_schema": {"type": "object", "properties": props}}
                                        for k in range(5)])
    for provider in ("generic", "gemini"):
        tools = translate(request, provider=provider, model="m").request.to_dict()["tools"]
        assert len(tools) == 5
        assert tools[4]["function"]["parameters"]["properties"]["field_2999"]["enum"][-1] == "19"


@pytest.mark.parametrize("extra", [
    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": ""}},
    {"type": "text", "text": ""},
])
def test_a_document_of_no_text_next_to_a_tool_result_sends_no_empty_user_message(extra: Dict[str, Any]) -> None:
    """The tool result is the turn's content; an empty text document beside it is nothing, as an
    empty text block is (an empty user message is refused by strict servers)."""
    messages = translate(body([
        user("hi"), assistant([{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]),
        user([{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}, extra])])).request.to_dict()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    titled = dict(extra, title="notes.txt") if extra["type"] == "document" else {"type": "text", "text": "notes.txt"}
    messages = translate(body([
        user("hi"), assistant([{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]),
        user([{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}, titled])])).request.to_dict()["messages"]
    assert messages[-1] == {"role": "user", "content": "notes.txt"}  # a title alone is content


@pytest.mark.parametrize("extra, model, thinking", [
    ({}, "deepseek-v4-flash", {"type": "disabled"}),  # asked for none: V4 would think all the same
    ({}, "deepseek-reasoner", None),  # its name asks for thinking
    ({"output_config": {"effort": "max"}}, "deepseek-v4-flash", None),  # an effort asks for thinking of it
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "deepseek-v4-flash", {"type": "enabled"}),
])
def test_deepseek_is_told_to_think_only_when_the_client_asks(extra: Dict[str, Any], model: str, thinking: Any) -> None:
    """DeepSeek V4 thinks unless told not to: without thinking in the request its reasoning was billed,
    hidden from the client and sent back as "" on tool turns (probe V); an effort alone is a request
    for thinking of that effort, as DeepSeek reads output_config.effort (review X)."""
    body = {"model": "x", "max_tokens": 4096, "messages": [{"role": "user", "content": "hi"}], **extra}
    sent = to_chat_request(parse_messages_request(body), model=model, dialect=dialect_for("deepseek", model)).request.to_dict()
    assert sent.get("thinking") == thinking, sent


@pytest.mark.parametrize("model, thinking, effort", [
    ("mistral-medium-3-5", {"type": "enabled", "budget_tokens": 4000}, "high"),  # what it recommends for code
    ("mistral-small-latest", {"type": "adaptive"}, "high"),
    ("mistral-small-2603", {"type": "disabled"}, "none"),
    ("mistral-large-4-0", {"type": "enabled", "budget_tokens": 4000}, "high"),
    ("mistral-medium-3-5", None, None),  # thinking not asked about: the model's default
    ("mistral-large-latest", {"type": "enabled", "budget_tokens": 4000}, None),  # no adjustable reasoning
    ("codestral-latest", {"type": "disabled"}, None),
])
def test_mistrals_adjustable_reasoning_follows_the_clients_thinking(model: str, thinking: Any,
                                                                    effort: Optional[str]) -> None:
    """Probe AL D4: docs.mistral.ai documents reasoning_effort ("high" or "none") for Small 4,
    Medium 3.5 and Large 4; a client's thinking had no effect there."""
    extra = {"thinking": thinking} if thinking else {}
    sent = translate(body([user("hi")], max_tokens=8000, **extra), provider="mistral", model=model).request.to_dict()
    assert sent.get("reasoning_effort") == effort


@pytest.mark.parametrize("provider, model, effort", [
    ("openai", "gpt-5", "minimal"),
    ("openai", "gpt-5-mini", "minimal"),
    ("openai", "gpt-5.1", "none"),
    ("openai", "gpt-5.2-codex", "low"),
    ("openai", "o4-mini", "low"),
    ("openai", "gpt-5-pro", None),  # it takes only "high": its default
    ("openai", "gpt-4.1", None),  # no reasoning model
    ("generic", "gpt-5", "minimal"),  # behind a gateway
    ("openrouter", "openai/gpt-5", None),  # OpenRouter's own reasoning object says it
])
def test_thinking_disabled_asks_an_openai_reasoning_model_for_its_least_effort(provider: str, model: str,
                                                                                effort: Optional[str]) -> None:
    """Probe AN 5: Claude Code's auto-mode check (thinking disabled, max_tokens 64) went to gpt-5 with
    no effort, which reasons at its default (medium) and spends the 64 tokens before any answer.
    RESPONSES.md 5: gpt-5.1 on take "none", gpt-5 "minimal", the o-series and codex "low"."""
    check = body([user("is this risky?")], max_tokens=64, thinking={"type": "disabled"}, stop_sequences=["</severity>"])
    sent = translate(check, provider=provider, model=model).request.to_dict()
    assert sent.get("reasoning_effort") == effort
    unasked = translate(body([user("hi")], max_tokens=64), provider=provider, model=model).request.to_dict()
    assert "reasoning_effort" not in unasked  # no thinking asked about: the model's own default, as before
