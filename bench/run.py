"""claudeproxy beside a direct upstream call and a byte-forwarding ceiling, measured side by side.

    python bench/run.py [--quick] [--json OUT.json] [--tls] [--client auto|stdlib|wrk]
                        [--repeats N] [--duration S] [--python PATH] [--proxy-arg ARG ...]

Three targets answer the same ~20 KB Claude Code request (bench/body.py):

- ``direct``: the fake upstream itself (bench/fake_upstream.py), sent the request as
  claudeproxy translates it (captured from claudeproxy at the start of the run): the limit;
- ``ceiling``: bench/ceiling.py, ThreadingHTTPServer + http.client relaying bytes with no
  JSON work: the best claudeproxy's design can do;
- ``claudeproxy``: ``python -m claudeproxy`` from this checkout, default flags, translating
  both ways.

Each party runs in its own process. With ``sched_setaffinity`` the ceiling and
claudeproxy share one core (the last), and the fake upstream and the load generator
(bench/loadgen.py, or wrk for the req/s runs) the others, so the client and the
upstream never take the target's CPU. Every repeat measures every figure for the three
targets in turn, in an order that rotates, so drift hits all three alike; the table
shows medians over the repeats and claudeproxy's ratios to direct and to the ceiling.

Figures (all on 127.0.0.1; loopback numbers bound the proxy's own cost, not a provider's latency):

- req/s, p50, p99 at concurrency 1, 8, 32, non-stream and a 20-chunk unpaced stream:
  kept-alive connections in a closed loop; latency from request to the answer's last byte;
- CPU ms per request: the target's CPU time over those runs divided by the requests;
- first text delta: time to the first text delta of a stream whose tokens come 20 ms
  apart (the first at once), so a proxy that buffers shows it;
- 2,000-chunk stream: time to receive a whole unpaced stream of 2,000 tokens;
- CPU per 1,000 chunks: the target's CPU time over paced 200-chunk streams, 16 at a time;
- RSS: idle after warm-up, and the peak (VmHWM) with 64 slow streams open at once;
- start: from spawning the process to its "listening on" line;
- upstream connections per request (with ``--tls``: TLS handshakes, one per connection),
  counted by the fake upstream over the req/s runs: 1.00 means no connection reuse.

On a shared machine the wall-clock figures (req/s, latencies) move with other load;
the CPU and memory figures much less. ``--json`` keeps every value, and
bench/compare.py puts two such files side by side (before and after a change).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import platform
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import body
import procs
import table
from loadgen import wrk_available
from table import TARGETS, Figure

ANTHROPIC_HEADERS = {"Content-Type": "application/json", "Accept": "application/json", "x-api-key": "bench-key",
                     "anthropic-version": "2023-06-01", "User-Agent": "claude-cli/2.1.331 (external, sdk-cli)",
                     "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"}
OPENAI_HEADERS = {"Content-Type": "application/json", "Accept": "application/json",
                  "Authorization": "Bearer bench-key", "User-Agent": "claudeproxy-bench"}
MARKERS = {"claudeproxy": '"text_delta"', "ceiling": '"delta":{"content":"', "direct": '"delta":{"content":"'}
CAPTURE_MODEL = "bench-n1-p0"


class Plan(NamedTuple):
    """How much of each workload one repeat runs."""

    repeats: int
    duration: float                     # seconds per req/s run
    concurrency: Tuple[int, ...]
    stream_chunks: int                  # tokens per stream in the req/s runs
    warmup: int                         # requests of each kind per target after starting
    ttft_samples: int
    ttft_shape: Tuple[int, int]         # (chunks, ms between them)
    long_chunks: int
    long_samples: int
    cpu_streams: int
    cpu_rounds: int
    cpu_shape: Tuple[int, int]
    rss_streams: int
    rss_shape: Tuple[int, int]
    starts: int                         # timed starts per target and repeat


DEFAULT = Plan(repeats=3, duration=2.0, concurrency=(1, 8, 32), stream_chunks=20, warmup=20,
               ttft_samples=20, ttft_shape=(5, 20), long_chunks=2000, long_samples=5,
               cpu_streams=16, cpu_rounds=1, cpu_shape=(250, 20), rss_streams=64, rss_shape=(40, 50), starts=3)
QUICK = Plan(repeats=1, duration=0.3, concurrency=(1, 8, 32), stream_chunks=20, warmup=5,
             ttft_samples=5, ttft_shape=(5, 20), long_chunks=500, long_samples=1,
             cpu_streams=8, cpu_rounds=1, cpu_shape=(50, 10), rss_streams=64, rss_shape=(20, 50), starts=1)


def model(shape: Tuple[int, int]) -> str:
    """The model name that tells the fake upstream how to stream (see fake_upstream.py)."""
    return f"bench-n{shape[0]}-p{shape[1]}"


def figures(plan: Plan, tls: bool) -> List[Figure]:
    """The table's rows, in order, with the issue's targets."""
    rows: List[Figure] = []
    for kind, name, floor in (("json", "non-stream", 0.8), ("stream", f"{plan.stream_chunks}-chunk stream", 0.9)):
        for c in plan.concurrency:
            rows.append(Figure(f"{kind}_rps_c{c}", f"{name} c={c}", "req/s", True, f"≥ {floor}× ceiling",
                               lambda s, f=floor: s.vs_ceiling >= f))
            rows.append(Figure(f"{kind}_p50_c{c}", f"{name} c={c} p50", "ms", False))
            rows.append(Figure(f"{kind}_p99_c{c}", f"{name} c={c} p99", "ms", False))
        rows.append(Figure(f"{kind}_cpu", f"{name} CPU per request", "ms", False))
    rows += [
        Figure("ttft", f"first text delta, tokens {plan.ttft_shape[1]} ms apart", "ms", False, "≤ direct + 2 ms",
               lambda s: s.minus_direct <= 2.0),
        Figure("long_stream", f"{plan.long_chunks:,}-chunk stream, whole", "ms", False),
        Figure("cpu_per_1k_chunks", "CPU per 1,000 streamed chunks", "ms", False, "≤ 1.5× ceiling",
               lambda s: s.vs_ceiling <= 1.5),
        Figure("rss_idle", "RSS after warm-up", "MiB", False),
        Figure("rss_streams", f"peak RSS, {plan.rss_streams} slow streams open", "MiB", False, "≤ 35",
               lambda s: s.median["claudeproxy"] <= 35),
        Figure("start", "start to listening", "ms", False, "≤ 150", lambda s: s.median["claudeproxy"] <= 150),
        Figure("upstream_conns", "upstream TLS handshakes per request" if tls else
               "upstream connections per request", "n", False, ratios=False),
    ]
    return rows


class Target(NamedTuple):
    name: str
    port: int
    pid: Optional[int]      # None for direct: no process of its own to measure


def add(pair: List[float], a: float, b: float) -> None:
    """Running sums of (spent, count)."""
    pair[0] += a
    pair[1] += b


def rotated(seq: List[Any], k: int) -> List[Any]:
    k %= len(seq)
    return seq[k:] + seq[:k]


class Bench:
    """One run: the upstream, the requests, the repeats, and the values they give."""

    def __init__(self, args: argparse.Namespace, plan: Plan, tmp: str) -> None:
        self.args, self.plan, self.tmp = args, plan, tmp
        self.cores = procs.plan_cores()
        # auto: wrk when installed, except for --quick (wrk runs whole seconds; a smoke test should not wait)
        auto_wrk = args.client == "auto" and wrk_available() and not args.quick
        self.engine = "wrk" if args.client == "wrk" or auto_wrk else "stdlib"
        self.cert: Optional[str] = None
        self.key: Optional[str] = None
        self.values: Dict[str, Dict[str, List[Optional[float]]]] = collections.defaultdict(
            lambda: {t: [] for t in TARGETS})
        self.warnings: List[str] = []
        self.templates: Dict[bool, bytes] = {}
        self.answers: Dict[bool, bytes] = {}    # claudeproxy's answers to the captured requests
        self.floors: Dict[str, List[float]] = collections.defaultdict(list)
        self.files: Dict[Any, str] = {}
        self.upstream: Optional[procs.Server] = None
        self.foreign_cores: Optional[float] = None

    # ----------------------------------------------------------------------
    # Processes.

    def log(self, name: str) -> str:
        return os.path.join(self.tmp, f"{name}.stderr")

    @property
    def scheme(self) -> str:
        return "https" if self.cert else "http"

    def start_upstream(self) -> None:
        cmd = [sys.executable, os.path.join(procs.BENCH, "fake_upstream.py")]
        if self.cert:
            cmd += ["--tls", self.cert, self.key or ""]
        self.upstream = procs.start_server(cmd, self.cores.upstream, self.log("upstream"))

    def target_cmd(self, name: str) -> List[str]:
        assert self.upstream is not None
        origin = f"{self.scheme}://127.0.0.1:{self.upstream.port}"
        ca = ["--ca-bundle", self.cert] if self.cert else []
        if name == "ceiling":
            return [self.args.python, os.path.join(procs.BENCH, "ceiling.py"), "--upstream", origin] + ca
        return ([self.args.python, "-m", "claudeproxy", "--port", "0", "--upstream", origin + "/v1",
                 "--api-key", "bench-key"] + ca + list(self.args.proxy_arg))

    def start_target(self, name: str) -> procs.Server:
        return procs.start_server(self.target_cmd(name), self.cores.target, self.log(name))

    def stats(self) -> Dict[str, int]:
        """The fake upstream's counters."""
        assert self.upstream is not None
        return json.loads(self.upstream_get("/stats"))

    def upstream_get(self, path: str) -> bytes:
        assert self.upstream is not None
        if self.cert:
            ctx = ssl.create_default_context(cafile=self.cert)
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.upstream.port, timeout=30, context=ctx)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.upstream.port, timeout=30)
        try:
            conn.request("GET", path)
            return conn.getresponse().read()
        finally:
            conn.close()

    # ----------------------------------------------------------------------
    # Requests.

    def make_cert(self) -> bool:
        """A throwaway self-signed certificate for 127.0.0.1 (False when openssl is missing)."""
        if not shutil.which("openssl"):
            return False
        cert, key = os.path.join(self.tmp, "cert.pem"), os.path.join(self.tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.cert, self.key = cert, key
        return True

    def capture_translation(self) -> None:
        """Send the Claude Code request through claudeproxy once per stream flag; keep what reached the upstream."""
        server = self.start_target("claudeproxy")
        try:
            for stream in (False, True):
                data = json.dumps(body.claude_code_request(CAPTURE_MODEL, stream)).encode()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
                conn.request("POST", "/v1/messages", data, ANTHROPIC_HEADERS)
                resp = conn.getresponse()
                answer = resp.read()
                conn.close()
                if resp.status != 200:
                    raise RuntimeError(f"claudeproxy answered the bench request with {resp.status}: {answer[:500]!r}")
                captured = self.upstream_get("/last")
                if captured.count(f'"{CAPTURE_MODEL}"'.encode()) != 1:
                    raise RuntimeError("cannot find the model name in claudeproxy's upstream request")
                self.templates[stream] = captured
                self.answers[stream] = answer
        finally:
            procs.stop(server.proc)

    def body_file(self, target: str, model_name: str, stream: bool) -> str:
        kind = "anthropic" if target == "claudeproxy" else "openai"
        key = (kind, model_name, stream)
        if key not in self.files:
            if kind == "anthropic":
                data = json.dumps(body.claude_code_request(model_name, stream)).encode()
            else:
                data = self.templates[stream].replace(f'"{CAPTURE_MODEL}"'.encode(), f'"{model_name}"'.encode())
            path = os.path.join(self.tmp, f"{kind}-{model_name}-{int(stream)}.json")
            with open(path, "wb") as fh:
                fh.write(data)
            self.files[key] = path
        return self.files[key]

    def spec(self, target: Target, model_name: str, stream: bool) -> str:
        """The load generator's description of one request to one target (a file)."""
        key = (target.name, target.port, model_name, stream)
        if key not in self.files:
            proxy = target.name == "claudeproxy"
            spec = {"host": "127.0.0.1", "port": target.port,
                    "tls_ca": self.cert if target.name == "direct" else None,
                    "path": "/v1/messages" if proxy else "/v1/chat/completions",
                    "headers": ANTHROPIC_HEADERS if proxy else OPENAI_HEADERS,
                    "body_file": self.body_file(target.name, model_name, stream),
                    "marker": MARKERS[target.name]}
            path = os.path.join(self.tmp, f"spec-{len(self.files)}.json")
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(spec, fh)
            self.files[key] = path
        return self.files[key]

    # ----------------------------------------------------------------------
    # Measurements.

    def loadgen(self, spec: str, mode: str, *options: Any) -> Dict[str, Any]:
        cmd = [sys.executable, os.path.join(procs.BENCH, "loadgen.py"), spec, mode] + [str(o) for o in options]
        return json.loads(procs.run_to_end(cmd, self.cores.client, self.log("loadgen")))

    def record(self, key: str, target: Target, value: Optional[float]) -> None:
        self.values[key][target.name].append(value)

    def check_errors(self, what: str, target: Target, out: Dict[str, Any]) -> None:
        if out.get("errors"):
            self.warnings.append(f"{what}, {target.name}: {out['errors']} failed requests")

    def warm_up(self, target: Target) -> None:
        for stream in (False, True):
            shape = (self.plan.stream_chunks, 0) if stream else (0, 0)
            out = self.loadgen(self.spec(target, model(shape), stream), "ttft", "--samples", self.plan.warmup)
            self.check_errors("warm-up", target, out)

    def measure_rate(self, target: Target, kind: str, c: int, acc: Dict[str, List[float]]) -> None:
        """req/s, p50 and p99 of one closed-loop run; CPU and upstream connections added to ``acc``."""
        stream = kind == "stream"
        shape = (self.plan.stream_chunks, 0) if stream else (0, 0)
        spec = self.spec(target, model(shape), stream)
        cpu0, stats0 = target.pid and procs.cpu_seconds(target.pid), self.stats()
        out = self.loadgen(spec, "rate", "--concurrency", c, "--duration", self.plan.duration,
                           "--engine", self.engine)
        cpu1, stats1 = target.pid and procs.cpu_seconds(target.pid), self.stats()
        self.check_errors(f"{kind} c={c}", target, out)
        self.record(f"{kind}_rps_c{c}", target, out["rps"])
        self.record(f"{kind}_p50_c{c}", target, out["p50_ms"])
        self.record(f"{kind}_p99_c{c}", target, out["p99_ms"])
        if cpu0 is not None and cpu1 is not None and target.pid:
            add(acc[f"{kind}_cpu"], cpu1 - cpu0, out["sent"])
        add(acc["conns"], stats1["connections"] - stats0["connections"], stats1["requests"] - stats0["requests"])

    def measure_ttft(self, target: Target) -> None:
        spec = self.spec(target, model(self.plan.ttft_shape), True)
        out = self.loadgen(spec, "ttft", "--samples", self.plan.ttft_samples)
        self.check_errors("first text delta", target, out)
        if len(out["ttft_ms"]) < len(out["total_ms"]):
            self.warnings.append(f"first text delta, {target.name}: no text delta seen in some answers")
        self.record("ttft", target, statistics.median(out["ttft_ms"]) if out["ttft_ms"] else None)

    def measure_long_stream(self, target: Target) -> None:
        spec = self.spec(target, model((self.plan.long_chunks, 0)), True)
        out = self.loadgen(spec, "ttft", "--samples", self.plan.long_samples)
        self.check_errors("long stream", target, out)
        self.record("long_stream", target, statistics.median(out["total_ms"]) if out["total_ms"] else None)

    def measure_cpu_per_chunk(self, target: Target) -> None:
        """CPU ms the target spends per 1,000 chunks of paced streams (not run for direct)."""
        if target.pid is None:
            self.record("cpu_per_1k_chunks", target, None)
            return
        shape = self.plan.cpu_shape
        spec = self.spec(target, model(shape), True)
        cpu0 = procs.cpu_seconds(target.pid) if target.pid else None
        out = self.loadgen(spec, "hold", "--concurrency", self.plan.cpu_streams, "--rounds", self.plan.cpu_rounds)
        cpu1 = procs.cpu_seconds(target.pid) if target.pid else None
        self.check_errors("CPU per chunk", target, out)
        chunks = out["streams"] * shape[0]
        value = (cpu1 - cpu0) * 1000 / (chunks / 1000) if cpu0 is not None and cpu1 is not None and chunks else None
        self.record("cpu_per_1k_chunks", target, value)

    def measure_rss(self, target: Target) -> None:
        """Resident memory after warm-up, and the peak while ``rss_streams`` slow streams are open."""
        if target.pid is None:
            self.record("rss_idle", target, None)
            self.record("rss_streams", target, None)
            return
        idle = procs.memory_kib(target.pid).get("VmRSS")
        spec = self.spec(target, model(self.plan.rss_shape), True)
        cmd = [sys.executable, os.path.join(procs.BENCH, "loadgen.py"), spec, "hold",
               "--concurrency", str(self.plan.rss_streams)]
        text, sampled = procs.run_sampling_rss(cmd, self.cores.client, self.log("loadgen"), target.pid)
        out = json.loads(text)
        self.check_errors("RSS streams", target, out)
        if out["max_open"] < self.plan.rss_streams:
            self.warnings.append(f"RSS, {target.name}: only {out['max_open']} streams were open at once")
        peak = procs.memory_kib(target.pid).get("VmHWM") or sampled or None
        self.record("rss_idle", target, idle / 1024 if idle else None)
        self.record("rss_streams", target, peak / 1024 if peak else None)

    # ----------------------------------------------------------------------
    # A repeat.

    def start_targets(self, order: List[str]) -> Dict[str, procs.Server]:
        """Each served target started ``starts`` times (timed); the last start of each stays up."""
        servers: Dict[str, procs.Server] = {}
        took: Dict[str, List[float]] = {name: [] for name in order}
        for i in range(self.plan.starts):
            for name in rotated(order, i):
                if name in servers:
                    procs.stop(servers[name].proc)
                servers[name] = self.start_target(name)
                took[name].append(servers[name].start_seconds * 1000)
        for name in order:
            self.values["start"][name].append(statistics.median(took[name]))
        self.values["start"]["direct"].append(self.interpreter_start())
        return servers

    def compile_bytecode(self, root: str = procs.ROOT) -> None:
        """claudeproxy's modules (of the checkout at ``root``) compiled to ``__pycache__`` first, as
        any start after the first finds them.

        Where ``PYTHONDONTWRITEBYTECODE`` is set (some containers and CI images), no start writes
        them, and every one compiled the whole package from source: 200 ms to listening instead of
        110, and 2 MiB more RSS. Python reads a cache it finds even then."""
        cmd = [self.args.python, "-m", "compileall", "-q", os.path.join(root, "claudeproxy")]
        if subprocess.run(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
            self.warnings.append("compileall failed: claudeproxy's modules are compiled at every start")

    def interpreter_start(self) -> float:
        """The floor for "start to listening": the bare interpreter printing the line (median, ms)."""
        cmd = [self.args.python, "-c", "print('listening on http://127.0.0.1:0', flush=True)"]
        took = []
        for _ in range(self.plan.starts):
            server = procs.start_server(cmd, self.cores.target, self.log("interpreter"))
            took.append(server.start_seconds * 1000)
            procs.stop(server.proc)
        return statistics.median(took)

    def repeat(self, r: int) -> None:
        """Start the served targets afresh, measure everything for the three, stop them."""
        assert self.upstream is not None
        servers = self.start_targets(rotated(["ceiling", "claudeproxy"], r))
        try:
            targets = [Target("direct", self.upstream.port, None)]
            targets += [Target(n, s.port, s.proc.pid) for n, s in servers.items()]
            self.measure_all(r, sorted(targets, key=lambda t: TARGETS.index(t.name)))
        finally:
            for server in servers.values():
                procs.stop(server.proc)
        self.pad(r + 1)

    def measure_floor(self) -> None:
        """The JSON work alone (bench/floor.py), on the targets' core."""
        event = next((line for line in self.answers[True].split(b"\n")
                      if line.startswith(b'data: {"type":"content_block_delta"')), None)
        if event is None:
            self.warnings.append("floor: no content_block_delta in claudeproxy's captured stream")
            return
        files = []
        for name, data in (("answer", self.answers[False]), ("event", event)):
            files.append(os.path.join(self.tmp, f"floor-{name}.json"))
            with open(files[-1], "wb") as fh:
                fh.write(data)
        cmd = [self.args.python, os.path.join(procs.BENCH, "floor.py"),
               self.body_file("claudeproxy", model((0, 0)), False), self.body_file("direct", model((0, 0)), False),
               *files]
        for key, value in json.loads(procs.run_to_end(cmd, self.cores.target, self.log("floor"))).items():
            self.floors[key].append(value)

    def measure_all(self, r: int, targets: List[Target]) -> None:
        """Every figure, the targets in turn for each; the order rotates with the repeat and the figure."""
        for t in targets:
            self.warm_up(t)
        for t in rotated(targets, r):
            self.measure_rss(t)  # first: the peak should come from the 64 streams, not from the req/s runs
        acc: Dict[str, Dict[str, List[float]]] = {t.name: collections.defaultdict(lambda: [0.0, 0.0])
                                                  for t in targets}
        step = 0
        for kind in ("json", "stream"):
            for c in self.plan.concurrency:
                step += 1
                for t in rotated(targets, r + step):
                    self.measure_rate(t, kind, c, acc[t.name])
        for t in targets:
            self.record_totals(t, acc[t.name])
        for i, measure in enumerate((self.measure_ttft, self.measure_long_stream, self.measure_cpu_per_chunk)):
            for t in rotated(targets, r + i):
                measure(t)
        self.measure_floor()

    def record_totals(self, target: Target, acc: Dict[str, List[float]]) -> None:
        for kind in ("json", "stream"):
            cpu, sent = acc.get(f"{kind}_cpu", [0.0, 0.0])
            self.record(f"{kind}_cpu", target, cpu * 1000 / sent if sent and target.pid else None)
        conns, requests = acc["conns"]
        self.record("upstream_conns", target, conns / requests if requests else None)

    def pad(self, n: int) -> None:
        """Every figure one value per target per repeat, None where not measured, so repeats pair up."""
        for per_target in self.values.values():
            for name in TARGETS:
                per_target[name] += [None] * (n - len(per_target[name]))

    def run(self) -> None:
        """Everything, start to end; ``self.foreign_cores`` is what the rest of the machine used meanwhile."""
        began, busy0, own0 = time.perf_counter(), procs.busy_seconds(), procs.own_seconds()
        try:
            self._run()
        finally:
            busy1, own1 = procs.busy_seconds(), procs.own_seconds()
            if busy0 is not None and busy1 is not None:
                others = (busy1 - busy0) - (own1 - own0)
                self.foreign_cores = max(0.0, others / (time.perf_counter() - began))

    def _run(self) -> None:
        procs.pin_self(self.cores.client)
        if self.args.tls and not self.make_cert():
            self.warnings.append("--tls: openssl not found, TLS skipped")
        self.compile_bytecode()
        self.start_upstream()
        try:
            self.capture_translation()
            for r in range(self.plan.repeats):
                self.repeat(r)
        finally:
            assert self.upstream is not None
            procs.stop(self.upstream.proc)


# --------------------------------------------------------------------------
# The report.


def _first_line(cmd: List[str]) -> str:
    try:
        out = subprocess.run(cmd, cwd=procs.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=30)
        return (out.stdout.strip().splitlines() or [""])[0]
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(bench: Bench) -> Dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    commit = _first_line(["git", "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": _first_line([bench.args.python, "--version"]),
        "claudeproxy": _first_line([bench.args.python, "-m", "claudeproxy", "--version"]),
        "commit": commit + (" (modified)" if dirty else ""),
        "pinning": ("not pinned" if bench.cores.target is None else
                    f"targets on CPU {sorted(bench.cores.target)}, upstream on {sorted(bench.cores.upstream or [])}, "
                    f"client on {sorted(bench.cores.client or [])}"),
        "client": bench.engine,
    }


def _num(x: Optional[float]) -> str:
    return "?" if x is None else f"{x:.2f}"


def header(bench: Bench, info: Dict[str, Any], command: str, load: Tuple[float, float]) -> str:
    p = bench.plan
    anth = os.path.getsize(bench.body_file("claudeproxy", model((0, 0)), False))
    oai = os.path.getsize(bench.body_file("direct", model((0, 0)), False))
    return "\n".join([
        f"`{command}`",
        "",
        f"{info['cpu']}, {info['cores']} cores, {info['os']}, {info['python']}, {info['claudeproxy']} "
        f"at {info['commit'] or '?'}; {info['pinning']}; client: {info['client']}; "
        f"load average {load[0]:.2f} before, {load[1]:.2f} after; "
        f"other processes used {_num(bench.foreign_cores)} cores on average during the run.",
        f"{p.repeats} repeats, {p.duration:g} s per req/s run; request: Claude Code's, {anth:,} bytes "
        f"(claudeproxy translates it to {oai:,} bytes for the upstream){'; upstream over TLS' if bench.cert else ''}.",
        "Values are medians over the repeats; ×direct and ×ceiling are claudeproxy's ratios, "
        "ceiling ×direct the ceiling's; spread is the largest (max − min) / median among the three.",
    ])


def _median(xs: List[Optional[float]]) -> Optional[float]:
    known = [x for x in xs if x is not None]
    return statistics.median(known) if known else None


def floor_summary(bench: Bench) -> Dict[str, Optional[float]]:
    """The JSON floor (bench/floor.py) beside the ceiling's CPU, and the best ratios they allow."""
    request, chunk = _median(bench.floors["request_ms"]), _median(bench.floors["chunk_us"])
    ceiling_request = _median(bench.values["json_cpu"]["ceiling"])
    ceiling_chunk = _median(bench.values["cpu_per_1k_chunks"]["ceiling"])  # ms per 1,000 = µs per chunk
    best_rate = (ceiling_request / (ceiling_request + request)
                 if request is not None and ceiling_request else None)
    least_chunk = (ceiling_chunk + chunk) / ceiling_chunk if chunk is not None and ceiling_chunk else None
    return {"request_ms": request, "chunk_us": chunk, "ceiling_request_ms": ceiling_request,
            "ceiling_chunk_us": ceiling_chunk, "best_nonstream_vs_ceiling": best_rate,
            "least_chunk_cpu_vs_ceiling": least_chunk}


def floor_text(f: Dict[str, Optional[float]]) -> str:
    if f["best_nonstream_vs_ceiling"] is None or f["least_chunk_cpu_vs_ceiling"] is None:
        return "Floor: not measured."
    return (f"Floor (bench/floor.py, on the targets' core): the JSON work alone, decoding the client's request "
            f"and the upstream's answer and encoding the upstream's request and the client's answer, is "
            f"{f['request_ms']:.3f} ms of CPU a non-stream request; on top of the ceiling's "
            f"{f['ceiling_request_ms']:.3f} ms, a translating proxy that spent nothing else would serve at most "
            f"{f['best_nonstream_vs_ceiling']:.2f}× the ceiling's CPU-bound rate. A chunk's JSON (decode the "
            f"upstream's, encode one event) is {f['chunk_us']:.1f} µs against the ceiling's "
            f"{f['ceiling_chunk_us']:.1f} µs a chunk: at least {f['least_chunk_cpu_vs_ceiling']:.2f}× its CPU.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, for a smoke test (seconds)")
    parser.add_argument("--json", metavar="OUT", help="also write every value to this JSON file")
    parser.add_argument("--tls", action="store_true", help="the upstream serves HTTPS (needs openssl)")
    parser.add_argument("--client", choices=("auto", "stdlib", "wrk"), default="auto",
                        help="load generator for the req/s runs (auto: wrk when installed, stdlib with --quick)")
    parser.add_argument("--repeats", type=int, help="repeats (default 3, --quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per req/s run (default 2, --quick 0.3)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for claudeproxy and the ceiling")
    parser.add_argument("--proxy-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for claudeproxy (repeatable), e.g. --proxy-arg=--log-level=warning")
    args = parser.parse_args()
    plan = QUICK if args.quick else DEFAULT
    plan = plan._replace(repeats=args.repeats or plan.repeats, duration=args.duration or plan.duration)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory(prefix="claudeproxy-bench-") as tmp:
        bench = Bench(args, plan, tmp)
        began = time.perf_counter()
        bench.run()
        load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        info = machine(bench)
        command = "python bench/run.py " + " ".join(sys.argv[1:])
        rows = figures(plan, bool(bench.cert))
        print(header(bench, info, command.strip(), (load0, load1)))
        print()
        print(table.markdown(rows, bench.values))
        floor = floor_summary(bench)
        print()
        print(floor_text(floor))
        for warning in bench.warnings:
            print(f"warning: {warning}")
        print(f"\n({time.perf_counter() - began:.0f} s)")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump({"command": command, "machine": info, "plan": plan._asdict(), "tls": bool(bench.cert),
                           "load_average": [load0, load1],
                           "foreign_cores": bench.foreign_cores, "warnings": bench.warnings,
                           "figures": table.as_json(rows, bench.values), "floor": floor,
                           "floor_values": bench.floors}, fh, indent=1)


if __name__ == "__main__":
    main()
