"""The bench's load generator, run in its own process so the client never shares the target's core (I/O).

    python bench/loadgen.py SPEC.json rate --concurrency 8 --duration 2 [--engine stdlib|wrk]
    python bench/loadgen.py SPEC.json ttft --samples 20
    python bench/loadgen.py SPEC.json hold --concurrency 64 --rounds 1

SPEC.json names the target and the request: ``{"host", "port", "tls_ca" (or null),
"path", "headers", "body_file", "marker"}``. Prints one JSON object on stdout.

Modes:
- ``rate``: ``concurrency`` kept-alive connections, each sending the request again as
  soon as the answer is complete, for ``duration`` seconds (closed loop). Reports
  ``rps`` (answers per second) and ``p50_ms``/``p99_ms`` (time from sending the
  request to the last byte of its answer). Each connection sends one untimed request
  first. ``sent`` counts every request including those, ``errors`` the failed ones.
- ``ttft``: ``samples`` requests one after another on one connection; ``ttft_ms`` is
  the time from sending to receiving the first body piece that contains ``marker``
  (the first text delta), ``total_ms`` the time to the end of the answer.
- ``hold``: ``concurrency`` streams opened at once (``rounds`` times each);
  ``max_open`` is how many were open at the same moment (an answer is open from its
  response head to its last byte).

The stdlib engine speaks HTTP on raw sockets (``wire.py``): a few dozen microseconds
per request, against the hundreds ``http.client`` would spend. ``--engine wrk`` runs
Debian's ``wrk`` for ``rate`` instead, with a Lua script that sends the POST body.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from wire import Reader, body_parts, parse_head, wants_close

Spec = Dict[str, Any]


def request_bytes(spec: Spec) -> bytes:
    with open(spec["body_file"], "rb") as fh:
        body = fh.read()
    head = [f"POST {spec['path']} HTTP/1.1", f"Host: {spec['host']}:{spec['port']}",
            f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in spec["headers"].items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    """One kept-alive connection to the target; reopened when the target closes it."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.payload = request_bytes(spec)
        self.marker: bytes = spec.get("marker", "").encode()
        self.sock: Optional[socket.socket] = None
        self.reader: Optional[Reader] = None
        self.tls = None
        if spec.get("tls_ca"):
            self.tls = ssl.create_default_context(cafile=spec["tls_ca"])

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = self.reader = None

    def connect(self) -> None:
        """Open the connection now rather than with the first request."""
        if self.reader is None:
            self._open()

    def _open(self) -> Reader:
        sock = socket.create_connection((self.spec["host"], self.spec["port"]), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_hostname=self.spec["host"])
        self.sock, self.reader = sock, Reader(sock)
        return self.reader

    def exchange(self, on_head: Callable[[], None] = lambda: None) -> Optional[float]:
        """Send the request, read the whole answer; the time the marker arrived (or None).

        Raises ``RuntimeError`` on a non-200 answer, ``OSError``/``EOFError`` on a broken connection.
        """
        reader = self.reader or self._open()
        start = time.perf_counter()
        self.sock.sendall(self.payload)  # type: ignore[union-attr]
        status_line, headers = parse_head(reader.until(b"\r\n\r\n"))
        on_head()
        seen, tail = None, b""
        for part in body_parts(reader, headers):
            if seen is None and self.marker:
                if self.marker in tail + part:
                    seen = time.perf_counter() - start
                tail = part[-len(self.marker):]
        if wants_close(headers) or not (b"content-length" in headers or b"transfer-encoding" in headers):
            self.close()
        if status_line.split(b" ", 2)[1] != b"200":
            raise RuntimeError(status_line.decode("latin-1"))
        return seen


def _safe_exchange(conn: Connection, on_head: Callable[[], None] = lambda: None) -> bool:
    try:
        conn.exchange(on_head)
        return True
    except (OSError, EOFError, RuntimeError, ValueError):
        conn.close()
        time.sleep(0.01)  # a target that refuses should not spin the client
        return False


