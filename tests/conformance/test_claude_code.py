"""The real Claude Code CLI, headless, through the proxy, against a scripted fake OpenAI upstream.

The recipe is CLAUDE-CODE.md's: temp HOME and cwd, ``ANTHROPIC_BASE_URL`` =
the proxy, ``claude -p ... --output-format stream-json --verbose
--dangerously-skip-permissions --max-turns 6``, a subprocess timeout. The
fake upstream is a tiny "model" that looks at each request: first turn -> the
scenario's answer (text or tool calls, streamed as OpenAI SSE), after tool
results -> a final text. Every body the proxy sent upstream must be a valid
OpenAI request (test_openai_schema.py's checker).

Cases: (a) plain answer; (b) a Write round trip that creates a file, the tool
result going back upstream as a ``role: tool`` message; (c) two parallel tool
calls (Write + Bash), interleaved fragments; (d) an upstream 400 that Claude
Code reports as an error result instead of hanging; (e) a reasoning model's
thinking survives Claude Code's round trip (DeepSeek ``reasoning_content``);
(f) a stream that breaks after some text (error object, connection reset):
Claude Code retries without streaming and the proxy serves that; (g) finish
and usage but no [DONE] and no EOF: the run still ends at once; (h) haiku's
trailing system message after the tool result reaches the upstream in place; (i) a 300 KB Write in
1 KB fragments; (j) a server that numbers every answer's calls from call_0: every result reaches it.

The binary: $CLAUDEPROXY_CLAUDE_BIN (set by .ci/run), else ``claude`` on
PATH, else .ci/node's copy; the module skips when there is none.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

pytest.importorskip("jsonschema")

from conformance_helpers import (  # noqa: E402
    Run,
    ScriptedUpstream,
    accumulate_chunks,
    claude_binary,
    claude_env,
    openai_problems,
)
from fakes import Fault, Reply, chunk, json_reply, sse_reply  # noqa: E402

CLAUDE = claude_binary()
pytestmark = [
    pytest.mark.conformance,
    pytest.mark.skipif(CLAUDE is None, reason="Claude Code CLI not found (set CLAUDEPROXY_CLAUDE_BIN or run .ci/run)"),
]
RUN_TIMEOUT = 90.0  # one run takes about 1 s against a local fake
Chunks = List[Dict[str, Any]]
ToolCall = Tuple[str, str, Dict[str, Any]]  # (id, name, input)


# ----------------------------------------------------------------------
# The scripted model.


def text_chunks(text: str, reasoning: Optional[str] = None) -> Chunks:
    third = max(1, len(text) // 3)
    out = [chunk({"role": "assistant", "content": ""})]
    if reasoning:
        out.append(chunk({"reasoning_content": reasoning}))
    out += [chunk({"content": text[i:i + third]}) for i in range(0, len(text), third)]
    return out + [chunk({}, "stop"), {"choices": [], "usage": {"prompt_tokens": 900, "completion_tokens": 12}}]


def tool_chunks(calls: List[ToolCall], reasoning: Optional[str] = None) -> Chunks:
    """Each call's arguments in two fragments, all first halves before any second half."""
    out = [chunk({"role": "assistant", "content": ""})]
    if reasoning:
        out.append(chunk({"reasoning_content": reasoning}))
    args = [json.dumps(inp) for _, _, inp in calls]
    for i, (tid, name, _) in enumerate(calls):
        half = args[i][: len(args[i]) // 2]
        out.append(chunk({"tool_calls": [{"index": i, "id": tid, "type": "function",
                                          "function": {"name": name, "arguments": half}}]}))
    for i in range(len(calls)):
        rest = args[i][len(args[i]) // 2:]
        out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": rest}}]}))
    return out + [chunk({}, "tool_calls"), {"choices": [], "usage": {"prompt_tokens": 900, "completion_tokens": 40}}]


def last_turn(body: Dict[str, Any]) -> str:
    """Role of the last message that is not a system message (Claude Code may end with one)."""
    roles = [m.get("role") for m in body.get("messages", []) if m.get("role") not in ("system", "developer")]
    return roles[-1] if roles else ""


def answer(body: Dict[str, Any], chunks: Chunks) -> Reply:
    return sse_reply(*chunks) if body.get("stream") else json_reply(accumulate_chunks(chunks))


class FakeModel:
    """First turn: ``first``; after tool results: ``final`` text; side requests without tools: a title."""

    def __init__(self, first: Chunks, final: str = "FINAL-ANSWER") -> None:
        self.first = first
        self.final = final

    def __call__(self, rec: Any) -> Reply:
        body = rec.json
        if not body.get("tools"):
            return answer(body, text_chunks('{"title": "Fake session"}'))
        if last_turn(body) == "tool":
            return answer(body, text_chunks(self.final))
        return answer(body, self.first)


# ----------------------------------------------------------------------
# Running Claude Code.


@pytest.fixture
def run_claude(make_proxy: Any, tmp_path: Any) -> Any:
    upstreams: List[ScriptedUpstream] = []

    def run(script: Callable[[Any], Reply], prompt: str = "Do the task.", provider: Optional[str] = None,
            args: Tuple[str, ...] = ()) -> Run:
        fake = ScriptedUpstream(script)
        upstreams.append(fake)
        server = make_proxy(upstream=fake.url, provider=provider)
        home, work = tmp_path / "home", tmp_path / "work"
        home.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        cmd = [str(CLAUDE), "-p", prompt, "--output-format", "stream-json", "--verbose",
               "--dangerously-skip-permissions", "--max-turns", "6", *args]
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=str(work), env=claude_env(server.url, str(home)), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT)
        return Run(proc, time.monotonic() - started, fake.chat_bodies())

    yield run
    for fake in upstreams:
        fake.close()


def assert_valid_upstream_bodies(run: Run, strict: bool = True) -> None:
    assert run.bodies, "Claude Code sent nothing upstream"
    problems = {i: openai_problems(body, strict_fields=strict) for i, body in enumerate(run.bodies)}
    assert {i: p for i, p in problems.items() if p} == {}


def tool_messages(body: Dict[str, Any]) -> Dict[str, str]:
    return {m["tool_call_id"]: m["content"] for m in body["messages"] if m.get("role") == "tool"}


def tool_calls_before(body: Dict[str, Any], tool_call_id: str) -> Dict[str, Any]:
    """The assistant tool call that a tool message answers, as sent upstream."""
    for msg in body["messages"]:
        for call in msg.get("tool_calls") or []:
            if call["id"] == tool_call_id:
                return {"name": call["function"]["name"], "input": json.loads(call["function"]["arguments"])}
    raise AssertionError(f"no tool call {tool_call_id} in {body['messages']}")


# ----------------------------------------------------------------------
# The cases.


def test_a_plain_answer(run_claude: Any) -> None:
    run = run_claude(FakeModel(text_chunks("PLAIN-ANSWER-7431")), prompt="Say the magic word.")
    result = run.result
    assert (result["is_error"], result["result"]) == (False, "PLAIN-ANSWER-7431"), run
    assert run.proc.returncode == 0, run
    assert len(run.bodies) == 1
    assert run.bodies[0]["stream"] is True and run.bodies[0]["stream_options"] == {"include_usage": True}
    assert "Say the magic word." in json.dumps(run.bodies[0]["messages"])
    assert_valid_upstream_bodies(run)


def test_b_write_tool_round_trip(run_claude: Any, tmp_path: Any) -> None:
    target = tmp_path / "work" / "hello.txt"
    content = "hello from the fake model\nsecond line: \u00e9\u00e8 \u2713\n"
    call = ("call_write_1", "Write", {"file_path": str(target), "content": content})
    run = run_claude(FakeModel(tool_chunks([call]), final="WROTE-IT"), prompt="Create hello.txt.")
    assert (run.result["is_error"], run.result["result"]) == (False, "WROTE-IT"), run
    assert target.read_text(encoding="utf-8") == content
    assert len(run.bodies) == 2
    results = tool_messages(run.bodies[1])
    assert list(results) == ["call_write_1"]
    assert str(target) in results["call_write_1"]  # "File created successfully at: <path> ..."
    assert tool_calls_before(run.bodies[1], "call_write_1") == {"name": "Write", "input": call[2]}
    assert_valid_upstream_bodies(run)


def test_c_two_parallel_tool_calls(run_claude: Any, tmp_path: Any) -> None:
    work = tmp_path / "work"
    write = ("call_w", "Write", {"file_path": str(work / "a.txt"), "content": "A-CONTENT\n"})
    bash = ("call_b", "Bash", {"command": "printf bash-ok > b.txt", "description": "Write b.txt"})
    run = run_claude(FakeModel(tool_chunks([write, bash]), final="BOTH-DONE"), prompt="Make a.txt and b.txt.")
    assert (run.result["is_error"], run.result["result"]) == (False, "BOTH-DONE"), run
    assert (work / "a.txt").read_text() == "A-CONTENT\n"
    assert (work / "b.txt").read_text() == "bash-ok"
    assert len(run.bodies) == 2
    assert sorted(tool_messages(run.bodies[1])) == ["call_b", "call_w"]
    assert tool_calls_before(run.bodies[1], "call_b") == {"name": "Bash", "input": bash[2]}
    assert tool_calls_before(run.bodies[1], "call_w") == {"name": "Write", "input": write[2]}
    assert_valid_upstream_bodies(run)


def test_d_upstream_400_ends_the_run_with_an_error(run_claude: Any) -> None:
    def refuse(rec: Any) -> Reply:
        return json_reply({"error": {"message": "the fake upstream refuses this request", "type": "invalid_request_error",
                                     "code": None}}, status=400)

    run = run_claude(refuse)
    assert run.elapsed < RUN_TIMEOUT / 2
    result = run.result
    assert result["is_error"] is True, run
    assert "the fake upstream refuses this request" in result["result"]
    assert run.proc.returncode != 0
    assert_valid_upstream_bodies(run)


def test_e_reasoning_survives_the_round_trip(run_claude: Any, tmp_path: Any) -> None:
    """DeepSeek thinking mode: Claude Code echoes the proxy's thinking block, the proxy sends it back as
    ``reasoning_content`` on the assistant tool-call message (PROTOCOL.md 1.3, 5.4)."""
    target = tmp_path / "work" / "r.txt"
    call = ("call_r", "Write", {"file_path": str(target), "content": "r\n"})
    reasoning = "The user wants r.txt; I will write it."
    run = run_claude(FakeModel(tool_chunks([call], reasoning=reasoning), final="THOUGHT-AND-DONE"),
                     provider="deepseek")
    assert (run.result["is_error"], run.result["result"]) == (False, "THOUGHT-AND-DONE"), run
    assert target.read_text() == "r\n"
    assistant = [m for m in run.bodies[1]["messages"] if m.get("role") == "assistant"]
    assert [m.get("reasoning_content") for m in assistant] == [reasoning]
    assert_valid_upstream_bodies(run, strict=False)  # reasoning_content is DeepSeek's own field


def broken_stream_then_json(breakage: Any) -> Callable[[Any], Reply]:
    """Streaming requests: some text, then ``breakage``; non-streaming requests: a whole answer."""

    def script(rec: Any) -> Reply:
        body = rec.json
        if not body.get("stream"):
            return json_reply(accumulate_chunks(text_chunks("RECOVERED-WITHOUT-STREAM")))
        reply = sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "partial "}), done=False)
        reply.body.append(breakage)
        return reply

    return script


