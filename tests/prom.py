"""A small parser for the Prometheus text exposition format 0.0.4, written from its specification.

It is strict where the proxy must be: every sample belongs to a family
announced by ``# TYPE`` before it, label values use only the three escapes
the format defines, histogram buckets are cumulative and end in ``+Inf``
equal to ``_count``. ``parse`` returns {(name, labels): value} with labels as
a sorted tuple of pairs; ``value``/``total`` read it.
"""

from __future__ import annotations

import math
import re
from typing import Dict, List, Tuple

Labels = Tuple[Tuple[str, str], ...]
Samples = Dict[Tuple[str, Labels], float]

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(\{{.*\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def _unescape(value: str) -> str:
    return re.sub(r"\\([\\\"n])", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _labels(text: str) -> Labels:
    body = text[1:-1]
    pairs: List[Tuple[str, str]] = []
    pos = 0
    while pos < len(body):
        match = _LABEL.match(body, pos)
        assert match, f"bad label set {text!r} at {pos}"
        pairs.append((match.group(1), _unescape(match.group(2))))
        pos = match.end()
    names = [n for n, _ in pairs]
    assert len(names) == len(set(names)), f"repeated label in {text!r}"
    return tuple(sorted(pairs))


def _family_of(name: str, types: Dict[str, str]) -> str:
    if name in types:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and types.get(name[: -len(suffix)]) == "histogram":
            return name[: -len(suffix)]
    raise AssertionError(f"sample {name} has no # TYPE before it")


def parse(text: str) -> Samples:
    assert text.endswith("\n"), "the exposition ends with a newline"
    types: Dict[str, str] = {}
    samples: Samples = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in _TYPES and name not in types, line
            types[name] = kind
            continue
        if line.startswith("#"):
            assert line.startswith("# HELP "), f"unknown comment {line!r}"
            continue
        match = _SAMPLE.match(line)
        assert match, f"bad sample line {line!r}"
        name, labels, value = match.group(1), _labels(match.group(2)) if match.group(2) else (), match.group(3)
        _family_of(name, types)
        key = (name, labels)
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(value)
    _check_histograms(samples, types)
    return samples


def _check_histograms(samples: Samples, types: Dict[str, str]) -> None:
    for family in (n for n, k in types.items() if k == "histogram"):
        groups: Dict[Labels, List[Tuple[float, float]]] = {}
        for (name, labels), value in samples.items():
            if name == family + "_bucket":
                rest = tuple(p for p in labels if p[0] != "le")
                le = dict(labels)["le"]
                groups.setdefault(rest, []).append((math.inf if le == "+Inf" else float(le), value))
        for rest, buckets in groups.items():
            buckets.sort()
            counts = [c for _, c in buckets]
            assert counts == sorted(counts), f"{family}{rest}: buckets not cumulative"
            assert buckets[-1][0] == math.inf, f"{family}{rest}: no +Inf bucket"
            assert samples[(family + "_count", rest)] == counts[-1]
            assert (family + "_sum", rest) in samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels (0 when absent: a counter not yet incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over samples of ``name`` whose labels include these."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))
