"""One file: ``python -m claudeproxy.zipapp OUT`` builds a .pyz that behaves like the package.

On the oldest and the newest supported Python (an interpreter that is not
installed is skipped): build it in a temp folder, run it from there with
nothing of the checkout on the path, answer a request (the quota probe, which
needs no upstream), stop on SIGTERM, and launch a command through ``run``.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import zipfile
from typing import Any, Dict, List

import pytest

from conftest import ROOT, quota_probe, request
from fakes import closing_listener

STANDIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standin_command.py")
# The oldest and the newest supported Python; the running one when neither is installed here.
PYTHONS = {
    "3.8": "/root/.pyenv/versions/3.8.18/bin/python",
    "3.13": "/root/.pyenv/versions/3.13.0/bin/python",
}
if not any(os.access(p, os.X_OK) for p in PYTHONS.values()):
    PYTHONS["this"] = sys.executable
TIMEOUT = 30.0


def clean_env(**extra: str) -> Dict[str, str]:
    """No PYTHONPATH (the archive must carry the package itself) and nothing of the user's keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "OPENAI_", "CLAUDEPROXY_", "ANTHROPIC_"))}
    env.update(extra)
    return env


@pytest.fixture(params=sorted(PYTHONS), scope="module")
def pyz(request: Any, tmp_path_factory: Any) -> Dict[str, str]:
    python = PYTHONS[request.param]
    if not os.access(python, os.X_OK):
        pytest.skip(f"Python {request.param} is not installed at {python}")
    folder = tmp_path_factory.mktemp(f"pyz-{request.param}")
    out = os.path.join(str(folder), "claudeproxy.pyz")
    built = subprocess.run([python, "-m", "claudeproxy.zipapp", out], cwd=ROOT, env=clean_env(),
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith(f"wrote {out} (")
    return {"python": python, "path": out, "folder": str(folder)}


def run_pyz(pyz: Dict[str, str], *argv: str, **kw: Any) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([pyz["python"], pyz["path"], *argv], cwd=pyz["folder"], env=kw.pop("env", clean_env()),
                          capture_output=True, text=True, timeout=TIMEOUT, **kw)


def test_the_archive_holds_the_package_and_a_main(pyz: Dict[str, str]) -> None:
    with zipfile.ZipFile(pyz["path"]) as archive:
        names = archive.namelist()
        main = archive.read("__main__.py").decode("utf-8")
    package = sorted(os.path.relpath(os.path.join(d, f), ROOT).replace(os.sep, "/")
                     for d, _, files in os.walk(os.path.join(ROOT, "claudeproxy")) for f in files if f.endswith(".py"))
    assert sorted(n for n in names if n.endswith(".py") and n != "__main__.py") == package
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    # The proxy's own process, as python -m claudeproxy runs it (fewer malloc arenas, then main()).
    assert "from claudeproxy.commands import process_main" in main and "sys.exit(process_main())" in main
    with open(pyz["path"], "rb") as fh:
        assert fh.readline() == b"#!/usr/bin/env python3\n"


def test_it_answers_like_the_package(pyz: Dict[str, str]) -> None:
    version = run_pyz(pyz, "--version")
    assert (version.returncode, version.stderr) == (0, "")
    assert re.match(r"^claudeproxy \d+\.\d+\.\d+\n$", version.stdout)
    helped = run_pyz(pyz, "--help")
    from_package = subprocess.run([pyz["python"], "-m", "claudeproxy", "--help"], cwd=ROOT, env=clean_env(),
                                  capture_output=True, text=True, timeout=TIMEOUT)
    # The same, but for how the recipe at the end says to start it (probe Z: "python3 -m claudeproxy" is
    # no module where only the one file is).
    mine = from_package.stdout.replace("python3 -m claudeproxy run", f"python3 {pyz['path']} run")
    assert helped.returncode == 0 and helped.stdout == mine and mine != from_package.stdout
    bad = run_pyz(pyz, "--upstream", "nope")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1


def test_it_serves_a_request_and_stops_on_sigterm(pyz: Dict[str, str]) -> None:
    proc = subprocess.Popen([pyz["python"], pyz["path"], "--port", "0", "--upstream", "http://127.0.0.1:9/v1"],
                            cwd=pyz["folder"], env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        assert ready, "the proxy printed nothing in time"
        line = proc.stdout.readline()  # type: ignore[union-attr]
        match = re.match(r"^claudeproxy listening on (http://127\.0\.0\.1:\d+) -> http://127\.0\.0\.1:9/v1$", line)
        assert match, line
        resp = request(match.group(1), "POST", "/v1/messages", quota_probe())
        assert resp.status == 200, resp
        assert resp.json["content"] == [{"type": "text", "text": "ok"}]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_run_works_through_the_archive(pyz: Dict[str, str], tmp_path: Any) -> None:
    record = tmp_path / "record.json"
    log = tmp_path / "proxy.log"
    done = run_pyz(pyz, "run", "--upstream", f"http://127.0.0.1:{closing_listener()}/v1", "--model", "gpt-4o",
                   "--log-file", str(log),
                   "--", pyz["python"], STANDIN, str(record), "--probe", "--exit", "5")
    assert done.returncode == 5, done.stderr
    lines: List[str] = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("claudeproxy: proxy on http://127.0.0.1:"), done.stderr
    with open(str(record), encoding="utf-8") as fh:
        got = json.load(fh)
    assert got["with_token"]["status"] == 200
    assert got["env"]["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == "128000"
    assert "route * -> upstream/gpt-4o" in log.read_text()


# Pythons below the supported range, where this machine has them (pyenv keeps 3.6 and 3.7 here).
TOO_OLD = [p for p in ("/root/.pyenv/versions/3.7.16/bin/python", "/root/.pyenv/versions/3.6.15/bin/python")
           if os.access(p, os.X_OK)]


@pytest.mark.skipif(not TOO_OLD, reason="no Python older than 3.8 is installed here")
@pytest.mark.parametrize("old", TOO_OLD)
def test_an_older_python_gets_one_line_not_a_traceback(pyz: Dict[str, str], old: str) -> None:
    ran = run_pyz(dict(pyz, python=old), "--version")
    assert ran.returncode == 2 and ran.stdout == ""
    assert ran.stderr.startswith("claudeproxy: error: claudeproxy needs Python 3.8 or newer; this is Python 3.")
    assert len(ran.stderr.splitlines()) == 1, ran.stderr
