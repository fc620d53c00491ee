"""The local input-token estimate (count_tokens, message_start): PROTOCOL.md 4.5, FIELD-NOTES 7.

Claude Code compacts on these numbers, so an estimate that is too low makes it
overflow the backend's context. The estimate must count everything that costs
tokens (system, tool schemas, tool_use inputs, tool results, images,
documents), never shrink when content is added, and stay at or above the
spec's own floor: ceil(characters / 4) + 1600 per image and per PDF.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
from typing import Any, Dict, List

import pytest

from claudeproxy.anthropic_types import parse_count_tokens_request, parse_messages_request
from claudeproxy.tokens import estimate_input_tokens

HERE = os.path.dirname(os.path.abspath(__file__))
REQUESTS = os.path.join(HERE, "fixtures", "requests")

ENGLISH = (
    "The proxy translates every request into the upstream dialect, relays the stream line by line, "
    "and reports usage so that the client can decide when to compact its context. "
) * 20
CODE = '''def fold(events, snapshot=None):
    """Apply each event to the snapshot and return the result."""
    for event in events:
        if event["type"] == "message_start":
            snapshot = dict(event["message"], content=[])
        elif event["type"] == "content_block_delta":
            snapshot["content"][event["index"]]["text"] += event["delta"].get("text", "")
    return snapshot
''' * 10
JSON_TEXT = json.dumps({"items": [{"id": i, "name": f"item-{i}", "tags": ["a", "b"], "ok": i % 2 == 0} for i in range(60)]})


def estimate(body: Dict[str, Any]) -> int:
    return estimate_input_tokens(parse_messages_request(body))


def request(messages: List[Dict[str, Any]], **extra: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {"model": "m", "max_tokens": 100, "messages": messages}
    out.update(extra)
    return out


def _text_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    return sum(len(b.get("text", "")) for b in content if b.get("type") == "text")


def spec_floor(body: Dict[str, Any]) -> int:
    """PROTOCOL.md 4.5 written out on the raw body, independently of the code."""
    chars = _text_chars(body.get("system") or [])
    fixed = 0
    for tool in body.get("tools") or []:
        chars += len(json.dumps({k: tool[k] for k in ("name", "description", "input_schema") if k in tool}, ensure_ascii=False))
    for message in body["messages"]:
        blocks = [{"type": "text", "text": message["content"]}] if isinstance(message["content"], str) else message["content"]
        for block in blocks:
            kind = block["type"]
            if kind == "text":
                chars += len(block["text"])
            elif kind == "tool_use":
                chars += len(json.dumps(block["input"], ensure_ascii=False))
            elif kind == "tool_result":
                inner = block.get("content") or ""
                chars += _text_chars(inner)
                fixed += 1600 * sum(1 for b in inner if isinstance(b, dict) and b.get("type") == "image")
            elif kind == "image":
                fixed += 1600
            elif kind == "document" and block["source"]["type"] == "base64":
                fixed += 1600
    return math.ceil(chars / 4) + fixed


# --------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["hi", " ", [{"type": "text", "text": "x"}],
                                     [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]])
def test_positive_for_any_non_empty_request(content: Any) -> None:
    assert estimate(request([{"role": "user", "content": content}])) > 0


def test_count_tokens_body_is_estimated_too() -> None:
    req = parse_count_tokens_request({"model": "m", "messages": [{"role": "user", "content": "hello there"}]})
    assert estimate_input_tokens(req) > 0


@pytest.mark.parametrize("text", [ENGLISH, CODE, JSON_TEXT], ids=["english", "code", "json"])
def test_biased_high_for_text(text: str) -> None:
    assert estimate(request([{"role": "user", "content": text}])) >= len(text) / 4


@pytest.mark.parametrize("text", [ENGLISH, CODE], ids=["english", "code"])
def test_text_counts_wherever_it_sits(text: str) -> None:
    """The same text costs tokens as system, user text, tool result, tool_use input or tool schema."""
    base = request([{"role": "user", "content": "hi"}])
    floor = len(text) / 4
    placed = [
        dict(base, system=text),
        dict(base, system=[{"type": "text", "text": text}]),
        request([{"role": "user", "content": "hi"}, {"role": "system", "content": text}]),
        request([{"role": "user", "content": "hi"}, {"role": "assistant", "content": text}, {"role": "user", "content": "ok"}]),
        request([{"role": "user", "content": "hi"},
                 {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Write", "input": {"content": text}}]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]}]),
        request([{"role": "user", "content": "hi"},
                 {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Read", "input": {}}]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": text}]}]),
        request([{"role": "user", "content": "hi"},
                 {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Read", "input": {}}]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": text}]}]}]),
        dict(base, tools=[{"name": "f", "description": text, "input_schema": {"type": "object"}}]),
        dict(base, tools=[{"name": "f", "input_schema": {"type": "object", "properties": {"x": {"type": "string", "description": text}}}}]),
        request([{"role": "user", "content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text}}]}]),
        request([{"role": "user", "content": [{"type": "search_result", "source": "s", "title": "t", "content": [{"type": "text", "text": text}]}]}]),
        dict(base, output_config={"format": {"type": "json_schema", "schema": {"type": "object", "description": text}}}),
    ]
    for body in placed:
        assert estimate(body) - estimate(base) >= floor * 0.95, json.dumps(body)[:120]


def test_each_image_adds_1600() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    one = estimate(request([{"role": "user", "content": [{"type": "text", "text": "look"}, image]}]))
    three = estimate(request([{"role": "user", "content": [{"type": "text", "text": "look"}, image, image, image]}]))
    assert one >= 1600
    assert three - one >= 3200


def test_images_inside_tool_results_count() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://x/shot.png"}}
    plain = request([{"role": "user", "content": "hi"},
                     {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "shot", "input": {}}]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "ok"}]}]}])
    with_image = copy.deepcopy(plain)
    with_image["messages"][2]["content"][0]["content"].append(image)
    assert estimate(with_image) - estimate(plain) >= 1600


def test_pdf_documents_count() -> None:
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}}
    base = request([{"role": "user", "content": "summarise"}])
    with_pdf = request([{"role": "user", "content": [pdf, {"type": "text", "text": "summarise"}]}])
    assert estimate(with_pdf) - estimate(base) >= 1600


def _fixture_bodies() -> List[str]:
    names = sorted(n for n in os.listdir(REQUESTS) if n.endswith(".anthropic.json"))
    return names


@pytest.mark.parametrize("name", _fixture_bodies())
def test_never_below_the_spec_floor(name: str) -> None:
    with open(os.path.join(REQUESTS, name), encoding="utf-8") as fh:
        body = json.load(fh)
    assert estimate(body) >= spec_floor(body)


def test_many_small_tools_are_not_undercounted() -> None:
    """Tool definitions are mostly JSON punctuation; their whole JSON counts (CLIProxyAPI#679: 48 vs 728)."""
    tools = [{"name": f"t{i}", "description": "d", "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}}
             for i in range(50)]
    body = request([{"role": "user", "content": "hi"}], tools=tools)
    assert estimate(body) >= spec_floor(body)
    assert estimate(body) >= len(json.dumps(tools)) / 4


def test_each_tool_costs_its_own_json_plus_a_fixed_overhead() -> None:
    """A tool's definition counts as its JSON (non-ASCII as characters, not escapes) plus 8 tokens."""
    tools = [{"name": "Grep", "description": "Sök i filer — «regex»", "input_schema": {"type": "object", "properties": {
                  "pattern": {"type": "string", "description": "uttryck"}}, "required": ["pattern"]}},
             {"name": "Bash", "input_schema": {"type": "object"}}]
    base = estimate(request([{"role": "user", "content": "hi"}]))
    own = [len(json.dumps({"name": t["name"], "description": t.get("description", ""),
                           "input_schema": t["input_schema"]}, ensure_ascii=False)) for t in tools]
    with_tools = estimate(request([{"role": "user", "content": "hi"}], tools=tools))
    chars = len("hi") + sum(own)
    assert with_tools - base == math.ceil(chars / 3.5) - math.ceil(len("hi") / 3.5) + 8 * len(tools)


def test_a_client_tool_costs_what_the_same_custom_tool_costs() -> None:
    """Anthropic's text editor, bash and memory tools are sent upstream with their documented
    schema, so they count like a custom tool carrying that schema, not as a bare name."""
    from claudeproxy.anthropic_tools import CLIENT_TOOLS

    msgs = [{"role": "user", "content": "hi"}]
    for kind, definition in CLIENT_TOOLS.items():
        custom = {"name": definition.name, "description": definition.description, "input_schema": definition.schema()}
        client = estimate(request(msgs, tools=[{"type": kind, "name": definition.name}]))
        assert client == estimate(request(msgs, tools=[custom])), kind
        assert client - estimate(request(msgs)) > len(json.dumps(definition.schema())) / 4, kind


def test_claude_code_request_estimate_is_in_a_sane_range() -> None:
    with open(os.path.join(REQUESTS, "claude_code_2_1_331_first.anthropic.json"), encoding="utf-8") as fh:
        body = json.load(fh)
    size = len(json.dumps(body))
    # Above the spec floor, yet not absurd: at most one token per character of the whole body.
    assert spec_floor(body) <= estimate(body) <= size


# --------------------------------------------------------------------------
# Monotonic: adding content never lowers the estimate.

ADDITIONS = [
    lambda b, r: b.__setitem__("system", (b.get("system") or "") + r.choice([ENGLISH[:200], "x", CODE[:90]])),
    lambda b, r: b["messages"].append({"role": r.choice(["user", "assistant"]), "content": ENGLISH[: r.randrange(1, 300)]}),
    lambda b, r: b["messages"].append({"role": "system", "content": "env " * r.randrange(1, 40)}),
    lambda b, r: b.setdefault("tools", []).append(
        {"name": f"tool{r.randrange(10 ** 6)}", "input_schema": {"type": "object", "properties": {"p": {"type": "integer"}}}}),
    lambda b, r: b["messages"].append({"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://x/i.png"}}]}),
    lambda b, r: b["messages"].append({"role": "assistant", "content": [
        {"type": "tool_use", "id": f"t{r.randrange(10 ** 6)}", "name": "Write", "input": {"content": CODE[: r.randrange(1, 400)]}}]}),
    lambda b, r: b["messages"].append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": JSON_TEXT[: r.randrange(0, 500)]}]}),
    lambda b, r: b["messages"].append({"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm " * r.randrange(1, 50), "signature": "s"}]}),
    lambda b, r: b["messages"].append({"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]}),
]


@pytest.mark.parametrize("seed", range(5))
def test_monotonic_under_random_additions(seed: int) -> None:
    rng = random.Random(seed)
    body = request([{"role": "user", "content": "start"}])
    previous = estimate(body)
    for _ in range(40):
        rng.choice(ADDITIONS)(body, rng)
        current = estimate(body)
        assert current >= previous, (seed, json.dumps(body)[-200:])
        previous = current


def _pdf(pages: int, filler: int = 0) -> str:
    """A PDF with ``pages`` page objects (and the page tree's /Type /Pages, which is no page)."""
    import base64

    kids = " ".join(f"{3 + i} 0 R" for i in range(pages))
    parts = [b"%PDF-1.4\n1 0 obj<</Type /Catalog /Pages 2 0 R>>endobj\n",
             f"2 0 obj<</Type /Pages /Kids [{kids}] /Count {pages}>>endobj\n".encode()]
    parts += [f"{3 + i} 0 obj<</Type{' ' if i % 2 else ''}/Page /Parent 2 0 R>>endobj\n".encode() for i in range(pages)]
    return base64.b64encode(b"".join(parts) + b"x" * filler).decode()


def _with_pdf(data: str) -> Dict[str, Any]:
    return request([{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": data}},
        {"type": "text", "text": "Summarise it."}]}])


def test_a_pdf_counts_by_its_pages():
    """A flat 1,600 tokens made a 100-page PDF 1,605: a client asking "does it fit" was answered
    100 times too low. Anthropic reads each page as text and an image: 1,500-3,000 tokens."""
    one, three, hundred = (estimate(_with_pdf(_pdf(n))) for n in (1, 3, 100))
    assert 2000 <= one < 2100
    assert three - one == 2 * 2000
    assert hundred - one == 99 * 2000


def test_a_pdf_whose_pages_cannot_be_seen_is_guessed_from_its_size():
    import base64

    hidden = base64.b64encode(b"%PDF-1.5\n" + b"\x00compressed object stream" * 20_000).decode()  # ~500 KB
    assert 10 * 2000 <= estimate(_with_pdf(hidden)) < 11 * 2000 + 100
    assert 1600 <= estimate(_with_pdf("not base64!")) < 1700  # unreadable: the flat guess
