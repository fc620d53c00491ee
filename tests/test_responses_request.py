"""Anthropic request -> OpenAI Responses body (RESPONSES.md sections 1, 5, 6, 7).

The golden cases in ``fixtures/responses_api/requests`` carry most of the weight:
``<case>.responses.json`` is the exact body to POST, written by hand from
RESPONSES.md; the client body is ``<case>.anthropic.json`` or, for the real
Claude Code captures, the file the meta's ``source`` names; ``<case>.meta.json``
gives the upstream model and the caller's options. The tests below cover what
a fixture shows poorly: model families, id clamping, prompt-cache stability.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import re
from typing import Any, Dict, List

import pytest

from claudeproxy.anthropic_types import parse_messages_request
from claudeproxy.errors import InvalidRequest
from claudeproxy.apis.responses.request import (
    Translation,
    call_id,
    is_reasoning_model,
    to_responses_request,
)
from claudeproxy.signatures import decode_signature, encode_signature

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
CASES_DIR = os.path.join(FIXTURES, "responses_api", "requests")
CASES = sorted(os.path.basename(p)[: -len(".responses.json")] for p in glob.glob(os.path.join(CASES_DIR, "*.responses.json")))
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_OPTIONS = ("max_output_tokens", "stream", "web_search", "cache_key")


def _load(path: str) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def case_input(case: str) -> Dict[str, Any]:
    meta = _load(os.path.join(CASES_DIR, f"{case}.meta.json"))
    source = os.path.join(FIXTURES, meta["source"]) if "source" in meta else os.path.join(CASES_DIR, f"{case}.anthropic.json")
    return _load(source)


def translate_case(case: str) -> Translation:
    meta = _load(os.path.join(CASES_DIR, f"{case}.meta.json"))
    req = parse_messages_request(case_input(case))
    return to_responses_request(req, model=meta["model"], **{k: meta[k] for k in _OPTIONS if k in meta})


def translate(body: Dict[str, Any], model: str = "gpt-5.4", **kw: Any) -> Translation:
    return to_responses_request(parse_messages_request(body), model=model, **kw)


def body(messages: List[Dict[str, Any]], **extra: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {"model": "claude-test", "max_tokens": 100, "messages": messages}
    out.update(extra)
    return out


def sig(api: str, state: Any) -> str:
    raw = json.dumps({"p": api, "d": state}).encode("ascii")
    return "cpx1." + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


# --------------------------------------------------------------------------
# Golden cases.


def test_there_are_golden_cases_for_each_feature() -> None:
    wanted = {
        "cc_331_first", "cc_331_followup_haiku", "cc_331_title_structured", "cc_112_followup_gpt41",
        "reasoning_replay_foreign_dropped", "pairing_repaired_ids_clamped", "web_search_server_tool",
        "web_search_unavailable_dropped", "o_series_probe_budget_required_tool", "gpt41_sampling_cap_named_tool",
        "user_media_parts", "client_tools_sent_as_functions",
    }
    assert wanted <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_golden_request(case: str) -> None:
    meta = _load(os.path.join(CASES_DIR, f"{case}.meta.json"))
    translation = translate_case(case)
    expected = _load(os.path.join(CASES_DIR, f"{case}.responses.json"))
    assert translation.body == expected
    assert translation.tool_names == meta.get("tool_names", {})
    for needle in meta.get("warnings", []):
        assert any(needle in w for w in translation.warnings), (needle, translation.warnings)
    if not meta.get("warnings"):
        assert translation.warnings == ()
    # What goes up is plain JSON the API accepts: names and call ids within its limits.
    json.dumps(translation.body, allow_nan=False)
    for tool in translation.body.get("tools", []):
        assert tool["type"] != "function" or NAME_RE.match(tool["name"])
    for item in translation.body["input"]:
        assert len(item.get("call_id", "")) <= 64


def test_claude_code_turns_only_append_so_the_prompt_cache_holds() -> None:
    # First request and the follow-up of the same session, sent to the same model: the
    # instructions, the tools and the whole earlier input must be byte-identical.
    first = to_responses_request(parse_messages_request(case_input("cc_331_first")), model="gpt-5.4").body
    second = to_responses_request(parse_messages_request(case_input("cc_331_followup_haiku")), model="gpt-5.4").body
    assert first["instructions"] == second["instructions"]
    assert first["tools"] == second["tools"]
    assert second["input"][: len(first["input"])] == first["input"]


def test_billing_line_is_stripped_whatever_its_suffix() -> None:
    for suffix in ("4f2; cc_entrypoint=sdk-cli;", "604; cc_entrypoint=cli;"):
        system = [{"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1.331.{suffix}"},
                  {"type": "text", "text": "You are Claude Code."}]
        assert translate(body([{"role": "user", "content": "hi"}], system=system)).body["instructions"] == "You are Claude Code."
    only = [{"type": "text", "text": "x-anthropic-billing-header: cc_version=1;"}]
    assert "instructions" not in translate(body([{"role": "user", "content": "hi"}], system=only)).body
    # The same words elsewhere are the client's text and stay.
    note = [{"type": "text", "text": "Note: x-anthropic-billing-header: y"}]
    assert translate(body([{"role": "user", "content": "hi"}], system=note)).body["instructions"] == note[0]["text"]


def test_billing_line_is_stripped_wherever_it_stands_as_on_chat() -> None:
    """Only a first line in exactly that case went (a review): as the second system block, or in a
    system turn later in the conversation, its per-session suffix voided the upstream's prompt cache
    from there on. Chat and passthrough took it out anywhere."""
    line = "x-anthropic-billing-header: cc_version=2.1.331.4f2; cc_entrypoint=cli;"
    system = [{"type": "text", "text": "You are helpful."}, {"type": "text", "text": line}]
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "system", "content": [{"type": "text", "text": line + "\nMind the tests."}]},
            {"role": "user", "content": "go on"}]
    sent = translate(body(msgs, system=system)).body
    assert sent["instructions"] == "You are helpful."
    assert "x-anthropic-billing-header" not in json.dumps(sent)
    assert any("Mind the tests." in json.dumps(item) for item in sent["input"])


# --------------------------------------------------------------------------
# Models.


@pytest.mark.parametrize("model", [
    "o1", "o3", "o3-pro", "o4-mini", "o4-mini-deep-research", "gpt-5", "gpt-5-mini", "gpt-5.4", "gpt-5-codex",
    "gpt-5.1-codex-max", "gpt-5-pro", "codex-mini-latest", "openai/gpt-5", "GPT-5.5",
])
def test_reasoning_models(model: str) -> None:
    assert is_reasoning_model(model)


@pytest.mark.parametrize("model", ["gpt-4.1", "gpt-4o", "gpt-5-chat-latest", "gpt-5.1-chat", "my-deployment", "omni", "qwen3"])
def test_models_that_do_not_reason(model: str) -> None:
    assert not is_reasoning_model(model)


def test_reasoning_model_gets_no_sampling_and_a_plain_one_no_reasoning() -> None:
    req = body([{"role": "user", "content": "hi"}], temperature=0.3, top_p=0.5, thinking={"type": "adaptive"},
               output_config={"effort": "max"})
    reasoning = translate(req, model="gpt-5.5").body
    assert "temperature" not in reasoning and "top_p" not in reasoning
    assert reasoning["reasoning"] == {"effort": "xhigh", "summary": "auto"}
    plain = translate(req, model="gpt-4o").body
    assert (plain["temperature"], plain["top_p"]) == (0.3, 0.5)
    assert "reasoning" not in plain and "include" not in plain


@pytest.mark.parametrize("model", ["gpt-oss-120b", "openai/gpt-oss-20b", "gpt-oss:20b"])
def test_gpt_oss_is_asked_to_reason_and_keeps_its_sampling(model: str) -> None:
    """gpt-oss reasons (effort low/medium/high) but is no OpenAI reasoning model: the thinking the
    client asked for becomes ``reasoning`` (it was dropped), temperature stays, and no encrypted
    reasoning is asked for (its servers keep none)."""
    req = body([{"role": "user", "content": "hi"}], temperature=0.3, thinking={"type": "enabled", "budget_tokens": 2000})
    out = translate(req, model=model).body
    assert out["reasoning"] == {"effort": "low", "summary": "auto"}
    assert out["temperature"] == 0.3 and "include" not in out


def test_thinking_not_asked_for_gets_no_summaries_and_no_blob() -> None:
    # Otherwise a thinking block would come back that the client never asked for.
    out = translate(body([{"role": "user", "content": "hi"}], output_config={"effort": "low"})).body
    assert out["reasoning"] == {"effort": "low"}
    assert "include" not in out
    disabled = translate(body([{"role": "user", "content": "hi"}], thinking={"type": "disabled"},
                              output_config={"effort": "low"})).body
    # The model's least effort, not its default (gpt-5.4's is none: probe AN 5); no summaries, no blob.
    assert disabled["reasoning"] == {"effort": "none"} and "include" not in disabled


def test_max_output_tokens_is_clamped_to_the_cap_and_to_at_least_16() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    assert translate(body(msgs, max_tokens=128000), max_output_tokens=64000).body["max_output_tokens"] == 64000
    assert translate(body(msgs, max_tokens=1000), max_output_tokens=64000).body["max_output_tokens"] == 1000
    assert translate(body(msgs, max_tokens=1)).body["max_output_tokens"] == 16
    assert translate(body(msgs, max_tokens=0)).body["max_output_tokens"] == 16


def test_stream_and_cache_key_as_asked() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    out = translate(body(msgs), stream=True, cache_key="sess-3f2a").body
    assert out["stream"] is True and out["prompt_cache_key"] == "sess-3f2a" and out["store"] is False
    assert "prompt_cache_key" not in translate(body(msgs)).body
    long_key = translate(body(msgs), cache_key="k" * 200).body["prompt_cache_key"]
    assert len(long_key) <= 64 and long_key == translate(body(msgs), cache_key="k" * 200).body["prompt_cache_key"]


# --------------------------------------------------------------------------
# Reasoning replay and pairing (RESPONSES.md 7.1-7.5).


def _turn(thinking_signature: str) -> List[Dict[str, Any]]:
    return [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "plan", "signature": thinking_signature},
            {"type": "tool_use", "id": "call_1", "name": "Read", "input": {"path": "a"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "ok"}]},
    ]


def _types(out: Dict[str, Any]) -> List[str]:
    return [item["type"] for item in out["input"]]


def test_own_reasoning_goes_back_right_before_its_call() -> None:
    signature = encode_signature("responses", {"id": "rs_1", "encrypted_content": "gAAA"})
    out = translate(body(_turn(signature), thinking={"type": "adaptive"})).body
    assert _types(out) == ["message", "reasoning", "function_call", "function_call_output"]
    assert out["input"][1] == {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "plan"}],
                               "encrypted_content": "gAAA"}


@pytest.mark.parametrize("signature", [
    sig("openai", None),  # a Chat Completions block of this proxy
    sig("gemini", {"ts": {"call_1": "abc"}}),
    sig("responses", {"id": "rs_1"}),  # blob never asked for
    sig("responses", {"id": "", "encrypted_content": "gAAA"}),
    sig("responses", {"id": 5, "encrypted_content": "gAAA"}),
    sig("responses", ["not", "an", "object"]),
    "EqQBCkYIBxgCKkBsig",  # Claude's
    "",
    "cpx1.%%%",
])
def test_foreign_or_broken_thinking_is_never_forged_into_an_item(signature: str) -> None:
    out = translate(body(_turn(signature))).body
    assert _types(out) == ["message", "function_call", "function_call_output"]


def test_a_reasoning_item_goes_up_once_when_its_block_comes_twice() -> None:
    """A client that carries a thinking block into a later turn: the item went up twice, and OpenAI
    answers 400 "Duplicate item found with id rs_1" (vercel/ai#7883). Its first place keeps it."""
    signature = encode_signature("responses", {"id": "rs_1", "encrypted_content": "gAAA"})
    thinking = {"type": "thinking", "thinking": "plan", "signature": signature}
    msgs = [{"role": "user", "content": "one"},
            {"role": "assistant", "content": [thinking, {"type": "text", "text": "first"}]},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": [thinking, {"type": "text", "text": "second"}]},
            {"role": "user", "content": "three"}]
    out = translate(body(msgs, thinking={"type": "adaptive"})).body
    assert _types(out) == ["message", "reasoning", "message", "message", "message", "message"]
    assert [i["content"][0]["text"] for i in out["input"] if i["type"] == "message"][1:4] == ["first", "two", "second"]


def test_reasoning_is_not_replayed_when_unreadable_or_to_a_plain_model() -> None:
    signature = encode_signature("responses", {"id": "rs_1", "encrypted_content": "gAAA"})
    assert "reasoning" in _types(translate(body(_turn(signature)), unreadable=frozenset({"rs_2"})).body)
    assert "reasoning" not in _types(translate(body(_turn(signature)), unreadable=frozenset({"rs_1"})).body)
    assert "reasoning" not in _types(translate(body(_turn(signature)), model="gpt-4.1").body)


def test_decode_signature_checks_the_minting_api() -> None:
    signature = encode_signature("responses", {"id": "rs_1", "encrypted_content": "b"})
    assert decode_signature(signature, api="responses") == {"id": "rs_1", "encrypted_content": "b"}
    assert decode_signature(signature, api="openai") is None
    assert decode_signature(signature) == {"id": "rs_1", "encrypted_content": "b"}


def test_call_id_clamp_is_stable_and_leaves_short_ids_alone() -> None:
    assert call_id("call_abc") == "call_abc"
    assert call_id("x" * 64) == "x" * 64
    long_a, long_b = "t" * 65, "t" * 64 + "u"
    assert len(call_id(long_a)) == 64 and call_id(long_a) == call_id(long_a)
    assert call_id(long_a) != call_id(long_b)


def test_output_for_a_call_in_the_same_turn_follows_all_calls() -> None:
    msgs = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "c1", "name": "A", "input": {}},
            {"type": "tool_use", "id": "c2", "name": "B", "input": {}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "typed alongside"},
            {"type": "tool_result", "tool_use_id": "c2", "content": "two"},
            {"type": "tool_result", "tool_use_id": "c1", "content": "one"},
            {"type": "tool_result", "tool_use_id": "c1", "content": "dup"}]},
    ]
    items = translate(body(msgs)).body["input"]
    assert [(i["type"], i.get("call_id")) for i in items] == [
        ("message", None), ("function_call", "c1"), ("function_call", "c2"),
        ("function_call_output", "c2"), ("function_call_output", "c1"), ("message", None)]
    assert items[-1]["content"] == [{"type": "input_text", "text": "typed alongside"},
                                    {"type": "input_text", "text": "[tool_result c1] dup"}]


