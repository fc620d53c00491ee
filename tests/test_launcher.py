"""``claudeproxy run [proxy options] -- COMMAND``: the issue's launcher contract.

A stand-in command (standin_command.py) records the environment it was given
and exits with a chosen status, kills itself with a signal, or waits for one.
What a user would notice: the command's status is run's (128+N for signal N),
the proxy is gone afterwards (its port refuses connections), the variables
Claude Code needs are set and the user's own values win where they should,
the proxy's log goes to the file named on stderr and not over the terminal,
bad input is one line with exit 2 or 127, Claude Code's state file gains only
what is missing, and the Windows paths (no SIGTERM, npm's claude.cmd shim)
are the ones chosen when ``os.name`` is ``nt``. The variable table itself is
claude-code-launch.md's (the research on Claude Code 2.1.331), written here by hand.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import types
from typing import Any, Dict, List, Optional, Tuple

import pytest

from claudeproxy import claude_code, cli, commands, launcher
from claudeproxy.config import Config
from conftest import ROOT, request
from fakes import Reply, closing_listener

STANDIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standin_command.py")


# run says on the terminal when an upstream refuses connections; these tests' upstream must not, so
# that stderr holds only what they look for. The quota probe they use never calls it.
NO_UPSTREAM = f"http://127.0.0.1:{closing_listener()}/v1"
DEAD_UPSTREAM = "http://127.0.0.1:9/v1"  # nothing listens there: connections are refused
STARTED_RE = re.compile(r"^claudeproxy: proxy on (http://127\.0\.0\.1:(\d+)) \(usage page (\S+)\), log in (.+)$")
WAIT = 20.0


def base_env(tmp_path: Any, **extra: str) -> Dict[str, str]:
    """What a user's shell would pass: a PATH, an empty HOME, nothing of the machine's own settings."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def run_main(argv: List[str], environ: Dict[str, str]) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = commands.main(["run", *argv], environ=environ, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def standin(record: Any, *how: str) -> List[str]:
    return ["--", sys.executable, STANDIN, str(record), *how]


def started(err: str) -> Tuple[str, int, str]:
    """(url, port, log path) from run's one start line on stderr."""
    matches = [STARTED_RE.match(line) for line in err.splitlines()]
    found = [m for m in matches if m]
    assert len(found) == 1, err
    return found[0].group(1), int(found[0].group(2)), found[0].group(4)


