"""Removes secrets from anything that may be logged or sent back to a client.

No I/O. Every log line that carries headers, URLs, bodies or exception text,
and every upstream-derived error message, goes through these functions.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Iterable, List, Mapping, Sequence, Tuple, Union
from urllib.parse import parse_qsl, quote, quote_plus, unquote_plus, urlencode, urlsplit, urlunsplit

MASK = "***"

# A header whose name says it carries a credential: Authorization and its gateway variants (X-Auth,
# cf-aig-authorization), *-Key and *-Token headers (X-Goog-Api-Key, Ocp-Apim-Subscription-Key), cookies,
# passwords, session ids and request signatures. Matched anywhere in the name: a false positive only
# hides a value in a log line or in --print-config.
_SECRET_HEADER_RE = re.compile(
    r"auth|token|key|secret|pass|pwd|bearer|cookie|credential|subscription|session|signature",
    re.IGNORECASE,
)
# Query parameters that carry a credential. Whole names, not parts of one: "monkey=1" or "tokens=5"
# in a documentation link are no secrets. "code" is Azure Functions' key, "sig" an Azure SAS signature.
_SECRET_QUERY = frozenset({
    "key", "api_key", "apikey", "api-key", "x-api-key", "subscription-key", "token", "access_token", "auth",
    "auth_token", "refresh_token", "id_token", "sig", "signature", "secret", "client_secret", "password", "code",
    "private_token", "private-token", "sas", "sas_token", "sas-token",  # GitLab's; a SAS token by its own name
    "access_key", "passwd", "x-amz-signature", "x-amz-security-token",  # and S3-style presigned URLs'
})
# A configured value (a header's, a query parameter's) shorter than this is masked where it appears
# by name (in a URL, in a header listing) but not in free text: "1" or "true" would shred messages.
MIN_FREE_TEXT_SECRET = 8
# Key-shaped strings, also the half-masked forms upstreams echo back ("sk-proj-****abcd" from OpenAI's
# 401): OpenAI/Anthropic/OpenRouter (sk-), Stripe-style (sk_, rk_), Groq (gsk_), xAI (xai-), Google
# (AIza), Hugging Face (hf_), Replicate (r8_), Perplexity (pplx-), NVIDIA (nvapi-), Cerebras (csk-),
# Fireworks (fw_), Together (tgp_v1_), GitHub tokens (GitHub Models), and JWTs (Azure AD, Vertex).
# A shape with a dash, or Google's and JWTs', begins where no letter or digit comes before it:
# "_" may ("req_sk-proj-..." as an upstream's request id, "project_sk-..." in an error message,
# which a word boundary let through). One with an underscore keeps the word boundary: after "_" it
# is a part of an identifier far more often ("load_hf_tokenizer_config", "use_sk_learn").
# A JWT's first segment may fail at its end (no "."): one begins only where no character of a segment
# comes before it, else "-eyJ" repeated cost a scan to the end from each (quadratic: a client's text).
_KEY_RE = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"sk-[A-Za-z0-9_\-*]{8,}"
    r"|(?:xai-|pplx-|nvapi-|csk-)[A-Za-z0-9_\-*]{12,}"
    r"|AIza[0-9A-Za-z_\-*]{20,}"
    r"|(?<![_\-])eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,})"
    r"|\b(?:sk_|rk_)[A-Za-z0-9_\-*]{8,}"
    r"|\b(?:gsk_|hf_|r8_|fw_|tgp_v1_|ghp_|gho_|ghu_|ghs_|github_pat_)[A-Za-z0-9_\-*]{12,}"
)
# A value right after a name that says it is a key ("Incorrect API key provided: 3f9c...", "api_key=...",
# "x-api-key: ..."), whatever its shape, when it looks like a token (a digit or a mask in it).
_NAMED_KEY_RE = re.compile(
    r"((?:api[ _-]?key|access[ _-]?token|auth[ _-]?token|authori[sz]ation[ _-]?token|refresh[ _-]?token"
    r"|bearer[ _-]?token|secret[ _-]?key|client[ _-]?secret|password)"
    r"(?:\s+provided)?[\"']?\s*[:=]\s*[\"']?)([A-Za-z0-9_\-*~+/=.]{8,})",
    re.IGNORECASE,
)
_BASIC_RE = re.compile(r"(\bBasic\s+)([A-Za-z0-9+/]{8,}={0,2})")
_BEARER_RE = re.compile(r"(Bearer\s+)[^\s\"',;)\]}>]+", re.IGNORECASE)  # a bracket after it is the text's
# A scheme is short (RFC 3986 sets no bound; "mongodb+srv" is 11): bounded, a scan from each word's
# start is too, where "a.a.a...@" (a refused request's path, before any key check) took seconds.
_USERINFO_RE = re.compile(r"(\b[a-z][a-z0-9+.\-]{0,31}://)[^/@\s]+@", re.IGNORECASE)
_QUERY_PAIR_RE = re.compile(r"([?&]([A-Za-z0-9_.\-]+)=)([^&\s\"'#]+)")
_MIN_SECRET_LEN = 4


class SecretForms(tuple):  # type: ignore[type-arg]
    """The written forms of some secrets (``secret_forms``), to pass to ``redact_text`` in their
    place where the same secrets mask many texts: a log filter's, every line."""