@pytest.mark.parametrize("breakage", [
    b'data: {"error": {"message": "boom mid-stream", "code": 500}}\n\n',
    Fault("rst"),
], ids=["error_object", "connection_reset"])
def test_f_broken_stream_falls_back_to_non_streaming(run_claude: Any, breakage: Any) -> None:
    """Cases 59/61 with the real client: the proxy's ``event: error`` makes Claude Code retry without
    streaming, and the proxy's non-streaming path answers it."""
    run = run_claude(broken_stream_then_json(breakage))
    assert (run.result["is_error"], run.result["result"]) == (False, "RECOVERED-WITHOUT-STREAM"), run
    assert [b.get("stream") for b in run.bodies] == [True, None]
    assert_valid_upstream_bodies(run)


def test_g_finish_and_usage_without_done_does_not_hang(run_claude: Any) -> None:
    """Case 57: the upstream sends finish_reason and usage, then neither [DONE] nor EOF (it would hold
    the connection for 10 s); the proxy ends the stream at once and Claude Code finishes."""

    def script(rec: Any) -> Reply:
        reply = sse_reply(*text_chunks("NO-DONE-NEEDED")[:-2],
                          chunk({}, "stop", usage={"prompt_tokens": 900, "completion_tokens": 3}), done=False)
        reply.body.append(Fault("hang"))
        return reply

    run = run_claude(script)
    assert (run.result["is_error"], run.result["result"]) == (False, "NO-DONE-NEEDED"), run
    assert run.elapsed < 6.0, run.elapsed


