"""The request parser (RELIABILITY F4): wrong shapes become a 400 that names the JSON path.

Every rejection must be an ``InvalidRequest`` (400 ``invalid_request_error``)
whose message starts with the exact path of the offending field, so a client
author can find the mistake. What Claude Code and the SDKs really send (system
messages with extra keys, server-tool blocks, unknown future fields) must parse.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Dict, List

import pytest

from claudeproxy.anthropic_types import (
    DROPPED_BLOCK_TYPES,
    DroppedBlock,
    ImageBlock,
    Message,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    parse_count_tokens_request,
    parse_messages_request,
)
from claudeproxy.dialects import DIALECTS
from claudeproxy.errors import InvalidRequest
from claudeproxy.apis.chat.request import to_chat_request


def valid() -> Dict[str, Any]:
    return {
        "model": "claude-test",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
        ],
        "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}},
                  {"name": "g", "input_schema": {"type": "object", "properties": {}}}],
    }


def with_change(path: List[Any], value: Any) -> Dict[str, Any]:
    """``valid()`` with the value at ``path`` replaced (a missing sentinel deletes it)."""
    obj = valid()
    node: Any = obj
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return obj


DELETE = object()


def rejection(obj: Any) -> str:
    with pytest.raises(InvalidRequest) as info:
        parse_messages_request(obj)
    assert info.value.status == 400
    assert info.value.error_type == "invalid_request_error"
    return info.value.message


def test_valid_request_parses() -> None:
    req = parse_messages_request(valid())
    assert req.max_tokens == 100
    assert [m.role for m in req.messages] == ["user", "assistant", "user"]
    assert req.messages[1].content == (ToolUseBlock("t1", "f", {}),)
    assert req.messages[2].content == (ToolResultBlock("t1", (TextBlock("ok"),)),)


# --------------------------------------------------------------------------
# The paths named in the brief and in RELIABILITY F4.

PATH_CASES = [
    # (path to change, new value, expected message prefix)
    (["messages", 2, "content", 0, "type"], "bogus_block", "messages[2].content[0].type: "),
    (["messages", 2, "content", 0, "type"], DELETE, "messages[2].content[0].type: "),
    (["messages", 2, "content", 0, "type"], 7, "messages[2].content[0].type: "),
    (["max_tokens"], "x", "max_tokens: "),
    (["max_tokens"], DELETE, "max_tokens: "),
    (["max_tokens"], -1, "max_tokens: "),
    (["max_tokens"], 1.5, "max_tokens: "),
    (["max_tokens"], True, "max_tokens: "),
    (["max_tokens"], [100], "max_tokens: "),
    (["tools", 1, "input_schema"], DELETE, "tools[1].input_schema: "),
    (["tools", 1, "input_schema"], [], "tools[1].input_schema: "),
    (["tools", 1, "input_schema"], "object", "tools[1].input_schema: "),
    (["tools", 1, "name"], DELETE, "tools[1].name: "),
    (["tools", 1, "name"], "", "tools[1].name: "),
    (["tools", 1], "f", "tools[1]: "),
    (["tools"], {"name": "f"}, "tools: "),
    (["tool_choice"], {"type": "tool"}, "tool_choice.name: "),
    (["tool_choice"], {"type": "tool", "name": 3}, "tool_choice.name: "),
    # A forced tool the request does not define: refused, not sent on as "auto".
    (["tool_choice"], {"type": "tool", "name": "no_such_tool"}, "tool_choice.name: "),
    (["tool_choice"], {"type": "sometimes"}, "tool_choice.type: "),
    (["tool_choice"], "auto", "tool_choice: "),
    (["tool_choice"], {"type": "auto", "disable_parallel_tool_use": "yes"}, "tool_choice.disable_parallel_tool_use: "),
    (["messages"], DELETE, "messages: "),
    (["messages"], {"role": "user", "content": "hi"}, "messages: "),
    (["messages"], [], "messages: "),
    (["messages", 0], "hi", "messages[0]: "),
    (["messages", 0, "role"], "tool", "messages[0].role: "),
    (["messages", 0, "role"], DELETE, "messages[0].role: "),
    (["messages", 0, "content"], DELETE, "messages[0].content: "),
    (["messages", 0, "content"], 5, "messages[0].content: "),
    (["messages", 0, "content"], {"type": "text", "text": "hi"}, "messages[0].content: "),
    (["messages", 0, "content"], [{"type": "text"}], "messages[0].content[0].text: "),
    (["messages", 0, "content"], [{"type": "text", "text": 5}], "messages[0].content[0].text: "),
    (["messages", 0, "content"], ["hi"], "messages[0].content[0]: "),
    (["messages", 0, "content"], [{"type": "image"}], "messages[0].content[0].source: "),
    (["messages", 0, "content"], [{"type": "image", "source": {"type": "ftp", "url": "x"}}], "messages[0].content[0].source.type: "),
    # Anthropic's four image types only: another would be pasted into the upstream's data: URL as sent.
    (["messages", 0, "content"], [{"type": "image", "source": {"type": "base64", "media_type": "text/html", "data": "AAA"}}],
     "messages[0].content[0].source.media_type: "),
    (["messages", 0, "content"], [{"type": "image", "source": {"type": "base64", "data": "AAA",
                                                                "media_type": 'image/png;base64,AAAA"><script>'}}],
     "messages[0].content[0].source.media_type: "),
    # An image URL the upstream server would read from its own disk or network.
    (["messages", 0, "content"], [{"type": "image", "source": {"type": "url", "url": "file:///etc/passwd"}}],
     "messages[0].content[0].source.url: "),
    (["messages", 0, "content"], [{"type": "image", "source": {"type": "url", "url": "data:image/png;base64,AAA"}}],
     "messages[0].content[0].source.url: "),
    (["messages", 0, "content"], [{"type": "image", "source": {"type": "base64", "data": "AAA"}}],
     "messages[0].content[0].source.media_type: "),
    (["messages", 0, "content"], [{"type": "document", "source": {"type": "text"}}], "messages[0].content[0].source.data: "),
    (["messages", 1, "content", 0, "input"], "{}", "messages[1].content[0].input: "),
    (["messages", 1, "content", 0, "id"], DELETE, "messages[1].content[0].id: "),
    (["messages", 1, "content", 0, "name"], 1, "messages[1].content[0].name: "),
    (["messages", 2, "content", 0, "tool_use_id"], DELETE, "messages[2].content[0].tool_use_id: "),
    (["messages", 2, "content", 0, "content"], 5, "messages[2].content[0].content: "),
    (["messages", 2, "content", 0, "content"], [{"type": "text", "text": None}], "messages[2].content[0].content[0].text: "),
    (["messages", 2, "content", 0, "is_error"], "yes", "messages[2].content[0].is_error: "),
    (["model"], DELETE, "model: "),
    (["model"], "", "model: "),
    (["model"], 3, "model: "),
    (["system"], 5, "system: "),
    (["system"], [{"type": "image", "source": {"type": "url", "url": "https://x"}}], "system[0].type: "),
    (["system"], [{"type": "text"}], "system[0].text: "),
    (["thinking"], {"type": "enabled"}, "thinking.budget_tokens: "),
    (["thinking"], {"type": "enabled", "budget_tokens": "lots"}, "thinking.budget_tokens: "),
    (["thinking"], {"type": "sometimes"}, "thinking.type: "),
    (["thinking"], True, "thinking: "),
    (["output_config"], {"effort": "extreme"}, "output_config.effort: "),
    (["output_config"], {"format": {"type": "json_object"}}, "output_config.format.type: "),
    (["output_config"], {"format": {"type": "json_schema", "schema": "x"}}, "output_config.format.schema: "),
    (["output_format"], {"type": "json_object"}, "output_format.type: "),
    (["output_format"], "json", "output_format: "),
    (["stop_sequences"], "END", "stop_sequences: "),
    (["stop_sequences"], ["END", 5], "stop_sequences[1]: "),
    (["temperature"], "hot", "temperature: "),
    (["temperature"], True, "temperature: "),
    (["top_p"], False, "top_p: "),
    (["top_k"], 1.5, "top_k: "),
    (["top_k"], True, "top_k: "),
    (["stream"], "yes", "stream: "),
    (["stream"], 1, "stream: "),
    (["metadata"], "u1", "metadata: "),
    (["metadata"], {"user_id": 42}, "metadata.user_id: "),
]


@pytest.mark.parametrize("path,value,prefix", PATH_CASES, ids=[f"{'.'.join(map(str, c[0]))}={c[1]!r}"[:60] for c in PATH_CASES])
def test_error_message_starts_with_json_path(path: List[Any], value: Any, prefix: str) -> None:
    message = rejection(with_change(path, value))
    assert message.startswith(prefix), message
    assert len(message) > len(prefix), "the message says what is wrong after the path"


@pytest.mark.parametrize("body", [[], "hello", 3, None, [{"model": "x"}]])
def test_top_level_must_be_an_object(body: Any) -> None:
    assert rejection(body).startswith("body: ")


def test_type_names_in_messages_are_json_names() -> None:
    assert "got string" in rejection(with_change(["max_tokens"], "x"))
    assert "got boolean" in rejection(with_change(["max_tokens"], True))
    assert "got array" in rejection(with_change(["tools", 1, "input_schema"], []))
    assert "got null" in rejection(with_change(["messages"], None))
    assert "field required" in rejection(with_change(["messages", 0, "content"], [{"type": "text", "text": None}]))


def test_unknown_block_type_is_rejected_with_its_name() -> None:
    message = rejection(with_change(["messages", 0, "content"], [{"type": "hologram"}]))
    assert message.startswith("messages[0].content[0].type: ") and "hologram" in message


def test_booleans_are_not_numbers_but_integral_floats_are_integers() -> None:
    for key in ("temperature", "top_p", "top_k", "max_tokens"):
        assert rejection(with_change([key], True)).startswith(f"{key}: ")
    req = parse_messages_request(with_change(["max_tokens"], 100.0))
    assert req.max_tokens == 100 and isinstance(req.max_tokens, int)
    assert parse_messages_request(with_change(["temperature"], 1)).temperature == 1


def test_max_tokens_zero_and_one_are_legal() -> None:
    assert parse_messages_request(with_change(["max_tokens"], 0)).max_tokens == 0
    assert parse_messages_request(with_change(["max_tokens"], 1)).max_tokens == 1


# --------------------------------------------------------------------------
# What must be accepted.

SERVER_BLOCKS = [
    {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}},
    {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1",
     "content": [{"type": "web_search_result", "url": "https://a", "title": "A", "encrypted_content": "e"}]},
    {"type": "web_fetch_tool_result", "tool_use_id": "srvtoolu_2", "content": {"type": "web_fetch_result"}},
    {"type": "code_execution_tool_result", "tool_use_id": "srvtoolu_3", "content": {"stdout": "1"}},
    {"type": "bash_code_execution_tool_result", "tool_use_id": "srvtoolu_4", "content": {}},
    {"type": "text_editor_code_execution_tool_result", "tool_use_id": "srvtoolu_5", "content": {}},
    {"type": "tool_search_tool_result", "tool_use_id": "srvtoolu_6", "content": {}},
    {"type": "mcp_tool_use", "id": "mcptoolu_1", "name": "x", "server_name": "s", "input": {}},
    {"type": "mcp_tool_result", "tool_use_id": "mcptoolu_1", "content": "r"},
    {"type": "container_upload", "file_id": "file_1"},
]


def test_server_tool_blocks_are_accepted_and_dropped() -> None:
    assert {b["type"] for b in SERVER_BLOCKS} <= DROPPED_BLOCK_TYPES
    body = {"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "news?"},
        {"role": "assistant", "content": SERVER_BLOCKS + [{"type": "text", "text": "Nothing new."}]},
        {"role": "user", "content": "ok"},
    ]}
    req = parse_messages_request(body)
    assert [type(b) for b in req.messages[1].content] == [DroppedBlock] * len(SERVER_BLOCKS) + [TextBlock]
    sent = to_chat_request(req, model="m", dialect=DIALECTS["generic"]).request.to_dict()
    assert sent["messages"][1] == {"role": "assistant", "content": "Nothing new."}
    assert "srvtoolu" not in json.dumps(sent)


def test_system_role_message_with_extra_keys_is_accepted() -> None:
    """Claude Code 2.1.331 sends role "system" inside messages with a message-level output_config."""
    body = {"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "system", "content": [{"type": "text", "text": "# Environment", "cache_control": {"type": "ephemeral"}}],
         "output_config": {"effort": "medium"}},
        {"role": "assistant", "content": "ok"},
        {"role": "system", "content": "<total_tokens>9 tokens left</total_tokens>"},
    ]}
    req = parse_messages_request(body)
    assert req.messages[1] == Message("system", (TextBlock("# Environment", cache=""),))  # a mark with no ttl
    assert req.messages[3] == Message("system", (TextBlock("<total_tokens>9 tokens left</total_tokens>"),))


def test_system_role_message_takes_text_only() -> None:
    body = {"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "image", "source": {"type": "url", "url": "https://x"}}]},
    ]}
    assert rejection(body).startswith("messages[1].content[1].type: ")


def test_unknown_fields_everywhere_are_ignored() -> None:
    """New client features must not become 400s (Claude Code adds fields with every release)."""
    body = valid()
    body.update(context_management={"edits": []}, container="c", service_tier="auto", future={"x": 1},
                thinking={"type": "adaptive", "display": "updates"}, output_config={"effort": "max", "future": 1},
                metadata={"user_id": "u", "other": 2}, cache_control={"type": "ephemeral"})
    body["messages"][0] = {"role": "user", "content": [{"type": "text", "text": "hi", "citations": [], "future": 1}], "id": "m1"}
    body["tools"][0].update(cache_control={"type": "ephemeral"}, defer_loading=True, strict=True, input_examples=[])
    body["tool_choice"] = {"type": "auto", "future": True}
    req = parse_messages_request(body)
    assert req.effort == "max" and req.thinking is not None and req.thinking.kind == "adaptive"
    assert req.user_id == "u"


def test_every_documented_content_shape_parses() -> None:
    blocks = [
        {"type": "text", "text": "t"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}, "title": "a.pdf"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain"}},
        {"type": "document", "source": {"type": "content", "content": "inline"}},
        {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "a"}]}},
        {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}},
        {"type": "document", "source": {"type": "file", "file_id": "file_2"}},
        {"type": "search_result", "source": "s", "title": "t", "content": [{"type": "text", "text": "c"}]},
        {"type": "tool_result", "tool_use_id": "zz", "content": [{"type": "tool_reference", "tool_name": "Grep"}]},
        {"type": "thinking", "thinking": "x", "signature": "s"},
        {"type": "redacted_thinking", "data": "d"},
    ]
    # (A token count takes every shape; a translated request refuses a file_id: below.)
    req = parse_count_tokens_request({"model": "m", "messages": [{"role": "user", "content": blocks}]})
    assert len(req.messages[0].content) == len(blocks)
    assert req.messages[0].content[1] == ImageBlock("base64", media_type="image/png", data="AAA")
    assert req.messages[0].content[3] == ImageBlock("file", data="file_1")


@pytest.mark.parametrize("block,path", [
    ({"type": "image", "source": {"type": "file", "file_id": "file_1"}}, "messages[2].content[1].source"),
    ({"type": "document", "source": {"type": "file", "file_id": "file_2"}}, "messages[2].content[1].source"),
    ({"type": "tool_result", "tool_use_id": "t1", "content": [
        {"type": "text", "text": "the chart:"}, {"type": "image", "source": {"type": "file", "file_id": "file_3"}}]},
     "messages[2].content[1].content[1].source"),
    # A document's own blocks too: the model was told of a file it never saw (probe AM).
    ({"type": "document", "source": {"type": "content", "content": [
        {"type": "text", "text": "p. 1"}, {"type": "image", "source": {"type": "file", "file_id": "file_4"}}]}},
     "messages[2].content[1].source.content[1].source"),
])
def test_a_file_id_is_refused_naming_where_it_is(block: Dict[str, Any], path: str) -> None:
    """Anthropic's Files API ids mean nothing to a translated upstream: the model was told a file
    was left out and answered about a file it never saw, with a 200 (probe AD, D2)."""
    body = valid()
    body["messages"][2]["content"].append(block)
    with pytest.raises(InvalidRequest) as info:
        parse_messages_request(body)
    assert info.value.message.startswith(path + ": a file_id names a file of Anthropic's Files API"), info.value.message


def test_tool_kinds() -> None:
    req = parse_messages_request(dict(valid(), tools=[
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        {"type": "custom", "name": "c", "input_schema": {"type": "object"}},
        {"name": "plain", "input_schema": {"type": "object"}},
    ]))
    assert [(t.name, t.kind, t.is_custom) for t in req.tools] == [
        ("web_search", "web_search_20250305", False), ("c", "custom", True), ("plain", "custom", True)]


def _parsed_tools(*tools: Dict[str, Any]) -> Any:
    return parse_messages_request(dict(valid(), tools=list(tools))).tools


def test_client_tools_get_the_schema_anthropic_documents_for_their_version() -> None:
    """The text editor, bash and memory tools come without a schema ("built into the model"): each
    version gets its own, so a translating API can offer them as functions."""
    editor4, editor37, bash, memory, search, computer = _parsed_tools(
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool", "max_characters": 500},
        {"type": "text_editor_20250124", "name": "str_replace_editor"},
        {"type": "bash_20250124", "name": "bash", "cache_control": {"type": "ephemeral"}},
        {"type": "memory_20250818", "name": "memory"},
        {"type": "web_search_20250305", "name": "web_search"},
        {"type": "computer_20250124", "name": "computer", "display_width_px": 1024, "display_height_px": 768},
    )
    assert [(t.kind, t.is_function, t.is_custom) for t in (editor4, bash, memory, search, computer)] == [
        ("text_editor_20250728", True, False), ("bash_20250124", True, False), ("memory_20250818", True, False),
        ("web_search_20250305", False, False), ("computer_20250124", False, False)]
    assert editor4.options == {"max_characters": 500}
    # Claude 4's editor: no undo_edit, and insert takes insert_text; Sonnet 3.7's: undo_edit, insert takes new_str.
    assert editor4.input_schema["properties"]["command"]["enum"] == ["view", "create", "str_replace", "insert"]
    assert "insert_text" in editor4.input_schema["properties"]
    assert editor37.input_schema["properties"]["command"]["enum"] == ["view", "create", "str_replace", "insert",
                                                                      "undo_edit"]
    assert "insert_text" not in editor37.input_schema["properties"]
    assert editor4.input_schema["required"] == editor37.input_schema["required"] == ["command", "path"]
    assert set(bash.input_schema["properties"]) == {"command", "restart"}
    assert bash.input_schema["properties"]["restart"]["type"] == "boolean"
    assert memory.input_schema["properties"]["command"]["enum"] == ["view", "create", "str_replace", "insert",
                                                                     "delete", "rename"]
    assert {"old_path", "new_path", "insert_text", "file_text"} <= set(memory.input_schema["properties"])
    assert memory.input_schema["required"] == ["command"]  # rename names no path
    assert all(t.description for t in (editor4, editor37, bash, memory))
    assert search.input_schema is None and computer.input_schema is None


def test_each_request_owns_its_client_tool_schemas() -> None:
    first, = _parsed_tools({"type": "bash_20250124", "name": "bash"})
    second, = _parsed_tools({"type": "bash_20250124", "name": "bash"})
    assert first.input_schema == second.input_schema and first.input_schema is not second.input_schema
    first.input_schema["properties"].clear()
    assert second.input_schema["properties"]


@pytest.mark.parametrize("kind, wrong, fixed", [
    ("bash_20250124", "shell", "bash"),
    ("text_editor_20250728", "str_replace_editor", "str_replace_based_edit_tool"),
    ("text_editor_20241022", "str_replace_based_edit_tool", "str_replace_editor"),
    ("memory_20250818", "memories", "memory"),
])
def test_a_client_tool_under_another_name_is_refused_like_anthropic_does(kind: str, wrong: str, fixed: str) -> None:
    body = dict(valid(), tools=[{"name": "f", "input_schema": {"type": "object"}}, {"type": kind, "name": wrong}])
    with pytest.raises(InvalidRequest) as caught:
        parse_messages_request(body)
    assert caught.value.path == "tools[1].name"
    assert repr(fixed) in str(caught.value)


def test_a_newer_client_tool_version_gets_its_familys_newest_schema() -> None:
    """A version this proxy does not know yet is offered as the newest it knows, under the client's name
    (the name Anthropic will fix for it is not known)."""
    editor, bash = _parsed_tools({"type": "text_editor_20270101", "name": "str_replace_based_edit_tool"},
                                 {"type": "bash_20270101", "name": "bash"})
    newest, = _parsed_tools({"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"})
    assert editor.is_function and editor.input_schema == newest.input_schema and editor.kind == "text_editor_20270101"
    assert bash.is_function
    # Look-alikes of other families stay server tools.
    code, = _parsed_tools({"type": "bash_code_execution_20250825", "name": "bash_code_execution"})
    assert not code.is_function


def test_null_optional_fields_read_as_absent() -> None:
    body = dict(valid(), system=None, tools=None, tool_choice=None, thinking=None, temperature=None,
                stop_sequences=None, metadata=None, stream=None, output_config=None)
    req = parse_messages_request(body)
    assert req.system == "" and req.tools == () and req.tool_choice is None and req.stream is False


def test_parser_does_not_change_its_input() -> None:
    body = valid()
    before = copy.deepcopy(body)
    parse_messages_request(body)
    assert body == before


def test_count_tokens_body_needs_no_max_tokens() -> None:
    body = valid()
    del body["max_tokens"]
    assert parse_count_tokens_request(body).max_tokens is None
    with pytest.raises(InvalidRequest) as info:
        parse_count_tokens_request({"model": "m", "messages": "hi"})
    assert info.value.message.startswith("messages: ")


def test_top_level_output_format_is_the_structured_output_schema() -> None:
    """The structured-outputs beta's first form (output_format at the top) asks for the same
    schema as output_config.format; where both are given, output_config's wins."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}],
            "output_format": {"type": "json_schema", "schema": schema}}
    assert parse_messages_request(body).output_schema == schema
    other = {"type": "object"}
    both = {**body, "output_config": {"format": {"type": "json_schema", "schema": other}}}
    assert parse_messages_request(both).output_schema == other


