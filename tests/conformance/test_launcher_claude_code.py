"""The real Claude Code CLI through ``claudeproxy run``, on a host it has never seen, against a scripted fake.

The fresh-host case of the issue: an empty HOME, no Anthropic credential, no
route to Anthropic (this machine has none), nothing set but PATH, LANG, TERM
and DISABLE_AUTOUPDATER (always set when running the real CLI, so a test never
updates it; run sets it too). The user's IS_SANDBOX=1 passes through, so root may
use --dangerously-skip-permissions headless.

(a) Headless: ``claudeproxy run --upstream <fake> --model gpt-4o -- claude -p
    ...``: a Write tool round creates the file, the result comes back, no login
    or connectivity error, the proxy's port is closed afterwards.
(b) Interactive, in tmux (skipped without tmux): ``claudeproxy run ... --
    claude`` in a 200x50 pane; with ``--trust`` no start-up screen at all, without
    it only the folder-trust question (answered). A prompt makes the fake answer
    with text and a Bash tool use; the answer and the tool use must show, then a
    command auto mode checks (curl -X POST) runs without any notice (its safety
    check goes through the proxy and the fake allows it). No "Not logged in",
    "/login", "Unable to connect", "API Error" or blocking notice may ever be on
    screen; /exit ends Claude Code, run exits 0 and the proxy's port is closed.

Screens and strings are those of /work/notes/claude-code-launch.md (Claude Code
2.1.331). Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Set

import pytest

from conformance_helpers import ROOT, ScriptedUpstream, accumulate_chunks, claude_binary
from fakes import Reply, chunk, json_reply, sse_reply

CLAUDE = claude_binary()
pytestmark = [
    pytest.mark.conformance,
    pytest.mark.skipif(CLAUDE is None, reason="Claude Code CLI not found (set CLAUDEPROXY_CLAUDE_BIN or run .ci/run)"),
]
RUN_TIMEOUT = 90.0
STARTUP_TIMEOUT = 30.0
TURN_TIMEOUT = 45.0
# A Bash command auto mode sends to its safety check (a plain echo is not checked).
CHECKED = "curl -sS -X POST http://127.0.0.1:9/upload --data-binary hello"
NEVER = ("Not logged in", "/login", "Unable to connect", "API Error", "We're changing auto mode",
         "Auto mode can't check", "isn't recognized", "Do you want to use this API key?", "Choose the text style",
         "Security notes:", "Bypass Permissions mode", "Checking connectivity")
READY = ("shift+tab to cycle", "for shortcuts")
TRUST_QUESTION = "Yes, I trust this folder"


# ----------------------------------------------------------------------
# The scripted model, on the OpenAI Chat Completions side of the proxy.


def _reply(body: Dict[str, Any], text: str = "", calls: Optional[List[Dict[str, Any]]] = None) -> Reply:
    chunks = [chunk({"role": "assistant", "content": ""})]
    if text:
        chunks.append(chunk({"content": text}))
    for i, (name, args) in enumerate((c["name"], c["input"]) for c in calls or []):
        chunks.append(chunk({"tool_calls": [{"index": i, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                                             "function": {"name": name, "arguments": json.dumps(args)}}]}))
    chunks += [chunk({}, "tool_calls" if calls else "stop"),
               {"choices": [], "usage": {"prompt_tokens": 900, "completion_tokens": 20}}]
    return sse_reply(*chunks) if body.get("stream") else json_reply(accumulate_chunks(chunks))


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text")


def _last_user_text(body: Dict[str, Any]) -> str:
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    return _text(users[-1].get("content")) if users else ""


class Model:
    """RUNBASH -> text + Bash echo; BASHCMD: <cmd> -> Bash <cmd>; WRITEFILE -> Write ``write_to``;
    a new tool result -> ``FAKE-DONE <its first 40 characters>``; auto mode's safety check -> allow.

    A tool result is "new" until answered once: where it sits in the history is Claude Code's
    business (it may put the next prompt, or the previous answer, on either side of it).
    """

    def __init__(self, write_to: str = "") -> None:
        self.write_to = write_to
        self.answered: Set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, rec: Any) -> Reply:
        body = rec.json
        system = json.dumps([m for m in body.get("messages", []) if m.get("role") in ("system", "developer")])
        if "security monitor" in system:
            verdict = "<severity>0</severity>" if "<severity>" in json.dumps(body) else "<block>no</block>"
            return _reply(body, verdict)
        if not body.get("tools"):
            return _reply(body, '{"title": "Fake session"}')
        with self.lock:
            results = [m for m in body.get("messages", []) if m.get("role") == "tool"
                       and m.get("tool_call_id") not in self.answered]
            self.answered.update(m.get("tool_call_id") for m in results)
        if results:
            return _reply(body, "FAKE-DONE " + _text(results[-1].get("content")).strip()[:40])
        said = _last_user_text(body)
        if "RUNBASH" in said:
            return _reply(body, "Running it now.", [{"name": "Bash", "input": {
                "command": "echo hi-from-fake", "description": "Print a greeting"}}])
        command = re.search(r"BASHCMD: (.+)$", said.strip())
        if command:
            return _reply(body, "", [{"name": "Bash", "input": {"command": command.group(1),
                                                                "description": "Run the requested command"}}])
        if "WRITEFILE" in said:
            return _reply(body, "", [{"name": "Write", "input": {"file_path": self.write_to,
                                                                 "content": "written by the fake\n"}}])
        return _reply(body, "FAKE-ANSWER-42")


# ----------------------------------------------------------------------
# Shared pieces.


def fresh_env(home: str) -> Dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "LANG": "C.UTF-8",
            "TERM": "xterm-256color", "DISABLE_AUTOUPDATER": "1", "PYTHONPATH": ROOT}


def run_argv(upstream: str, log: str, *options: str) -> List[str]:
    return [sys.executable, "-m", "claudeproxy", "run", "--upstream", upstream, "--model", "gpt-4o",
            "--log-file", log, *options, "--", str(CLAUDE)]


def proxy_port(log: str) -> int:
    with open(log, encoding="utf-8") as fh:
        found = re.search(r"claudeproxy listening on http://127\.0\.0\.1:(\d+) ", fh.read())
    assert found, "the proxy never logged its address"
    return int(found.group(1))


def port_closed(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture
def dirs(tmp_path: Any) -> Dict[str, str]:
    out = {name: str(tmp_path / name) for name in ("home", "work")}
    for path in out.values():
        os.mkdir(path)
    out["log"] = str(tmp_path / "proxy.log")
    return out


@pytest.fixture
def fake() -> Any:
    upstreams: List[ScriptedUpstream] = []

    def make(script: Callable[[Any], Reply]) -> ScriptedUpstream:
        upstreams.append(ScriptedUpstream(script))
        return upstreams[-1]

    yield make
    for upstream in upstreams:
        upstream.close()


# ----------------------------------------------------------------------
# (a) Headless.


def test_a_headless_write_round_on_a_fresh_host(dirs: Dict[str, str], fake: Any) -> None:
    target = os.path.join(dirs["work"], "fake.txt")
    upstream = fake(Model(write_to=target))
    argv = run_argv(upstream.url, dirs["log"]) + ["-p", "WRITEFILE please", "--output-format", "stream-json",
                                                  "--verbose", "--dangerously-skip-permissions", "--max-turns", "6"]
    env = dict(fresh_env(dirs["home"]), IS_SANDBOX="1")  # the user's own: root may then skip permissions
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=dirs["work"], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    elapsed = time.monotonic() - started
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    results = [line for line in lines if line.get("type") == "result"]
    assert results, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert (results[-1]["is_error"], proc.returncode) == (False, 0), proc
    assert results[-1]["result"].startswith("FAKE-DONE "), results[-1]
    with open(target, encoding="utf-8") as fh:
        assert fh.read() == "written by the fake\n"
    start_line = proc.stderr.splitlines()[0]
    assert re.match(r"^claudeproxy: proxy on (http://127\.0\.0\.1:\d+) \(usage page \1/\?key=cp-[\w-]+\), log in "
                    + re.escape(dirs["log"]) + "$", start_line), proc.stderr
    state_file = os.path.join(dirs["home"], ".claude.json")
    assert f"claudeproxy: added hasCompletedOnboarding to {state_file}" in proc.stderr
    assert read_json(state_file)["hasCompletedOnboarding"] is True
    for text in NEVER[:4]:
        assert text not in proc.stdout + proc.stderr, text
    with open(dirs["log"], encoding="utf-8") as fh:
        log = fh.read()
    # The access log: every call served by the routed model, none refused for its key.
    assert " 401 " not in log and len(re.findall(r" -> upstream/gpt-4o 200 ", log)) >= 2, log
    chat = upstream.chat_bodies()
    assert any(m.get("role") == "tool" for m in chat[-1]["messages"])
    assert port_closed(proxy_port(dirs["log"]))
    assert elapsed < RUN_TIMEOUT / 2


# ----------------------------------------------------------------------
# (b) Interactive, in tmux.


class Pane:
    """One detached tmux session on a private socket; every capture is kept for the never-seen checks."""

    def __init__(self, name: str) -> None:
        self.socket = f"claudeproxy-test-{name}"  # private, one per test: a closing server is never reused
        self.name = name
        self.seen: List[str] = []

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=15)
        assert done.returncode == 0 or args[0] in ("kill-session", "kill-server"), done.stderr
        return done.stdout

    def start(self, cwd: str, env: Dict[str, str], argv: List[str]) -> None:
        # Not exec: the pane (and whatever error screen) must outlive the launcher.
        inner = "cd {} && env -i {} {}; echo LAUNCHER-EXITED-$?; sleep 600".format(
            shlex.quote(cwd), " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()),
            " ".join(shlex.quote(a) for a in argv))
        self.tmux("new-session", "-d", "-s", self.name, "-x", "200", "-y", "50", inner)

    def screen(self) -> str:
        text = self.tmux("capture-pane", "-p", "-t", self.name)
        if not self.seen or self.seen[-1] != text:
            self.seen.append(text)
        return text

    def wait(self, done: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if done(screen):
                return screen
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s; the screen:\n{screen}"
            assert "LAUNCHER-EXITED-" not in screen, f"run ended while waiting for {what}:\n{screen}"
            shown = [text for text in NEVER if text in screen]
            assert not shown, f"{shown} on screen while waiting for {what}:\n{screen}"
            time.sleep(0.2)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.name, "-l", text)
        time.sleep(0.4)  # let the input box take the text before Enter submits it
        self.tmux("send-keys", "-t", self.name, "Enter")

    def close(self) -> None:
        self.tmux("kill-server")


def _ready(screen: str) -> bool:
    return any(marker in screen for marker in READY) and TRUST_QUESTION not in screen


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not found")
@pytest.mark.parametrize("trust", [True, False], ids=["trust-flag", "trust-answered"])
def test_b_interactive_session_on_a_fresh_host(dirs: Dict[str, str], fake: Any, trust: bool) -> None:
    upstream = fake(Model())
    pane = Pane(f"s{uuid.uuid4().hex[:8]}")
    argv = run_argv(upstream.url, dirs["log"], *(["--trust"] if trust else []))
    try:
        pane.start(dirs["work"], fresh_env(dirs["home"]), argv)
        started = time.monotonic()
        screen = pane.wait(lambda s: _ready(s) or TRUST_QUESTION in s, STARTUP_TIMEOUT, "input box")
        if TRUST_QUESTION in screen:
            assert not trust, f"--trust was given, yet Claude Code asks:\n{screen}"
            time.sleep(0.4)  # the dialog's default is "No, exit": move to "Yes" first
            pane.tmux("send-keys", "-t", pane.name, "Down")
            time.sleep(0.3)
            pane.tmux("send-keys", "-t", pane.name, "Enter")
            screen = pane.wait(_ready, STARTUP_TIMEOUT, "input box after the trust question")
        else:
            assert trust, f"without --trust Claude Code should ask about the folder:\n{screen}"
        ready_after = time.monotonic() - started
        assert "auto mode on" in screen, screen

        pane.type("RUNBASH please")
        screen = pane.wait(lambda s: "FAKE-DONE hi-from-fake" in s, TURN_TIMEOUT, "answer to RUNBASH")
        assert "Running it now." in screen, screen
        assert "Bash(echo hi-from-fake)" in screen or "Ran 1 shell command" in screen, screen

        pane.type(f"BASHCMD: {CHECKED}")
        # The fake echoes the tool result: curl's exit code 7 (nothing listens on port 9) proves it ran.
        pane.wait(lambda s: re.search(r"FAKE-DONE (Error: )?Exit code 7", s) is not None, TURN_TIMEOUT,
                  "answer to the checked command")

        pane.type("/exit")
        screen = pane.wait(lambda s: "LAUNCHER-EXITED-" in s, TURN_TIMEOUT, "the end of run")
        assert "LAUNCHER-EXITED-0" in screen, screen
    finally:
        pane.close()
    never_seen = {text: i for i, shot in enumerate(pane.seen) for text in NEVER if text in shot}
    assert never_seen == {}, "\n----\n".join(pane.seen[i] for i in sorted(set(never_seen.values())))
    assert port_closed(proxy_port(dirs["log"]))
    state = read_json(os.path.join(dirs["home"], ".claude.json"))
    assert state["hasCompletedOnboarding"] is True
    work = os.path.realpath(dirs["work"])
    assert state["projects"][work]["hasTrustDialogAccepted"] is True  # by --trust, or by the answer
    chat = upstream.chat_bodies()
    checks = [b for b in chat if "security monitor" in json.dumps(b["messages"][:1])]
    # Two model calls per prompt (the tool call, the answer after its result); the curl POST went
    # through auto mode's safety check, which reached the fake through the proxy.
    assert (len(chat) - len(checks), len(checks) >= 1) == (4, True), [json.dumps(b)[:300] for b in chat]
    assert all(b.get("stream") is not True for b in checks)
    print(f"ready after {ready_after:.1f} s; {len(chat)} upstream calls, {len(checks)} safety checks")