def test_is_error_without_text_still_says_error() -> None:
    msgs = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "A", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "is_error": True}]},
    ]
    assert translate(body(msgs)).body["input"][-1] == {"type": "function_call_output", "call_id": "c1", "output": "Error"}


def test_system_message_last_stays_last_and_in_place() -> None:
    msgs = [{"role": "user", "content": "hi"}, {"role": "system", "content": "<total_tokens>5 tokens left</total_tokens>"}]
    items = translate(body(msgs)).body["input"]
    assert items[-1] == {"type": "message", "role": "developer", "content": "<total_tokens>5 tokens left</total_tokens>"}
    assert translate(body(msgs), model="gpt-4.1").body["input"][-1]["role"] == "system"
    empty = [{"role": "user", "content": "hi"}, {"role": "system", "content": []}]
    assert len(translate(body(empty)).body["input"]) == 1


# --------------------------------------------------------------------------
# Tools.


def test_tool_choice_mapping() -> None:
    tools = [{"name": "Read", "input_schema": {"type": "object"}}]
    msgs = [{"role": "user", "content": "hi"}]
    for choice, expected in [({"type": "auto"}, "auto"), ({"type": "none"}, "none"), ({"type": "any"}, "required"),
                             ({"type": "tool", "name": "Read"}, {"type": "function", "name": "Read"})]:
        out = translate(body(msgs, tools=tools, tool_choice=choice)).body
        assert out["tool_choice"] == expected and "parallel_tool_calls" not in out
    out = translate(body(msgs, tools=tools, tool_choice={"type": "auto", "disable_parallel_tool_use": True})).body
    assert out["parallel_tool_calls"] is False
    assert "tool_choice" not in translate(body(msgs, tool_choice={"type": "any"})).body
    # A forced tool the request does not define is refused at the door, not sent on as "auto".
    with pytest.raises(InvalidRequest, match="tool_choice.name"):
        translate(body(msgs, tools=tools, tool_choice={"type": "tool", "name": "Gone"}))
    # Unless an MCP server (the connector's) may name it: dropped here, so "auto" as before.
    mcp = [{"type": "url", "url": "https://mcp.example/sse", "name": "docs"}]
    assert translate(body(msgs, tools=tools, mcp_servers=mcp,
                          tool_choice={"type": "tool", "name": "search_docs"})).body["tool_choice"] == "auto"


