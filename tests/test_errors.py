"""Upstream errors -> Anthropic errors (PROTOCOL.md 4.1-4.3, cases 47, 68-71; FIELD-NOTES 16, 17; F13)."""

from __future__ import annotations

import email.message
import json
from typing import Any, Dict, Optional

import pytest
from conftest import UPSTREAM_KEY

from claudeproxy.errors import (
    InvalidRequest,
    ProxyError,
    UpstreamHTTPError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_from_object,
    error_from_status,
    error_payload,
    error_type_for_status,
    max_tokens_limit,
    retry_after,
    stream_error_event,
)
from claudeproxy.apis.chat.wire import parse_chat_response


def _body(message: str, **extra: Any) -> bytes:
    return json.dumps({"error": {"message": message, **extra}}).encode("utf-8")


def _headers(**values: str) -> email.message.Message:
    """Headers as urllib hands them over (``HTTPError.headers`` is an ``email.message.Message``)."""
    msg = email.message.Message()
    for name, value in values.items():
        msg[name.replace("_", "-")] = value
    return msg


# --------------------------------------------------------------------------
# 4.2 status table


@pytest.mark.parametrize(
    "upstream, status, error_type",
    [
        (400, 400, "invalid_request_error"),
        (401, 401, "authentication_error"),
        (402, 402, "billing_error"),
        (403, 403, "permission_error"),
        (404, 404, "not_found_error"),
        (405, 405, "invalid_request_error"),
        (408, 408, "timeout_error"),
        (409, 409, "invalid_request_error"),
        (418, 418, "invalid_request_error"),
        (422, 422, "invalid_request_error"),
        (429, 429, "rate_limit_error"),
        (451, 451, "invalid_request_error"),
        (498, 529, "overloaded_error"),  # Groq's flex tier out of capacity: retried later (probe AL D3)
        (500, 500, "api_error"),
        (501, 501, "api_error"),
        (502, 502, "api_error"),
        (503, 503, "overloaded_error"),
        (504, 504, "timeout_error"),
        (520, 520, "api_error"),
        (529, 529, "overloaded_error"),
        (599, 599, "api_error"),
        (100, 502, "api_error"),
        (199, 502, "api_error"),
        (301, 502, "api_error"),
        (302, 502, "api_error"),
        (304, 502, "api_error"),
        (0, 502, "api_error"),
        (600, 502, "api_error"),
        (999, 502, "api_error"),
    ],
)
def test_status_table(upstream: int, status: int, error_type: str) -> None:
    exc = error_from_status(upstream, _body("boom"))
    assert isinstance(exc, ProxyError)
    assert (exc.status, exc.error_type) == (status, error_type)
    assert exc.message == f"upstream {upstream}: boom"


def test_an_upstream_407_is_no_407_to_the_client() -> None:
    """A 407 tells an HTTP client that its own proxy wants credentials: a transparent proxy on the
    way to the upstream is the upstream's trouble, a 502 nobody should retry."""
    exc = error_from_status(407, b"Proxy Authentication Required")
    assert (exc.status, exc.error_type) == (502, "api_error")
    assert "proxy on the way to the upstream" in exc.message and ("x-should-retry", "false") in exc.headers


def test_a_server_started_without_what_tools_need_is_told_not_to_retry() -> None:
    """probe J F6: llama-server without --jinja answers every request with tools (all of Claude
    Code's) with a 500, which Claude Code and the SDKs retried with backoff; an ordinary 500 stays
    worth another try."""
    body = b'{"error":{"code":500,"message":"tools param requires --jinja flag","type":"server_error"}}'
    exc = error_from_status(500, body)
    assert (exc.status, exc.error_type) == (500, "api_error")
    assert "--jinja" in exc.message and ("x-should-retry", "false") in exc.headers
    other = error_from_status(500, b'{"error":{"code":500,"message":"failed to decode","type":"server_error"}}')
    assert ("x-should-retry", "false") not in other.headers


