"""Every upstream way of saying "the prompt is too long" reaches Claude Code as its own (FIELD-NOTES 16).

Claude Code compacts the conversation on a 400 ``invalid_request_error``
whose message begins ``prompt is too long``, and reads the sizes with the
regex below (its ``parsePromptTooLongTokenCounts``). The fixtures in
``fixtures/errors/context_overflow/`` are real upstream bodies, each naming
its source; ``expect`` says what Claude Code must read from our answer.
Refusals whose prompt fits (the output budget overflows) must stay what they
are, so the max_tokens retry can fix them instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import pytest

from conftest import CLIENT_KEY, FIXTURES, UPSTREAM_KEY, load_json, minimal_request, request
from fakes import Reply, StreamClient, chunk, completion, json_reply, sse_reply
from sse_checks import assert_valid_event_sequence

from claudeproxy.errors import ProxyError, error_from_object, error_from_status, max_tokens_limit

SHARED_SERVERS = True  # one fake upstream and its proxies serve the whole module (conftest)

HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
DIR = os.path.join(FIXTURES, "errors", "context_overflow")
NAMES = sorted(name[: -len(".json")] for name in os.listdir(DIR) if name.endswith(".json"))
# Claude Code's parser, services/api/errors.ts parsePromptTooLongTokenCounts.
CLAUDE_CODE_RE = re.compile(r"prompt is too long[^0-9]*(\d+)\s*tokens?\s*>\s*(\d+)", re.IGNORECASE)


def fixture(name: str) -> Dict[str, Any]:
    return load_json("errors", "context_overflow", name + ".json")


def body_bytes(fx: Dict[str, Any]) -> bytes:
    body = fx["body"]
    return body.encode("utf-8") if isinstance(body, str) else json.dumps(body).encode("utf-8")


def error_object(fx: Dict[str, Any]) -> Dict[str, Any]:
    obj = fx["body"]
    for key in fx.get("error_at", ["error"]):
        obj = obj[key]
    return obj


def translate(fx: Dict[str, Any]) -> ProxyError:
    """An HTTP error status goes through error_from_status, an in-band error object (200) through error_from_object."""
    if fx["status"] == 200:
        return error_from_object(error_object(fx), (UPSTREAM_KEY,))
    return error_from_status(fx["status"], body_bytes(fx), None, (UPSTREAM_KEY,))


def sizes_read_by_claude_code(message: str) -> Tuple[Optional[int], Optional[int]]:
    match = CLAUDE_CODE_RE.search(message)
    return (int(match.group(1)), int(match.group(2))) if match else (None, None)


def assert_prompt_too_long(message: str, expect: Dict[str, Any]) -> None:
    assert message.startswith("prompt is too long"), message
    assert message.lower().count("prompt is too long") == 1, message
    assert len(message) <= 1000
    prompt, limit = expect["prompt_tokens"], expect["limit"]
    assert sizes_read_by_claude_code(message) == (prompt, limit), message
    if prompt is not None:
        assert message.startswith(f"prompt is too long: {prompt} tokens > {limit} maximum"), message


def positives(streamable_only: bool = False) -> List[str]:
    out = []
    for name in NAMES:
        fx = fixture(name)
        if not fx["expect"]["prompt_too_long"]:
            continue
        if streamable_only and not (fx["status"] == 200 and fx.get("error_at", ["error"]) == ["error"]):
            continue
        if not streamable_only and fx["status"] == 200:
            continue
        out.append(name)
    return out


# ---------------------------------------------------------------------------
# The fixture table, through error_from_status / error_from_object.


@pytest.mark.parametrize("name", NAMES)
def test_fixture(name: str) -> None:
    fx = fixture(name)
    assert fx["source"].strip(), "every fixture names where its body comes from"
    expect = fx["expect"]
    exc = translate(fx)
    assert (exc.status, exc.error_type) == (expect["status"], expect["type"]), exc.message
    if expect["prompt_too_long"]:
        assert_prompt_too_long(exc.message, expect)
    else:
        assert "prompt is too long" not in exc.message.lower(), exc.message
    if "max_tokens" in expect:
        # A refusal whose prompt fits is the max_tokens retry's: it must name the right budget.
        wanted = expect["max_tokens"]
        assert max_tokens_limit(exc.upstream_message, wanted["requested"]) == wanted["limit"]


def test_the_fixtures_cover_every_provider_the_issue_names() -> None:
    covered = {name.split("-")[0] for name in NAMES if fixture(name)["expect"]["prompt_too_long"]}
    wanted = {"openai", "azure", "deepseek", "gemini", "mistral", "groq", "openrouter", "vllm", "llamacpp",
              "ollama", "lmstudio", "copilot", "anthropic", "http"}
    assert wanted <= covered, wanted - covered
    assert any(fixture(n)["status"] == 413 for n in positives())
    assert any(not fixture(n)["expect"]["prompt_too_long"] for n in NAMES)


# ---------------------------------------------------------------------------
# The message, exactly.


def test_sizes_lead_then_the_upstream_words() -> None:
    exc = translate(fixture("openai-chat-messages-resulted"))
    assert exc.message == (
        "prompt is too long: 8227 tokens > 8192 maximum (upstream 400: This model's maximum context length is "
        "8192 tokens. However, your messages resulted in 8227 tokens. Please reduce the length of the messages.)")


def test_without_sizes_the_upstream_words_follow_the_phrase() -> None:
    exc = translate(fixture("openai-responses-response-failed"))
    assert exc.message == ("prompt is too long: Your input exceeds the context window of this model. "
                           "Please adjust your input and try again.")
    assert (exc.status, exc.error_type) == (400, "invalid_request_error")


def test_anthropic_message_passes_through_unchanged() -> None:
    assert translate(fixture("anthropic-prompt-is-too-long")).message == "prompt is too long: 210118 tokens > 200000 maximum"


def test_in_band_error_without_a_status_says_upstream() -> None:
    exc = error_from_object({"message": "prompt token count of 74490 exceeds the limit of 72000",
                             "code": "model_max_prompt_tokens_exceeded"})
    assert exc.message == ("prompt is too long: 74490 tokens > 72000 maximum "
                           "(upstream: prompt token count of 74490 exceeds the limit of 72000)")


def test_capitalised_phrase_is_normalised() -> None:
    exc = error_from_status(400, b'{"error": {"message": "Prompt is too long: 250000 tokens > 200000 maximum"}}')
    assert exc.message == "prompt is too long: 250000 tokens > 200000 maximum"


def test_thousands_separators_are_read() -> None:
    body = b'{"error": {"message": "Prompt has 300,000 tokens, but the configured context size is 131,072 tokens"}}'
    assert error_from_status(400, body).message.startswith("prompt is too long: 300000 tokens > 131072 maximum (")


def test_secrets_are_redacted_from_overflow_messages() -> None:
    body = json.dumps({"error": {"message": f"key {UPSTREAM_KEY}: This model's maximum context length is 8192 "
                                            "tokens. However, your messages resulted in 9000 tokens.",
                                 "code": "context_length_exceeded"}}).encode("utf-8")
    exc = error_from_status(400, body, secrets=(UPSTREAM_KEY,))
    assert exc.message.startswith("prompt is too long: 9000 tokens > 8192 maximum")
    assert UPSTREAM_KEY not in exc.message and UPSTREAM_KEY not in exc.upstream_message
    exc = error_from_object({"message": f"context_length_exceeded for Bearer {UPSTREAM_KEY}"}, (UPSTREAM_KEY,))
    assert exc.message.startswith("prompt is too long") and UPSTREAM_KEY not in exc.message


@pytest.mark.parametrize("status", [400, 413])
def test_message_is_bounded(status: int) -> None:
    huge = "The input token count (2000000) exceeds the maximum number of tokens allowed (1048576). " + "x" * 5000
    exc = error_from_status(status, json.dumps({"error": {"message": huge}}).encode("utf-8"))
    assert exc.message.startswith("prompt is too long: 2000000 tokens > 1048576 maximum (upstream ")
    assert len(exc.message) <= 1000
    html = b"<html><body>" + b"413 Request Entity Too Large " * 400 + b"</body></html>"
    assert len(error_from_status(413, html).message) <= 1000


def test_an_html_error_page_is_reduced_to_its_title() -> None:
    fx = fixture("http-413-nginx")
    assert translate(fx).message == "prompt is too long: 413 Request Entity Too Large"


def test_a_server_error_that_only_mentions_the_window_stays_a_server_error() -> None:
    exc = error_from_status(500, b'{"error": {"message": "maximum context length exceeded in the router"}}')
    assert (exc.status, exc.error_type) == (500, "api_error")
    assert not exc.message.startswith("prompt is too long")


# ---------------------------------------------------------------------------
# Through the real server: non-stream and stream, HTTP status and in-band.


def send(proxy: Any, stream: bool, **overrides: Any) -> Any:
    return request(proxy.url, "POST", "/v1/messages", minimal_request(stream=stream, **overrides), HEADERS, timeout=8)


def http_reply(fx: Dict[str, Any]) -> Reply:
    ctype = "text/html" if isinstance(fx["body"], str) else "application/json"
    return Reply(fx["status"], (("Content-Type", ctype),), [body_bytes(fx)])


def assert_plain_prompt_too_long(resp: Any, expect: Dict[str, Any]) -> str:
    assert resp.status == 400, resp
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    assert b"event:" not in resp.body
    body = resp.json
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    assert body["request_id"] == resp.headers["request-id"]
    assert_prompt_too_long(body["error"]["message"], expect)
    return str(body["error"]["message"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("name", positives())
def test_upstream_error_status_reaches_the_client_as_prompt_too_long(proxy, fake_upstream, name, stream):
    """Non-stream, and a stream whose upstream answered an error status: a plain HTTP 400, no SSE."""
    fx = fixture(name)
    fake_upstream.push(http_reply(fx))
    resp = send(proxy, stream)
    assert_plain_prompt_too_long(resp, fx["expect"])
    assert len(fake_upstream.requests) == 1  # an overflow is never retried


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("name", positives(streamable_only=True))
def test_error_object_as_the_first_event_is_a_plain_400(proxy, fake_upstream, name, stream):
    """In a 200 JSON body, or as the first SSE event: nothing was sent yet, so a plain HTTP error."""
    fx = fixture(name)
    fake_upstream.push(sse_reply(fx["body"]) if stream else json_reply(fx["body"]))
    assert_plain_prompt_too_long(send(proxy, stream), fx["expect"])


def test_plain_text_error_event_is_read_too(proxy, fake_upstream):
    """``event: error`` with a text payload (PROTOCOL.md 3.4 step 1), here Ollama's words."""
    fake_upstream.push(sse_reply("event: error\ndata: prompt too long; exceeded max context length by 4 tokens\n\n",
                                 done=False))
    message = assert_plain_prompt_too_long(send(proxy, True), {"prompt_tokens": None, "limit": None})
    assert message == "prompt is too long: prompt too long; exceeded max context length by 4 tokens"