def percentile(sorted_values: List[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, int(round(p / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def run_rate(spec: Spec, concurrency: int, duration: float) -> Dict[str, Any]:
    ready = threading.Barrier(concurrency + 1)
    go = threading.Event()
    clock: Dict[str, float] = {}
    latencies: List[List[float]] = [[] for _ in range(concurrency)]
    ends = [0.0] * concurrency
    errors = [0] * concurrency

    def worker(i: int) -> None:
        conn = Connection(spec)
        errors[i] += not _safe_exchange(conn)  # untimed: connection, server thread, caches
        ready.wait()
        go.wait()
        lat, deadline = latencies[i], clock["deadline"]
        now = time.perf_counter()
        while now < deadline:
            ok = _safe_exchange(conn)
            end = time.perf_counter()
            if ok:
                lat.append(end - now)
            else:
                errors[i] += 1
            now = end
        ends[i] = now
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait(120)
    clock["start"] = time.perf_counter()
    clock["deadline"] = clock["start"] + duration
    go.set()
    for t in threads:
        t.join(duration + 120)
    all_lat = sorted(x for lat in latencies for x in lat)
    seconds = max(ends) - clock["start"]
    return {"engine": "stdlib", "requests": len(all_lat), "sent": len(all_lat) + sum(errors) + concurrency,
            "errors": sum(errors), "seconds": seconds, "rps": len(all_lat) / seconds,
            "p50_ms": percentile(all_lat, 50) * 1000, "p99_ms": percentile(all_lat, 99) * 1000}


def run_ttft(spec: Spec, samples: int) -> Dict[str, Any]:
    conn = Connection(spec)
    errors = 0 if _safe_exchange(conn) else 1  # warm-up
    ttft: List[float] = []
    total: List[float] = []
    for _ in range(samples):
        start = time.perf_counter()
        try:
            seen = conn.exchange()
        except (OSError, EOFError, RuntimeError, ValueError):
            conn.close()
            errors += 1
            continue
        total.append((time.perf_counter() - start) * 1000)
        if seen is not None:
            ttft.append(seen * 1000)
    conn.close()
    return {"ttft_ms": ttft, "total_ms": total, "errors": errors}


def run_hold(spec: Spec, concurrency: int, rounds: int) -> Dict[str, Any]:
    lock = threading.Lock()
    state = {"open": 0, "max_open": 0, "errors": 0, "done": 0}
    ready = threading.Barrier(concurrency)

    def one_stream(conn: Connection) -> None:
        opened = []

        def on_head() -> None:
            opened.append(True)
            with lock:
                state["open"] += 1
                state["max_open"] = max(state["max_open"], state["open"])

        ok = _safe_exchange(conn, on_head)
        with lock:
            state["open"] -= len(opened)
            state["done" if ok else "errors"] += 1

    def worker() -> None:
        conn = Connection(spec)
        try:
            conn.connect()  # all connected before any request: the burst is only the requests
        except OSError:
            conn.close()
        ready.wait(60)
        for _ in range(rounds):
            one_stream(conn)
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return {"streams": state["done"], "errors": state["errors"], "max_open": state["max_open"],
            "seconds": time.perf_counter() - start}


# --------------------------------------------------------------------------
# wrk, when it is installed: the same ``rate`` figures from a C client.

WRK_SCRIPT = """
wrk.method = "POST"
wrk.path = %(path)s
%(headers)s
local f = assert(io.open(%(body_file)s, "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def _lua(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid Lua string literal for these values


def wrk_script(spec: Spec) -> str:
    headers = "\n".join(f"wrk.headers[{_lua(k)}] = {_lua(v)}" for k, v in spec["headers"].items())
    return WRK_SCRIPT % {"path": _lua(spec["path"]), "headers": headers, "body_file": _lua(spec["body_file"])}


def _wrk_once(spec: Spec, script: str, concurrency: int, duration: float) -> List[int]:
    scheme = "https" if spec.get("tls_ca") else "http"
    url = f"{scheme}://{spec['host']}:{spec['port']}{spec['path']}"
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, int(round(duration)))}s", "--timeout", "60s",
           "-s", script, url]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=duration + 120)
    for line in out.stdout.splitlines():
        if line.startswith("WRK "):
            return [int(x) for x in line.split()[1:]]
    raise RuntimeError(f"wrk printed no result: {out.stdout[-500:]} {out.stderr[-500:]}")


def run_wrk(spec: Spec, concurrency: int, duration: float) -> Dict[str, Any]:
    """``rate`` through wrk (whole seconds; no untimed first request, wrk has no warm-up)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(wrk_script(spec))
    try:
        requests, micros, p50, p99, errors = _wrk_once(spec, fh.name, concurrency, duration)
    finally:
        os.unlink(fh.name)
    seconds = micros / 1e6
    return {"engine": "wrk", "requests": requests, "sent": requests, "errors": errors,
            "seconds": seconds, "rps": requests / seconds, "p50_ms": p50 / 1000.0, "p99_ms": p99 / 1000.0}


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("mode", choices=("rate", "ttft", "hold"))
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--engine", choices=("stdlib", "wrk"), default="stdlib")
    args = parser.parse_args()
    with open(args.spec, encoding="utf-8") as fh:
        spec = json.load(fh)
    if args.mode == "rate" and args.engine == "wrk":
        out = run_wrk(spec, args.concurrency, args.duration)
    elif args.mode == "rate":
        out = run_rate(spec, args.concurrency, args.duration)
    elif args.mode == "ttft":
        out = run_ttft(spec, args.samples)
    else:
        out = run_hold(spec, args.concurrency, args.rounds)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