def test_tool_names_are_aliased_and_mapped_back() -> None:
    name = "mcp__my server__do.thing" + "x" * 60
    tools = [{"name": name, "input_schema": {"type": "object", "properties": {}}}]
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "tool_use", "id": "c", "name": name, "input": {}}]}]
    translation = translate(body(msgs, tools=tools))
    alias = translation.body["tools"][0]["name"]
    assert NAME_RE.match(alias) and translation.tool_names == {alias: name}
    assert translation.body["input"][1]["name"] == alias


def test_web_search_options_and_other_server_tools() -> None:
    tools = [{"type": "web_search_20260209", "name": "web_search", "blocked_domains": ["x.com"]},
             {"type": "web_fetch_20250910", "name": "web_fetch"},
             {"name": "Read", "input_schema": {"type": "object"}}]
    translation = translate(body([{"role": "user", "content": "hi"}], tools=tools), web_search=True)
    assert [t["type"] for t in translation.body["tools"]] == ["function", "web_search"]
    assert translation.body["tools"][1] == {"type": "web_search"}
    assert "max_tool_calls" not in translation.body
    assert any("blocked_domains" in w for w in translation.warnings)
    assert any("web_fetch (web_fetch_20250910)" in w for w in translation.warnings)
    assert not any("web_search (" in w for w in translation.warnings)


