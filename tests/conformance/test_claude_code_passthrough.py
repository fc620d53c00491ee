"""The real Claude Code CLI, headless, through the proxy to a server that speaks Anthropic's API itself.

DeepSeek, Moonshot, Zhipu, MiniMax, Ollama and vLLM serve ``/v1/messages`` at a path of their own
(``https://api.deepseek.com/anthropic``); the proxy forwards there (apis/messages.py) with the
route's model name, its own key in the provider's header, no betas and no billing line, and counts
the usage. A scripted fake of such a server: Claude Code's first turn gets a ``Write`` call streamed
as Anthropic events (its input in three ``input_json_delta`` pieces), the turn with the tool result
a final text; requests without tools (a title) a short text. And a stream the server breaks after
a text delta (its error event, a reset): Claude Code asks again and shows the second answer alone.
The recipe is test_claude_code.py's (temp HOME and cwd, ``claude -p ... --output-format
stream-json``); the module skips without the CLI.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any, Dict, Iterator, List

import pytest

import claudeproxy
from claudeproxy.config import Provider, Route, RouteTarget
from claudeproxy.model_facts import ModelFacts
from conformance_helpers import Run, claude_binary, claude_env
from conftest import request
from fakes import Fault, FakeUpstream, Recorded, Reply, json_reply

CLAUDE = claude_binary()
RUN_TIMEOUT = 90.0  # one run takes about 1 s against a local fake
pytestmark = [
    pytest.mark.conformance,
    pytest.mark.skipif(CLAUDE is None, reason="Claude Code CLI not found (set CLAUDEPROXY_CLAUDE_BIN or run .ci/run)"),
]
UPSTREAM_KEY = "sk-passthrough-upstream-0123456789"  # the proxy's key for the provider; Claude Code sends "dummy"
UPSTREAM_MODEL = "house-chat"
PRICES = ModelFacts(input_price=1.0, output_price=2.0)  # per million tokens


def _sse(*events: Dict[str, Any]) -> Reply:
    steps = [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode("utf-8") for e in events]
    return Reply(200, (("Content-Type", "text/event-stream"),), steps, chunked=True)


def _message(model: str, content: List[Dict[str, Any]], stop: str, usage: Dict[str, int]) -> Dict[str, Any]:
    return {"id": "msg_fake01", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": None, "usage": usage}


def _stream(model: str, content: List[Dict[str, Any]], stop: str, usage: Dict[str, int]) -> Reply:
    """``content`` as Anthropic streams it: text in two deltas, a tool's input in three pieces."""
    events: List[Dict[str, Any]] = [{"type": "message_start", "message": _message(
        model, [], None, {"input_tokens": usage["input_tokens"], "output_tokens": 1})}]  # type: ignore[arg-type]
    for i, block in enumerate(content):
        if block["type"] == "text":
            events.append({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})
            half = len(block["text"]) // 2
            events += [{"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": part}}
                       for part in (block["text"][:half], block["text"][half:])]
        else:
            events.append({"type": "content_block_start", "index": i,
                           "content_block": {**block, "input": {}}})
            raw = json.dumps(block["input"])
            third = len(raw) // 3
            events += [{"type": "content_block_delta", "index": i,
                        "delta": {"type": "input_json_delta", "partial_json": part}}
                       for part in (raw[:third], raw[third:2 * third], raw[2 * third:])]
        events.append({"type": "content_block_stop", "index": i})
    events += [{"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]}},
               {"type": "message_stop"}]
    return _sse(*events)


class NativeModel:
    """Title requests (no tools): a title; a turn ending in a tool result: ``final``; else ``Write``."""

    def __init__(self, file_path: str, content: str, final: str) -> None:
        self.call = {"type": "tool_use", "id": "toolu_native_write_1", "name": "Write",
                     "input": {"file_path": file_path, "content": content}}
        self.final = final

    def __call__(self, rec: Recorded) -> Reply:
        if rec.path.endswith("/count_tokens"):
            return json_reply({"input_tokens": 1234})
        body = rec.json
        if not body.get("tools"):
            content, stop = [{"type": "text", "text": '{"title": "Fake session"}'}], "end_turn"
        elif _ends_with_tool_result(body):
            content, stop = [{"type": "text", "text": self.final}], "end_turn"
        else:
            content, stop = [{"type": "text", "text": "Writing it."}, self.call], "tool_use"
        usage = {"input_tokens": 2000, "output_tokens": 40}
        if body.get("stream"):
            return _stream(body["model"], content, stop, usage)
        return json_reply(_message(body["model"], content, stop, usage))


def _ends_with_tool_result(body: Dict[str, Any]) -> bool:
    users = [m for m in body["messages"] if m.get("role") == "user"]
    last = users[-1]["content"] if users else ""
    return isinstance(last, list) and any(b.get("type") == "tool_result" for b in last)


@pytest.fixture
def native() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    try:
        yield fake
    finally:
        fake.close()


def _origin(fake: FakeUpstream) -> str:
    return fake.url[:-len("/v1")] if fake.url.endswith("/v1") else fake.url


def _start(fake: FakeUpstream) -> Any:
    provider = Provider("native", _origin(fake) + "/anthropic", api="messages",
                        token=claudeproxy.static_token(UPSTREAM_KEY), models=(("*", PRICES),))
    return claudeproxy.start(providers=(provider,), routes=(Route("*", RouteTarget("native", UPSTREAM_MODEL)),),
                             port=0)


def _claude(server: Any, tmp_path: Any, fake: FakeUpstream, prompt: str) -> Run:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    cmd = [str(CLAUDE), "-p", prompt, "--output-format", "stream-json", "--verbose",
           "--dangerously-skip-permissions", "--max-turns", "6", "--model", "claude-sonnet-4-5"]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=str(work), env=claude_env(server.url, str(home)), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    sent = [r.json for r in list(fake.requests) if r.path.endswith("/v1/messages")]
    return Run(proc, time.monotonic() - started, sent)


def test_a_write_round_through_a_native_anthropic_server(native: FakeUpstream, tmp_path: Any) -> None:
    target = tmp_path / "work" / "hello.txt"
    content = "written through a native server\nline two: \u00e9 \u2713\n"
    native.responder = NativeModel(str(target), content, "NATIVE-DONE-5521")
    server = _start(native)
    try:
        run = _claude(server, tmp_path, native, "Create hello.txt.")
        sent = [r for r in list(native.requests) if r.path.endswith("/v1/messages")]
        assert (run.result["is_error"], run.result["result"]) == (False, "NATIVE-DONE-5521"), run
        assert target.read_text(encoding="utf-8") == content  # the streamed input, whole, ran as Claude Code's Write

        # What the native server got: its own path, the route's model, the proxy's key in its header, no
        # client key, no betas it may not know, no billing line of Claude Code's.
        turns = [r for r in sent if r.json.get("tools")]
        assert len(turns) == 2, [r.path for r in native.requests]
        for rec in sent:
            assert rec.path == "/anthropic/v1/messages"
            assert rec.json["model"] == UPSTREAM_MODEL
            assert rec.headers.get("authorization") == f"Bearer {UPSTREAM_KEY}"
            assert "dummy" not in json.dumps(rec.headers)
            assert "anthropic-beta" not in rec.headers
            assert rec.headers.get("anthropic-version") == "2023-06-01"
            assert "x-anthropic-billing-header" not in json.dumps(rec.json.get("system", ""))
        # The tool result went back as Claude Code wrote it, for the call the server made.
        results = [b for b in turns[1].json["messages"][-1]["content"] if b.get("type") == "tool_result"]
        assert [b["tool_use_id"] for b in results] == ["toolu_native_write_1"]

        # Claude Code saw its own model name on every answer, never the upstream's.
        models = {line["message"]["model"] for line in run.lines if line.get("type") == "assistant"}
        assert models == {"claude-sonnet-4-5"}, models

        # The proxy counted what the server reported, at the provider's prices, under the route's model.
        assert server.server.wait_idle(5)
        usage = json.loads(request(server.url, "GET", "/v1/usage").body)
        [row] = [r for r in usage["models"] if (r["provider"], r["model"]) == ("native", UPSTREAM_MODEL)]
        calls = len(sent)
        assert (row["requests"], row["input_tokens"], row["output_tokens"]) == (calls, 2000 * calls, 40 * calls)
        assert row["cost_usd"] == pytest.approx(calls * (2000 * 1.0 + 40 * 2.0) / 1e6)
    finally:
        server.shutdown(grace=1.0)


@pytest.mark.parametrize("breakage", [
    b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n',
    Fault("rst"),
], ids=["error_event", "connection_reset"])
def test_b_a_stream_broken_after_text_is_retried_and_answered(native: FakeUpstream, tmp_path: Any,
                                                             breakage: Any) -> None:
    """The server's stream breaks after a text delta (its own error event, or a reset): the proxy ends
    the client's stream with one error event, Claude Code asks again, and the second answer is the
    one it shows -- no half answer, no hang."""
    asked: List[bool] = []

    def script(rec: Recorded) -> Reply:
        body = rec.json
        asked.append(bool(body.get("stream")))
        usage = {"input_tokens": 2000, "output_tokens": 9}
        if len(asked) == 1:
            reply = _stream(body["model"], [{"type": "text", "text": "HALF-AN-ANSWER"}], "end_turn", usage)
            reply.body = reply.body[:4] + [breakage]  # message_start, block start, first delta, the break
            return reply
        content = [{"type": "text", "text": "WHOLE-ANSWER-8830"}]
        return _stream(body["model"], content, "end_turn", usage) if body.get("stream") else \
            json_reply(_message(body["model"], content, "end_turn", usage))

    native.responder = script
    server = _start(native)
    try:
        run = _claude(server, tmp_path, native, "Say the word.")
        assert (run.result["is_error"], run.result["result"]) == (False, "WHOLE-ANSWER-8830"), run
        assert len(asked) == 2 and asked[0] is True, asked
        assert "HALF-AN-ANSWER" not in run.result["result"]
    finally:
        server.shutdown(grace=1.0)


class OlderSchemaModel(NativeModel):
    """A server that validates an older Messages schema, as several gateways and native endpoints do:
    a 422 for each field it does not have (context_management, output_config, thinking.display), a
    400 for cache_control marks and for adaptive thinking (anthropics/claude-code#33506's words);
    else ``NativeModel``."""

    def __call__(self, rec: Recorded) -> Reply:
        if rec.path.endswith("/v1/messages"):
            body = rec.json
            thinking = body.get("thinking") if isinstance(body.get("thinking"), dict) else {}
            for field in ("context_management", "output_config"):
                if field in body:
                    return _unknown(field)
            if "cache_control" in json.dumps(body):  # no prompt cache here
                refusal = {"type": "invalid_request_error", "message": "*.cache_control: Extra inputs are not permitted"}
                return json_reply({"type": "error", "error": refusal}, status=400)
            if "display" in thinking:
                return _unknown("thinking", "display")
            if thinking.get("type") == "adaptive":
                return json_reply({"type": "error", "error": {"type": "invalid_request_error", "message": (
                    "thinking: Input tag 'adaptive' found using 'type' does not match any of the expected "
                    "tags: 'disabled', 'enabled'")}}, status=400)
        return super().__call__(rec)


def _unknown(*loc: str) -> Reply:
    return json_reply({"detail": [{"type": "extra_forbidden", "loc": ["body", *loc],
                                   "msg": "Extra inputs are not permitted", "input": {}}]}, status=422)


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "claude-opus-4-6"])
def test_c_a_server_of_an_older_schema_gets_the_older_form(native: FakeUpstream, tmp_path: Any, model: str) -> None:
    """Claude Code sends Anthropic's newest request (context_management, thinking with a display,
    cache marks; adaptive thinking and an effort for newer models) to any server; one that validates an older
    schema refuses every turn, and Claude Code stops with its 400. The proxy sends the older form,
    and the Write round trip completes."""
    target = tmp_path / "work" / "older.txt"
    native.responder = OlderSchemaModel(str(target), "older schema\n", "OLDER-DONE-3308")
    server = _start(native)
    try:
        home, work = tmp_path / "home", tmp_path / "work"
        home.mkdir()
        work.mkdir()
        cmd = [str(CLAUDE), "-p", "Create older.txt.", "--output-format", "stream-json", "--verbose",
               "--dangerously-skip-permissions", "--max-turns", "6", "--model", model]
        proc = subprocess.run(cmd, cwd=str(work), env=claude_env(server.url, str(home)), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT)
        run = Run(proc, 0.0, [])
        assert (run.result["is_error"], run.result["result"]) == (False, "OLDER-DONE-3308"), run
        assert target.read_text(encoding="utf-8") == "older schema\n"
        sent = [r.json for r in list(native.requests) if r.path.endswith("/v1/messages")]
        asked = [b.get("thinking") for b in sent]
        assert any(isinstance(t, dict) for t in asked), asked  # Claude Code asked for thinking: the test is one
        accepted = [b for b in sent if "context_management" not in b and "output_config" not in b
                    and "display" not in (b.get("thinking") or {}) and (b.get("thinking") or {}).get("type") != "adaptive"
                    and "cache_control" not in json.dumps(b)]  # what the server took
        assert len(accepted) >= 2  # the turn with the call and the one with its result
        assert all((b.get("thinking") or {}).get("type") in (None, "enabled") for b in accepted)
    finally:
        server.shutdown(grace=1.0)
