"""M2: 5 MB tool arguments (RELIABILITY.md F10), 20 streams in parallel: the proxy's peak RSS.

The upstream streams, for each of 20 concurrent client streams, one tool call whose
arguments are a valid JSON object of about 5 MB (``{"content": "<text>"}``) in 1 KB
fragments. The proxy must pass them on as ``input_json_delta`` events while they come:
if it kept each call's arguments whole, 20 of them would be 100 MB. Measured: the
proxy's peak RSS (``VmHWM``) after the load minus its ``VmRSS`` before it; target
< 50 MB.

- ``M2``: a Chat Completions upstream (``choices[0].delta.tool_calls`` fragments,
  ``finish_reason: "tool_calls"``) through the default provider.
- ``M2-passthrough``: an Anthropic upstream (``input_json_delta`` events of 1 KB)
  through ``--passthrough``.

Each stream must pass the event grammar, end with ``stop_reason: "tool_use"``, and its
``partial_json`` deltas joined must equal the upstream's arguments byte for byte. The
proxy runs as ``python -m claudeproxy`` in a subprocess, so the RSS is its own. The
test process never holds a whole 5 MB argument per stream: the upstream's fragments are
slices of one shared text, made as they are sent, and each client compares what it
receives against the same slices as it reads. Every wait is bounded. Linux only
(``/proc``).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from conftest import CLIENT_KEY
from fakes import FakeUpstream, Reply
from rkit import HAVE_PROC, PeakSampler, ProxyProcess, peak_rss_kb, record, rss_kb
from sse_checks import assert_valid_event_sequence, parse_event_block

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HAVE_PROC, reason="needs /proc (Linux)")]

STREAMS = 20
ARGS_BYTES = 5 * 1024 * 1024
DELTA = 1024
TARGET_MB = 50
READ_TIMEOUT = 60.0  # one stream, start to end; the whole run takes a few seconds

# The text of every call: JSON-escaped lines (quotes, backslashes, newlines as escapes), so the
# fragments cut escapes in two now and then, as a model's would. One shared string.
_UNIT = 'line of a file: print(\\"hello, world\\")  # a \\\\ and a tab\\there\\n'
_FILLER = (_UNIT * (ARGS_BYTES // len(_UNIT) + 1))[:ARGS_BYTES]
WARM_BYTES = 64 * 1024  # the warm-up call's


def _whole_escapes(n: int) -> int:
    """``n``, or ``n - 1`` if the filler's first ``n`` characters end inside an escape."""
    end = _FILLER[max(0, n - 8):n]
    trailing = len(end) - len(end.rstrip("\\"))
    return n - (trailing % 2)


class Arguments:
    """Stream ``i``'s arguments, ``{"content": "stream 07: <filler>"}``, as slices (never joined)."""

    def __init__(self, i: int, size: int = ARGS_BYTES) -> None:
        self.head = '{"content": "stream %02d: ' % i
        self.tail = '"}'
        self.filler = _whole_escapes(size)
        self.length = len(self.head) + self.filler + len(self.tail)

    def slice(self, start: int, end: int) -> str:
        parts = []
        h, f = len(self.head), len(self.head) + self.filler
        if start < h:
            parts.append(self.head[start:min(end, h)])
        if end > h and start < f:
            parts.append(_FILLER[max(start, h) - h:min(end, f) - h])
        if end > f:
            parts.append(self.tail[max(start, f) - f:end - f])
        return "".join(parts)

    def fragments(self) -> Iterator[str]:
        for start in range(0, self.length, DELTA):
            yield self.slice(start, start + DELTA)


def _sse(data: bytes, event: str = "") -> bytes:
    return (b"event: " + event.encode() + b"\n" if event else b"") + b"data: " + data + b"\n\n"