@pytest.mark.parametrize("messages,where", [
    ([{"role": "user", "content": ""}], "messages[0]"),
    ([{"role": "user", "content": []}], "messages[0]"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": ""}],
     "messages[2]"),
    ([{"role": "user", "content": [{"type": "text", "text": ""}]}, {"role": "assistant", "content": "yo"}],
     "messages[0]"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": []}, {"role": "user", "content": "go"}],
     "messages[1]"),
])
def test_an_empty_message_is_refused_as_anthropic_does(messages: Any, where: str) -> None:
    """Dropped by a translator, [user, assistant, empty user] would reach the upstream ending in the
    assistant's turn: a request to go on from there, not the client's question."""
    with pytest.raises(InvalidRequest) as info:
        parse_messages_request({"model": "m", "max_tokens": 5, "messages": messages})
    assert str(info.value) == (f"{where}: all messages must have non-empty content except for the optional final "
                               "assistant message")


_TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
_THINKING = {"type": "thinking", "thinking": "stray", "signature": "sig"}
_SERVER_USE = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}


@pytest.mark.parametrize("messages, where, kinds", [
    ([{"role": "user", "content": [_TOOL_USE]}], "messages[0]", "tool_use"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
      {"role": "user", "content": [_THINKING, _SERVER_USE, {"type": "text", "text": ""}]}],
     "messages[2]", "empty text, server_tool_use, thinking"),
    ([{"role": "user", "content": [{"type": "redacted_thinking", "data": "x"}]}, {"role": "assistant", "content": "yo"}],
     "messages[0]", "redacted_thinking"),
    # A document whose content is nothing (or only dropped blocks) becomes nothing too (review).
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
      {"role": "user", "content": [{"type": "document", "source": {"type": "content", "content": [_THINKING]}}]}],
     "messages[2]", "document of no content"),
    ([{"role": "user", "content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                                   "data": ""}}]}],
     "messages[0]", "document of no content"),
    # Adjacent user messages are merged: the run is checked as one, and named by its first message.
    ([{"role": "user", "content": [_TOOL_USE]}, {"role": "user", "content": [_THINKING]}], "messages[0]",
     "thinking, tool_use"),
])
def test_a_user_message_holding_only_blocks_a_translator_drops_is_refused(messages: Any, where: str, kinds: str) -> None:
    """PROTOCOL.md 2 drops a user turn's tool_use and thinking blocks, and every server tool block:
    a user message of nothing else vanished, and the upstream was asked another conversation (here
    one ending in the assistant's "yo"). A count sends nothing, so it still counts such a message."""
    body = {"model": "m", "max_tokens": 5, "messages": messages}
    with pytest.raises(InvalidRequest) as info:
        parse_messages_request(body)
    assert str(info.value) == (f"{where}.content: a user message needs content the upstream can be sent: its blocks "
                               f"({kinds}) are all dropped in translation")
    assert parse_count_tokens_request(body).messages