def test_error_object_after_text_is_one_error_event(proxy, fake_upstream):
    fx = fixture("llamacpp-in-stream")
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "Partial answer"}),
                                 fx["body"]))
    with StreamClient(proxy.url, minimal_request(stream=True), headers=HEADERS, timeout=8) as client:
        assert client.status == 200
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start" and "content_block_delta" in kinds
    assert kinds[-1] == "error" and kinds.count("error") == 1, kinds
    assert "message_stop" not in kinds, kinds
    assert events[-1]["error"]["type"] == "invalid_request_error"
    assert_prompt_too_long(events[-1]["error"]["message"], fx["expect"])


@pytest.mark.parametrize("name, requested, retried", [
    ("vllm-max-tokens-too-large-not-overflow", 8000, 1318),
    ("openai-completion-overflows-not-overflow", 8192, 8128),
])
def test_output_budget_overflow_is_retried_not_compacted(proxy, fake_upstream, name, requested, retried):
    """The prompt fits; the budget does not: a smaller max_tokens answers it, compaction would loop."""
    fake_upstream.push(http_reply(fixture(name)), json_reply(completion("fits now")))
    resp = send(proxy, False, max_tokens=requested, model=f"overflow-{name}")
    assert resp.status == 200, resp
    assert resp.json["content"] == [{"type": "text", "text": "fits now"}]
    assert [r.json["max_tokens"] for r in fake_upstream.requests] == [requested, retried]


