"""Today's calls read back from the usage log when a server starts (``usage_replay``).

Each server keeps its totals in memory: after a restart, and in every ``run`` session (a new
server each time), the usage page said the day had cost nothing so far while the usage log held
11,368 of the day's calls (an outside soak probe).
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any, Dict, List

import pytest

from conftest import minimal_request, request
from test_cli import _stop, spawn  # noqa: F401  (the fixture)

from claudeproxy.metrics import CallRecord, Metrics, Spend, record_from_dict
from claudeproxy.usage_replay import replay_today, todays_records

NOW = time.mktime((2026, 12, 6, 15, 0, 0, 0, 0, -1))  # 15:00 local time
YESTERDAY_LATE = time.mktime((2026, 12, 5, 23, 59, 0, 0, 0, -1))


def call(when: float, model: str = "gpt-4.1", cost: float = 0.01, **extra: Any) -> CallRecord:
    fields: Dict[str, Any] = dict(endpoint="/v1/messages", model="claude-sonnet-5-5", upstream_model=model,
                                  provider="upstream", status=200, duration_ms=120, input_tokens=100, output_tokens=20,
                                  cost_usd=cost, time=when, request_id=f"req_{when}", attempts=1)
    fields.update(extra)
    return CallRecord(**fields)


def write_log(path: Any, lines: List[Any]) -> int:
    text = "".join((line if isinstance(line, str) else json.dumps(line.to_dict(), sort_keys=True)) + "\n"
                   for line in lines)
    path.write_text(text)
    return len(text.encode())


def test_a_record_reads_back_as_it_was_written() -> None:
    rec = call(NOW, ttft_ms=40, stream=True, cache_read_input_tokens=900, error_type=None,
               spent_elsewhere=(Spend("other", "m2", 5, 1, 0, 0, 0.001),))
    assert record_from_dict(json.loads(json.dumps(rec.to_dict()))) == rec


@pytest.mark.parametrize("broken", [
    {"endpoint": "/v1/messages"},  # fields missing
    {**call(NOW).to_dict(), "input_tokens": "100"},
    {**call(NOW).to_dict(), "status": True},
    {**call(NOW).to_dict(), "cost_usd": -1},
    {**call(NOW).to_dict(), "time": None},
    {**call(NOW).to_dict(), "spent_elsewhere": [{"provider": "p"}]},
    # Numbers no upstream's usage is taken with (probe Q: a hand-edited or damaged line's -1000000
    # made /metrics' counters go down, its 10**400 made the usage page a 500 for the rest of the
    # day, two costs of 1.7e308 made /metrics' cost +Inf).
    {**call(NOW).to_dict(), "input_tokens": -1000000},
    {**call(NOW).to_dict(), "output_tokens": 10 ** 400},
    {**call(NOW).to_dict(), "cost_usd": 1.7e308},
    {**call(NOW).to_dict(), "duration_ms": -5},
    {**call(NOW).to_dict(), "time": 10 ** 400},
    {**call(NOW).to_dict(), "web_search_requests": -1},
    {**call(NOW, spent_elsewhere=(Spend("other", "m2", 5, 1, 0, 0, 0.001),)).to_dict(),
     "spent_elsewhere": [{"provider": "o", "upstream_model": "m", "input_tokens": -5, "output_tokens": 0,
                          "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0, "cost_usd": 0}]},
    {**call(NOW, spent_elsewhere=(Spend("other", "m2", 5, 1, 0, 0, 0.001),)).to_dict(), "own_cost_usd": -1},
    {**call(NOW, spent_elsewhere=(Spend("other", "m2", 5, 1, 0, 0, 0.001),)).to_dict(), "own_cost_usd": "x"},
    [1, 2], "text", None,
])
def test_what_is_no_record_is_none(broken: Any) -> None:
    assert record_from_dict(broken) is None


def test_only_todays_calls_are_read_and_only_up_to_the_size_given(tmp_path: Any) -> None:
    log = tmp_path / "usage.jsonl"
    early, later, after = call(NOW - 3600), call(NOW - 60, model="o3"), call(NOW + 30, model="late")
    # A call begun yesterday and written after some of today's (a long stream): not today's, but
    # it does not stop the reading before the today's calls written before it.
    size = write_log(log, [call(NOW - 86400), call(YESTERDAY_LATE), early, call(YESTERDAY_LATE + 30), "{not json",
                           '{"endpoint": "/v1/messages"}', later])
    with log.open("a") as fh:  # this server's own, written after it started: not read back
        fh.write(json.dumps(after.to_dict()) + "\n" + '{"half": ')
    assert todays_records(str(log), size, NOW) == [early, later]
    metrics = Metrics()
    metrics.record(call(NOW + 10, model="mine"))
    assert replay_today(metrics, str(log), size, NOW) == 2
    usage = metrics.usage(NOW + 20)
    assert usage["today_totals"]["requests"] == 3
    assert usage["today_totals"]["cost_usd"] == pytest.approx(0.03)
    # The page's last calls: newest first, this server's own on top.
    assert [r["upstream_model"] for r in usage["recent"]] == ["mine", "o3", "gpt-4.1"]


def test_a_log_in_many_blocks_is_read_whole(tmp_path: Any) -> None:
    log = tmp_path / "usage.jsonl"
    calls = [call(NOW - 7200 + i, request_id="r" * 300 + str(i)) for i in range(2000)]  # about 1 MB
    size = write_log(log, calls)
    assert todays_records(str(log), size, NOW) == calls


def test_a_restarted_server_begins_the_day_where_the_log_left_it(spawn: Any, fake_upstream: Any,  # noqa: F811
                                                                  tmp_path: Any) -> None:
    usage = tmp_path / "usage.jsonl"
    proc, port = spawn("--usage-log", str(usage), "--model", "gpt-4o")
    for _ in range(2):
        assert request(f"http://127.0.0.1:{port}", "POST", "/v1/messages", minimal_request()).status == 200
    _stop(proc, signal.SIGTERM, 5 + 1)
    before = [json.loads(line) for line in usage.read_text().splitlines()]
    assert len(before) == 2
    proc, port = spawn("--usage-log", str(usage), "--model", "gpt-4o")
    url = f"http://127.0.0.1:{port}"
    assert request(url, "POST", "/v1/messages", minimal_request()).status == 200
    deadline = time.monotonic() + 10
    while True:  # the log is read back in a thread of its own, after the server listens
        today = request(url, "GET", "/v1/usage").json["today_totals"]
        if today["requests"] == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert today["requests"] == 3, today
    assert today["cost_usd"] == pytest.approx(3 * (10 * 2.5 + 5 * 10.0) / 1e6)
    assert request(url, "GET", "/v1/usage").json["read_back"] == 2
    # The page tells this server's calls from those read back (it said "3 calls since start": probe O).
    page = request(url, "GET", "/").body.decode("utf-8")
    assert "1 calls since start, 2 read back from the usage log" in page, page
    _stop(proc, signal.SIGTERM, 5 + 1)
    assert len(usage.read_text().splitlines()) == 3  # nothing written twice