def port_closed(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def recorded(path: Any) -> Any:
    with open(str(path), encoding="utf-8") as fh:
        return json.load(fh)


def read_text(path: Any) -> str:
    with open(str(path), encoding="utf-8") as fh:
        return fh.read()


@pytest.fixture
def run_standin(tmp_path: Any) -> Any:
    """run the stand-in in-process through commands.main; returns (status, stderr, what it recorded)."""

    def go(*how: str, options: Tuple[str, ...] = ("--upstream", NO_UPSTREAM, "--model", "gpt-4o"),
           env: Optional[Dict[str, str]] = None) -> Tuple[int, str, Dict[str, Any]]:
        record = tmp_path / "record.json"
        log = tmp_path / "proxy.log"
        code, out, err = run_main([*options, "--log-file", str(log), *standin(record, *how)],
                                  env if env is not None else base_env(tmp_path))
        assert out == ""
        return code, err, recorded(record) if record.exists() else {}

    return go


# ---------------------------------------------------------------------------
# Exit statuses, and the proxy gone afterwards.


@pytest.mark.parametrize("how, status", [(("--exit", "0"), 0), (("--exit", "7"), 7),
                                         (("--signal", "TERM"), 128 + signal.SIGTERM),
                                         (("--signal", "KILL"), 128 + signal.SIGKILL)])
def test_run_exits_with_the_commands_status_and_stops_the_proxy(run_standin: Any, how: Tuple[str, ...],
                                                                 status: int) -> None:
    code, err, rec = run_standin("--probe", *how)
    assert code == status, err
    url, port, _ = started(err)
    assert rec["env"]["ANTHROPIC_BASE_URL"] == url
    assert rec["with_token"]["status"] == 200  # the proxy was there while the command ran
    assert port_closed(port)


def test_the_proxy_requires_the_session_key_it_gives_the_command(run_standin: Any) -> None:
    code, err, rec = run_standin("--probe", "--exit", "0")
    assert code == 0, err
    token = rec["env"]["ANTHROPIC_AUTH_TOKEN"]
    assert token.startswith("cp-") and len(token) >= 30  # random per session
    assert rec["with_token"] == {"status": 200, "body": rec["with_token"]["body"]}
    assert rec["with_token"]["body"]["content"] == [{"type": "text", "text": "ok"}]
    assert rec["without_key"]["status"] == 401
    assert rec["without_key"]["body"]["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("flag", ["--usage-log", "--metrics-file"])
def test_the_usage_log_gets_the_sessions_calls(run_standin: Any, tmp_path: Any, flag: str) -> None:
    usage = tmp_path / "usage.jsonl"
    code, err, rec = run_standin("--probe", "--exit", "0",
                                 options=("--upstream", NO_UPSTREAM, "--model", "gpt-4o", flag, str(usage)))
    assert code == 0, err
    calls = [json.loads(line) for line in read_text(usage).splitlines()]
    # The stand-in's two calls: the quota probe with the session key (answered here), and one without,
    # a refused access, which is counted but not written (anyone may send those).
    assert [(c["endpoint"], c["status"], c["local"]) for c in calls] == [("/v1/messages", 200, True)]


def test_a_session_begins_with_the_days_calls_the_usage_log_holds(run_standin: Any, tmp_path: Any) -> None:
    """Every run session is a new server: its usage page said the day had cost nothing so far while
    the usage log held the day's calls (probe I). The next session reads them back, and writes none again."""
    usage = tmp_path / "usage.jsonl"
    options = ("--upstream", NO_UPSTREAM, "--model", "gpt-4o", "--usage-log", str(usage))
    code, err, rec = run_standin("--probe", "--exit", "0", options=options)
    assert code == 0, err
    assert len(read_text(usage).splitlines()) == 1  # (the refused access is not written)
    code, err, rec = run_standin("--usage", "1", "--exit", "0", options=options)
    assert code == 0, err
    assert rec["today"]["requests"] == 1 and rec["today"]["errors"] == 0, rec["today"]
    assert len(read_text(usage).splitlines()) == 1  # the second session's GET /v1/usage is no call


# ---------------------------------------------------------------------------
# The command's environment.

# By hand from claude-code-launch.md section 1 and model_facts.py's gpt-4o row (128000 / 16384).
GPT4O_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_CODE_AUTO_MODE_SERVER": "0",
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_AUTO_COMPACT_WINDOW": "128000",
    "CLAUDE_CODE_MAX_CONTEXT_TOKENS": "128000",
    "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "16384",
}
FOREIGN = {
    "ANTHROPIC_API_KEY": "sk-ant-REAL-KEY-0123456789",
    "CLAUDE_CODE_OAUTH_TOKEN": "oauth-token",
    "ANTHROPIC_UNIX_SOCKET": "/tmp/sock",
    "CLAUDE_CODE_USE_BEDROCK": "1",
    "CLAUDE_CODE_USE_VERTEX": "1",
    "CLAUDE_CODE_USE_FOUNDRY": "1",
}


def test_the_command_gets_claude_codes_variables_and_loses_foreign_credentials(run_standin: Any,
                                                                                tmp_path: Any) -> None:
    env = base_env(tmp_path, ANTHROPIC_BASE_URL="https://api.anthropic.com", IS_SANDBOX="1", MY_VAR="kept",
                   **FOREIGN)
    code, err, rec = run_standin("--exit", "0", env=env)
    assert code == 0, err
    got = rec["env"]
    assert {k: got.get(k) for k in GPT4O_ENV} == GPT4O_ENV
    assert got["ANTHROPIC_BASE_URL"] == started(err)[0]  # the user's base URL is replaced
    assert not set(FOREIGN) & set(got), set(FOREIGN) & set(got)
    assert (got["IS_SANDBOX"], got["MY_VAR"], got["HOME"]) == ("1", "kept", env["HOME"])
    assert "sk-ant-REAL-KEY" not in err


def test_the_users_own_tuning_values_win(run_standin: Any, tmp_path: Any) -> None:
    mine = {"CLAUDE_CODE_MAX_OUTPUT_TOKENS": "999", "CLAUDE_CODE_AUTO_COMPACT_WINDOW": "150000",
            "CLAUDE_CODE_MAX_CONTEXT_TOKENS": "150000", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "0",
            "CLAUDE_CODE_AUTO_MODE_SERVER": "1", "DISABLE_AUTOUPDATER": "0"}
    code, err, rec = run_standin("--exit", "0", env=base_env(tmp_path, **mine))
    assert code == 0, err
    assert {k: rec["env"][k] for k in mine} == mine


def test_the_command_reaches_the_proxy_directly_past_the_users_http_proxy(run_standin: Any, tmp_path: Any) -> None:
    """A laptop's HTTP_PROXY would take the calls to http://127.0.0.1:PORT, token and prompts in clear
    text, to a corporate proxy that cannot reach this loopback (here one that closes every connection)."""
    corporate = f"http://127.0.0.1:{closing_listener()}"
    env = base_env(tmp_path, HTTP_PROXY=corporate, HTTPS_PROXY=corporate, no_proxy="corp.example .internal")
    code, err, rec = run_standin("--probe-env", "--exit", "0", env=env)
    assert code == 0, err
    assert rec["through_env"] == {"status": 200}, rec["through_env"]
    # The user's entries kept as written (from no_proxy for both spellings), the loopback ones added once.
    assert rec["env"]["NO_PROXY"] == rec["env"]["no_proxy"] == "corp.example .internal,127.0.0.1,localhost"


@pytest.mark.parametrize("mine,expected", [
    ({}, "127.0.0.1,localhost"),
    ({"NO_PROXY": "localhost, 10.0.0.0/8,"}, "localhost, 10.0.0.0/8,127.0.0.1"),
    ({"NO_PROXY": "LOCALHOST 127.0.0.1"}, "LOCALHOST 127.0.0.1"),
])
def test_no_proxy_gains_the_loopback_entries_it_lacks(mine: Dict[str, str], expected: str) -> None:
    env = claude_code.child_env(mine, "http://127.0.0.1:4000", "token")
    assert env["NO_PROXY"] == env["no_proxy"] == expected
    assert claude_code.child_env(mine, "http://[::1]:4000", "token")["NO_PROXY"] == expected + ",::1"


def test_the_users_auth_token_is_the_session_key(run_standin: Any, tmp_path: Any) -> None:
    code, err, rec = run_standin("--probe", "--exit", "0",
                                 env=base_env(tmp_path, ANTHROPIC_AUTH_TOKEN="my-own-token-123"))
    assert code == 0, err
    assert rec["env"]["ANTHROPIC_AUTH_TOKEN"] == "my-own-token-123"
    assert (rec["with_token"]["status"], rec["without_key"]["status"]) == (200, 401)


def test_the_auth_key_flag_wins_over_the_users_token(run_standin: Any, tmp_path: Any) -> None:
    code, err, rec = run_standin("--probe", "--exit", "0",
                                 options=("--upstream", NO_UPSTREAM, "--auth-key", "flag-key-456"),
                                 env=base_env(tmp_path, ANTHROPIC_AUTH_TOKEN="my-own-token-123"))
    assert code == 0, err
    assert rec["env"]["ANTHROPIC_AUTH_TOKEN"] == "flag-key-456"
    assert rec["with_token"]["status"] == 200
    assert "flag-key-456" not in err
    assert "(usage page http://127.0.0.1:" in err and "/?key=YOUR-KEY)" in err  # where it goes, not what it is


@pytest.mark.parametrize("options, anthropic_model, window, cap", [
    # The default model (claude-opus-5-5) is an opus: the opus route's model decides.
    (("--opus-model", "gpt-4o", "--model", "o3"), None, "128000", "16384"),
    # ANTHROPIC_MODEL picks the route; the [1m] marker never goes on the wire.
    (("--opus-model", "gpt-4o", "--model", "o3"), "claude-sonnet-4-5[1m]", "200000", "100000"),
    # qwen3's 40960 tokens are raised to 100000: Claude Code would compact on every turn below that.
    (("--model", "qwen3"), None, "100000", None),
    # --max-output-tokens caps the routed model's own cap.
    (("--model", "gpt-4o", "--max-output-tokens", "4096"), None, "128000", "4096"),
])
def test_the_window_and_cap_are_the_routed_default_models(run_standin: Any, tmp_path: Any, options: Tuple[str, ...],
                                                          anthropic_model: Optional[str], window: str,
                                                          cap: Optional[str]) -> None:
    extra = {"ANTHROPIC_MODEL": anthropic_model} if anthropic_model else {}
    code, err, rec = run_standin("--exit", "0", options=("--upstream", NO_UPSTREAM, *options),
                                 env=base_env(tmp_path, **extra))
    assert code == 0, err
    got = rec["env"]
    assert (got["CLAUDE_CODE_AUTO_COMPACT_WINDOW"], got["CLAUDE_CODE_MAX_CONTEXT_TOKENS"]) == (window, window)
    assert got.get("CLAUDE_CODE_MAX_OUTPUT_TOKENS") == cap


@pytest.mark.parametrize("options, env, wanted", [
    ((), {}, None),  # 600 s, as long as Claude Code waits: nothing to say
    (("--idle-timeout", "1800"), {}, str((1800 + 10 + 30) * 1000)),  # with --connect-timeout's 10 s
    (("--idle-timeout", "1800", "--connect-timeout", "5"), {}, str((1800 + 5 + 30) * 1000)),
    (("--idle-timeout", "1800"), {"API_TIMEOUT_MS": "900000"}, "900000"),  # the user's own wins
])
def test_a_longer_idle_timeout_is_claude_codes_wait_too(run_standin: Any, tmp_path: Any, options: Tuple[str, ...],
                                                        env: Dict[str, str], wanted: Optional[str]) -> None:
    """A CPU model reading a long prompt may take more than ten minutes to its first token: Claude
    Code gave up after its own 600 s whatever --idle-timeout said, and sent the prompt again (probe AC, D9)."""
    code, err, rec = run_standin("--exit", "0", options=("--upstream", NO_UPSTREAM, "--model", "qwen3", *options),
                                 env=base_env(tmp_path, **env))
    assert code == 0, err
    assert rec["env"].get("API_TIMEOUT_MS") == wanted


@pytest.mark.parametrize("window, cap, percent", [
    # By hand from Claude Code 2.1.331's threshold: window - min(cap, 20000) - 13000, as a percentage
    # (floored) of the 100000 it is told, less the same output: 65536 - 8192 - 13000 = 44344 of 91808.
    (65536, 8192, 48),
    (49152, 8192, 30),  # 27960 of 91808
    (65536, None, 40),  # its own default output (over 20,000): 32536 of 80000
    (98304, 32768, 81),  # 65304 of 80000: the reserved output is at most 20,000
    (32768, 8192, None),  # 11576: under 24,000, Claude Code would compact about every turn
    (40960, 4096, None),  # 23864
    (100000, 8192, None),  # told as it is: Claude Code's own threshold
    (200000, None, None),
])
def test_a_small_window_brings_claude_codes_compaction_back_into_it(window: int, cap: Optional[int],
                                                                   percent: Optional[int]) -> None:
    assert claude_code.compact_percent(window, cap) == percent


def _config_with_window(tmp_path: Any, window: int, cap: int) -> str:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({
        "providers": {"local": {"url": NO_UPSTREAM, "models": {"m": {"context_window": window,
                                                                     "max_output_tokens": cap}}}},
        "routes": [{"match": "*", "provider": "local", "model": "m"}]}))
    return str(path)


