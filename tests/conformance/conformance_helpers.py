"""Helpers for the conformance tier: real clients (anthropic SDK, Claude Code) and the OpenAI schema.

Nothing here imports a third-party package at module level, so the test
modules can ``pytest.importorskip`` what they need and skip cleanly.

- ``ScriptedUpstream``: a ``FakeUpstream`` that answers by looking at each
  request (a tiny scripted "model"), for clients that decide on their own what
  to send next (Claude Code).
- ``openai_problems``: everything wrong with an upstream request body, by the
  OpenAI JSON schema (a copy lives beside this file) plus the rules OpenAI
  enforces that a schema cannot express (tool messages answer tool calls,
  no empty ``tools``, function-name pattern, no unknown top-level fields).
- ``accumulate_chunks``: the ChatCompletion that a list of ChatCompletionChunk
  objects describes, written from OpenAI's chunk semantics, so a stream fixture
  can also be served as the equivalent non-streaming answer.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from fakes import FakeUpstream, Recorded, Reply

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
ROOT = os.path.dirname(TESTS)
FIXTURES = os.path.join(TESTS, "fixtures")
SCHEMA_PATH = os.path.join(HERE, "openai-chat-request.schema.json")
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

Script = Callable[[Recorded], Reply]


# ----------------------------------------------------------------------
# A fake upstream that answers by looking at the request.


class _ThreadRecords(list):  # type: ignore[type-arg]
    """The fake's request list; also remembers, per handler thread, the request it just appended.

    The fake's handler appends each request and then asks ``next_reply()`` in the
    same thread, so the script sees exactly the request it answers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def append(self, rec: Recorded) -> None:  # type: ignore[override]
        self.local.last = rec
        super().append(rec)


class ScriptedUpstream(FakeUpstream):
    """``script(recorded_request) -> Reply`` decides every answer; requests are recorded as usual."""

    def __init__(self, script: Script) -> None:
        super().__init__()
        self.script = script
        self.requests = _ThreadRecords()

    def next_reply(self) -> Reply:
        rec = getattr(self.requests.local, "last", None)  # type: ignore[attr-defined]
        if rec is None:
            return super().next_reply()
        self.requests.local.last = None  # type: ignore[attr-defined]
        return self.answer(rec)

    def answer(self, rec: Recorded) -> Reply:
        try:
            return self.script(rec)
        except Exception as exc:  # a broken script must show up in the test, not hang the client
            body = json.dumps({"error": {"message": f"fake script failed: {exc!r}", "type": "fake"}})
            return Reply(500, (("Content-Type", "application/json"),), [body.encode("utf-8")])

    def chat_bodies(self) -> List[Dict[str, Any]]:
        return [r.json for r in list(self.requests) if r.path.endswith("/chat/completions")]


# ----------------------------------------------------------------------
# The OpenAI request schema and the rules beyond it.


def load_schema() -> Dict[str, Any]:
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return json.load(fh)


_VALIDATOR: List[Any] = []


def schema_validator() -> Any:
    """A jsonschema validator for the request schema (checked once, then cached)."""
    if not _VALIDATOR:
        import jsonschema

        schema = load_schema()
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        _VALIDATOR.append(cls(schema))
    return _VALIDATOR[0]


def _properties(node: Any, defs: Dict[str, Any], seen: Tuple[str, ...] = ()) -> List[str]:
    """Property names a schema node allows, following ``$ref`` and ``allOf``."""
    if not isinstance(node, dict):
        return []
    names = list(node.get("properties", {}))
    ref = node.get("$ref", "")
    if ref.startswith("#/$defs/") and ref not in seen:
        names += _properties(defs[ref[len("#/$defs/"):]], defs, seen + (ref,))
    for part in node.get("allOf", []):
        names += _properties(part, defs, seen)
    return names