def test_client_tools_are_functions_beside_custom_and_hosted_search_tools() -> None:
    """A mixed list: custom and client tools are flat functions in the client's order, web search the
    hosted tool; the warnings name only what was left out."""
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
             {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool", "max_characters": 800},
             {"name": "Read", "input_schema": {"type": "object"}},
             {"type": "web_fetch_20250910", "name": "web_fetch"},
             {"type": "bash_20241022", "name": "bash"},
             {"type": "computer_20251124", "name": "computer", "display_width_px": 1280, "display_height_px": 800}]
    choice = {"type": "tool", "name": "str_replace_based_edit_tool", "disable_parallel_tool_use": True}
    translation = translate(body([{"role": "user", "content": "hi"}], tools=tools, tool_choice=choice), web_search=True)
    sent = translation.body["tools"]
    assert [(t["type"], t.get("name")) for t in sent] == [
        ("function", "str_replace_based_edit_tool"), ("function", "Read"), ("function", "bash"), ("web_search", None)]
    assert sent[0]["strict"] is False and sent[0]["parameters"]["required"] == ["command", "path"]
    assert "max_characters" not in json.dumps(sent)
    assert translation.body["tool_choice"] == {"type": "function", "name": "str_replace_based_edit_tool"}
    assert translation.body["parallel_tool_calls"] is False and translation.body["max_tool_calls"] == 3
    assert translation.warnings == (
        "dropped tools the upstream cannot run (Anthropic server tools): web_fetch (web_fetch_20250910)",
        "dropped computer use tools (not translated: they act on screenshots of a display): computer (computer_20251124)",
    )
    assert translation.tool_names == {}


