"""Tokens and money: call records, cost, /metrics (Prometheus), /v1/usage and the usage page.

A known sequence of calls goes through a proxy with three providers (OpenAI
prices from the built-in table, a config price override, a local model
without prices) against the fake upstream; the tests read back what a user
would: the Prometheus text (parsed by ``prom.py``), the usage JSON, the page.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html.parser
import json
import math
import re
import threading
import time
import types
from typing import Any, Dict, Iterator, List, Optional, Tuple

import prom
import pytest

import claudeproxy
from claudeproxy.config import Provider, Route, RouteTarget
from claudeproxy.cost import call_cost
from claudeproxy.counts import count_or_none
from claudeproxy.metrics import HISTOGRAM_BOUNDS, CallRecord, Histogram, Metrics, access_line, record_from_dict
from claudeproxy.model_facts import PRICES_CHECKED, ModelFacts, builtin_facts
from claudeproxy.prometheus import render as prometheus_render
from claudeproxy.usage_page import page_headers, render
from conftest import UPSTREAM_KEY, minimal_request, quota_probe, record_for, request
from fakes import (Fault, FakeUpstream, Gate, Reply, Sleep, StreamClient, chunk, completion, json_reply,
                   refused_port, sse_reply)
from test_http_errors import connect, json_post
from sse_checks import events_of

KEY = claudeproxy.static_token(UPSTREAM_KEY)
EVIL = 'evil"model\\name\n<script>alert(1)</script>'


def usage(prompt: int, completion_tokens: int, cached: int = 0) -> Dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens, "prompt_tokens_details": {"cached_tokens": cached}}


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream()
    yield upstream
    upstream.close()


@pytest.fixture
def proxy(fake: FakeUpstream) -> Iterator[Any]:
    """opus -> openai/gpt-4o (built-in prices), sonnet -> priced/house-model (config prices),
    everything else -> ollama with the client's model name (no prices)."""
    priced = ModelFacts(input_price=1.0, output_price=2.0, cache_read_price=0.5, cache_write_price=1.5)
    providers = (Provider("openai", fake.url, token=KEY),
                 Provider("priced", fake.url, token=KEY, models=(("house-*", priced),)),
                 Provider("ollama", fake.url))
    routes = (Route("opus", RouteTarget("openai", "gpt-4o")), Route("sonnet", RouteTarget("priced", "house-model")),
              Route("*", RouteTarget("ollama")))
    records: List[CallRecord] = []
    server = claudeproxy.start(providers=providers, routes=routes, metrics_sink=records.append)
    yield types.SimpleNamespace(url=server.url, records=records, server=server)
    server.shutdown(grace=1.0)


def post(proxy: Any, body: Any, path: str = "/v1/messages") -> Any:
    return request(proxy.url, "POST", path, body, {"anthropic-version": "2023-06-01"})


def wait_records(proxy: Any, n: int) -> List[CallRecord]:
    deadline = time.monotonic() + 5
    while len(proxy.records) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(proxy.records) >= n, proxy.records
    return list(proxy.records)


def known_session(proxy: Any, fake: FakeUpstream) -> None:
    """8 calls: 3 priced JSON, 1 stream, 1 unpriced, 1 upstream 429, 1 bad body (400), 1 quota probe,
    plus 1 count_tokens: 9 call records."""
    fake.push(json_reply(completion("a", usage=usage(1000, 100, cached=200))),  # gpt-4o
              json_reply(completion("b", usage=usage(2000, 50, cached=1500))),  # gpt-4o
              json_reply(completion("c", usage=usage(400, 40))),  # house-model
              sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "hi"}), chunk({}, "stop"),
                        {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
                         "usage": usage(300, 30, cached=100)}),  # house-model, streamed
              json_reply(completion("d", usage=usage(500, 60))),  # qwen3-coder, no price
              json_reply({"error": {"message": "slow down", "type": "rate_limit_error"}}, status=429))
    assert post(proxy, minimal_request(model="claude-opus-4-1")).status == 200
    assert post(proxy, minimal_request(model="claude-opus-4-1")).status == 200
    assert post(proxy, minimal_request(model="claude-sonnet-4-5")).status == 200
    assert post(proxy, minimal_request(model="claude-sonnet-4-5", stream=True)).status == 200
    assert post(proxy, minimal_request(model="qwen3-coder")).status == 200
    assert post(proxy, minimal_request(model="qwen3-coder")).status == 429
    assert post(proxy, b"{not json").status == 400
    assert post(proxy, quota_probe(model="claude-opus-4-1")).status == 200
    assert post(proxy, {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]},
                "/v1/messages/count_tokens").status == 200
    # A call is recorded once its answer is written, so a quick next call (another connection,
    # another thread) may be recorded first: put them in the order the calls began.
    proxy.records[:] = sorted(wait_records(proxy, 9), key=lambda r: r.time)


# ---------------------------------------------------------------------------
# Cost arithmetic.


def test_cost_is_tokens_times_prices_per_million() -> None:
    facts = builtin_facts("gpt-4o")
    assert (facts.input_price, facts.output_price, facts.cache_read_price) == (2.50, 10.00, 1.25)
    # 800 uncached input, 100 output, 200 cached: 800*2.5 + 100*10 + 200*1.25 per million.
    assert call_cost(facts, 800, 100, 200, 0) == pytest.approx(0.00325)
    assert call_cost(facts, 0, 0, 0, 0) == 0.0


def test_cost_needs_a_price_for_every_kind_of_token_used() -> None:
    facts = builtin_facts("gemini-2.5-pro")  # no cache-write price: Gemini bills cache storage by the hour
    assert call_cost(facts, 100, 10, 0, 0) is not None
    assert call_cost(facts, 100, 10, 0, 50) is None  # writes it cannot price: no cost, not a partial one
    # OpenAI bills a cache write as input (probe Y, D3: a call that reported one had no cost at all).
    assert call_cost(builtin_facts("gpt-4o"), 100, 10, 0, 50) == pytest.approx(150 * 2.5 / 1e6 + 10 * 10.0 / 1e6)
    assert call_cost(ModelFacts(), 100, 10) is None  # a model without a price
    assert call_cost(None, 100, 10) is None
    assert call_cost(ModelFacts(output_price=3.0), 0, 1_000_000) == pytest.approx(3.0)


def test_a_cost_too_large_for_a_float_is_no_cost() -> None:
    """Defence in depth behind the bounds at start: an infinite cost made the page a 500."""
    assert call_cost(ModelFacts(input_price=math.inf), 100, 0) is None
    assert call_cost(ModelFacts(input_price=1e308, output_price=1e308), 10 ** 6, 10 ** 6) is None
    assert call_cost(ModelFacts(input_price=1.0), 10 ** 400, 0) is None  # no float holds the count


def test_a_count_too_large_to_be_one_is_no_count() -> None:
    assert count_or_none(2 ** 53 - 1) == 2 ** 53 - 1
    assert count_or_none(10 ** 400) is None and count_or_none(2 ** 53) is None


@pytest.mark.parametrize("cost", [math.inf, math.nan, 1e300])
def test_usage_json_page_and_metrics_stay_valid_with_a_cost_that_is_not_finite(proxy: Any, cost: float) -> None:
    """/v1/usage wrote a bare Infinity (not JSON; strict parsers refuse it) and the page was a 500."""
    now = time.time()
    for _ in range(2):  # twice: 1e300 + 1e300 is still finite, inf + inf is not a number
        proxy.server.metrics.record(CallRecord("/v1/messages", model="m", provider="openai", upstream_model="gpt-4o",
                                               time=now, input_tokens=2 ** 53 - 1, output_tokens=1, cost_usd=cost))

    def strict(text: str) -> Any:
        return json.loads(text, parse_constant=lambda word: pytest.fail(f"not JSON: {word}"))

    usage_json = request(proxy.url, "GET", "/v1/usage")
    assert usage_json.status == 200
    [row] = [r for r in strict(usage_json.body.decode("utf-8"))["models"] if r["model"] == "gpt-4o"]
    assert row["cost_usd"] == (cost * 2 if math.isfinite(cost) else None)
    assert request(proxy.url, "GET", "/").status == 200
    assert request(proxy.url, "GET", "/metrics").status == 200
    metrics_json = request(proxy.url, "GET", "/metrics?format=json")
    assert metrics_json.status == 200 and strict(metrics_json.body.decode("utf-8"))["requests"] == 2


def test_cost_and_tokens_of_a_known_session(proxy: Any, fake: FakeUpstream) -> None:
    known_session(proxy, fake)
    by_model = {(r.provider, r.upstream_model): r for r in proxy.records if r.status == 200 and not r.local}
    first = [r for r in proxy.records if r.upstream_model == "gpt-4o"][0]
    assert (first.input_tokens, first.cache_read_input_tokens, first.output_tokens) == (800, 200, 100)
    assert first.cost_usd == pytest.approx(0.00325)
    assert first.cache_hit_ratio == pytest.approx(0.2)
    house = [r for r in proxy.records if r.upstream_model == "house-model"]
    assert house[0].cost_usd == pytest.approx((400 * 1.0 + 40 * 2.0) / 1e6)  # the config's prices
    assert house[1].stream and house[1].cost_usd == pytest.approx((200 * 1.0 + 30 * 2.0 + 100 * 0.5) / 1e6)
    unpriced = by_model[("ollama", "qwen3-coder")]
    assert (unpriced.input_tokens, unpriced.output_tokens, unpriced.cost_usd) == (500, 60, None)
    # The host that answered each upstream call; none for the proxy's own answers.
    assert {r.upstream_host for r in proxy.records if not r.local and r.status == 200} == {"127.0.0.1"}
    assert {r.upstream_host for r in proxy.records if r.local} == {""}


# ---------------------------------------------------------------------------
# Call records.


def test_every_call_is_recorded_also_4xx_local_and_failures(proxy: Any, fake: FakeUpstream) -> None:
    known_session(proxy, fake)
    recs = proxy.records
    assert [(r.endpoint.rsplit("/", 1)[-1], r.status, r.local) for r in recs] == [
        ("messages", 200, False), ("messages", 200, False), ("messages", 200, False), ("messages", 200, False),
        ("messages", 200, False), ("messages", 429, False), ("messages", 400, False), ("messages", 200, True),
        ("count_tokens", 200, True),
    ]
    assert recs[5].error_type == "rate_limit_error" and recs[5].upstream_model == "qwen3-coder"
    assert recs[6].error_type == "invalid_request_error" and recs[6].model == ""
    assert recs[7].cost_usd == 0.0 and recs[7].upstream_model == ""
    # Answers of the proxy's own name "(local)" as their provider, as /metrics and /v1/usage count them.
    assert recs[8].model == "claude-sonnet-4-5" and recs[8].provider == "(local)" and recs[8].route
    assert recs[7].provider == "(local)"
    for rec in recs:
        assert rec.time == pytest.approx(time.time(), abs=30) and rec.request_id.startswith("req_")
    stream = recs[3]
    assert stream.ttft_ms is not None and 0 <= stream.ttft_ms <= stream.duration_ms
    assert all(r.ttft_ms is None for r in recs if not r.stream)


def test_a_bad_request_is_not_counted_against_the_model_it_was_routed_to(proxy: Any, fake: FakeUpstream) -> None:
    assert post(proxy, {"model": "claude-opus-4-1", "max_tokens": 10, "messages": "oops"}).status == 400
    rec = wait_records(proxy, 1)[0]
    assert (rec.provider, rec.route, rec.upstream_model, rec.error_type) == ("openai", "opus", "", "invalid_request_error")
    models = {(m["provider"], m["model"]) for m in request(proxy.url, "GET", "/v1/usage").json["models"]}
    assert models == {("(none)", "(none)")} and fake.requests == []


def test_a_count_tokens_call_refused_for_its_body_is_counted_before_any_upstream(proxy: Any) -> None:
    """A count_tokens body the local count refuses is a bad request, "(none)", not an answer of the proxy."""
    bad = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": [{"type": "nope"}]}]}
    assert post(proxy, bad, path="/v1/messages/count_tokens").status == 400
    rec = wait_records(proxy, 1)[0]
    assert (rec.status, rec.local, rec.error_type) == (400, False, "invalid_request_error")
    providers = {p["provider"]: p["requests"] for p in request(proxy.url, "GET", "/v1/usage").json["providers"]}
    assert providers == {"(none)": 1}


def test_time_to_first_token_is_when_content_went_out(proxy: Any, fake: FakeUpstream) -> None:
    fake.push(sse_reply(chunk({"role": "assistant", "content": ""}), Sleep(0.3), chunk({"content": "late"}),
                        Sleep(0.3), chunk({}, "stop")))
    assert post(proxy, minimal_request(model="qwen3-coder", stream=True)).status == 200
    rec = wait_records(proxy, 1)[0]
    assert rec.ttft_ms is not None and 250 <= rec.ttft_ms <= rec.duration_ms - 250, rec


def test_access_log_line_says_who_where_what_and_how_long(proxy: Any, fake: FakeUpstream, caplog: Any) -> None:
    caplog.set_level("INFO", logger="claudeproxy")
    fake.push(json_reply(completion("a", usage=usage(1000, 100, cached=200))))
    assert post(proxy, minimal_request(model="claude-opus-4-1")).status == 200
    assert proxy.server.server.wait_idle(2)  # the line is logged after the answer went out
    lines = [r for r in caplog.records if "->" in r.getMessage() and r.name == "claudeproxy.pipeline"]
    assert len(lines) == 1
    text = lines[0].getMessage()
    assert re.match(r"^req_\w+ /v1/messages claude-opus-4-1 -> openai/gpt-4o 200 in=800 out=100 cached=200 "
                    r"cache_write=0 cost=\$0\.003250 ttft=- \d+ms$", text), text
    assert lines[0].call.cost_usd == pytest.approx(0.00325)  # type: ignore[attr-defined]