@pytest.mark.parametrize("window, cap, mine, wanted", [
    (65536, 8192, {}, "48"),
    (32768, 8192, {}, None),
    (65536, 8192, {"CLAUDE_AUTOCOMPACT_PCT_OVERRIDE": "70"}, "70"),  # the user's own wins
    (65536, 8192, {"CLAUDE_CODE_AUTO_COMPACT_WINDOW": "60000"}, None),  # a window of their own: as they chose
    (65536, 16000, {"CLAUDE_CODE_MAX_OUTPUT_TOKENS": "4096"}, "50"),  # their output cap: 48440 of 95904
])
def test_run_tells_claude_code_to_compact_within_a_small_window(run_standin: Any, tmp_path: Any, window: int,
                                                                 cap: int, mine: Dict[str, str],
                                                                 wanted: Optional[str]) -> None:
    """At a 65k window Claude Code, told 100000, never compacted on its own: every compaction began
    with a refused, over-full prompt (17 of 50 requests refused; none with the override; probe AK D6)."""
    code, err, rec = run_standin("--exit", "0", options=("--config", _config_with_window(tmp_path, window, cap)),
                                 env=base_env(tmp_path, **mine))
    assert code == 0, err
    assert rec["env"].get("CLAUDE_AUTOCOMPACT_PCT_OVERRIDE") == wanted
    assert rec["env"]["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == mine.get("CLAUDE_CODE_AUTO_COMPACT_WINDOW", "100000")


@pytest.mark.parametrize("model, said", [("phi4", True), ("qwen2.5-coder", False), ("gpt-4o", False)])
def test_a_window_too_small_for_claude_codes_own_prompt_is_said_at_start(tmp_path: Any, fake_claude: Dict[str, str],
                                                                          model: str, said: bool) -> None:
    """A 16k window holds Claude Code's ~14k-token prompt and little else: sessions ended "Prompt is
    too long" after two turns with nothing on the terminal about the window (probe AK D7)."""
    code, err, _ = _run_claude(tmp_path, fake_claude, model=model)
    assert code == 0, err
    told = [line for line in err.splitlines() if "leaves little beside Claude Code's own" in line]
    assert len(told) == (1 if said else 0), err
    if said:
        assert told[0].startswith("claudeproxy: warning: ") and "(16,384 tokens)" in told[0], told
        assert "leaves little beside Claude Code's own" in read_text(tmp_path / "p.log")  # the log too


@pytest.mark.parametrize("user, project, local, mine, window", [
    ({"model": "sonnet"}, None, None, {}, "200000"),  # what /model saved: sonnet's route (o3), not opus's
    ({"model": "sonnet"}, {"model": "haiku"}, None, {}, "128000"),  # the project's wins over the user's
    ({"model": "sonnet"}, {"model": "haiku"}, {"model": "opus"}, {}, "1047576"),  # its local one over both
    ({"model": "sonnet"}, None, None, {"ANTHROPIC_MODEL": "haiku"}, "128000"),  # the environment over settings
    ({"theme": "dark"}, "{not json", None, {}, "1047576"),  # none kept, one unreadable: the built-in default
])
def test_the_window_follows_the_model_claude_codes_settings_keep(run_standin: Any, tmp_path: Any, monkeypatch: Any,
                                                                 user: Any, project: Any, local: Any,
                                                                 mine: Dict[str, str], window: str) -> None:
    """Probe AN 1: /model saves the choice in Claude Code's settings (settings.json's "model"), and
    the next `run` sized the window and output cap for claude-opus-5-5's route while every request
    went to the saved model's: a 200k-window model compacted as if it had a million."""
    project_dir = tmp_path / "project"
    for path, content in ((tmp_path / "home" / ".claude" / "settings.json", user),
                          (project_dir / ".claude" / "settings.json", project),
                          (project_dir / ".claude" / "settings.local.json", local)):
        if content is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content if isinstance(content, str) else json.dumps(content))
    project_dir.mkdir(exist_ok=True)
    monkeypatch.chdir(project_dir)
    code, err, rec = run_standin("--exit", "0", options=("--upstream", NO_UPSTREAM, "--opus-model", "gpt-4.1",
                                                         "--sonnet-model", "o3", "--haiku-model", "gpt-4o"),
                                 env=base_env(tmp_path, **mine))
    assert code == 0, err
    assert rec["env"]["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == window


@pytest.mark.parametrize("args, window", [
    (("--settings", '{"model": "haiku"}'), "128000"),  # JSON text: wins over the user's sonnet
    (("--settings=SETTINGS_FILE",), "1047576"),  # a file's path (its model: opus)
    (("--settings", '{"theme": "dark"}'), "200000"),  # no model in it: the user's file decides
    (("--model", "haiku", "--settings", '{"model": "opus"}'), "128000"),  # --model wins over any setting
])
def test_the_window_follows_claude_codes_settings_flag(tmp_path: Any, fake_claude: Dict[str, str],
                                                       args: Tuple[str, ...], window: str) -> None:
    """Probe AP N1: `claude --settings '{"model": "haiku"}'` went to the haiku route with the window
    and output cap of the model in the user's settings file."""
    home = tmp_path / "home-settings"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / "settings.json").write_text('{"model": "sonnet"}')
    given = tmp_path / "given.json"
    given.write_text('{"model": "opus"}')
    args = tuple(a.replace("SETTINGS_FILE", str(given)) for a in args)
    record = tmp_path / "record.json"
    code, out, err = run_main(["--upstream", NO_UPSTREAM, "--log-file", str(tmp_path / "p.log"), "--opus-model",
                               "gpt-4.1", "--sonnet-model", "o3", "--haiku-model", "gpt-4o", "--", "claude",
                               str(record), "--exit", "0", *args], {**fake_claude, "HOME": str(home)})
    assert code == 0, err
    assert recorded(record)["env"]["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == window


def test_claude_codes_settings_files_are_found_where_it_reads_them() -> None:
    assert claude_code.settings_files({"HOME": "/h"}, False, "/p") == [
        "/p/.claude/settings.local.json", "/p/.claude/settings.json", "/h/.claude/settings.json"]
    assert claude_code.settings_files({"HOME": "/h", "CLAUDE_CONFIG_DIR": "~/cc"}, False, "/p")[-1] == "/h/cc/settings.json"
    assert claude_code.settings_files({}, False, "/p") == ["/p/.claude/settings.local.json", "/p/.claude/settings.json"]


def test_a_model_the_facts_do_not_know_sets_no_window(run_standin: Any) -> None:
    code, err, rec = run_standin("--exit", "0", options=("--upstream", NO_UPSTREAM, "--model", "my-local-model"))
    assert code == 0, err
    assert not {"CLAUDE_CODE_AUTO_COMPACT_WINDOW", "CLAUDE_CODE_MAX_CONTEXT_TOKENS",
                "CLAUDE_CODE_MAX_OUTPUT_TOKENS"} & set(rec["env"])
    assert rec["env"]["CLAUDE_CODE_AUTO_MODE_SERVER"] == "0"


def test_the_commands_arguments_arrive_unchanged(run_standin: Any) -> None:
    code, err, rec = run_standin("--exit", "0", "--help", "a b", "--", "-p")
    assert code == 0, err
    assert rec["argv"][1:] == [rec["argv"][1], "--exit", "0", "--help", "a b", "--", "-p"]


# ---------------------------------------------------------------------------
# The log: a file named on stderr, nothing over the command's terminal.


def _spawn_run(tmp_path: Any, argv: List[str], env: Dict[str, str], **kw: Any) -> "subprocess.Popen[str]":
    env = dict(env, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-m", "claudeproxy", "run", *argv], cwd=str(tmp_path), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_the_proxy_logs_to_the_file_named_on_stderr_not_to_the_terminal(tmp_path: Any) -> None:
    record = tmp_path / "record.json"
    proc = _spawn_run(tmp_path, ["--upstream", NO_UPSTREAM, "--model", "gpt-4o", "--log-level", "debug",
                                 *standin(record, "--probe", "--exit", "0")], base_env(tmp_path))
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert out == ""
    assert len(err.splitlines()) == 1, err  # only the start line
    _, port, log_path = started(err)
    assert os.path.dirname(log_path) == os.path.abspath(tempfile.gettempdir())
    # claudeproxy-PID.log, or claudeproxy-PID-XXXX.log when a file of that name was left by an
    # earlier process with the same pid (never opened over: O_EXCL).
    assert re.fullmatch(rf"claudeproxy-{proc.pid}(-[A-Za-z0-9_]+)?\.log", os.path.basename(log_path)), log_path
    try:
        text = read_text(log_path)
        assert stat.S_IMODE(os.stat(log_path).st_mode) == 0o600
    finally:
        os.unlink(log_path)
    assert f"claudeproxy listening on http://127.0.0.1:{port} -> {NO_UPSTREAM}" in text
    assert "route * -> upstream/gpt-4o" in text
    assert re.search(r"/v1/messages claude-opus-5-5 -> local 200 ", text), text  # the quota probe
    assert recorded(record)["env"]["ANTHROPIC_AUTH_TOKEN"] not in text  # the session key is redacted


def test_the_log_format_and_bodies_options_reach_the_log(run_standin: Any, tmp_path: Any) -> None:
    code, err, rec = run_standin("--probe", "--exit", "0", options=(
        "--upstream", NO_UPSTREAM, "--model", "gpt-4o", "--log-format", "json", "--log-bodies"))
    assert code == 0, err
    log = tmp_path / "proxy.log"  # the fixture's --log-file
    lines = [json.loads(line) for line in read_text(log).splitlines()]  # every line one JSON object
    calls = [line["call"] for line in lines if "call" in line]
    assert sorted((c["status"], c["local"]) for c in calls) == [(200, True), (401, False)]
    assert any(line["logger"] == "claudeproxy.bodies" for line in lines)  # --log-bodies at the default level
    assert rec["env"]["ANTHROPIC_AUTH_TOKEN"] not in read_text(log)


def test_an_upstream_that_refuses_connections_is_said_on_the_terminal(run_standin: Any) -> None:
    """Claude Code retries a 502 for minutes without a word: a dead URL is said before it starts."""
    code, err, rec = run_standin("--probe", "--exit", "0", options=("--upstream", DEAD_UPSTREAM, "--model", "m"))
    assert code == 0, err  # the command runs all the same: the upstream may come up later
    lines = err.splitlines()
    assert len(lines) == 2 and STARTED_RE.match(lines[0]), err
    assert lines[1] == (f"claudeproxy: warning: cannot connect to the upstream {DEAD_UPSTREAM} "
                        "(Connection refused): requests to it will fail")
    assert rec["with_token"]["status"] == 200


@pytest.mark.parametrize("status", [1, 0])
def test_a_failed_commands_session_warnings_are_said_on_the_terminal(run_standin: Any, fake_upstream: Any,
                                                                     status: int) -> None:
    """Claude Code shows an upstream's 404 only as "an issue with the selected model" (claude -p
    exits 1): the proxy's warnings of the session follow on the terminal, the reason among them;
    nothing when the command succeeded."""
    fake_upstream.push(Reply(404, (("Content-Type", "text/plain"),), [b"404 page not found"]))
    code, err, rec = run_standin("--ask", "/v1/messages", "--exit", str(status),
                                 options=("--upstream", fake_upstream.url.rsplit("/v1", 1)[0], "--model", "qwen3:8b"))
    assert code == status and rec["asked"] == {"status": 404}, err
    told = [line for line in err.splitlines() if "does the upstream URL need /v1?" in line]
    if status:
        assert "python exited with status 1; the proxy's warnings while it ran" in err.replace(
            os.path.basename(sys.executable), "python"), err
        assert len(told) == 1 and told[0].startswith("claudeproxy: warning: upstream/qwen3:8b: upstream 404: "), err
    else:
        assert told == [], err


def test_a_client_base_url_ending_in_v1_is_said_after_a_failed_command(run_standin: Any) -> None:
    code, err, rec = run_standin("--ask", "/v1/v1/messages", "--exit", "1")
    assert code == 1 and rec["asked"] == {"status": 404}, err
    assert "claudeproxy: warning: a client asked for a path under /v1/v1/: its base URL should not end in /v1" \
        in err, err


def test_the_session_warnings_count_distinct_ones_past_the_first_five() -> None:
    """One warning repeated seven times is one (review I: "7 more")."""
    from claudeproxy import launcher

    said = launcher._SessionWarnings(lambda: ())
    for text in ["a", "b", "c", "d", "e", "f", "f", "f", "g", "a"]:
        said.handle(logging.LogRecord("claudeproxy", logging.WARNING, __file__, 1, text, None, None))
    out = io.StringIO()
    said.say("claude", 1, "/tmp/p.log", out)
    assert out.getvalue().splitlines()[0] == ("claudeproxy: claude exited with status 1; the proxy's warnings while "
                                              "it ran, 2 more (all in /tmp/p.log):")
    assert out.getvalue().splitlines()[1:] == [f"claudeproxy: warning: {c}" for c in "abcde"]


def test_an_unused_environment_proxy_is_said_on_the_terminal(run_standin: Any, tmp_path: Any) -> None:
    env = base_env(tmp_path, HTTPS_PROXY="http://127.0.0.1:9")
    code, err, _ = run_standin("--exit", "0", env=env, options=("--upstream", "https://api.example.test/v1",
                                                                 "--model", "m", "--api-key", "sk-test-0123456789"))
    assert code == 0, err
    assert ("claudeproxy: warning: HTTPS_PROXY is set in the environment but not used: pass --use-env-proxy to go "
            "through the proxy named there, or --proxy URL") in err.splitlines(), err


class _Running:
    """What unreachable_upstreams reads of a running server: its providers' URLs."""

    def __init__(self, *urls: str) -> None:
        providers = {u: types.SimpleNamespace(url=u) for u in urls}
        self.server = types.SimpleNamespace(proxy=types.SimpleNamespace(router=types.SimpleNamespace(providers=providers)))


def test_only_refusals_and_unknown_names_are_said() -> None:
    def connect(address: Tuple[str, int], timeout: float) -> Any:
        host, port = address
        if host == "gone.example":
            raise socket.gaierror(-2, "Name or service not known")
        if host == "slow.example":
            raise socket.timeout("timed out")  # maybe a slow network: no word
        if port == 1:
            raise ConnectionRefusedError(111, "Connection refused")
        return io.BytesIO()  # connected (has close())

    running = _Running("https://gone.example/v1", "https://slow.example/v1", "http://127.0.0.1:1/v1",
                       "https://fine.example:8443/v1?key=sk-secret-0000")
    said = launcher.unreachable_upstreams(running, Config(), connect)  # type: ignore[arg-type]
    assert said == ["cannot connect to the upstream http://127.0.0.1:1/v1 (Connection refused): requests to it "
                    "will fail", "cannot connect to the upstream https://gone.example/v1 (Name or service not "
                    "known): requests to it will fail"]


@pytest.mark.parametrize("setting", [{"proxy": "http://127.0.0.1:3128"}, {"use_env_proxy": True}])
def test_nothing_is_probed_through_an_outbound_proxy(setting: Dict[str, Any]) -> None:
    def connect(address: Tuple[str, int], timeout: float) -> Any:
        raise AssertionError("no direct connection may be tried")

    assert launcher.unreachable_upstreams(_Running(DEAD_UPSTREAM), Config(**setting), connect) == []  # type: ignore


# ---------------------------------------------------------------------------
# Signals reach the command; run outlives them, stops the proxy and reports them.


def _wait_for_file(path: Any, proc: "subprocess.Popen[str]") -> None:
    deadline = time.monotonic() + WAIT
    while not os.path.exists(str(path)):
        assert proc.poll() is None, proc.communicate(timeout=5)
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.05)


@pytest.mark.parametrize("sig, to_group", [(signal.SIGTERM, False), (signal.SIGHUP, False),
                                           (signal.SIGINT, True)])
def test_signals_reach_the_command_and_run_reports_them(tmp_path: Any, sig: int, to_group: bool) -> None:
    """SIGTERM/SIGHUP sent to run are passed on; Ctrl-C (SIGINT to the terminal's group) reaches both."""
    record = tmp_path / "record.json"
    proc = _spawn_run(tmp_path, ["--upstream", NO_UPSTREAM, "--log-file", str(tmp_path / "p.log"),
                                 *standin(record, "--wait")], base_env(tmp_path), start_new_session=True)
    try:
        _wait_for_file(record, proc)
        if to_group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=5)
    assert proc.returncode == 128 + sig, err
    _, port, _ = started(err)
    assert port_closed(port)
    # run itself said nothing more (the stand-in's own KeyboardInterrupt traceback may follow Ctrl-C).
    assert [line for line in err.splitlines() if line.startswith("claudeproxy")] == [err.splitlines()[0]]


