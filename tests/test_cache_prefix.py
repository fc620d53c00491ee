"""Prompt-cache prefix stability over a real Claude Code session, for every dialect.

Providers cache the longest prefix a request shares with an earlier one (OpenAI,
Azure, DeepSeek, Mistral, Gemini...). Claude Code only ever appends to its
history, so the proxy must too: the upstream request of each main turn must
begin with exactly the translated messages of the turn before, and the tools and
the system prompt must not change. ``fixtures/claude_code_session/requests.jsonl``
is the 16-request session of shared/claude-code-session (Claude Code 2.1.331):
seq 1-9 and 11-16 are main turns, seq 10 the ``/compact`` request (seq 9's
messages plus the compact instructions), seq 11 a new history after compaction.

What the recording makes the proxy absorb: the one ``cache_control`` marker moves
to the newest block each turn; a one-block list comes back as a plain string; the
first system text is a billing line whose suffix changes at compaction.

Messages are compared as the wire carries them: ``json.dumps(m,
ensure_ascii=False)`` of each element of the upstream body's ``messages``.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import pytest

from claudeproxy.anthropic_types import parse_messages_request
from claudeproxy.apis.chat.request import to_chat_request
from claudeproxy.dialects import DIALECTS, dialect_for

HERE = os.path.dirname(os.path.abspath(__file__))
SESSION = os.path.join(HERE, "fixtures", "claude_code_session", "requests.jsonl")
BILLING = "x-anthropic-billing-header:"

# Every dialect, plus the model rules that change the message list or the system role.
VARIANTS: List[Tuple[str, str]] = [
    ("generic", "some-model"),
    ("openai", "gpt-4o"),
    ("openai", "o3"),
    ("openai", "o1-mini"),
    ("azure", "gpt-4o"),
    ("azure", "o3"),
    ("azure", "DeepSeek-V3.1"),  # a Foundry model: generic rules
    ("openrouter", "anthropic/claude-sonnet-4.5"),
    ("openrouter", "openai/o3"),
    ("deepseek", "deepseek-chat"),
    ("deepseek", "deepseek-reasoner"),
    ("groq", "llama-3.3-70b-versatile"),
    ("mistral", "mistral-large-latest"),
    ("moonshot", "kimi-k2.6"),
    ("moonshot", "moonshot-v1-128k"),
    ("gemini", "gemini-2.5-pro"),
    ("ollama", "qwen3"),
    ("vllm", "Qwen/Qwen3-32B"),
    ("lmstudio", "qwen3"),
    ("llamacpp", "qwen3"),
]
IDS = [f"{p}:{m}" for p, m in VARIANTS]
MAIN_RUNS = (range(1, 10), range(11, 17))  # seq numbers of the two histories
COMPACTION = (9, 10)  # seq 10 resends seq 9's messages with the compact prompt appended


def load_session() -> Dict[int, Dict[str, Any]]:
    with open(SESSION, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return {row["seq"]: row for row in rows}


_SESSION = load_session()


def upstream_body(body: Dict[str, Any], provider: str, model: str) -> Dict[str, Any]:
    req = parse_messages_request(body)
    translation = to_chat_request(req, model=model, dialect=dialect_for(provider, model), stream=True)
    return translation.request.to_dict()


def wire(messages: List[Dict[str, Any]]) -> List[str]:
    """Each message as the wire carries it, less the cache marks of its text parts (where the
    openrouter dialect sends Claude Code's marks on): a mark says where the cache ends, it is not
    part of the prompt cached, and Claude Code moves its mark to the newest block each turn."""
    return [json.dumps(_unmarked(m), ensure_ascii=False, sort_keys=False) for m in messages]


def _unmarked(message: Dict[str, Any]) -> Dict[str, Any]:
    content = message.get("content")
    if not isinstance(content, list):
        return message
    parts = [{k: v for k, v in p.items() if k != "cache_control"} for p in content]
    return {**message, "content": parts}


def first_difference(a: str, b: str) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def prefix_break(before: List[str], after: List[str]) -> Optional[str]:
    """None when ``before`` is a message-by-message prefix of ``after``; else what changed."""
    for i, old in enumerate(before):
        if i >= len(after):
            return f"message {i} is gone (the new request has only {len(after)} messages)"
        if after[i] != old:
            at = first_difference(old, after[i])
            return (f"message {i} changed at byte {at}:\n  was: ...{old[max(0, at - 60):at + 100]!r}\n"
                    f"  now: ...{after[i][max(0, at - 60):at + 100]!r}")
    return None


def translated(provider: str, model: str) -> Dict[int, Dict[str, Any]]:
    return {seq: upstream_body(row["body"], provider, model) for seq, row in _SESSION.items()}


@pytest.fixture(scope="module", params=VARIANTS, ids=IDS)
def session(request: Any) -> Tuple[str, Dict[int, Dict[str, Any]]]:
    provider, model = request.param
    return f"{provider}:{model}", translated(provider, model)


# --------------------------------------------------------------------------
# The recording itself (so the properties below test what they claim to).


def test_recording_is_the_documented_session() -> None:
    assert sorted(_SESSION) == list(range(1, 17))
    bodies = {seq: row["body"] for seq, row in _SESSION.items()}
    billing = {seq: b["system"][0]["text"] for seq, b in bodies.items()}
    assert all(text.startswith(BILLING) for text in billing.values())
    assert billing[9] == billing[10] != billing[11]  # the suffix changes at compaction
    # The raw Anthropic bodies are NOT prefixes: the cache_control marker moves and lists become strings.
    assert bodies[3]["messages"][5] != bodies[4]["messages"][5]
    assert bodies[3]["messages"][5]["content"][0]["text"] == bodies[4]["messages"][5]["content"]


def test_every_dialect_is_covered() -> None:
    assert {p for p, _ in VARIANTS} == set(DIALECTS)


# --------------------------------------------------------------------------
# The cache-prefix property, per dialect.


def test_main_turns_only_append(session: Tuple[str, Dict[int, Dict[str, Any]]]) -> None:
    name, bodies = session
    broken = []
    for run in MAIN_RUNS:
        seqs = list(run)
        for prev, cur in zip(seqs, seqs[1:]):
            problem = prefix_break(wire(bodies[prev]["messages"]), wire(bodies[cur]["messages"]))
            if problem:
                broken.append(f"{name}: seq {prev} -> seq {cur}: {problem}")
            assert len(bodies[cur]["messages"]) > len(bodies[prev]["messages"])
    assert not broken, "\n".join(broken)


def extended_in_place(old: str, new: str) -> bool:
    """``new`` is the message ``old`` with more content parts appended, and nothing else changed."""
    return old.endswith("]}") and new.startswith(old[:-2] + ", ")


def test_compaction_request_extends_the_turn_before(session: Tuple[str, Dict[int, Dict[str, Any]]]) -> None:
    """Seq 10 is seq 9 with the compact instructions appended to its last user message.

    Seq 9's last message is the image moved out of the Read result. Where user
    messages may follow each other the instructions become a new message, so
    seq 9 is a strict prefix. Dialects that merge consecutive user messages
    (the upstream wants user and assistant to alternate) cannot: there the
    instructions join the image's message, after the image, so that message
    only grows at its end and the rendered prompt still starts like seq 9's.
    """
    name, bodies = session
    prev, cur = COMPACTION
    before, after = wire(bodies[prev]["messages"]), wire(bodies[cur]["messages"])
    provider, model = name.split(":", 1)
    if dialect_for(provider, model).merge_user_turns and prefix_break(before, after) is not None:
        assert prefix_break(before[:-1], after) is None, f"{name}: {prefix_break(before[:-1], after)}"
        assert len(after) == len(before) and extended_in_place(before[-1], after[-1]), (
            f"{name}: seq {prev} -> seq {cur}: {prefix_break(before, after)}")
    else:
        problem = prefix_break(before, after)
        assert problem is None, f"{name}: seq {prev} -> seq {cur}: {problem}"
        assert len(after) > len(before)
    assert "CRITICAL: Respond with TEXT ONLY" in after[-1]


def test_compaction_is_a_strict_extension_where_user_messages_may_follow_each_other() -> None:
    """No exception for these: OpenAI and Azure take consecutive user messages, DeepSeek (text only)
    keeps the image placeholder in the tool message, so nothing of seq 9 has to be merged."""
    for provider, model in VARIANTS:
        bodies = {seq: upstream_body(_SESSION[seq]["body"], provider, model) for seq in COMPACTION}
        strict = not dialect_for(provider, model).merge_user_turns or provider == "deepseek"
        problem = prefix_break(wire(bodies[9]["messages"]), wire(bodies[10]["messages"]))
        assert (problem is None) == strict, f"{provider}:{model}: {problem}"


def test_tools_are_byte_identical_in_all_requests(session: Tuple[str, Dict[int, Dict[str, Any]]]) -> None:
    name, bodies = session
    tools = {seq: json.dumps(b.get("tools"), ensure_ascii=False) for seq, b in bodies.items()}
    assert len(bodies[1]["tools"]) == 12  # the 13 the session sent, less DeferredToolPlaceholder (deferred)
    assert set(tools.values()) == {tools[1]}, f"{name}: tools differ in seq {[s for s, t in tools.items() if t != tools[1]]}"


def test_system_prompt_is_byte_identical_in_all_requests(session: Tuple[str, Dict[int, Dict[str, Any]]]) -> None:
    """Across the compaction too: the billing line, whose suffix changes there, is gone."""
    name, bodies = session
    first = {seq: wire(b["messages"][:1])[0] for seq, b in bodies.items()}
    assert set(first.values()) == {first[1]}, f"{name}: the first message differs in seq {[s for s, f in first.items() if f != first[1]]}"
    assert "You are Claude Code, Anthropic's official CLI for Claude." in first[1]
    for seq, b in bodies.items():
        assert BILLING not in json.dumps(b), f"{name}: seq {seq} still carries the billing line"


def test_a_cut_history_translates_to_a_prefix_of_the_whole() -> None:
    """Each message translates the same whatever comes after it.

    Every request is cut after each user or system message that Claude Code
    could have sent last (the next one is the assistant's answer); the cut
    translation must be a prefix of the whole one. Dialects that keep
    consecutive user messages apart (no merge pass) must also pass where the
    next message is another user or system message.
    """
    broken = []
    for provider, model in VARIANTS:
        merges = dialect_for(provider, model).merge_user_turns
        for seq in (10, 16):  # the longest history of each run
            body = _SESSION[seq]["body"]
            whole = wire(upstream_body(body, provider, model)["messages"])
            messages = body["messages"]
            for k in range(1, len(messages)):
                if messages[k - 1]["role"] == "assistant":
                    continue  # a cut after an assistant turn is a prefill, which Claude Code never sends
                if merges and messages[k]["role"] != "assistant":
                    continue  # merged into the next turn by design on this dialect
                cut = upstream_body({**body, "messages": messages[:k]}, provider, model)
                problem = prefix_break(wire(cut["messages"]), whole)
                if problem:
                    broken.append(f"{provider}:{model} seq {seq} cut after message {k - 1}: {problem}")
    assert not broken, "\n".join(broken[:10])


# --------------------------------------------------------------------------
# The check itself must catch a changed old message.


def test_prefix_check_reports_a_changed_earlier_message() -> None:
    body3, body4 = _SESSION[3]["body"], copy.deepcopy(_SESSION[4]["body"])
    body4["messages"][4]["content"][0]["text"] += " "  # an old assistant text, one byte longer
    before = wire(upstream_body(body3, "openai", "gpt-4o")["messages"])
    after = wire(upstream_body(body4, "openai", "gpt-4o")["messages"])
    problem = prefix_break(before, after)
    assert problem is not None and problem.startswith("message 5 changed at byte")  # system, user, system, assistant, tool, assistant
    assert prefix_break(before, wire(upstream_body(_SESSION[4]["body"], "openai", "gpt-4o")["messages"])) is None


def test_prefix_check_reports_a_dropped_message() -> None:
    assert prefix_break(["a", "b"], ["a"]) == "message 1 is gone (the new request has only 1 messages)"
    assert prefix_break(["a"], ["a", "b"]) is None


# --------------------------------------------------------------------------
# The normalisations, one at a time, for every dialect.


def _body(messages: List[Dict[str, Any]], system: Any = "S") -> Dict[str, Any]:
    return {"model": "claude-test", "max_tokens": 100, "system": system, "messages": messages,
            "tools": [{"name": "Read", "input_schema": {"type": "object", "properties": {}}}]}


def _history(form: str) -> List[Dict[str, Any]]:
    """One history in two spellings: ``plain`` (strings) and ``listed`` (one-block lists with cache_control)."""
    cc = {"cache_control": {"type": "ephemeral"}}

    def text(s: str) -> Any:
        return s if form == "plain" else [{"type": "text", "text": s, **cc}]

    return [
        {"role": "user", "content": text("read a")},
        {"role": "system", "content": text("# Environment")},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"p": "a"},
                                           **({} if form == "plain" else cc)}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": text("A"),
                                      **({} if form == "plain" else cc)}]},
        {"role": "system", "content": text("auto mode")},
        {"role": "assistant", "content": text("done")},
        {"role": "user", "content": text("thanks")},
    ]


@pytest.mark.parametrize("provider,model", VARIANTS, ids=IDS)
def test_string_and_one_block_list_with_cache_control_translate_alike(provider: str, model: str) -> None:
    plain = upstream_body(_body(_history("plain")), provider, model)
    listed_body = _body(_history("listed"), system=[{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}])
    listed_body["tools"][0]["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    listed = upstream_body(listed_body, provider, model)
    if dialect_for(provider, model).cache_marks:  # the marks go on there, and are all that differs
        assert "cache_control" in json.dumps(listed) and "cache_control" not in json.dumps(plain)
        for body in (plain, listed):
            body["messages"] = [_unmarked(m) for m in body["messages"]]
    assert json.dumps(plain) == json.dumps(listed)


@pytest.mark.parametrize("provider,model", VARIANTS, ids=IDS)
def test_billing_line_never_reaches_a_chat_upstream(provider: str, model: str) -> None:
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.331.f2b; cc_entrypoint=cli;"},
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
    ]
    other = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.331.604; cc_entrypoint=cli;"},
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
    ]
    messages = [{"role": "user", "content": "hi"}]
    a, b = upstream_body(_body(messages, system), provider, model), upstream_body(_body(messages, other), provider, model)
    assert json.dumps(a) == json.dumps(b)
    assert BILLING not in json.dumps(a) and "You are Claude Code." in json.dumps(a)


def test_billing_line_inside_a_block_goes_alone() -> None:
    block = "x-anthropic-billing-header: cc_version=2.1.331.f2b; cc_entrypoint=cli;\nYou are Claude Code."
    out = upstream_body(_body([{"role": "user", "content": "hi"}], [{"type": "text", "text": block}]), "openai", "gpt-4o")
    assert out["messages"][0] == {"role": "system", "content": "You are Claude Code."}
    middle = "Intro.\n\nx-anthropic-billing-header: cc_version=1; cc_entrypoint=cli;\n\nRest."
    out = upstream_body(_body([{"role": "user", "content": "hi"}], middle), "openai", "gpt-4o")
    assert out["messages"][0] == {"role": "system", "content": "Intro.\n\nRest."}


def test_billing_only_system_prompt_leaves_no_system_message() -> None:
    system = [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.331.f2b; cc_entrypoint=cli;"}]
    out = upstream_body(_body([{"role": "user", "content": "hi"}], system), "openai", "gpt-4o")
    assert out["messages"] == [{"role": "user", "content": "hi"}]


def test_billing_line_in_a_system_role_message_goes_too() -> None:
    messages = [{"role": "user", "content": "hi"},
                {"role": "system", "content": "x-anthropic-billing-header: cc_version=2.1.331.f2b;\n# Environment"}]
    out = upstream_body(_body(messages), "openai", "gpt-4o")
    assert out["messages"][-1] == {"role": "system", "content": "# Environment"}


def test_text_that_only_mentions_the_header_is_kept() -> None:
    system = "Claude Code sends x-anthropic-billing-header: lines; keep this sentence."
    out = upstream_body(_body([{"role": "user", "content": "hi"}], system), "openai", "gpt-4o")
    assert out["messages"][0]["content"] == system
