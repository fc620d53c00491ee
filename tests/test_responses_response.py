"""OpenAI Responses object -> Anthropic message (RESPONSES.md sections 2, 4, 6).

Each ``fixtures/responses_api/responses/<case>.response.json`` is a Response
object written by hand from RESPONSES.md; ``<case>.anthropic.json`` is the
message the client must get, or ``{"raises": {status, type, message}}`` for an
answer that is an error. Signatures are written as ``{"cpx1": <payload>}``.
The same cases are streamed in test_responses_stream.py and must give the
same blocks.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict

import pytest

from claudeproxy.apis.responses.response import error_for, to_messages_response
from claudeproxy.errors import ProxyError
from claudeproxy.signatures import decode_signature
from stream_playbook import counter_ids, decode_cpx1

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "responses_api", "responses")
CASES = sorted(os.path.basename(p)[: -len(".response.json")] for p in glob.glob(os.path.join(HERE, "*.response.json")))
SECRET = "sk-UPSTREAM-SENTINEL-0123456789"


def _load(name: str) -> Any:
    with open(os.path.join(HERE, name), encoding="utf-8") as fh:
        return json.load(fh)


def normalize(message: Dict[str, Any]) -> Dict[str, Any]:
    """Signatures as ``{"cpx1": payload}``, as the golden files write them."""
    out = json.loads(json.dumps(message))
    for block in out.get("content", []):
        if block.get("type") == "thinking" and str(block.get("signature", "")).startswith("cpx1."):
            block["signature"] = {"cpx1": decode_cpx1(block["signature"])}
    return out


def convert(obj: Any, **kw: Any) -> Dict[str, Any]:
    return to_messages_response(obj, model="claude-test", new_id=counter_ids(), tool_names=kw.pop("tool_names", {}), **kw)


def response(output: Any, status: str = "completed", **extra: Any) -> Dict[str, Any]:
    obj = {"id": "resp_1", "object": "response", "status": status, "error": None, "incomplete_details": None,
           "output": output, "usage": {"input_tokens": 10, "output_tokens": 2}}
    obj.update(extra)
    return obj


def message_item(*parts: Dict[str, Any]) -> Dict[str, Any]:
    return {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "content": list(parts)}


def text_part(text: str, annotations: Any = ()) -> Dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": list(annotations)}


# --------------------------------------------------------------------------
# Golden cases.


def test_cases_cover_the_brief() -> None:
    assert {"text", "parallel_calls", "reasoning_summary", "incomplete_max_tokens", "failed_context_length",
            "failed_after_text", "refusal", "web_search_citations", "compat_args_only_at_done"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_golden_response(case: str) -> None:
    obj, expected = _load(f"{case}.response.json"), _load(f"{case}.anthropic.json")
    if "raises" in expected:
        with pytest.raises(ProxyError) as info:
            convert(obj)
        want = expected["raises"]
        assert (info.value.status, info.value.error_type) == (want["status"], want["type"])
        assert want["message"] in info.value.message
        return
    assert normalize(convert(obj)) == expected


# --------------------------------------------------------------------------
# Stop reasons and usage.


def test_stop_reasons() -> None:
    text = message_item(text_part("hi"))
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    assert convert(response([text]))["stop_reason"] == "end_turn"
    assert convert(response([text, call]))["stop_reason"] == "tool_use"
    cut = {"incomplete_details": {"reason": "max_output_tokens"}}
    assert convert(response([text, call], "incomplete", **cut))["stop_reason"] == "max_tokens"
    filtered = {"incomplete_details": {"reason": "content_filter"}}
    assert convert(response([text], "incomplete", **filtered))["stop_reason"] == "refusal"
    refusal = message_item({"type": "refusal", "refusal": "No."})
    assert convert(response([refusal]))["stop_reason"] == "refusal"


def test_usage_excludes_cached_and_written_cache_tokens() -> None:
    usage = {"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 300},
             "output_tokens": 50, "output_tokens_details": {"reasoning_tokens": 20}}
    assert convert(response([], usage=usage))["usage"] == {
        "input_tokens": 100, "cache_creation_input_tokens": 300, "cache_read_input_tokens": 600, "output_tokens": 50,
        "output_tokens_details": {"thinking_tokens": 20}}
    assert convert(response([], usage=None))["usage"]["input_tokens"] == 0
    assert convert(response([], usage={"input_tokens": 7, "output_tokens": 3}))["usage"]["input_tokens"] == 7



def test_reasoning_tokens_are_thinking_tokens_as_on_chat() -> None:
    """output_tokens_details.reasoning_tokens maps to output_tokens_details.thinking_tokens, as the chat
    API maps completion_tokens_details.reasoning_tokens; absent (or no count) when not reported."""
    usage = {"input_tokens": 100, "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 250}}
    out = convert(response([], usage=usage))["usage"]
    assert (out["output_tokens"], out["output_tokens_details"]) == (300, {"thinking_tokens": 250})
    for details in (None, {}, {"reasoning_tokens": -1}, {"reasoning_tokens": "250"}):
        bare = convert(response([], usage={"input_tokens": 100, "output_tokens": 300, "output_tokens_details": details}))
        assert "output_tokens_details" not in bare["usage"]


def test_usage_counts_that_are_no_counts_are_zero() -> None:
    """A negative, fractional, string or bool count is 0 (counts.py), never a negative usage."""
    usage = {"input_tokens": 10, "output_tokens": -5, "input_tokens_details": {"cached_tokens": True,
                                                                              "cache_write_tokens": 2.5}}
    assert convert(response([], usage=usage))["usage"] == {
        "input_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0}
    assert convert(response([], usage={"input_tokens": "70", "output_tokens": 3}))["usage"]["input_tokens"] == 0


# --------------------------------------------------------------------------
# Blocks.


def test_reasoning_blocks_carry_id_and_blob_even_without_summary() -> None:
    item = {"type": "reasoning", "id": "rs_9", "summary": [], "encrypted_content": "gAAA=="}
    block = convert(response([item]))["content"][0]
    assert block["type"] == "thinking" and block["thinking"] == ""
    assert decode_signature(block["signature"], api="responses") == {"id": "rs_9", "encrypted_content": "gAAA=="}


def test_raw_reasoning_text_and_bare_reasoning() -> None:
    # gpt-oss-style servers send the chain of thought as reasoning_text content, and no blob.
    raw = {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "think"}]}
    assert convert(response([raw]))["content"][0]["thinking"] == "think"
    # A reasoning item with neither text nor blob (thinking not asked for) shows nothing.
    bare = {"type": "reasoning", "id": "rs_2", "summary": []}
    assert convert(response([bare, message_item(text_part("hi"))]))["content"] == [{"type": "text", "text": "hi"}]


def test_function_calls() -> None:
    calls = [
        {"type": "function_call", "call_id": "c1", "name": "mcp_x_1a2b", "arguments": "{\"a\": 1"},  # cut off
        {"type": "function_call", "call_id": "c1", "name": "g", "arguments": ""},  # same call_id again
        {"type": "function_call", "call_id": "", "name": "h", "arguments": "[1]"},
    ]
    blocks = convert(response(calls), tool_names={"mcp_x_1a2b": "mcp.x"})["content"]
    assert blocks == [
        {"type": "tool_use", "id": "c1", "name": "mcp.x", "input": {"a": 1}},
        {"type": "tool_use", "id": "c1-2", "name": "g", "input": {}},
        {"type": "tool_use", "id": "toolu_gen1", "name": "h", "input": {"value": [1]}},
    ]


def test_arguments_sent_as_an_object_are_that_object() -> None:
    calls = [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": {"path": "/obj", "n": [1]}}]
    blocks = convert(response(calls))["content"]
    assert blocks == [{"type": "tool_use", "id": "c1", "name": "f", "input": {"path": "/obj", "n": [1]}}]


def test_empty_and_unknown_output_is_skipped() -> None:
    output = [message_item(text_part(""), {"type": "output_audio"}), {"type": "file_search_call", "id": "fs_1"},
              "garbage", {"type": "image_generation_call"}]
    message = convert(response(output))
    assert message["content"] == [] and message["stop_reason"] == "end_turn"


def test_search_variants() -> None:
    failed = {"type": "web_search_call", "id": "ws_1", "status": "failed", "action": {"type": "search", "queries": ["q1", "q2"]}}
    find = {"type": "web_search_call", "id": "ws_2", "status": "completed", "action": {"type": "find", "url": "u", "pattern": "p"}}
    message = convert(response([failed, find]))
    assert message["content"] == [
        {"type": "server_tool_use", "id": "srvtoolu_ws_1", "name": "web_search", "input": {"query": "q1"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_ws_1",
         "content": {"type": "web_search_tool_result_error", "error_code": "unavailable"}},
    ]
    # Only searches that ran count (Anthropic bills none for a search that failed); find is no search.
    assert "server_tool_use" not in message["usage"]


def test_citations_name_the_cited_span() -> None:
    part = text_part("See [x](https://x.org).", [{"type": "url_citation", "url": "https://x.org", "title": "X", "start_index": 4, "end_index": 22},
                                                 {"type": "file_citation", "file_id": "f", "index": 0}])
    block = convert(response([message_item(part)]))["content"][0]
    assert block["citations"] == [{"type": "web_search_result_location", "url": "https://x.org", "title": "X",
                                   "encrypted_index": "", "cited_text": "[x](https://x.org)"}]


# --------------------------------------------------------------------------
# Errors (RESPONSES.md 4).


@pytest.mark.parametrize("err,status,error_type,message", [
    ({"code": "context_length_exceeded", "message": "Your input exceeds the context window of this model."}, 400,
     "invalid_request_error", "prompt is too long"),
    ({"error": {"type": "invalid_request_error", "code": "context_length_exceeded", "message": "Input too long."}}, 400,
     "invalid_request_error", "prompt is too long"),
    ({"code": "rate_limit_exceeded", "message": "Please try again in 1.2s."}, 429, "rate_limit_error", "try again in 1.2s"),
    ({"code": "server_error", "message": "boom"}, 500, "api_error", "upstream error: boom"),
    ({"code": "invalid_encrypted_content", "message": "could not be verified"}, 400, "invalid_request_error", "could not be verified"),
    ({"code": "invalid_prompt", "message": "flagged"}, 400, "invalid_request_error", "flagged"),
    ({"code": "vector_store_timeout", "message": "slow"}, 502, "api_error", "slow"),
    ({}, 502, "api_error", "upstream response failed"),
    ("not an object", 502, "api_error", "upstream response failed"),
])
def test_error_mapping(err: Any, status: int, error_type: str, message: str) -> None:
    exc = error_for(err)
    assert (exc.status, exc.error_type) == (status, error_type)
    assert message in exc.message


def test_quota_is_not_retried_and_secrets_never_leak() -> None:
    exc = error_for({"code": "insufficient_quota", "message": "You exceeded your current quota."})
    assert exc.status == 429 and ("x-should-retry", "false") in exc.headers
    leaky = error_for({"code": "server_error", "message": f"bad key {SECRET}"}, (SECRET,))
    assert SECRET not in leaky.message


@pytest.mark.parametrize("body", [
    {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}},
    {"id": "resp_1", "status": "cancelled", "output": []},
    {"id": "resp_1", "status": "failed", "error": None, "output": []},
    {"id": "resp_1", "status": "queued", "output": []},  # no answer yet: not an empty one
    {"id": "resp_1", "status": "in_progress", "output": [], "usage": None},
    ["not", "a", "response"],
    None,
    {},  # no output list: no answer, not an empty one that ended its turn
    {"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
                                                                                        "content": "hi"}}]},
    {"id": "resp_1", "status": "completed", "output": None},
])
def test_error_bodies_raise(body: Any) -> None:
    with pytest.raises(ProxyError) as caught:
        convert(body)
    assert caught.value.status != 200 and caught.value.status >= 400


def test_message_envelope() -> None:
    message = convert(response([message_item(text_part("hi"))], id="resp_ab/c"))
    assert message["id"] == "msg_resp_abc" and message["model"] == "claude-test"
    assert message["type"] == "message" and message["role"] == "assistant" and message["stop_sequence"] is None
