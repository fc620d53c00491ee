"""Deferred tools (``defer_loading``): the model is offered one once a tool search found it.

Claude Code 2.1.331 sends ``DeferredToolPlaceholder`` ("never call this tool") with
``defer_loading: true`` on every turn, and defers MCP tools behind its ``ToolSearch`` when there
are many: Anthropic shows the model a deferred tool only after a ``tool_reference`` to it came
back from a search. Sent as an ordinary function, the placeholder was a tool a weaker model could
call (an outside probe), and every deferred MCP tool filled the prompt from the first turn.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

import pytest

from conftest import CLIENT_KEY, minimal_request, request
from fakes import FakeUpstream, completion, json_reply

from claudeproxy.anthropic_types import parse_messages_request
from claudeproxy.apis.chat.request import to_chat_request
from claudeproxy.apis.responses.request import to_responses_request
from claudeproxy.dialects import DIALECTS

PLACEHOLDER = {"name": "DeferredToolPlaceholder", "description": "never call this tool",
               "input_schema": {"type": "object", "properties": {}}, "defer_loading": True}
READ = {"name": "Read", "description": "read a file", "input_schema": {"type": "object", "properties": {}}}
SEARCH = {"name": "ToolSearch", "description": "find tools", "input_schema": {"type": "object", "properties": {}}}
ISSUES = {"name": "mcp__github__issues", "description": "list issues", "defer_loading": True,
          "input_schema": {"type": "object", "properties": {"repo": {"type": "string"}}}}
TOOLS = [READ, SEARCH, PLACEHOLDER, ISSUES]


def searched(*found: str) -> List[Dict[str, Any]]:
    """A conversation in which ToolSearch found ``found``."""
    refs = [{"type": "tool_reference", "tool_name": name} for name in found]
    return [{"role": "user", "content": "list the issues"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "ToolSearch",
                                               "input": {"query": "github"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": refs}]}]


def chat_names(body: Dict[str, Any]) -> List[str]:
    sent = to_chat_request(parse_messages_request(body), model="gpt-4.1", dialect=DIALECTS["openai"]).request.to_dict()
    return [t["function"]["name"] for t in sent.get("tools", [])]


def responses_names(body: Dict[str, Any]) -> List[str]:
    sent = to_responses_request(parse_messages_request(body), model="gpt-5.4").body
    return [t["name"] for t in sent.get("tools", [])]


@pytest.mark.parametrize("names", [chat_names, responses_names])
def test_a_deferred_tool_is_offered_once_a_search_found_it(names: Any) -> None:
    assert names(minimal_request(tools=TOOLS)) == ["Read", "ToolSearch"]
    assert names(minimal_request(tools=TOOLS, messages=searched())) == ["Read", "ToolSearch"]
    assert names(minimal_request(tools=TOOLS, messages=searched("mcp__github__issues"))) == \
        ["Read", "ToolSearch", "mcp__github__issues"]
    # A reference to a tool that is not deferred, or to none of the request's, changes nothing.
    assert names(minimal_request(tools=TOOLS, messages=searched("Read", "mcp__gone"))) == ["Read", "ToolSearch"]


@pytest.mark.parametrize("names", [chat_names, responses_names])
def test_found_tools_come_after_the_others_in_the_order_they_were_found(names: Any) -> None:
    """Claude Code puts a found tool in its sorted place among the tools (CronList between Bash and
    Edit): sent there, it changed every definition after it, and the upstream's cache of the prompt
    from the third tool on was lost once a tool was found (probe Y, D2)."""
    cron = {"name": "CronList", "description": "list jobs", "defer_loading": True,
            "input_schema": {"type": "object", "properties": {}}}
    zebra = {**cron, "name": "Zebra"}
    tools = [{**READ, "name": "Bash"}, cron, {**READ, "name": "Edit"}, SEARCH, zebra, PLACEHOLDER]
    assert names(minimal_request(tools=tools)) == ["Bash", "Edit", "ToolSearch"]
    first = searched("Zebra")
    assert names(minimal_request(tools=tools, messages=first)) == ["Bash", "Edit", "ToolSearch", "Zebra"]
    later = first + [{"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_2", "name": "ToolSearch",
                                                       "input": {"query": "cron"}}]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2",
                                                   "content": [{"type": "tool_reference", "tool_name": "CronList"}]}]}]
    assert names(minimal_request(tools=tools, messages=later)) == ["Bash", "Edit", "ToolSearch", "Zebra", "CronList"]


def test_a_deferred_tool_the_history_calls_stays_offered() -> None:
    """Its reference gone (a compaction kept the call), a strict server would refuse a call to a
    tool the request does not define."""
    history = [{"role": "user", "content": "list the issues"},
               {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_2", "name": "mcp__github__issues",
                                                  "input": {"repo": "x"}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "none"}]}]
    assert chat_names(minimal_request(tools=TOOLS, messages=history)) == ["Read", "ToolSearch", "mcp__github__issues"]


def test_a_deferred_tool_that_tool_choice_names_is_offered() -> None:
    body = minimal_request(tools=TOOLS, tool_choice={"type": "tool", "name": "mcp__github__issues"})
    assert chat_names(body) == ["Read", "ToolSearch", "mcp__github__issues"]


def test_a_request_with_only_deferred_tools_sends_no_tools() -> None:
    assert chat_names(minimal_request(tools=[PLACEHOLDER])) == []


def test_defer_loading_must_be_a_boolean() -> None:
    from claudeproxy.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as info:
        parse_messages_request(minimal_request(tools=[{**READ, "defer_loading": "yes"}]))
    assert "tools[0].defer_loading" in info.value.message


def test_through_the_proxy_turn_after_turn(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """The translated tool list is made once per tool set for turns that found nothing, and afresh
    for one that found a tool; each turn gets what it found."""
    proxy = make_proxy(upstream=fake_upstream.url, model="gpt-4.1")
    bodies = [minimal_request(tools=TOOLS), minimal_request(tools=TOOLS, messages=searched("mcp__github__issues")),
              minimal_request(tools=TOOLS)]
    for body in bodies:
        fake_upstream.push(json_reply(completion("ok")))
        resp = request(proxy.url, "POST", "/v1/messages", body, {"x-api-key": CLIENT_KEY})
        assert resp.status == 200, resp
    sent = [[t["function"]["name"] for t in r.json["tools"]] for r in fake_upstream.requests]
    assert sent == [["Read", "ToolSearch"], ["Read", "ToolSearch", "mcp__github__issues"], ["Read", "ToolSearch"]]
    assert "DeferredToolPlaceholder" not in json.dumps([r.json for r in fake_upstream.requests])


@pytest.mark.parametrize("names", [chat_names, responses_names])
@pytest.mark.parametrize("search", ["tool_search_tool_regex_20251119", "tool_search_tool_bm25_20251119"])
def test_deferred_tools_behind_anthropics_own_tool_search_are_all_offered(names: Any, search: str) -> None:
    """Anthropic's server-side tool search finds deferred tools on Anthropic's side; no translated
    upstream runs it (it is dropped), so the model never saw the deferred tools and answered "what's
    the weather" as if it had no tools (probe AD, D1). Offered all, only what deferring saved is lost."""
    weather = {**ISSUES, "name": "get_weather"}
    tools = [{"type": search, "name": "tool_search_tool_regex"}, READ, weather, ISSUES]
    assert names(minimal_request(tools=tools)) == ["Read", "get_weather", "mcp__github__issues"]
    assert names(minimal_request(tools=[tools[0], weather])) == ["get_weather"]
