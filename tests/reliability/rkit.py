"""Shared tools of the reliability suite (RELIABILITY.md sections 4 and 6).

- ``record(fid, ...)``: every figure a test measures goes to one JSON file
  (``last-figures.json`` next to this module, or ``$CLAUDEPROXY_FIGURES``),
  with the machine it was measured on; ``report.py`` prints the table.
- ``machine()``: Python, OS, cores, ``ulimit -n`` (section 6 asks for them).
- ``/proc`` readers for a process's threads, file descriptors and RSS.
- ``ProxyProcess``: ``python -m claudeproxy`` in a subprocess, so RSS, thread
  and fd figures are the proxy's own, not the test process's.
- Answer checks: an Anthropic message, an Anthropic error, an SSE stream.
- A small HTTP/1.1 response reader for raw sockets (Content-Length, chunked or
  close-delimited), every read under a deadline.

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIGURES = os.environ.get("CLAUDEPROXY_FIGURES") or os.path.join(HERE, "last-figures.json")
_LOCK = threading.Lock()

ERROR_TYPES = {
    "invalid_request_error", "authentication_error", "billing_error", "permission_error", "not_found_error",
    "request_too_large", "rate_limit_error", "api_error", "timeout_error", "overloaded_error",
}
# The documented client status for each error type (PROTOCOL.md 4.2; RELIABILITY.md F13).
STATUS_TYPES = {
    400: {"invalid_request_error"}, 401: {"authentication_error"}, 402: {"billing_error"},
    403: {"permission_error"}, 404: {"not_found_error"}, 405: {"invalid_request_error"},
    408: {"timeout_error"}, 409: {"invalid_request_error"}, 411: {"invalid_request_error"},
    413: {"request_too_large"}, 414: {"invalid_request_error"}, 422: {"invalid_request_error"},
    429: {"rate_limit_error"}, 431: {"invalid_request_error"}, 500: {"api_error"}, 501: {"api_error"},
    502: {"api_error"}, 503: {"overloaded_error"}, 504: {"timeout_error"}, 505: {"api_error"},
    529: {"overloaded_error"},
}
STOP_REASONS = {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
                "model_context_window_exceeded", None}


# ---------------------------------------------------------------------------
# Figures.


def machine() -> Dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
        "cores": os.cpu_count(),
        "ulimit_n": f"{soft}/{hard}",
    }


def record(fid: str, test: str, figure: str, target: str, ok: bool, **details: Any) -> None:
    """Store one figure (replacing an older one with the same id)."""
    entry = {"id": fid, "test": test, "figure": figure, "target": target, "pass": bool(ok),
             "machine": machine(), "at": time.strftime("%Y-%m-%d %H:%M:%S"), "details": details}
    with _LOCK:
        data: Dict[str, Any] = {}
        if os.path.exists(FIGURES):
            try:
                with open(FIGURES, encoding="utf-8") as fh:
                    data = json.load(fh)
            except ValueError:
                data = {}
        data.setdefault("figures", {})[fid] = entry
        tmp = FIGURES + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, FIGURES)


def percentile(values: List[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); p=100 is the maximum."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


# ---------------------------------------------------------------------------
# Processes (Linux /proc).

HAVE_PROC = os.path.isdir("/proc/self/fd")


def fd_count(pid: Any = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _status(pid: Any, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def thread_count(pid: Any = "self") -> int:
    return _status(pid, "Threads")


def rss_kb(pid: Any = "self") -> int:
    return _status(pid, "VmRSS")


def peak_rss_kb(pid: Any = "self") -> int:
    """The process's peak RSS since it started (``VmHWM``)."""
    return _status(pid, "VmHWM")


