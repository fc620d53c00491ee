"""The proxy's error tree and the Anthropic error shapes built from it.

No I/O. Only ``handler.py`` turns these into HTTP responses; everything else
raises them. Status -> type follows PROTOCOL.md section 4.2 so the SDKs pick
the right exception class and retry policy.
"""

from __future__ import annotations

import codecs
import http.client
import json
import re
import time
from email.utils import parsedate_to_datetime
from typing import Any, Dict, List, Optional, Tuple

from .overflow import headroom, prompt_too_long, read_sizes, says_prompt_too_long
from .redact import redact_text

# Anthropic's error types by client status (PROTOCOL.md 4.2).
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# An upstream error's own type is kept when it is one of Anthropic's that says more than the status
# (an Anthropic-compatible upstream's billing_error on a 400). Not the generic two: OpenAI calls a
# refused key (401) an invalid_request_error, which the status's authentication_error says better.
_ANTHROPIC_TYPES = frozenset(_TYPE_BY_STATUS.values()) - {"invalid_request_error", "api_error"}
# The status classes (4 or 5) each type is said with: a type is kept only with a status of its own
# class, where it says more; an upstream's 500 calling itself an authentication_error is an api_error.
_TYPE_CLASSES = {kind: {s // 100 for s, k in _TYPE_BY_STATUS.items() if k == kind} for kind in _ANTHROPIC_TYPES}
_MOST_DETAILS = 4096  # an upstream's error.details passed on, as JSON, at most this long


def error_type_for_status(status: int) -> str:
    """The Anthropic ``error.type`` for a client-facing HTTP status."""
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    if 400 <= status < 500:
        return "invalid_request_error"
    return "api_error"


class ProxyError(Exception):
    """An error answered to the client as ``{"type":"error","error":{...}}``."""

    status = 500
    error_type = "api_error"
    # For an upstream error event: the events its stream gave before it in the same read,
    # which still go out before the error does (``SSEFold.feed_line``).
    events_before: Tuple[Dict[str, Any], ...] = ()
    # Said by the proxy in place of an upstream it never asked (a prompt over the context Ollama cuts
    # to): no upstream attempt failed (``Proxy._failed``).
    local = False

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        error_type: Optional[str] = None,
        headers: Tuple[Tuple[str, str], ...] = (),
        details: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details  # the body's error.details: a machine-readable error_code for the SDKs
        if status is not None:
            self.status = status
            if error_type is None:
                self.error_type = error_type_for_status(status)
        if error_type is not None:
            self.error_type = error_type
        self.headers = headers

    def mask(self, secrets: Tuple[str, ...]) -> None:
        """Mask ``secrets`` in all the client and the log get of it: an upstream's values quoted in
        the message (a header, a field, a body) and its header values, whichever step quoted them."""
        self.message = redact_text(self.message, secrets)
        self.args = (self.message,)
        self.headers = tuple((name, redact_text(value, secrets)) for name, value in self.headers)


class InvalidRequest(ProxyError):
    """The client sent something we cannot accept; ``path`` names the field."""

    status = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, path: str = "", **kw: object) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message, **kw)  # type: ignore[arg-type]


def thread_unsupported() -> InvalidRequest:
    """The refusal of a message thread (``"thread"``, the message-threads beta): the upstream would
    get only the turn's new messages, the rest of the conversation being kept by Anthropic. This
    error_code is the one the SDKs' tool runners recover from, sending the whole conversation
    without ``thread``; a 200 instead would lose the history without a word."""
    return InvalidRequest("message threads are not kept by this upstream: send the whole conversation, "
                          "without thread", "thread",
                          details={"error_code": "thread_unsupported_request", "unsupported": []})


class UpstreamHTTPError(ProxyError):
    """The upstream answered with an error status or an error object."""

    # The upstream's own message, before mapping (for the max_tokens retry).
    upstream_message = ""
    # The upstream's response headers (an API may pass some on: ``MessagesApi.relayed_headers``).
    upstream_headers: Any = None
    # The status the upstream's answer gave (its HTTP status, or an error object's numeric code);
    # False where the status is this proxy's reading of an error object (its string code, or none).
    status_said = True
    # The key the upstream refused was the proxy's own, not a client's it forwarded (pipeline._send):
    # a route's fallbacks may take the call then.
    own_key = False


class UpstreamUnavailable(ProxyError):
    """The upstream could not be reached or broke off (connect, reset, timeout)."""

    status = 502
    error_type = "api_error"


