"""Every upstream request body the proxy makes is a valid OpenAI Chat Completions request.

Checked with ``jsonschema`` against OpenAI's own request schema (a copy of
shared/openai-chat-request.schema.json beside this file), plus the rules
OpenAI enforces beyond the schema (``openai_problems``): tool messages answer
every tool call, no empty ``tools``, function names ``^[a-zA-Z0-9_-]{1,64}$``,
and, for the OpenAI-family dialects, no top-level field OpenAI does not know
(it rejects ``thinking``, ``context_management``, ``output_config``...:
CLAUDE-CODE.md "What this means", item 3).

Bodies checked: the golden request fixtures (tests/fixtures/requests), and
what the fake upstream records when Claude Code's request shapes (CLAUDE-CODE.md:
first request, follow-up with a tool_result and a trailing system message,
title request with ``tools: []`` and ``output_config.format``) and a request
using every block type go through the real proxy, for every dialect.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import pytest

pytest.importorskip("jsonschema")

from conformance_helpers import FIXTURES, ROOT, SCHEMA_PATH, openai_problems, schema_validator  # noqa: E402
from conftest import CLIENT_KEY, request  # noqa: E402

pytestmark = pytest.mark.conformance
REQUESTS = os.path.join(FIXTURES, "requests")
OPENAI_FAMILY = ("generic", "openai", "azure")  # held to OpenAI's field list; others may add their own fields


def is_strict(provider: Optional[str]) -> bool:
    return (provider or "generic") in OPENAI_FAMILY


def non_openai_allowed(problem: str) -> bool:
    """Deviations a non-OpenAI dialect makes on purpose: more than 4 stop strings (PROTOCOL.md 1.1)."""
    return problem.startswith("stop:")


def problems_for(body: Any, provider: Optional[str]) -> List[str]:
    found = openai_problems(body, strict_fields=is_strict(provider))
    return found if is_strict(provider) else [p for p in found if not non_openai_allowed(p)]


# ----------------------------------------------------------------------
# The checker itself.


def test_schema_copy_is_valid_and_current() -> None:
    schema_validator()  # raises if the schema itself is invalid
    shared = os.path.join(os.path.dirname(ROOT), "shared", "openai-chat-request.schema.json")
    if os.path.exists(shared):  # CI lays shared/ beside the clone; elsewhere the copy stands alone
        with open(shared, encoding="utf-8") as a, open(SCHEMA_PATH, encoding="utf-8") as b:
            assert json.load(a) == json.load(b), "tests/conformance has a stale copy of the schema"


BAD_BODIES = {
    "no_messages": ({"model": "m", "messages": []}, "messages"),
    "unknown_role": ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages/0"),
    "tool_message_without_id": ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages/0"),
    "empty_tools": ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": []}, "tools: empty"),
    "anthropic_field": ({"model": "m", "messages": [{"role": "user", "content": "x"}],
                         "thinking": {"type": "adaptive"}}, "'thinking'"),
    "unanswered_tool_call": ({"model": "m", "messages": [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": "next"}]}, "unanswered"),
    "bad_function_name": ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [
        {"type": "function", "function": {"name": "a.b", "parameters": {"type": "object"}}}]}, "a.b"),
    "five_stop_strings": ({"model": "m", "messages": [{"role": "user", "content": "x"}],
                           "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    "arguments_not_a_string": ({"model": "m", "messages": [
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "tool_call_id": "c", "content": "r"}]}, "messages/0"),
}


@pytest.mark.parametrize("body,needle", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
def test_checker_rejects_what_openai_rejects(body: Dict[str, Any], needle: str) -> None:
    problems = openai_problems(body)
    assert any(needle in p for p in problems), problems


# ----------------------------------------------------------------------
# Golden request fixtures.


def fixture_cases() -> List[Any]:
    cases = []
    for path in sorted(glob.glob(os.path.join(REQUESTS, "*.openai.json"))):
        name = os.path.basename(path)[: -len(".openai.json")]
        cases.append(pytest.param(path, id=name))
    return cases


def meta_for(path: str) -> Dict[str, Any]:
    meta = path[: -len(".openai.json")] + ".meta.json"
    if not os.path.exists(meta):
        return {}
    with open(meta, encoding="utf-8") as fh:
        return dict(json.load(fh))


@pytest.mark.parametrize("path", fixture_cases())
def test_request_fixture_is_a_valid_openai_request(path: str) -> None:
    with open(path, encoding="utf-8") as fh:
        body = json.load(fh)
    provider = meta_for(path).get("provider")
    assert problems_for(body, provider) == []


# ----------------------------------------------------------------------
# Bodies recorded from the real proxy.

DIALECT_RUNS: List[Tuple[str, str]] = [
    ("generic", "local-model"),
    ("openai", "gpt-4o"),
    ("openai", "gpt-5"),
    ("openai", "o1-mini"),
    ("azure", "gpt-4.1"),
    ("openrouter", "anthropic/claude-sonnet-4.5"),
    ("deepseek", "deepseek-chat"),
    ("deepseek", "deepseek-reasoner"),
    ("groq", "openai/gpt-oss-120b"),
    ("mistral", "mistral-large-latest"),
    ("gemini", "gemini-2.5-pro"),
    ("ollama", "qwen3:8b"),
    ("vllm", "Qwen/Qwen3-32B"),
    ("lmstudio", "qwen2.5-coder"),
    ("llamacpp", "local"),
]

SCHEMA_2020 = "https://json-schema.org/draft/2020-12/schema"


def cc_tool(name: str, properties: Dict[str, Any], required: List[str]) -> Dict[str, Any]:
    """A tool as Claude Code 2.1.331 declares it ($schema, additionalProperties: false)."""
    return {"name": name, "description": f"The {name} tool.", "input_schema": {
        "$schema": SCHEMA_2020, "type": "object", "properties": properties, "required": required,
        "additionalProperties": False}}


CC_TOOLS = [
    cc_tool("Bash", {"command": {"type": "string"}, "timeout": {"type": "number", "exclusiveMinimum": 0}},
            ["command"]),
    cc_tool("Write", {"file_path": {"type": "string"}, "content": {"type": "string"}}, ["file_path", "content"]),
    cc_tool("Read", {"file_path": {"type": "string"}, "limit": {"type": "integer", "default": 2000}}, ["file_path"]),
    cc_tool("Edit", {"file_path": {"type": "string"}, "old_string": {"type": "string"},
                     "new_string": {"type": "string"}, "replace_all": {"type": "boolean", "default": False}},
            ["file_path", "old_string", "new_string"]),
    {"name": "DeferredToolPlaceholder", "description": "Never call this tool.", "defer_loading": True,
     "input_schema": {"type": "object"}},
]
CC_SYSTEM = [
    {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.331.a6b; cc_entrypoint=sdk-cli;"},
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
     "cache_control": {"type": "ephemeral"}},
    {"type": "text", "text": "You are an interactive agent that helps users with software engineering tasks. " * 20,
     "cache_control": {"type": "ephemeral"}},
]
CC_FIRST_MESSAGES = [
    {"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>\nAttribution for git commits: none.\n</system-reminder>"},
        {"type": "text", "text": "Create hello.txt containing hi"}]},
    {"role": "system", "output_config": {"effort": "medium"}, "content": [
        {"type": "text", "text": "# Environment\nYou have been invoked in the following environment:\n"
                                 " - Primary working directory: /tmp/work", "cache_control": {"type": "ephemeral"}}]},
]
CC_TOOL_TURN = [
    {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "I will write it.", "signature": "EqQBCkgIARABGAIiQL"},
        {"type": "tool_use", "id": "toolu_01AbCdEfGhIjKlMnOpQrStUv", "name": "Write",
         "input": {"file_path": "/tmp/work/hello.txt", "content": "hi\n"}}]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_01AbCdEfGhIjKlMnOpQrStUv",
         "content": "File created successfully at: /tmp/work/hello.txt", "cache_control": {"type": "ephemeral"}}]},
    {"role": "system", "content": [{"type": "text", "text": "<total_tokens>990000 tokens left</total_tokens>",
                                    "cache_control": {"type": "ephemeral"}}]},
]
CC_COMMON = {
    "metadata": {"user_id": json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": "s-1"})},
    "max_tokens": 128000,
    "thinking": {"type": "adaptive", "display": "updates"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "output_config": {"effort": "medium"},
    "stream": True,
}


def cc_first() -> Dict[str, Any]:
    return {"model": "claude-opus-5-5", "messages": CC_FIRST_MESSAGES, "system": CC_SYSTEM, "tools": CC_TOOLS,
            **CC_COMMON}


def cc_follow_up() -> Dict[str, Any]:
    return {**cc_first(), "messages": CC_FIRST_MESSAGES + CC_TOOL_TURN}


def cc_title() -> Dict[str, Any]:
    title_schema = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"],
                    "additionalProperties": False}
    return {"model": "claude-opus-5-5", "tools": [],
            "system": [{"type": "text", "text": "Summarize this coding conversation in under 50 characters."}],
            "messages": [{"role": "user", "content": "Create hello.txt containing hi"}],
            **CC_COMMON, "output_config": {"effort": "medium", "format": {"type": "json_schema", "schema": title_schema}}}


def cc_legacy_follow_up() -> Dict[str, Any]:
    """2.1.112: no system-role messages, prompt caching on the last user text, 32000 tokens."""
    user = {"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>a</system-reminder>"},
        {"type": "text", "text": "<system-reminder>b</system-reminder>"},
        {"type": "text", "text": "Create hello.txt", "cache_control": {"type": "ephemeral"}}]}
    return {**cc_first(), "messages": [user] + CC_TOOL_TURN[:2], "max_tokens": 32000,
            "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"}}


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def every_block() -> Dict[str, Any]:
    """One request with every block type, sampling knobs, tool_choice and history repairs."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    return {
        "model": "claude-opus-5-5", "max_tokens": 1000, "temperature": 0.3, "top_p": 0.9, "top_k": 40,
        "stop_sequences": ["a1", "b2", "c3", "d4", "e5"], "system": "Be brief.",
        "thinking": {"type": "enabled", "budget_tokens": 10000},
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "tools": [{"name": "fs.read", "input_schema": {"type": "object", "properties": {"p": {"type": "string"}}}},
                  {"name": "calc", "input_schema": {"type": "object"}},
                  {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Look:"}, image,
                {"type": "image", "source": {"type": "url", "url": "https://example.com/y.jpg"}},
                {"type": "document", "title": "Spec", "source": {"type": "base64", "media_type": "application/pdf",
                                                                 "data": "JVBERi0xLjQK"}},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain doc"}},
                {"type": "search_result", "source": "https://example.com", "title": "Result",
                 "content": [{"type": "text", "text": "found"}]}]},
            {"role": "assistant", "content": [
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Calling."},
                {"type": "tool_use", "id": "t1", "name": "fs.read", "input": {"p": "x"}},
                {"type": "tool_use", "id": "t2", "name": "calc", "input": {}},
                {"type": "server_tool_use", "id": "srv1", "name": "web_search", "input": {"query": "q"}}]},
            {"role": "user", "content": [
                {"type": "text", "text": "text before results"},
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "r1"}, image]},
                {"type": "tool_result", "tool_use_id": "zz", "content": "orphan"}]},
            {"role": "user", "content": "and a second user turn"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t3", "name": "calc", "input": {"n": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t3", "content": "boom",
                                          "is_error": True}]},
            {"role": "assistant", "content": "Prefill: "},
        ],
    }


