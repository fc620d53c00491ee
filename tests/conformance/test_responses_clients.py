"""Real clients over the Responses API upstream (issue 10): the anthropic SDK's stream accumulator,
and the real Claude Code CLI with a tool round whose reasoning is carried to the next turn.

For every Responses stream fixture that ends normally, ``stream.get_final_message()``
must agree with ``messages.create()`` served from the fixture's JSON twin (content,
stop reason, usage); errors before and in the stream raise the SDK's exceptions.
Claude Code runs headless against a scripted fake ``/v1/responses``: turn 1 thinks
(an encrypted reasoning item) and calls Write, turn 2 must carry the same
reasoning item right before the call, and the run must end with the final text.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any, Dict, Iterator, List

import pytest

anthropic = pytest.importorskip("anthropic")

from conformance_helpers import FIXTURES, ScriptedUpstream, claude_binary  # noqa: E402
from fakes import Reply  # noqa: E402

pytestmark = pytest.mark.conformance
SHARED_SERVERS = True
RESPONSES = os.path.join(FIXTURES, "responses_api")
CASES = ["text", "parallel_calls", "reasoning_summary", "incomplete_max_tokens", "refusal", "web_search_citations"]


def read(*parts: str) -> bytes:
    with open(os.path.join(RESPONSES, *parts), "rb") as fh:
        return fh.read()


def sse(body: bytes) -> Reply:
    steps = [part + b"\n\n" for part in body.split(b"\n\n") if part.strip()]
    return Reply(200, (("Content-Type", "text/event-stream"),), steps, chunked=True)


def make_client(url: str) -> Any:
    return anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=0, timeout=20.0,
                               http_client=anthropic.DefaultHttpxClient(trust_env=False))


@pytest.fixture
def client(make_proxy: Any) -> Iterator[Any]:
    with make_client(make_proxy(upstream_api="responses", model="gpt-5", provider="openai").url) as c:
        yield c


def params(**kw: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {"model": "claude-opus-5-5", "max_tokens": 2048,
                           "messages": [{"role": "user", "content": "Go"}]}
    out.update(kw)
    return out


def comparable(message: Any) -> Dict[str, Any]:
    data = message.model_dump(exclude_none=True)
    return {"content": data["content"], "stop_reason": data["stop_reason"], "usage": data["usage"]}


@pytest.mark.parametrize("case", CASES)
def test_sdk_stream_accumulator_agrees_with_the_json_answer(client: Any, fake_upstream: Any, case: str) -> None:
    fake_upstream.push(sse(read("streams", f"{case}.upstream.sse")),
                       Reply(200, (("Content-Type", "application/json"),), [read("responses", f"{case}.response.json")]))
    with client.messages.stream(**params()) as stream:
        streamed = stream.get_final_message()
    created = client.messages.create(**params())
    assert streamed.model == created.model == "claude-opus-5-5"
    assert comparable(streamed) == comparable(created)


def test_sdk_raises_on_an_error_mid_stream(client: Any, fake_upstream: Any) -> None:
    fake_upstream.push(sse(read("streams", "error_event_mid_stream.upstream.sse")))
    with pytest.raises(anthropic.APIStatusError), client.messages.stream(**params()) as stream:
        stream.get_final_message()


def test_sdk_gets_prompt_too_long_before_the_stream(client: Any, fake_upstream: Any) -> None:
    fake_upstream.push(sse(read("streams", "failed_context_length.upstream.sse")))
    with pytest.raises(anthropic.BadRequestError) as info, client.messages.stream(**params()) as stream:
        stream.get_final_message()
    assert "prompt is too long" in str(info.value)


# ----------------------------------------------------------------------
# The real Claude Code CLI.

CLAUDE = claude_binary()
BLOB = "gAAAAABo-ENCRYPTED-REASONING-BLOB-for-the-test=="


def events(*payloads: Dict[str, Any]) -> Reply:
    body = b"".join(f"event: {p['type']}\ndata: {json.dumps(p)}\n\n".encode() for p in payloads)
    return sse(body)


def write_call_turn(path: str) -> Reply:
    reasoning = {"type": "reasoning", "id": "rs_cc1", "summary": [{"type": "summary_text", "text": "Plan: write."}],
                 "encrypted_content": BLOB}
    args = json.dumps({"file_path": path, "content": "from responses\n"})
    call = {"type": "function_call", "id": "fc_1", "call_id": "call_cc1", "name": "Write", "arguments": args,
            "status": "completed"}
    done = {"id": "resp_1", "object": "response", "status": "completed", "model": "gpt-5",
            "output": [reasoning, call], "usage": {"input_tokens": 900, "output_tokens": 40}}
    return events(
        {"type": "response.created", "response": {**done, "status": "in_progress", "output": [], "usage": None}},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "reasoning", "id": "rs_cc1", "summary": []}},
        {"type": "response.reasoning_summary_text.delta", "item_id": "rs_cc1", "output_index": 0,
         "summary_index": 0, "delta": "Plan: write."},
        {"type": "response.output_item.done", "output_index": 0, "item": reasoning},
        {"type": "response.output_item.added", "output_index": 1, "item": {**call, "arguments": "",
                                                                           "status": "in_progress"}},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 1, "delta": args},
        {"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": 1, "arguments": args},
        {"type": "response.output_item.done", "output_index": 1, "item": call},
        {"type": "response.completed", "response": done},
    )


def final_turn(text: str) -> Reply:
    item = {"type": "message", "id": "msg_2", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}
    done = {"id": "resp_2", "object": "response", "status": "completed", "model": "gpt-5", "output": [item],
            "usage": {"input_tokens": 950, "output_tokens": 5}}
    return events(
        {"type": "response.created", "response": {**done, "status": "in_progress", "output": [], "usage": None}},
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "content": []}},
        {"type": "response.output_text.delta", "item_id": "msg_2", "output_index": 0, "content_index": 0,
         "delta": text},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": done},
    )


def run_claude_code(url: str, home: Any, work: Any, prompt: str, final: str, timeout: float) -> None:
    """Claude Code headless against the proxy at ``url``; its run must end with the text ``final``."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
           "ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "dummy", "DISABLE_AUTOUPDATER": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1", "IS_SANDBOX": "1"}
    cmd = [str(CLAUDE), "-p", prompt, "--output-format", "stream-json", "--verbose",
           "--dangerously-skip-permissions", "--max-turns", "6"]
    proc = subprocess.run(cmd, cwd=str(work), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    result = [line for line in lines if line.get("type") == "result"]
    assert result and result[-1]["result"] == final, (proc.stdout[-2000:], proc.stderr[-2000:])


@pytest.mark.skipif(CLAUDE is None, reason="Claude Code CLI not found (set CLAUDEPROXY_CLAUDE_BIN or run .ci/run)")
def test_claude_code_with_a_tool_round_keeps_its_reasoning(make_proxy: Any, tmp_path: Any) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    target = str(work / "r.txt")

    def model(rec: Any) -> Reply:
        body = rec.json
        if not body.get("tools"):
            return final_turn('{"title": "Fake"}')
        kinds = [item.get("type") for item in body["input"]]
        return final_turn("RESPONSES-DONE") if "function_call_output" in kinds else write_call_turn(target)

    fake = ScriptedUpstream(model)
    try:
        server = make_proxy(upstream=fake.url, upstream_api="responses", model="gpt-5", provider="openai")
        started = time.monotonic()
        run_claude_code(server.url, home, work, "Create r.txt.", "RESPONSES-DONE", timeout=90)
        assert time.monotonic() - started < 60
        with open(target, encoding="utf-8") as fh:
            assert fh.read() == "from responses\n"
        main_turns = [r.json for r in fake.requests if r.json.get("tools")]
        assert len(main_turns) == 2 and all(r.path == "/v1/responses" for r in fake.requests)
        second: List[Dict[str, Any]] = main_turns[1]["input"]
        kinds = [item.get("type") for item in second]
        reasoning = [item for item in second if item.get("type") == "reasoning"]
        # The reasoning item came back byte for byte, right before the call it preceded.
        assert [(r["id"], r["encrypted_content"]) for r in reasoning] == [("rs_cc1", BLOB)]
        assert kinds[kinds.index("reasoning") + 1] == "function_call"
        call = second[kinds.index("function_call")]
        output = second[kinds.index("function_call_output")]
        assert call["call_id"] == output["call_id"] == "call_cc1"
    finally:
        fake.close()


def big_write_turn(path: str, content: str) -> Reply:
    """A Write whose arguments stream in 1 KB deltas; as OpenAI does, ``.done``, ``output_item.done``
    and ``response.completed`` each repeat the whole arguments on one line."""
    args = json.dumps({"file_path": path, "content": content})
    call = {"type": "function_call", "id": "fc_big", "call_id": "call_big", "name": "Write", "arguments": args,
            "status": "completed"}
    done = {"id": "resp_big", "object": "response", "status": "completed", "model": "gpt-5", "output": [call],
            "usage": {"input_tokens": 900, "output_tokens": len(args) // 4}}
    deltas = [{"type": "response.function_call_arguments.delta", "item_id": "fc_big", "output_index": 0,
               "delta": args[i:i + 1024]} for i in range(0, len(args), 1024)]
    return events(
        {"type": "response.created", "response": {**done, "status": "in_progress", "output": [], "usage": None}},
        {"type": "response.output_item.added", "output_index": 0, "item": {**call, "arguments": "",
                                                                           "status": "in_progress"}},
        *deltas,
        {"type": "response.function_call_arguments.done", "item_id": "fc_big", "output_index": 0, "arguments": args},
        {"type": "response.output_item.done", "output_index": 0, "item": call},
        {"type": "response.completed", "response": done},
    )


@pytest.mark.skipif(CLAUDE is None, reason="Claude Code CLI not found (set CLAUDEPROXY_CLAUDE_BIN or run .ci/run)")
def test_claude_code_writes_a_file_whose_arguments_repeat_past_the_line_cap(make_proxy: Any, tmp_path: Any) -> None:
    """1.2 MB of arguments: each repeating line is over the 1 MiB SSE line cap, which used to end
    the stream with an error after every delta had gone out (Claude Code then retried the turn)."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    target = work / "big.txt"
    content = "".join(f"row {i}: {'x' * (i % 40)} \"value\" \\ end\n" for i in range(22000))
    assert len(json.dumps(content)) > 1024 * 1024

    def model(rec: Any) -> Reply:
        body = rec.json
        if not body.get("tools"):
            return final_turn('{"title": "Fake"}')
        kinds = [item.get("type") for item in body["input"]]
        return final_turn("BIG-DONE") if "function_call_output" in kinds else big_write_turn(str(target), content)

    fake = ScriptedUpstream(model)
    try:
        server = make_proxy(upstream=fake.url, upstream_api="responses", model="gpt-5", provider="openai")
        run_claude_code(server.url, home, work, "Create big.txt.", "BIG-DONE", timeout=120)
        assert target.read_text(encoding="utf-8") == content
        main_turns = [r.json for r in fake.requests if r.json.get("tools")]
        assert len(main_turns) == 2  # no retry of the first turn
    finally:
        fake.close()