def test_the_usage_page_address_run_prints_opens_in_a_browser(tmp_path: Any) -> None:
    """run's proxy requires the session's key, which a browser cannot send as a header: the address
    printed at the start carries it, and opens the page (the bare address answers 401)."""
    record = tmp_path / "record.json"
    proc = _spawn_run(tmp_path, ["--upstream", NO_UPSTREAM, "--log-file", str(tmp_path / "p.log"),
                                 *standin(record, "--wait")], base_env(tmp_path), start_new_session=True)
    try:
        _wait_for_file(record, proc)
        line = proc.stderr.readline()
        match = STARTED_RE.match(line.rstrip("\n"))
        assert match, line
        url, page = match.group(1), match.group(3)
        assert page.startswith(url + "/?key=cp-"), line
        assert request(url, "GET", "/").status == 401
        resp = request(url, "GET", page[len(url):])
        assert resp.status == 200 and resp.headers["content-type"].startswith("text/html")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=WAIT)


# ---------------------------------------------------------------------------
# Bad input.


def assert_one_line(err: str, *parts: str) -> None:
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert err.startswith("claudeproxy: error: "), err
    for part in parts:
        assert part in err, (part, err)


@pytest.mark.parametrize("argv, part", [
    (["--upstream", NO_UPSTREAM, sys.executable], "put -- before the command"),
    (["--upstream", NO_UPSTREAM], "put -- before the command"),
    (["--upstream", NO_UPSTREAM, "--"], "no command after --"),
    (["--upstream", "nope", "--", "true"], "--upstream"),
    (["--host", "0.0.0.0", "--auth-key", "k", "--", "true"], "--host must be a loopback address"),
    # A typo is said as one, not as an address that is not loopback.
    (["--host", "127.0.0.1 ", "--", "true"], "--host: expected an IP address or a host name"),
    (["--no-such-flag", "--", "true"], "--no-such-flag"),
    (["--usage-log", "/nonexistent-dir/usage.jsonl", "--", "true"], "--usage-log"),
    (["--metrics-file", "/nonexistent-dir/usage.jsonl", "--", "true"], "--metrics-file"),
    # A provider that needs a key and would get none: the command never starts against 401s.
    (["--upstream", "https://api.groq.com/openai/v1", "--", "true"], "gets no API key, which it needs (set GROQ_API_KEY"),
    # Nor Anthropic without one: run's client key is the session's, never passed on, and every
    # prompt was "Failed to authenticate" with nothing said (probe Z, D1).
    (["--passthrough", "--", "true"], "the upstream (api.anthropic.com) gets no API key, which it needs (the client's "
                                      "key is not passed on where the proxy has a client key of its own: run's, "
                                      "--auth-key); give --api-key-env ANTHROPIC_API_KEY"),
    (["--passthrough", "--upstream", "https://api.deepseek.com/anthropic", "--", "true"],
     "give --api-key-env DEEPSEEK_API_KEY"),
])
def test_bad_options_are_one_line_and_exit_2(tmp_path: Any, argv: List[str], part: str) -> None:
    code, out, err = run_main(argv, base_env(tmp_path))
    assert (code, out) == (2, ""), err
    assert_one_line(err, part)