def test_a_usage_log_that_cannot_be_written_changes_no_answer(fake: FakeUpstream, caplog: Any) -> None:
    # A full disk (or the file swapped for a directory) under --usage-log: the sink raises. The
    # client's answers stay what they were, never a 500; the failure is said once, and its end.
    failing = [True]
    written: List[CallRecord] = []

    def sink(rec: CallRecord) -> None:
        if failing[0]:
            raise OSError(28, "No space left on device")
        written.append(rec)

    server = claudeproxy.start(upstream=fake.url, token=claudeproxy.static_token(UPSTREAM_KEY), metrics_sink=sink)
    try:
        with caplog.at_level("WARNING", logger="claudeproxy"):
            resp = request(server.url, "POST", "/v1/messages", b"{bad", {"content-type": "application/json"})
            assert resp.status == 400, resp
            fake.push(json_reply({"error": {"message": "slow down"}}, status=429, headers=(("Retry-After", "7"),)))
            resp = request(server.url, "POST", "/v1/messages", minimal_request())
            assert resp.status == 429 and resp.headers.get("retry-after") == "7", resp
            assert request(server.url, "POST", "/v1/messages", minimal_request()).status == 200
            assert server.server.wait_idle(2)
            failing[0] = False
            assert request(server.url, "POST", "/v1/messages", minimal_request()).status == 200
            assert server.server.wait_idle(2)
    finally:
        server.shutdown(grace=1.0)
    said = [r.getMessage() for r in caplog.records if "usage record" in r.getMessage()]
    assert len(said) == 2 and "No space left on device" in said[0] and "written again" in said[1], said
    assert len(written) == 1 and written[0].status == 200


def test_a_record_the_disk_took_only_part_of_is_cut_off_again(tmp_path: Any, monkeypatch: Any) -> None:
    """A full disk takes half a line: left there, the next record continued it, and a reader of JSON
    lines lost both. The half is cut off; the records before and after stay whole."""
    import os

    from claudeproxy.cli import usage_writer

    path = str(tmp_path / "usage.jsonl")
    write = usage_writer(path)
    write(CallRecord("/v1/messages", model="first", status=200))
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError):
        write(CallRecord("/v1/messages", model="lost", status=200))
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:10]))  # a short write, no error
    with pytest.raises(OSError):
        write(CallRecord("/v1/messages", model="short", status=200))
    monkeypatch.setattr(os, "write", real_write)
    write(CallRecord("/v1/messages", model="after", status=200))
    with open(path, encoding="utf-8") as fh:
        assert [json.loads(line)["model"] for line in fh] == ["first", "after"]


@pytest.mark.skipif(not hasattr(__import__("os"), "O_NOFOLLOW"), reason="a platform without O_NOFOLLOW")
def test_a_link_put_under_the_usage_logs_name_after_the_start_is_not_written_through(tmp_path: Any) -> None:
    """Probe AI 4: the log is opened by its name for each record; another user who may write to its
    folder put a link there (to the proxy user's shell rc file, say) and every record, a refused
    request's path in it, went there. A link there at the start, the user's own, is still followed."""
    import os

    from claudeproxy.cli import usage_writer

    path, victim = tmp_path / "usage.jsonl", tmp_path / "bashrc"
    victim.write_text("# mine\n")
    write = usage_writer(str(path))  # no file yet (the start's check leaves none)
    os.symlink(victim, path)
    with pytest.raises(OSError, match="became a symbolic link after the start"):
        write(CallRecord("/v1/messages", model="planted", status=200))
    assert victim.read_text() == "# mine\n"
    chosen, target = tmp_path / "chosen.jsonl", tmp_path / "elsewhere.jsonl"
    os.symlink(target, chosen)
    usage_writer(str(chosen))(CallRecord("/v1/messages", model="followed", status=200))
    assert json.loads(target.read_text())["model"] == "followed"


@pytest.mark.skipif(not hasattr(__import__("os"), "O_NOFOLLOW"), reason="a platform without O_NOFOLLOW")
def test_a_link_another_user_put_under_the_name_before_the_start_is_not_followed(tmp_path: Any) -> None:
    """Review AJ R4: a link there at the start was taken for the user's own, whoever made it (and
    `run` starts a server each session: time enough to plant one). Another user's stops the start."""
    import os

    from claudeproxy.cli import check_appendable, usage_writer

    path, victim = tmp_path / "usage.jsonl", tmp_path / "bashrc"
    victim.write_text("# mine\n")
    os.symlink(victim, path)
    try:
        os.lchown(path, 65534, 65534)  # as another user made it
    except PermissionError:
        pytest.skip("only root can make a link another user's here")
    with pytest.raises(ValueError, match="is a symbolic link another user made"):
        check_appendable(str(path), "--usage-log")
    with pytest.raises(OSError):
        usage_writer(str(path))(CallRecord("/v1/messages", model="planted", status=200))
    assert victim.read_text() == "# mine\n"


def test_a_record_after_a_line_cut_short_starts_a_line_of_its_own(tmp_path: Any) -> None:
    """A log whose last line a crash cut short (no newline): the next record was glued to it, and
    the read-back at the next start lost that call (probe Q)."""
    from claudeproxy.cli import usage_writer
    from claudeproxy.usage_replay import todays_records

    path = tmp_path / "usage.jsonl"
    write = usage_writer(str(path))
    write(CallRecord("/v1/messages", model="before", status=200, time=time.time()))
    with open(path, "ab") as fh:
        fh.write(b'{"attempts": 1, "input_tokens": 5')
    write(CallRecord("/v1/messages", model="after", status=200, time=time.time()))
    write(CallRecord("/v1/messages", model="last", status=200, time=time.time()))
    lines = path.read_bytes().split(b"\n")
    assert lines[1] == b'{"attempts": 1, "input_tokens": 5' and lines[-1] == b""
    read = todays_records(str(path), path.stat().st_size, time.time())
    assert [r.model for r in read] == ["before", "after", "last"]


def test_cutting_off_a_failed_record_leaves_another_servers_record_whole(tmp_path: Any, monkeypatch: Any) -> None:
    """Two servers (two ``run`` sessions) on one usage log: one's cut of a record the disk took half
    of came after the other had appended, and cut that record with it (probe Q)."""
    import os

    from claudeproxy.cli import usage_writer

    path = str(tmp_path / "usage.jsonl")
    first, second = usage_writer(path), usage_writer(path)  # two servers: two locks of their own
    first(CallRecord("/v1/messages", model="start", status=200))
    real_write = os.write
    main = threading.get_ident()
    other = threading.Thread(target=second, args=(CallRecord("/v1/messages", model="other", status=200),))

    def half_then_full(fd: int, data: bytes) -> int:
        if threading.get_ident() != main:
            return real_write(fd, data)
        other.start()
        other.join(0.3)  # it appends now, unless the file is locked
        real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError):
        first(CallRecord("/v1/messages", model="lost", status=200))
    monkeypatch.setattr(os, "write", real_write)
    other.join(5)
    assert not other.is_alive()
    with open(path, encoding="utf-8") as fh:
        assert [json.loads(line)["model"] for line in fh] == ["start", "other"]


def test_a_usage_log_held_locked_by_another_or_not_readable_is_written_all_the_same(tmp_path: Any,
                                                                                       monkeypatch: Any) -> None:
    """The writer's lock and its look at the last byte must cost no record: a log another program
    holds locked (a rotation under flock(1)) held the call's thread as long as it did, and a log
    the server may write but not read failed every record (a review)."""
    import os

    fcntl = pytest.importorskip("fcntl")
    from claudeproxy.cli import usage_writer

    path = str(tmp_path / "usage.jsonl")
    write = usage_writer(path)
    write(CallRecord("/v1/messages", model="first", status=200))
    holder = os.open(path, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        started = time.monotonic()
        for n in range(5):
            write(CallRecord("/v1/messages", model=f"while-held-{n}", status=200))
        # The first waits for the lock a while (0.5 s), the others behind it not at all.
        assert time.monotonic() - started < 2.0, "every record waited for another program's lock"
    finally:
        os.close(holder)
    real_open = os.open

    def no_reading(file: Any, flags: int, *args: Any) -> int:
        if flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied")
        return real_open(file, flags, *args)

    monkeypatch.setattr(os, "open", no_reading)
    write(CallRecord("/v1/messages", model="write-only", status=200))
    monkeypatch.setattr(os, "open", real_open)
    with open(path, encoding="utf-8") as fh:
        assert [json.loads(line)["model"] for line in fh] == ["first", *(f"while-held-{n}" for n in range(5)),
                                                              "write-only"]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_a_model_name_past_the_cap_is_refused_before_it_is_recorded(proxy: Any, fake: FakeUpstream,
                                                                   path: str) -> None:
    """Model names of any length were kept in 500 records, the usage log and /v1/usage (ten 30 MB
    names: +340 MB, and a 113 MB /v1/usage in 44 s); count_tokens answered them at no upstream cost."""
    long_name = "claude-" + "q" * 300
    resp = post(proxy, minimal_request(model=long_name), path)
    assert resp.status == 400 and resp.json["error"]["type"] == "invalid_request_error", resp.body
    assert resp.json["error"]["message"].startswith("model: must be at most 256 characters")
    assert long_name not in resp.body.decode()
    rec = wait_records(proxy, 1)[0]
    assert (rec.status, rec.model) == (400, "")
    assert "qqqq" not in request(proxy.url, "GET", "/v1/usage").body.decode()
    assert fake.requests == []
    assert post(proxy, minimal_request(model="claude-" + "q" * 249), path).status == 200  # 256: still a name


def test_the_metrics_keep_at_most_256_characters_of_a_model_name() -> None:
    """Defence in depth behind the door's 400: a record's names are cut before they are kept."""
    sunk: List[CallRecord] = []
    store = Metrics(sink=sunk.append)
    store.record(CallRecord(endpoint="/v1/messages", model="m" * 5000, upstream_model="u" * 5000, provider="p",
                            status=200, time=time.time(), request_id="req_1"))
    usage = store.usage(time.time())
    assert [(len(r["model"]), len(r["upstream_model"])) for r in usage["recent"]] == [(256, 256)]
    assert [len(r["model"]) for r in usage["models"]] == [256]
    assert (len(sunk[0].model), len(sunk[0].upstream_model)) == (256, 256)


def test_access_line_counts_the_attempts_a_call_took() -> None:
    # README, Reliability settings: the access log names what answered and how many calls it took.
    retried = access_line(CallRecord("/v1/messages", model="m", provider="p2", upstream_model="m2", status=200,
                                     attempts=4))
    assert "-> p2/m2 200 attempts=4 in=" in retried
    assert "attempts" not in access_line(CallRecord("/v1/messages", model="m", status=200, attempts=1))


def test_access_line_keeps_a_hostile_model_name_on_one_line() -> None:
    line = access_line(CallRecord("/v1/messages", model="a\nFAKE 200 line\r\x1b[31m", status=400, error_type="x"))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line


def test_access_line_keeps_a_model_name_with_spaces_in_its_field() -> None:
    """A name "m -> openai/gpt-4o 200 stream in=1" made the fields after it look like the call's (probe AA)."""
    line = access_line(CallRecord("/v1/messages", model="m -> x/y 200 in=1", provider="p", upstream_model="u",
                                  status=400, error_type="invalid_request_error"))
    assert line.split(" ")[2:5] == ["m?->?x/y?200?in=1", "->", "p/u"], line


# ---------------------------------------------------------------------------
# /metrics in the Prometheus text format.


def test_prometheus_counts_after_a_known_session(proxy: Any, fake: FakeUpstream) -> None:
    known_session(proxy, fake)
    resp = request(proxy.url, "GET", "/metrics")
    assert resp.status == 200 and resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    s = prom.parse(resp.body.decode("utf-8"))
    assert prom.total(s, "claudeproxy_requests_total") == 9
    assert prom.value(s, "claudeproxy_requests_total", endpoint="/v1/messages", provider="openai", model="gpt-4o",
                      status="200") == 2
    assert prom.value(s, "claudeproxy_requests_total", endpoint="/v1/messages", provider="ollama",
                      model="qwen3-coder", status="429") == 1
    assert prom.total(s, "claudeproxy_requests_total", status="400") == 1
    assert prom.total(s, "claudeproxy_requests_total", provider="(local)") == 2  # quota probe + count_tokens
    assert prom.total(s, "claudeproxy_requests_total", endpoint="/v1/messages/count_tokens") == 1
    assert prom.value(s, "claudeproxy_errors_total", type="rate_limit_error") == 1
    assert prom.value(s, "claudeproxy_errors_total", type="invalid_request_error") == 1
    assert prom.total(s, "claudeproxy_errors_total") == 2
    tokens = lambda model, kind: prom.total(s, "claudeproxy_tokens_total", model=model, kind=kind)  # noqa: E731
    assert (tokens("gpt-4o", "input"), tokens("gpt-4o", "cache_read"), tokens("gpt-4o", "output")) == (1300, 1700, 150)
    assert (tokens("house-model", "input"), tokens("house-model", "cache_read")) == (600, 100)
    assert tokens("qwen3-coder", "input") == 500 and tokens("qwen3-coder", "cache_write") == 0
    assert prom.value(s, "claudeproxy_cost_usd_total", provider="openai", model="gpt-4o") == pytest.approx(
        (1300 * 2.5 + 150 * 10 + 1700 * 1.25) / 1e6)
    assert prom.value(s, "claudeproxy_cost_usd_total", provider="ollama", model="qwen3-coder") == 0
    assert prom.value(s, "claudeproxy_unpriced_requests_total", provider="ollama", model="qwen3-coder") == 1
    # Histograms: every call that reached an upstream has a duration; only the stream a first token.
    assert prom.total(s, "claudeproxy_request_duration_seconds_count") == 6
    assert prom.total(s, "claudeproxy_time_to_first_token_seconds_count") == 1
    assert prom.value(s, "claudeproxy_streams_in_flight") == 0
    assert prom.value(s, "claudeproxy_prices_info", checked=PRICES_CHECKED) == 1
    # The JSON summary is still there.
    old = request(proxy.url, "GET", "/metrics?format=json").json
    assert old["requests"] == 9 and old["errors"] == 2 and old["local"] == 2 and old["by_status"]["429"] == 1


def test_a_forwarded_count_tokens_call_is_not_timed_as_an_answer_of_the_model() -> None:
    """A count_tokens call forwarded to the model's upstream takes a few ms: in the model's latency
    it would make its answers look faster than they are."""
    store = Metrics()
    answer = CallRecord(endpoint="/v1/messages", provider="native", upstream_model="m", model="m", status=200,
                        duration_ms=4000, time=time.time(), request_id="req_1")
    count = CallRecord(endpoint="/v1/messages/count_tokens", provider="native", upstream_model="m", model="m",
                       status=200, duration_ms=5, time=time.time(), request_id="req_2")
    store.record(answer)
    for _ in range(5):
        store.record(count)
    s = prom.parse(prometheus_render(store.prometheus_view(), PRICES_CHECKED))
    assert prom.value(s, "claudeproxy_request_duration_seconds_count", provider="native", model="m") == 1


def test_prometheus_escapes_a_hostile_model_name(proxy: Any, fake: FakeUpstream) -> None:
    assert post(proxy, minimal_request(model=EVIL)).status == 200
    wait_records(proxy, 1)
    s = prom.parse(request(proxy.url, "GET", "/metrics").body.decode("utf-8"))
    # (Its backslash doubled: a name with one stays apart from a name with a control character.)
    assert prom.value(s, "claudeproxy_requests_total", endpoint="/v1/messages", provider="ollama",
                      model=EVIL.replace("\\", "\\\\"), status="200") == 1


def test_prometheus_keeps_a_model_name_with_line_breaks_on_its_line(proxy: Any, fake: FakeUpstream) -> None:
    # The format escapes \\, " and \n only; a CR, NUL or U+2028 left raw splits the sample for a
    # scraper that reads lines (tests/prom.py does). They are written as escapes, each backslash
    # doubled first: "a?b" and "a\rb" were one series twice (a probe), and a scraper drops a
    # duplicate's samples (tests/prom.py refuses one).
    names = ("cr\rnul\x00ls\u2028end", "cr?nul?ls?end", "cr\\x0dnul\\x00ls\\u2028end")
    for name in names:
        assert post(proxy, minimal_request(model=name)).status == 200
    wait_records(proxy, len(names))
    text = request(proxy.url, "GET", "/metrics").body.decode("utf-8")
    assert not any(c in text for c in "\r\x00\u2028")
    s = prom.parse(text)
    shown = ("cr\\x0dnul\\x00ls\\u2028end", "cr?nul?ls?end", "cr\\\\x0dnul\\\\x00ls\\\\u2028end")
    for label in shown:
        assert prom.value(s, "claudeproxy_requests_total", endpoint="/v1/messages", provider="ollama",
                          model=label, status="200") == 1


def test_streams_in_flight_gauge(proxy: Any, fake: FakeUpstream) -> None:
    gate = Gate()
    fake.push(sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "x"}), gate, chunk({}, "stop")))
    done: List[Any] = []
    thread = threading.Thread(target=lambda: done.append(post(proxy, minimal_request(model="m", stream=True))))
    thread.start()
    try:
        assert gate.reached.wait(5)
        # The gate is reached once the fake has sent its first chunks, maybe before the proxy has
        # read the answer's head (where the stream begins): the gauge is asked until it says so.
        deadline, in_flight = time.monotonic() + 5, 0.0
        while in_flight != 1 and time.monotonic() < deadline:
            s = prom.parse(request(proxy.url, "GET", "/metrics").body.decode("utf-8"))
            in_flight = prom.value(s, "claudeproxy_streams_in_flight")
            time.sleep(0.01)
        assert in_flight == 1
    finally:
        gate.release()
        thread.join(5)
    assert done and done[0].status == 200
    wait_records(proxy, 1)
    s = prom.parse(request(proxy.url, "GET", "/metrics").body.decode("utf-8"))
    assert prom.value(s, "claudeproxy_streams_in_flight") == 0