SHAPES = {"cc_first": cc_first, "cc_follow_up": cc_follow_up, "cc_title": cc_title,
          "cc_legacy_follow_up": cc_legacy_follow_up, "every_block": every_block}


@pytest.mark.parametrize("provider,model", DIALECT_RUNS, ids=[f"{p}:{m}" for p, m in DIALECT_RUNS])
def test_recorded_upstream_bodies_are_valid(make_proxy: Any, fake_upstream: Any, provider: str, model: str) -> None:
    server = make_proxy(provider=provider, model=model)
    for name, shape in SHAPES.items():
        resp = request(server.url, "POST", "/v1/messages?beta=true", shape(),
                       {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"})
        assert resp.status == 200, (name, resp)
    bodies = [r.json for r in fake_upstream.requests]
    assert len(bodies) == len(SHAPES)
    failures = {name: problems_for(body, provider) for name, body in zip(SHAPES, bodies)}
    assert {k: v for k, v in failures.items() if v} == {}
    title = bodies[list(SHAPES).index("cc_title")]
    assert "tools" not in title  # Claude Code's "tools": [] must not reach OpenAI
    # Structured output survives: as a JSON schema, or JSON mode where the dialect has no schemas (DeepSeek).
    kinds = ("json_schema",) if is_strict(provider) else ("json_schema", "json_object")
    assert title["response_format"]["type"] in kinds
