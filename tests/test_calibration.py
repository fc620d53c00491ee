"""Token counts that learn (calibration.py): count_tokens and message_start after a few turns.

The synthetic upstream below counts prompt tokens the way a real tokenizer
roughly does, at a known characters-per-token ratio plus a fixed cost per
message, with a few percent of deterministic noise and one wild outlier. The
proxy's raw estimate assumes 3.5 characters a token; after a few turns its
count must sit a few percent above the truth, whichever side it started on.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import claudeproxy
from claudeproxy.anthropic_types import parse_messages_request
from claudeproxy.calibration import TokenCalibration
from claudeproxy.tokens import estimate_input_tokens
from conftest import UPSTREAM_KEY, request
from fakes import FakeUpstream, Reply, chunk, completion, json_reply, sse_reply
from sse_checks import events_of

PER_MESSAGE = 3  # the chat template's cost per message
OUTLIER_CALL = 5  # this call's usage is reported ten times too high


class Tokenizer(FakeUpstream):
    """Answers every chat request with usage counted at ``chars_per_token`` (requests one at a time)."""

    def __init__(self, chars_per_token: float) -> None:
        super().__init__()
        self.chars_per_token = chars_per_token
        self.calls = 0

    def truth(self, messages: List[Dict[str, Any]]) -> int:
        chars = sum(len(_text(m.get("content"))) for m in messages)
        return math.ceil(chars / self.chars_per_token) + PER_MESSAGE * len(messages)

    def next_reply(self) -> Reply:
        body = self.requests[-1].json
        self.calls += 1
        noise = 1 + ((self.calls * 37) % 9 - 4) / 100  # -4 % .. +4 %, the same every run
        prompt = round(self.truth(body["messages"]) * noise) * (10 if self.calls == OUTLIER_CALL else 1)
        usage = {"prompt_tokens": prompt, "completion_tokens": 20, "total_tokens": prompt + 20}
        if body.get("stream"):
            return sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "ok"}), chunk({}, "stop"),
                             {**chunk(), "choices": [], "usage": usage})
        return json_reply(completion("ok", usage=usage))


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def turn_text(i: int) -> str:
    """Prose, code and JSON in turn, of different lengths: what a coding session sends."""
    if i % 3 == 0:
        return " ".join(f"The build step {j} writes its output to dist/part-{j}.js and logs the time." for j in range(20 + 7 * i))
    if i % 3 == 1:
        return "\n".join(f"def handler_{j}(event, ctx):\n    return {{'id': {j}, 'ok': event.get('x{j}')}}"
                         for j in range(15 + 5 * i))
    return str([{"path": f"src/module_{j}.py", "lines": j * 13, "changed": j % 2 == 0} for j in range(12 + 6 * i)])


SYSTEM = "You are a careful coding assistant. Answer briefly. " * 40


def truth_of(tokenizer: Tokenizer, body: Dict[str, Any]) -> int:
    """What the upstream would count for ``body`` (without noise): the system prompt is one more message."""
    return tokenizer.truth([{"content": body["system"]}] + body["messages"])


@pytest.fixture(params=[4.4, 2.6], ids=["tokenizer-leaner-than-guess", "tokenizer-denser-than-guess"])
def session(request: Any) -> Iterator[Tuple[Tokenizer, Any]]:
    tokenizer = Tokenizer(request.param)
    proxy = claudeproxy.start(upstream=tokenizer.url, token=claudeproxy.static_token(UPSTREAM_KEY), model="gpt-4o")
    yield tokenizer, proxy
    proxy.shutdown(grace=1.0)
    tokenizer.close()


def test_count_tokens_converges_a_few_percent_above_the_truth(session: Tuple[Tokenizer, Any]) -> None:
    tokenizer, proxy = session
    history: List[Dict[str, Any]] = []
    errors: List[float] = []
    for turn in range(12):
        history.append({"role": "user", "content": turn_text(turn)})
        body = {"model": "claude-sonnet-4-5", "system": SYSTEM, "messages": list(history)}
        counted = request(proxy.url, "POST", "/v1/messages/count_tokens", body).json["input_tokens"]
        errors.append(counted / truth_of(tokenizer, body) - 1)
        assert request(proxy.url, "POST", "/v1/messages", {**body, "max_tokens": 100}).status == 200
        history.append({"role": "assistant", "content": "ok"})
    print(f"\n{tokenizer.chars_per_token} chars/token: count_tokens error by turn: "
          + " ".join(f"{e * 100:+.1f}%" for e in errors))
    assert abs(errors[0]) > 0.15  # the fixed guess is far off either way
    for error in errors[4:]:  # three calls taught a ratio; the outlier (call 5) did not spoil it
        assert 0.0 <= error <= 0.06, errors
    # message_start of a stream uses the same calibrated estimate.
    history.append({"role": "user", "content": turn_text(12)})
    body = {"model": "claude-sonnet-4-5", "system": SYSTEM, "messages": history, "max_tokens": 100, "stream": True}
    resp = request(proxy.url, "POST", "/v1/messages", body)
    start = events_of(resp.body)[0]
    assert start["type"] == "message_start"
    error = start["message"]["usage"]["input_tokens"] / truth_of(tokenizer, body) - 1
    assert 0.0 <= error <= 0.06, error


def test_a_stream_without_usage_teaches_nothing(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """The proxy's own estimate (reported back when the upstream gives no usage) must not feed the calibration."""
    proxy = make_proxy(model="gpt-4o")
    body = {"model": "m", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": turn_text(3)}]}
    for _ in range(4):
        fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "x"}),
                                     chunk({}, "stop")))
        assert request(proxy.url, "POST", "/v1/messages", body).status == 200
    assert proxy.server.wait_idle(2)
    calibration = proxy.server.proxy.calibration
    assert calibration.ratio(("upstream", "gpt-4o")) is None
    assert request(proxy.url, "GET", "/v1/usage").json["token_calibration"] == {}