# ---------------------------------------------------------------------------
# /v1/usage.


def test_a_provider_named_local_keeps_its_own_row(fake: FakeUpstream) -> None:
    # "local" is a natural name for an Ollama provider; its calls must not merge with the proxy's
    # own answers (the quota probe) for a client model of the same name, nor vanish from the page.
    house = ModelFacts(input_price=1.0, output_price=2.0)
    server = claudeproxy.start(providers=(Provider("local", fake.url, models=(("house-*", house),)),),
                               routes=(Route("*", RouteTarget("local", "house-1")),))
    try:
        fake.push(json_reply(completion("hi", usage=usage(100, 10))))
        assert request(server.url, "POST", "/v1/messages", minimal_request(model="house-1")).status == 200
        assert request(server.url, "POST", "/v1/messages", quota_probe(model="house-1")).status == 200
        assert server.server.wait_idle(2)
        u = request(server.url, "GET", "/v1/usage").json
        page = request(server.url, "GET", "/").body.decode()
    finally:
        server.shutdown(grace=1.0)
    models = {(m["provider"], m["model"]): m for m in u["models"]}
    assert models[("local", "house-1")]["requests"] == 1 and models[("local", "house-1")]["input_tokens"] == 100
    assert models[("local", "house-1")]["cost_usd"] == pytest.approx((100 * 1.0 + 10 * 2.0) / 1e6)
    assert models[("(local)", "house-1")]["requests"] == 1
    assert page.startswith("<!doctype html>") or page.lower().startswith("<!doctype html>"), page[:80]
    assert "local/house-1" in page  # its row in today's table, not folded into "answered by the proxy"


def test_usage_totals_per_model_provider_and_day(proxy: Any, fake: FakeUpstream) -> None:
    known_session(proxy, fake)
    u = request(proxy.url, "GET", "/v1/usage").json
    assert u["object"] == "usage" and u["prices_checked"] == PRICES_CHECKED
    assert u["totals"]["requests"] == 9 and u["totals"]["errors"] == 2
    assert u["totals"]["by_error_type"] == {"rate_limit_error": 1, "invalid_request_error": 1}
    gpt = (1300 * 2.5 + 150 * 10 + 1700 * 1.25) / 1e6
    house = (600 * 1.0 + 70 * 2.0 + 100 * 0.5) / 1e6
    assert u["totals"]["cost_usd"] == pytest.approx(gpt + house)
    assert u["totals"]["unpriced_requests"] == 1
    models = {(m["provider"], m["model"]): m for m in u["models"]}
    assert models[("openai", "gpt-4o")]["requests"] == 2
    assert models[("openai", "gpt-4o")]["cache_hit_ratio"] == pytest.approx(1700 / 3000, abs=1e-4)
    assert models[("ollama", "qwen3-coder")]["cost_usd"] is None  # tokens and no cost
    assert models[("ollama", "qwen3-coder")]["input_tokens"] == 500
    assert models[("(local)", "claude-opus-4-1")]["requests"] == 1
    assert u["models"][0]["model"] == "gpt-4o"  # the dearest first
    providers = {p["provider"]: p for p in u["providers"]}
    assert providers["priced"]["requests"] == 2 and providers["priced"]["cost_usd"] == pytest.approx(house)
    assert providers["(local)"]["requests"] == 2 and providers["(none)"]["requests"] == 1
    assert [d["date"] for d in u["days"]] == [u["today"]]
    assert u["days"][0]["cost_usd"] == pytest.approx(gpt + house) and u["today_totals"]["requests"] == 9
    # Newest first. The last two calls (the quota probe and count_tokens, both answered here) may
    # be recorded in either order, since each is recorded once its answer is written.
    assert len(u["recent"]) == 9
    assert {(r["endpoint"], r["local"]) for r in u["recent"][:2]} == {
        ("/v1/messages/count_tokens", True), ("/v1/messages", True)}
    assert (u["recent"][-1]["endpoint"], u["recent"][-1]["upstream_model"]) == ("/v1/messages", "gpt-4o")  # the first call
    points = u["series"]["points"]
    assert sum(p["requests"] for p in points) == 9 and u["series"]["step_seconds"] == 1
    assert u["latency_ms"]["p50"] is not None and u["ttft_ms"]["p50"] is not None


# ---------------------------------------------------------------------------
# Bounds and threads.


def _rec(model: str, when: float, **kw: Any) -> CallRecord:
    return CallRecord("/v1/messages", model=model, provider="p", upstream_model=model, time=when,
                      input_tokens=10, output_tokens=1, cost_usd=0.001, duration_ms=100, **kw)


def test_store_is_bounded_whatever_clients_send() -> None:
    metrics = Metrics(recent=5, max_models=3, minutes=10, days=2)
    start = 1_700_000_000.0
    for i in range(200):
        metrics.record(_rec(f"model-{i}", start + i * 3600))  # a new model every hour, over 8 days
    u = metrics.usage(start + 200 * 3600)
    assert len(u["models"]) == 4 and {"(other)"} <= {m["model"] for m in u["models"]}
    assert sum(m["requests"] for m in u["models"]) == 200
    assert len(u["recent"]) == 5 and len(u["days"]) == 2
    assert len(metrics._minutes) == 10 and len(metrics._seconds) <= 301  # noqa: SLF001 - the bound itself
    view = metrics.prometheus_view()
    assert len(view["models"]) == 4 and len(view["durations"]) == 4


def test_store_counts_exactly_from_many_threads() -> None:
    metrics = Metrics()
    now = time.time()

    def work() -> None:
        for _ in range(500):
            metrics.record(_rec("m", now))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert metrics.snapshot()["requests"] == 4000 and metrics.snapshot()["input_tokens"] == 40000


def test_series_switch_from_seconds_to_minutes() -> None:
    metrics = Metrics()
    start = 1_700_000_000.0
    for i in range(40):
        metrics.record(_rec("m", start + i))
    fine = metrics.usage(start + 40)["series"]
    assert fine["step_seconds"] == 1 and sum(p["requests"] for p in fine["points"]) == 40
    metrics.record(_rec("m", start + 3 * 3600))
    coarse = metrics.usage(start + 3 * 3600)["series"]
    assert coarse["step_seconds"] == 300 and len(coarse["points"]) == 37  # three hours in five-minute bars
    assert sum(p["requests"] for p in coarse["points"]) == 41


def test_series_after_a_restart_keep_the_day_read_back() -> None:
    """Probe AE D3: after a restart the first new call switched the charts to per second, which held
    only the calls since: the day read back from the usage log vanished from them for 5 minutes."""
    metrics = Metrics()
    start = 1_700_000_000.0
    metrics.replay([_rec("m", start + i * 60) for i in range(30)])  # half an hour of an earlier server's
    restart = start + 40 * 60
    metrics.record(_rec("m", restart))
    series = metrics.usage(restart + 5)["series"]
    assert series["step_seconds"] >= 60
    assert sum(p["requests"] for p in series["points"]) == 31
    # A fresh server's own first minutes are still per second.
    fresh = Metrics()
    fresh.record(_rec("m", restart))
    assert fresh.usage(restart + 5)["series"]["step_seconds"] == 1