@pytest.mark.parametrize("messages, sent", [
    ([{"role": "user", "content": [_THINKING, _TOOL_USE, {"type": "text", "text": "hi"}]}], ["hi"]),
    # A user message of dropped blocks next to one with text: merged, nothing vanishes.
    ([{"role": "user", "content": "hi"}, {"role": "user", "content": [_THINKING]}], ["hi"]),
    ([{"role": "user", "content": [_TOOL_USE]}, {"role": "user", "content": "hi"}], ["hi"]),
])
def test_a_user_message_with_content_besides_dropped_blocks_keeps_it(messages: Any, sent: List[str]) -> None:
    parsed = parse_messages_request({"model": "m", "max_tokens": 5, "messages": messages})
    out = to_chat_request(parsed, model="m", dialect=DIALECTS["generic"]).request.to_dict()
    assert [m["content"] for m in out["messages"]] == sent


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],  # a final assistant: a prefill
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": []}],
    # Claude Code's empty system message (a turn's settings) in the middle of the history.
    [{"role": "user", "content": "hi"}, {"role": "system", "content": []}, {"role": "user", "content": "go"}],
])
def test_empty_messages_anthropic_allows_stay_allowed(messages: Any) -> None:
    assert parse_messages_request({"model": "m", "max_tokens": 5, "messages": messages}).messages