@pytest.mark.parametrize("message", ["Jinja Exception: Conversation roles must alternate user/assistant",
                                     "Error rendering prompt with jinja template: \"bad\""])
def test_a_chat_templates_own_refusal_is_told_not_to_retry(message: str) -> None:
    """llama.cpp's 500 "Jinja Exception: ..." comes again for the same prompt: Claude Code retried it
    ten times over three minutes (probe AC, D1)."""
    exc = error_from_status(500, json.dumps({"error": {"code": 500, "message": message}}).encode())
    assert ("x-should-retry", "false") in exc.headers, exc.headers


def test_upstream_413_of_any_kind_becomes_prompt_is_too_long() -> None:
    """An upstream 413 means the request is too big: Claude Code only recovers (compacts) on a 400
    "prompt is too long" (FIELD-NOTES 16); a 413 request_too_large just ends the turn."""
    exc = error_from_status(413, _body("boom"))
    assert (exc.status, exc.error_type) == (400, "invalid_request_error")
    assert exc.message == "prompt is too long: boom"
    assert error_type_for_status(413) == "request_too_large"  # our own 413s (F6) keep their type


def test_error_type_for_status_covers_anthropic_types() -> None:
    known = {
        "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
        "rate_limit_error", "timeout_error", "overloaded_error", "api_error", "billing_error", "request_too_large",
    }
    assert {error_type_for_status(s) for s in range(400, 600)} <= known


# --------------------------------------------------------------------------
# Message: upstream error.message, else the first 500 characters of the body


def test_message_from_openai_json_body() -> None:
    body = _body("Rate limit reached for gpt-4o", type="requests", code="rate_limit_exceeded")
    assert error_from_status(429, body).message == "upstream 429: Rate limit reached for gpt-4o"


def test_message_from_string_error() -> None:
    assert error_from_status(500, b'{"error": "engine crashed"}').message == "upstream 500: engine crashed"


def test_message_from_top_level_message() -> None:
    body = b'{"object": "error", "message": "model not loaded", "type": "NotFoundError", "code": 404}'
    assert error_from_status(404, body).message == "upstream 404: model not loaded"


def test_message_from_html_body_is_truncated_to_500_chars() -> None:
    html = "<html><head><title>502 Bad Gateway</title></head><body>" + "x" * 2000 + "</body></html>"
    exc = error_from_status(502, html.encode("utf-8"))
    assert exc.message == "upstream 502: " + html[:500]
    assert (exc.status, exc.error_type) == (502, "api_error")


def test_message_from_json_without_a_message_uses_the_body() -> None:
    exc = error_from_status(500, b'{"detail": "nope"}')
    assert exc.message == 'upstream 500: {"detail": "nope"}'


@pytest.mark.parametrize("body", [b"", b"   \n", b"\xff\xfe\x00garbage"])
def test_empty_or_binary_body_still_gives_a_message(body: bytes) -> None:
    exc = error_from_status(503, body)
    assert exc.status == 503 and exc.error_type == "overloaded_error"
    assert exc.message.startswith("upstream 503: ")
    assert exc.message.strip() != "upstream 503:"  # something readable follows


def test_upstream_message_kept_for_the_retry_logic() -> None:
    exc = error_from_status(400, _body("max_tokens is too large"))
    assert isinstance(exc, UpstreamHTTPError)
    assert exc.upstream_message == "max_tokens is too large"


def test_secrets_are_redacted_from_messages() -> None:
    """F13 / security checklist 4: an upstream that echoes the key must not leak it."""
    body = _body(f"Incorrect API key provided: {UPSTREAM_KEY}. Also Bearer abc.def.ghi")
    exc = error_from_status(401, body, secrets=(UPSTREAM_KEY,))
    assert UPSTREAM_KEY not in exc.message and "abc.def.ghi" not in exc.message
    assert exc.status == 401 and exc.error_type == "authentication_error"
    html = f"<p>bad key {UPSTREAM_KEY}</p>".encode("utf-8")
    assert UPSTREAM_KEY not in error_from_status(500, html).message  # key-shaped even without the list