def test_usage_is_built_outside_the_lock_calls_record_under(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in a soak run: /v1/usage merged a day of minute slices (52-134 ms) holding the lock that
    every call's record and stream count takes. Now a call is recorded while the answer is merged,
    and into a copy of the minute it shares with the answer: the answer's parts still agree."""
    import claudeproxy.metrics as metrics_module

    metrics = Metrics()
    start = 1_700_000_000.0
    for i in range(3 * 60):
        metrics.record(_rec("m", start + i * 60))
    late = start + 179 * 60 + 5  # in the last minute kept: that slice is in the answer being built
    recorded = threading.Event()

    def record_meanwhile() -> None:
        metrics.stream_began()
        metrics.record(_rec("m", late))
        metrics.stream_ended()
        recorded.set()

    merged = metrics_module._merged
    waited: List[bool] = []

    def merging(histograms: Any) -> Any:
        if not waited:  # the first merge: the answer is being built
            other = threading.Thread(target=record_meanwhile, daemon=True)
            other.start()
            waited.append(recorded.wait(2.0))
        return merged(histograms)

    monkeypatch.setattr(metrics_module, "_merged", merging)
    answer = metrics.usage(start + 180 * 60)
    assert waited == [True], "record() waited for usage() to build its answer"
    assert answer["totals"]["requests"] == 180 and answer["streams_in_flight"] == 0
    assert sum(p["requests"] for p in answer["series"]["points"]) == 180  # the late call is not in it
    assert sum(d["requests"] for d in answer["days"]) == 180
    assert recorded.wait(5.0)
    after = metrics.usage(start + 180 * 60)
    assert after["totals"]["requests"] == 181 and sum(p["requests"] for p in after["series"]["points"]) == 181


# ---------------------------------------------------------------------------
# The usage page.


class _Page(html.parser.HTMLParser):
    VOID = {"meta", "br", "img", "input", "link", "hr", "circle", "rect", "line", "polyline", "path"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: List[str] = []
        self.errors: List[str] = []
        self.attrs: List[Tuple[str, str, Optional[str]]] = []
        self.scripts: List[str] = []
        self._in_script = False
        self.text: List[str] = []

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        self.attrs += [(tag, k, v) for k, v in attrs]
        self._in_script = tag == "script"
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        self.attrs += [(tag, k, v) for k, v in attrs]

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)
        else:
            self.text.append(data)


def parse_page(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    assert page.errors == [] and page.stack == [], (page.errors, page.stack)
    return page


def test_usage_page_is_well_formed_and_self_contained(proxy: Any, fake: FakeUpstream) -> None:
    known_session(proxy, fake)
    assert post(proxy, minimal_request(model=EVIL)).status == 200
    wait_records(proxy, 10)
    resp = request(proxy.url, "GET", "/")
    assert resp.status == 200 and resp.headers["content-type"] == "text/html; charset=utf-8"
    text = resp.body.decode("utf-8")
    page = parse_page(text)
    # Nothing from elsewhere: no src/href/url()/@import, and the policy forbids it anyway.
    assert not [a for a in page.attrs if a[1] in ("src", "href", "srcset", "action", "xlink:href")]
    assert "url(" not in text and "@import" not in text and "http://" not in text and "https://" not in text
    policy = resp.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    # The one inline script is the one the policy's hash allows.
    assert len(page.scripts) == 1
    digest = base64.b64encode(hashlib.sha256(page.scripts[0].encode("utf-8")).digest()).decode()
    assert f"'sha256-{digest}'" in policy
    # The hostile name is text, never markup.
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    shown = " ".join(page.text)
    for words in ("Cost today", "Cache hit ratio", "Today by model", "Last calls", "openai/gpt-4o",
                  "ollama/qwen3-coder", PRICES_CHECKED, "rate_limit_error", "Tokens by model"):
        assert words in shown, words
    assert text.count("<svg") == 5 and "<rect" in text and ("<polyline" in text or "<circle" in text)


def test_usage_page_renders_with_no_calls_and_headers_are_strict() -> None:
    metrics = Metrics()
    text = render({**metrics.usage(time.time()), "prices_checked": PRICES_CHECKED})
    page = parse_page(text)
    assert "No calls yet" in " ".join(page.text)
    headers = dict(page_headers())
    assert headers["Cache-Control"] == "no-store" and headers["X-Content-Type-Options"] == "nosniff"


def test_a_control_character_in_a_model_name_never_reaches_the_page_raw() -> None:
    """A client's model "m\x00n" put a NUL into the page's HTML (probe B); it shows as U+FFFD."""
    metrics = Metrics()
    metrics.record(CallRecord(endpoint="/v1/messages", model="m\x00n\x1bx\x85y", provider="p",
                              upstream_model="u\x07v", time=time.time()))
    text = render({**metrics.usage(time.time()), "prices_checked": PRICES_CHECKED})
    parse_page(text)
    assert not any(c in text for c in "\x00\x1b\x07\x85") and "m\ufffdn\ufffdx\ufffdy" in text


def test_usage_page_obeys_the_client_key(make_proxy: Any) -> None:
    keyed = make_proxy(auth_key="sk-ant-page-key-0000000000")
    assert request(keyed.url, "GET", "/").status == 401
    assert request(keyed.url, "GET", "/v1/usage").status == 401
    assert request(keyed.url, "GET", "/", headers={"x-api-key": "sk-ant-page-key-0000000000"}).status == 200
    # A browser sends no header: the page and what it reads take the key in the address (what `run`
    # prints), and the page's refresh asks for the same address. Nothing else takes it there.
    for path in ("/", "/v1/usage", "/metrics", "/health"):
        assert request(keyed.url, "GET", path + "?key=sk-ant-page-key-0000000000").status == 200, path
        assert request(keyed.url, "GET", path + "?key=sk-ant-page-key-000000000").status == 401, path
    assert "location.pathname+location.search" in request(keyed.url, "GET", "/?key=sk-ant-page-key-0000000000").body.decode()
    assert request(keyed.url, "POST", "/v1/messages?key=sk-ant-page-key-0000000000", minimal_request()).status == 401
    assert request(keyed.url, "GET", "/v1/models?key=sk-ant-page-key-0000000000").status == 401
    plain = make_proxy()
    assert request(plain.url, "GET", "/", headers={"Host": "evil.example"}).status == 403  # DNS rebinding
    assert request(plain.url, "GET", "/", headers={"Origin": "https://evil.example"}).status == 403


# ---------------------------------------------------------------------------
# Usage an upstream reports, whatever it reports.


def _message(usage: Any) -> Dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "x", "stop_reason": "end_turn",
            "stop_sequence": None, "content": [{"type": "text", "text": "hi"}], "usage": usage}


def _anthropic_sse(*events: Dict[str, Any]) -> Reply:
    data = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode("utf-8") for e in events)
    return Reply(200, (("Content-Type", "text/event-stream"),), [data], chunked=True)


def _counters(server: Any) -> Dict[Any, float]:
    s = prom.parse(request(server.url, "GET", "/metrics").body.decode("utf-8"))
    return {k: v for k, v in s.items() if k[0] in ("claudeproxy_tokens_total", "claudeproxy_cost_usd_total")}


def test_passthrough_usage_that_is_no_count_lowers_no_counter(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """A /v1/messages upstream's usage is forwarded to the client unchecked, but the call record reads
    it by the one rule (counts.py): a negative, string or fractional count is 0 (a stream's bad count
    is ignored: message_start's stands), so no token or cost counter ever goes down. Such an input or
    output count is not known, as in a stream: the call used those tokens (it had a cost of its
    output alone, without the prompt: probe Q)."""
    priced = ModelFacts(input_price=1.0, output_price=2.0, cache_read_price=0.5, cache_write_price=1.5)
    records: List[CallRecord] = []
    server = make_proxy(providers=(Provider("native", fake_upstream.url, api="messages", models=(("*", priced),)),),
                        routes=(Route("*", RouteTarget("native", "house-model")),), upstream=None,
                        metrics_sink=records.append)
    headers = {"anthropic-version": "2023-06-01"}
    fake_upstream.push(json_reply(_message({"input_tokens": 1000, "output_tokens": 50, "cache_read_input_tokens": 100})))
    assert request(server.url, "POST", "/v1/messages", minimal_request(), headers).status == 200
    wait_records(types.SimpleNamespace(records=records), 1)
    before = _counters(server)
    assert before[("claudeproxy_tokens_total", (("kind", "input"), ("model", "house-model"),
                                                ("provider", "native")))] == 1000
    bad = {"input_tokens": -100000, "output_tokens": 20, "cache_read_input_tokens": "70",
           "cache_creation_input_tokens": 1.9}
    fake_upstream.push(json_reply(_message(bad)))
    resp = request(server.url, "POST", "/v1/messages", minimal_request(), headers)
    assert resp.status == 200 and resp.json["usage"] == bad  # forwarded as it came
    rec = record_for(records, resp.headers["request-id"])
    assert (rec.input_tokens, rec.output_tokens, rec.cache_read_input_tokens, rec.cache_creation_input_tokens) == (
        None, 20, 0, 0)
    assert rec.cost_usd is None
    start = {"type": "message_start", "message": {**_message({"input_tokens": 300, "output_tokens": 1}),
                                                   "content": [], "stop_reason": None}}
    fake_upstream.push(_anthropic_sse(
        start, {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"input_tokens": -100000,
                                                                                 "output_tokens": -5}},
        {"type": "message_stop"}))
    resp = request(server.url, "POST", "/v1/messages", minimal_request(stream=True), headers)
    assert resp.status == 200
    rec = record_for(records, resp.headers["request-id"])
    # message_start's output_tokens is a placeholder: without a count of message_delta's, not known.
    assert (rec.input_tokens, rec.output_tokens, rec.cost_usd) == (300, None, None)
    after = _counters(server)
    assert after.keys() == before.keys()
    assert [k for k in before if after[k] < before[k]] == []


