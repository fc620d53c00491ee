"""Per-call records and what they add up to, one ``Metrics`` per server.

No I/O of its own (records go to an optional sink callable: the CLI's
``--usage-log`` writer, a test's list.append; a failing sink is logged); it reads
the clock and the local time zone, to place calls in minutes and days. Everything is kept in memory, behind one
lock, and bounded however long the server runs and whatever model names
clients send:

- the last ``recent`` call records (the usage page's table);
- totals per (provider, upstream model) for at most ``max_models`` models
  (later ones are added up under ``other``), per provider, per status and
  error type, per endpoint (a fixed few);
- per-second buckets for the first five minutes (a short session still
  draws a chart), per-minute buckets for the last ``minutes`` minutes (the
  charts), and per-day totals for the last ``days`` days;
- latency and time-to-first-token histograms with fixed bounds.

``snapshot()`` is the old JSON summary (``/metrics?format=json``),
``prometheus_view()`` what ``prometheus.render`` writes at ``/metrics``,
``usage(now)`` the ``/v1/usage`` JSON the usage page is drawn from.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import logging
import math
import threading
import time
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    FrozenSet,
    Iterable,
    List,
    NamedTuple,
    Optional,
    Set,
    Tuple,
    TypeVar,
    Union,
)

from .anthropic_types import MAX_MODEL_NAME
from .cost import cache_hit_ratio
from .counts import MAX_COUNT, USAGE_KEYS, count_or_none

log = logging.getLogger(__name__)
T = TypeVar("T")

# Labels in parentheses, which no provider name can have (routing.check_provider): a provider named
# "local" (an Ollama, say) is never mixed up with the proxy's own answers.
OTHER = "(other)"  # a provider's models past the limit, and endpoints past theirs
LOCAL = "(local)"  # the provider label of calls the proxy answered itself
NONE = "(none)"  # the provider and model label of calls refused before any upstream
# Seconds. Fine enough below a few seconds for time to first token, wide enough for long streams.
HISTOGRAM_BOUNDS: Tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0,
                                       20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0)
_ENDPOINT_LIMIT = 16
_FINE_SECONDS = 300  # per-second buckets until the first call is this old
_FINE_STEPS = (1, 2, 5, 10)  # chart steps over per-second buckets, seconds
_MINUTE_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)  # over per-minute buckets
_SERIES_POINTS = 60  # at most this many bars per chart
ModelKey = Tuple[str, str]  # (provider, upstream model)


@dataclasses.dataclass(frozen=True)
class Spend:
    """What a target other than the one a call is recorded under spent on it: an attempt before a
    fallback that its upstream billed (a failed Response, DeepSeek's overload: 200s with a usage).
    The call's own counts include it; the per-model and per-provider totals file it under its own
    target, at its own prices."""

    provider: str
    upstream_model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cost_usd: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.cost_usd is not None:
            out["cost_usd"] = round(self.cost_usd, 12)  # as ``CallRecord.to_dict``
        return out


@dataclasses.dataclass(frozen=True)
class CallRecord:
    """One call to the proxy's API, also a 4xx, a local answer or a failure."""

    endpoint: str
    model: str = ""  # the client's model name
    route: str = ""  # the match pattern of the route it took
    upstream_model: str = ""
    provider: str = ""  # the provider's name
    upstream_host: str = ""
    stream: bool = False
    status: int = 200
    duration_ms: int = 0
    ttft_ms: Optional[int] = None  # streams: until the first content event went out
    # Anthropic's meaning (input without the cached part). All four None when the usage is not known
    # (a stream cut before the upstream reported it): not 0, which would look like a measured free call.
    input_tokens: Optional[int] = 0
    output_tokens: Optional[int] = 0
    cache_read_input_tokens: Optional[int] = 0
    cache_creation_input_tokens: Optional[int] = 0
    # Of cache_creation_input_tokens, those written to Anthropic's 1-hour cache (priced apart).
    cache_creation_1h_input_tokens: Optional[int] = 0
    web_search_requests: int = 0  # searches the upstream ran itself (billed per search)
    # None: the model has no price for a kind of token it used, or the tokens are not known.
    cost_usd: Optional[float] = None
    stop_reason: Optional[str] = None
    error_type: Optional[str] = None
    local: bool = False  # answered without an upstream call (quota probe, count_tokens)
    request_id: str = ""
    # The answering upstream's own id for the call (its request-id or x-request-id header): what its
    # support asks for. Empty when it sent none.
    upstream_request_id: str = ""
    attempts: int = 0  # upstream calls made for it (retries and fallbacks included)
    time: float = 0.0  # when the call began, seconds since the epoch
    # Of the counts and cost above, what other targets spent (``Spend``): none but after a fallback.
    spent_elsewhere: Tuple[Spend, ...] = ()
    # With spent_elsewhere: what the answering target's own attempts cost, known where the call's
    # total is not (an unpriced model before a fallback to a priced one); None: not known.
    own_cost_usd: Optional[float] = None

    @property
    def usage_known(self) -> bool:
        return self.input_tokens is not None

    @property
    def cache_hit_ratio(self) -> Optional[float]:
        if not self.usage_known:
            return None
        return cache_hit_ratio(self.input_tokens or 0, self.cache_read_input_tokens or 0,
                               self.cache_creation_input_tokens or 0)

    @functools.cached_property
    def tokens(self) -> int:
        """The tokens known to be used (0 when the usage is not known); once per record, which a
        call's several tallies (totals, model, provider, minute, day) each ask."""
        return sum(n or 0 for n in (self.input_tokens, self.output_tokens, self.cache_read_input_tokens,
                                    self.cache_creation_input_tokens))

    def to_dict(self) -> Dict[str, Any]:
        # Every field but spent_elsewhere is a scalar: no need for dataclasses.asdict's recursive deep copy.
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.spent_elsewhere:
            out["spent_elsewhere"] = [spend.to_dict() for spend in self.spent_elsewhere]
            if self.own_cost_usd is not None:
                out["own_cost_usd"] = round(self.own_cost_usd, 12)
            else:
                del out["own_cost_usd"]
        else:
            # the rule: the usage log's line says them only where there is one
            del out["spent_elsewhere"], out["own_cost_usd"]
        ratio = self.cache_hit_ratio
        out["cache_hit_ratio"] = round(ratio, 4) if ratio is not None else None
        if self.cost_usd is not None:
            # A price times a count is a binary float: 8e-05 came out as 7.999999999999999e-05.
            # Twelve decimals are far finer than any token's price (the cheapest cost about 1e-8 USD).
            out["cost_usd"] = round(self.cost_usd, 12)
        return out


Sink = Callable[[CallRecord], None]

_REPLAY_BATCH = 500  # records read back from the usage log added under one hold of the lock

# A usage-log line's fields by kind, for reading one back (``record_from_dict``).
_TEXT_FIELDS = ("endpoint", "model", "route", "upstream_model", "provider", "upstream_host", "request_id",
                "upstream_request_id")
_MAYBE_TEXT = ("stop_reason", "error_type")
_WHOLE = ("status", "duration_ms", "attempts")
_MAYBE_WHOLE = ("ttft_ms", "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
                "cache_creation_1h_input_tokens")
_SPEND_WHOLE = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def record_from_dict(data: Any) -> Optional[CallRecord]:
    """A usage-log line (``CallRecord.to_dict``) read back; None for anything else (a hand edit, a
    line of another version's that lacks a field): all of it or nothing, never a record half made up."""
    try:
        fields = _fields_of(data)
        spent = tuple(_spend_of(item) for item in data.get("spent_elsewhere") or ())
        own = _number_or_none(data.get("own_cost_usd"))
    except (TypeError, ValueError, AttributeError, KeyError):
        return None
    return CallRecord(**fields, spent_elsewhere=spent, own_cost_usd=own)


def _fields_of(data: Dict[str, Any]) -> Dict[str, Any]:
    fields: Dict[str, Any] = {name: _typed(data[name], str) for name in _TEXT_FIELDS}
    fields.update((name, _typed(data[name], str, None)) for name in _MAYBE_TEXT)
    fields.update((name, _whole(data[name])) for name in _WHOLE)
    fields.update((name, _whole(data[name], None)) for name in _MAYBE_WHOLE)
    fields.update(stream=_typed(data["stream"], bool), local=_typed(data["local"], bool),
                  time=_number_or_none(data["time"]),
                  cost_usd=_number_or_none(data["cost_usd"]),
                  # (not in the lines of versions before it, null in some of the version that
                  # added it: 0 then)
                  web_search_requests=_whole(data.get("web_search_requests") or 0))
    if fields["time"] is None:
        raise ValueError("no time")
    return fields


def _spend_of(item: Dict[str, Any]) -> Spend:
    return Spend(_typed(item["provider"], str), _typed(item["upstream_model"], str),
                 *(_whole(item[name]) for name in _SPEND_WHOLE), cost_usd=_number_or_none(item["cost_usd"]))


def _typed(value: Any, kind: Any, *none: None) -> Any:
    """``value`` if it is of ``kind`` (a bool is no number), or None where ``none`` allows it."""
    if value is None and none:
        return None
    if isinstance(value, bool) and kind is not bool:
        raise ValueError("a boolean where a number or text belongs")
    if not isinstance(value, kind):
        raise ValueError(f"not {kind}")
    return value


def _whole(value: Any, *none: None) -> Any:
    """A count, as the upstream's are taken (``counts.count_or_none``), or None where ``none`` allows
    it. A hand-edited line's -1000000 made /metrics' counters go down, its 10**400 the page a 500."""
    number = _typed(value, int, *none)
    if number is not None and count_or_none(number) is None:
        raise ValueError("not a count")
    return number


def _number_or_none(value: Any) -> Optional[float]:
    """A cost or a time: finite, not negative, at most ``MAX_COUNT`` (two 1.7e308 made +Inf)."""
    number = _typed(value, (int, float), None)
    if number is not None and not (0 <= number <= MAX_COUNT):  # NaN fails both
        raise ValueError("not a cost")
    return None if number is None else float(number)


def finite(value: Any) -> Any:
    """``value`` (JSON-like) with every float that is not finite replaced by None: json.dumps would
    write a bare Infinity or NaN, which strict JSON parsers refuse, and the usage page reads None as
    "not known". Defence in depth: prices and counts are bounded where they come in."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def model_key(rec: CallRecord) -> ModelKey:
    """What a call is counted under: the provider and upstream model that served (and billed) it;
    ``(local)`` and the client's model for an answer of the proxy's own; one row for every call
    refused before any upstream (a bad body, no route)."""
    if rec.local:
        return LOCAL, rec.model or NONE
    if not rec.upstream_model:
        return NONE, NONE
    return rec.provider or NONE, rec.upstream_model


# --------------------------------------------------------------------------
# Building blocks.


class Tally:
    """Counts and sums over some calls."""

    __slots__ = ("requests", "errors", "local", "input_tokens", "output_tokens", "cache_read_input_tokens",
                 "cache_creation_input_tokens", "cost_usd", "priced", "unpriced")

    def __init__(self) -> None:
        self.requests = self.errors = self.local = 0
        self.input_tokens = self.output_tokens = self.cache_read_input_tokens = self.cache_creation_input_tokens = 0
        self.cost_usd = 0.0
        # Calls that used tokens with a known cost, and calls without one: a kind of token had no
        # price, or the usage is not known. The totals' cost leaves the latter out, and says so.
        self.priced = self.unpriced = 0

    def add(self, rec: CallRecord) -> None:
        self.requests += 1
        self.errors += 1 if rec.error_type else 0
        self.local += 1 if rec.local else 0
        self.add_spend(rec)

    def add_spend(self, rec: Union[CallRecord, Spend]) -> None:
        """Tokens and cost, no call: a record's (``add``), or what a target spent on a call recorded
        under another (``Spend``)."""
        self.input_tokens += rec.input_tokens or 0  # an unknown count adds nothing
        self.output_tokens += rec.output_tokens or 0
        self.cache_read_input_tokens += rec.cache_read_input_tokens or 0
        self.cache_creation_input_tokens += rec.cache_creation_input_tokens or 0
        if not isinstance(rec, CallRecord) or rec.tokens or not rec.usage_known:
            if rec.cost_usd is None:
                self.unpriced += 1
            else:
                self.priced += 1
                self.cost_usd += rec.cost_usd

    def merge(self, other: "Tally") -> None:
        for field in Tally.__slots__:
            setattr(self, field, getattr(self, field) + getattr(other, field))

    def copy(self) -> "Tally":
        twin = Tally()
        twin.merge(self)
        return twin

    def to_dict(self) -> Dict[str, Any]:
        ratio = cache_hit_ratio(self.input_tokens, self.cache_read_input_tokens, self.cache_creation_input_tokens)
        return {
            "requests": self.requests, "errors": self.errors, "local": self.local,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            # No cost at all rather than $0 when nothing these calls used has a price.
            "cost_usd": round(self.cost_usd, 6) if self.priced or not self.unpriced else None,
            "unpriced_requests": self.unpriced,
            "cache_hit_ratio": round(ratio, 4) if ratio is not None else None,
        }


class Histogram:
    """Observations in fixed buckets (``HISTOGRAM_BOUNDS``, seconds), as Prometheus keeps them."""

    __slots__ = ("counts", "sum", "count", "max", "min")

    def __init__(self) -> None:
        self.counts = [0] * (len(HISTOGRAM_BOUNDS) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0
        self.max = 0.0
        self.min = math.inf

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(HISTOGRAM_BOUNDS, value)] += 1  # the first bound >= value
        self.sum += value
        self.count += 1
        self.max = max(self.max, value)
        self.min = min(self.min, value)

    def merge(self, other: "Histogram") -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.sum += other.sum
        self.count += other.count
        self.max = max(self.max, other.max)
        self.min = min(self.min, other.min)

    def quantile(self, q: float) -> Optional[float]:
        """Linear within the bucket holding rank q (Prometheus' histogram_quantile), the bucket
        narrowed to the values seen: one call of 45 ms has a p50 of 45 ms, not the 0-50 ms bucket's
        middle, and calls of 4 to 17 ms a p50 of about 10, not 17 (the middle, 25 ms, cut to the most)."""
        if not self.count:
            return None
        rank, seen = q * self.count, 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                low = max(self.min, HISTOGRAM_BOUNDS[i - 1] if i > 0 else 0.0)
                high = min(self.max, HISTOGRAM_BOUNDS[i] if i < len(HISTOGRAM_BOUNDS) else self.max)
                return low + max(0.0, high - low) * (rank - seen) / n
            seen += n
        return self.max

    def percentiles(self) -> Dict[str, Optional[float]]:
        return {name: _ms(self.quantile(q)) for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}

    def copy(self) -> "Histogram":
        twin = Histogram()
        twin.merge(self)
        return twin


def _ms(seconds: Optional[float]) -> Optional[int]:
    return None if seconds is None else int(round(seconds * 1000))


class _Slice:
    """The calls of one minute or one day: totals, per model, and (minutes) their latencies."""

    __slots__ = ("tally", "models", "latency", "ttft", "generation")

    def __init__(self, generation: int = 0) -> None:
        self.tally = Tally()
        self.models: Dict[ModelKey, Tally] = {}
        self.latency = Histogram()
        self.ttft = Histogram()
        self.generation = generation  # the store's count of usage views when made (``Metrics._slice``)

    def add(self, rec: CallRecord, key: ModelKey, shares: "_Shares") -> None:
        self.tally.add(rec)
        _entry(self.models, key, Tally).add(shares.own)
        for spend_key, spend in shares.elsewhere:
            _entry(self.models, spend_key, Tally).add_spend(spend)

    def copy(self, generation: int) -> "_Slice":
        twin = _Slice(generation)
        twin.tally = self.tally.copy()
        twin.models = {key: tally.copy() for key, tally in self.models.items()}
        twin.latency, twin.ttft = self.latency.copy(), self.ttft.copy()
        return twin


@dataclasses.dataclass(frozen=True)
class _UsageView:
    """What ``/v1/usage`` is built from, taken under the store's lock; read without it. The slices are
    shared with the store, which copies one before changing it (``Metrics._slice``)."""

    started_at: float
    total: Tally
    by_status: Dict[str, int]
    by_error: Dict[str, int]
    streams: int
    models: Dict[ModelKey, Tally]
    durations: Dict[ModelKey, Histogram]
    ttfts: Dict[ModelKey, Histogram]
    providers: Dict[str, Tally]
    seconds: Dict[int, _Slice]
    minutes: Dict[int, _Slice]
    days: Dict[str, _Slice]
    recent: List[CallRecord]
    read_back: int = 0


def _reached_upstream(rec: CallRecord) -> bool:
    """Only these have a latency worth charting: a local answer or a refused request takes no time,
    and a count_tokens call forwarded to the model's upstream is no answer of the model."""
    return bool(rec.upstream_model) and not rec.local and not rec.endpoint.endswith("/count_tokens")


# --------------------------------------------------------------------------
# The store.


class Metrics:
    """One server's call records and totals. Thread-safe; see the module docstring for the bounds."""

    def __init__(self, sink: Optional[Sink] = None, *, recent: int = 500, max_models: int = 50,
                 minutes: int = 24 * 60, days: int = 31, started_at: Optional[float] = None) -> None:
        self._lock = threading.Lock()
        self._sink = sink
        self._sink_failing = False
        self.started_at = time.time() if started_at is None else started_at
        self._limits = (max_models, minutes, days)
        self._recent: Deque[CallRecord] = collections.deque(maxlen=recent)
        self._total = Tally()
        self._by_status: Dict[str, int] = {}
        self._by_error: Dict[str, int] = {}
        self._models: Dict[ModelKey, Tally] = {}
        self._durations: Dict[ModelKey, Histogram] = {}
        self._ttfts: Dict[ModelKey, Histogram] = {}
        self._providers: Dict[str, Tally] = {}
        self._requests: Dict[Tuple[str, str, str, str], int] = {}  # (endpoint, provider, model, status)
        self._failed_attempts: Dict[Tuple[str, str, str], int] = {}  # (provider, model, status)
        self._endpoints: Set[str] = set()
        self._named: FrozenSet[ModelKey] = frozenset()  # rows kept past the limit (``keep_rows``)
        self._seconds: Dict[int, _Slice] = {}
        self._minutes: Dict[int, _Slice] = {}
        self._days: Dict[str, _Slice] = {}
        self._streams = 0
        self._read_back = 0  # of the totals, the calls read back from the usage log (``replay``)
        # Usage views taken so far: a slice made before the last one may be in a view, which merges
        # it outside the lock, so a call is added to a copy of it instead (``_slice``).
        self._views = 0

    # ------------------------------------------------------------------
    # Writing.

    def record(self, rec: CallRecord, logged: bool = True) -> None:
        """``rec`` into every total, and to the sink (the usage log) where ``logged``."""
        rec = _bounded_names(rec)
        with self._lock:
            self._add(rec)
        if self._sink is not None and logged:
            self._write(rec)

    def replay(self, records: Iterable[CallRecord]) -> int:
        """Calls an earlier server wrote to the usage log today (``usage_replay``), oldest first:
        counted as if recorded here, before this server's own, and not written again. How many."""
        count, batch = 0, []
        for rec in records:
            batch.append(_bounded_names(rec))
            if len(batch) == _REPLAY_BATCH:
                count += self._replay_batch(batch)
                batch = []
        count += self._replay_batch(batch)
        with self._lock:  # the last calls by when they began, this server's own among them
            ordered = sorted(self._recent, key=lambda rec: rec.time)
            self._recent.clear()
            self._recent.extend(ordered)
        return count

    def _replay_batch(self, batch: List[CallRecord]) -> int:
        # A batch at a time: a day's 100,000 calls must not hold the lock (and every call's record) for seconds.
        with self._lock:
            for rec in batch:
                self._add(rec, fine=False)
            self._read_back += len(batch)
        return len(batch)

    def _add(self, rec: CallRecord, fine: bool = True) -> None:
        """``rec`` into every total (the lock held); ``fine``: into the first minutes' per-second
        buckets too, which are this server's own."""
        key = self._bounded_key(model_key(rec))
        self._total.add(rec)
        _bump(self._by_status, str(rec.status))
        if rec.error_type:
            _bump(self._by_error, rec.error_type)
        own = _less(rec, rec.spent_elsewhere) if rec.spent_elsewhere else rec
        _entry(self._models, key, Tally).add(own)
        _entry(self._providers, key[0], Tally).add(own)
        elsewhere: List[Tuple[ModelKey, Spend]] = []
        for spend in rec.spent_elsewhere:
            # Bounded as any model is, each after the rows before it are in.
            spend_key = self._bounded_key((spend.provider, spend.upstream_model[:MAX_MODEL_NAME]))
            _entry(self._models, spend_key, Tally).add_spend(spend)
            _entry(self._providers, spend_key[0], Tally).add_spend(spend)
            elsewhere.append((spend_key, spend))
        _bump(self._requests, (self._endpoint(rec.endpoint), key[0], key[1], str(rec.status)))
        self._timed(rec, key, _Shares(own, tuple(elsewhere)), fine)
        self._recent.append(rec)

    def _write(self, rec: CallRecord) -> None:
        """The record to the sink (the usage log), best effort: a full disk or a file swapped for a
        directory must not turn the client's answer into a 500. Said once per failing stretch."""
        try:
            self._sink(rec)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - any failure of the sink's I/O
            if not self._sink_failing:
                log.warning("cannot write the usage record (%s: %s); calls go on, unrecorded there until it works",
                            type(exc).__name__, exc)
            self._sink_failing = True
        else:
            if self._sink_failing:
                log.warning("the usage record is written again")
            self._sink_failing = False

    def _timed(self, rec: CallRecord, key: ModelKey, shares: "_Shares", fine: bool = True) -> None:
        when = rec.time or time.time()
        slices = [self._slice(self._minutes, int(when // 60) * 60, self._limits[1])]
        if fine and self._fine_window(when):
            slices.append(self._slice(self._seconds, int(when), _FINE_SECONDS + 1))
        for piece in slices:
            piece.add(rec, key, shares)
        self._slice(self._days, _day(when), self._limits[2]).add(rec, key, shares)
        if not _reached_upstream(rec):
            return
        seconds = rec.duration_ms / 1000
        _entry(self._durations, key, Histogram).observe(seconds)
        if rec.ttft_ms is not None:
            _entry(self._ttfts, key, Histogram).observe(rec.ttft_ms / 1000)
        for piece in slices:
            piece.latency.observe(seconds)
            if rec.ttft_ms is not None:
                piece.ttft.observe(rec.ttft_ms / 1000)

    def _fine_window(self, when: float) -> bool:
        return _fine_window(self._seconds, when)

    def keep_rows(self, keys: Iterable[ModelKey]) -> None:
        """The (provider, model) pairs the routes name: rows of their own past the limit too (a
        fallback that first answered after clients had named 50 models was lost in another row)."""
        with self._lock:
            self._named = frozenset(keys)

    def _bounded_key(self, key: ModelKey) -> ModelKey:
        # Client-chosen model names are unbounded: past the limit a provider's share one row. Its
        # provider stays: providers are the configuration's (and "(local)", "(none)").
        if key in self._models or len(self._models) < self._limits[0] or key in self._named:
            return key
        return key[0], OTHER

    def _endpoint(self, endpoint: str) -> str:
        if endpoint not in self._endpoints and len(self._endpoints) < _ENDPOINT_LIMIT:
            self._endpoints.add(endpoint)
        return endpoint if endpoint in self._endpoints else OTHER

    def _slice(self, slices: Dict[Any, _Slice], key: Any, limit: int) -> _Slice:
        """The slice to add a call to; a copy in its place if a usage view may hold it (copy on
        write: a late call still lands in an older minute, and views never see a change)."""
        found = slices.get(key)
        if found is None:
            if len(slices) >= limit:
                del slices[min(slices)]  # the oldest minute or day
            found = slices[key] = _Slice(self._views)
        elif found.generation < self._views:
            found = slices[key] = found.copy(self._views)
        return found

    def attempt_failed(self, provider: str, model: str, status: int) -> None:
        """An upstream attempt that failed (a retry or the next target followed, or the call failed):
        a provider failing every first try, hidden by its fallback, shows here."""
        with self._lock:
            provider, model = self._bounded_key((provider, model))
            key = (provider, model, str(status))
            self._failed_attempts[key] = self._failed_attempts.get(key, 0) + 1

    def stream_began(self) -> None:
        """A stream is in flight (the streams_in_flight gauge) until ``stream_ended``."""
        with self._lock:
            self._streams += 1

    def stream_ended(self) -> None:
        with self._lock:
            self._streams -= 1

    # ------------------------------------------------------------------
    # Reading.

    def snapshot(self) -> Dict[str, Any]:
        """The running totals (the JSON summary /metrics served before it spoke Prometheus)."""
        with self._lock:
            t = self._total
            return {
                "requests": t.requests, "errors": t.errors, "local": t.local,
                "input_tokens": t.input_tokens, "output_tokens": t.output_tokens,
                "cache_read_input_tokens": t.cache_read_input_tokens,
                "cache_creation_input_tokens": t.cache_creation_input_tokens,
                "by_status": dict(self._by_status),
            }

    def records(self) -> List[CallRecord]:
        """The most recent call records, oldest first."""
        with self._lock:
            return list(self._recent)

    def prometheus_view(self) -> Dict[str, Any]:
        """A consistent copy of what ``prometheus.render`` writes."""
        with self._lock:
            return {
                "requests": dict(self._requests),
                "failed_attempts": dict(self._failed_attempts),
                "errors": dict(self._by_error),
                "models": {k: t.to_dict() for k, t in self._models.items()},
                "durations": {k: h.copy() for k, h in self._durations.items()},
                "ttfts": {k: h.copy() for k, h in self._ttfts.items()},
                "streams_in_flight": self._streams,
                "started_at": self.started_at,
            }

    def usage(self, now: float, recent: int = 100) -> Dict[str, Any]:
        """Totals per model, provider and day, chart series and the last calls (``/v1/usage``).

        Built outside the lock from a view taken under it: merging a day of minutes took 52-134 ms
        in a soak run, and every call's record and stream count waits for the lock.
        """
        with self._lock:
            view = self._usage_view(recent)
        return _usage_answer(view, now)

    def _usage_view(self, recent: int) -> _UsageView:
        """Copies of what calls change in place; the slices as they are (``_slice`` copies on write)."""
        self._views += 1
        return _UsageView(
            started_at=self.started_at, total=self._total.copy(), by_status=dict(self._by_status),
            by_error=dict(self._by_error), streams=self._streams,
            models={k: t.copy() for k, t in self._models.items()},
            durations={k: h.copy() for k, h in self._durations.items()},
            ttfts={k: h.copy() for k, h in self._ttfts.items()},
            providers={p: t.copy() for p, t in self._providers.items()},
            seconds=dict(self._seconds), minutes=dict(self._minutes), days=dict(self._days),
            recent=list(self._recent)[-recent:], read_back=self._read_back,
        )


def _usage_answer(view: _UsageView, now: float) -> Dict[str, Any]:
    """The ``/v1/usage`` answer from a view (``Metrics.usage``)."""
    today = view.days.get(_day(now))
    return {
        "object": "usage",
        "now": now,
        "time_zone": time.strftime("%Z", time.localtime(now)),
        "started_at": view.started_at,
        "read_back": view.read_back,  # of the totals, calls an earlier server wrote to the usage log
        "today": _day(now),
        "totals": {**view.total.to_dict(), "by_status": view.by_status, "by_error_type": view.by_error},
        "today_totals": (today.tally if today else Tally()).to_dict(),
        "streams_in_flight": view.streams,
        "latency_ms": _merged(view.durations.values()).percentiles(),
        "ttft_ms": _merged(view.ttfts.values()).percentiles(),
        "models": _model_rows(view),
        "providers": [{"provider": p, **t.to_dict()} for p, t in sorted(view.providers.items())],
        "days": [_day_row(d, s) for d, s in sorted(view.days.items(), reverse=True)],
        "series": _series(view, now),
        "recent": [_recent_row(r) for r in view.recent[::-1]],
    }


def _model_rows(view: _UsageView) -> List[Dict[str, Any]]:
    rows = []
    for key, tally in view.models.items():
        durations, ttfts = view.durations.get(key, Histogram()), view.ttfts.get(key, Histogram())
        rows.append({"provider": key[0], "model": key[1], **tally.to_dict(),
                     "latency_ms": durations.percentiles(), "ttft_ms": ttfts.percentiles()})
    return sorted(rows, key=_cost_then_tokens, reverse=True)


def _series(view: _UsageView, now: float) -> Dict[str, Any]:
    """Buckets regrouped into at most ``_SERIES_POINTS`` equal steps, from the first call kept up to now.

    Per second while every call is less than five minutes old, else per minute. Calls read back
    from the usage log after a restart are in the minutes only: while there are older ones than this
    server's first, the day goes on per minute (per second, the charts held only the calls since).
    """
    if not view.minutes:
        return {"step_seconds": 60, "points": []}
    seconds = view.seconds
    fine = (bool(seconds) and int(now) - min(seconds) <= _FINE_SECONDS and _fine_window(seconds, now)
            and min(view.minutes) >= min(seconds) // 60 * 60)
    tier, unit, steps = (seconds, 1, _FINE_STEPS) if fine else (view.minutes, 60, _MINUTE_STEPS)
    first, last = min(tier), max(max(tier), int(now // unit) * unit)
    step = next((s for s in steps if (last - first) / s < _SERIES_POINTS), steps[-1])
    label = "%H:%M:%S" if step < 60 else "%H:%M"
    points = []
    for begin in range(first // step * step, last + 1, step):
        points.append(_point(begin, [tier[t] for t in range(begin, begin + step, unit) if t in tier], label))
    return {"step_seconds": step, "points": points[-_SERIES_POINTS:]}


def _fine_window(seconds: Dict[int, _Slice], when: float) -> bool:
    """Per-second buckets are kept only while every call so far is in them (the first minutes)."""
    first = min(seconds) if seconds else int(when)
    return int(when) - first <= _FINE_SECONDS and len(seconds) <= _FINE_SECONDS


def _entry(table: Dict[Any, T], key: Any, make: Callable[[], T]) -> T:
    """``table[key]``, made first if missing (``setdefault`` would build one every call)."""
    found = table.get(key)
    if found is None:
        found = table[key] = make()
    return found


def _bump(counts: Dict[Any, int], key: Any) -> None:
    counts[key] = counts.get(key, 0) + 1


def _day(when: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(when))


def _merged(histograms: Iterable[Histogram]) -> Histogram:
    total = Histogram()
    for h in histograms:
        total.merge(h)
    return total


def _cost_then_tokens(row: Dict[str, Any]) -> Tuple[float, int]:
    return row["cost_usd"] or 0.0, row["input_tokens"] + row["output_tokens"] + row["cache_read_input_tokens"]


def _model_list(models: Dict[ModelKey, Tally]) -> List[Dict[str, Any]]:
    rows = [{"provider": k[0], "model": k[1], **t.to_dict()} for k, t in models.items()]
    return sorted(rows, key=_cost_then_tokens, reverse=True)


def _day_row(day: str, piece: _Slice) -> Dict[str, Any]:
    return {"date": day, **piece.tally.to_dict(), "models": _model_list(piece.models)}


def _point(begin: int, minutes: List[_Slice], label: str) -> Dict[str, Any]:
    tally, latency, ttft = Tally(), Histogram(), Histogram()
    models: Dict[ModelKey, Tally] = {}
    for m in minutes:
        tally.merge(m.tally)
        for key, t in m.models.items():
            models.setdefault(key, Tally()).merge(t)
        latency.merge(m.latency)
        ttft.merge(m.ttft)
    return {"start": begin, "label": time.strftime(label, time.localtime(begin)), **tally.to_dict(),
            "models": {f"{k[0]}/{k[1]}": t.to_dict() for k, t in models.items()},
            "latency_ms": latency.percentiles(), "ttft_ms": ttft.percentiles()}


def _recent_row(rec: CallRecord) -> Dict[str, Any]:
    row = rec.to_dict()
    row["time_label"] = time.strftime("%H:%M:%S", time.localtime(rec.time)) if rec.time else ""
    row["cost_usd"] = round(rec.cost_usd, 6) if rec.cost_usd is not None else None
    return row


class _Shares(NamedTuple):
    """A call's counts and cost by the target that spent them (``Spend``)."""

    own: CallRecord  # the record with only what its own target spent
    elsewhere: Tuple[Tuple[ModelKey, Spend], ...]  # each other target's, under its (bounded) row


def _less(rec: CallRecord, spends: Tuple[Spend, ...]) -> CallRecord:
    """``rec`` without what ``spends`` counted: the part its own target spent, at the cost the
    record says it had (``own_cost_usd``; a line of a version before it: the call's less the others',
    known only where the call's is)."""
    counts = {name: _minus(getattr(rec, name), sum(getattr(s, name) for s in spends)) for name in USAGE_KEYS}
    others = [s.cost_usd for s in spends]
    cost = rec.own_cost_usd
    if cost is None and rec.cost_usd is not None and None not in others:
        cost = max(0.0, round(rec.cost_usd - sum(others), 12))  # type: ignore[arg-type]
    return dataclasses.replace(rec, cost_usd=cost, spent_elsewhere=(), own_cost_usd=None, **counts)


def _minus(total: Optional[int], part: int) -> Optional[int]:
    return None if total is None else max(0, total - part)


def _bounded_names(rec: CallRecord) -> CallRecord:
    """``rec`` with its model names cut to ``MAX_MODEL_NAME``: the door refuses longer ones, and the
    records (500 kept, the usage log, the usage page) must stay small should one get past it."""
    if len(rec.model) <= MAX_MODEL_NAME and len(rec.upstream_model) <= MAX_MODEL_NAME:
        return rec
    return dataclasses.replace(rec, model=rec.model[:MAX_MODEL_NAME],
                               upstream_model=rec.upstream_model[:MAX_MODEL_NAME])


def access_line(rec: CallRecord) -> str:
    """One line for the access log: who asked for what, where it went, what it cost, how long it took."""
    where = f"{_clean(rec.provider) or '-'}/{_clean(rec.upstream_model) or '-'}" if not rec.local else "local"
    outcome = f"{rec.status} {rec.error_type}" if rec.error_type else str(rec.status)
    cost = "-" if rec.cost_usd is None else f"${rec.cost_usd:.6f}"
    ttft = "-" if rec.ttft_ms is None else f"{rec.ttft_ms}ms"
    tries = f" attempts={rec.attempts}" if rec.attempts > 1 else ""  # retries and fallbacks; one is the rule
    theirs = f" upstream_id={_clean(rec.upstream_request_id)}" if rec.upstream_request_id else ""
    return (f"{rec.request_id}{theirs} {rec.endpoint} {_clean(rec.model) or '-'} -> {where} {outcome}"
            f"{' stream' if rec.stream else ''}{tries} in={_count(rec.input_tokens)} out={_count(rec.output_tokens)}"
            f" cached={_count(rec.cache_read_input_tokens)} cache_write={_count(rec.cache_creation_input_tokens)}"
            f" cost={cost} ttft={ttft} {rec.duration_ms}ms")


def _count(tokens: Optional[int]) -> str:
    return "-" if tokens is None else str(tokens)  # "-": not known, as for the cost


def _clean(text: str) -> str:
    """A client's model name on one log line: no line breaks, control characters or spaces (a name
    "m -> x/y 200 in=1" forged the fields after it), not too long."""
    text = text[:200]
    if text.isprintable() and " " not in text:
        return text
    return "".join(c if c.isprintable() and c != " " else "?" for c in text)