# --------------------------------------------------------------------------
# retry-after headers (case 68)


def test_retry_after_copied_on_429() -> None:
    exc = error_from_status(429, _body("slow"), _headers(retry_after="3", retry_after_ms="2500"))
    assert dict(exc.headers) == {"retry-after": "3", "retry-after-ms": "2500"}


def test_retry_after_copied_on_503() -> None:
    exc = error_from_status(503, _body("busy"), _headers(retry_after="3"))
    assert (exc.status, exc.error_type) == (503, "overloaded_error")
    assert dict(exc.headers) == {"retry-after": "3"}


def test_retry_after_http_date_copied() -> None:
    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    exc = error_from_status(429, _body("slow"), {"retry-after": date})
    assert dict(exc.headers) == {"retry-after": date}


def test_no_retry_headers_when_absent() -> None:
    assert error_from_status(429, _body("slow"), _headers()).headers == ()
    assert error_from_status(429, _body("slow"), None).headers == ()


# OpenAI's and Groq's 429 comes without Retry-After: the wait is in x-ratelimit-reset-* and in the
# message. Passed on without one, the SDK's own backoff (0.5-8 s) spent its tries in 1.4 s (probe B).
@pytest.mark.parametrize("headers, message, wait", [
    # The spent limit's reset, not the other's: Groq's requests limit is a day's.
    ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "2.5s",
      "x-ratelimit-remaining-requests": "14", "x-ratelimit-reset-requests": "2h59m56.4s"}, "Rate limit reached", 2.5),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "120ms",
      "x-ratelimit-remaining-tokens": "900", "x-ratelimit-reset-tokens": "6m0s"}, "Rate limit reached", 0.12),
    ({}, "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29000, "
         "Requested 2000. Please try again in 1m2.5s. Visit https://platform.openai.com/account/rate-limits", 62.5),
    ({}, "Resource has been exhausted. Please retry in 25.372249938s.", 25.372249938),
    ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "soon"}, "Please try again in 20ms.", 0.02),
])
def test_a_429_without_retry_after_gets_the_wait_its_headers_or_message_say(
        headers: Dict[str, str], message: str, wait: float) -> None:
    exc = error_from_status(429, _body(message), headers)
    assert retry_after(exc.headers, 0) == pytest.approx(wait, abs=0.001)
    assert int(dict(exc.headers)["retry-after"]) >= wait  # whole seconds, never earlier than asked
    assert ("x-should-retry", "false") in exc.headers if wait > 60 else "x-should-retry" not in dict(exc.headers)


