"""Proxy overhead as ratios to a direct upstream call, measured in the same run.

    python bench/bench.py [--requests 300] [--chunks 2000] [--json]

A minimal OpenAI-compatible upstream runs on 127.0.0.1 in its own process, and
claudeproxy in another (``python -m claudeproxy --port 0``), so neither shares
the client's interpreter lock. Every figure is taken twice, once calling the
upstream directly and once through the proxy (translation included), and
reported with the ratio proxy/direct. Loopback numbers bound the proxy's own
cost only; they say nothing about real provider latency.

Figures:
- json_latency: median and p95 wall time of a non-streaming request.
- keepalive_rps: requests per second on one kept-alive client connection.
- ttft: time from sending a streaming request to the first text delta.
- stream_throughput: time to receive a whole stream of --chunks text chunks.
- concurrent_streams: wall time for 32 streams at once.
Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the bench."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
}).encode()


def _chunk(content: str) -> bytes:
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
    data = b"data: " + json.dumps(body).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    chunks = 200

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(COMPLETION)))
            self.end_headers()
            self.wfile.write(COMPLETION)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        n = int(body.get("bench_chunks") or self.server.chunks)  # type: ignore[attr-defined]
        for i in range(n):
            self.wfile.write(_chunk(f"tok{i} "))  # one write per upstream chunk, as real servers do
        tail = {"id": "chatcmpl-bench", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": n}}
        data = b"data: " + json.dumps(tail).encode() + b"\n\ndata: [DONE]\n\n"
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))


def serve_upstream(chunks: int) -> None:
    """Child process: run the fake upstream, print its port, serve until killed."""
    ThreadingHTTPServer.request_queue_size = 128  # this child process only: bursts of 32 must not hit the backlog
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    server.daemon_threads = True
    server.chunks = chunks  # type: ignore[attr-defined]
    print(server.server_address[1], flush=True)
    server.serve_forever()


def spawn(args: List[str], pattern: str) -> Tuple["subprocess.Popen[str]", int]:
    """Start a child and read its port from the first line it prints."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if pattern == "port":
        return proc, int(line.strip())
    # "claudeproxy listening on http://127.0.0.1:PORT -> ..."
    return proc, int(line.split("http://127.0.0.1:", 1)[1].split()[0])


# --------------------------------------------------------------------------
# The two ways of asking the same thing.


def direct_request(stream: bool, chunks: int) -> Tuple[str, bytes]:
    body = {"model": "bench", "max_tokens": 64, "messages": [{"role": "user", "content": "Hello"}]}
    if stream:
        body.update(stream=True, bench_chunks=chunks)
    return "/v1/chat/completions", json.dumps(body).encode()


def proxy_request(stream: bool, chunks: int) -> Tuple[str, bytes]:
    body = {"model": "bench", "max_tokens": 64, "messages": [{"role": "user", "content": "Hello"}]}
    if stream:
        body["stream"] = True
    return "/v1/messages", json.dumps(body).encode()


def first_text_marker(direct: bool) -> bytes:
    return b'"content": "tok' if direct else b'"text_delta"'


def timed_request(port: int, path: str, body: bytes, marker: bytes = b"") -> Tuple[float, float]:
    """(time to the first byte containing ``marker``, total time) on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    start = time.perf_counter()
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = None
    seen = b""
    while True:
        data = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
        if not data:
            break
        if first is None and marker:
            seen = (seen + data)[-4096:]
            if marker in seen:
                first = time.perf_counter() - start
    total = time.perf_counter() - start
    conn.close()
    return (first if first is not None else total), total


def keepalive_rps(port: int, path: str, body: bytes, seconds: float) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    end = time.perf_counter() + seconds
    count = 0
    start = time.perf_counter()
    while time.perf_counter() < end:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        if resp.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        count += 1
    conn.close()
    return count / (time.perf_counter() - start)


def concurrent(port: int, path: str, body: bytes, n: int) -> float:
    start = time.perf_counter()
    threads = [threading.Thread(target=timed_request, args=(port, path, body)) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return time.perf_counter() - start


# --------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> Dict[str, Dict[str, float]]:
    upstream, up_port = spawn([sys.executable, __file__, "--serve-upstream", "--chunks", str(args.chunks)], "port")
    proxy, px_port = spawn([sys.executable, "-m", "claudeproxy", "--port", "0", "--log-level", "error",
                            "--upstream", f"http://127.0.0.1:{up_port}/v1"], "listening")
    sides: Dict[str, Tuple[int, Callable[..., Tuple[str, bytes]], bool]] = {
        "direct": (up_port, direct_request, True),
        "proxy": (px_port, proxy_request, False),
    }
    try:
        return {name: measure_side(args, port, build, is_direct) for name, (port, build, is_direct) in sides.items()}
    finally:
        for child in (proxy, upstream):
            child.terminate()
            child.wait(10)


def measure_side(args: argparse.Namespace, port: int, build: Callable[..., Tuple[str, bytes]],
                 is_direct: bool) -> Dict[str, float]:
    path, body = build(False, 0)
    for _ in range(20):  # warm-up
        timed_request(port, path, body)
    lat = [timed_request(port, path, body)[1] for _ in range(args.requests)]
    spath, sbody = build(True, args.chunks)
    ttft, total = zip(*(timed_request(port, spath, sbody, first_text_marker(is_direct))
                        for _ in range(max(5, args.requests // 20))))
    return {
        "json_latency_ms_median": statistics.median(lat) * 1000,
        "json_latency_ms_p95": sorted(lat)[int(len(lat) * 0.95) - 1] * 1000,
        "keepalive_rps": keepalive_rps(port, path, body, args.seconds),
        "ttft_ms_median": statistics.median(ttft) * 1000,
        "stream_ms_median": statistics.median(total) * 1000,
        "concurrent_32_streams_ms": concurrent(port, spath, sbody, 32) * 1000,
    }


def report(out: Dict[str, Dict[str, float]], as_json: bool) -> None:
    ratios = {k: out["proxy"][k] / out["direct"][k] for k in out["direct"] if out["direct"][k]}
    if as_json:
        print(json.dumps({"results": out, "ratio_proxy_over_direct": ratios}, indent=2))
        return
    print(f"python {platform.python_version()} on {platform.system()} {platform.machine()}, "
          f"{os.cpu_count()} cores")
    print(f"{'figure':<28}{'direct':>12}{'proxy':>12}{'ratio':>9}")
    for key, ratio in ratios.items():
        print(f"{key:<28}{out['direct'][key]:>12.2f}{out['proxy'][key]:>12.2f}{ratio:>9.2f}")
    print("(keepalive_rps: higher is better, its ratio below 1 is the cost; other figures: lower is better)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of the keep-alive run")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.chunks)
        return
    report(measure(args), args.json)


if __name__ == "__main__":
    main()
