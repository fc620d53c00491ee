"""The package can be copied into another project and used as is (STYLE.md sections 4 and 5).

- A copy under ``vendor_x/_cp/`` imports, translates a request, serves, and
  runs its CLI without ever importing ``claudeproxy`` by its own name.
- An AST scan: relative self-imports only, and only standard-library modules
  from an explicit allowlist (``sys.stdlib_module_names`` is 3.10+).
- ``import claudeproxy`` (every submodule) under ``-X dev -W error`` starts no
  thread, opens no file or socket, adds no logging handler, sets no signal
  handler, installs no opener and changes no global setting.
- Two ``start()`` servers in one process share no state.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import re
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import pytest

import claudeproxy
from conftest import ROOT, minimal_request, request
from fakes import FakeUpstream, completion, json_reply

PACKAGE = os.path.join(ROOT, "claudeproxy")

# Every standard-library module the package may import. A new import must be
# added here on purpose, after checking it exists on Python 3.8.
STDLIB_ALLOWLIST = {
    "__future__", "argparse", "ast", "base64", "binascii", "bisect", "calendar", "codecs", "collections", "contextlib", "copy", "fcntl",
    "ctypes", "dataclasses",
    "datetime", "difflib", "email", "enum", "errno", "fnmatch", "functools", "hashlib", "hmac", "html", "http", "io", "ipaddress",
    "itertools", "json", "logging", "marshal", "math", "os", "platform", "queue", "random", "re", "resource", "secrets", "select",
    "selectors", "shlex", "shutil", "signal", "socket", "ssl", "stat", "statistics", "string", "struct", "subprocess",
    "sys", "tempfile", "textwrap", "threading", "time", "types", "typing", "unicodedata", "urllib", "uuid", "warnings",
    "zipapp", "zlib",
}


def _modules() -> List[str]:
    """Every module of the package, subpackages included, as paths relative to it."""
    found = []
    for folder, _, files in os.walk(PACKAGE):
        found += [os.path.relpath(os.path.join(folder, f), PACKAGE) for f in files if f.endswith(".py")]
    return sorted(found)


def _clean_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "OPENAI_", "CLAUDEPROXY_"))}
    return env


# ---------------------------------------------------------------------------
# A vendored copy works.


@pytest.fixture
def vendored(tmp_path: Any) -> str:
    target = tmp_path / "vendor_x" / "_cp"
    shutil.copytree(PACKAGE, str(target), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (tmp_path / "vendor_x" / "__init__.py").write_text("")
    return str(tmp_path)


def _run(code: str, cwd: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-X", "dev", "-W", "error", "-c", code, *args], cwd=cwd,
                          env=_clean_env(), capture_output=True, text=True, timeout=60)


TRANSLATE = """
import json, sys
import vendor_x._cp.cli
from vendor_x._cp.anthropic_types import parse_messages_request
from vendor_x._cp.dialects import dialect_for
from vendor_x._cp.apis.chat.request import to_chat_request
req = parse_messages_request(json.loads(sys.argv[1]))
out = to_chat_request(req, model="gpt-4o", dialect=dialect_for("openai", "gpt-4o"), stream=False)
leaked = sorted(m for m in sys.modules if m == "claudeproxy" or m.startswith("claudeproxy."))
print(json.dumps({"body": out.request.to_dict(), "leaked": leaked}))
"""


def test_vendored_copy_translates_a_request(vendored: str) -> None:
    body = {"model": "claude-x", "max_tokens": 100, "system": "S", "messages": [{"role": "user", "content": "hi"}]}
    done = _run(TRANSLATE, vendored, json.dumps(body))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["leaked"] == [], "the copy imported claudeproxy by name"
    sent = result["body"]
    assert sent["model"] == "gpt-4o"
    # PROTOCOL.md case 1.
    assert sent["messages"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]


SERVE = """
import http.client, json, sys
import vendor_x._cp as cp
server = cp.start(upstream="http://127.0.0.1:9/v1")
try:
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]}
    conn.request("POST", "/v1/messages", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    print(resp.status, json.loads(resp.read())["content"][0]["text"])
    conn.close()
finally:
    server.shutdown(grace=1)
leaked = [m for m in sys.modules if m == "claudeproxy" or m.startswith("claudeproxy.")]
print("leaked", leaked)
"""


def test_vendored_copy_serves_and_runs_its_cli(vendored: str) -> None:
    done = _run(SERVE, vendored)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["200 ok", "leaked []"]
    version = _run("import sys, vendor_x._cp.cli as c; sys.exit(c.main(['--version']))", vendored)
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"claudeproxy {claudeproxy.__version__}\n"


def test_a_vendored_copys_command_line_logs_what_its_modules_log(vendored: str) -> None:
    """The command line set its log up on the logger "claudeproxy", and a copy's modules log under
    vendor_x._cp.*: no access lines, and warnings raw on stderr, unredacted, past --log-format json
    (a probe). The copy's own package logger carries its log."""
    proc = subprocess.Popen([sys.executable, "-m", "vendor_x._cp", "--upstream", "http://127.0.0.1:9/v1", "--port", "0",
                             "--log-format", "json"], cwd=vendored, env=_clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        port = int(re.search(r"listening on http://[^:]+:(\d+)", proc.stdout.readline()).group(1))
        body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]}
        resp = request(f"http://127.0.0.1:{port}", "POST", "/v1/messages", body)
        assert resp.status == 200, resp
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines()]  # every line in the format asked for
    calls = [line for line in lines if "call" in line]
    assert [c["call"]["endpoint"] for c in calls] == ["/v1/messages"], err
    assert calls[0]["logger"].startswith("vendor_x._cp."), calls