@pytest.mark.skipif(not os.path.isfile("/proc/version"), reason="Linux's /proc")
def test_a_log_file_that_opens_but_takes_no_write_is_a_bad_option(tmp_path: Any) -> None:
    """Root may open /proc/version for writing (os.access says yes); every line would then be lost."""
    code, out, err = run_main(["--upstream", NO_UPSTREAM, "--log-file", "/proc/version", "--", "true"],
                              base_env(tmp_path))
    assert (code, out) == (2, ""), err
    assert_one_line(err, "--log-file /proc/version: cannot be opened")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_claude_not_installed_is_told_how_to_install_it(tmp_path: Any) -> None:
    env = {**base_env(tmp_path), "PATH": str(tmp_path)}  # nothing on it
    code, out, err = run_main(["--upstream", NO_UPSTREAM, "--", "claude"], env)
    assert (code, out) == (127, ""), err
    assert_one_line(err, "claude: command not found", "npm install -g @anthropic-ai/claude-code")


def test_a_command_that_cannot_be_found_is_127_and_one_line(tmp_path: Any) -> None:
    port = _free_port()
    code, out, err = run_main(["--upstream", NO_UPSTREAM, "--port", str(port), "--", "no-such-command-xyz", "-p"],
                              base_env(tmp_path))
    assert (code, out) == (127, ""), err
    assert_one_line(err, "no-such-command-xyz", "command not found")
    assert port_closed(port)


def test_a_file_that_cannot_be_run_is_126_and_the_proxy_stops(tmp_path: Any) -> None:
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    port = _free_port()
    code, out, err = run_main(["--upstream", NO_UPSTREAM, "--port", str(port), "--log-file",
                               str(tmp_path / "p.log"), "--", str(script)], base_env(tmp_path))
    assert code == 126, err
    lines = err.splitlines()
    assert len(lines) == 2 and STARTED_RE.match(lines[0]), err
    assert lines[1].startswith("claudeproxy: error: cannot run ") and str(script) in lines[1], err
    assert port_closed(port)


def test_a_port_that_cannot_be_bound_is_one_line_and_exit_2(tmp_path: Any) -> None:
    """A port in use is a bad setting like any other: exit 2, the line names --host and --port."""
    record = tmp_path / "record.json"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, out, err = run_main(["--upstream", NO_UPSTREAM, "--port", str(port), "--log-file",
                                   str(tmp_path / "p.log"), *standin(record, "--exit", "0")], base_env(tmp_path))
    assert (code, out) == (2, ""), err
    assert_one_line(err, f"cannot listen on 127.0.0.1:{port} (--host, --port)",
                    "a claudeproxy already running?", "give another --port (0: any free one)")
    assert not record.exists()  # the command never ran


def test_a_start_that_fails_leaves_no_default_log_behind(tmp_path: Any, monkeypatch: Any) -> None:
    """The default log of a session that never started, empty, was left in the temp folder for a
    week (a new user's probe); a log the user named is the user's, and stays."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, _, err = run_main(["--upstream", NO_UPSTREAM, "--port", str(port), "--", sys.executable, "-c", "pass"],
                                base_env(tmp_path))
        assert code == 2, err
        assert os.listdir(str(tmp_path / "tmp")) == []
        named = tmp_path / "mine.log"
        code, _, err = run_main(["--upstream", NO_UPSTREAM, "--port", str(port), "--log-file", str(named),
                                 "--", sys.executable, "-c", "pass"], base_env(tmp_path))
        assert code == 2 and named.exists(), err


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_a_start_interrupted_or_failing_leaves_no_default_log_behind(tmp_path: Any, monkeypatch: Any,
                                                                     failure: type) -> None:
    """Ctrl-C while the proxy starts is exit 130, and an unexpected failure of the start goes on up;
    neither leaves the empty default log that nothing named for the week-long cleanup."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()

    def start(*args: Any, **kwargs: Any) -> Any:
        raise failure()

    monkeypatch.setattr(launcher, "start", start)
    record = tmp_path / "record.json"
    argv = ["--upstream", NO_UPSTREAM, "--port", str(_free_port()), *standin(record, "--exit", "0")]
    if failure is KeyboardInterrupt:
        assert run_main(argv, base_env(tmp_path))[0] == 130
    else:
        with pytest.raises(failure):
            run_main(argv, base_env(tmp_path))
    assert os.listdir(str(tmp_path / "tmp")) == [] and not record.exists()


@pytest.mark.parametrize("where", ["no/dir/p.log", "."], ids=["no-dir", "a-directory"])
def test_a_log_file_that_cannot_be_written_is_a_bad_option(tmp_path: Any, where: str) -> None:
    port = _free_port()
    code, out, err = run_main(["--upstream", NO_UPSTREAM, "--port", str(port), "--log-file", str(tmp_path / where),
                               "--", sys.executable, "-c", "pass"], base_env(tmp_path))
    assert (code, out) == (2, ""), err
    assert_one_line(err, "--log-file")
    assert port_closed(port)


class _ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("mode", [["run"], []], ids=["run", "server"])
def test_print_config_into_a_closed_pipe_is_quiet(tmp_path: Any, mode: List[str]) -> None:
    err = io.StringIO()
    argv = mode + ["--upstream", NO_UPSTREAM, "--print-config"] + (["--", "true"] if mode else [])
    assert commands.main(argv, environ=base_env(tmp_path), stdout=_ClosedPipe(), stderr=err) == 0
    assert err.getvalue() == ""


@pytest.mark.parametrize("extra, told", [
    ({}, "a new random key each run, given to COMMAND as ANTHROPIC_AUTH_TOKEN"),
    ({"ANTHROPIC_AUTH_TOKEN": "users-own-token-0001"}, "*** (from ANTHROPIC_AUTH_TOKEN)"),
], ids=["new-key", "users-token"])
def test_runs_print_config_shows_the_key_the_session_requires(tmp_path: Any, extra: Dict[str, str], told: str) -> None:
    # "client_key": "none" said any client gets in, where run makes a key and refuses every other.
    code, out, err = run_main(["--upstream", NO_UPSTREAM, "--print-config", "--", "true"], base_env(tmp_path, **extra))
    assert code == 0, err
    assert json.loads(out)["client_key"] == told
    assert "users-own-token" not in out


def test_a_config_file_may_hold_runs_own_options(tmp_path: Any) -> None:
    log = tmp_path / "from-file.log"
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"upstream": NO_UPSTREAM, "log_file": str(log), "trust": False, "retries": 1}))
    code, out, err = run_main(["--config", str(config), "--", sys.executable, "-c", "pass"], base_env(tmp_path))
    assert code == 0, err
    assert started(err)[2] == str(log) and log.exists()


def test_a_standing_servers_host_and_port_in_the_file_are_left_to_it(tmp_path: Any) -> None:
    """One file serves both modes: a LAN server's 0.0.0.0 stopped run, which serves only its command
    (probe C). run listens on loopback, on a port of its own."""
    config = tmp_path / "lan.json"
    config.write_text(json.dumps({"upstream": NO_UPSTREAM, "host": "0.0.0.0", "port": 8095, "auth_key_env": "HOME"}))
    code, out, err = run_main(["--config", str(config), "--", sys.executable, "-c", "pass"], base_env(tmp_path))
    assert code == 0, err
    url = started(err)[0]
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":8095"), url
    # On the command line, a host that is not loopback is still refused.
    code, out, err = run_main(["--host", "0.0.0.0", "--auth-key", "client-key-0123456789", "--upstream", NO_UPSTREAM,
                               "--", "true"], base_env(tmp_path))
    assert code == 2 and "must be a loopback address" in err


@pytest.mark.parametrize("setting, what", [
    ({"log_file": "/nonexistent-claudeproxy/p.log"}, "log_file /nonexistent-claudeproxy/p.log"),
], ids=["log_file"])
def test_a_bad_setting_in_the_file_names_the_file_and_key(tmp_path: Any, setting: Dict[str, Any], what: str) -> None:
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"upstream": NO_UPSTREAM, **setting}))
    code, out, err = run_main(["--config", str(config), "--", "true"], base_env(tmp_path))
    assert (code, out) == (2, ""), err
    assert_one_line(err, f"--config {config}: {what}")
    assert "--host" not in err and "--log-file" not in err


def test_a_relative_log_file_in_the_file_starts_from_its_folder(tmp_path: Any, monkeypatch: Any) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    monkeypatch.chdir(str(tmp_path))
    config = folder / "run.json"
    config.write_text(json.dumps({"upstream": NO_UPSTREAM, "log_file": "run.log"}))
    code, out, err = run_main(["--config", str(config), "--", sys.executable, "-c", "pass"], base_env(tmp_path))
    assert code == 0, err
    assert started(err)[2] == str(folder / "run.log") and (folder / "run.log").exists()
    assert not (tmp_path / "run.log").exists()


def test_a_bad_setting_is_found_before_the_log_file_is_made(tmp_path: Any) -> None:
    log = tmp_path / "p.log"
    code, out, err = run_main(["--upstream", NO_UPSTREAM, "--ca-bundle", str(tmp_path / "none.pem"),
                               "--log-file", str(log), "--", "no-such-command-xyz"], base_env(tmp_path))
    assert (code, out) == (2, ""), err  # the setting first: not 127 for the command
    assert_one_line(err, "--ca-bundle")
    assert not log.exists()