def test_geminis_429_gives_the_wait_its_retry_info_says() -> None:
    """Gemini's 429 names its wait in google.rpc.RetryInfo among the error's details (its OpenAI
    endpoint answers a list of Google error objects): passed on without it, the SDK's own backoff
    spent its tries within seconds (probe AL)."""
    body = json.dumps([{"error": {"code": 429, "message": "You exceeded your current quota, please check your plan "
                                  "and billing details.", "status": "RESOURCE_EXHAUSTED", "details": [
                                      {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                                      {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]}}])
    exc = error_from_status(429, body.encode())
    assert (exc.status, retry_after(exc.headers, 0)) == (429, pytest.approx(17))
    odd = body.replace('"17s"', '"soon"')
    assert error_from_status(429, odd.encode()).headers == ()  # no duration: nothing said
    junk = body.replace('{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []}', '"x", 7')
    assert retry_after(error_from_status(429, junk.encode()).headers, 0) == pytest.approx(17)  # no AttributeError


def test_a_said_wait_never_replaces_the_upstreams_own_retry_after_nor_comes_without_a_429() -> None:
    own = error_from_status(429, _body("Please try again in 20s."), {"retry-after": "3"})
    assert dict(own.headers) == {"retry-after": "3"}
    # Spent limits that name no reset, resets of limits not spent, "in" phrases with no unit: nothing said.
    for headers, message in [({"x-ratelimit-remaining-tokens": "0"}, "slow"),
                             ({"x-ratelimit-remaining-tokens": "5", "x-ratelimit-reset-tokens": "3s"}, "slow"),
                             ({}, "Please try again in a while."), ({}, "try again in 5 minutes")]:
        assert error_from_status(429, _body(message), headers).headers == (), (headers, message)
    assert error_from_status(400, _body("Please try again in 2s."), None).headers == ()
    # A Responses stream's response.failed names no status: its code makes it a 429, and the message the wait.
    failed = error_from_object({"code": "rate_limit_exceeded", "message": "Rate limit reached. Please try again in 1.2s."})
    assert failed.status == 429 and retry_after(failed.headers, 0) == pytest.approx(1.2)


@pytest.mark.parametrize("value", ["3\r\nSet-Cookie: evil=1", "3\nX-Injected: 1", "3\rX: 1", "3\x00", "9" * 500])
def test_retry_after_with_control_chars_or_huge_is_never_copied(value: str) -> None:
    """S5: a header value with CR/LF from upstream must not split our response headers."""
    exc = error_from_status(429, _body("slow"), {"retry-after": value, "retry-after-ms": value})
    for name, copied in exc.headers:
        assert "\r" not in copied and "\n" not in copied and "\x00" not in copied
    assert exc.headers == ()


# --------------------------------------------------------------------------
# Error objects inside a 200 body or a stream (2.1, 4.2, case 47)


def test_case_47_error_object_in_200_body() -> None:
    chat = parse_chat_response({"error": {"code": 429, "message": "slow"}})
    assert chat.error is not None
    exc = error_from_object(chat.error)
    assert (exc.status, exc.error_type) == (429, "rate_limit_error")
    assert exc.message == "upstream 429: slow"


@pytest.mark.parametrize(
    "err, status, error_type",
    [
        ({"code": 402, "message": "Insufficient credits"}, 402, "billing_error"),
        ({"code": "503", "message": "No provider"}, 503, "overloaded_error"),
        ({"code": 400, "message": "bad"}, 400, "invalid_request_error"),
        ({"code": 599, "message": "x"}, 599, "api_error"),
        ({"code": 600, "message": "x"}, 502, "api_error"),
        ({"code": 399, "message": "x"}, 502, "api_error"),
        ({"code": 200, "message": "x"}, 502, "api_error"),
        # OpenAI's string codes mean in a Chat stream what they mean in the Responses API (probe C:
        # a Chat rate limit was "upstream 502", an api_error, where Responses' was a 429).
        ({"code": "rate_limit_exceeded", "message": "x"}, 429, "rate_limit_error"),
        # By the code alone: a type is a class. Groq's mid-stream tool_use_failed, an
        # invalid_request_error that another try usually gets past, stays a 502 (retried; a review).
        ({"message": "x", "type": "server_error", "code": None}, 502, "api_error"),
        ({"message": "x", "type": "invalid_request_error", "code": "tool_use_failed"}, 502, "api_error"),
        ({"message": "x", "type": "invalid_request_error", "code": "invalid_value"}, 400, "invalid_request_error"),
        ({"message": "x", "code": "insufficient_quota"}, 429, "rate_limit_error"),
        ({"message": "x", "code": "some_new_code"}, 502, "api_error"),
        ({"code": "4o4", "message": "x"}, 502, "api_error"),
        ({"code": True, "message": "x"}, 502, "api_error"),
        ({"code": None, "message": "x"}, 502, "api_error"),
        ({"code": 429.0, "message": "x"}, 502, "api_error"),
        ({"message": "no code at all"}, 502, "api_error"),
        ({"status": 401, "message": "who are you"}, 401, "authentication_error"),
    ],
)
def test_error_from_object_status(err: Dict[str, Any], status: int, error_type: str) -> None:
    exc = error_from_object(err)
    assert (exc.status, exc.error_type) == (status, error_type)


@pytest.mark.parametrize("err, message", [
    ({"code": 503, "message": "No provider"}, "upstream 503: No provider"),  # the upstream's own status
    ({"code": "rate_limit_exceeded", "message": "slow"}, "upstream error: slow"),
    ({"message": "model overloaded", "type": "server_error"}, "upstream error: model overloaded"),
])
def test_an_error_objects_message_names_no_status_nobody_sent(err: Dict[str, Any], message: str) -> None:
    """An error object in a 200 stream read "upstream 502: model overloaded": an operator looks for a
    gateway's failure where the upstream answered 200 (probe A)."""
    assert error_from_object(err).message == message


def test_error_from_object_keeps_the_message_and_redacts() -> None:
    exc = error_from_object({"code": 502, "message": f"provider said key {UPSTREAM_KEY} is bad"}, (UPSTREAM_KEY,))
    assert exc.message.startswith("upstream 502: provider said key ")
    assert UPSTREAM_KEY not in exc.message


# --------------------------------------------------------------------------
# Context overflow -> 400 "prompt is too long" (FIELD-NOTES 16)

OPENAI_CONTEXT = _body(
    "This model's maximum context length is 128000 tokens. However, your messages resulted in 130532 tokens. "
    "Please reduce the length of the messages.", type="invalid_request_error", param="messages",
    code="context_length_exceeded",
)
VLLM_CONTEXT = json.dumps({
    "object": "error", "type": "BadRequestError", "param": None, "code": 400,
    "message": "This model's maximum context length is 32768 tokens. However, you requested 41000 tokens "
               "(40000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion.",
}).encode("utf-8")
ANTHROPIC_CONTEXT = json.dumps({
    "type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"},
}).encode("utf-8")
LLAMACPP_CONTEXT = _body(
    "request (8012 tokens) exceeds the available context size (4096 tokens), try increasing it",
    code=400, type="exceed_context_size_error", n_prompt_tokens=8012, n_ctx=4096,
)
LLAMACPP_OLD_CONTEXT = _body("the request exceeds the available context size, try increasing it", code=400,
                             type="invalid_request_error")
COPILOT_CONTEXT = _body("prompt token count of 74490 exceeds the limit of 72000", code="model_max_prompt_tokens_exceeded")
CODE_ONLY_CONTEXT = _body("Invalid request.", code="context_length_exceeded")


@pytest.mark.parametrize(
    "status, body, fragment",
    [
        (400, OPENAI_CONTEXT, "maximum context length is 128000"),
        (400, VLLM_CONTEXT, "maximum context length is 32768"),
        (400, ANTHROPIC_CONTEXT, "210000 tokens > 200000 maximum"),
        (400, LLAMACPP_CONTEXT, "exceeds the available context size"),
        (400, LLAMACPP_OLD_CONTEXT, "exceeds the available context size"),
        (400, COPILOT_CONTEXT, "74490 exceeds the limit of 72000"),
        (400, CODE_ONLY_CONTEXT, "Invalid request."),
        (413, OPENAI_CONTEXT, "maximum context length"),
        (422, LLAMACPP_CONTEXT, "available context size"),
    ],
)
def test_context_overflow_becomes_prompt_is_too_long(status: int, body: bytes, fragment: str) -> None:
    exc = error_from_status(status, body)
    assert (exc.status, exc.error_type) == (400, "invalid_request_error")
    assert exc.message.startswith("prompt is too long: ")
    assert fragment in exc.message
    assert exc.message.count("prompt is too long") == 1


def test_context_overflow_keeps_upstream_message_for_the_retry() -> None:
    exc = error_from_status(400, VLLM_CONTEXT)
    assert isinstance(exc, UpstreamHTTPError)
    assert "40000 in the messages" in exc.upstream_message


@pytest.mark.parametrize(
    "status, body",
    [
        (400, _body("Invalid value for 'temperature': must be between 0 and 2")),
        (400, _body("max_tokens is too large: 32000. This model supports at most 16384 completion tokens, whereas you provided 32000.")),
        # vLLM's max_tokens refusal names the context, but the prompt itself fits (500 < 32768).
        (400, _body("'max_tokens' or 'max_completion_tokens' is too large: 128000. This model's maximum context length "
                    "is 32768 tokens and your request has 500 input tokens (128000 > 32768 - 500).")),
        (429, _body("You exceeded the limit of 10 requests per minute; too many tokens per minute")),
        (500, _body("maximum context length exceeded in the router")),
        (404, _body("The model `gpt-x` does not exist")),
    ],
)
def test_other_errors_are_not_prompt_too_long(status: int, body: bytes) -> None:
    exc = error_from_status(status, body)
    assert not exc.message.startswith("prompt is too long")
    assert exc.status == status


# --------------------------------------------------------------------------
# max_tokens_limit: the cap a provider names when it refuses max_tokens


@pytest.mark.parametrize(
    "message, requested, expected",
    [
        ("max_tokens is too large: 32000. This model supports at most 16384 completion tokens, whereas you provided 32000.",
         32000, 16384),
        ("Invalid max_tokens value, the valid range of max_tokens is [1, 8192]", 32000, 8192),
        ("`max_tokens` must be less than or equal to `32768`, the maximum value for `max_tokens` is less than the "
         "`context_window` for this model", 64000, 32768),
        ("'max_tokens' or 'max_completion_tokens' is too large: 128000. This model's maximum context length is 32768 "
         "tokens and your request has 500 input tokens (128000 > 32768 - 500).", 128000, 32268),
        ("This model's maximum context length is 32768 tokens. However, you requested 33000 tokens (500 in the "
         "messages, 32500 in the completion). Please reduce the length of the messages or completion.", 32500, 32268),
        ("max_tokens: 64000 > 32000, which is the maximum allowed number of output tokens for claude-opus-4-1-20250805",
         64000, 32000),
        # OpenAI's range check, on the Responses API's field: the bound, not the number asked for.
        ("Invalid 'max_output_tokens': integer above maximum value. Expected a value <= 32768, but got 128000 instead.",
         128000, 32768),
        ("Invalid 'max_tokens': integer above maximum value. Expected a value <= 4096, but got 8192 instead.",
         8192, 4096),
        # Moonshot counts max_tokens into the window: a 13,942-token prompt with Claude Code's 128000.
        ("Invalid request: Your request exceeded model token limit: 131072 (requested: 141942)", 128000, 117130),
        # vLLM's renderer where it counted the whole prompt: the window less that prompt.
        ("This model's maximum context length is 24576 tokens. However, you requested 16000 output tokens and your "
         "prompt contains 10000 input tokens, for a total of 26000 tokens.", 16000, 14576),
    ],
)
def test_max_tokens_limit_reads_real_provider_messages(message: str, requested: int, expected: int) -> None:
    assert max_tokens_limit(message, requested) == expected


@pytest.mark.parametrize(
    "message, requested",
    [
        ("Invalid value for 'temperature': must be between 0 and 2", 32000),
        ("messages[3]: tool_call_id 12 not found", 32000),
        ("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.", 32000),
        # A prompt overflow, not a max_tokens problem: retrying with a smaller max_tokens cannot help.
        ("This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens. "
         "Please reduce the length of the messages.", 32000),
        ("'max_tokens' or 'max_completion_tokens' is too large: 4000. This model's maximum context length is 32768 "
         "tokens and your request has 40000 input tokens (4000 > 32768 - 40000).", 4000),
        # The named cap is not below what was asked: nothing to retry with.
        ("max_tokens is too large: 8000. This model supports at most 16384 completion tokens", 8000),
        # Moonshot's sum, where the prompt alone (300000 - 32768) is over the window: compacting helps.
        ("Invalid request: Your request exceeded model token limit: 262144 (requested: 300000)", 32768),
        # ... or leaves 12 tokens of the 32768 asked (262144 - (294900 - 32768)): no answer, compact.
        ("Invalid request: Your request exceeded model token limit: 262144 (requested: 294900)", 32768),
        # Below the minimum, not above a cap: learning 16 as the cap would shrink every answer.
        ("Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got 1 instead.", 128000),
        ("Invalid 'max_tokens': integer below minimum value. Expected a value >= 16, but got 1 instead.", 128000),
        ("", 32000),
        # The same renderer's exact count, over the window by itself.
        ("This model's maximum context length is 8192 tokens. However, you requested 64 output tokens and your "
         "prompt contains 10000 input tokens, for a total of 10064 tokens.", 64),
    ],
)
def test_max_tokens_limit_none_for_unrelated_errors(message: str, requested: int) -> None:
    assert max_tokens_limit(message, requested) is None


def _uncounted(window: int, output: int) -> str:
    return (f"This model's maximum context length is {window} tokens. However, you requested {output} output "
            f"tokens and your prompt contains at least {window - output + 1} input tokens, for a total of at least "
            f"{window + 1} tokens.")


@pytest.mark.parametrize("output, guess, expected", [
    (16000, 12000, 24576 - 12000 - 600),  # the room beside the estimate, less a twentieth of it
    (16000, 2000, 8000),  # an estimate the refusal proves low (the prompt is over 8,576): half
    (16000, 29000, 8000),  # an estimate that leaves no answer but may lean high: half
    (16000, 31000, None),  # over the window by more than an estimate leans high: the prompt is too long
    (16000, None, 8000),
    (24576, 12000, 24576 - 12000 - 600),  # the asked budget alone filled the window
    (1500, None, None),  # half would be under 1,024 tokens of answer: the prompt does not fit
    (0, 100, None),  # "requested 0 output tokens": the prompt alone is over the window
])
def test_max_tokens_limit_beside_a_prompt_the_upstream_did_not_count(output: int, guess: Optional[int],
                                                                     expected: Optional[int]) -> None:
    """vLLM 0.18 on counts a prompt only until it knows the request cannot fit (probe AH 1)."""
    from claudeproxy.errors import lasting_cap

    message = _uncounted(24576, output)
    assert max_tokens_limit(message, max(output, 1), guess) == expected
    if expected is not None:  # a room this prompt leaves is not the model's cap (the window is learned)
        assert lasting_cap(message, expected) is None


# --------------------------------------------------------------------------
# Shapes (4.1, 4.3, case 71)


def test_error_payload_shape() -> None:
    assert error_payload("rate_limit_error", "slow", "req_0123456789abcdefABCDEFGH") == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow"},
        "request_id": "req_0123456789abcdefABCDEFGH",
    }
    assert error_payload("api_error", "x") == {"type": "error", "error": {"type": "api_error", "message": "x"}}