def test_a_forced_client_tool_forces_its_function() -> None:
    tools = [{"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
             {"type": "bash_20250124", "name": "bash"}, {"type": "memory_20250818", "name": "memory"}]
    for search in (False, True):
        translation = translate(body([{"role": "user", "content": "Do it"}], tools=tools,
                                     tool_choice={"type": "tool", "name": "bash"}), web_search=search)
        assert [t["name"] for t in translation.body["tools"]] == ["str_replace_based_edit_tool", "bash", "memory"]
        assert translation.body["tool_choice"] == {"type": "function", "name": "bash"}
        assert translation.warnings == ()


def test_forcing_the_search_tool_means_a_search() -> None:
    search = {"type": "web_search_20250305", "name": "web_search"}
    msgs = [{"role": "user", "content": "news?"}]
    choice = {"type": "tool", "name": "web_search"}
    assert translate(body(msgs, tools=[search], tool_choice=choice), web_search=True).body["tool_choice"] == "required"
    mixed = [search, {"name": "Read", "input_schema": {"type": "object"}}]
    assert translate(body(msgs, tools=mixed, tool_choice=choice), web_search=True).body["tool_choice"] == "auto"


def test_reasoning_override_for_opaque_deployment_names() -> None:
    req = body([{"role": "user", "content": "hi"}], temperature=0.2, thinking={"type": "adaptive"})
    out = translate(req, model="prod-deployment-7", reasoning=True).body
    assert out["reasoning"] == {"summary": "auto"} and "temperature" not in out
    assert out["include"] == ["reasoning.encrypted_content"]
    assert "reasoning" not in translate(req, model="gpt-5.4", reasoning=False).body


def test_summaries_can_be_left_out_for_unverified_organisations() -> None:
    req = body([{"role": "user", "content": "hi"}], thinking={"type": "adaptive"}, output_config={"effort": "high"})
    out = translate(req, reasoning_summary=False).body
    assert out["reasoning"] == {"effort": "high"}
    assert out["include"] == ["reasoning.encrypted_content"]  # the blob still round-trips


def test_a_document_of_no_text_next_to_a_tool_result_sends_no_empty_user_message() -> None:
    """As an empty text block: nothing; an input message without content is refused."""
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": ""}}
    items = translate(body([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}, doc]}])).body["input"]
    assert [item.get("type", item.get("role")) for item in items] == ["message", "function_call", "function_call_output"]
    titled = dict(doc, title="notes.txt")
    items = translate(body([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}, titled]}])).body["input"]
    assert items[-1]["role"] == "user" and items[-1]["content"] == [{"type": "input_text", "text": "notes.txt"}]