# ---------------------------------------------------------------------------
# TokenCalibration on its own.


def test_no_ratio_before_enough_calls_then_the_median() -> None:
    cal = TokenCalibration(min_samples=3, margin=0.0)
    key = ("p", "m")
    assert cal.estimate(key, 1000) == 1000
    assert cal.learn(key, 1000, 800) and cal.learn(key, 1000, 820)
    assert cal.ratio(key) is None
    assert cal.learn(key, 1000, 7000)  # one outlier among three
    assert cal.ratio(key) == pytest.approx(0.82)
    assert cal.estimate(key, 2000) == 1640


def test_margin_keeps_the_estimate_above() -> None:
    cal = TokenCalibration(margin=0.03)
    for _ in range(3):
        cal.learn("k", 1000, 1000)
    assert cal.estimate("k", 1000) == 1030


def test_ratio_is_clamped_and_tiny_prompts_teach_nothing() -> None:
    cal = TokenCalibration(margin=0.0)
    assert not cal.learn("k", 10, 9)  # a "Hello" is mostly template overhead
    assert not cal.learn("k", 1000, 0)  # no usage reported
    for _ in range(3):
        cal.learn("k", 1000, 100_000)
    assert cal.ratio("k") == 4.0
    for _ in range(20):
        cal.learn("low", 100_000, 1000)
    assert cal.ratio("low") == 0.25


def test_window_and_models_are_bounded() -> None:
    cal = TokenCalibration(window=5, max_models=3, margin=0.0)
    for i in range(10):
        cal.learn("k", 1000, 1000 + 100 * i)
    assert cal.ratio("k") == pytest.approx(1.7)  # the median of the last five: 1.5 .. 1.9
    for name in "abcd":
        for _ in range(3):
            cal.learn(name, 1000, 2000)
    assert cal.ratio("k") is None and cal.ratio("a") is None  # forgotten, oldest first
    assert cal.ratio("d") == 2.0 and len(cal.snapshot()) == 3


def test_the_model_in_use_outlives_names_used_once() -> None:
    """The table forgot the model first seen, even while it was in use: a client making up model
    names pushed out the learned ratio of the real one (a probe). The one used longest ago goes."""
    cal = TokenCalibration(window=5, max_models=3, margin=0.0)
    for _ in range(3):
        cal.learn("real", 1000, 1500)
    for name in ("made-up-1", "made-up-2", "made-up-3", "made-up-4"):
        cal.learn(name, 1000, 2000)
        cal.learn("real", 1000, 1500)  # in use all along
    assert cal.ratio("real") == 1.5 and len(cal.snapshot()) == 3


def test_calls_mostly_of_pdf_pages_teach_nothing(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """A guess per page or image is far rougher than the text's count: six PDF turns once set the
    ratio to its 4x cap, and every later text-only count was four times too high."""
    import base64

    proxy = make_proxy(model="gpt-4o")
    pdf = base64.b64encode(b"%PDF-1.4\n" + b"<</Type /Page>>\n" * 10).decode()
    document = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}}
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": [document, {"type": "text",
                                                                                                "text": "Sum it up."}]}]}
    usage = {"prompt_tokens": 150_000, "completion_tokens": 5, "total_tokens": 150_005}
    for _ in range(6):
        fake_upstream.push(json_reply(completion("ok", usage=usage)))
        assert request(proxy.url, "POST", "/v1/messages", body).status == 200
    assert proxy.server.wait_idle(2)
    assert proxy.server.proxy.calibration.ratio(("upstream", "gpt-4o")) is None
    text_only = {"model": "m", "messages": [{"role": "user", "content": turn_text(0)}]}
    counted = request(proxy.url, "POST", "/v1/messages/count_tokens", text_only).json["input_tokens"]
    assert counted == estimate_input_tokens(parse_messages_request({**text_only, "max_tokens": 1}))