# ---------------------------------------------------------------------------
# Claude Code's first-run state.


@pytest.fixture
def fake_claude(tmp_path: Any) -> Dict[str, str]:
    """A ``claude`` on PATH that is the stand-in (run seeds state only for Claude Code)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    claude = folder / "claude"
    claude.write_text(f"#!/bin/sh\nexec {sys.executable} {STANDIN} \"$@\"\n")
    claude.chmod(0o755)
    return base_env(tmp_path, PATH=f"{folder}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}")


def _run_claude(tmp_path: Any, env: Dict[str, str], *options: str,
                model: Optional[str] = "gpt-4.1") -> Tuple[int, str, Dict[str, Any]]:
    record = tmp_path / "record.json"
    named = ("--model", model) if model else ()  # without one, Claude Code's names go up as they are: a warning
    code, out, err = run_main(["--upstream", NO_UPSTREAM, "--log-file", str(tmp_path / "p.log"), *named, *options,
                               "--", "claude", str(record), "--exit", "0"], env)
    assert out == ""
    return code, err, recorded(record)


@pytest.mark.parametrize("args, window, cap", [
    # Claude Code's --model wins over ANTHROPIC_MODEL: the session asks for haiku, whose route is gpt-4o.
    (("--model", "haiku"), "128000", "16384"),
    (("--model=claude-haiku-4-5",), "128000", "16384"),
    (("--model", "sonnet", "-p", "hi", "--model", "haiku"), "128000", "16384"),  # the last one, as Claude Code takes it
    ((), "200000", "100000"),  # none: ANTHROPIC_MODEL (sonnet: o3)
    (("-p", "--", "--model", "haiku"), "200000", "100000"),  # after --, a prompt's words
    (("--model", ""), "200000", "100000"),  # empty: Claude Code stays on ANTHROPIC_MODEL's
    (("--model", "default"), "1047576", "32768"),  # its alias for its default model: claude-opus-5-5 (gpt-4.1)
])
def test_the_window_and_cap_follow_claude_codes_own_model_flag(tmp_path: Any, fake_claude: Dict[str, str],
                                                               args: Tuple[str, ...], window: str, cap: str) -> None:
    env = {**fake_claude, "ANTHROPIC_MODEL": "sonnet"}
    record = tmp_path / "record.json"
    code, out, err = run_main(["--upstream", NO_UPSTREAM, "--log-file", str(tmp_path / "p.log"), "--opus-model",
                               "gpt-4.1", "--sonnet-model", "o3", "--haiku-model", "gpt-4o", "--", "claude",
                               str(record), "--exit", "0", *args], env)
    assert code == 0, err
    got = recorded(record)["env"]
    assert (got["CLAUDE_CODE_AUTO_COMPACT_WINDOW"], got.get("CLAUDE_CODE_MAX_OUTPUT_TOKENS")) == (window, cap)


def test_claude_code_before_a_proxy_that_names_it_no_model_is_told_on_the_terminal(tmp_path: Any,
                                                                                   fake_claude: Dict[str, str]) -> None:
    """`run --upstream OPENAI -- claude` without --model: every call went up as claude-sonnet-5-5 and
    got the upstream's 404, and the start said nothing, as for a proxy meant for another client (probe Z, D9)."""
    code, err, _ = _run_claude(tmp_path, fake_claude, model=None)
    assert code == 0, err
    told = [line for line in err.splitlines() if "no route names a model for Claude Code" in line]
    assert len(told) == 1 and told[0].startswith("claudeproxy: warning: ") and "give --model, or routes" in told[0], err
    code, err, _ = _run_claude(tmp_path, fake_claude)
    assert code == 0 and "no route names a model" not in err, err


def test_an_empty_client_key_variable_is_as_good_as_unset_for_run(tmp_path: Any) -> None:
    """The server refuses it (it would take any client); run makes a key of its own without one, and
    refused to start over a template's empty variable (review AB F3)."""
    record = tmp_path / "record.json"
    code, out, err = run_main(["--upstream", NO_UPSTREAM, "--model", "m", "--log-file", str(tmp_path / "p.log"),
                               "--", sys.executable, STANDIN, str(record), "--exit", "0"],
                              base_env(tmp_path, CLAUDEPROXY_AUTH_KEY=""))
    assert code == 0, err
    assert recorded(record)["env"]["ANTHROPIC_AUTH_TOKEN"].startswith("cp-")