@pytest.mark.parametrize("model, reasoning", [("gpt-5", {"effort": "minimal"}), ("gpt-5.1-codex", {"effort": "low"}),
                                              ("o3", {"effort": "low"}), ("gpt-5-pro", None),
                                              ("o3-deep-research", None)])  # medium only: its one effort
def test_claude_codes_auto_mode_check_gets_the_least_effort(model: str, reasoning: Any) -> None:
    """Probe AN 5: thinking disabled with max_tokens 64 went with no reasoning at all, and gpt-5
    reasoned at medium past the 64 tokens: Claude Code sent the check five times more."""
    out = translate(body([{"role": "user", "content": "<transcript>"}], max_tokens=64,
                         thinking={"type": "disabled"}, stop_sequences=["</severity>"]), model=model).body
    assert out.get("reasoning") == reasoning and "include" not in out


def test_thinking_off_with_web_search_asks_gpt5_for_low_not_minimal() -> None:
    """OpenAI's web search guide: gpt-5 takes no web search at minimal effort (review AO 3)."""
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    out = translate(body([{"role": "user", "content": "news?"}], thinking={"type": "disabled"}, tools=[search]),
                    model="gpt-5", web_search=True).body
    assert out["reasoning"] == {"effort": "low"} and any(t["type"] == "web_search" for t in out["tools"])
