"""R1: thousands of mutated requests over real sockets; every answer a valid Anthropic one.

A seeded generator (the seed is in the test id; ``CLAUDEPROXY_FUZZ_SEED``
picks another) mutates real requests -- the hand-written fixtures in
``tests/fixtures/requests`` and the 16 requests of a recorded Claude Code
session -- by byte flips, truncation, a type swap at every key path (every
distinct path of the corpus, array indices folded, gets one), deep nesting,
lone surrogates in strings and keys, NaN/Infinity and numbers past a float,
duplicate keys, oversized integers and strings, and deleted keys. Odd framing
goes over raw sockets: bad and duplicate Content-Length, chunked bodies,
``Expect: 100-continue``, pipelined garbage, headers without a body, non-UTF-8
bytes, oversized and broken request lines and headers, odd methods and paths.

The proxy runs against a fake upstream that answers every request normally,
once translating (Chat Completions) and once forwarding (the Messages API).
Invariants (RELIABILITY.md section 4): every answer is an Anthropic message, a
valid event stream or an Anthropic error whose type matches its status; no 5xx
(the upstream only ever answers 200, so any 5xx would be the proxy's own); no
traceback and no ERROR record; the proxy still answers; threads and file
descriptors back to their baseline.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import queue
import random
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import pytest
from conftest import CLIENT_KEY, FIXTURES, UPSTREAM_KEY, request
from fakes import FakeUpstream
from rkit import (
    HAVE_PROC,
    Reader,
    check_answer,
    fd_count,
    normal_responder,
    record,
    settle,
)

import claudeproxy

SEED = int(os.environ.get("CLAUDEPROXY_FUZZ_SEED", "20260"))
# Random body mutations per API, on top of the type-swap sweep over every key path.
RANDOM_MUTANTS = int(os.environ.get("CLAUDEPROXY_FUZZ_MUTANTS", "700"))
# Every key path gets its type swap; a smaller run (the leak check) may take every n-th.
SWEEP_EVERY = int(os.environ.get("CLAUDEPROXY_FUZZ_SWEEP_EVERY", "1"))
WORKERS = 4
ANSWER_TIMEOUT = 15.0
PLACE = "@@cpx-fuzz@@"
APIS = ("chat", "messages")


class Mutant(NamedTuple):
    seq: int  # its place in the generated sequence
    kind: str
    source: str
    detail: str
    data: bytes
    path: str = "/v1/messages"


# ---------------------------------------------------------------------------
# The corpus.


def corpus() -> List[Tuple[str, Dict[str, Any]]]:
    out = []
    folder = os.path.join(FIXTURES, "requests")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".anthropic.json"):
            with open(os.path.join(folder, name), encoding="utf-8") as fh:
                out.append((name[: -len(".anthropic.json")], json.load(fh)))
    with open(os.path.join(FIXTURES, "claude_code_session", "requests.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            out.append((f"claude-code-{row['seq']}", row["body"]))
    return out


Path = Tuple[Any, ...]


def paths_of(value: Any, prefix: Path = ()) -> Iterator[Path]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths_of(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from paths_of(item, prefix + (i,))


def shape(path: Path) -> Path:
    return tuple("*" if isinstance(k, int) else k for k in path)


def get_at(value: Any, path: Path) -> Any:
    for key in path:
        value = value[key]
    return value


def set_at(value: Any, path: Path, new: Any) -> Any:
    if not path:
        return new
    get_at(value, path[:-1])[path[-1]] = new
    return value


def copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def dumps_with(value: Any, raw: bytes) -> bytes:
    """``value`` serialised with the placeholder string replaced by raw JSON text."""
    return json.dumps(value, separators=(",", ":")).encode("utf-8").replace(json.dumps(PLACE).encode(), raw, 1)


# ---------------------------------------------------------------------------
# Body mutations. Each takes (rng, body, path) and returns (detail, bytes).

SWAPS: List[Any] = [None, True, False, 0, -1, 1.5, 2 ** 53 + 1, "", "x", "\u0000\u202e", [], [None], {},
                    {"type": "x"}, [[[]]], "y" * 5000, -0.0, 10 ** 30]


def swap_value(rng: random.Random, old: Any) -> Any:
    choices = [v for v in SWAPS if type(v) is not type(old)]
    return copy(rng.choice(choices))  # a fresh copy: a shared list put in twice would nest into itself


def m_swap(rng: random.Random, body: Any, path: Path) -> Tuple[str, bytes]:
    new = swap_value(rng, get_at(body, path))
    return f"{_p(path)} -> {json.dumps(new)[:40]}", json.dumps(set_at(body, path, new)).encode()


def m_delete(rng: random.Random, body: Any, path: Path) -> Tuple[str, bytes]:
    if not path:
        return "whole body -> {}", b"{}"
    parent = get_at(body, path[:-1])
    del parent[path[-1]]
    return f"deleted {_p(path)}", json.dumps(body).encode()


NESTS = [60, 127, 129, 400, 999, 1001, 5000, 100000]


def m_nest(rng: random.Random, body: Any, path: Path) -> Tuple[str, bytes]:
    depth = rng.choice(NESTS)
    if rng.random() < 0.5:
        raw = b"[" * depth + b"1" + b"]" * depth
    else:
        raw = b'{"a":' * depth + b"1" + b"}" * depth
    if rng.random() < 0.15:
        raw = raw[: len(raw) // 2 + 1]  # unbalanced too
    return f"{_p(path)} nested {depth}", dumps_with(set_at(body, path, PLACE), raw)


SURROGATES = [b'"\\ud800"', b'"a\\udfffb"', b'"\\ude00\\ud83d"', b'"\\uDBFF"', b'"ok \\ud83d\\ude00 \\ud800"']


def m_surrogate(rng: random.Random, body: Any, path: Path) -> Tuple[str, bytes]:
    raw = rng.choice(SURROGATES)
    node = get_at(body, path[:-1]) if path else None
    if isinstance(node, dict) and rng.random() < 0.4:
        node[PLACE] = node.pop(path[-1])  # the key itself holds the surrogate
        return f"key {_p(path)} -> {raw.decode()}", dumps_with(body, raw)
    return f"{_p(path)} -> {raw.decode()}", dumps_with(set_at(body, path, PLACE), raw)


NUMBERS = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400", b"9" * 5000, b"1" + b"0" * 400,
           b"0.000000000000000000001e-400", b"-0", b"1E+2", b"01", b"1.", b".5", b"+1", b"0x10"]


def m_number(rng: random.Random, body: Any, path: Path) -> Tuple[str, bytes]:
    raw = rng.choice(NUMBERS)
    return f"{_p(path)} -> {raw[:20].decode()}", dumps_with(set_at(body, path, PLACE), raw)


def m_duplicate(rng: random.Random, body: Any, path: Path) -> Tuple[str, bytes]:
    objects = [p for p in paths_of(body) if isinstance(get_at(body, p), dict) and get_at(body, p)]
    target = rng.choice(objects)
    obj = get_at(body, target)
    key = rng.choice(sorted(obj))
    value = swap_value(rng, obj[key]) if rng.random() < 0.7 else obj[key]
    obj[PLACE] = value  # serialised after the original key: the later one wins in Python's json
    data = json.dumps(body).encode().replace(json.dumps(PLACE).encode(), json.dumps(key).encode(), 1)
    return f"duplicate key {_p(target + (key,))}", data


def m_flip(rng: random.Random, body: Any, path: Path) -> Tuple[str, bytes]:
    data = bytearray(json.dumps(body, ensure_ascii=rng.random() < 0.5).encode("utf-8"))
    spots = []
    for _ in range(rng.randint(1, 6)):
        pos = rng.randrange(len(data))
        if rng.random() < 0.5:
            data[pos] ^= 1 << rng.randrange(8)
        else:
            data[pos] = rng.choice(b'{}[]",:\\\x00\xff\xc3\x80 0')
        spots.append(pos)
    return f"bytes changed at {spots}", bytes(data)


def m_truncate(rng: random.Random, body: Any, path: Path) -> Tuple[str, bytes]:
    data = json.dumps(body).encode("utf-8")
    cut = rng.randrange(len(data))
    return f"cut at {cut} of {len(data)}", data[:cut]


def m_text(rng: random.Random, body: Any, path: Path) -> Tuple[str, bytes]:
    """Odd strings: controls, NUL, RTL marks, unpaired combining marks, huge, non-BMP."""
    texts = ["\x00", "\x1b[31m", "\u202e\u2066", "\u0301" * 50, "\U0001f600" * 100, "z" * 300000, "\ufeff",
             "line\r\nX-Evil: 1", "</script>", "${jndi:x}", "%s%n", "\udbff".encode("utf-8", "surrogatepass").hex()]
    new = rng.choice(texts)
    return f"{_p(path)} -> {new[:20]!r}", json.dumps(set_at(body, path, new), ensure_ascii=rng.random() < 0.5).encode()


def m_toplevel(rng: random.Random, body: Any, path: Path) -> Tuple[str, bytes]:
    tops = [b"[]", b"null", b"1", b'"x"', b"", b" ", b"{}", b"[{}]", b"true", b"\xef\xbb\xbf{}", b"{}{}",
            json.dumps(body).encode() + b"garbage", json.dumps([body]).encode(), b"\x00" * 10]
    raw = rng.choice(tops)
    return f"top level {raw[:20]!r}", raw


MUTATORS: List[Tuple[str, Callable[..., Tuple[str, bytes]], float]] = [
    ("swap", m_swap, 3.0), ("delete", m_delete, 1.5), ("nest", m_nest, 1.0), ("surrogate", m_surrogate, 1.0),
    ("number", m_number, 1.0), ("duplicate", m_duplicate, 1.0), ("flip", m_flip, 2.0), ("truncate", m_truncate, 1.5),
    ("text", m_text, 1.0), ("toplevel", m_toplevel, 0.3),
]


def _p(path: Path) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out or "body"


def endpoint(rng: random.Random) -> str:
    return rng.choice(["/v1/messages"] * 8 + ["/v1/messages?beta=true", "/v1/messages/count_tokens"])


def sweep(rng: random.Random, sources: List[Tuple[str, Any]]) -> Iterator[Tuple[str, Any, Path]]:
    """One concrete path for every distinct key path of the corpus (indices folded), seeded."""
    found: Dict[Path, List[Tuple[int, Path]]] = collections.defaultdict(list)
    for i, (_, body) in enumerate(sources):
        for path in paths_of(body):
            found[shape(path)].append((i, path))
    for key in sorted(found, key=repr):
        i, path = rng.choice(found[key])
        yield sources[i][0], sources[i][1], path


def body_mutants(seed: int, count: int) -> List[Mutant]:
    rng = random.Random(seed)
    sources = corpus()
    out: List[Mutant] = []
    for n, (name, body, path) in enumerate(sweep(rng, sources)):
        if n % SWEEP_EVERY:
            continue
        body = copy(body)
        detail, data = m_swap(rng, body, path)
        out.append(Mutant(len(out), "swap-sweep", name, detail, data, endpoint(rng)))
    kinds = [m for m in MUTATORS]
    weights = [w for _, _, w in MUTATORS]
    for _ in range(count):
        kind, mutate, _ = rng.choices(kinds, weights)[0]
        name, body = rng.choice(sources)
        body = copy(body)
        path = rng.choice(list(paths_of(body)))
        detail, data = mutate(rng, body, path)
        out.append(Mutant(len(out), kind, name, detail, data, endpoint(rng)))
    return out


# ---------------------------------------------------------------------------
# Odd framing, over raw sockets.


class Framed(NamedTuple):
    label: str
    data: bytes
    expect_100: bytes = b""  # sent only after the server's 100 Continue
    head_only: bool = False
    may_close: bool = False  # the request is incomplete: closing without an answer is right
    answers: int = 1  # how many answers to wait for (pipelined requests get more)


def head(method: str, path: str, headers: List[Tuple[str, str]], version: str = "HTTP/1.1") -> bytes:
    text = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return text.encode("latin-1")


def framing_cases(seed: int) -> List[Framed]:
    rng = random.Random(seed + 1)
    small = [body for name, body in corpus() if not name.startswith("claude-code")]
    ok = json.dumps(rng.choice(small)).encode()
    host = [("Host", "127.0.0.1")]
    js = [("Content-Type", "application/json")]

    def post(body: bytes, extra: List[Tuple[str, str]] = (), length: Optional[str] = None,  # type: ignore[assignment]
             path: str = "/v1/messages") -> bytes:
        return head("POST", path, host + js + [("Content-Length", length or str(len(body)))] + list(extra)) + body

    cases = [
        Framed("Content-Length short by 10", post(ok, length=str(len(ok) - 10))),
        Framed("Content-Length long by 10 (body timeout)", post(ok, length=str(len(ok) + 10))),
        Framed("Content-Length 0 with a body", post(ok, length="0")),
        Framed("Content-Length -1", post(ok, length="-1")),
        Framed("Content-Length abc", post(ok, length="abc")),
        Framed("Content-Length +5", post(ok, length="+5")),
        Framed("Content-Length 0x10", post(ok, length="0x10")),
        Framed("Content-Length superscript", head("POST", "/v1/messages", host + js) [:-2]
               + b"Content-Length: \xb9\r\n\r\n"),
        Framed("Content-Length 40 MB, nothing sent", post(b"", length=str(40_000_000))),
        Framed("Content-Length 10^5000", post(b"", length="9" * 5000)),
        Framed("two differing Content-Length", head("POST", "/v1/messages", host + js + [
            ("Content-Length", str(len(ok))), ("Content-Length", "3")]) + ok),
        Framed("two equal Content-Length", head("POST", "/v1/messages", host + js + [
            ("Content-Length", str(len(ok))), ("Content-Length", str(len(ok)))]) + ok),
        Framed("chunked body", head("POST", "/v1/messages", host + js + [("Transfer-Encoding", "chunked")])
               + b"%x\r\n%s\r\n0\r\n\r\n" % (len(ok), ok)),
        Framed("chunked and Content-Length", head("POST", "/v1/messages", host + js + [
            ("Transfer-Encoding", "chunked"), ("Content-Length", str(len(ok)))]) + ok),
        Framed("no Content-Length", head("POST", "/v1/messages", host + js) + ok, may_close=True),
        Framed("Expect: 100-continue", head("POST", "/v1/messages", host + js + [
            ("Content-Length", str(len(ok))), ("Expect", "100-continue")]), expect_100=ok),
        Framed("Expect: 100-continue, 40 MB", head("POST", "/v1/messages", host + js + [
            ("Content-Length", "40000000"), ("Expect", "100-continue")]), expect_100=b"x"),
        Framed("Expect: 100-continue, bad length", head("POST", "/v1/messages", host + js + [
            ("Content-Length", "-5"), ("Expect", "100-continue")]), expect_100=b"x"),
        Framed("Expect: something-else", post(ok, [("Expect", "202-accepted")])),
        Framed("pipelined garbage", post(ok) + b"\x00\xff GARBAGE\r\n\r\n", answers=2),
        Framed("pipelined two requests", post(ok) + post(ok), answers=2),
        Framed("pipelined request and half a request (half-close)", post(ok) + post(ok)[:40], may_close=True,
               answers=2),
        Framed("Content-Length short by 10, rest read as a request", post(ok, length=str(len(ok) - 10)),
               answers=2),
        Framed("headers without body (half-close)", post(b"", length="500"), may_close=True),
        Framed("headers cut in the middle (half-close)", post(ok)[:30], may_close=True),
        Framed("body not UTF-8", post(ok.replace(b'"', b'"\xff', 1))),
        Framed("body latin-1", post(json.dumps({"model": "claude-t\xe9st", "max_tokens": 5, "messages": [
            {"role": "user", "content": "caf\xe9"}]}, ensure_ascii=False).encode("latin-1"))),
        Framed("body UTF-16", post(json.dumps({"model": "m", "max_tokens": 5, "messages": []}).encode("utf-16"))),
        Framed("header value not UTF-8", post(ok, [("X-Odd", "\xff\xfe")])),
        Framed("header with NUL", post(ok, [("X-Odd", "a\x00b")])),
        Framed("obs-fold header", post(ok)[:-len(ok) - 2] + b"X-Folded: a\r\n b\r\n\r\n" + ok),
        Framed("header without colon", post(ok)[:-len(ok) - 2] + b"NoColonHere\r\n\r\n" + ok),
        Framed("70 KB header line", post(ok, [("X-Big", "a" * 70000)])),
        Framed("150 headers", post(ok, [(f"X-H{i}", "v") for i in range(150)])),
        Framed("70 KB request line", head("GET", "/" + "a" * 70000, host)),
        Framed("garbage request line", b"GARBAGE\r\n\r\n"),
        Framed("binary request line", bytes(range(1, 32)) + b"\r\n\r\n"),
        Framed("HTTP/2.0 request line", head("GET", "/health", host, "HTTP/2.0")),
        Framed("HTTP/1.0 POST", head("POST", "/v1/messages", host + js + [("Content-Length", str(len(ok)))],
                                     "HTTP/1.0") + ok),
        Framed("HTTP/1.0 keep-alive", head("POST", "/v1/messages", host + js + [
            ("Content-Length", str(len(ok))), ("Connection", "keep-alive")], "HTTP/1.0") + ok),
        Framed("HTTP/0.9 GET", b"GET /health\r\n\r\n", may_close=True),
        Framed("HTTP/1.x version", head("GET", "/health", host, "HTTP/1.x")),
        Framed("lower-case method", head("post", "/v1/messages", host + js + [("Content-Length", str(len(ok)))]) + ok),
        Framed("unknown method", head("FOO", "/v1/messages", host + [("Content-Length", "0")])),
        Framed("CONNECT", head("CONNECT", "example.com:443", host)),
        Framed("TRACE", head("TRACE", "/v1/messages", host)),
        Framed("GET /v1/messages", head("GET", "/v1/messages", host)),
        Framed("PUT /v1/messages", post(ok).replace(b"POST", b"PUT", 1)),
        Framed("DELETE /v1/messages", head("DELETE", "/v1/messages", host)),
        Framed("HEAD /v1/messages", head("HEAD", "/v1/messages", host), head_only=True),
        Framed("HEAD /health", head("HEAD", "/health", host), head_only=True),
        Framed("OPTIONS preflight", head("OPTIONS", "/v1/messages", host + [
            ("Origin", "http://evil.example"), ("Access-Control-Request-Method", "POST")])),
        Framed("OPTIONS plain", head("OPTIONS", "/v1/messages", host)),
        Framed("no Host", head("POST", "/v1/messages", js + [("Content-Length", str(len(ok)))]) + ok),
        Framed("empty Host", head("POST", "/v1/messages", [("Host", "")] + js + [
            ("Content-Length", str(len(ok)))]) + ok),
        Framed("Host evil.example", head("POST", "/v1/messages", [("Host", "evil.example")] + js + [
            ("Content-Length", str(len(ok)))]) + ok),
        Framed("two Host headers", head("GET", "/health", host + [("Host", "evil.example")])),
        Framed("Origin", post(ok, [("Origin", "http://evil.example")])),
        Framed("Content-Type text/plain", head("POST", "/v1/messages", host + [
            ("Content-Type", "text/plain"), ("Content-Length", str(len(ok)))]) + ok),
        Framed("Content-Type multipart", head("POST", "/v1/messages", host + [
            ("Content-Type", "multipart/form-data; boundary=x"), ("Content-Length", str(len(ok)))]) + ok),
        Framed("Content-Type with charset", head("POST", "/v1/messages", host + [
            ("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(ok)))]) + ok),
        Framed("path traversal", post(ok, path="/v1/messages/../../etc/passwd")),
        Framed("path with NUL escape", post(ok, path="/v1/messages%00")),
        Framed("double slash", post(ok, path="//v1/messages")),
        Framed("absolute URI", post(ok, path="http://127.0.0.1/v1/messages")),
        Framed("query not UTF-8", post(ok, path="/v1/messages?beta=%ff%fe&x=\xe9")),
        Framed("8 KB path", post(ok, path="/v1/" + "a" * 8000)),
        Framed("models limit abc", head("GET", "/v1/models?limit=abc", host)),
        Framed("models limit -1", head("GET", "/v1/models?limit=-1", host)),
        Framed("models limit huge", head("GET", "/v1/models?limit=" + "9" * 400, host)),
        Framed("count_tokens empty body", post(b"", path="/v1/messages/count_tokens")),
        Framed("empty body", post(b"")),
        Framed("x-api-key not Latin-1 (UTF-8 bytes)", head("POST", "/v1/messages", host + js + [
            ("Content-Length", str(len(ok)))])[:-2] + "x-api-key: sk-\u00e9\u4e2d\r\n\r\n".encode("utf-8") + ok),
        Framed("Authorization Bearer empty", post(ok, [("Authorization", "Bearer ")])),
        Framed("anthropic-version odd", post(ok, [("anthropic-version", "\x01;DROP")])),
        Framed("anthropic-beta huge", post(ok, [("anthropic-beta", ",".join(["x" * 60] * 200))])),
        Framed("bare LF line ends", post(ok).replace(b"\r\n", b"\n")),
    ]
    return cases


def send_framed(port: int, case: Framed) -> List[Tuple[int, Dict[str, str], bytes]]:
    """Send one framed case; every answer until the server closes or goes quiet."""
    answers: List[Tuple[int, Dict[str, str], bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = Reader(sock)
        sock.sendall(case.data)
        if case.expect_100:
            # The interim answer: 100 Continue (then the body goes) or already the final answer.
            got = reader.until(b"\r\n\r\n", time.monotonic() + 10)
            if got.startswith(b"HTTP/1.1 100"):
                sock.sendall(case.expect_100)
            else:
                reader.buf = got + b"\r\n\r\n" + reader.buf
        if "half-close" in case.label:
            sock.shutdown(socket.SHUT_WR)
        while len(answers) < case.answers:
            try:
                ans = reader.answer(ANSWER_TIMEOUT, head_only=case.head_only)
            except EOFError:
                if not answers and not case.may_close:
                    raise AssertionError(f"closed without an answer: {reader.buf[:200]!r}") from None
                break  # a later pipelined request may be dropped once an answer closed the connection
            answers.append((ans.status, ans.headers, ans.body))
            if ans.closed:
                break
    return answers


# ---------------------------------------------------------------------------
# The run.


def start_proxy(api: str, fake: FakeUpstream) -> Any:
    base = fake.url if api == "chat" else fake.url.rsplit("/v1", 1)[0]
    # Short body timeout: the "Content-Length long by 10" case waits for it.
    return claudeproxy.start(upstream=base, upstream_api=api, token=claudeproxy.static_token(UPSTREAM_KEY),
                             body_timeout=1.0, client_timeout=3.0)


def fire(port: int, mutants: List[Mutant], results: Dict[str, Any]) -> None:
    """Send the mutants from WORKERS threads, each on its own keep-alive connection."""
    work: "queue.Queue[Mutant]" = queue.Queue()
    for mutant in mutants:
        work.put(mutant)
    lock = threading.Lock()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_TIMEOUT)
        try:
            while True:
                try:
                    mutant = work.get_nowait()
                except queue.Empty:
                    return
                outcome = one(conn, mutant)
                with lock:
                    results["statuses"][outcome[0]] += 1
                    results["kinds"][outcome[1]] += 1
                    if outcome[2]:
                        results["failures"].append(outcome[2])
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)


def one(conn: http.client.HTTPConnection, mutant: Mutant) -> Tuple[int, str, str]:
    headers = {"Content-Type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": CLIENT_KEY}
    try:
        conn.request("POST", mutant.path, body=mutant.data, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        status, hdrs = resp.status, {k.lower(): v for k, v in resp.getheaders()}
        if resp.will_close:
            conn.close()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        return 0, "no answer", f"{label(mutant)}: no answer ({type(exc).__name__}: {exc})"
    try:
        kind = check_answer(status, hdrs, body, mutant.path)
        assert status < 500, f"a 5xx although the upstream only answers 200: {body[:300]!r}"
    except (AssertionError, ValueError, KeyError, TypeError) as exc:
        return status, "invalid", f"{label(mutant)}: {status} {str(exc)[:300]}"
    return status, kind, ""


def label(mutant: Mutant) -> str:
    return f"seed {SEED} #{mutant.seq} {mutant.kind} on {mutant.source} ({mutant.detail[:120]}) {mutant.path}"


def baseline_counts() -> Tuple[int, int]:
    return threading.active_count(), fd_count() if HAVE_PROC else 0


@pytest.fixture
def quiet_log(caplog: Any, capfd: Any) -> Iterator[Any]:
    """Collects WARNING and above (bodies are large: DEBUG would hold megabytes); checked by the test."""
    caplog.set_level("WARNING", logger="claudeproxy")
    yield caplog


@pytest.mark.parametrize("seed", [SEED], ids=[f"seed={SEED}"])
def test_mutated_requests_get_valid_anthropic_answers(seed: int, quiet_log: Any, capfd: Any) -> None:
    started = time.monotonic()
    mutants = body_mutants(seed, RANDOM_MUTANTS)
    framed = framing_cases(seed)
    threads0, fds0 = baseline_counts()
    fake = FakeUpstream(keep_alive=True, responder=normal_responder(), keep_requests=False)
    totals: Dict[str, Any] = {"statuses": collections.Counter(), "kinds": collections.Counter(), "failures": []}
    per_api = {}
    try:
        for api in APIS:
            proxy = start_proxy(api, fake)
            try:
                results: Dict[str, Any] = {"statuses": collections.Counter(), "kinds": collections.Counter(),
                                           "failures": []}
                fire(proxy.address[1], mutants, results)
                for case in framed:
                    try:
                        answers = send_framed(proxy.address[1], case)
                    except (AssertionError, OSError) as exc:
                        results["failures"].append(f"{api} framing {case.label!r}: {exc}")
                        continue
                    for status, hdrs, body in answers:
                        results["statuses"][status] += 1
                        try:
                            kind = "head" if case.head_only else check_answer(status, hdrs, body, "/v1/messages")
                            assert status < 500, f"5xx {body[:200]!r}"
                            results["kinds"][kind] += 1
                        except (AssertionError, ValueError, KeyError) as exc:
                            results["failures"].append(f"{api} framing {case.label!r}: {status} {str(exc)[:300]}")
                    results["kinds"]["closed, no answer" if not answers else "framed"] += 1
                assert request(proxy.url, "GET", "/health").status == 200, "the proxy stopped answering"
                per_api[api] = results
            finally:
                proxy.shutdown(grace=1.0)
            for key in ("statuses", "kinds"):
                totals[key].update(results[key])
            totals["failures"] += [f"[{api}] {f}" for f in results["failures"]]
    finally:
        fake.close()
    took = time.monotonic() - started
    errors = [r for r in quiet_log.records if r.exc_info or r.levelname in ("ERROR", "CRITICAL")]
    err = capfd.readouterr().err
    threads1 = settle(threading.active_count, threads0, 3.0)
    fds1 = settle(fd_count, fds0, 3.0) if HAVE_PROC else 0
    tried = (len(mutants) + len(framed)) * len(APIS)
    five = sum(n for s, n in totals["statuses"].items() if s >= 500)
    ok = not totals["failures"] and not errors and "Traceback" not in err and threads1 <= threads0 and fds1 <= fds0
    record("R1", "bad-input corpus: mutated requests and odd framing, chat + messages API",
           f"{tried} tried -> {len(totals['failures'])} invalid answers, {five} 5xx, "
           f"{len(errors)} ERROR records, {err.count('Traceback')} tracebacks; threads {threads0}->{threads1}, "
           f"fds {fds0}->{fds1}; {took:.0f} s",
           "0 crashes, 0 tracebacks, 0 proxy 5xx; every reply valid", ok,
           seed=seed, mutants_per_api=len(mutants), framing_per_api=len(framed),
           statuses={str(k): v for k, v in sorted(totals["statuses"].items())},
           kinds=dict(totals["kinds"]), failures=totals["failures"][:20])
    assert not totals["failures"], f"{len(totals['failures'])} bad answers (seed {seed}):\n" + "\n".join(
        totals["failures"][:15])
    assert not errors, [r.getMessage()[:300] for r in errors[:10]]
    assert "Traceback" not in err, err[-3000:]
    assert threads1 <= threads0, f"threads {threads0} -> {threads1}: {[t.name for t in threading.enumerate()]}"
    assert fds1 <= fds0, f"file descriptors {fds0} -> {fds1}"
    assert (len(mutants) >= 1000 and tried >= 2000) or "CLAUDEPROXY_FUZZ_MUTANTS" in os.environ
