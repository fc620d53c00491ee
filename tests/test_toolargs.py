"""``apis/toolargs.py``: ``ArgsScan``, which decides what of a call's arguments a stream may
send (``test_tool_arguments.py`` has the stream translators and the JSON answer)."""

from __future__ import annotations

import json
import random
import time
from typing import List, Tuple

import pytest

from claudeproxy.apis import toolargs
from claudeproxy.apis.chat.response import normalize_arguments
from claudeproxy.apis.toolargs import ArgsScan, streamed_object


def scan_all(fragments: List[str]) -> Tuple[ArgsScan, List[str]]:
    scan, sent = ArgsScan(), []
    for piece in fragments:
        scan.feed(piece)
        sent.append(scan.take())
    return scan, sent


def closing(scan: ArgsScan) -> str:
    return ('"' if scan.state == toolargs._IN_VALUE else "") + "".join(reversed(scan.stack))


VALUES = [
    {"path": "/src/a.py", "content": 'def f(x):\n    return {"k": [x, "}"]}\n', "n": -1.5e-3, "ok": True, "none": None},
    {"a": [1, 2, [3, {"b": "c\\d\"e"}]], "e": {}, "f": [], "g": "caf\u00e9 \U0001F600", "h": 0},
    {"cmd": "grep -rn \"x\" .", "args": ["-a", "", "\t"], "deep": {"x": {"y": {"z": [[[]]]}}}},
    {},
]


@pytest.mark.parametrize("seed", range(60))
def test_valid_json_in_random_fragments_passes_unchanged_and_always_closes(seed: int) -> None:
    """Whatever the cut, valid arguments come out unchanged; after every fragment what was passed
    on closes into valid JSON with a quote and brackets alone."""
    rng = random.Random(seed)
    text = json.dumps(rng.choice(VALUES), **rng.choice([{}, {"separators": (",", ":")}, {"indent": 2},
                                                         {"ensure_ascii": False}]))
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 40))))
    fragments = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    scan, sent = ArgsScan(), ""
    for piece in fragments:
        scan.feed(piece)
        sent += scan.take()
        assert text.startswith(sent)
        if scan.started and not scan.ended:
            json.loads(sent + closing(scan))
    assert sent == text and scan.closed and not scan.bad


@pytest.mark.parametrize("seed", range(60))
def test_any_text_gives_strict_json_once_live(seed: int) -> None:
    """Random corruption of valid arguments: what a live call sends is strict JSON after every
    fragment once closed or ended, and the JSON answer gives the same object."""
    rng = random.Random(seed)
    text = json.dumps(rng.choice(VALUES[:3]))
    chars = list(text)
    for _ in range(rng.randint(1, 3)):
        chars.insert(rng.randrange(1, len(chars)), rng.choice(["}", "]", ",", "'", "T", "x", "\n", "\\", '"', " ", "{"]))
    text = "".join(chars)
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 20))))
    scan, sent = scan_all([text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])])
    joined = "".join(sent)
    if scan.started and scan.ended:
        assert json.loads(joined) == streamed_object(text)
        try:
            plain = json.loads(text)
        except ValueError:
            assert normalize_arguments(text)[0] == json.loads(joined)
        else:
            assert normalize_arguments(text)[0] == plain == json.loads(joined)
    elif scan.started:  # cut short: what was passed on still closes with brackets alone
        json.loads(joined + closing(scan))


def test_the_go_live_rule() -> None:
    for text, started in [("{", False), ("  {\n ", False), ('{"', True), ("{}", True), (' { "a"', True),
                          ("{b", False), ("{'", False), ("[", False), ('"{', False), ("{{", False)]:
        scan, _ = scan_all([text])
        assert scan.started is started, text


def test_arguments_that_are_no_object_keep_the_bracket_balance() -> None:
    # What the translators use to tell a whole call from a cut one, as before the scan checked JSON.
    assert scan_all(["{bad json}"])[0].closed
    assert not scan_all(["{bad json"])[0].closed
    assert scan_all(['[1, "]"', "]"])[0].closed
    assert scan_all(['{"a": True, "s": "}"}'])[0].closed


def test_huge_arguments_scan_in_linear_time() -> None:
    """RELIABILITY.md F10 for the scan: 5 MB in 1 KB fragments, and in one fragment, whether
    mostly string with escapes, numbers, or small objects; and no huge regex state for one
    10 MB fragment of escapes (the matcher's per-repetition state once took 800 MB)."""
    texts = [
        json.dumps({"content": "0123456789abcdef\\\"{}[]\n" * 220000}),
        json.dumps({"a": [1] * 2500000}, separators=(",", ":")),
        json.dumps({"rows": [{"k": "v", "n": 1} for _ in range(120000)]}),
    ]
    started = time.monotonic()
    for text in texts:
        scan, sent = scan_all([text[i:i + 1024] for i in range(0, len(text), 1024)])
        assert "".join(sent) == text and scan.closed
        scan, sent = scan_all([text])
        assert sent == [text]
    scan, sent = scan_all([json.dumps({"c": '\\"' * 2500000})])
    assert scan.closed and len(sent[0]) == 10000009
    assert time.monotonic() - started < 8.0
