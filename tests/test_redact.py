"""Secrets never reach logs or error bodies (RELIABILITY.md section 2 secrets rows, section 5 item 4)."""

from __future__ import annotations

import pytest
from conftest import CLIENT_KEY, UPSTREAM_KEY

from claudeproxy.redact import MASK, is_secret_header, redact_headers, redact_text, redact_url

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
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNz"),
    ],
)
def test_redact_text_masks_key_shapes(text: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out
    assert MASK in out


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


# --------------------------------------------------------------------------
# redact_url


def test_redact_url_userinfo_and_query() -> None:
    url = f"https://user:pw@generativelanguage.googleapis.com/v1beta/openai/chat?key={GEMINI_KEY}&alt=sse"
    out = redact_url(url)
    assert GEMINI_KEY not in out and "pw" not in out.split("@")[0].replace(MASK, "")
    assert out.startswith(f"https://{MASK}@generativelanguage.googleapis.com/v1beta/openai/chat?")
    assert "alt=sse" in out and f"key={MASK}" in out


@pytest.mark.parametrize("name", ["key", "api_key", "apikey", "token", "access_token", "api-key", "sig", "KEY"])
def test_redact_url_secret_query_names(name: str) -> None:
    out = redact_url(f"https://h/p?{name}=VALUE123&keep=yes")
    assert "VALUE123" not in out and "keep=yes" in out


def test_redact_url_harmless_url_unchanged() -> None:
    url = "https://api.openai.com/v1/chat/completions"
    assert redact_url(url) == url
    azure = "https://r.openai.azure.com/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"
    assert redact_url(azure) == azure


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
     "set-cookie", "x-goog-api-key", "X-Auth-Token", "client-secret", "x-amz-security-token"],
)
def test_secret_header_names(name: str) -> None:
    assert is_secret_header(name)


@pytest.mark.parametrize("name", ["content-type", "accept", "user-agent", "anthropic-version", "anthropic-beta",
                                  "request-id", "retry-after", "keep-alive", "host", "content-length"])
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