def test_stream_error_event_shape() -> None:
    assert stream_error_event("overloaded_error", "busy") == {
        "type": "error", "error": {"type": "overloaded_error", "message": "busy"},
    }


@pytest.mark.parametrize(
    "exc, status, error_type",
    [
        (UpstreamUnavailable("connection refused"), 502, "api_error"),
        (UpstreamTimeout("no response headers"), 504, "timeout_error"),
        (InvalidRequest("field required", path="messages.0.role"), 400, "invalid_request_error"),
        (ProxyError("x", status=429), 429, "rate_limit_error"),
        (ProxyError("x", status=529), 529, "overloaded_error"),
        (ProxyError("x", status=400, error_type="request_too_large"), 400, "request_too_large"),
    ],
)
def test_proxy_error_classes(exc: ProxyError, status: int, error_type: str) -> None:
    """Case 70: connection refused -> 502 api_error, header timeout -> 504 timeout_error."""
    assert (exc.status, exc.error_type) == (status, error_type)


def test_invalid_request_message_starts_with_path() -> None:
    assert InvalidRequest("field required", path="messages.0.role").message == "messages.0.role: field required"


def test_ids_are_alphanumeric_of_the_length_asked_and_do_not_repeat() -> None:
    from claudeproxy.ids import new_id, new_request_id

    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 24 and i.isascii() and i.isalnum() for i in ids)
    assert len(set("".join(ids))) == 62  # every character of the alphabet turns up
    assert len(new_id(40)) == 40
    request_id = new_request_id()
    assert request_id.startswith("req_") and len(request_id) == 28