def vllm_uncounted(window: int, output: int) -> Reply:
    """vLLM 0.18 on: it counts the prompt only up to the window less the output asked ("at least")."""
    least = window - output + 1
    message = (f"This model's maximum context length is {window} tokens. However, you requested {output} output "
               f"tokens and your prompt contains at least {least} input tokens, for a total of at least "
               f"{window + 1} tokens. Please reduce the length of the input prompt or the number of requested "
               f"output tokens. (parameter=input_tokens, value={least})")
    body = {"error": {"message": message, "type": "BadRequestError", "param": "input_tokens", "code": 400}}
    return Reply(400, (("Content-Type", "application/json"),), [json.dumps(body).encode()])


def test_a_prompt_vllm_did_not_count_gets_the_room_beside_its_estimate(proxy, fake_upstream):
    """Probe AH 1: vLLM's refusal names no prompt size ("at least W - O + 1"), and the proxy called
    every such prompt too long: a 12k prompt in a 24k window with 16,000 asked was told to compact
    (and a first turn "cannot be compacted"). The retry asks for what fits beside the estimate; a
    second refusal (the estimate was low) halves that; the room is not remembered as the model's cap."""
    from claudeproxy.anthropic_types import parse_messages_request
    from claudeproxy.tokens import estimate_input

    prompt = [{"role": "user", "content": "word " * 8400}]
    estimate = estimate_input(parse_messages_request(minimal_request(max_tokens=1, messages=prompt))).tokens
    assert 11000 < estimate < 13000
    fake_upstream.push(vllm_uncounted(24576, 16000), json_reply(completion("fits")))
    model = "uncounted-prompt"
    resp = send(proxy, False, max_tokens=16000, model=model, messages=prompt)
    assert resp.status == 200, resp
    first, retried = [r.json["max_tokens"] for r in fake_upstream.requests]
    assert first == 16000 and 16000 // 2 < retried <= 24576 - estimate, retried
    # The window is remembered: the next turn asks for that room at once (no refused round trip,
    # where half the window learned as the cap was refused every turn; review AJ R1).
    fake_upstream.requests.clear()
    fake_upstream.push(json_reply(completion("fits")))
    assert send(proxy, False, max_tokens=16000, model=model, messages=prompt).status == 200
    assert [r.json["max_tokens"] for r in fake_upstream.requests] == [retried]
    # Refused even so (the real prompt was longer than the estimate): half of that, then an answer.
    fake_upstream.requests.clear()
    fake_upstream.push(vllm_uncounted(24576, retried), json_reply(completion("fits")))
    assert send(proxy, False, max_tokens=16000, model=model, messages=prompt).status == 200
    assert [r.json["max_tokens"] for r in fake_upstream.requests] == [retried, retried // 2]
    # Claude Code's 128,000, twice the window: the same room at once, nothing learned as a cap.
    fake_upstream.requests.clear()
    fake_upstream.push(json_reply(completion("fits")))
    assert send(proxy, False, max_tokens=128000, model=model, messages=prompt).status == 200
    assert [r.json["max_tokens"] for r in fake_upstream.requests] == [retried]


def test_max_tokens_over_vllms_window_goes_again_with_the_room_beside_the_prompt(proxy, fake_upstream):
    """Probe AK 8: "max_tokens=128000 cannot be greater than max_model_len=max_total_tokens=32768" was read
    as a cap of 32768, and the retry with the whole window could never fit beside any prompt: a second
    refusal at the start of every session. It names the window: the retry asks for the room beside the
    estimate of the prompt at once."""
    message = ("max_tokens=128000cannot be greater than max_model_len=max_total_tokens=32768. Please request "
               "fewer output tokens. (parameter=max_tokens, value=128000)")
    body = {"error": {"message": message, "type": "BadRequestError", "param": "max_tokens", "code": 400}}
    fake_upstream.push(Reply(400, (("Content-Type", "application/json"),), [json.dumps(body).encode()]),
                       json_reply(completion("fits")))
    prompt = [{"role": "user", "content": "word " * 7000}]  # an estimate of about 10,000
    assert send(proxy, False, max_tokens=128000, model="window-named", messages=prompt).status == 200
    first, retried = [r.json["max_tokens"] for r in fake_upstream.requests]
    assert first == 128000 and 16384 < retried < 32768 - 9000, retried


def test_near_an_uncounted_window_one_refusal_at_most_says_the_prompt_does_not_fit(proxy, fake_upstream):
    """Probe AK 2: near the window of a server that does not count the prompt, the full budget went,
    then half of it after each refusal: up to four refusals a request. Once the window is known, a
    prompt that leaves less than 1,024 tokens goes with 1,024: an answer, or one refusal and then
    "prompt is too long" (Claude Code compacts)."""
    model = "uncounted-near-edge"
    fake_upstream.push(vllm_uncounted(24576, 16000), json_reply(completion("fits")))
    assert send(proxy, False, max_tokens=16000, model=model).status == 200  # the window is learned
    fake_upstream.requests.clear()
    near = [{"role": "user", "content": "word " * 16500}]  # an estimate of about 23,500
    fake_upstream.push(vllm_uncounted(24576, 1024))
    resp = send(proxy, False, max_tokens=16000, model=model, messages=near)
    assert resp.status == 400 and resp.json["error"]["message"].startswith("prompt is too long"), resp
    assert [r.json["max_tokens"] for r in fake_upstream.requests] == [1024]


def test_a_prompt_vllm_did_not_count_is_too_long_once_no_answer_would_fit(proxy, fake_upstream):
    """Halving stops under 1,024 tokens of answer (bounded too by the retries): then the prompt is
    what does not fit, said as Claude Code compacts on. ``requested 0 output tokens``: at once."""
    fake_upstream.push(vllm_uncounted(24576, 0))
    resp = send(proxy, False, max_tokens=4000, model="uncounted-zero")
    assert resp.status == 400 and resp.json["error"]["message"].startswith("prompt is too long"), resp
    assert len(fake_upstream.requests) == 1
    # An estimate over the window is said as the sizes Claude Code reads to drop history (probe AK D10).
    fake_upstream.requests.clear()
    fake_upstream.push(vllm_uncounted(24576, 0))
    resp = send(proxy, False, max_tokens=4000, model="uncounted-zero", messages=[{"role": "user",
                                                                                 "content": "word " * 20000}])
    said = re.match(r"prompt is too long: (\d+) tokens > 24576 maximum \(the proxy's estimate; upstream 400: "
                    r"This model's maximum context length", resp.json["error"]["message"])
    assert resp.status == 400 and said and 26000 < int(said.group(1)) < 32000, resp.json
    fake_upstream.requests.clear()
    fake_upstream.push(vllm_uncounted(24576, 4000), vllm_uncounted(24576, 2000))
    resp = send(proxy, False, max_tokens=4000, model="uncounted-long")
    assert resp.status == 400 and resp.json["error"]["message"].startswith("prompt is too long"), resp
    assert [r.json["max_tokens"] for r in fake_upstream.requests] == [4000, 2000]  # 1,000 would be under


# Read by hand from each message: a limit the model has (its output maximum, a range, a window the
# asked budget alone fills) is remembered; the room one prompt leaves (window minus its tokens) is not.
LASTING_LIMITS = {
    "openai-max-tokens-too-large-not-overflow": True,  # "supports at most 4096 completion tokens"
    "deepseek-max-tokens-range-not-overflow": True,  # "the valid range of max_tokens is [1, 8192]"
    "vllm-max-tokens-over-window-not-overflow": False,  # max_tokens=64000 > max_model_len=32768: the window
    "vllm-output-fills-window-not-overflow": False,  # 131072 asked of a 131072 window: the window is learned
    "anthropic-max-tokens-overflows-not-overflow": False,  # 143653 + 64000 > 200000
    "azure-completion-overflows-not-overflow": False,  # (9969 in the messages, 26000 in the completion)
    "deepseek-completion-overflows-not-overflow": False,
    "openai-completion-overflows-not-overflow": False,
    "openai-functions-not-overflow": False,
    "openrouter-output-overflows-not-overflow": False,  # (10535 of text input, 131072 in the output)
    "kimi-model-token-limit": False,  # 262144 (requested: 300000), the prompt and max_tokens together
    "vllm-max-tokens-too-large-not-overflow": False,  # (8000 > 4096 - 2778)
    "vllm-old-completion-overflows-not-overflow": False,
}


def test_a_learned_window_keeps_max_tokens_within_it_once_the_model_is_calibrated(proxy, fake_upstream,
                                                                                   caplog) -> None:
    """vLLM's Qwen3-32B, whose output limit is its window, was refused once every turn (probe V 4):
    the window a refusal names is remembered, and once the calibration knows the model's counts,
    each prompt asks for the room its estimate leaves, also where the client asks for far more
    (Claude Code's 128,000: a floor of a quarter of that undid it, a verification). Until then, and
    where that room would be under 1,024, the upstream's refusal says the room exactly (an estimate
    leaning high cut an answer to 634 tokens where 8,000 fitted: review X)."""
    model, prompt = "window-bound", [{"role": "user", "content": "word " * 4000}]
    counted = {"prompt_tokens": 5000, "completion_tokens": 5, "total_tokens": 5005}
    fake_upstream.push(http_reply(fixture("openai-completion-overflows-not-overflow")),
                       *[json_reply(completion("ok", usage=counted)) for _ in range(4)])
    for _ in range(4):
        assert send(proxy, False, max_tokens=8192, model=model, messages=prompt).status == 200
        assert proxy.server.wait_idle(5)  # the call's counts teach the calibration once it is recorded
    sent = [r.json["max_tokens"] for r in fake_upstream.requests]
    assert sent[:4] == [8192, 8128, 8192, 8192], sent  # refused once; then three calls teach the counts
    assert 8192 - 5000 - 600 <= sent[4] <= 8192 - 5000, sent  # the room beside a 5,000-token prompt
    fake_upstream.push(json_reply(completion("ok", usage=counted)))  # Claude Code's 128,000: the same room
    with caplog.at_level(logging.DEBUG, logger="claudeproxy"):
        assert send(proxy, False, max_tokens=128000, model=model, messages=prompt).status == 200
    assert 8192 - 5000 - 600 <= fake_upstream.requests[-1].json["max_tokens"] <= 8192 - 5000
    # Said once a model at WARNING: near the window an answer may end at max_tokens (probe AK D9).
    cut = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("max_tokens is cut")]
    assert [level for level, _ in cut] == [logging.WARNING, logging.DEBUG], cut
    assert model in cut[0][1] and "(asked for 8192)" in cut[0][1] and "(asked for 128000)" in cut[1][1], cut
    # A prompt that leaves less than 1,024 tokens: the upstream says (no 100-token answers).
    fake_upstream.push(json_reply(completion("ok", usage=counted)))
    longer = [{"role": "user", "content": "word " * 6000}]
    assert send(proxy, False, max_tokens=8192, model=model, messages=longer).status == 200
    assert fake_upstream.requests[-1].json["max_tokens"] == 8192