def request_fields() -> List[str]:
    """Top-level fields of CreateChatCompletionRequest (OpenAI rejects any other)."""
    schema = load_schema()
    return sorted(set(_properties(schema, schema["$defs"])))


def schema_errors(body: Any) -> List[str]:
    errors = sorted(schema_validator().iter_errors(body), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message[:300]}" for e in errors]


def _tool_order_problems(messages: List[Any]) -> List[str]:
    """Every assistant tool call answered by a tool message right after it; no stray tool messages."""
    problems: List[str] = []
    pending: List[str] = []
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role == "tool":
            if msg.get("tool_call_id") not in pending:
                problems.append(f"messages/{i}: tool message {msg.get('tool_call_id')!r} answers no pending tool call")
            else:
                pending.remove(msg["tool_call_id"])
            continue
        if pending:
            problems.append(f"messages/{i}: {role} message while tool calls {pending} are unanswered")
            pending = []
        if role == "assistant":
            pending = [c.get("id") for c in msg.get("tool_calls") or []]
    if pending:
        problems.append(f"the conversation ends with unanswered tool calls {pending}")
    return problems


def _tool_problems(body: Dict[str, Any]) -> List[str]:
    problems: List[str] = []
    if "tools" in body and not body["tools"]:
        problems.append("tools: empty list (OpenAI rejects it; omit the key)")
    if "tool_choice" in body and not body.get("tools"):
        problems.append("tool_choice without tools")
    if "parallel_tool_calls" in body and not body.get("tools"):
        problems.append("parallel_tool_calls without tools")
    names = [t.get("function", {}).get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
    for msg in body.get("messages") or []:
        for call in (msg.get("tool_calls") or []) if isinstance(msg, dict) else []:
            names.append(call.get("function", {}).get("name"))
    problems += [f"function name {n!r} does not match {FUNCTION_NAME.pattern}" for n in names
                 if not FUNCTION_NAME.match(str(n))]
    return problems


def openai_problems(body: Any, strict_fields: bool = True) -> List[str]:
    """Everything OpenAI would reject in ``body`` (empty list when it is acceptable)."""
    problems = schema_errors(body)
    if not isinstance(body, dict):
        return problems
    if strict_fields:
        known = set(request_fields())
        problems += [f"unknown top-level field {k!r}" for k in body if k not in known]
    problems += _tool_problems(body)
    if isinstance(body.get("messages"), list):
        problems += _tool_order_problems(body["messages"])
    if "stream_options" in body and not body.get("stream"):
        problems.append("stream_options without stream: true")
    return problems


# ----------------------------------------------------------------------
# OpenAI stream fixtures.


def sse_events(raw: bytes) -> Iterator[Tuple[str, str]]:
    """(event name, data) of each event in an SSE body (WHATWG line rules, enough for fixtures)."""
    text = raw.decode("utf-8")
    name = ""
    data: List[str] = []
    for line in re.split(r"\r\n|\r|\n", text) + [""]:
        if line == "":
            if data:
                yield name, "\n".join(data)
            name, data = "", []
        elif line.startswith("data:"):
            data.append(line[5:][1:] if line[5:].startswith(" ") else line[5:])
        elif line.startswith("event:"):
            name = line[6:].strip()


def stream_chunks(raw: bytes) -> List[Dict[str, Any]]:
    """The JSON objects of an OpenAI stream, up to ``[DONE]``; non-JSON data is skipped."""
    out = []
    for _, data in sse_events(raw):
        if data.startswith("[DONE]"):
            break
        try:
            obj = json.loads(data)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def ends_normally(raw: bytes) -> bool:
    """No ``event: error``, no error object, no ``finish_reason: "error"``: a whole answer."""
    if any(name == "error" for name, _ in sse_events(raw)):
        return False
    chunks = stream_chunks(raw)
    for c in chunks:
        if "error" in c:
            return False
        for choice in c.get("choices") or []:
            if isinstance(choice, dict) and choice.get("finish_reason") == "error":
                return False
    return bool(chunks)


class _ToolCall:
    def __init__(self, index: Optional[int]) -> None:
        self.index = index
        self.id = ""
        self.name = ""
        self.args = ""
        self.extra: Dict[str, Any] = {}  # provider state such as Gemini's extra_content.google.thought_signature


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _add_arguments(tool: _ToolCall, fragment: Any) -> None:
    """Append, ignore a repeat of the whole, or take a cumulative resend (PROTOCOL.md 3.4 step 7)."""
    if isinstance(fragment, dict):
        fragment = json.dumps(fragment)
    if not isinstance(fragment, str) or not fragment:
        return
    buf = tool.args
    if buf and (fragment == buf or (_parses(buf) and _parses(fragment) and json.loads(buf) == json.loads(fragment))):
        return
    # A fragment that repeats everything so far and adds to it is a cumulative snapshot, even when the
    # snapshot is not yet complete JSON (PROTOCOL.md only names the complete case; a one-character
    # buffer such as "{" is too short to tell).
    if buf and fragment.startswith(buf) and (len(buf) >= 2 or _parses(fragment)):
        tool.args = fragment
        return
    tool.args += fragment


def _find_tool(tools: List[_ToolCall], entry: Dict[str, Any]) -> _ToolCall:
    """Which call a fragment belongs to: by id, then by index, then by position."""
    tid = entry.get("id") or ""
    index = entry.get("index")
    fn = entry.get("function") or {}
    if tid:
        for tool in tools:
            if tool.id == tid:
                return tool
    if isinstance(index, int) and not isinstance(index, bool):
        same = [t for t in tools if t.index == index]
        if same and (not tid or not same[-1].id):
            return same[-1]
        tools.append(_ToolCall(index))
        return tools[-1]
    last = tools[-1] if tools else None
    if tid or last is None or (fn.get("name") and last.name and _parses(last.args)):
        tools.append(_ToolCall(None))
        return tools[-1]
    return last


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p.get("text") or "" for p in value if isinstance(p, dict) and p.get("type", "text") == "text")
    return ""