@pytest.mark.parametrize("kind, code, shown_type, details", [
    ("billing_error", "credit_exhausted", "billing_error", {"error_code": "credit_exhausted"}),
    ([1], "thread_not_found", "invalid_request_error", {"error_code": "thread_not_found"}),  # no type: the status's
    ({"a": 1}, [1, 2], "invalid_request_error", None),  # an error_code that is no string: no details
    ("requests", None, "invalid_request_error", None),  # OpenAI's own types: the status's
])
def test_an_upstream_errors_own_type_and_details_are_kept_only_when_sane(kind: Any, code: Any, shown_type: str,
                                                                         details: Any) -> None:
    """A fuzzed upstream stream with a list as error.type raised TypeError (unhashable) when the
    type began to be kept; an error_code that is no string would break the SDKs' class lookup."""
    err: Dict[str, Any] = {"type": kind, "message": "m"}
    if code is not None:
        err["details"] = {"error_code": code}
    exc = error_from_status(400, json.dumps({"error": err}).encode())
    assert (exc.status, exc.error_type, exc.details) == (400, shown_type, details)


@pytest.mark.parametrize("status, kind, shown", [
    (500, "authentication_error", "api_error"),  # a type of the other class: the status's (a probe's /v1/models)
    (429, "overloaded_error", "rate_limit_error"),
    (500, "overloaded_error", "overloaded_error"),  # of its own class it says more than the status
    (400, "billing_error", "billing_error"),
    (408, "timeout_error", "timeout_error"),
])
def test_an_upstream_errors_own_type_is_kept_only_with_a_status_of_its_class(status: int, kind: str,
                                                                             shown: str) -> None:
    exc = error_from_status(status, json.dumps({"error": {"type": kind, "message": "m"}}).encode())
    assert (exc.status, exc.error_type) == (status, shown)


