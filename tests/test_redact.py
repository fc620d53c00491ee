"""Secrets never reach logs or error bodies (RELIABILITY.md section 2 secrets rows, section 5 item 4)."""

from __future__ import annotations

import random
import time

import pytest
from conftest import CLIENT_KEY, UPSTREAM_KEY

from claudeproxy import redact
from claudeproxy.redact import (
    MASK,
    header_secrets,
    is_secret_header,
    redact_headers,
    redact_text,
    redact_url,
    url_secrets,
    with_halves,
)

GEMINI_KEY = "AIzaSyD-FAKE-0123456789abcdefghijklmnop"


# --------------------------------------------------------------------------
# redact_text


@pytest.mark.parametrize(
    "text, secret",
    [
        (f"Incorrect API key provided: {UPSTREAM_KEY}.", UPSTREAM_KEY),
        (f"x-api-key={CLIENT_KEY}", CLIENT_KEY),
        ("key sk-proj-AbCdEf0123456789_-xyz in the log", "sk-proj-AbCdEf0123456789_-xyz"),
        ("stripe style sk_live_0123456789abcdef", "sk_live_0123456789abcdef"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig-part", "eyJhbGciOiJIUzI1NiJ9.e30.sig-part"),
        ("authorization: bearer ya29.a0AfH6SMB-token", "ya29.a0AfH6SMB-token"),
        ("{'Authorization': 'Bearer tok_123456'}", "tok_123456"),
        ("proxy http://alice:s3cr3t-pw@proxy.corp:3128 refused", "s3cr3t-pw"),
        ("GET https://generativelanguage.googleapis.com/v1beta/models?key=" + GEMINI_KEY, GEMINI_KEY),
        ("url https://h/x?alt=json&api_key=abcdef123&z=1", "abcdef123"),
        ("url https://h/x?token=tkn-987654&z=1", "tkn-987654"),
        ("url https://h/x?access_token=at-55555", "at-55555"),
        ("url https://h/x?API_KEY=UPPER-99999", "UPPER-99999"),
        # OpenAI's 401 echoes a half-masked key; its visible tail is still part of the key.
        ("Incorrect API key provided: sk-proj-********************************************9xQz. You can find",
         "sk-proj-****"),
        ("Incorrect API key provided: sk-abc12***************************************xyz9.", "xyz9"),
        # Keys of other vendors, by their documented prefixes.
        ("Invalid API Key: gsk_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "gsk_AbCdEfGh"),
        ("bad key xai-AbCdEfGhIjKlMnOpQrStUvWx0123 given", "xai-AbCdEfGh"),
        ("API key not valid: AIzaSyA-abcdefghijklmnopqrstuvwxyz12345", "AIzaSyA-abcd"),
        ("token hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345 expired", "hf_AbCdEfGh"),
        ("nvapi-AbCdEfGhIjKlMnOpQrStUvWxYz-0123456789 rejected", "nvapi-AbCdEf"),
        ("github token ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "ghp_AbCdEfGh"),
        ("id token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXBhcnQ", "eyJzdWIiOiIx"),
        # Any key-looking value after a name that says it is a key (Azure's 32 hex digits, a custom key).
        ("Incorrect API key provided: 3f9c0a1b2c3d4e5f60718293a4b5c6d7.", "3f9c0a1b2c3d"),
        ('{"api_key": "custom-0042-secret"}', "custom-0042"),
        ("x-api-key: ABCDEFGH12345678", "ABCDEFGH1234"),
        # An MCP server's credential in a logged request body (mcp_servers[].authorization_token).
        ('"authorization_token": "mcp-tok-7f3a9b2c"', "mcp-tok-7f3a"),
        ('"authorization_token": "abc.def12345.ghi"', "def12345"),  # a JWT-like value, dots and all
        ('{"refresh_token":"rt_0011223344"}', "rt_00112233"),
        ('"password": "hunter2hunter2"', "hunter2hunt"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNz"),
        # After "_": an upstream's request id, a name in an error message (a word boundary missed
        # both: probe B).
        ("upstream_id=req_sk-proj-OTHERKEYabcdefghijklmnop", "OTHERKEYabcd"),
        ("project_sk-proj-OTHERKEYabcdefghijklmnop is disabled", "OTHERKEYabcd"),
        ("gateway_xai-AbCdEfGhIjKlMnOpQrStUvWx rejected", "AbCdEfGhIjKl"),
    ],
)
def test_redact_text_masks_key_shapes(text: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out
    assert MASK in out


@pytest.mark.parametrize("text", ["load_hf_tokenizer_config(path)", "use_sk_learn_pipeline_v2", "my_fw_update_script_now",
                                  "check_rk_partition_keys_all"])
def test_an_identifier_with_a_key_prefix_inside_is_no_key(text: str) -> None:
    """An underscore shape after "_" is part of an identifier far more often than a key: masked, it
    shredded tool names and code in logs and error messages (a review)."""
    assert redact_text(text) == text


def test_redact_text_keeps_the_surrounding_text() -> None:
    out = redact_text(f"upstream 401: Incorrect API key provided: {UPSTREAM_KEY}. See docs.")
    assert out == f"upstream 401: Incorrect API key provided: {MASK}. See docs."
    assert redact_text("proxy http://alice:pw@proxy.corp:3128/x") == f"proxy http://{MASK}@proxy.corp:3128/x"
    assert redact_text("https://h/v1?key=abc&alt=json") == f"https://h/v1?key={MASK}&alt=json"


def test_redact_text_explicit_secrets() -> None:
    secrets = ("plain-secret-value", "a.b*c+(d)")
    out = redact_text("first plain-secret-value then a.b*c+(d) and plain-secret-value again", secrets)
    assert "plain-secret-value" not in out and "a.b*c+(d)" not in out
    assert out == f"first {MASK} then {MASK} and {MASK} again"


def test_redact_text_overlapping_secrets_leave_no_tail() -> None:
    """A short secret that is a prefix of a longer one must not leave the longer one's tail behind."""
    out = redact_text("token=abcd1234wxyz", ("abcd", "abcd1234wxyz"))
    assert "1234wxyz" not in out and "wxyz" not in out


def test_redact_text_masks_a_secret_written_json_escaped() -> None:
    """Upstreams that escape "/" echo the key "Ab/cd..." as "Ab\\/cd...": in a raw stream line at debug,
    or in an error body that is not JSON (so nothing decodes it), that form is masked too."""
    key = "Ab/cd+efSECRET99/xyz"
    out = redact_text('{"error":{"message":"bad key Ab\\/cd+efSECRET99\\/xyz"', (key,))
    assert "SECRET99" not in out and out == '{"error":{"message":"bad key ***"'
    assert redact_text(f"bad key {key}", (key,)) == "bad key ***"


@pytest.mark.parametrize("shape", ["upper", "lower", "base64", "base64-in-basic-pair", "urlsafe-shifted"])
def test_redact_text_masks_a_secret_an_upstream_echoes_recased_or_base64_encoded(shape: str) -> None:
    """A gateway that upper-cases what it quotes, or quotes a header as sent (base64, the key inside
    "user:key" with no "Basic" before it), gave the key back to the client unmasked (a probe)."""
    import base64
    key = "gw-Key0123456789abcdEF"  # no known key shape: only the configured value finds it
    echoed = {"upper": key.upper(), "lower": key.lower(),
              "base64": base64.b64encode(key.encode()).decode(),
              "base64-in-basic-pair": base64.b64encode(b"user:" + key.encode()).decode(),
              "urlsafe-shifted": base64.urlsafe_b64encode(b"ab:" + key.encode() + b"\xff\xfe").decode()}[shape]
    out = redact_text(f"401 from gateway: credential {echoed} rejected", (key,))
    assert MASK in out and out.startswith("401 from gateway: credential ") and out.endswith(" rejected")
    # What is left around the mask is at most the few characters that also encode the bytes around it.
    assert len(out) - len("401 from gateway: credential  rejected") - len(MASK) <= 8, out
    for probe in (key, key.upper(), key.lower(), base64.b64encode(key.encode()).decode()[:16]):
        assert probe not in out


@pytest.mark.parametrize("quoted, shown", [("PROBEKEY9", MASK), ("PROBEKEY9f", MASK + "f"),
                                           ("f3a7c2e1d", MASK), ("9f3a7c2e1d", "9" + MASK)])
def test_half_of_a_key_an_upstream_quotes_is_masked(quoted: str, shown: str) -> None:
    """A gateway quoting the first or the last half of the key it got gave the client and the log
    half of a key with no vendor shape (probe E F3); a few characters of it, as vendors quote, stay."""
    key = "PROBEKEY9f3a7c2e1d"
    out = redact_text(f"upstream 400: Invalid key {quoted}, check it", with_halves((key,)))
    assert out == f"upstream 400: Invalid key {shown}, check it"
    assert redact_text("Invalid key PROBEKEY..., check it", with_halves((key,))) == "Invalid key PROBEKEY..., check it"
    assert with_halves(("short-key-12345",)) == ("short-key-12345",)  # 15 characters: no halves
    # Not of a key people choose (the clients' --auth-key, a header's value): its half is a word.
    assert redact_text("claudeproxy.pipeline", ("claudeproxy-team-2024",)) == "claudeproxy.pipeline"


def test_a_short_secret_is_masked_as_written_only() -> None:
    """A key under 8 characters is masked as written, not in its other cases or base64: those are
    a few letters ordinary text holds (vLLM's key "EMPTY" masked "empty" in every message)."""
    assert redact_text("array is empty; EMPTY key; YWJjZGVmZw== stays", ("EMPTY", "abcdefg")) == \
        "array is empty; *** key; YWJjZGVmZw== stays"


@pytest.mark.parametrize("text, secret", [
    ("url https://h/x?code=azfunc-0123456789", "azfunc-0123456789"),
    ("url https://h/x?auth=abcdef99&z=1", "abcdef99"),
    ("url https://h/x?client_secret=cs-00001111", "cs-00001111"),
    ("url https://h/x?a=1&password=hunter22", "hunter22"),
    ("url https://h/x?subscription-key=0f0f0f0f0f", "0f0f0f0f0f"),
])
def test_redact_text_masks_more_credential_query_values(text: str, secret: str) -> None:
    assert secret not in redact_text(text)


def test_redact_text_ignores_tiny_explicit_secrets() -> None:
    """A 1-3 character 'secret' would shred every message; such values are not treated as secrets."""
    assert redact_text("a b c", ("a", "", "bc")) == "a b c"


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 42; see https://example.com/docs?page=2&monkey=1&tokens=5",
        "disk-usage-report-2024 and task-1234567890 are fine",
        "sk-short",
        "keyboard shortcuts: ctrl+k",
        "Bearer",
        "email me at bob@example.com",
        "max_tokens is too large: 32000",
        '{"input_tokens": 123456789, "cache_read_input_tokens": 12345678}',
        "password reset required for this account",
        "Invalid API key: please check your configuration",
        "Basic information is missing",
        "the skill-based router and hf_transfer are options",
        "",
    ],
)
def test_redact_text_leaves_harmless_text_alone(text: str) -> None:
    assert redact_text(text) == text


def test_redact_text_is_idempotent() -> None:
    text = f"Bearer {UPSTREAM_KEY} https://u:p@h/?key=k1234 {CLIENT_KEY}"
    once = redact_text(text, (UPSTREAM_KEY,))
    assert redact_text(once, (UPSTREAM_KEY,)) == once


def _every_scan(text: str) -> str:
    """redact_text's scans run on every text, none skipped: what the skipping must equal."""
    for pattern, replace, _clues, _any_case in redact._SCANS:
        text = pattern.sub(replace, text)
    return text


# What the scans look for, in several cases ("\u212a", the Kelvin sign, and "\u017f", long s, match
# "k" and "s" under IGNORECASE but are not their lowercase), and harmless filler around it.
_PREFIXES = ("sk-", "sk_", "rk_", "gsk_", "csk-", "xai-", "hf_", "r8_", "pplx-", "nvapi-", "fw_", "tgp_v1_", "ghp_",
             "gho_", "ghu_", "ghs_", "github_pat_", "AIza", "aiza", "eyJ", "EYJ")
_NAMES = ("api_key", "API-KEY", "Api Key", "access token", "Refresh_Token", "auth-token", "bearer token",
          "client secret", "CLIENT_SECRET", "PASSWORD", "secret key", "api key provided", "api_\u212aey",
          "\u017fecret key", "pa\u017f\u017fword", "Bearer", "BEARER", "bearer\t", "Basic", "basic")
_SEPARATORS = ("=", ": ", " = '", ":", " ", "\t", "\": \"")
_VALUES = ("abcdefgh", "12345678", "A1b2C3d4e5F6g7H8", "ABCDEFabcdef.xyz", "****abcd", "dXNlcjpwYXNz",
           "Sy0123456789ABCDEFxyz", "hbGciOiJI.eyJzdWIiOiIx.c2lnbmF0dXJl")
_URLS = ("https://user:pw@host/p", "HTTP://a@b", "ftp://x:y@", "https://h/x?key=", "https://h/x?a=1&sig=",
         "?token=", "&code=", "?alt=json&api_key=", "http://h/#frag")
_FILLER = (" ", ".", "-", "_", "'", "\"", "é", "ü", "#", "@", "?", "&", "word", "The model", "in=259")


def _shaped(rng: random.Random) -> str:
    """One thing a scan looks for (or nearly: the parts are mixed freely), inside filler."""
    kind = rng.randrange(3)
    if kind == 0:
        core = rng.choice(_PREFIXES) + rng.choice(_VALUES) + rng.choice(("", rng.choice(_VALUES)))
    elif kind == 1:
        core = rng.choice(_NAMES) + rng.choice(_SEPARATORS) + rng.choice(_VALUES)
    else:
        core = rng.choice(_URLS) + rng.choice(_VALUES)
    around = [rng.choice(_FILLER) for _ in range(rng.randint(0, 4))]
    return "".join(around[: len(around) // 2]) + core + "".join(around[len(around) // 2:])


def test_redact_text_skips_only_scans_that_cannot_match() -> None:
    """A scan is skipped when the text holds none of what its matches contain; the answer must be
    what running every scan gives, on ASCII text and on text where IGNORECASE goes past ASCII."""
    rng = random.Random(20261204)
    checked = masked = 0
    for _ in range(10000):
        text = "".join(_shaped(rng) for _ in range(rng.randint(1, 2)))
        expected = _every_scan(text)
        assert redact_text(text) == expected, text
        checked += 1
        masked += expected != text
    assert masked > checked // 3  # the corpus reaches the scans, not only harmless text


@pytest.mark.parametrize("text", [
    "/v1/" + "a." * 32000 + "@",  # a refused request's path, logged before any key check (probe AI 1)
    "-eyJ" * 48000,  # a JWT's first segment that never ends in "." (16,000 took 1 s before: review AJ T1)
], ids=["refused-path", "jwt-start"])
def test_no_text_makes_a_scan_quadratic(text: str) -> None:
    """Each took seconds (11 s for the 64 KB path, holding the GIL: the whole proxy stalled; no
    thread's timeout can end a scan that holds it). Now each start's scan is bounded: milliseconds,
    and a bound a hundred times that still tells the two apart."""
    started = time.monotonic()
    assert redact_text(text) == text
    assert time.monotonic() - started < 2.0


def test_an_access_line_needs_no_scan() -> None:
    """The line logged for every call holds nothing a scan looks for; none runs, nothing changes."""
    line = ("req_lqb4rs4fJ5zFZX6JRAAelWMe /v1/messages claude-sonnet-4-5 -> upstream/claude-sonnet-4-5 200 "
            "in=259 out=64 cached=4864 cache_write=0 cost=- ttft=- 0ms")
    assert not any(any(clue in (line.lower() if any_case else line) for clue in clues)
                   for _pattern, _replace, clues, any_case in redact._SCANS)
    assert redact_text(line) == line


# --------------------------------------------------------------------------
# redact_url


def test_redact_url_userinfo_and_query() -> None:
    url = f"https://user:pw@generativelanguage.googleapis.com/v1beta/openai/chat?key={GEMINI_KEY}&alt=sse"
    out = redact_url(url)
    assert GEMINI_KEY not in out and "pw" not in out.split("@")[0].replace(MASK, "")
    assert out.startswith(f"https://{MASK}@generativelanguage.googleapis.com/v1beta/openai/chat?")
    assert "alt=sse" in out and f"key={MASK}" in out


@pytest.mark.parametrize("name", ["key", "api_key", "apikey", "token", "access_token", "api-key", "sig", "KEY",
                                  "auth", "signature", "secret", "client_secret", "password", "code",
                                  "subscription-key", "private_token", "sas", "sas-token", "X-Amz-Signature",
                                  "access_key", "passwd"])  # (GitLab's; Azure's SAS: probe T)
def test_redact_url_secret_query_names(name: str) -> None:
    out = redact_url(f"https://h/p?{name}=VALUE123&keep=yes")
    assert "VALUE123" not in out and "keep=yes" in out


def test_redact_url_harmless_url_unchanged() -> None:
    url = "https://api.openai.com/v1/chat/completions"
    assert redact_url(url) == url
    azure = "https://r.openai.azure.com/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"
    assert redact_url(azure) == azure


def test_url_secrets_are_the_credential_query_values_and_the_password() -> None:
    """What a configured upstream URL holds that an upstream may echo bare (Gemini's ?key=)."""
    url = "https://user:pass-word-1@h/v1?key=URLQSECRET77abc&alt=sse&api-version=2024-10-21&code=abc%2Fdef-123"
    assert set(url_secrets(url)) == {"URLQSECRET77abc", "pass-word-1", "abc%2Fdef-123", "abc/def-123"}
    assert url_secrets("https://api.openai.com/v1") == ()
    # A short value would mangle normal words in free text: masked only in the URL itself.
    assert url_secrets("https://h/v1?key=abc123") == ()
    assert url_secrets("http://[::1:bad/?key=URLQSECRET77abc") == ()


def test_redact_url_explicit_secret_in_path() -> None:
    out = redact_url("https://h/v1/keys/my-secret-path-key/chat", ("my-secret-path-key",))
    assert "my-secret-path-key" not in out


def test_redact_url_unparseable_still_redacted() -> None:
    out = redact_url(f"http://[::1:bad/?key={GEMINI_KEY}")
    assert GEMINI_KEY not in out


# --------------------------------------------------------------------------
# Headers


@pytest.mark.parametrize(
    "name",
    ["Authorization", "authorization", "Proxy-Authorization", "x-api-key", "X-Api-Key", "api-key", "Cookie",
     "set-cookie", "x-goog-api-key", "X-Auth-Token", "client-secret", "x-amz-security-token",
     # Gateways' and clouds' own names (a value without "Bearer" gives nothing away by its shape).
     "X-Auth", "cf-aig-authorization", "X-Password", "Ocp-Apim-Subscription-Key", "X-Session-Id",
     "X-Signature", "X-Credential", "X-Gateway-Pass", "X-Bearer"],  # (the last two: probe T)
)
def test_secret_header_names(name: str) -> None:
    assert is_secret_header(name)


@pytest.mark.parametrize("name", ["content-type", "accept", "user-agent", "anthropic-version", "anthropic-beta",
                                  "request-id", "retry-after", "keep-alive", "host", "content-length",
                                  "OpenAI-Beta", "HTTP-Referer", "X-Title", "OpenAI-Organization", "api-version"])
def test_harmless_header_names(name: str) -> None:
    assert not is_secret_header(name)


def test_redact_headers_pairs_and_mapping() -> None:
    pairs = [("Authorization", f"Bearer {UPSTREAM_KEY}"), ("Content-Type", "application/json"),
             ("x-api-key", CLIENT_KEY), ("Cookie", "session=abc")]
    out = redact_headers(pairs)
    assert out == [("Authorization", MASK), ("Content-Type", "application/json"), ("x-api-key", MASK), ("Cookie", MASK)]
    mapping = {"api-key": "azure-key-value", "Accept": "text/event-stream"}
    assert redact_headers(mapping) == [("api-key", MASK), ("Accept", "text/event-stream")]


def test_redact_headers_explicit_secret_in_other_header() -> None:
    """A configured secret that an upstream (or a misconfigured extra header) repeats is masked anywhere."""
    out = dict(redact_headers([("x-debug-echo", f"got {UPSTREAM_KEY[3:]}")], (UPSTREAM_KEY[3:],)))
    assert UPSTREAM_KEY[3:] not in out["x-debug-echo"]


def test_redact_headers_leaves_harmless_values() -> None:
    pairs = [("Content-Type", "application/json"), ("anthropic-version", "2023-06-01")]
    assert redact_headers(pairs) == pairs


def test_header_secrets_are_the_values_of_credential_headers() -> None:
    headers = [("X-Auth", "HdrSECRET12345"), ("Content-Type", "application/json"),
               ("cf-aig-authorization", "Bearer cf-token-98765"), ("X-Api-Key", "short"), ("X-Title", "my-app-title")]
    assert header_secrets(headers) == ("HdrSECRET12345", "Bearer cf-token-98765", "cf-token-98765")


def test_a_passthrough_event_is_masked_but_for_what_the_model_wrote() -> None:
    """README, Security: what a model writes passes as written (it may quote a key the user pasted);
    a field the upstream added around it does not."""
    from claudeproxy.apis.messages import _masked
    from claudeproxy.redact import free_text_forms

    key = "sk-test-passthrough-0123456789"
    forms = free_text_forms([key])
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f"use {key}"},
             "debug": key}
    assert _masked(delta, forms, "content_block_delta") == {**delta, "debug": "***"}
    answer = {"type": "message", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"k": key}}],
              "usage": {"input_tokens": 1, "note": key}}
    assert _masked(answer, forms, "message") == {**answer, "usage": {"input_tokens": 1, "note": "***"}}
    mcp = {"type": "message", "content": [{"type": "mcp_tool_use", "id": "m", "name": "f", "server_name": "s",
                                           "input": {"k": key}}], "note": key}
    assert _masked(mcp, forms, "message") == {**mcp, "note": "***"}  # an MCP call's input is the model's too


