"""A stand-in for the command ``claudeproxy run`` starts: it records what it was given, then ends as told.

    python standin_command.py OUT [--probe] [--probe-env] [--ask PATH] [--usage N] (--exit N | --signal NAME | --wait)

It writes OUT (JSON, atomically: a poller never sees half a file) with its
environment, argv and pid. ``--probe`` first sends Claude Code's quota probe
(``max_tokens: 1``, answered by the proxy without any upstream) to
``$ANTHROPIC_BASE_URL`` once with ``$ANTHROPIC_AUTH_TOKEN`` as a Bearer token and
once without a key, and records both statuses. ``--probe-env`` sends it as most clients
would, through the environment's ``HTTP_PROXY`` unless ``NO_PROXY`` says otherwise (urllib
reads them, as curl and Node do), and records the status or the error. ``--usage N`` records the
proxy's ``today_totals`` once they count N requests (at most 5 s). ``--ask PATH`` sends a request
that goes upstream to PATH (``/v1/messages``) and records its status. Then it exits with status N,
kills itself with signal NAME, or waits (at most 30 s) for a signal to end it.
Standard library only, so it also runs on Python 3.8.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Dict, Optional
from urllib.parse import urlsplit


def probe(token: Optional[str]) -> Dict[str, Any]:
    url = urlsplit(os.environ["ANTHROPIC_BASE_URL"])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    headers = {"Content-Type": "application/json", "anthropic-version": "2023-06-01"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"model": "claude-opus-5-5", "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]}
    try:
        conn.request("POST", "/v1/messages?beta=true", json.dumps(body), headers)
        resp = conn.getresponse()
        return {"status": resp.status, "body": json.loads(resp.read().decode("utf-8"))}
    finally:
        conn.close()


def probe_env() -> Dict[str, Any]:
    body = {"model": "claude-opus-5-5", "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]}
    req = urllib.request.Request(os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages", json.dumps(body).encode(),
                                 {"Content-Type": "application/json", "anthropic-version": "2023-06-01",
                                  "Authorization": f"Bearer {os.environ.get('ANTHROPIC_AUTH_TOKEN')}"})
    try:
        with urllib.request.build_opener().open(req, timeout=10) as resp:  # the environment's proxies
            return {"status": resp.status}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code}
    except OSError as exc:
        return {"error": repr(exc)}


def ask(path: str) -> Dict[str, Any]:
    """A request the proxy sends upstream (not the quota probe), with the session's key, at ``path``."""
    url = urlsplit(os.environ["ANTHROPIC_BASE_URL"])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    headers = {"Content-Type": "application/json", "anthropic-version": "2023-06-01",
               "Authorization": f"Bearer {os.environ.get('ANTHROPIC_AUTH_TOKEN')}"}
    body = {"model": "claude-opus-5-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    try:
        conn.request("POST", path, json.dumps(body), headers)
        return {"status": conn.getresponse().status}
    finally:
        conn.close()


def usage(at_least: int) -> Dict[str, Any]:
    """The proxy's ``today_totals`` once they count ``at_least`` requests (at most 5 s)."""
    url = urlsplit(os.environ["ANTHROPIC_BASE_URL"])
    headers = {"Authorization": f"Bearer {os.environ.get('ANTHROPIC_AUTH_TOKEN')}"}
    deadline = time.monotonic() + 5
    while True:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            conn.request("GET", "/v1/usage", headers=headers)
            today = json.loads(conn.getresponse().read().decode("utf-8"))["today_totals"]
        finally:
            conn.close()
        if today["requests"] >= at_least or time.monotonic() > deadline:
            return today
        time.sleep(0.05)


def record(path: str, extra: Dict[str, Any]) -> None:
    data = {"env": dict(os.environ), "argv": sys.argv, "pid": os.getpid(), "cwd": os.getcwd(), **extra}
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(path + ".tmp", path)


def main(argv: list) -> int:
    out, rest = argv[0], argv[1:]
    extra: Dict[str, Any] = {}
    if "--probe" in rest:
        extra["with_token"] = probe(os.environ.get("ANTHROPIC_AUTH_TOKEN"))
        extra["without_key"] = probe(None)
    if "--probe-env" in rest:
        extra["through_env"] = probe_env()
    if "--ask" in rest:
        extra["asked"] = ask(rest[rest.index("--ask") + 1])
    if "--usage" in rest:
        extra["today"] = usage(int(rest[rest.index("--usage") + 1]))
    record(out, extra)
    if "--exit" in rest:
        return int(rest[rest.index("--exit") + 1])
    if "--signal" in rest:
        os.kill(os.getpid(), getattr(signal, "SIG" + rest[rest.index("--signal") + 1]))
        time.sleep(5)
        return 99  # not reached
    if "--wait" in rest:
        time.sleep(30)
        return 98
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