QUIET = """
import http.client, json, logging, sys
import vendor_x._cp as cp
server = cp.start(upstream="http://127.0.0.1:9/v1", retries=0)
try:
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    conn.request("POST", "/v1/messages", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    print(resp.status, len(resp.read()) > 0)
    if sys.argv[1] == "configured":
        logging.basicConfig(level=logging.WARNING, format="host: %(name)s %(message)s")
        conn.request("POST", "/v1/messages", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        print(resp.status, len(resp.read()) > 0)
    conn.close()
finally:
    server.shutdown(grace=1)
"""


@pytest.mark.parametrize("host", ["bare", "configured"])
def test_a_library_server_writes_on_stderr_only_through_the_hosts_logging(vendored: str, host: str) -> None:
    """With no logging set up, a failed call's warning went to the host's stderr through Python's
    last-resort handler (a probe); set up, the host gets every record under the copy's name."""
    done = _run(QUIET, vendored, host)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["502", "True"] * (1 if host == "bare" else 2)
    if host == "bare":
        assert done.stderr == ""
    else:
        assert done.stderr.startswith("host: vendor_x._cp.pipeline ") and "could not reach" in done.stderr, done.stderr


# ---------------------------------------------------------------------------
# What the package imports.


def _imports(path: str) -> List[ast.AST]:
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


@pytest.mark.parametrize("name", _modules())
def test_imports_are_relative_or_allowlisted_stdlib(name: str) -> None:
    bad = []
    for node in _imports(os.path.join(PACKAGE, name)):
        if isinstance(node, ast.ImportFrom):
            if node.level > 0:
                continue  # relative: fine, and the only way to reach the package itself
            tops = [(node.module or "").split(".")[0]]
        else:
            tops = [alias.name.split(".")[0] for alias in node.names]
        bad += [f"line {node.lineno}: {top}" for top in tops if top not in STDLIB_ALLOWLIST]
    assert bad == [], f"{name} imports outside the standard-library allowlist (or itself by name): {bad}"


def _module_file(parts: List[str]) -> Optional[str]:
    """The file of the package's module ``parts`` (a module or a subpackage's __init__), if any."""
    for candidate in (os.path.join(*parts) + ".py" if parts else None, os.path.join(*parts, "__init__.py")):
        if candidate and os.path.isfile(os.path.join(PACKAGE, candidate)):
            return candidate
    return None


def _module_level_edges(name: str) -> List[str]:
    """The package's modules that ``name`` (a path under the package) imports when it loads: the
    relative imports at module level, not those inside functions (they run later)."""
    with open(os.path.join(PACKAGE, name), encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), name)
    here = name.split(os.sep)[:-1]
    edges = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = here[: len(here) - node.level + 1] + (node.module.split(".") if node.module else [])
            if node.module:  # from .x import y: the module x
                edges.append(_module_file(base))
            else:  # from . import y: the module y, or a name of the package's __init__
                edges += [_module_file(base + [alias.name]) or _module_file(base) for alias in node.names]
    return [e for e in edges if e]