def chat_steps(args: Arguments) -> Iterator[bytes]:
    """The Chat Completions chunks of one tool call, made as they are sent."""
    env = b'{"id":"chatcmpl-m2","object":"chat.completion.chunk","created":1700000000,"model":"gpt-test","choices":'
    yield _sse(env + b'[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,'
               b'"id":"call_1","type":"function","function":{"name":"Write","arguments":""}}]},'
               b'"finish_reason":null}]}')
    for piece in args.fragments():
        yield _sse(env + b'[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":'
                   + json.dumps(piece).encode() + b'}}]},"finish_reason":null}]}')
    yield _sse(env + b'[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}')
    yield _sse(env + b'[],"usage":{"prompt_tokens":20,"completion_tokens":%d}}' % (args.length // 4))
    yield b"data: [DONE]\n\n"


def messages_steps(args: Arguments) -> Iterator[bytes]:
    """The Anthropic events of one tool call, made as they are sent."""
    start = {"type": "message_start", "message": {
        "id": "msg_01M2", "type": "message", "role": "assistant", "model": "upstream-model", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 20, "output_tokens": 1}}}
    yield _sse(json.dumps(start).encode(), "message_start")
    block = {"type": "content_block_start", "index": 0,
             "content_block": {"type": "tool_use", "id": "toolu_01M2", "name": "Write", "input": {}}}
    yield _sse(json.dumps(block).encode(), "content_block_start")
    for piece in args.fragments():
        yield _sse(b'{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":'
                   + json.dumps(piece).encode() + b"}}", "content_block_delta")
    yield _sse(b'{"type":"content_block_stop","index":0}', "content_block_stop")
    yield _sse(b'{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},'
               b'"usage":{"output_tokens":%d}}' % (args.length // 4), "message_delta")
    yield _sse(b'{"type":"message_stop"}', "message_stop")


def _escaped(args: Arguments) -> Iterator[bytes]:
    """The arguments as the inside of a JSON string, in pieces (escaping is per character)."""
    for piece in args.fragments():
        yield json.dumps(piece).encode()[1:-1]


def responses_steps(args: Arguments) -> Iterator[bytes]:
    """The Responses events of one function call, made as they are sent: its deltas, then OpenAI's
    three closing events, each repeating the whole arguments on one line (sent in pieces)."""
    call = b'{"type":"function_call","id":"fc_m2","call_id":"call_m2","name":"Write","status":"%s","arguments":"'
    response = b'{"id":"resp_m2","object":"response","model":"gpt-test","status":"%s","output":%s,"usage":%s}'
    yield _sse(response.replace(b"%s", b"in_progress", 1) % (b"[]", b"null"), "response.created")
    yield _sse(b'{"type":"response.output_item.added","output_index":0,"item":' + call % b"in_progress"
               + b'"}}', "response.output_item.added")
    for piece in _escaped(args):
        yield _sse(b'{"type":"response.function_call_arguments.delta","item_id":"fc_m2","output_index":0,'
                   b'"delta":"' + piece + b'"}', "response.function_call_arguments.delta")
    closing = [
        (b"response.function_call_arguments.done",
         b'{"type":"response.function_call_arguments.done","item_id":"fc_m2","output_index":0,"arguments":"', b'"}'),
        (b"response.output_item.done",
         b'{"type":"response.output_item.done","output_index":0,"item":' + call % b"completed", b'"}}'),
        (b"response.completed",
         b'{"type":"response.completed","response":{"id":"resp_m2","object":"response","model":"gpt-test",'
         b'"status":"completed","output":[' + call % b"completed",
         b'"}],"usage":{"input_tokens":20,"output_tokens":%d}}}' % (args.length // 4)),
    ]
    for name, head, tail in closing:
        yield b"event: " + name + b"\ndata: " + head
        yield from _escaped(args)
        yield tail + b"\n\n"


def responder(api: str) -> Any:
    def respond(rec: Any) -> Reply:
        tail = json.loads(rec.body.decode("utf-8"))["model"].rsplit("-", 1)[1]
        args = Arguments(0, WARM_BYTES) if tail == "warm" else Arguments(int(tail))
        steps = {"chat": chat_steps, "messages": messages_steps, "responses": responses_steps}[api](args)
        # A generator: the fake sends each step as one HTTP chunk as it is made.
        return Reply(200, (("Content-Type", "text/event-stream"),), steps, chunked=True)  # type: ignore[arg-type]
    return respond


def client_request(i: int, warm: bool = False) -> Dict[str, Any]:
    return {
        "model": "claude-m2-warm" if warm else f"claude-m2-{i}", "max_tokens": 32000, "stream": True,
        "messages": [{"role": "user", "content": "Write the file."}],
        "tools": [{"name": "Write", "description": "Write a file.",
                   "input_schema": {"type": "object", "properties": {"content": {"type": "string"}},
                                    "required": ["content"]}}],
    }


class Outcome:
    def __init__(self) -> None:
        self.events: List[Dict[str, Any]] = []  # runs of input_json_delta for one block kept as one
        self.deltas = 0
        self.received = 0  # characters of partial_json checked so far
        self.mismatch: Optional[str] = None
        self.error: Optional[str] = None
        self.started = 0.0
        self.first_delta: Optional[float] = None  # when the first input_json_delta arrived
        self.took = 0.0


def read_stream(port: int, i: int, out: Outcome, warm: bool = False) -> None:
    """One client stream on a raw socket: every read bounded; ``partial_json`` checked as it comes."""
    started = out.started = time.monotonic()
    deadline = started + READ_TIMEOUT
    expected = Arguments(0, WARM_BYTES) if warm else Arguments(i)
    data = json.dumps(client_request(i, warm)).encode()
    head = (f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"anthropic-version: 2023-06-01\r\nx-api-key: {CLIENT_KEY}\r\nConnection: close\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    buf = bytearray()
    sse = bytearray()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head + data)

            def fill() -> bool:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("timed out reading the stream")
                sock.settimeout(left)
                piece = sock.recv(262144)
                buf.extend(piece)
                return bool(piece)

            while b"\r\n\r\n" not in buf:
                assert fill(), f"closed before the response head: {bytes(buf[:200])!r}"
            end = buf.index(b"\r\n\r\n")
            status_line = bytes(buf[:end]).split(b"\r\n", 1)[0]
            headers = bytes(buf[:end]).lower()
            del buf[:end + 4]
            assert b" 200 " in status_line + b" ", f"{status_line!r} {bytes(buf[:300])!r}"
            assert b"transfer-encoding: chunked" in headers, headers
            pos = 0
            while True:
                nl = buf.find(b"\r\n", pos)
                while nl < 0:
                    assert fill(), "closed inside the chunked body"
                    nl = buf.find(b"\r\n", pos)
                size = int(bytes(buf[pos:nl]).split(b";")[0], 16)
                while len(buf) < nl + 2 + size + 2:
                    assert fill(), "closed inside a chunk"
                if size == 0:
                    break
                sse.extend(buf[nl + 2:nl + 2 + size])
                pos = nl + 2 + size + 2
                if pos > 1 << 16:
                    del buf[:pos]
                    pos = 0
                _events(sse, out, expected)
            assert not sse.strip(), f"the body ended inside an event: {bytes(sse[:200])!r}"
    except (AssertionError, OSError, ValueError, KeyError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    out.took = time.monotonic() - started
    if out.error is None and out.received != expected.length and out.mismatch is None:
        out.mismatch = f"{out.received} characters of partial_json, expected {expected.length}"


def _events(sse: bytearray, out: Outcome, expected: Arguments) -> None:
    """Take the complete events off ``sse``; check each ``partial_json`` against the expected slice."""
    at = 0
    while True:
        end = sse.find(b"\n\n", at)
        if end < 0:
            break
        block = bytes(sse[at:end]).decode("utf-8")
        at = end + 2
        name, event = parse_event_block(block)
        assert event.get("type") == name, f"event {name!r} with type {event.get('type')!r}"
        if event["type"] == "content_block_delta" and event["delta"].get("type") == "input_json_delta":
            piece = event["delta"]["partial_json"]
            if out.first_delta is None:
                out.first_delta = time.monotonic()
            if out.mismatch is None and expected.slice(out.received, out.received + len(piece)) != piece:
                out.mismatch = (f"partial_json differs at character {out.received}: got {piece[:80]!r}, "
                                f"expected {expected.slice(out.received, out.received + 80)!r}")
            out.received += len(piece)
            out.deltas += 1
            last = out.events[-1] if out.events else None
            if (last is not None and last["type"] == "content_block_delta" and last["index"] == event["index"]
                    and last["delta"]["type"] == "input_json_delta"):
                continue  # the grammar checks each such delta alike: keep the first of a run only
            event["delta"]["partial_json"] = ""
        out.events.append(event)
    del sse[:at]


def run_load(proxy: ProxyProcess) -> Dict[str, Any]:
    # Warm-up: one small tool call, so lazy imports and first allocations are not counted.
    warm = Outcome()
    read_stream(proxy.port, 0, warm, warm=True)
    small = _verdict(None, warm)
    rss0 = rss_kb(proxy.pid)
    outcomes = [Outcome() for _ in range(STREAMS)]
    with PeakSampler(proxy.pid, 0.02, {"rss": rss_kb}, {"rss": rss0}) as sampler:
        started = time.monotonic()
        readers = [threading.Thread(target=read_stream, args=(proxy.port, i, outcomes[i]), daemon=True)
                   for i in range(STREAMS)]
        for t in readers:
            t.start()
        for t in readers:
            t.join(READ_TIMEOUT + 5)
        took = time.monotonic() - started
    peak = sampler.peak
    hwm = peak_rss_kb(proxy.pid)
    rss1 = rss_kb(proxy.pid)
    problems = [_verdict(t, out) for t, out in zip(readers, outcomes)]
    bad = [f"warm-up: {small}"] if small else []
    bad += [f"stream {i}: {p}" for i, p in enumerate(problems) if p]
    return {"rss0": rss0, "hwm": hwm, "rss1": rss1, "sampled_peak": peak["rss"], "took": took, "bad": bad,
            "valid": problems.count(""), "deltas": sum(o.deltas for o in outcomes),
            "chars": sum(o.received for o in outcomes), "slowest": max(o.took for o in outcomes),
            # Streamed, not deferred: each stream's first input_json_delta long before its end.
            "first_delta": max((o.first_delta - o.started if o.first_delta else float("inf")) for o in outcomes)}


def _verdict(thread: Optional[threading.Thread], out: Outcome) -> str:
    if thread is not None and thread.is_alive():
        return "still reading after the deadline"
    if out.error:
        return out.error
    if out.mismatch:
        return out.mismatch
    try:
        assert_valid_event_sequence(out.events, allow_error=False)
    except AssertionError as exc:
        return f"grammar: {exc}"
    blocks = [e["content_block"] for e in out.events if e["type"] == "content_block_start"]
    if [(b["type"], b.get("name")) for b in blocks] != [("tool_use", "Write")]:
        return f"blocks {blocks}"
    stops = [e["delta"]["stop_reason"] for e in out.events if e["type"] == "message_delta"]
    if stops != ["tool_use"]:
        return f"stop_reason {stops}"
    return ""


def measure(api: str) -> Tuple[Dict[str, Any], int, str]:
    fake = FakeUpstream(responder=responder(api))
    fake.server.socket.listen(64)
    if api == "chat":
        proxy = ProxyProcess(fake.url, "--log-level", "warning")
    elif api == "responses":
        proxy = ProxyProcess(fake.url, "--upstream-api", "responses", "--log-level", "warning")
    else:
        proxy = ProxyProcess(fake.url.rsplit("/v1", 1)[0], "--passthrough", "--api-key",
                             "sk-ant-UPSTREAM-0123456789", "--log-level", "warning")
    try:
        figures = run_load(proxy)
    finally:
        code, _ = proxy.stop()
        err = proxy.stderr
        proxy.kill()
        fake.close()
    return figures, code if code is not None else -1, err


@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
def test_5mb_tool_arguments_20_in_parallel(api: str) -> None:
    figures, code, err = measure(api)
    growth_mb = (figures["hwm"] - figures["rss0"]) / 1024
    bad = list(figures["bad"])
    if code != 0:
        bad.append(f"the proxy exited {code}")
    if "Traceback" in err:
        bad.append(f"traceback: {err[-1500:]}")
    ok = not bad and growth_mb < TARGET_MB
    fid, how = {"chat": ("M2", "Chat Completions upstream"),
                "responses": ("M2-responses", "Responses upstream: each call's closing events repeat its "
                              "whole arguments three times, one line each"),
                "messages": ("M2-passthrough", "Anthropic upstream, --passthrough")}[api]
    same = "; input_json_delta joined = the upstream's arguments" if figures["valid"] == STREAMS else ""
    record(fid, f"{STREAMS} parallel streams, each one tool call with {ARGS_BYTES / 2**20:g} MB of arguments in "
           f"{DELTA} B deltas (F10; {how}; subprocess proxy)",
           f"peak RSS +{growth_mb:.1f} MB (VmHWM {figures['hwm'] / 1024:.1f} MB after, VmRSS "
           f"{figures['rss0'] / 1024:.1f} MB before); {figures['valid']}/{STREAMS} streams valid{same}; "
           f"{figures['chars'] / 2**20:.0f} MB in {figures['deltas']} deltas in {figures['took']:.1f} s "
           f"(first delta of each stream within {figures['first_delta']:.2f} s)",
           f"peak RSS growth < {TARGET_MB} MB; every stream valid, stop_reason tool_use", ok,
           rss_kb_before=figures["rss0"], vmhwm_kb_after=figures["hwm"], rss_kb_after=figures["rss1"],
           sampled_peak_rss_kb=figures["sampled_peak"], seconds=round(figures["took"], 2),
           slowest_stream_s=round(figures["slowest"], 2), first_delta_s=round(figures["first_delta"], 3),
           problems=bad[:5])
    assert not bad, bad[:5]
    assert growth_mb < TARGET_MB, f"peak RSS grew {growth_mb:.1f} MB with {STREAMS} x {ARGS_BYTES >> 20} MB arguments"