@pytest.mark.parametrize("value, ok", [(1024, True), (1024.0, True), (2.0 ** 53, True), (1e30, False), (1.5, False),
                                       (-1e300, False)])
def test_max_tokens_written_as_a_float_counts_only_when_it_is_a_whole_number_a_float_holds(value: Any, ok: bool) -> None:
    # 1e30 passed as an integer and went up as a 31-digit max_tokens; it is refused as 1.5 is.
    body = {"model": "m", "max_tokens": value, "messages": [{"role": "user", "content": "hi"}]}
    if ok:
        parsed = parse_messages_request(body)
        assert parsed.max_tokens == int(value) and type(parsed.max_tokens) is int
    else:
        with pytest.raises(InvalidRequest, match="expected an integer"):
            parse_messages_request(body)


@pytest.mark.parametrize("parse", [parse_messages_request, parse_count_tokens_request])
def test_more_messages_than_anthropic_allows_are_refused_before_any_is_parsed(parse: Any) -> None:
    """Anthropic's documented limit: 100,000 messages a request. A 32 MiB body of a million tiny
    messages took 28 s of CPU and 800 MB to reach an upstream that refuses it anyway."""
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 50_000
    assert len(parse({"model": "m", "max_tokens": 5, "messages": turns}).messages) == 100_000
    with pytest.raises(InvalidRequest) as info:
        # The extra message is not even a message: the count is refused before any is read.
        parse({"model": "m", "max_tokens": 5, "messages": turns + ["not a message"]})
    assert info.value.message == ("messages: at most 100,000 messages are allowed in a single request, "
                                  "not 100,001")