def test_a_key_spelled_with_json_escapes_is_masked_in_a_logged_line() -> None:
    """An upstream's line is logged as it came (--log-bodies): a key it echoes with \\u escapes of
    its letters (one is enough) was written to the log, where anyone reading it decodes it (probe E)."""
    key = "PROBEKEY9f3a7c2e1d"
    one = "PROBE\\u004bEY9f3a7c2e1d"
    every = "".join(f"\\u{ord(c):04x}" for c in key)
    for spelled in (one, every, every.upper().replace("\\U", "\\u")):
        line = 'data: {"error": {"message": "bad key %s", "quote": "\\u0022"}}' % spelled
        out = redact_text(line, [key])
        assert key not in out and "bad key ***" in out, out
        assert '\\u0022' in out  # an escaped quote stays escaped: the line is still the JSON it was
    plain = 'data: {"text": "caf\\u00e9 \\u0041"}'
    assert redact_text(plain, [key]) == plain  # no key: the line as it came


@pytest.mark.parametrize("text, shown", [
    ("(upstream 500: boom Bearer abcdef123456); retrying", "(upstream 500: boom Bearer ***); retrying"),
    ("[Bearer abcdef123456] and {Bearer zyxwvu987654} <Bearer qwerty555555>",
     "[Bearer ***] and {Bearer ***} <Bearer ***>"),
])
def test_a_bearer_token_is_masked_without_the_bracket_after_it(text: str, shown: str) -> None:
    """probe I: the mask took the ')' after the token too, and left log lines unbalanced."""
    assert redact_text(text) == shown