def test_no_module_imports_one_that_is_still_loading_it() -> None:
    # A cycle works only while each module reads nothing from the other before it is done (the
    # version read from the half-loaded package did): one line moved and a copy fails to import.
    graph = {name: _module_level_edges(name) for name in _modules()}
    state: Dict[str, int] = {}
    cycles: List[List[str]] = []

    def visit(node: str, path: List[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], cycles


def test_allowlist_is_standard_library() -> None:
    names = getattr(sys, "stdlib_module_names", None)
    if names is None:
        # 3.8/3.9: every allowlisted module must at least come from the interpreter's own lib directory.
        import importlib.util

        stdlib_dir = os.path.dirname(os.__file__)
        for mod in STDLIB_ALLOWLIST - {"__future__", "sys"}:
            spec = importlib.util.find_spec(mod)
            assert spec is not None, mod
            origin = spec.origin or ""
            assert origin in ("built-in", "frozen") or origin.startswith(stdlib_dir), (mod, origin)
    else:
        assert STDLIB_ALLOWLIST <= set(names), STDLIB_ALLOWLIST - set(names)


def test_init_carries_version_licence_and_all() -> None:
    with open(os.path.join(PACKAGE, "__init__.py"), encoding="utf-8") as fh:
        head = fh.read(600)
    assert "License" in head and "Copyright" in head  # a vendored copy carries its licence
    assert all(hasattr(claudeproxy, name) for name in claudeproxy.__all__)
    assert {"start", "Config", "__version__"} <= set(claudeproxy.__all__)


# ---------------------------------------------------------------------------
# Importing does nothing.

IMPORT_CHECK = r"""
import logging, os, signal, socket, sys, threading, urllib.request
fds_before = set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else set()
path_before, env_before = list(sys.path), dict(os.environ)
root_handlers = list(logging.getLogger().handlers)
import pkgutil, importlib, claudeproxy
modules = list(pkgutil.walk_packages(claudeproxy.__path__, "claudeproxy."))
for mod in modules:
    importlib.import_module(mod.name)
problems = []
if threading.active_count() != 1:
    problems.append("threads: %r" % threading.enumerate())
fds_after = set(os.listdir("/proc/self/fd")) if fds_before else set()
if fds_after - fds_before:
    problems.append("new file descriptors: %r" % sorted(fds_after - fds_before))
if logging.getLogger().handlers != root_handlers:
    problems.append("root logging handlers changed")
for name, logger in logging.root.manager.loggerDict.items():
    if name.startswith("claudeproxy") and isinstance(logger, logging.Logger) and logger.handlers:
        problems.append("handlers on %s" % name)
if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
    problems.append("SIGINT handler set")
if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
    problems.append("SIGTERM handler set")
if urllib.request._opener is not None:
    problems.append("install_opener was called")
if socket.getdefaulttimeout() is not None:
    problems.append("socket default timeout set")
if sys.path != path_before:
    problems.append("sys.path changed")
if dict(os.environ) != env_before:
    problems.append("os.environ changed")
print(len(modules), problems)
"""


def test_import_has_no_side_effects() -> None:
    done = subprocess.run([sys.executable, "-X", "dev", "-W", "error", "-c", IMPORT_CHECK], cwd=ROOT,
                          env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    count, problems = done.stdout.split(" ", 1)
    # Every module was imported: each file, and each subpackage as its __init__, but not the top __init__.
    assert int(count) == len(_modules()) - 1
    assert problems.strip() == "[]", problems


# ---------------------------------------------------------------------------
# Two servers in one process.


@pytest.fixture
def two_fakes() -> Any:
    fakes = [FakeUpstream(), FakeUpstream()]
    fakes[0].default = json_reply(completion("from A"))
    fakes[1].default = json_reply(completion("from B"))
    yield fakes
    for fake in fakes:
        fake.close()


def _requests_counted(url: str, headers: Dict[str, str], want_stable: float = 0.3) -> int:
    """The server's request count once it has stopped changing (within 3 s)."""
    deadline = time.monotonic() + 3
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = request(url, "GET", "/v1/usage", headers=headers).json["totals"]["requests"]
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= want_stable:
            break
        time.sleep(0.05)
    return int(last)


def test_two_servers_in_one_process_do_not_interfere(two_fakes: List[FakeUpstream]) -> None:
    fake_a, fake_b = two_fakes
    a = claudeproxy.start(upstream=fake_a.url, model="model-a", token=claudeproxy.static_token("sk-key-A-00000000"))
    b = claudeproxy.start(upstream=fake_b.url, model="model-b", token=claudeproxy.static_token("sk-key-B-00000000"),
                          auth_key="client-key-b")
    try:
        assert a.address != b.address
        results: Dict[str, List[str]] = {"a": [], "b": []}
        lock = threading.Lock()

        def hit(server: Any, label: str, headers: Dict[str, str]) -> None:
            resp = request(server.url, "POST", "/v1/messages", minimal_request(), headers)
            with lock:
                results[label].append(resp.json["content"][0]["text"] if resp.status == 200 else str(resp.status))

        threads = [threading.Thread(target=hit, args=(a, "a", {})) for _ in range(4)]
        threads += [threading.Thread(target=hit, args=(b, "b", {"x-api-key": "client-key-b"})) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert results == {"a": ["from A"] * 4, "b": ["from B"] * 3}
        assert {r.json["model"] for r in fake_a.requests} == {"model-a"}
        assert {r.json["model"] for r in fake_b.requests} == {"model-b"}
        assert {r.headers["authorization"] for r in fake_a.requests} == {"Bearer sk-key-A-00000000"}
        assert {r.headers["authorization"] for r in fake_b.requests} == {"Bearer sk-key-B-00000000"}
        # The client key of one server means nothing to the other.
        assert request(a.url, "POST", "/v1/messages", minimal_request()).status == 200
        assert request(b.url, "POST", "/v1/messages", minimal_request()).status == 401
        # Each call is recorded just after its answer went out: give the last one a moment.
        assert _requests_counted(a.url, {}) == 5
        # b: its 3 calls and the one it refused for the missing key; a's calls are not b's.
        assert _requests_counted(b.url, {"x-api-key": "client-key-b"}) == 4
        # Stopping one leaves the other serving.
        a.shutdown(grace=1)
        assert request(b.url, "GET", "/health", headers={"x-api-key": "client-key-b"}).status == 200
    finally:
        a.shutdown(grace=1)
        b.shutdown(grace=1)
