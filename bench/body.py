"""The bench's request: a ~20 KB Messages request shaped like Claude Code's (reads one fixture file, no other I/O).

It starts from a real first turn of Claude Code 2.1.331 kept in the tests
(system blocks with ``cache_control``, the billing line, a mid-conversation
``system`` message, 12 tools with JSON schemas, adaptive thinking, metadata) and
continues the conversation with tool rounds the way Claude Code records them (an
assistant text plus a ``tool_use``, then a user ``tool_result`` holding a file as the
Read tool prints it, or command output) until the body passes ``TARGET_BYTES``. Only
the last block carries ``cache_control``, as Claude Code sends it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "requests", "claude_code_2_1_331_first.anthropic.json")
TARGET_BYTES = 20000
WORKDIR = "/tmp/cc-run-7f3a"

SOURCE = '''import json
from dataclasses import dataclass
from typing import Any, Dict


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    timeout: float


def load_settings(path: str) -> Settings:
    """Read the JSON settings file and check every field."""
    with open(path, encoding="utf-8") as fh:
        raw: Dict[str, Any] = json.load(fh)
    unknown = set(raw) - {"host", "port", "timeout"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    return Settings(str(raw["host"]), int(raw["port"]), float(raw.get("timeout", 30)))
'''

TEST_OUTPUT = '''============================= test session starts ==============================
platform linux -- Python 3.11.7, pytest-8.3.3, pluggy-1.5.0
rootdir: /tmp/cc-run-7f3a
collected 14 items

tests/test_settings.py ........                                          [ 57%]
tests/test_cli.py ....F.                                                 [100%]

=================================== FAILURES ===================================
_____________________________ test_port_out_of_range ___________________________
    def test_port_out_of_range(tmp_path):
        path = tmp_path / "s.json"
        path.write_text('{"host": "x", "port": 70000}')
>       with pytest.raises(ValueError):
E       Failed: DID NOT RAISE <class 'ValueError'>
tests/test_cli.py:41: Failed
========================= 1 failed, 13 passed in 0.21s =========================
'''


def _read_output(round_no: int) -> str:
    """A file as Claude Code's Read tool returns it: numbered lines."""
    lines = SOURCE.replace("Settings", f"Settings{round_no}").splitlines()
    return "\n".join(f"{i + 1:>6}\u2192{line}" for i, line in enumerate(lines))


def _round(round_no: int) -> List[Dict[str, Any]]:
    """One tool round: the assistant's call, then the user's tool_result."""
    tool_id = f"toolu_01Bench{round_no:04d}XFDUDYJgAACzvnpt"
    if round_no % 2:
        call = {"name": "Bash", "input": {"command": "python -m pytest -q", "description": "Run the tests"}}
        result = TEST_OUTPUT
        text = "Let me run the test suite to see where it stands."
    else:
        call = {"name": "Read", "input": {"file_path": f"{WORKDIR}/settings_{round_no}.py"}}
        result = _read_output(round_no)
        text = "I'll read the settings module first."
    return [
        {"role": "assistant", "content": [{"type": "text", "text": text},
                                          {"type": "tool_use", "id": tool_id, **call}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": result}]},
    ]


def claude_code_request(model: str, stream: bool) -> Dict[str, Any]:
    """The request, with ``model`` and ``stream`` set; at least ``TARGET_BYTES`` long as JSON."""
    with open(FIXTURE, encoding="utf-8") as fh:
        req = json.load(fh)
    req["model"], req["stream"] = model, stream
    messages = req["messages"]
    for message in messages:  # Claude Code moves the one marker to the newest block
        for block in message["content"] if isinstance(message["content"], list) else ():
            block.pop("cache_control", None)
    round_no = 0
    while len(json.dumps(req)) < TARGET_BYTES:
        round_no += 1
        messages.extend(_round(round_no))
    messages.append({"role": "user", "content": [
        {"type": "text", "text": "The port check is missing; add it and make the test pass.",
         "cache_control": {"type": "ephemeral"}}]})
    return req
