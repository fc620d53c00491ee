"""Where a non-stream request's CPU goes: thread CPU time per function in a running claudeproxy.

    python bench/functions.py [--requests 3000] [--stream] [FUNCTION ...]

Starts the fake upstream, then claudeproxy in this process with each FUNCTION wrapped to add its
thread CPU time (``time.thread_time_ns``) to a tally, sends the bench's Claude Code request
(bench/body.py) REQUESTS times on one kept-alive connection from a client process, and prints
each function's microseconds per request. A FUNCTION is ``module:Qualified.name`` under
``claudeproxy`` (``pipeline:Proxy._record``, ``redact:redact_text``); the default list is the
request path step by step. A function reached through a name imported elsewhere before the wrap
(``from .x import f``) is not seen there: wrap the importing module's name instead
(``apis.chat.api:to_chat_request``). Nested functions count in each wrapper around them. The
client and the upstream run on the other cores when ``sched_setaffinity`` allows; the numbers
are the server thread's own, unlike cProfile's, which several times inflates Python calls.
Standard library only; not part of the test run.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

import procs

DEFAULT = (
    "handler:MessagesHandler.handle_one_request",  # all of it, the HTTP parsing included
    "pipeline:Proxy.messages",
    "pipeline:Proxy._client_request",  # read the body, decode the JSON, the door's checks
    "apis.chat.api:parse_messages_request",
    "pipeline:Proxy._count_into",  # the token estimate, while the upstream thinks
    "apis.chat.api:to_chat_request",
    "apis.chat.api:encode_body",
    "upstream:Upstream.open",  # urllib, the pooled connection, send and the response head
    "pipeline:Proxy._json",  # the answer: read, translate, write
    "pipeline:Proxy._record",  # metrics, usage log, access line
    "cli:RedactingFilter.filter",  # the secret scan of each log record (the access line)
)
CLIENT = r"""
import http.client, json, sys
sys.path.insert(0, sys.argv[1])
import body
port, n, stream = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
data = json.dumps(body.claude_code_request("bench-n20-p0" if stream else "claude-sonnet-4-5", stream)).encode()
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
for _ in range(n):
    conn.request("POST", "/v1/messages", data, {"content-type": "application/json",
                 "anthropic-version": "2023-06-01", "x-api-key": "bench"})
    answer = conn.getresponse()
    answer.read()
    assert answer.status == 200, answer.status
"""


def wrap(spec: str, tally: Dict[str, List[int]]) -> None:
    """Replace ``module:Qualified.name`` under claudeproxy by a wrapper adding to ``tally[spec]``."""
    module, _, path = spec.partition(":")
    owner: Any = importlib.import_module("claudeproxy." + module)
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    inner: Callable[..., Any] = getattr(owner, name)
    clock = time.thread_time_ns

    def timed(*args: Any, **kwargs: Any) -> Any:
        began = clock()
        try:
            return inner(*args, **kwargs)
        finally:
            entry = tally[spec]
            entry[0] += 1
            entry[1] += clock() - began

    setattr(owner, name, timed)


def run(specs: Tuple[str, ...], requests: int, stream: bool) -> Dict[str, List[int]]:
    sys.path.insert(0, procs.ROOT)
    import claudeproxy
    from claudeproxy import cli

    cores = procs.plan_cores()
    upstream = procs.start_server([sys.executable, os.path.join(procs.BENCH, "fake_upstream.py")], cores.upstream,
                                  os.devnull)
    tally: Dict[str, List[int]] = collections.defaultdict(lambda: [0, 0])
    for spec in specs:
        wrap(spec, tally)
    procs.pin_self(cores.target)
    server = claudeproxy.start(upstream=f"http://127.0.0.1:{upstream.port}/v1", token=claudeproxy.static_token("bench-key"),
                               port=0)
    # Logged as `python -m claudeproxy` logs (INFO, every record redacted), to nowhere.
    sink = open(os.devnull, "w", encoding="utf-8")
    cli.setup_logging("info", cli.secrets_source(server.server.config), sink)
    try:
        client = [sys.executable, "-c", CLIENT, procs.BENCH, str(server.address[1])]
        warm = subprocess.run(client + ["200", "1" if stream else "0"], timeout=300)
        if warm.returncode:
            raise SystemExit("the warm-up requests failed")
        tally.clear()
        done = subprocess.run(client + [str(requests), "1" if stream else "0"], timeout=600,
                              preexec_fn=(lambda: procs.pin_self(cores.client)) if cores.client else None)
        if done.returncode:
            raise SystemExit("the requests failed")
        server.server.wait_idle(5)
    finally:
        server.shutdown(grace=1)
        upstream.proc.kill()
        sink.close()
    return dict(tally)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("functions", nargs="*", default=list(DEFAULT))
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--stream", action="store_true", help="20-chunk streams instead of JSON answers")
    args = parser.parse_args()
    tally = run(tuple(args.functions), args.requests, args.stream)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=procs.ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, check=False).stdout.strip() or "?"
    print(f"thread CPU per request, {args.requests} {'stream' if args.stream else 'non-stream'} requests "
          f"(claudeproxy at {commit}):")
    for spec in args.functions:
        calls, ns = tally.get(spec, [0, 0])
        print(f"  {spec:48s} {ns / 1000 / args.requests:8.1f} µs  ({calls / args.requests:g} calls)")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