def secret_forms(secrets: Iterable[str]) -> SecretForms:
    # Longest first: a secret that is a prefix of another must not leave the other's tail.
    return SecretForms(sorted(set(_written_forms(secrets)), key=len, reverse=True))


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with known secrets (or their ``SecretForms``), key-shaped strings and URL credentials masked."""
    if "\x00" in text:
        # A body in UTF-16 read as bytes: every character with a NUL beside it, where no form matches.
        # A NUL says nothing in a message or a log line.
        text = text.replace("\x00", "")
    forms = secrets if isinstance(secrets, SecretForms) else secret_forms(secrets)
    if "\\u" in text:
        text = _unescaped_if_secret(text, forms)
    text = masked_forms(text, forms)
    every = not text.isascii()
    for pattern, replace, clues, any_case in _SCANS:
        seen = text.lower() if any_case else text
        if every or any(clue in seen for clue in clues):
            text = pattern.sub(replace, text)
    return text


# A JSON escape of a printable ASCII character but the quote and the backslash (which would end or
# change the string it sits in).
_ASCII_ESCAPE = re.compile(r"\\u00([2-7][0-9a-fA-F])")


def _unescaped_if_secret(text: str, forms: Sequence[str]) -> str:
    """``text`` with its JSON escapes of ASCII characters written out, when that shows a secret: an
    upstream's line logged as it came, its key spelled ``\\u0050\\u0052...`` (one escape is
    enough to hide it from a search of the raw text)."""
    def plain(match: "re.Match[str]") -> str:
        char = chr(int(match.group(1), 16))
        return match.group(0) if char in '"\\' else char

    view = _ASCII_ESCAPE.sub(plain, text)
    return view if view != text and any(form in view for form in forms) else text


def _written_forms(secrets: Iterable[str]) -> List[str]:
    """Each secret long enough to mask, and as an upstream may echo it: JSON-escaped (an encoder
    that escapes "/" echoes "Ab\\/cd" for the key "Ab/cd"), URL-encoded (a request line or query
    quoted back), in upper or lower case (a gateway that normalises what it quotes), and
    base64-encoded (a header quoted as it was sent, the key inside "user:key" of Basic credentials,
    with no "Basic" before it)."""
    forms = []
    for secret in secrets:
        if secret and len(secret) >= _MIN_SECRET_LEN:
            forms.append(secret)
            if "/" in secret:
                forms.append(secret.replace("/", "\\/"))
            forms += _url_forms(secret)
            if len(secret) >= MIN_FREE_TEXT_SECRET:  # (vLLM's key "EMPTY" in any case would mask "empty")
                forms += (secret.upper(), secret.lower(), *_base64_forms(secret))
    return forms


def with_halves(keys: Iterable[str]) -> Tuple[str, ...]:
    """Upstream keys and, of each long enough that a half is a secret of its own (16 characters or
    more), its first and its last half: a gateway quoting the start of the key it got ("Invalid key
    PROBEKEY9...") gave away half of it. Shorter runs are left (vendors quote 4 to 8 characters of
    a key themselves), and so are the halves of keys people choose (the clients' --auth-key,
    header values): "claudeproxy-team-2024" would mask the word "claudeproxy" everywhere."""
    out = []
    for key in keys:
        out.append(key)
        if len(key) >= 2 * MIN_FREE_TEXT_SECRET:
            half = (len(key) + 1) // 2
            out += (key[:half], key[-half:])
    return tuple(out)


_PERCENT_RE = re.compile(r"%[0-9A-F]{2}")
_URL_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*")  # what percent-encoding leaves as it is


def _url_forms(secret: str) -> List[str]:
    """``secret`` percent-encoded as encoders write it ("/" kept or not, "+" for a space), with the
    hex digits in either case; none when it has nothing to encode (most keys)."""
    if _URL_UNRESERVED.fullmatch(secret):
        return []
    encoded = {quote(secret, safe=""), quote(secret), quote_plus(secret)} - {secret}
    lower = {_PERCENT_RE.sub(lambda m: m.group().lower(), form) for form in encoded}
    return sorted(encoded | lower)


def _base64_forms(secret: str) -> List[str]:
    """The base64 characters that encode ``secret``'s bytes alone, at each of the three places its
    first byte can take in a group: wherever it sits in an encoded string, one of them is there.
    Characters that also hold bits of the bytes around it are left out (they vary)."""
    data = secret.encode("utf-8", "surrogatepass")
    forms = []
    for shift in range(3):
        padded = b"\0" * shift + data
        start, end = (8 * shift + 5) // 6, 8 * len(padded) // 6  # characters wholly within the secret's bits
        core = base64.b64encode(padded).decode("ascii")[start:end]
        if len(core) >= MIN_FREE_TEXT_SECRET:
            forms += (core, core.replace("+", "-").replace("/", "_"))  # and the URL-safe alphabet
    return forms


def _mask_query_value(match: "re.Match[str]") -> str:
    return match.group(1) + MASK if match.group(2).lower() in _SECRET_QUERY else match.group(0)


def _mask_token_like(match: "re.Match[str]") -> str:
    value = match.group(2)
    if value == MASK or not any(c.isdigit() or c == "*" for c in value):
        return match.group(0)  # a word ("Invalid API key: please check"), not a key
    return match.group(1) + MASK


def _mask_basic(match: "re.Match[str]") -> str:
    """HTTP Basic credentials: base64 of "user:password" (which need not contain a digit)."""
    try:
        decoded = base64.b64decode(match.group(2) + "==", validate=False).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return match.group(0)
    return match.group(1) + MASK if ":" in decoded else match.group(0)


# Every scan of ``redact_text``, with strings one of which any match of it contains (``any_case``:
# in any case, as the pattern's IGNORECASE finds them). ASCII text holding none cannot match and is
# not scanned: an access line took 24 µs of regex searching, nearly all of its redaction, to find
# nothing. Non-ASCII text is always scanned: under IGNORECASE "\u212a" (Kelvin) matches "k" and
# "\u017f" matches "s", which ``str.lower`` would not find.
_SCANS: Tuple[Tuple["re.Pattern[str]", Any, Tuple[str, ...], bool], ...] = (
    (_KEY_RE, MASK, ("sk-", "sk_", "rk_", "xai-", "hf_", "r8_", "pplx-", "nvapi-", "fw_", "tgp_v1_", "gh",
                     "github_pat_", "AIza", "eyJ"), False),
    (_NAMED_KEY_RE, _mask_token_like, ("key", "token", "secret", "password"), True),
    (_BEARER_RE, lambda m: m.group(1) + MASK, ("bearer",), True),
    (_BASIC_RE, _mask_basic, ("Basic",), False),
    (_USERINFO_RE, lambda m: m.group(1) + MASK + "@", ("@",), False),
    (_QUERY_PAIR_RE, _mask_query_value, ("?", "&"), False),
)


def free_text_forms(secrets: Iterable[str]) -> SecretForms:
    """The written forms of those ``secrets`` long enough to mean one in free text (``MIN_FREE_TEXT_SECRET``)."""
    return secret_forms(s for s in secrets if len(s) >= MIN_FREE_TEXT_SECRET)


def holds_secret(text: str, secrets: Iterable[str]) -> bool:
    """Does ``text`` hold one of ``secrets`` (``free_text_forms``, or those forms already worked out)
    in any written form? Not the key-shaped patterns: a name is not a key for looking like one."""
    forms = secrets if isinstance(secrets, SecretForms) else free_text_forms(secrets)
    return any(form in text for form in forms)


def masked_json(obj: Any, forms: SecretForms) -> Any:
    """``obj`` (decoded JSON) with every written form of the secrets in its strings masked, keys too.
    Through its JSON text, where each form sits inside a string (a key has nothing JSON escapes in
    a way that would end one), so no walk of a nesting the upstream chose. ValueError if it would
    not decode again."""
    return json.loads(masked_forms(json.dumps(obj, ensure_ascii=False), forms))


def masked_forms(text: str, forms: Iterable[str]) -> str:
    """``text`` with each of ``forms`` (``secret_forms``, longest first) masked, and nothing else: no
    key-shaped pattern, which would take a URL's query value or a title's word for a key."""
    for form in forms:
        text = text.replace(form, MASK)
    return text


def quoted(value: Union[str, bytes], most: int = 40) -> str:
    """An upstream's value for a message, quoted whole or not at all: cut short, a key in it would
    no longer be the secret masking finds, and its first characters would go out."""
    return repr(value) if len(value) <= most else f"({len(value)} characters)"


def redact_url(url: str, secrets: Iterable[str] = ()) -> str:
    """``url`` without userinfo and with secret-looking query values masked."""
    secrets = tuple(secrets)
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url, secrets)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if "@" in parts.netloc:
        netloc = MASK + "@" + netloc
    query = parts.query
    if query:
        pairs = [(k, MASK if k.lower() in _SECRET_QUERY else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*")
    return redact_text(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)), secrets)


def is_secret_header(name: str) -> bool:
    return bool(_SECRET_HEADER_RE.search(name))


def url_secrets(url: str) -> Tuple[str, ...]:
    """The credentials written into a configured URL, to mask wherever an upstream echoes them bare:
    the values of credential-named query parameters (Gemini's ?key=), as written and decoded, and
    the userinfo's password."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return ()
    found = [password or ""]
    for pair in parts.query.split("&"):
        name, _, value = pair.partition("=")
        if unquote_plus(name).lower() in _SECRET_QUERY:
            found += [value, unquote_plus(value)]
    return _long_enough(found)


def header_secrets(headers: Iterable[Tuple[str, str]]) -> Tuple[str, ...]:
    """The values of configured credential headers (``--header``, a provider's headers), whole and
    their last word: "Bearer abc..." is often echoed as just the token."""
    found: List[str] = []
    for name, value in headers:
        if is_secret_header(name):
            found += [value.strip(), value.strip().split(" ")[-1]]
    return _long_enough(found)


def configured_secrets(places: Iterable[Tuple[str, Iterable[Tuple[str, str]]]]) -> Tuple[str, ...]:
    """``url_secrets`` and ``header_secrets`` of each (URL, headers) the configuration wrote, once each."""
    return tuple(dict.fromkeys(s for url, headers in places for s in url_secrets(url) + header_secrets(headers)))


def _long_enough(values: Iterable[str]) -> Tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if len(v) >= MIN_FREE_TEXT_SECRET))


def redact_headers(
    headers: Union[Iterable[Tuple[str, str]], Mapping[str, str]], secrets: Iterable[str] = ()
) -> List[Tuple[str, str]]:
    """Header pairs with the values of credential-bearing headers masked, and known secrets anywhere."""
    secrets = tuple(secrets)
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(k, MASK if is_secret_header(k) else redact_text(v, secrets)) for k, v in items]