class PeakSampler:
    """The highest values ``readers`` give (``{"rss": rss_kb, ...}``, each given the pid), read every
    ``every`` seconds on a thread between ``with`` and its end; ``peak`` starts at ``start``."""

    def __init__(self, pid: int, every: float, readers: Dict[str, Callable[[Any], int]], start: Dict[str, int]) -> None:
        self.pid, self.every, self.readers = pid, every, readers
        self.peak = dict(start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            try:
                for name, read in self.readers.items():
                    self.peak[name] = max(self.peak.get(name, 0), read(self.pid))
            except (OSError, KeyError):
                return  # the process is gone

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(2)


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def settle(read: Callable[[], int], baseline: int, timeout: float) -> int:
    """Wait until ``read()`` is at most ``baseline``; the last value read."""
    wait_until(lambda: read() <= baseline, timeout)
    return read()


class FdLimit:
    """Raise the soft RLIMIT_NOFILE for a test (children inherit it); restore it after."""

    def __init__(self, wanted: int) -> None:
        self.saved = resource.getrlimit(resource.RLIMIT_NOFILE)
        soft, hard = self.saved
        self.limit = soft
        if soft != resource.RLIM_INFINITY and soft < wanted:
            new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            self.limit = new

    def restore(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, self.saved)


def child_env(upstream_key: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CLAUDEPROXY_"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    env["PYTHONPATH"] = ROOT
    env["OPENAI_API_KEY"] = upstream_key
    return env


class ProxyProcess:
    """``python -m claudeproxy --port 0 --upstream URL ...``; stderr is drained by a thread."""

    def __init__(self, upstream: str, *args: str, upstream_key: str = "sk-UPSTREAM-SENTINEL-0123456789") -> None:
        argv = [sys.executable, "-m", "claudeproxy", "--port", "0", "--upstream", upstream, *args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=child_env(upstream_key), cwd=ROOT)
        self.err: List[bytes] = []
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline().decode() if ready else ""
        if "listening on http://" not in line:
            self.kill()
            raise AssertionError(f"the proxy did not start: {line!r} {self.stderr[-2000:]}")
        self.port = int(line.split("listening on http://", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.pid = self.proc.pid

    def _read_stderr(self) -> None:
        for line in iter(self.proc.stderr.readline, b""):  # type: ignore[union-attr]
            self.err.append(line)

    @property
    def stderr(self) -> str:
        return b"".join(self.err).decode("utf-8", "replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> Tuple[Optional[int], float]:
        """Send ``sig``; (exit status or None if it did not exit, seconds it took)."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - started
        took = time.monotonic() - started
        self._drain.join(5)
        return self.proc.returncode, took

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._drain.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.stop()
        self.kill()


# ---------------------------------------------------------------------------
# Raw HTTP.


class RawAnswer:
    def __init__(self, status: int, headers: Dict[str, str], body: bytes, closed: bool) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.closed = closed  # the server closed the connection after this answer

    def __repr__(self) -> str:
        return f"RawAnswer({self.status}, {self.body[:300]!r})"


class Reader:
    """Responses off one socket, in order; every read under ``deadline``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.eof = False

    def _fill(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete answer in time")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(262144)
        except socket.timeout:
            raise TimeoutError("no complete answer in time") from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        self.buf += data
        return bool(data)

    def until(self, marker: bytes, deadline: float) -> bytes:
        while marker not in self.buf:
            if not self._fill(deadline):
                raise EOFError(f"closed before {marker!r}: {self.buf[:200]!r}")
        out, self.buf = self.buf.split(marker, 1)
        return out

    def _exact(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise EOFError(f"closed inside a body ({len(self.buf)} of {n} bytes)")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def answer(self, timeout: float = 10.0, head_only: bool = False) -> RawAnswer:
        deadline = time.monotonic() + timeout
        while True:
            head = self.until(b"\r\n\r\n", deadline).decode("latin-1").split("\r\n")
            status = int(head[0].split(" ", 2)[1])
            if status != 100:
                break  # an interim 100 Continue is followed by the real answer
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        closes = headers.get("connection", "").lower() == "close"
        if head_only or status in (204, 304):
            return RawAnswer(status, headers, b"", closes)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                size = int(self.until(b"\r\n", deadline).split(b";")[0], 16)
                body += self._exact(size, deadline)
                if self._exact(2, deadline) != b"\r\n":
                    raise AssertionError("chunk not followed by CRLF")
                if size == 0:
                    break
            return RawAnswer(status, headers, bytes(body), closes)
        if "content-length" in headers:
            return RawAnswer(status, headers, self._exact(int(headers["content-length"]), deadline), closes)
        while self._fill(deadline):
            pass
        rest, self.buf = self.buf, b""
        return RawAnswer(status, headers, rest, True)


# ---------------------------------------------------------------------------
# Answer checks.


def check_error_body(status: int, body: bytes) -> Dict[str, Any]:
    """An Anthropic error object whose type is the documented one for ``status``."""
    obj = json.loads(body.decode("utf-8"))
    assert isinstance(obj, dict) and obj.get("type") == "error", obj
    err = obj.get("error")
    assert isinstance(err, dict) and err.get("type") in ERROR_TYPES, obj
    assert isinstance(err.get("message"), str) and err["message"], obj
    assert "Traceback" not in err["message"] and 'File "' not in err["message"], obj
    allowed = STATUS_TYPES.get(status, {"invalid_request_error"} if 400 <= status < 500 else {"api_error"})
    assert err["type"] in allowed, f"status {status} with error type {err['type']}"
    return obj


def check_message(obj: Any) -> None:
    """An Anthropic Message as the SDKs parse it."""
    assert isinstance(obj, dict) and obj.get("type") == "message", obj
    assert obj.get("role") == "assistant" and isinstance(obj.get("id"), str), obj
    assert isinstance(obj.get("content"), list), obj
    for block in obj["content"]:
        assert isinstance(block, dict) and isinstance(block.get("type"), str), block
        if block["type"] == "text":
            assert isinstance(block.get("text"), str), block
        elif block["type"] in ("tool_use", "server_tool_use"):
            assert isinstance(block.get("id"), str) and isinstance(block.get("name"), str), block
            assert isinstance(block.get("input"), dict), block
        elif block["type"] == "thinking":
            assert isinstance(block.get("thinking"), str), block
    assert obj.get("stop_reason") in STOP_REASONS, obj
    usage = obj.get("usage")
    assert isinstance(usage, dict) and isinstance(usage.get("input_tokens"), int), obj
    assert isinstance(usage.get("output_tokens"), int), obj


def check_answer(status: int, headers: Dict[str, str], body: bytes, path: str = "/v1/messages") -> str:
    """Any answer of the proxy: a valid message, stream, token count, model list or error. Its kind."""
    from sse_checks import assert_valid_event_sequence, events_of

    ctype = headers.get("content-type", "")
    if status >= 400:
        assert ctype.startswith("application/json"), (status, headers, body[:200])
        check_error_body(status, body)
        return "error"
    assert status == 200, (status, body[:200])
    if ctype.startswith("text/event-stream"):
        assert_valid_event_sequence(events_of(body))
        return "stream"
    assert ctype.startswith("application/json"), (headers, body[:200])
    obj = json.loads(body.decode("utf-8"))
    if path.startswith("/v1/messages/count_tokens"):
        assert isinstance(obj.get("input_tokens"), int), obj
        return "count"
    if path.startswith("/v1/messages"):
        check_message(obj)
        return "message"
    return "other"


# ---------------------------------------------------------------------------
# An upstream that answers every API normally (the request fuzz, the load tests).

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
ANTHROPIC_MESSAGE = {
    "id": "msg_01FAKE", "type": "message", "role": "assistant", "model": "upstream-model",
    "content": [{"type": "text", "text": "Hello!"}], "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 3},
}


def fixture_bytes(*parts: str) -> bytes:
    with open(os.path.join(FIXTURES, *parts), "rb") as fh:
        return fh.read()


def sse_steps(raw: bytes) -> List[bytes]:
    """An SSE transcript as one chunk per event."""
    return [event + b"\n\n" for event in raw.replace(b"\r\n", b"\n").split(b"\n\n") if event.strip()]


def normal_replies() -> Dict[str, Tuple[bytes, List[bytes]]]:
    """For each upstream path: (the JSON body, the SSE events) a healthy upstream sends."""
    return {
        "/chat/completions": (fixture_bytes("responses", "text_stop.openai.json"),
                              sse_steps(fixture_bytes("streams", "text_plain.openai.sse"))),
        "/messages": (json.dumps(ANTHROPIC_MESSAGE).encode(),
                      sse_steps(fixture_bytes("streams", "text_plain.anthropic.sse"))),
        "/responses": (fixture_bytes("responses_api", "responses", "text.response.json"),
                       sse_steps(fixture_bytes("responses_api", "streams", "text.upstream.sse"))),
    }


def normal_responder() -> Callable[[Any], Any]:
    """A ``FakeUpstream`` responder: the answer a healthy upstream gives to each request."""
    from fakes import Reply

    replies = normal_replies()

    def respond(rec: Any) -> Any:
        path = rec.path.split("?", 1)[0]
        if path.endswith("/messages/count_tokens"):
            return Reply(200, (("Content-Type", "application/json"),), [b'{"input_tokens": 7}'])
        for suffix, (body, events) in replies.items():
            if path.endswith(suffix):
                try:
                    stream = json.loads(rec.body.decode("utf-8")).get("stream") is True
                except (ValueError, AttributeError, RecursionError):
                    stream = False
                if stream:
                    return Reply(200, (("Content-Type", "text/event-stream"),), list(events), chunked=True)
                return Reply(200, (("Content-Type", "application/json"),), [body])
        return Reply(404, (("Content-Type", "application/json"),),
                     [b'{"error": {"message": "no such path", "type": "not_found_error"}}'])

    return respond