@pytest.mark.parametrize("field, value, ok", [
    ("temperature", 0, True), ("temperature", 1, True), ("temperature", 0.7, True), ("top_p", 1.0, True),
    ("temperature", 1.5, False), ("temperature", 2, False), ("temperature", -0.1, False), ("top_p", 1.01, False),
])
def test_temperature_and_top_p_take_anthropics_range(field: str, value: Any, ok: bool) -> None:
    """From 0 to 1, as on Anthropic (probe B: temperature 5 was answered 200). Sent on, OpenAI's
    scale (to 2) would make 1.5 an answer far more random than the client could get from Claude."""
    body = dict(valid(), **{field: value})
    if ok:
        assert getattr(parse_messages_request(body), field) == value
        return
    with pytest.raises(InvalidRequest) as info:
        parse_messages_request(body)
    assert info.value.message == f"{field}: must be from 0 to 1, not {value!r}"


def test_two_tools_of_one_name_are_refused_as_anthropic_does() -> None:
    tools = [{"name": "Read", "input_schema": {"type": "object"}}, {"name": "Write", "input_schema": {"type": "object"}},
             {"name": "Read", "description": "again", "input_schema": {"type": "object"}}]
    for parse in (parse_messages_request, parse_count_tokens_request):
        with pytest.raises(InvalidRequest) as info:
            parse(dict(valid(), tools=tools))
        assert info.value.message == "tools[2].name: tool names must be unique: 'Read' is given twice"
    assert len(parse_messages_request(dict(valid(), tools=tools[:2])).tools) == 2


@pytest.mark.parametrize("stops, said", [
    ([""], "stop_sequences: each stop sequence must be non-empty"),  # Anthropic's own words
    (["END", ""], "stop_sequences: each stop sequence must be non-empty"),
    (["s%d" % i for i in range(8192)], "stop_sequences: at most 8,191 stop sequences are allowed, not 8,192"),
    (["x" * 40_000, "y" * 30_000], "stop_sequences: the stop sequences may have 65,536 characters together, not 70,000"),
])
def test_stop_sequences_past_what_can_be_matched_are_refused(stops: List[str], said: str) -> None:
    """The proxy matches the stop strings an upstream is not sent, with an automaton over all of
    them: 32 MiB of stop strings would have made one of gigabytes (probe A)."""
    with pytest.raises(InvalidRequest) as info:
        parse_messages_request(dict(valid(), stop_sequences=stops))
    assert info.value.message == said
    assert parse_messages_request(dict(valid(), stop_sequences=["s%d" % i for i in range(8191)])).stop_sequences


def test_an_empty_list_of_stop_sequences_is_none() -> None:
    assert parse_messages_request(dict(valid(), stop_sequences=[])).stop_sequences == ()