def test_another_commands_model_flag_is_not_claude_codes(run_standin: Any) -> None:
    code, err, rec = run_standin("--exit", "0", "--model", "haiku",
                                 options=("--upstream", NO_UPSTREAM, "--opus-model", "o3", "--haiku-model", "gpt-4o"))
    assert code == 0, err
    assert rec["env"]["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == "200000"  # claude-opus-5-5's route: o3


def test_a_fresh_home_gets_has_completed_onboarding(tmp_path: Any, fake_claude: Dict[str, str]) -> None:
    code, err, rec = _run_claude(tmp_path, fake_claude)
    assert code == 0, err
    state_file = os.path.join(fake_claude["HOME"], ".claude.json")
    assert recorded(state_file) == {"hasCompletedOnboarding": True}
    assert stat.S_IMODE(os.stat(state_file).st_mode) == 0o600
    assert f"claudeproxy: added hasCompletedOnboarding to {state_file}" in err.splitlines()
    assert rec["argv"][1:] == [str(tmp_path / "record.json"), "--exit", "0"]
    # Nothing to add the second time: no line, no change.
    code, err, _ = _run_claude(tmp_path, fake_claude)
    assert code == 0 and len(err.splitlines()) == 1, err


def test_existing_state_is_kept_key_by_key(tmp_path: Any, fake_claude: Dict[str, str]) -> None:
    state_file = os.path.join(fake_claude["HOME"], ".claude.json")
    mine = {"theme": "light", "numStartups": 12, "projects": {"/x": {"allowedTools": ["Bash"]}},
            "customApiKeyResponses": {"approved": [], "rejected": ["unused"]}, "note": "naïve ✓"}
    with open(state_file, "w", encoding="utf-8") as fh:
        json.dump(mine, fh)
    os.chmod(state_file, 0o640)
    code, err, _ = _run_claude(tmp_path, fake_claude)
    assert code == 0, err
    after = recorded(state_file)
    assert after == dict(mine, hasCompletedOnboarding=True)
    assert stat.S_IMODE(os.stat(state_file).st_mode) == 0o640
    assert [f for f in os.listdir(fake_claude["HOME"]) if f.startswith(".claude.json.")] == []  # no temp left


def test_a_users_false_is_not_changed(tmp_path: Any, fake_claude: Dict[str, str]) -> None:
    state_file = os.path.join(fake_claude["HOME"], ".claude.json")
    with open(state_file, "w") as fh:
        fh.write('{"hasCompletedOnboarding": false}')
    code, err, _ = _run_claude(tmp_path, fake_claude)
    assert code == 0, err
    assert read_text(state_file) == '{"hasCompletedOnboarding": false}'


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_a_state_file_that_is_not_a_json_object_is_left_alone(tmp_path: Any, fake_claude: Dict[str, str],
                                                               content: str) -> None:
    state_file = os.path.join(fake_claude["HOME"], ".claude.json")
    with open(state_file, "w") as fh:
        fh.write(content)
    code, err, _ = _run_claude(tmp_path, fake_claude)
    assert code == 0, err  # the command still runs
    assert read_text(state_file) == content
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings == [f"claudeproxy: warning: {state_file} is not a JSON object; left as it is "
                        "(first-run state not added)"]


def test_a_symlinked_state_file_stays_a_symlink(tmp_path: Any, fake_claude: Dict[str, str]) -> None:
    real = tmp_path / "dotfiles" / "claude.json"
    real.parent.mkdir()
    real.write_text('{"theme": "dark"}')
    link = os.path.join(fake_claude["HOME"], ".claude.json")
    os.symlink(str(real), link)
    code, err, _ = _run_claude(tmp_path, fake_claude)
    assert code == 0, err
    assert os.path.islink(link)
    assert json.loads(real.read_text()) == {"theme": "dark", "hasCompletedOnboarding": True}


def test_claude_config_dir_is_where_the_state_goes(tmp_path: Any, fake_claude: Dict[str, str]) -> None:
    config_dir = tmp_path / "cfg"
    code, err, _ = _run_claude(tmp_path, dict(fake_claude, CLAUDE_CONFIG_DIR=str(config_dir)))
    assert code == 0, err
    assert json.loads((config_dir / ".claude.json").read_text()) == {"hasCompletedOnboarding": True}
    assert not os.path.exists(os.path.join(fake_claude["HOME"], ".claude.json"))


def test_trust_only_with_the_flag(tmp_path: Any, fake_claude: Dict[str, str], monkeypatch: Any) -> None:
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    state_file = os.path.join(fake_claude["HOME"], ".claude.json")
    _run_claude(tmp_path, fake_claude)
    assert "projects" not in recorded(state_file)
    code, err, rec = _run_claude(tmp_path, fake_claude, "--trust")
    assert code == 0, err
    where = os.path.realpath(str(project))
    assert recorded(state_file) == {"hasCompletedOnboarding": True,
                                           "projects": {where: {"hasTrustDialogAccepted": True}}}
    assert rec["cwd"] == where


def test_other_commands_get_no_state_file(run_standin: Any, tmp_path: Any) -> None:
    code, err, rec = run_standin("--exit", "0")
    assert code == 0, err
    assert os.listdir(rec["env"]["HOME"]) == []


def test_trust_for_another_command_is_said_to_be_left_alone(run_standin: Any) -> None:
    """--trust with a command that is not Claude Code (a wrapper script) did nothing, silently (probe A)."""
    code, err, rec = run_standin("--exit", "0", options=("--upstream", NO_UPSTREAM, "--model", "gpt-4o", "--trust"))
    assert code == 0, err
    assert "--trust left alone" in err and "nothing was marked trusted" in err, err
    assert os.listdir(rec["env"]["HOME"]) == []


def test_add_first_run_state_adds_only_what_is_missing() -> None:
    state: Dict[str, Any] = {"projects": {"/p": {"hasTrustDialogAccepted": False}}}
    assert claude_code.add_first_run_state(state, "/p") == ["hasCompletedOnboarding"]
    assert state == {"projects": {"/p": {"hasTrustDialogAccepted": False}}, "hasCompletedOnboarding": True}
    odd: Dict[str, Any] = {"hasCompletedOnboarding": True, "projects": "not a map"}
    assert claude_code.add_first_run_state(odd, "/p") == []
    assert odd == {"hasCompletedOnboarding": True, "projects": "not a map"}


# ---------------------------------------------------------------------------
# Windows: the paths chosen when os.name is "nt" (run here on POSIX).


def test_on_windows_nothing_is_forwarded_and_ctrl_c_is_outlived() -> None:
    assert launcher.signal_plan(True) == launcher.SignalPlan((), ("SIGINT", "SIGBREAK"))
    assert launcher.signal_plan(False) == launcher.SignalPlan(("SIGTERM", "SIGHUP"), ("SIGINT", "SIGQUIT"))


def test_run_picks_the_plan_by_os_name(monkeypatch: Any) -> None:
    chosen: List[bool] = []
    monkeypatch.setattr(launcher, "signal_plan", lambda windows: chosen.append(windows) or
                        launcher.SignalPlan((), ()))
    for name in ("nt", "posix"):
        monkeypatch.setattr(launcher.os, "name", name)
        try:
            launcher.run_command([sys.executable, "-c", "pass"], dict(os.environ), launcher.on_windows(),
                                 io.StringIO())
        finally:
            monkeypatch.setattr(launcher.os, "name", "posix")
    assert chosen == [True, False]


def test_a_signal_this_os_lacks_is_skipped() -> None:
    before = signal.getsignal(signal.SIGINT)
    with launcher.SignalRelay(launcher.SignalPlan(("SIGNOPE",), ("SIGBREAK", "SIGINT"))) as relay:
        assert list(relay.previous) == ([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else []) + [signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) is launcher._outlive
    assert signal.getsignal(signal.SIGINT) is before


def test_a_keyboard_interrupt_while_waiting_is_for_the_command() -> None:
    class Proc:
        calls = 0

        def wait(self) -> int:
            self.calls += 1
            if self.calls == 1:
                raise KeyboardInterrupt  # Windows: Ctrl-C reached the launcher too
            return 3

    proc = Proc()
    assert launcher.wait_for(proc) == 3 and proc.calls == 2


def test_exit_status_of_a_signal_is_128_plus_n() -> None:
    assert [launcher.exit_status(c) for c in (0, 7, -15, -2, 255)] == [0, 7, 143, 130, 255]


def _npm_prefix(tmp_path: Any, with_exe: bool) -> str:
    prefix = tmp_path / "npm"
    prefix.mkdir()
    (prefix / "claude.cmd").write_text("@ECHO off\r\n")
    if with_exe:
        exe = prefix / "node_modules" / "@anthropic-ai" / "claude-code" / "bin" / "claude.exe"
        exe.parent.mkdir(parents=True)
        exe.write_bytes(b"MZ")
    return str(prefix)


def test_on_windows_npm_claude_cmd_is_resolved_to_the_real_exe(tmp_path: Any) -> None:
    prefix = _npm_prefix(tmp_path, with_exe=True)
    shim = os.path.join(prefix, "claude.cmd")
    seen: List[Any] = []

    def which(name: str, path: Optional[str] = None) -> str:
        seen.append((name, path))
        return shim

    exe = os.path.join(prefix, "node_modules", "@anthropic-ai", "claude-code", "bin", "claude.exe")
    assert launcher.find_command("claude", r"C:\npm;C:\Windows", True, which) == exe
    assert seen == [("claude", r"C:\npm;C:\Windows")]
    assert launcher.find_command("claude", None, False, which) == shim  # POSIX: never rewritten
    assert claude_code.looks_like_claude(exe) and claude_code.looks_like_claude(shim)


def test_on_windows_a_shim_without_the_exe_is_run_as_found(tmp_path: Any) -> None:
    prefix = _npm_prefix(tmp_path, with_exe=False)
    shim = os.path.join(prefix, "claude.cmd")
    assert launcher.find_command("claude", None, True, lambda n, path=None: shim) == shim
    other = os.path.join(prefix, "other.cmd")
    assert launcher.npm_shim_target(other) is None


def test_on_windows_the_state_file_is_under_userprofile() -> None:
    env = {"HOME": "/home/u", "USERPROFILE": r"C:\Users\u"}
    assert claude_code.config_file(env, True) == os.path.join(r"C:\Users\u", ".claude.json")
    assert claude_code.config_file(env, False) == "/home/u/.claude.json"
    assert claude_code.config_file({"CLAUDE_CONFIG_DIR": "~/cfg", "HOME": "/h"}, False) == "/h/cfg/.claude.json"
    assert claude_code.config_file({}, False) is None


def test_looks_like_claude() -> None:
    yes = ["claude", "/usr/local/bin/claude", r"C:\npm\claude.CMD", r"C:\x\bin\claude.exe", "./claude"]
    no = ["claude-code", "npx", "/usr/bin/env", "claudeproxy", "my-claude", "claude.sh"]
    assert [claude_code.looks_like_claude(p) for p in yes] == [True] * len(yes)
    assert [claude_code.looks_like_claude(p) for p in no] == [False] * len(no)


# ---------------------------------------------------------------------------
# Help.


def test_help_ends_with_the_recipe() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["--help"], environ={}, stdout=out, stderr=err) == 0
    assert out.getvalue().splitlines()[-3:] == [
        # From a checkout (the README's first line) there is no claudeproxy command, only python3 -m.
        "Run Claude Code through it in one step:  python3 -m claudeproxy run --upstream URL --model NAME -- claude",
        "Or by hand:  ANTHROPIC_BASE_URL=http://127.0.0.1:8082 ANTHROPIC_AUTH_TOKEN=<--auth-key or any> "
        "CLAUDE_CODE_AUTO_MODE_SERVER=0 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 claude",
        "With HTTP(S)_PROXY set, also add 127.0.0.1,localhost to NO_PROXY and no_proxy (run does), or Claude Code "
        "sends its calls to that proxy",
    ]
    assert "ANTHROPIC_API_KEY" not in out.getvalue()


@pytest.mark.parametrize("argv", [["--port", "9123", "--help"], ["--help", "--port=9123"]])
def test_help_shows_the_port_given(argv: List[str]) -> None:
    out = io.StringIO()
    assert cli.main(argv, environ={}, stdout=out, stderr=io.StringIO()) == 0
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:9123 " in out.getvalue().splitlines()[-2]


def test_run_help_lists_what_the_launcher_sets() -> None:
    code, out, err = run_main(["--help"], {})
    assert (code, err) == (0, "")
    assert out.startswith("usage: claudeproxy run [proxy options] -- COMMAND [ARGS...]\n")
    for name, value, _ in claude_code.VARIABLES:
        assert f"  {name}: " in out, name
    assert "  CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: 1\n" in out
    assert "  CLAUDE_CODE_AUTO_MODE_SERVER: 0\n" in out
    assert "  DISABLE_AUTOUPDATER: 1\n" in out
    removed = out[out.index("Removed from COMMAND's environment:"):]
    for name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_UNIX_SOCKET", "CLAUDE_CODE_USE_BEDROCK"):
        assert name in removed
    assert "hasCompletedOnboarding" in out and "--trust" in out and "--log-file" in out
    assert re.search(r"--port PORT\s+listen port, 0 = any free port \(default: 0\)", out), out
    assert all(len(line) <= 120 for line in out.splitlines())


# ---------------------------------------------------------------------------
# The README stays true.


def _readme() -> str:
    return read_text(os.path.join(ROOT, "README.md"))


def test_the_readmes_first_commands_are_run_and_the_ci_test_command() -> None:
    text = _readme()
    block = text[text.index("```sh\n") + 6:text.index("```", text.index("```sh\n") + 6)].splitlines()
    assert len(block) == 2, block
    argv = block[0].split()
    assert argv[:4] == ["python3", "-m", "claudeproxy", "run"]
    ns, config, command = launcher.parse_run(argv[4:], {"OPENAI_API_KEY": "sk-test"}, io.StringIO())
    assert command == ["claude"] and config.model == "gpt-4.1" and config.token() == "sk-test"
    assert block[1] == ("python3 -m venv --system-site-packages .venv && .venv/bin/python -m pip install pytest "
                        "&& .venv/bin/python -m pytest")
    ci = read_text(os.path.join(ROOT, ".ci", "run"))
    readme_tests = ci[ci.index("readme_tests() {"):ci.index("\n}\n", ci.index("readme_tests() {"))]
    assert readme_tests.splitlines()[-1].strip() == block[1]


def test_the_readme_lists_every_variable_run_sets_and_removes() -> None:
    text = _readme()
    section = text[text.index("## Use with Claude Code"):text.index("## One file")]
    for name, _, _ in claude_code.VARIABLES:
        assert f"| `{name}` |" in section, name
    for names, _ in claude_code.DROPPED:
        assert f"`{names[0]}`" in section, names[0]
    assert "hasCompletedOnboarding" in section and "--trust" in section


# ---------------------------------------------------------------------------
# The default log file, in the shared temp folder.


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="POSIX temp-folder semantics")
def test_a_planted_log_file_or_link_is_never_written_through(tmp_path: Any, monkeypatch: Any) -> None:
    # Another user can create /tmp/claudeproxy-<pid>.log first: a link would make the proxy append
    # to a file of the attacker's choosing, a file would keep the attacker's mode.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    os.symlink(str(victim), str(tmp_path / "claudeproxy-4242.log"))
    stream, path = launcher.open_log(None, 4242)
    with stream:
        stream.write("proxy line\n")
    assert victim.read_text() == "keep me\n"
    assert path != str(tmp_path / "claudeproxy-4242.log") and os.path.basename(path).startswith("claudeproxy-4242")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, encoding="utf-8") as fh:
        assert fh.read() == "proxy line\n"