def test_h_haiku_trailing_system_message(run_claude: Any, tmp_path: Any) -> None:
    """With haiku, Claude Code ends the follow-up with a system message after the tool_result
    (CLAUDE-CODE.md): it must reach the upstream last, in place, after the tool message."""
    target = tmp_path / "work" / "h.txt"
    call = ("call_h", "Write", {"file_path": str(target), "content": "haiku\n"})
    run = run_claude(FakeModel(tool_chunks([call]), final="HAIKU-DONE"), args=("--model", "claude-haiku-5-5"))
    assert (run.result["is_error"], run.result["result"]) == (False, "HAIKU-DONE"), run
    assert target.read_text() == "haiku\n"
    roles = [m["role"] for m in run.bodies[1]["messages"]]
    assert roles[-2:] == ["tool", "system"], roles
    assert "tokens left" in json.dumps(run.bodies[1]["messages"][-1]["content"])
    assert_valid_upstream_bodies(run)


def test_i_a_large_write_in_small_fragments_with_a_final_repeat(run_claude: Any, tmp_path: Any) -> None:
    """Past 64 KiB the proxy keeps a digest of a live call's arguments, not their text (M2): a 300 KB
    file in 1 KB fragments must still reach the disk byte for byte, and a final chunk repeating the
    whole arguments (as some servers send) must not add them twice."""
    target = tmp_path / "work" / "big.py"
    content = "".join(f"line {i}: print('x' * {i % 80})  # \u00e9 \\ \"q\"\n" for i in range(7000))
    args = json.dumps({"file_path": str(target), "content": content})
    assert len(args) > 256 * 1024
    chunks = [chunk({"role": "assistant", "content": ""}),
              chunk({"tool_calls": [{"index": 0, "id": "call_big", "type": "function",
                                     "function": {"name": "Write", "arguments": args[:1024]}}]})]
    chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i:i + 1024]}}]})
               for i in range(1024, len(args), 1024)]
    chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": args}}]}),  # the whole again
               chunk({}, "tool_calls"), {"choices": [], "usage": {"prompt_tokens": 900, "completion_tokens": 40}}]
    run = run_claude(FakeModel(chunks, final="BIG-WRITTEN"), prompt="Write big.py.")
    assert (run.result["is_error"], run.result["result"]) == (False, "BIG-WRITTEN"), run
    assert target.read_text(encoding="utf-8") == content
    assert tool_calls_before(run.bodies[1], "call_big") == {"name": "Write", "input": json.loads(args)}