def test_passthrough_input_count_of_message_start_outlives_a_zero_in_message_delta(
        make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """Some Anthropic-compatible servers put the real counts in message_start and input_tokens 0 in
    message_delta. The counts are cumulative: the record keeps 100 input tokens and their cost."""
    priced = ModelFacts(input_price=1.0, output_price=2.0, cache_read_price=0.5, cache_write_price=1.5)
    records: List[CallRecord] = []
    server = make_proxy(providers=(Provider("native", fake_upstream.url, api="messages", models=(("*", priced),)),),
                        routes=(Route("*", RouteTarget("native", "house-model")),), upstream=None,
                        metrics_sink=records.append)
    start = {"type": "message_start", "message": {**_message({"input_tokens": 100, "output_tokens": 1,
                                                               "cache_read_input_tokens": 2000}),
                                                   "content": [], "stop_reason": None}}
    fake_upstream.push(_anthropic_sse(
        start, {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
         "usage": {"input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 300}},
        {"type": "message_stop"}))
    resp = request(server.url, "POST", "/v1/messages", minimal_request(stream=True), {"anthropic-version": "2023-06-01"})
    assert resp.status == 200
    rec = record_for(records, resp.headers["request-id"])
    assert (rec.input_tokens, rec.cache_read_input_tokens, rec.output_tokens) == (100, 2000, 300)
    assert rec.cost_usd == pytest.approx((100 * 1.0 + 2000 * 0.5 + 300 * 2.0) / 1e6)


def _usage_chunk(prompt: int, completion_tokens: int, cached: int = 0) -> Dict[str, Any]:
    return {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
            "usage": usage(prompt, completion_tokens, cached)}


def _cut_stream(proxy: Any, fake: FakeUpstream, *chunks: Any) -> CallRecord:
    """A sonnet stream of ``chunks`` that the upstream then resets: the client's error event, and the record."""
    cut = sse_reply(*chunks, done=False)
    cut.body.append(Fault("rst"))
    fake.push(cut)
    with StreamClient(proxy.url, minimal_request(model="claude-sonnet-4-5", stream=True)) as client:
        events = client.read_all(timeout=5)
        request_id = client.headers["request-id"]
    assert events[-1]["type"] == "error"
    return record_for(proxy.records, request_id)


def test_a_stream_cut_after_its_usage_records_that_usage(proxy: Any, fake: FakeUpstream) -> None:
    """The upstream drops after the usage chunk, before finish_reason and [DONE]: the client gets an
    error event, and the call record (usage log, access log, metrics) the upstream's 1000/50 tokens at
    the model's prices, not 0 tokens at $0."""
    rec = _cut_stream(proxy, fake, chunk({"role": "assistant", "content": "hi"}), _usage_chunk(1000, 50))
    assert rec.error_type == "api_error" and (rec.input_tokens, rec.output_tokens) == (1000, 50)
    assert rec.cost_usd == pytest.approx((1000 * 1.0 + 50 * 2.0) / 1e6)  # the config's prices
    s = prom.parse(request(proxy.url, "GET", "/metrics").body.decode("utf-8"))
    assert prom.total(s, "claudeproxy_tokens_total", model="house-model", kind="output") == 50


def test_a_client_gone_after_the_usage_records_that_usage(proxy: Any, fake: FakeUpstream) -> None:
    """A server that reports usage in every chunk (vLLM's continuous usage stats): the client leaves
    mid-stream, and the record has the usage read by then."""
    gate = Gate()
    fake.push(sse_reply(chunk({"role": "assistant", "content": "hi"}, usage=usage(1000, 50)), gate,
                        chunk({"content": " more"}, usage=usage(1000, 51)), chunk({}, "stop")))
    client = StreamClient(proxy.url, minimal_request(model="claude-sonnet-4-5", stream=True))
    try:
        client.read_until("content_block_delta", timeout=5)
        request_id = client.headers["request-id"]
    finally:
        client.close()  # the upstream is held at the gate: the proxy sees the client leave first
    rec = record_for(proxy.records, request_id, timeout=5)
    gate.release()
    assert rec.error_type == "client_closed" and (rec.input_tokens, rec.output_tokens) == (1000, 50)
    assert rec.cost_usd == pytest.approx((1000 * 1.0 + 50 * 2.0) / 1e6)


def test_a_responses_failure_that_carries_usage_records_it(fake: FakeUpstream) -> None:
    """response.failed after output, with the usage it was billed: the record has it."""
    priced = ModelFacts(input_price=1.0, output_price=2.0)
    records: List[CallRecord] = []
    server = claudeproxy.start(providers=(Provider("resp", fake.url, api="responses", token=KEY,
                                                   models=(("*", priced),)),),
                               routes=(Route("*", RouteTarget("resp", "house-model")),), metrics_sink=records.append)
    try:
        ev = lambda o: f"event: {o['type']}\ndata: {json.dumps(o)}\n\n".encode("utf-8")  # noqa: E731
        failed = {"type": "response.failed", "response": {"status": "failed", "error": {
            "code": "server_error", "message": "boom"}, "usage": {"input_tokens": 1000, "output_tokens": 50}}}
        fake.push(sse_reply(ev({"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
                                "delta": "hi"}), ev(failed), done=False))
        with StreamClient(server.url, minimal_request(stream=True)) as client:
            events = client.read_all(timeout=5)
            request_id = client.headers["request-id"]
        assert events[-1]["type"] == "error"
        rec = record_for(records, request_id)
        assert (rec.input_tokens, rec.output_tokens) == (1000, 50)
        assert rec.cost_usd == pytest.approx((1000 * 1.0 + 50 * 2.0) / 1e6)
    finally:
        server.shutdown(grace=1.0)


def test_a_stream_cut_before_any_usage_has_no_tokens_and_no_cost(proxy: Any, fake: FakeUpstream, caplog: Any) -> None:
    """Cut after the client had text, before the upstream reported usage: what it cost is not known,
    so the record says so (None: null in the usage log and /v1/usage, "-" in the access log, counted
    as a call without a known cost), never 0 tokens at $0.000000 as if measured."""
    caplog.set_level("INFO", logger="claudeproxy")
    rec = _cut_stream(proxy, fake, chunk({"role": "assistant", "content": "hi"}))
    assert (rec.input_tokens, rec.output_tokens, rec.cache_read_input_tokens, rec.cache_creation_input_tokens,
            rec.cost_usd) == (None, None, None, None, None)
    assert json.loads(json.dumps(rec.to_dict()))["input_tokens"] is None  # the usage log's line
    assert proxy.server.server.wait_idle(2)
    [line] = [r.getMessage() for r in caplog.records if rec.request_id in r.getMessage() and "->" in r.getMessage()]
    assert " in=- out=- cached=- cache_write=- cost=- " in line, line
    u = request(proxy.url, "GET", "/v1/usage").json
    [row] = [m for m in u["models"] if m["model"] == "house-model"]
    assert (row["cost_usd"], row["unpriced_requests"], row["input_tokens"]) == (None, 1, 0)
    assert u["recent"][0]["output_tokens"] is None and u["recent"][0]["cost_usd"] is None
    s = prom.parse(request(proxy.url, "GET", "/metrics").body.decode("utf-8"))
    assert prom.value(s, "claudeproxy_unpriced_requests_total", provider="priced", model="house-model") == 1
    assert prom.value(s, "claudeproxy_cost_usd_total", provider="priced", model="house-model") == 0
    assert "–" in render({**u, "prices_checked": PRICES_CHECKED})


def test_a_stream_refused_before_any_event_counts_no_tokens(proxy: Any, fake: FakeUpstream) -> None:
    """An error as a stream's first chunk is a plain HTTP error for the client, a refusal like a 429:
    0 tokens at $0, not a call of unknown cost."""
    fake.push(sse_reply({"error": {"message": "slow down", "type": "rate_limit_error", "code": 429}}, done=False))
    resp = post(proxy, minimal_request(model="claude-sonnet-4-5", stream=True))
    assert resp.status == 429
    rec = record_for(proxy.records, resp.headers["request-id"])
    assert (rec.input_tokens, rec.output_tokens, rec.cost_usd) == (0, 0, 0.0)


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _abandoned(proxy: Any, fake: FakeUpstream, stream: bool) -> CallRecord:
    """A sonnet call the client leaves while the upstream, which has the prompt, is still at work."""
    before = len(proxy.records)
    body = json.dumps(minimal_request(model="claude-sonnet-4-5", stream=stream)).encode()
    with connect(proxy.url) as sock:
        sock.sendall(json_post(body))
        assert wait_for(lambda: len(fake.requests) == 1, 5), "the prompt never reached the upstream"
        time.sleep(0.1)  # the upstream is thinking
    assert wait_for(lambda: len(proxy.records) > before, 5), "the abandoned call was not recorded"
    return proxy.records[-1]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream-before-its-first-event"])
def test_a_call_abandoned_while_the_upstream_thinks_has_unknown_tokens(
        proxy: Any, fake: FakeUpstream, stream: bool) -> None:
    """The client leaves (Esc in Claude Code, an SDK timeout) before any answer: the upstream had the
    whole prompt and bills for it, so the record says not known -- no tokens, no cost, counted as a
    call without a known cost -- never 0 tokens at $0 as if nothing were spent."""
    gate = Gate()
    if stream:
        fake.push(sse_reply(gate, chunk({"role": "assistant", "content": "hi"}), chunk({}, "stop")))
    else:
        reply = json_reply(completion("late", usage=usage(1000, 50)))
        reply.body.insert(0, gate)
        fake.push(reply)
    try:
        rec = _abandoned(proxy, fake, stream)
    finally:
        gate.release()
    assert (rec.status, rec.error_type, rec.upstream_model) == (499, "client_closed", "house-model")
    assert (rec.input_tokens, rec.output_tokens, rec.cache_read_input_tokens, rec.cost_usd) == (None, None, None, None)
    u = request(proxy.url, "GET", "/v1/usage").json
    [row] = [m for m in u["models"] if m["model"] == "house-model"]
    assert (row["cost_usd"], row["unpriced_requests"]) == (None, 1)


def test_a_retry_does_not_hide_what_an_earlier_attempt_may_have_spent(fake: FakeUpstream) -> None:
    """Attempt 1 took the whole prompt and the connection dropped (the upstream may bill it), attempt 2
    was refused (429): not known, never 0 at $0. And a stream refused at its first event (0 tokens),
    then a retry the client leaves while the upstream thinks: not known either, not the first one's 0s."""
    priced = ModelFacts(input_price=1.0, output_price=2.0)
    records: List[CallRecord] = []
    server = claudeproxy.start(providers=(Provider("priced", fake.url, token=KEY, models=(("house-*", priced),)),),
                               routes=(Route("*", RouteTarget("priced", "house-model")),),
                               metrics_sink=records.append, retries=1)
    proxy = types.SimpleNamespace(url=server.url, records=records)
    try:
        fake.push(Reply(drop="close"), json_reply({"error": {"message": "slow down", "type": "rate_limit_error"}},
                                                  status=429))
        resp = post(proxy, minimal_request())
        assert resp.status == 429
        rec = record_for(records, resp.headers["request-id"])
        assert (rec.attempts, rec.input_tokens, rec.cost_usd) == (2, None, None)
        gate = Gate()
        fake.push(sse_reply({"error": {"message": "slow down", "type": "rate_limit_error", "code": 429}}, done=False),
                  sse_reply(gate, chunk({"role": "assistant", "content": "hi"}), chunk({}, "stop")))
        try:
            body = json.dumps(minimal_request(stream=True)).encode()
            with connect(server.url) as sock:
                sock.sendall(json_post(body))
                assert wait_for(lambda: len(fake.requests) == 4, 5), "the retry never reached the upstream"
                time.sleep(0.1)
            assert wait_for(lambda: len(records) == 2, 5)
        finally:
            gate.release()
        rec = records[-1]
        assert (rec.attempts, rec.error_type, rec.input_tokens, rec.cost_usd) == (2, "client_closed", None, None)
    finally:
        server.shutdown(grace=1.0)


def test_a_call_that_never_reached_the_upstream_counts_no_tokens(make_proxy: Any) -> None:
    """Nothing listens at the upstream's address: no prompt went out, so 0 tokens at $0 is the truth."""
    records: List[CallRecord] = []
    with refused_port() as port:
        server = make_proxy(upstream=f"http://127.0.0.1:{port}/v1", retries=0, metrics_sink=records.append)
        resp = post(types.SimpleNamespace(url=server.url), minimal_request())
    assert resp.status >= 500
    rec = record_for(records, resp.headers["request-id"])
    assert (rec.input_tokens, rec.output_tokens, rec.cost_usd) == (0, 0, 0.0)


def test_a_passthrough_stream_cut_keeps_message_starts_counts_but_not_its_output(make_proxy: Any,
                                                                                 fake_upstream: FakeUpstream) -> None:
    """The passthrough fold keeps message_start's counts on a cut: known, not unknown. Its
    output_tokens is Anthropic's placeholder (1), not what was generated before the cut (a probe: a
    Claude Code Esc was recorded as 1 output token at an exact cost): not known, so no cost."""
    records: List[CallRecord] = []
    server = make_proxy(passthrough=True, metrics_sink=records.append)
    start = {"type": "message_start", "message": {**_message({"input_tokens": 25, "output_tokens": 1,
                                                               "cache_read_input_tokens": 7}),
                                                   "content": [], "stop_reason": None}}
    cut = _anthropic_sse(start, {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                         {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}})
    cut.body.append(Fault("rst"))
    fake_upstream.push(cut)
    with StreamClient(server.url, minimal_request(stream=True)) as client:
        events = client.read_all(timeout=5)
        request_id = client.headers["request-id"]
    assert events[-1]["type"] == "error"
    rec = record_for(records, request_id)
    assert (rec.input_tokens, rec.output_tokens, rec.cache_read_input_tokens) == (25, None, 7)
    assert rec.cost_usd is None


def test_a_record_of_unknown_usage_in_the_totals() -> None:
    """Unknown usage adds no tokens and no cost, and counts as a call without a known cost."""
    assert call_cost(builtin_facts("gpt-4o"), None, None, None, None) is None
    metrics = Metrics()
    now = time.time()
    metrics.record(_rec("m", now))
    metrics.record(CallRecord("/v1/messages", model="m", provider="p", upstream_model="m", time=now, stream=True,
                              input_tokens=None, output_tokens=None, cache_read_input_tokens=None,
                              cache_creation_input_tokens=None, cost_usd=None, error_type="api_error"))
    [row] = metrics.usage(now)["models"]
    assert (row["input_tokens"], row["cost_usd"], row["unpriced_requests"]) == (10, 0.001, 1)
    unknown = metrics.records()[-1]
    assert unknown.tokens == 0 and unknown.cache_hit_ratio is None and not unknown.usage_known


def test_the_upstreams_own_request_id_is_recorded(proxy: Any, fake: FakeUpstream) -> None:
    """What the provider's support asks for: its id of the call, on the access line and in the
    usage log, for an answer and for an error alike (the client sees the proxy's own id)."""
    fake.push(json_reply(completion("hi"), headers=(("x-request-id", "req_up_0042"),)))
    fake.push(json_reply({"error": {"message": "bad"}}, status=400, headers=(("request-id", "req_up_0043"),)))
    fake.push(json_reply(completion("hi"), headers=(("x-request-id", "two words"),)))
    assert post(proxy, minimal_request(model="claude-opus-4-1")).status == 200
    assert post(proxy, minimal_request(model="claude-opus-4-1")).status == 400
    assert post(proxy, minimal_request(model="claude-opus-4-1")).status == 200
    answered, refused, odd = wait_records(proxy, 3)[:3]
    assert answered.upstream_request_id == "req_up_0042"
    assert refused.upstream_request_id == "req_up_0043"
    assert odd.upstream_request_id == ""  # not one token: kept off the log line
    assert answered.to_dict()["upstream_request_id"] == "req_up_0042"
    assert f"{answered.request_id} upstream_id=req_up_0042 /v1/messages " in access_line(answered)
    assert "upstream_id" not in access_line(odd)


@pytest.mark.parametrize("given", [None, {}, {"total_tokens": 150}, {"prompt_tokens": None, "completion_tokens": "5"}],
                         ids=["none", "empty", "total-only", "no-counts"])
@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_without_usage_gives_the_client_an_estimate_and_records_none(proxy: Any, fake: FakeUpstream,
                                                                             stream: bool, given: Any) -> None:
    """An upstream that reports no usage (one refusing stream_options, a server that never counts, a
    usage object without a count): the client still gets token numbers to size its context by (the
    proxy's estimate), but the call record says the count is not known, never the estimate priced as
    if the upstream had billed it, nor 0 tokens at $0."""
    text = "a finished answer of some length " * 20
    if stream:
        last = [{"id": "x", "object": "chat.completion.chunk", "choices": [], "usage": given}] if given is not None else []
        fake.push(sse_reply(chunk({"role": "assistant", "content": text}), chunk({}, "stop"), *last))
    else:
        body = completion(text)
        del body["usage"]
        if given is not None:
            body["usage"] = given
        fake.push(json_reply(body))
    question = minimal_request(model="claude-sonnet-4-5", stream=stream,
                               messages=[{"role": "user", "content": "tell me something " * 100}])
    resp = post(proxy, question)
    assert resp.status == 200, resp
    if stream:
        usage = [e for e in events_of(resp.body) if e["type"] == "message_delta"][0]["usage"]
        started = [e for e in events_of(resp.body) if e["type"] == "message_start"][0]["message"]["usage"]
        assert started["input_tokens"] > 400  # "tell me something " * 100 is ~1,800 characters
    else:
        usage = resp.json["usage"]
    assert usage["input_tokens"] > 400 and usage["output_tokens"] == len(text) // 4 + (len(text) % 4 > 0)
    [rec] = wait_records(proxy, 1)
    assert (rec.input_tokens, rec.output_tokens, rec.cost_usd) == (None, None, None)
    assert rec.status == 200 and rec.error_type is None


def _graced_proxy(fake: FakeUpstream, records: List[CallRecord]) -> Any:
    """A proxy to a config-priced model with a short finish grace (the wait after finish_reason)."""
    priced = ModelFacts(input_price=1.0, output_price=2.0, cache_read_price=0.5)
    return claudeproxy.start(providers=(Provider("priced", fake.url, token=KEY, models=(("*", priced),)),),
                             routes=(Route("*", RouteTarget("priced", "house-model")),),
                             metrics_sink=records.append, finish_grace=0.5)


def test_a_running_usage_on_the_finish_chunk_gives_way_to_the_final_usage_chunk(fake: FakeUpstream) -> None:
    """vLLM's continuous usage stats: a running usage on every chunk (no cached tokens), the finish chunk
    too, then the include_usage chunk with the full count, and the upstream stays open. The client's
    message_delta and the record carry the full count, and the stream ends at that chunk, not at the
    finish grace."""
    records: List[CallRecord] = []
    server = _graced_proxy(fake, records)
    try:
        fake.push(sse_reply(chunk({"role": "assistant", "content": "hi"}, usage=usage(1000, 1)),
                            chunk({}, "stop", usage={"prompt_tokens": 1000, "completion_tokens": 150}),
                            Sleep(0.1), _usage_chunk(1000, 200, cached=800), Fault("hang"), done=False))
        with StreamClient(server.url, minimal_request(stream=True)) as client:
            begun = time.monotonic()
            events = client.read_all(timeout=5)
            took = time.monotonic() - begun
            request_id = client.headers["request-id"]
        delta = [e for e in events if e["type"] == "message_delta"][0]
        want = {"input_tokens": 200, "cache_read_input_tokens": 800, "output_tokens": 200}
        assert {k: delta["usage"][k] for k in want} == want
        rec = record_for(records, request_id)
        assert (rec.input_tokens, rec.cache_read_input_tokens, rec.output_tokens) == (200, 800, 200)
        assert rec.cost_usd == pytest.approx((200 * 1.0 + 800 * 0.5 + 200 * 2.0) / 1e6)
        assert took < 0.45, f"waited {took:.2f} s: the final usage chunk should end the stream"
    finally:
        server.shutdown(grace=1.0)


def test_a_running_usage_on_the_finish_chunk_then_silence_ends_at_the_finish_grace(fake: FakeUpstream) -> None:
    """The same stream without the final usage chunk, and the upstream never ends its body: the stream
    ends after the finish grace (0.5 s here), no later, with the finish chunk's count."""
    records: List[CallRecord] = []
    server = _graced_proxy(fake, records)
    try:
        fake.push(sse_reply(chunk({"role": "assistant", "content": "hi"}, usage=usage(1000, 1)),
                            chunk({}, "stop", usage={"prompt_tokens": 1000, "completion_tokens": 150}),
                            Fault("hang"), done=False))
        with StreamClient(server.url, minimal_request(stream=True)) as client:
            client.read_until("content_block_delta", timeout=5)
            begun = time.monotonic()
            events = client.read_all(timeout=5)
            took = time.monotonic() - begun
            request_id = client.headers["request-id"]
        assert [e["type"] for e in events][-2:] == ["message_delta", "message_stop"]
        assert events[-2]["usage"]["output_tokens"] == 150
        assert 0.3 <= took < 2.5, f"ended after {took:.2f} s, grace 0.5 s"
        rec = record_for(records, request_id)
        assert rec.error_type is None and (rec.input_tokens, rec.output_tokens) == (1000, 150)
    finally:
        server.shutdown(grace=1.0)


def test_a_usage_on_every_chunk_ends_at_the_finish_where_no_usage_chunk_was_asked_for(fake: FakeUpstream) -> None:
    """Mistral gets no stream_options (it refuses them) and so sends no usage-only chunk: its usage on
    the finish chunk is the last there is, even after usages on earlier chunks, and a server that
    then holds the connection (PROTOCOL.md case 57) must not cost the client the finish grace."""
    records: List[CallRecord] = []
    server = claudeproxy.start(providers=(Provider("m", fake.url, token=KEY, dialect="mistral"),),
                               routes=(Route("*", RouteTarget("m", "mistral-large-latest")),),
                               metrics_sink=records.append, finish_grace=2.0)
    try:
        fake.push(sse_reply(chunk({"role": "assistant", "content": "hi"}, usage=usage(1000, 1)),
                            chunk({}, "stop", usage={"prompt_tokens": 1000, "completion_tokens": 150}),
                            Fault("hang"), done=False))
        with StreamClient(server.url, minimal_request(stream=True)) as client:
            client.read_until("content_block_delta", timeout=5)
            begun = time.monotonic()
            events = client.read_all(timeout=5)
            took = time.monotonic() - begun
        assert b"stream_options" not in fake.requests[-1].body
        assert [e["type"] for e in events][-2:] == ["message_delta", "message_stop"]
        assert events[-2]["usage"]["output_tokens"] == 150
        assert took < 1.0, f"waited {took:.2f} s for a usage chunk nobody asked for (grace 2 s)"
    finally:
        server.shutdown(grace=1.0)


# --- Anthropic's 1-hour cache writes ------------------------------------------------------------

def test_one_hour_cache_writes_cost_twice_the_input_price() -> None:
    """Anthropic bills a 5-minute cache write at 1.25x input and a 1-hour one at 2x: a model priced with
    the 5-minute rate only gets 2x input for its 1-hour writes; an explicit 1-hour price wins."""
    facts = ModelFacts(input_price=3.0, output_price=15.0, cache_read_price=0.3, cache_write_price=3.75)
    # 500 writes of which 300 for an hour: 200 x 3.75 + 300 x 6.00
    assert call_cost(facts, 0, 0, 0, 500, 300) == pytest.approx(0.00255)
    assert call_cost(facts, 0, 0, 0, 500) == pytest.approx(500 * 3.75 / 1e6)  # no split: all 5-minute
    explicit = ModelFacts(input_price=3.0, cache_write_price=3.75, cache_write_1h_price=7.0)
    assert call_cost(explicit, 0, 0, 0, 500, 300) == pytest.approx((200 * 3.75 + 300 * 7.0) / 1e6)
    assert call_cost(facts, 0, 0, 0, 500, 900) == pytest.approx(500 * 6.0 / 1e6)  # never more than all writes
    # No cache-write price at all: 1-hour writes have none either (no cost, not a partial one).
    assert call_cost(ModelFacts(input_price=3.0, output_price=15.0), 10, 0, 0, 300, 300) is None


def _forwarded(server: Any, fake: FakeUpstream, message: Dict[str, Any], stream: bool, start_usage: Dict[str, Any],
               end_usage: Dict[str, Any]) -> str:
    """A passthrough upstream's answer ``message`` (its one text block), as JSON or as its events
    (message_start's usage ``start_usage``, message_delta's ``end_usage``), asked for: the call's request id."""
    if not stream:
        fake.push(json_reply(message))
        resp = request(server.url, "POST", "/v1/messages", minimal_request())
        assert resp.status == 200, resp
        return str(resp.headers["request-id"])
    ev = lambda o: f"event: {o['type']}\ndata: {json.dumps(o)}\n\n".encode("utf-8")  # noqa: E731
    start = {**message, "content": [], "stop_reason": None, "usage": start_usage}
    text = message["content"][0]["text"]
    fake.push(sse_reply(ev({"type": "message_start", "message": start}),
                        ev({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                        ev({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
                        ev({"type": "content_block_stop", "index": 0}),
                        ev({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": end_usage}),
                        ev({"type": "message_stop"}), done=False))
    with StreamClient(server.url, minimal_request(stream=True)) as client:
        client.read_all(timeout=5)
        return str(client.headers["request-id"])


def _anthropic_usage() -> Dict[str, Any]:
    return {"input_tokens": 100, "output_tokens": 30, "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 500,
            "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 300}}


@pytest.mark.parametrize("stream", [False, True])
def test_a_forwarded_answer_prices_its_one_hour_cache_writes(fake: FakeUpstream, stream: bool) -> None:
    """Passthrough: the upstream's usage.cache_creation split reaches the record, which prices the
    300 one-hour writes at 2x input (the config gives the 5-minute write price only)."""
    priced = ModelFacts(input_price=3.0, output_price=15.0, cache_read_price=0.3, cache_write_price=3.75)
    records: List[CallRecord] = []
    server = claudeproxy.start(providers=(Provider("native", fake.url, api="messages", token=KEY,
                                                   models=(("*", priced),)),),
                               routes=(Route("*", RouteTarget("native", "house-model")),), metrics_sink=records.append)
    try:
        usage_ = _anthropic_usage()
        message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "house-model",
                   "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": usage_}
        request_id = _forwarded(server, fake, message, stream, {**usage_, "output_tokens": 1}, {"output_tokens": 30})
        rec = record_for(records, request_id)
        assert (rec.cache_creation_input_tokens, rec.cache_creation_1h_input_tokens) == (500, 300)
        want = (100 * 3.0 + 30 * 15.0 + 1000 * 0.3 + 200 * 3.75 + 300 * 6.0) / 1e6
        assert rec.cost_usd == pytest.approx(want)
        assert rec.to_dict()["cache_creation_1h_input_tokens"] == 300  # the usage log's line has it
    finally:
        server.shutdown(grace=1.0)


def test_web_searches_are_priced_per_thousand_or_the_call_has_no_cost() -> None:
    """Anthropic bills its web search tool at $10 per 1,000 searches on top of the tokens: its
    models' list prices say so; a model without a search price that searched has no cost, not
    the tokens' part of it."""
    sonnet = builtin_facts("claude-sonnet-4-5")
    assert sonnet.web_search_price == 10.0
    assert call_cost(sonnet, 100, 30, web_search_requests=2) == pytest.approx((100 * 3 + 30 * 15) / 1e6 + 0.02)
    assert call_cost(sonnet, 100, 30) == pytest.approx((100 * 3 + 30 * 15) / 1e6)
    assert call_cost(ModelFacts(input_price=1.0, output_price=2.0), 100, 30, web_search_requests=1) is None
    assert builtin_facts("gpt-5").web_search_price is None


@pytest.mark.parametrize("priced", [True, False], ids=["priced", "unpriced"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_forwarded_answers_web_searches_are_in_its_cost(fake: FakeUpstream, stream: bool, priced: bool) -> None:
    """Passthrough (Claude Code's WebSearch runs as Anthropic's server tool): the searches the
    usage reports are counted in the record and priced; without a search price, no cost (probe L:
    a call that searched showed the tokens' $0.0001 of its $0.0101)."""
    facts = ModelFacts(input_price=3.0, output_price=15.0, web_search_price=10.0 if priced else None)
    records: List[CallRecord] = []
    server = claudeproxy.start(providers=(Provider("native", fake.url, api="messages", token=KEY,
                                                   models=(("*", facts),)),),
                               routes=(Route("*", RouteTarget("native", "house-model")),), metrics_sink=records.append)
    try:
        usage_ = {"input_tokens": 100, "output_tokens": 30, "server_tool_use": {"web_search_requests": 3}}
        message = {"id": "msg_ws", "type": "message", "role": "assistant", "model": "house-model",
                   "content": [{"type": "text", "text": "found"}], "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": usage_}
        request_id = _forwarded(server, fake, message, stream, {"input_tokens": 100, "output_tokens": 1},
                                {"output_tokens": 30, "server_tool_use": {"web_search_requests": 3}})
        rec = record_for(records, request_id)
        assert rec.web_search_requests == 3
        if priced:
            assert rec.cost_usd == pytest.approx((100 * 3.0 + 30 * 15.0) / 1e6 + 0.03)
        else:
            assert rec.cost_usd is None and rec.input_tokens == 100
        line = rec.to_dict()
        assert line["web_search_requests"] == 3 and record_from_dict(line) == rec  # the usage log keeps it
        del line["web_search_requests"]  # a line of the version before: read back with none
        assert record_from_dict(line) == dataclasses.replace(rec, web_search_requests=0)
    finally:
        server.shutdown(grace=1.0)


def test_a_fallback_after_an_error_event_first_keeps_the_calls_cost(fake: FakeUpstream) -> None:
    """A gateway that streams whatever it is asked refuses a non-stream request with an error as
    its stream's first event (a refusal: 0 tokens), and the fallback answers: the call's cost is the
    fallback's, as for a stream request; it was unknown (probe L)."""
    other = FakeUpstream()
    priced = ModelFacts(input_price=10.0, output_price=20.0)
    records: List[CallRecord] = []
    server = claudeproxy.start(
        providers=(Provider("a", fake.url, api="messages", token=KEY), Provider("b", other.url, api="messages", token=KEY,
                                                                            models=(("*", priced),))),
        routes=(Route("*", RouteTarget("a", "model-a"), fallbacks=(RouteTarget("b", "model-b"),)),),
        metrics_sink=records.append)
    try:
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        fake.push(sse_reply(f"event: error\ndata: {json.dumps(error)}\n\n", done=False))
        other.push(json_reply({"id": "msg_b", "type": "message", "role": "assistant", "model": "model-b",
                               "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                               "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 42}}))
        resp = request(server.url, "POST", "/v1/messages", minimal_request())
        assert resp.status == 200, resp
        rec = record_for(records, resp.headers["request-id"])
        assert (rec.provider, rec.attempts, rec.input_tokens, rec.output_tokens) == ("b", 2, 10, 42)
        assert rec.cost_usd == pytest.approx((10 * 10.0 + 42 * 20.0) / 1e6)
    finally:
        server.shutdown(grace=1.0)
        other.close()


def test_a_lost_call_reads_back_from_the_usage_log(fake: FakeUpstream) -> None:
    """A call whose upstream dropped after it had the request (its tokens not known) was written
    with web_search_requests null, and its line was dropped on read-back (review I); such lines,
    written already, read back with 0 searches."""
    resp, rec = _priced_call(fake, [Reply(drop="close")], minimal_request(), retries=0)
    assert resp.status >= 500 and rec.input_tokens is None, resp
    assert rec.web_search_requests == 0
    line = rec.to_dict()
    assert record_from_dict(line) == rec
    assert record_from_dict({**line, "web_search_requests": None}) == rec


def test_a_claude_name_on_a_host_not_anthropics_has_no_list_price(fake: FakeUpstream) -> None:
    """--passthrough to a host that is not Anthropic's (here a fake on the loopback; in the world
    DeepSeek's, Moonshot's, Z.ai's Anthropic endpoints, which serve their own models under Claude
    Code's names): Anthropic's list prices are not its rates, so tokens and no cost, not a Sonnet bill.
    (routing tests check that api.anthropic.com does get the list price.)"""
    records: List[CallRecord] = []
    server = claudeproxy.start(upstream=fake.url, passthrough=True, token=KEY, metrics_sink=records.append)
    try:
        fake.push(json_reply({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                              "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                              "stop_sequence": None, "usage": _anthropic_usage()}))
        resp = request(server.url, "POST", "/v1/messages", minimal_request(model="claude-sonnet-4-5-20250929"))
        assert resp.status == 200, resp
        rec = record_for(records, resp.headers["request-id"])
        assert (rec.input_tokens, rec.output_tokens) == (100, 30)
        assert rec.cost_usd is None
    finally:
        server.shutdown()


# --- An upstream's own bill (OpenRouter's usage.cost) -------------------------------------------

def test_billed_cost_takes_only_a_finite_non_negative_number() -> None:
    from claudeproxy.cost import billed_cost

    assert billed_cost({"cost": 0.0123}, "cost") == 0.0123 and billed_cost({"cost": 0}, "cost") == 0.0
    for bad in ("0.01", True, -1, math.nan, math.inf, 1e300, None, [1]):
        assert billed_cost({"cost": bad}, "cost") is None, bad
    assert billed_cost({"cost": 0.5}, None) is None  # a dialect that reports no bill
    assert billed_cost(None, "cost") is None


def test_a_byok_bill_adds_what_the_provider_charged() -> None:
    """OpenRouter with the user's own provider key: usage.cost is only OpenRouter's fee (0 within
    its free allowance); the provider's charge is cost_details.upstream_inference_cost, billed too."""
    from claudeproxy.cost import billed_cost
    byok = {"cost": 0.0, "is_byok": True, "cost_details": {"upstream_inference_cost": 0.33}}
    assert billed_cost(byok, "cost") == pytest.approx(0.33)
    assert billed_cost({**byok, "cost": 0.0165}, "cost") == pytest.approx(0.3465)
    # The provider's part not given (or not a number): the whole bill is not known.
    assert billed_cost({"cost": 0.0, "is_byok": True}, "cost") is None
    assert billed_cost({**byok, "cost_details": {"upstream_inference_cost": "0.33"}}, "cost") is None
    # Not BYOK: the field equals cost and is not added twice.
    assert billed_cost({"cost": 0.33, "is_byok": False, "cost_details": {"upstream_inference_cost": 0.33}},
                       "cost") == pytest.approx(0.33)


def _or_usage(cost: Any) -> Dict[str, Any]:
    return {**usage(1000, 50, cached=200), "cost": cost, "cost_details": {"upstream_inference_cost": None}}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("dialect, expected", [("openrouter", 0.00421), ("generic", None)])
def test_openrouters_usage_cost_is_the_calls_cost(fake: FakeUpstream, stream: bool, dialect: str,
                                                   expected: Optional[float]) -> None:
    """OpenRouter reports what it billed in usage.cost (USD credits); its host-prefixed names have no
    built-in price. The record's cost is that bill, for a JSON answer and a stream; a server of
    another dialect that sends a "cost" is not believed (its model has no price: no cost)."""
    records: List[CallRecord] = []
    server = claudeproxy.start(providers=(Provider("or", fake.url, token=KEY, dialect=dialect),),
                               routes=(Route("*", RouteTarget("or", "anthropic/claude-sonnet-4")),),
                               metrics_sink=records.append)
    try:
        if stream:
            fake.push(sse_reply(chunk({"role": "assistant", "content": "hi"}), chunk({}, "stop"),
                                {"id": "x", "object": "chat.completion.chunk", "choices": [],
                                 "usage": _or_usage(0.00421)}))
            with StreamClient(server.url, minimal_request(stream=True)) as client:
                events = client.read_all(timeout=5)
                request_id = client.headers["request-id"]
            assert events[-1]["type"] == "message_stop"
        else:
            fake.push(json_reply(completion("hi", usage=_or_usage(0.00421))))
            resp = request(server.url, "POST", "/v1/messages", minimal_request())
            assert resp.status == 200, resp
            request_id = resp.headers["request-id"]
        rec = record_for(records, request_id)
        assert (rec.input_tokens, rec.cache_read_input_tokens, rec.output_tokens) == (800, 200, 50)
        assert rec.cost_usd == expected
    finally:
        server.shutdown(grace=1.0)


def test_a_first_line_over_the_cap_is_no_refusal_and_its_cost_is_not_known(fake: FakeUpstream) -> None:
    """The upstream answered 200 and its first line is over --max-line-bytes: it had the prompt and
    was answering, so what it spent is not known (None, counted as a call without a known cost),
    not a refusal's 0 tokens at $0. An error event as the first event still is a refusal."""
    records: List[CallRecord] = []
    priced = ModelFacts(input_price=1.0, output_price=2.0)
    server = claudeproxy.start(providers=(Provider("priced", fake.url, token=KEY, models=(("*", priced),)),),
                               routes=(Route("*", RouteTarget("priced", "house-model")),),
                               metrics_sink=records.append, max_line_bytes=4096)
    try:
        fake.push(sse_reply(b"data: " + b"x" * 10_000, done=False))
        resp = request(server.url, "POST", "/v1/messages", minimal_request(stream=True))
        assert resp.status == 502, resp
        rec = record_for(records, resp.headers["request-id"])
        assert (rec.input_tokens, rec.output_tokens, rec.cost_usd) == (None, None, None)
        fake.push(sse_reply({"error": {"message": "slow down", "type": "rate_limit_error"}}, done=False))
        resp = request(server.url, "POST", "/v1/messages", minimal_request(stream=True))
        assert resp.status >= 400, resp  # the upstream's error as a plain HTTP error
        rec = record_for(records, resp.headers["request-id"])
        assert (rec.input_tokens, rec.output_tokens, rec.cost_usd) == (0, 0, 0.0)
    finally:
        server.shutdown(grace=1.0)


def test_histogram_counts_a_value_in_the_first_bucket_whose_bound_is_not_below_it() -> None:
    # Prometheus buckets are "le": a duration equal to a bound is in that bound's bucket.
    h = Histogram()
    for value in (0.0, 0.05, 0.050001, 0.1, 600.0, 600.5, 10_000.0):
        h.observe(value)
    last = len(HISTOGRAM_BOUNDS)
    assert h.counts[0] == 2 and h.counts[1] == 2 and h.counts[last - 1] == 1 and h.counts[last] == 2
    assert sum(h.counts) == h.count == 7 and h.max == 10_000.0


def test_percentiles_of_calls_all_in_the_first_bucket_are_not_all_the_slowest() -> None:
    """probe H: 37 calls of 4 to 17 ms showed p50 = p90 = p99 = 17 ms (the 0-50 ms bucket's middle,
    25 ms, cut to the most seen)."""
    h = Histogram()
    for i in range(37):
        h.observe(0.004 + 0.013 * i / 36)
    shown = h.percentiles()
    assert 9 <= shown["p50"] <= 12 and shown["p50"] < shown["p90"] <= shown["p99"] <= 17, shown


@pytest.mark.parametrize("values, p50", [([0.045], 45), ([14.0], 14000), ([59.0], 59000), ([0.045, 0.046], 46),
                                         ([0.01, 0.02, 0.03, 0.04], 25)])
def test_a_percentile_lies_among_the_values_seen(values: List[float], p50: int) -> None:
    # Interpolated in a bucket, one 45 ms call had a p50 of 25 ms and one 14 s call 12.5 s (a probe).
    h = Histogram()
    for value in values:
        h.observe(value)
    assert h.percentiles()["p50"] == p50
    merged = Histogram()
    merged.merge(h)
    assert merged.percentiles() == h.percentiles() and Histogram().percentiles()["p50"] is None

@pytest.mark.parametrize("given", [{}, {"total_tokens": 150}, {"prompt_tokens": 100, "completion_tokens": 5}])
@pytest.mark.parametrize("stream", [False, True])
def test_a_responses_usage_without_a_count_is_the_estimate_not_zero(fake: FakeUpstream, stream: bool, given: Any) -> None:
    records: List[CallRecord] = []
    server = claudeproxy.start(providers=(Provider("resp", fake.url, api="responses", token=KEY),),
                               routes=(Route("*", RouteTarget("resp", "gpt-5")),), metrics_sink=records.append)
    text = "a finished answer of some length " * 20
    done = {"id": "resp_1", "object": "response", "status": "completed", "usage": given, "output": [
        {"type": "message", "id": "m1", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": text, "annotations": []}]}]}
    try:
        if stream:
            ev = lambda o: f"event: {o['type']}\ndata: {json.dumps(o)}\n\n".encode("utf-8")  # noqa: E731
            fake.push(sse_reply(ev({"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
                                    "delta": text}), ev({"type": "response.completed", "response": done}), done=False))
        else:
            fake.push(json_reply(done))
        question = minimal_request(stream=stream, messages=[{"role": "user", "content": "tell me something " * 100}])
        resp = post(server, question)
        assert resp.status == 200, resp
        usage = ([e for e in events_of(resp.body) if e["type"] == "message_delta"][0]["usage"] if stream
                 else resp.json["usage"])
        assert usage["input_tokens"] > 400 and usage["output_tokens"] == len(text) // 4 + (len(text) % 4 > 0)
        rec = record_for(records, resp.headers["request-id"])
        assert (rec.input_tokens, rec.output_tokens, rec.cost_usd) == (None, None, None)
    finally:
        server.shutdown(grace=1.0)


@pytest.mark.parametrize("first", ["role-chunk", "none"])
def test_an_error_after_the_role_chunk_spent_what_nobody_said(proxy: Any, fake: FakeUpstream, first: str) -> None:
    """The role-only chunk says the upstream began generating: an error after it is no refusal (0 at $0)
    but a call whose cost is not known. As its first event, the error is a refusal."""
    steps = ([chunk({"role": "assistant", "content": ""})] if first == "role-chunk" else []) + [
        {"error": {"message": "server had an error", "code": 500}}]
    fake.push(sse_reply(*steps, done=False))
    resp = post(proxy, minimal_request(model="claude-sonnet-4-5", stream=True))
    assert resp.status == 500  # nothing had gone out: a plain HTTP error either way
    [rec] = wait_records(proxy, 1)
    expected = (None, None, None) if first == "role-chunk" else (0, 0, 0.0)
    assert (rec.input_tokens, rec.output_tokens, rec.cost_usd) == expected


def _priced_proxy(fake: FakeUpstream, records: List[CallRecord], **settings: Any) -> Any:
    priced = ModelFacts(input_price=1.0, output_price=2.0)
    return claudeproxy.start(providers=(Provider("priced", fake.url, token=KEY, models=(("house-*", priced),)),),
                             routes=(Route("*", RouteTarget("priced", "house-model")),),
                             metrics_sink=records.append, **settings)


def _priced_call(fake: FakeUpstream, replies: List[Any], body: Any, **settings: Any) -> Tuple[Any, CallRecord]:
    """One call through a priced proxy (``_priced_proxy``) to ``replies``: the answer and its record."""
    records: List[CallRecord] = []
    server = _priced_proxy(fake, records, **settings)
    try:
        fake.push(*replies)
        resp = post(types.SimpleNamespace(url=server.url), body)
        return resp, record_for(records, resp.headers["request-id"])
    finally:
        server.shutdown(grace=0.1)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_retried_attempt_that_reported_its_usage_is_in_the_calls_cost(fake: FakeUpstream, stream: bool) -> None:
    """DeepSeek's overload is a 200 with finish_reason insufficient_system_resource and its usage: the
    upstream bills it, and the retry after it is billed too. The record kept only the last attempt's
    counts (a probe: $0.0027 where the upstream charged $0.0054); alone, the same answer counted."""
    spent = usage(1000, 200)
    if stream:
        replies = [sse_reply(chunk({"role": "assistant"}), chunk({}, "insufficient_system_resource", usage=spent)),
                   sse_reply(chunk({"role": "assistant", "content": "ok"}), chunk({}, "stop"),
                             {**chunk(), "choices": [], "usage": usage(1000, 50)})]
    else:
        replies = [json_reply(completion("", finish="insufficient_system_resource", usage=spent)),
                   json_reply(completion("ok", usage=usage(1000, 50)))]
    resp, rec = _priced_call(fake, replies, minimal_request(stream=stream), retries=1, retry_max_wait=0.1)
    assert resp.status == 200, resp
    assert len(fake.requests) == 2
    assert (rec.attempts, rec.input_tokens, rec.output_tokens) == (2, 2000, 250)
    assert rec.cost_usd == pytest.approx((2000 * 1.0 + 250 * 2.0) / 1e6)


def test_a_fallback_prices_each_attempt_at_its_own_target(fake: FakeUpstream) -> None:
    """The spend of the attempt before a fallback is priced at that target's prices, not the next's."""
    records: List[CallRecord] = []
    cheap, dear = ModelFacts(input_price=1.0, output_price=2.0), ModelFacts(input_price=10.0, output_price=20.0)
    server = claudeproxy.start(
        providers=(Provider("a", fake.url, token=KEY, models=(("house-*", cheap),)),
                   Provider("b", fake.url, token=KEY, models=(("dear-*", dear),))),
        routes=(Route("*", RouteTarget("a", "house-model"), fallbacks=(RouteTarget("b", "dear-model"),)),),
        metrics_sink=records.append, retries=0)
    try:
        fake.push(json_reply(completion("", finish="insufficient_system_resource", usage=usage(100, 10))),
                  json_reply(completion("ok", usage=usage(100, 10))))
        resp = post(types.SimpleNamespace(url=server.url), minimal_request())
        assert resp.status == 200, resp
        rec = record_for(records, resp.headers["request-id"])
    finally:
        server.shutdown(grace=0.1)
    assert (rec.provider, rec.input_tokens, rec.output_tokens) == ("b", 200, 20)
    assert rec.cost_usd == pytest.approx((100 * 1.0 + 10 * 2.0 + 100 * 10.0 + 10 * 20.0) / 1e6)


def test_a_fallback_files_each_attempts_spend_under_its_own_model(fake: FakeUpstream, tmp_path: Any) -> None:
    """The call's total was right, but all of it was filed under the model that answered: the first
    target's billed attempt vanished from its model's and provider's rows, and the fallback's row no
    longer matched its own prices (probe C). Each attempt's spend is now under its own target; the
    call itself is counted once, under the one that answered."""
    records: List[CallRecord] = []
    cheap, dear = ModelFacts(input_price=1.0, output_price=2.0), ModelFacts(input_price=10.0, output_price=20.0)
    from claudeproxy.cli import usage_writer

    log_file = tmp_path / "usage.jsonl"
    write_line = usage_writer(str(log_file))

    def sink(rec: CallRecord) -> None:
        records.append(rec)
        write_line(rec)

    server = claudeproxy.start(
        providers=(Provider("a", fake.url, token=KEY, models=(("house-*", cheap),)),
                   Provider("b", fake.url, token=KEY, models=(("dear-*", dear),))),
        routes=(Route("*", RouteTarget("a", "house-model"), fallbacks=(RouteTarget("b", "dear-model"),)),),
        metrics_sink=sink, retries=1, retry_max_wait=0.1)
    try:
        overloaded = json_reply(completion("", finish="insufficient_system_resource", usage=usage(100, 10)))
        fake.push(overloaded, overloaded, json_reply(completion("ok", usage=usage(300, 30))))
        resp = post(types.SimpleNamespace(url=server.url), minimal_request())
        assert resp.status == 200, resp
        # The call is recorded just after its answer is written: the client may be quicker (CI on 3.12).
        assert wait_for(lambda: len(records) == 1, 5), "the call was not recorded"
        page = request(server.url, "GET", "/v1/usage").json
        metrics = request(server.url, "GET", "/metrics").body.decode()
    finally:
        server.shutdown(grace=0.1)
    models = {(m["provider"], m["model"]): m for m in page["models"]}
    first, fallback = models[("a", "house-model")], models[("b", "dear-model")]
    assert (first["requests"], first["input_tokens"], first["output_tokens"]) == (0, 200, 20)
    assert first["cost_usd"] == pytest.approx((200 * 1.0 + 20 * 2.0) / 1e6)
    assert (fallback["requests"], fallback["input_tokens"], fallback["output_tokens"]) == (1, 300, 30)
    assert fallback["cost_usd"] == pytest.approx((300 * 10.0 + 30 * 20.0) / 1e6)
    providers = {p["provider"]: p for p in page["providers"]}
    assert (providers["a"]["input_tokens"], providers["b"]["input_tokens"]) == (200, 300)
    assert (page["totals"]["requests"], page["totals"]["input_tokens"]) == (1, 500)
    assert page["totals"]["cost_usd"] == pytest.approx(first["cost_usd"] + fallback["cost_usd"])
    assert 'claudeproxy_tokens_total{provider="a",model="house-model",kind="input"} 200' in metrics
    assert 'claudeproxy_tokens_total{provider="b",model="dear-model",kind="input"} 300' in metrics
    # The usage log's line is the call's: its totals, and what the other target spent of them.
    line = json.loads(log_file.read_text().splitlines()[-1])
    assert (line["provider"], line["input_tokens"], line["attempts"]) == ("b", 500, 3)
    assert line["spent_elsewhere"] == [{"provider": "a", "upstream_model": "house-model", "input_tokens": 200,
                                        "output_tokens": 20, "cache_read_input_tokens": 0,
                                        "cache_creation_input_tokens": 0, "cost_usd": pytest.approx(240e-6)}]


def test_a_fallback_from_an_unpriced_model_keeps_the_priced_ones_cost(fake: FakeUpstream, tmp_path: Any) -> None:
    """The first target has no price and billed an attempt; the fallback's has one. The call's cost
    is not known, but its own target's part is: its row said "unpriced" and showed no cost, also
    after the usage log was read back (probe Q)."""
    from claudeproxy.cli import usage_writer
    from claudeproxy.usage_replay import replay_today

    records: List[CallRecord] = []
    log_file = tmp_path / "usage.jsonl"
    write_line = usage_writer(str(log_file))

    def sink(rec: CallRecord) -> None:
        records.append(rec)
        write_line(rec)

    dear = ModelFacts(input_price=10.0, output_price=20.0)
    server = claudeproxy.start(
        providers=(Provider("a", fake.url, token=KEY), Provider("b", fake.url, token=KEY, models=(("dear-*", dear),))),
        routes=(Route("*", RouteTarget("a", "mystery-model"), fallbacks=(RouteTarget("b", "dear-model"),)),),
        metrics_sink=sink, retries=0)
    try:
        fake.push(json_reply(completion("", finish="insufficient_system_resource", usage=usage(100, 0))),
                  json_reply(completion("ok", usage=usage(300, 30))))
        resp = post(types.SimpleNamespace(url=server.url), minimal_request())
        assert resp.status == 200, resp
        assert wait_for(lambda: len(records) == 1, 5), "the call was not recorded"
        page = request(server.url, "GET", "/v1/usage").json
    finally:
        server.shutdown(grace=0.1)
    own = (300 * 10.0 + 30 * 20.0) / 1e6
    [rec] = records
    assert (rec.cost_usd, rec.own_cost_usd) == (None, pytest.approx(own))
    read_back = Metrics()
    assert replay_today(read_back, str(log_file), log_file.stat().st_size, time.time()) == 1
    for usage_now in (page, read_back.usage(time.time())):
        models = {(m["provider"], m["model"]): m for m in usage_now["models"]}
        fallback, first = models[("b", "dear-model")], models[("a", "mystery-model")]
        assert (fallback["cost_usd"], fallback["unpriced_requests"]) == (pytest.approx(own), 0)
        assert (first["cost_usd"], first["unpriced_requests"], first["input_tokens"]) == (None, 1, 100)
        assert usage_now["totals"]["unpriced_requests"] == 1


def test_an_attempt_whose_counts_did_not_all_come_carries_no_cost() -> None:
    """Its answer began and its output count never came: the known counts are a part of what it spent.
    Priced, the part went into its model's row as a measured cost (a review)."""
    from claudeproxy.spend import carry_spend, spent_elsewhere

    record: Dict[str, Any] = {"provider": "a", "upstream_model": "am", "awaiting": True, "input_tokens": 100,
                              "output_tokens": None, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    carry_spend(record, ModelFacts(input_price=3.0, output_price=15.0))
    assert record["lost"] is True
    [spend] = spent_elsewhere(record["earlier"], ("b", "bm"))
    assert (spend.provider, spend.input_tokens, spend.cost_usd) == ("a", 100, None)


def test_the_rows_of_other_targets_stay_within_the_models_kept() -> None:
    """max_models bounds the per-model rows; a call's spends elsewhere added rows past it (a review)."""
    from claudeproxy.metrics import Spend

    metrics = Metrics(max_models=1)
    metrics.record(CallRecord(endpoint="/v1/messages", provider="b", upstream_model="bm", input_tokens=115,
                              cost_usd=0.3, spent_elsewhere=(Spend("a", "am", input_tokens=100, cost_usd=0.1),
                                                             Spend("c", "cm", input_tokens=5, cost_usd=0.1))))
    rows = {(m["provider"], m["model"]): m for m in metrics.usage(time.time())["models"]}
    assert set(rows) == {("b", "bm"), ("a", "(other)"), ("c", "(other)")}  # a provider's row past the bound
    assert rows[("a", "(other)")]["input_tokens"] == 100 and rows[("c", "(other)")]["input_tokens"] == 5
    assert rows[("b", "bm")]["input_tokens"] == 10


def test_past_the_models_kept_a_call_keeps_its_provider_and_a_routes_model_its_row() -> None:
    """Past the 50 models kept, every new pair was counted under provider and model "(other)": a
    configured fallback answering for the first time lost its provider in /metrics and /v1/usage,
    and any client could fill the rows with made-up model names (probe AE, D1)."""
    metrics = Metrics(max_models=3)
    metrics.keep_rows([("backup", "gpt-4.1-mini")])
    for i in range(5):
        metrics.record(_rec(f"made-up-{i}", time.time()))
    metrics.record(CallRecord("/v1/messages", model="claude-opus-4-5", provider="backup",
                              upstream_model="gpt-4.1-mini", input_tokens=7, output_tokens=1))
    metrics.record(CallRecord("/v1/messages", model="made-up-9", provider="other-provider",
                              upstream_model="made-up-9", input_tokens=3, output_tokens=1))
    metrics.attempt_failed("backup", "gpt-4.1-mini", 429)
    rows = {(m["provider"], m["model"]): m["requests"] for m in metrics.usage(time.time())["models"]}
    assert rows == {("p", "made-up-0"): 1, ("p", "made-up-1"): 1, ("p", "made-up-2"): 1, ("p", "(other)"): 2,
                    ("backup", "gpt-4.1-mini"): 1, ("other-provider", "(other)"): 1}, rows
    assert {p["provider"] for p in metrics.usage(time.time())["providers"]} >= {"backup", "other-provider", "p"}
    assert metrics.prometheus_view()["failed_attempts"] == {("backup", "gpt-4.1-mini", "429"): 1}


def test_a_retry_after_an_attempt_of_unknown_spend_has_no_cost(fake: FakeUpstream) -> None:
    """Attempt 1 had the whole prompt and the connection dropped: what it spent is not known. A retry
    that then answers gave a cost that looked whole (a probe); the call is now unpriced, its counts kept."""
    resp, rec = _priced_call(fake, [Reply(drop="close"), json_reply(completion("ok", usage=usage(1000, 50)))],
                             minimal_request(), retries=1, retry_max_wait=0.1)
    assert resp.status == 200, resp
    assert (rec.attempts, rec.input_tokens, rec.output_tokens, rec.cost_usd) == (2, 1000, 50, None)


def test_a_usage_without_the_prompts_count_is_not_a_prompt_of_0(fake: FakeUpstream) -> None:
    """{"completion_tokens": 20} gave the client input_tokens 0 (Claude Code sizes its context by it)
    and the record a priced prompt of 0 tokens (a probe): the estimate and no count, as with no usage."""
    resp, rec = _priced_call(fake, [json_reply(completion("ok", usage={"completion_tokens": 20}))],
                             minimal_request(messages=[{"role": "user", "content": "x " * 400}]))
    assert resp.status == 200, resp
    assert resp.json["usage"]["input_tokens"] > 100
    assert (rec.input_tokens, rec.cost_usd) == (None, None)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_failed_response_that_reports_its_usage_counts_it_streamed_or_not(make_proxy: Any, fake_upstream: FakeUpstream,
                                                                            stream: bool) -> None:
    """A Response with status failed and its usage was a call of unknown cost as JSON and a priced one
    as a stream (a probe): the upstream said what it used, both ways."""
    records: List[CallRecord] = []
    server = make_proxy(upstream_api="responses", model="gpt-4.1", retries=0, metrics_sink=records.append)
    failed = {"id": "resp_1", "object": "response", "status": "failed", "output": [],
              "error": {"code": "server_error", "message": "boom"},
              "usage": {"input_tokens": 1000, "output_tokens": 200, "input_tokens_details": {"cached_tokens": 600}}}
    if stream:
        lines = [{"type": "response.created", "response": {**failed, "status": "in_progress", "usage": None, "error": None}},
                 {"type": "response.failed", "response": failed}]
        fake_upstream.push(sse_reply(*lines, done=False))
    else:
        fake_upstream.push(json_reply(failed))
    resp = post(types.SimpleNamespace(url=server.url), minimal_request(stream=stream))
    assert resp.status == 500, resp
    rec = record_for(records, resp.headers["request-id"])
    assert (rec.input_tokens, rec.cache_read_input_tokens, rec.output_tokens) == (400, 600, 200)
    assert rec.cost_usd is not None and rec.cost_usd > 0


def test_a_retry_after_a_stream_that_failed_once_begun_has_no_cost(fake: FakeUpstream) -> None:
    """Attempt 1 began its answer (a role chunk) and failed before the client saw anything: what it
    spent is not known, as it is without a retry. After the retry the cost looked exact (a review)."""
    failed = sse_reply(chunk({"role": "assistant", "content": ""}), {"error": {"message": "boom", "code": 500}},
                       done=False)
    ok = sse_reply(chunk({"role": "assistant", "content": "ok"}), chunk({}, "stop"),
                   {**chunk(), "choices": [], "usage": usage(1000, 50)})
    resp, rec = _priced_call(fake, [failed, ok], minimal_request(stream=True), retries=1, retry_max_wait=0.1)
    assert resp.status == 200, resp
    assert (rec.attempts, rec.input_tokens, rec.output_tokens, rec.cost_usd) == (2, 1000, 50, None)


def test_a_billed_attempt_stays_counted_when_the_last_one_is_lost(fake: FakeUpstream) -> None:
    """Attempt 1 is an overload with its usage (billed); attempt 2 drops after the request went out.
    The carried counts were wiped by the unknown last attempt (a review): they stay, with no cost."""
    overloaded = json_reply(completion("", finish="insufficient_system_resource", usage=usage(1000, 200)))
    resp, rec = _priced_call(fake, [overloaded, Reply(drop="close")], minimal_request(), retries=1, retry_max_wait=0.1)
    assert resp.status >= 500, resp
    assert (rec.attempts, rec.input_tokens, rec.output_tokens, rec.cost_usd) == (2, 1000, 200, None)


def test_a_call_with_a_billed_attempt_before_it_teaches_the_calibration_nothing(fake: FakeUpstream) -> None:
    """The record's counts then hold two prompts: learned, they would double the next estimates."""
    records: List[CallRecord] = []
    server = _priced_proxy(fake, records, retries=1, retry_max_wait=0.1)
    body = minimal_request(messages=[{"role": "user", "content": "word " * 2000}])
    try:
        for _ in range(4):  # enough calls to teach a ratio (calibration.min_samples)
            fake.push(json_reply(completion("", finish="insufficient_system_resource", usage=usage(1000, 5))),
                      json_reply(completion("ok", usage=usage(1000, 5))))
            assert post(types.SimpleNamespace(url=server.url), body).status == 200
        learned = server.server.proxy.calibration.snapshot()
    finally:
        server.shutdown(grace=0.1)
    assert learned == {}, learned


def test_a_records_cost_is_written_without_float_noise() -> None:
    # A new user's probe found 7.999999999999999e-05 in the log; 0.3 USD per million tokens times 100:
    from claudeproxy.metrics import CallRecord

    cost = 0.3 / 1_000_000 * 100
    assert cost != 3e-05  # the noise is real
    assert json.dumps(CallRecord(endpoint="/v1/messages", cost_usd=cost).to_dict()["cost_usd"]) == "3e-05"
