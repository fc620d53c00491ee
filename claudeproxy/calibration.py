"""Token estimates that learn from the upstream's own counts, one ``TokenCalibration`` per server.

No I/O and no clock. ``tokens.estimate_input`` counts characters and
leans high (3.5 a token), because Claude Code compacts on count_tokens and
message_start and an estimate that is too low overflows the context. Every
upstream tokenizer differs from that guess, by 20 % or more. So for each
(provider, upstream model) this keeps the ratio between the upstream's reported
prompt tokens and the raw estimate of the same request, over the last
``window`` calls, and scales later estimates by the median ratio plus a small
``margin``: after a few turns the estimate is a few percent above the truth
instead of a fixed guess.

Robustness: a call only teaches when the upstream really reported usage for
a prompt of some size (``min_tokens``); the median ignores the odd outlier
(a provider that counts a cached prompt as 0, a tool-heavy turn); the learned
ratio is clamped to [``low``, ``high``]; no ratio is applied before
``min_samples`` calls taught one. Memory is bounded: ``window`` ratios for at
most ``max_models`` models, the oldest model forgotten first.
"""

from __future__ import annotations

import collections
import math
import threading
from typing import Deque, Dict, Hashable, List, Optional

DEFAULT_MARGIN = 0.03  # the estimate stays this much above the learned truth


class TokenCalibration:
    """Learned estimate/actual ratios per model. Thread-safe."""

    def __init__(self, *, window: int = 20, max_models: int = 256, margin: float = DEFAULT_MARGIN,
                 low: float = 0.25, high: float = 4.0, min_tokens: int = 64, min_samples: int = 3) -> None:
        self.window = window
        self.max_models = max_models
        self.margin = margin
        self.low, self.high = low, high
        self.min_tokens = min_tokens
        self.min_samples = min_samples
        self._lock = threading.Lock()
        self._ratios: Dict[Hashable, Deque[float]] = {}

    def learn(self, key: Hashable, estimate: int, reported: int) -> bool:
        """Remember one call: ``estimate`` raw (uncalibrated), ``reported`` the upstream's prompt tokens
        (input + cache read + cache write). False when the call teaches nothing."""
        if estimate < self.min_tokens or reported < self.min_tokens // 2:
            return False  # tiny prompts are mostly chat-template overhead: their ratio says little
        ratio = reported / estimate
        with self._lock:
            ratios = self._ratios.pop(key, None)  # put back last: the table's order is last use
            if ratios is None:
                if len(self._ratios) >= self.max_models:
                    # The model used longest ago: many names a client made up once must not push
                    # out the one in use (the first seen went first).
                    del self._ratios[next(iter(self._ratios))]
                ratios = collections.deque(maxlen=self.window)
            self._ratios[key] = ratios
            ratios.append(ratio)
        return True

    def ratio(self, key: Hashable) -> Optional[float]:
        """The learned reported/estimate ratio, clamped; None until ``min_samples`` calls taught one."""
        with self._lock:
            ratios = list(self._ratios.get(key, ()))
        if len(ratios) < self.min_samples:
            return None
        return min(self.high, max(self.low, _median(ratios)))

    def estimate(self, key: Hashable, raw: int) -> int:
        """``raw`` scaled by what this model taught, a ``margin`` above; ``raw`` itself before that."""
        ratio = self.ratio(key)
        if ratio is None:
            return raw
        return max(1, math.ceil(raw * ratio * (1 + self.margin)))

    def snapshot(self) -> Dict[str, Dict[str, float]]:
        """Per model: the learned ratio and how many calls it rests on (for /v1/usage)."""
        with self._lock:
            keys = list(self._ratios)
            counts = {k: len(v) for k, v in self._ratios.items()}
        out: Dict[str, Dict[str, float]] = {}
        for key in keys:
            ratio = self.ratio(key)
            label = "/".join(key) if isinstance(key, tuple) else str(key)
            out[label] = {"samples": counts[key], "ratio": round(ratio, 4) if ratio is not None else None}  # type: ignore[dict-item]
        return out


def _median(values: List[float]) -> float:
    # Not statistics.median: importing statistics (with decimal and fractions) costs ~5 ms of start-up.
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