def test_the_default_log_file_is_new_and_private(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stream, path = launcher.open_log(None, 4243)
    stream.close()
    assert path == str(tmp_path / "claudeproxy-4243.log")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def _dead_pid() -> int:
    """The pid of a process that has ended (and not been reused within this test)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(30)
    return child.pid


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="POSIX temp-folder semantics")
def test_a_start_deletes_only_its_users_own_default_logs_left_for_a_week(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    week_ago = time.time() - 8 * 86400

    def file(name: str, old: bool = True) -> Any:
        path = tmp_path / name
        path.write_text("a session's lines\n")
        if old:
            os.utime(str(path), (week_ago, week_ago))
        return path

    dead = [_dead_pid(), _dead_pid()]
    stale = [file(f"claudeproxy-{dead[0]}.log"), file(f"claudeproxy-{dead[1]}-k2j_x9q.log"),
             file(f"claudeproxy-{os.getpid()}-old.log")]  # an earlier process's, with the same pid
    kept = [file("claudeproxy-102.log", old=False), file("claudeproxy-103.log.1"), file("claudeproxy-notes.log"),
            file("my-claudeproxy-104.log"), file("victim.txt"),
            file(f"claudeproxy-{os.getppid()}-idle.log")]  # a session still running, idle for a week
    os.symlink(str(tmp_path / "victim.txt"), str(tmp_path / "claudeproxy-105.log"))
    os.utime(str(tmp_path / "claudeproxy-105.log"), (week_ago, week_ago), follow_symlinks=False)
    stream, path = launcher.open_log(None, 4245)
    stream.close()
    assert [p.exists() for p in stale] == [False, False, False]
    assert all(p.exists() for p in kept) and os.path.exists(path)
    assert os.path.islink(str(tmp_path / "claudeproxy-105.log")), "a link is never followed nor removed"
    assert (tmp_path / "victim.txt").read_text() == "a session's lines\n"


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to make another user's file")
def test_another_users_old_log_is_left_alone(tmp_path: Any) -> None:
    other = tmp_path / f"claudeproxy-{_dead_pid()}.log"
    other.write_text("theirs\n")
    os.chown(str(other), 65534, 65534)
    os.utime(str(other), (0, 0))
    assert launcher.prune_temp_logs(str(tmp_path), time.time()) == 0 and other.exists()


def test_a_log_file_moved_away_goes_on_under_its_name(tmp_path: Any) -> None:
    """logrotate moves the log (or a user deletes it): the lines after that go to a new file under
    the name, private as the first; nothing more goes into the rotated one."""
    name = str(tmp_path / "proxy.log")
    stream, path = launcher.open_log(name, 4244)
    try:
        stream.write("before\n")
        os.rename(name, name + ".1")
        stream.write("after the move\n")
        os.unlink(name)
        stream.write("after the delete\n")
        stream.write("and on\n")
    finally:
        stream.close()
    assert path == name
    with open(name + ".1", encoding="utf-8") as fh:
        assert fh.read() == "before\n"
    with open(name, encoding="utf-8") as fh:
        assert fh.read() == "after the delete\nand on\n"
    assert stat.S_IMODE(os.stat(name).st_mode) == 0o600


@pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="a platform without O_NOFOLLOW")
def test_a_link_put_under_the_log_files_name_is_not_followed(tmp_path: Any) -> None:
    """Probe AI 4: after a rotation the name is opened again; a link another user put there was
    followed. The lines go on into the file the log had (until the name is a file again)."""
    name, victim = str(tmp_path / "proxy.log"), tmp_path / "bashrc"
    victim.write_text("# mine\n")
    stream, _ = launcher.open_log(name, 4245)
    try:
        stream.write("before\n")
        os.rename(name, name + ".1")
        os.symlink(str(victim), name)
        stream.write("after the link\n")
    finally:
        stream.close()
    assert victim.read_text() == "# mine\n"
    with open(name + ".1", encoding="utf-8") as fh:
        assert fh.read() == "before\nafter the link\n"


STOP_UNDER_FIRE = """
import os, signal, sys, types
from claudeproxy import launcher
def shutdown():  # a drain that a second SIGTERM and SIGHUP reach
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGHUP)
    print("drained", flush=True)
launcher.stop_outliving_signals(types.SimpleNamespace(shutdown=shutdown), False)
print("stopped", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
"""


def test_a_second_signal_while_the_proxy_drains_does_not_kill_run() -> None:
    """After the command exited, run put the default handlers back and then drained the calls in
    flight: a second SIGTERM or SIGHUP then killed it, the streams cut with no error event and no
    record (a probe). The drain outlives them; the handlers are put back after it."""
    done = subprocess.run([sys.executable, "-c", STOP_UNDER_FIRE], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout.split()) == (0, ["drained", "stopped", "True"]), done.stderr


def test_options_before_run_are_said_to_go_after_it(tmp_path: Any) -> None:
    """argparse said "unrecognized arguments: run -- true" (probe C)."""
    out, err = io.StringIO(), io.StringIO()
    code = commands.main(["--upstream", NO_UPSTREAM, "run", "--", "true"], environ=base_env(tmp_path), stdout=out, stderr=err)
    assert (code, out.getvalue()) == (2, "")
    assert err.getvalue() == "claudeproxy: error: run comes first: claudeproxy run [options] -- COMMAND\n"


def test_the_saved_model_is_read_as_claude_code_reads_its_settings(tmp_path: Any) -> None:
    """Review AO 7: a settings file nested too deep ended `run` with a traceback; a FIFO in its
    place would hang it; a settings file's env ANTHROPIC_MODEL (which Claude Code applies) wins over
    its model."""
    assert claude_code.saved_model(["[" * 100000, '{"model": "sonnet"}']) == "sonnet"
    assert claude_code.saved_model(['{"model": "sonnet", "env": {"ANTHROPIC_MODEL": "haiku"}}']) == "haiku"
    assert claude_code.saved_model(['{"env": "x", "model": " opus "}', '{"model": "haiku"}']) == "opus"
    # A lower file's env beats a higher file's model: Claude Code's environment wins (review AQ 4).
    assert claude_code.saved_model(['{"model": "sonnet"}', '{"env": {"ANTHROPIC_MODEL": "opus"}}']) == "opus"
    assert claude_code.saved_model([None, "", "[1]", '{"model": 5}']) is None
    fifo = tmp_path / "settings.json"
    os.mkfifo(str(fifo))
    started = time.monotonic()
    assert launcher._settings_text(str(fifo)) is None  # noqa: SLF001
    assert time.monotonic() - started < 2
    assert launcher._settings_text(str(tmp_path)) is None  # noqa: SLF001  # a folder
    regular = tmp_path / "s.json"
    regular.write_bytes(b'{"model": "caf\xe9"}')  # not UTF-8: read, as Claude Code would not choke
    assert launcher._settings_text(str(regular)) == '{"model": "caf\ufffd"}'  # noqa: SLF001