class UpstreamUnreachable(UpstreamUnavailable):
    """Nothing took the connection: refused (no server listens), or a name that does not resolve.

    The client is told not to retry (x-should-retry: false): Claude Code retried such 502s for
    minutes, and ``claude -p`` hung until killed, against a server that was not there. The proxy's
    own --retries still run (``says_no_retry``): seconds apart, they see a restarting server back.
    """


class UpstreamTimeout(UpstreamUnavailable):
    status = 504
    error_type = "timeout_error"


class UpstreamNotJson(UpstreamUnavailable):
    """A whole answer that is not JSON (a gateway's HTML page): the same on every retry."""


class ClientGone(Exception):
    """The client closed its connection; nothing more can be written."""


# What each retry header may say (RFC 9110 10.2.3: seconds or an HTTP date; the SDKs' milliseconds
# and true/false): only such a value is passed on. A check for safe characters alone passed an upstream
# echoing the key it was sent back in Retry-After, since keys are made of such characters.
_RETRY_VALUES = {
    "retry-after": re.compile(r"\d{1,10}(?:\.\d{1,6})?|(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d "
                              r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT"),
    "retry-after-ms": re.compile(r"\d{1,12}(?:\.\d{1,6})?"),
    "x-should-retry": re.compile(r"true|false", re.IGNORECASE),
}


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _unwrap(obj: Any) -> Any:
    """The error body itself. Gemini wraps it in a one-element list; gateways relaying
    an upstream's error (Ollama over llama.cpp, Gemini CLI's proxy) put its whole JSON
    body, as a string, in ``error`` or ``error.message``."""
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        obj = obj[0]
    for _ in range(2):  # a relay of a relay at most
        err = obj.get("error") if isinstance(obj, dict) else None
        nested = err.get("message") if isinstance(err, dict) else err
        inner = _loads(nested) if isinstance(nested, str) and nested.lstrip().startswith("{") else None
        if not (isinstance(inner, dict) and "error" in inner):
            break
        obj = inner
    return obj


def _parse_body(body: bytes, headers: Any = None) -> Tuple[str, Any]:
    """(body text, its JSON value or None). An error status whose body is an event stream (an
    ``event: error`` and its data, as some servers send a stream request's refusal) is read by its
    first data line that is JSON: the raw event was the client's message."""
    text = body_text(body, headers).strip()
    obj = _loads(text)
    if obj is None and text.startswith(("event:", "data:", ":", "id:", "retry:")):
        data = _first_event_data(text)
        obj = _loads(data) if data.startswith(("{", "[")) else None
        text = data if obj is not None else text
    return text, _unwrap(obj)


def _first_event_data(text: str) -> str:
    """The data of the first event in an event stream that has any (its data lines joined)."""
    lines: List[str] = []
    for line in text.splitlines():
        if not line.strip() and lines:
            break
        if line.startswith("data:"):
            lines.append(line[5:][1:] if line[5:6] == " " else line[5:])
    return "\n".join(lines).strip()


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_CHARSET_RE = re.compile(r";\s*charset=\"?([A-Za-z0-9._:-]{1,40})", re.IGNORECASE)


def body_text(body: bytes, headers: Any = None) -> str:
    """An upstream's body as text: UTF-8 when it is that (what APIs send, whatever a label says),
    else by its byte-order mark or declared charset. A body in UTF-16 read as UTF-8 is every
    character with a NUL beside it, which no masking recognises: an error message quoting the key
    would reach the client readable."""
    try:
        text = body.decode("utf-8-sig")  # (a BOM before JSON is no JSON to json.loads)
        if "\x00" not in text:
            return text
    except UnicodeDecodeError:
        pass
    encoding = next((name for bom, name in _BOMS if body.startswith(bom)), None)
    if encoding is None and headers is not None:
        found = _CHARSET_RE.search(headers.get("Content-Type") or "")
        encoding = found.group(1) if found else None
    try:
        return body.decode(encoding or "utf-8", errors="replace")
    except (LookupError, UnicodeError):  # a charset Python does not know, or one that refuses (undefined, idna)
        return body.decode("utf-8", errors="replace")


def is_json_answer(body: bytes) -> bool:
    """Does an error body read as an API's JSON (an object, or Gemini's list of one)? A proxy's or a
    gateway's own page (HTML, plain text, nothing) does not."""
    return isinstance(_parse_body(body)[1], dict)


def _error_dict(obj: Any) -> Dict[str, Any]:
    """The object holding ``code``/``type`` (and llama.cpp's ``n_prompt_tokens``/``n_ctx``)."""
    err = obj.get("error") if isinstance(obj, dict) else None
    return err if isinstance(err, dict) else obj if isinstance(obj, dict) else {}


def _error_message(text: str, obj: Any, secrets: Tuple[str, ...]) -> str:
    """The upstream's own message (``_own_message``), else the body's text. Masked first, then cut:
    a key the cut went through would no longer be a secret masking knows, and its first half would go out."""
    own = _own_message(obj)
    return redact_text(own, secrets)[:2000] if own else redact_text(text, secrets)[:500]


def _own_message(obj: Any) -> Optional[str]:
    """``error.message``, a string ``error``, a top-level ``message`` (vLLM): the first not empty."""
    err = obj.get("error") if isinstance(obj, dict) else None
    for message in (err.get("message") if isinstance(err, dict) else None, err,
                    obj.get("message") if isinstance(obj, dict) else None):
        if isinstance(message, str) and message:
            return message
    return None


def retry_headers(headers: Any) -> Tuple[Tuple[str, str], ...]:
    """The upstream's word on retrying, passed on: when (retry-after) and whether (an Anthropic-
    compatible upstream's x-should-retry, which the SDKs obey over the status)."""
    out = []
    for name, form in _RETRY_VALUES.items():
        value = (headers.get(name) or "").strip() if headers is not None else ""
        if form.fullmatch(value):  # nor can a CR or LF reach our response this way (S5)
            out.append((name, value.lower() if name == "x-should-retry" else value))
    return tuple(out)


# OpenAI's and Groq's rate-limit headers say when each limit resets ("2.5s", "120ms", "6m0s",
# "1h2m3.5s"); their 429 usually has no Retry-After. The messages say it too: "Please try again in
# 2.5s." (OpenAI, Groq, the Responses API's response.failed), "Please retry in 25.37s." (Gemini).
_DURATION = r"(?:\d{1,9}(?:\.\d{1,9})?(?:ms|h|m|s))+"
_DURATION_PART = re.compile(r"(\d{1,9}(?:\.\d{1,9})?)(ms|h|m|s)")
_WAIT_IN_MESSAGE = re.compile(r"\b(?:try again|retry) in (" + _DURATION + r")\b", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_LIMITS = ("tokens", "requests")


def _duration(text: str) -> Optional[float]:
    """Seconds in a Go-style duration ("1m30.5s", "120ms"); None for anything else."""
    text = text.strip().lower()
    if not re.fullmatch(_DURATION, text):
        return None
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def _said_wait(headers: Any, message: str, err: Optional[Dict[str, Any]] = None) -> Optional[float]:
    """How long a 429 without Retry-After says to wait: the reset of the limit its headers show
    spent (``x-ratelimit-remaining-X: 0``, then ``x-ratelimit-reset-X``), else the message's
    "try again in 2.5s", else Google's ``google.rpc.RetryInfo`` among the error's ``details``
    (Gemini: ``"retryDelay": "17s"``). Not a reset of a limit that is not spent: Groq's requests
    limit is a day's, and its reset hours away while a minute's tokens are what ran out."""
    for limit in _LIMITS:
        remaining = headers.get(f"x-ratelimit-remaining-{limit}") if headers is not None else None
        if remaining is not None and remaining.strip() == "0":
            wait = _duration(headers.get(f"x-ratelimit-reset-{limit}") or "")
            if wait is not None:
                return wait
    found = _WAIT_IN_MESSAGE.search(message)
    return _duration(found.group(1)) if found else _retry_info(err or {})


def _retry_info(err: Dict[str, Any]) -> Optional[float]:
    """The wait a Google error's ``google.rpc.RetryInfo`` detail says (``"retryDelay": "17s"``), or None."""
    details = err.get("details")
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            return _duration(delay) if isinstance(delay, str) else None
    return None


def _wait_headers(seconds: float) -> Tuple[Tuple[str, str], ...]:
    """Retry-After as Anthropic sends it (whole seconds, rounded up: never earlier than asked), and
    retry-after-ms, which the SDKs read first, as asked."""
    return (("retry-after", str(max(1, -int(-seconds // 1)))), ("retry-after-ms", str(max(1, round(seconds * 1000)))))


def error_from_status(status: int, body: bytes, headers: Any = None, secrets: Tuple[str, ...] = (),
                      said: bool = True) -> ProxyError:
    """The client-facing error for an upstream error status and body (``said``: the upstream sent
    that status; not so for an error event in a 200 stream, whose type gave the status)."""
    text, obj = _parse_body(body, headers)
    message = _error_message(text, obj, secrets) or http.client.responses.get(status, "") or "(empty body)"
    if not 400 <= status <= 599:
        # 1xx/3xx (redirects are never followed) or garbage: the upstream is broken.
        return UpstreamUnavailable(f"upstream {status}: {message}"[:1000])
    if status == 407:
        # A proxy on the way to the upstream (not configured here: a transparent one) wants
        # credentials. Passed on as 407 it would tell the client that its own proxy does.
        return UpstreamUnavailable(f"upstream 407: a proxy on the way to the upstream asks for credentials: {message}"
                                   [:1000], headers=(NO_RETRY,))
    exc = _upstream_error(status, message, _error_dict(obj), headers, secrets, said)
    if status == _CAPACITY_EXCEEDED:
        exc.status, exc.error_type = 529, "overloaded_error"  # its words still name the 498 it sent
    return exc


# Groq's "498 Flex Tier Capacity Exceeded" (console.groq.com/docs/errors): no capacity now, to be
# tried again later. Passed on as a 498 invalid_request_error, it was a mistake no client retries.
# Read so from any upstream: no other API the proxy speaks to answers 498.
_CAPACITY_EXCEEDED = 498


# An exhausted quota comes as a 429 like a rate limit, but no wait gets past it (RESPONSES.md 4):
# the client is told not to retry, and the proxy tries the next target instead of the same again.
# OpenAI's codes; Moonshot's type (its 429 "You exceeded your current quota": forum.moonshot.ai/t/244);
# Zhipu's (Z.ai, bigmodel.cn) 429s "Insufficient balance" (1113), "coding plan expired" (1309) and
# "Weekly/Monthly Limit Exhausted" (1310, reset days away): docs.bigmodel.cn/cn/api/api-code.
_NO_RETRY_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_not_active",
                             "exceeded_current_quota_error", "1113", "1309", "1310"})
NO_RETRY = ("x-should-retry", "false")
# A server error that says how the server was started, which no retry changes: llama.cpp's 500 "tools
# param requires --jinja flag" to every request with tools (all of Claude Code's), and a chat
# template's own refusal (llama.cpp's 500 "Jinja Exception: ...", LM Studio's "Error rendering prompt
# with jinja template"): Claude Code retried the same prompt ten times over three minutes.
_SERVER_SETUP = re.compile(r"requires\s+--jinja|jinja\s+exception|rendering\s+(?:the\s+)?prompt\s+with\s+jinja", re.I)


# The longest Retry-After passed on as a wait. The SDKs used to honour one up to 60 s and back off
# on their own above it; the Python SDK 2.x now sleeps whatever it is told (an upstream's daily
# quota: "try again in 59m59s", one hour with the call hanging). A longer wait is said as no retry
# (x-should-retry: false, the header still telling when), and the proxy goes to a fallback at once.
LONGEST_RETRY_WAIT = 60.0


def _waits_long(headers: Tuple[Tuple[str, str], ...]) -> bool:
    wait = retry_after(headers, time.time())
    return wait is not None and wait > LONGEST_RETRY_WAIT


def _code(value: Any) -> Optional[str]:
    """An error's code or type as text (Zhipu's codes come as "1113" or 1113)."""
    if isinstance(value, str):
        return value
    return str(value) if type(value) is int else None


def says_no_retry(exc: ProxyError) -> bool:
    """The upstream's answer says another try of the same call cannot succeed (the proxy's own
    retries stop). An unreachable upstream's no is for the client alone: see UpstreamUnreachable."""
    return NO_RETRY in exc.headers and not isinstance(exc, UpstreamUnreachable)


_RAW_READ = 4000  # of a provider's own error body that OpenRouter relays: its message, not a megabyte


def _upstream_error(status: Optional[int], message: str, err: Dict[str, Any], headers: Any,
                    secrets: Tuple[str, ...] = (), said: bool = True) -> ProxyError:
    """``status`` is None for an error object that named no HTTP status; ``said``: the upstream gave
    it (not so for an error object's string code: the message then names no status nobody sent)."""
    if says_prompt_too_long(status, message, err):
        # Claude Code compacts the conversation when it reads this (FIELD-NOTES 16).
        exc = UpstreamHTTPError(prompt_too_long(status if said else None, message, err), status=400)
    else:
        shown = status or 502
        own = err.get("type")
        exc = UpstreamHTTPError(
            f"upstream {shown}: {message}" if said else f"upstream error: {message}", status=shown,
            error_type=own if isinstance(own, str) and shown // 100 in _TYPE_CLASSES.get(own, ()) else
            error_type_for_status(shown),
            headers=retry_headers(headers), details=_details(err, secrets),
        )
        if shown == 429 and retry_after(exc.headers, time.time()) is None:
            wait = _said_wait(headers, message, err)
            if wait is not None:  # the client's SDK backs off 0.5-8 s on its own, and runs out of tries
                exc.headers += _wait_headers(wait)
    # A refused key (401, 403) is refused again on every retry: Claude Code would retry ten times
    # over minutes and then ask for /login, which is not what is wrong.
    if status in (401, 403) or any(_code(v) in _NO_RETRY_CODES for v in (err.get("code"), err.get("type"))) \
            or _waits_long(exc.headers) or _SERVER_SETUP.search(message):
        exc.headers = tuple(h for h in exc.headers if h[0] != NO_RETRY[0]) + (NO_RETRY,)
    # OpenRouter's "Provider returned error" keeps the provider's own words in metadata.raw: the
    # refusal a retry can meet (a field refused, a max_tokens limit) is read there too.
    meta = err.get("metadata")
    raw = meta.get("raw") if isinstance(meta, dict) else None
    exc.upstream_message = f"{message}\n{raw[:_RAW_READ]}" if isinstance(raw, str) and raw.strip() else message
    exc.upstream_headers = headers
    exc.status_said = said
    return exc


def _details(err: Dict[str, Any], secrets: Tuple[str, ...]) -> Optional[Dict[str, Any]]:
    """An Anthropic-compatible upstream's ``error.details``, redacted, for the client: the SDKs pick
    an error's class by its ``error_code`` and recover from some (a message thread the upstream
    lost is replayed). None when there is none, or it is no small object."""
    details = err.get("details")
    if not isinstance(details, dict) or not details or not isinstance(details.get("error_code", ""), str):
        return None  # (an error_code that is no string would break the SDKs' lookup of its class)
    text = json.dumps(details)
    if len(text) > _MOST_DETAILS:
        return None
    masked = redact_text(text, secrets)
    try:
        return json.loads(masked) if masked != text else details
    except ValueError:
        return None


# OpenAI's error codes (strings, in both its APIs' error objects' ``code``; a Responses error
# without one is read by its ``type``, ``responses.response.error_for``) -> the HTTP status the
# same failure gets as a plain error.
_STATUS_BY_CODE = {
    "context_length_exceeded": 400,
    "invalid_prompt": 400,
    "invalid_encrypted_content": 400,
    "invalid_request_error": 400,
    "invalid_api_key": 401,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "server_error": 500,
    "overloaded": 503,
    "server_is_overloaded": 503,
}


def status_for_code(code: Any) -> Optional[int]:
    """The HTTP status an OpenAI error code stands for (``invalid_...``: 400); None for none known."""
    if not isinstance(code, str):
        return None
    return _STATUS_BY_CODE.get(code) or (400 if code.startswith("invalid_") else None)


def error_from_object(err: Dict[str, Any], secrets: Tuple[str, ...] = ()) -> ProxyError:
    """An error object inside a 200 body or a stream (OpenRouter puts the HTTP code in ``code``).

    Also what a Responses ``error`` event or ``response.failed`` carries
    (``{"code": "context_length_exceeded", "message": ...}``); a code that is
    no HTTP status is read as OpenAI's (``status_for_code``: a Chat stream's
    ``rate_limit_exceeded`` is a 429, as the Responses API's is), else the status
    is left to the message, else 502.
    """
    code = err.get("code", err.get("status"))
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else None
    said = status is not None
    if status is None:
        # By the code alone: a Chat error's "type" is a class (Groq's mid-stream tool_use_failed is
        # an invalid_request_error, which another try usually gets past: a 502, retried).
        status = status_for_code(code)
    obj = _unwrap({"error": err})
    text = json.dumps(obj)
    message = _error_message(text, obj, secrets) or "(empty error object)"
    return _upstream_error(status, message, _error_dict(obj), None, secrets, said)


_NUMBER_RE = re.compile(r"\d+")
# The Responses API's field is max_output_tokens; Gemini-style APIs say maxOutputTokens.
_MAX_TOKENS_RE = re.compile(r"max_(?:completion_|output_)?tokens|max(?:Output)?Tokens|max tokens|completion tokens"
                            r"|output tokens", re.IGNORECASE)
# OpenAI's range check names the bound itself: "Invalid 'max_output_tokens': integer above maximum
# value. Expected a value <= 32768, but got 128000 instead." The number after "<=" is the cap; the
# requested one (and any other) is not.
_UPPER_BOUND_RE = re.compile(r"(?:<=|\u2264|less than or equal to)\s*`?(\d+)", re.IGNORECASE)
# Its twin for a value below the minimum ("Expected a value >= 16, but got 1"): that names no cap.
_LOWER_BOUND_RE = re.compile(r">=|\u2265|greater than or equal to|below minimum|at least", re.IGNORECASE)


def max_tokens_limit(message: str, requested: int, prompt_guess: Optional[int] = None) -> Optional[int]:
    """The output limit an upstream names when it refuses ``max_tokens`` as too large.

    Examples it reads: "supports at most 16384 completion tokens" (OpenAI),
    "valid range of max_tokens is [1, 8192]" (DeepSeek), "must be less than
    or equal to `32768`" (Groq), "Expected a value <= 32768" (OpenAI's range check,
    ``max_output_tokens`` on the Responses API), "(128000 > 32768 - 500)" (vLLM), "(500 in
    the messages, 32500 in the completion)" (OpenAI), "(10535 of text input,
    131072 in the output)" (OpenRouter), "model token limit: 262144 (requested: 269030)" (Moonshot:
    the prompt and ``requested`` together), "you requested 32000 output tokens and your prompt
    contains at least 230145 input tokens" (vLLM: the room beside ``prompt_guess``, the proxy's own
    count of the prompt). None when the message is about
    something else (a prompt that does not fit, say) or names no smaller number.
    """
    room = headroom(message, requested, prompt_guess)
    if room is not None:
        return room if 0 < room < requested else None
    # Only a message about the output limit may lend its numbers: a prompt-overflow
    # message names token counts too, and learning one of those as a cap is wrong.
    if not _MAX_TOKENS_RE.search(message):
        return None
    bound = _UPPER_BOUND_RE.search(message)
    if bound is not None:
        cap = int(bound.group(1))
        return cap if 0 < cap < requested else None
    if _LOWER_BOUND_RE.search(message):
        return None  # too small, not too large: a smaller number would be refused too
    smaller = [int(n) for n in _NUMBER_RE.findall(message) if 1 < int(n) < requested]
    return max(smaller) if smaller else None


def lasting_cap(message: str, limit: int) -> Optional[int]:
    """The cap on a model's output that a refusal ``max_tokens_limit`` read ``limit`` in tells, to be
    remembered for the model: its output maximum, named. None where the limit is the room this
    prompt leaves (window minus a prompt, counted or estimated): that changes with every prompt, and
    remembered it cut every later answer of the model short (a session near its window once, then
    compacted, got a few hundred output tokens a turn from then on). The window is remembered then
    (``Proxy._window_room``), also where the asked output alone filled it: half of it, once learned
    as the cap, was refused again every turn whose prompt passed the other half."""
    return limit if read_sizes(message).limit is None else None


def error_payload(error_type: str, message: str, request_id: Optional[str] = None,
                  details: Optional[Dict[str, Any]] = None) -> Dict[str, object]:
    """The Anthropic error body; ``request_id`` repeats the response header."""
    error: Dict[str, object] = {"type": error_type, "message": message}
    if details:
        error["details"] = details
    body: Dict[str, object] = {"type": "error", "error": error}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def stream_error_event(error_type: str, message: str) -> Dict[str, object]:
    """The ``event: error`` payload ending a stream that has already begun."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


def retry_after(headers: Any, now: float) -> Optional[float]:
    """Seconds an upstream asked to wait (``retry-after-ms``, ``retry-after`` in seconds or an HTTP date).

    ``headers`` are (name, value) pairs; ``now`` is the wall clock, for dates. None when absent or unreadable.
    """
    values = {name.lower(): value for name, value in headers or ()}
    # Each header on its own: a garbled retry-after-ms must not hide a good Retry-After.
    for name, per_second in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = (values.get(name) or "").strip()
        if raw.replace(".", "", 1).isdigit():
            return float(raw) / per_second
    try:
        return max(0.0, parsedate_to_datetime(values["retry-after"]).timestamp() - now)
    except (KeyError, TypeError, ValueError, IndexError, OverflowError):
        return None