def test_every_max_tokens_fixture_says_whether_its_limit_lasts() -> None:
    names = {n[:-5] for n in os.listdir(os.path.join(FIXTURES, "errors", "context_overflow"))
             if fixture(n[:-5])["expect"].get("max_tokens")}
    assert names == set(LASTING_LIMITS)


@pytest.mark.parametrize("name", sorted(LASTING_LIMITS))
def test_a_limit_is_remembered_only_when_it_is_the_models(name: str) -> None:
    from claudeproxy.errors import lasting_cap

    fx = fixture(name)
    exc = error_from_status(400, body_bytes(fx))
    limit = fx["expect"]["max_tokens"]["limit"]
    assert (lasting_cap(exc.upstream_message, limit) == limit) is LASTING_LIMITS[name]


@pytest.mark.parametrize("name, requested, retried, then", [
    # The window (8192) is learned, but until the calibration knows the model no estimate is trusted.
    ("openai-completion-overflows-not-overflow", 8192, 8128, (8192, 8192)),
    # 143653 + 64000 > 200000: the next, small, prompt fits its own 64000 again.
    ("anthropic-max-tokens-overflows-not-overflow", 64000, 56347, (64000, 64000)),
    ("openai-max-tokens-too-large-not-overflow", 8192, 4096, (4096, 4096)),  # the model's own maximum
])
def test_the_room_one_prompt_left_does_not_cap_the_next_request(proxy, fake_upstream, name, requested, retried,
                                                                 then):
    """A turn near the window is retried with the room it leaves; the next turn (after Claude Code
    compacted, say) is not held to that room: only a model's own maximum is remembered."""
    fake_upstream.push(http_reply(fixture(name)), json_reply(completion("fits now")), json_reply(completion("next")))
    model = f"cap-{name}"
    assert send(proxy, False, max_tokens=requested, model=model).status == 200
    assert send(proxy, False, max_tokens=requested, model=model).status == 200
    sent = [r.json["max_tokens"] for r in fake_upstream.requests]
    assert sent[:2] == [requested, retried] and then[0] <= sent[2] <= then[1], sent