def test_a_server_that_cuts_the_prompt_is_said_and_teaches_nothing(make_proxy: Any, fake_upstream: FakeUpstream,
                                                                   caplog: Any) -> None:
    """Ollama cuts a prompt to its num_ctx without a word and counts what it kept (4095 of a 15k
    prompt, every turn): the model saw only the end, and learned, the ratio took the estimates down
    with it, so Claude Code, told 4k, never compacted (probe AC, D7). Said once; nothing learned."""
    proxy = make_proxy(model="qwen3:8b", provider="ollama")
    history: List[Dict[str, Any]] = [{"role": "user", "content": turn_text(30) * 5}]  # about 15,000 tokens
    usage = {"prompt_tokens": 4095, "completion_tokens": 5, "total_tokens": 4100}
    fake_upstream.push(json_reply(completion("ok", usage=usage)))
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": history}
    assert request(proxy.url, "POST", "/v1/messages", body).status == 200
    assert proxy.server.wait_idle(2)
    assert proxy.server.proxy.calibration.ratio(("upstream", "qwen3:8b")) is None
    said = [r.getMessage() for r in caplog.records if "cut prompts to its context" in r.getMessage()
            and r.levelname == "WARNING"]
    assert len(said) == 1 and "counted 4095 prompt tokens" in said[0] and "num_ctx" in said[0], said
    # From then on a prompt over the context it cut to is "prompt is too long" here, so that Claude
    # Code compacts; it was sent, and cut again every turn (probe AK 1).
    before = len(fake_upstream.requests)
    resp = request(proxy.url, "POST", "/v1/messages", body)
    assert resp.status == 400 and resp.json["error"]["message"].startswith("prompt is too long: "), resp
    assert "> 4095 maximum" in resp.json["error"]["message"] and len(fake_upstream.requests) == before
    fake_upstream.push(json_reply(completion("short", usage={"prompt_tokens": 20, "completion_tokens": 5})))
    assert request(proxy.url, "POST", "/v1/messages", dict(body, messages=[{"role": "user", "content": "hi"}])).status == 200


def test_a_prompt_over_an_ollama_models_configured_window_is_said_too_long_here(make_proxy: Any,
                                                                              fake_upstream: FakeUpstream) -> None:
    """Probe AK 1: with the models table's context_window at Ollama's num_ctx, prompts of 34k to 142k
    tokens went to a 32k context and were cut, every turn, without a word: Claude Code never compacted."""
    from claudeproxy.model_facts import ModelFacts
    from claudeproxy.routing import Provider, Route, RouteTarget

    provider = Provider("ollama", fake_upstream.url, dialect="ollama",
                        models=(("qwen3-coder:30b", ModelFacts(context_window=8000)),))
    proxy = make_proxy(providers=(provider,), routes=(Route("*", RouteTarget("ollama", "qwen3-coder:30b")),),
                       upstream=None)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": turn_text(30) * 5}]}
    resp = request(proxy.url, "POST", "/v1/messages", body)
    assert resp.status == 400 and "> 8000 maximum" in resp.json["error"]["message"], resp
    assert fake_upstream.requests == []
    assert proxy.server.wait_idle(2)
    text = request(proxy.url, "GET", "/metrics").body.decode()
    assert "claudeproxy_upstream_failed_attempts_total{" not in text  # no upstream attempt failed


def test_a_low_count_elsewhere_is_no_cut_prompt(make_proxy: Any, fake_upstream: FakeUpstream, caplog: Any) -> None:
    """Only a server that cuts prompts is suspected: elsewhere the estimate may count what was not sent
    (deferred MCP tools no search found), and OpenAI's count of the prompt sent is the truth (review AG)."""
    proxy = make_proxy(model="gpt-4.1", provider="openai")
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": turn_text(30) * 5}]}
    for _ in range(3):
        usage = {"prompt_tokens": 6100, "completion_tokens": 5, "total_tokens": 6105}
        fake_upstream.push(json_reply(completion("ok", usage=usage)))
        assert request(proxy.url, "POST", "/v1/messages", body).status == 200
    assert proxy.server.wait_idle(2)
    assert not [r for r in caplog.records if "cut prompts" in r.getMessage()]
    assert proxy.server.proxy.calibration.ratio(("upstream", "gpt-4.1")) is not None