def test_an_error_body_with_a_utf8_bom_is_read_as_its_json() -> None:
    # json.loads refuses a text that begins with U+FEFF: the message was the raw body.
    body = b"\xef\xbb\xbf" + json.dumps({"error": {"message": "model overloaded"}}).encode()
    exc = error_from_status(503, body)
    assert exc.message == "upstream 503: model overloaded", exc.message


def test_an_error_status_whose_body_is_an_event_stream_gives_the_events_message() -> None:
    """A 529 answered as text/event-stream with an error event: the client's message was the raw
    'event: error\\ndata: {...}' text (probe D); the type and status were right already."""
    body = (b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
            b'"message":"Overloaded sse"}}\n\n')
    exc = error_from_status(529, body)
    assert exc.status == 529 and exc.error_type == "overloaded_error"
    assert exc.message == "upstream 529: Overloaded sse"
    for variant in (b': keep-alive\nid: 7\n' + body,  # a comment and an id before it
                    b'event: error\ndata: {"type":"error",\ndata: "error":{"type":"overloaded_error",'
                    b'"message":"Overloaded sse"}}\n\n',  # its JSON over two data lines
                    b'data: [{"error": {"code": 529, "message": "Overloaded sse", "status": "UNAVAILABLE"}}]\n\n'):
        assert error_from_status(529, variant).message == "upstream 529: Overloaded sse", variant
    plain = error_from_status(500, b"event: nothing useful\n")
    assert plain.message == "upstream 500: event: nothing useful"  # no JSON in it: the text as it came