def test_j_a_server_that_numbers_each_answers_calls_from_call_0(run_claude: Any, tmp_path: Any) -> None:
    """Every answer's calls are call_0, call_0 (as some servers number them, and as two parallel calls
    of one id come): the proxy makes them unique, and every result reaches the model. Ids of the form
    call_0_2 were taken by Claude Code for pieces of a batch call call_0, and their results came back
    as "[Tool result missing due to internal error]" (an outside probe with this CLI)."""
    work = tmp_path / "work"

    def bash(name: str) -> ToolCall:
        return ("call_0", "Bash", {"command": f"printf {name} > {name}.txt", "description": f"Write {name}.txt"})

    def model(rec: Any) -> Reply:
        body = rec.json
        if not body.get("tools"):
            return answer(body, text_chunks('{"title": "Fake session"}'))
        done = len(tool_messages(body))
        if last_turn(body) != "tool":
            return answer(body, tool_chunks([bash("one")]))
        if done == 1:
            return answer(body, tool_chunks([bash("two"), bash("three")]))
        return answer(body, text_chunks("ALL-THREE"))

    run = run_claude(model, prompt="Write the three files.")
    assert (run.result["is_error"], run.result["result"]) == (False, "ALL-THREE"), run
    assert sorted(p.name for p in work.iterdir()) == ["one.txt", "three.txt", "two.txt"]
    results = tool_messages(run.bodies[-1])
    assert len(results) == 3, results
    for tool_id, content in results.items():
        assert "missing" not in content and "error" not in content.lower(), (tool_id, content)
    assert_valid_upstream_bodies(run)