def _reasoning_of(delta: Dict[str, Any]) -> str:
    for key in ("reasoning_content", "reasoning"):
        if isinstance(delta.get(key), str) and delta[key]:
            return delta[key]
    details = delta.get("reasoning_details")
    if isinstance(details, list):
        return "".join(d.get("text") or d.get("summary") or "" for d in details if isinstance(d, dict))
    return ""


class _Accumulator:
    def __init__(self) -> None:
        self.content: List[str] = []
        self.reasoning: List[str] = []
        self.reasoning_details: List[Any] = []  # OpenRouter's: the whole list a JSON answer carries
        self.refusal: List[str] = []
        self.tools: List[_ToolCall] = []
        self.usage: Optional[Dict[str, Any]] = None
        self.choice_extra: Dict[str, Any] = {}
        self.finish: Optional[str] = None
        self.envelope: Dict[str, Any] = {}

    def feed(self, c: Dict[str, Any]) -> None:
        for key in ("id", "model", "created"):
            self.envelope.setdefault(key, c.get(key))
        usage = c.get("usage") or (c.get("x_groq") or {}).get("usage")
        if isinstance(usage, dict) and ("prompt_tokens" in usage or "completion_tokens" in usage):
            self.usage = usage
        choices = [ch for ch in c.get("choices") or [] if isinstance(ch, dict) and ch.get("index", 0) == 0]
        if not choices:
            return
        choice = choices[0]
        delta = choice.get("delta") or choice.get("message") or {}
        self.reasoning.append(_reasoning_of(delta))
        if isinstance(delta.get("reasoning_details"), list):
            self.reasoning_details += delta["reasoning_details"]
        self.content.append(_text_of(delta.get("content")))
        self.refusal.append(delta.get("refusal") or "")
        entries = list(delta.get("tool_calls") or [])
        if isinstance(delta.get("function_call"), dict):
            entries.append({"function": delta["function_call"]})
        for entry in entries:
            tool = _find_tool(self.tools, entry)
            fn = entry.get("function") or {}
            tool.id = tool.id or entry.get("id") or ""
            tool.name = tool.name or fn.get("name") or ""
            _add_arguments(tool, fn.get("arguments"))
            if isinstance(entry.get("extra_content"), dict):
                tool.extra["extra_content"] = entry["extra_content"]
        if choice.get("finish_reason") is not None:
            self.finish = choice["finish_reason"]
        for key in ("stop_reason", "matched_stop"):
            if choice.get(key) is not None:
                self.choice_extra[key] = choice[key]

    def completion(self) -> Dict[str, Any]:
        message: Dict[str, Any] = {"role": "assistant", "content": "".join(self.content) or None}
        if "".join(self.reasoning):
            message["reasoning_content"] = "".join(self.reasoning)
        if self.reasoning_details:
            message["reasoning_details"] = self.reasoning_details
        if "".join(self.refusal):
            message["refusal"] = "".join(self.refusal)
        calls = [{"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.args}, **t.extra}
                 for t in self.tools if t.name]
        if calls:
            message["tool_calls"] = calls
        choice = {"index": 0, "message": message, "finish_reason": self.finish, **self.choice_extra}
        body: Dict[str, Any] = {
            "id": self.envelope.get("id") or "chatcmpl-accumulated",
            "object": "chat.completion",
            "created": self.envelope.get("created") or int(time.time()),
            "model": self.envelope.get("model") or "gpt-test",
            "choices": [choice],
        }
        if self.usage is not None:
            body["usage"] = self.usage
        return body


def accumulate_chunks(chunks: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The non-streaming ChatCompletion equivalent to a chunk sequence."""
    acc = _Accumulator()
    for c in chunks:
        acc.feed(c)
    return acc.completion()


def has_usage(chunks: List[Dict[str, Any]]) -> bool:
    return accumulate_chunks(chunks).get("usage") is not None


# ----------------------------------------------------------------------
# Finding the Claude Code CLI.


def claude_binary() -> Optional[str]:
    """$CLAUDEPROXY_CLAUDE_BIN, else ``claude`` on PATH, else the copy .ci/run installs."""
    import shutil

    configured = os.environ.get("CLAUDEPROXY_CLAUDE_BIN")
    if configured:
        return configured
    found = shutil.which("claude")
    if found:
        return found
    local = os.path.join(ROOT, ".ci", "node", "node_modules", ".bin", "claude")
    return local if os.access(local, os.X_OK) else None


# ----------------------------------------------------------------------
# A headless Claude Code run (CLAUDE-CODE.md's recipe).


class Run:
    def __init__(self, proc: "subprocess.CompletedProcess[str]", elapsed: float, bodies: List[Dict[str, Any]]) -> None:
        self.proc = proc
        self.elapsed = elapsed
        self.bodies = bodies
        self.lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]

    @property
    def result(self) -> Dict[str, Any]:
        results = [line for line in self.lines if line.get("type") == "result"]
        assert results, f"no result line; stdout tail: {self.proc.stdout[-2000:]!r} stderr: {self.proc.stderr[-2000:]!r}"
        return results[-1]

    def __repr__(self) -> str:
        return f"Run(rc={self.proc.returncode}, stdout={self.proc.stdout[-1500:]!r}, stderr={self.proc.stderr[-1500:]!r})"


def claude_env(proxy_url: str, home: str) -> Dict[str, str]:
    """A clean environment: nothing from the machine's Anthropic or proxy settings leaks in."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "LANG": "C.UTF-8",
        "ANTHROPIC_BASE_URL": proxy_url,
        "ANTHROPIC_API_KEY": "dummy",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "IS_SANDBOX": "1",  # root may use --dangerously-skip-permissions only in a sandbox
    }
