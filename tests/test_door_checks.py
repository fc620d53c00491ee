"""Every request checked at the door (issue item 7): a 400 naming the JSON path, never a 500.

Inputs a probe of 9,000 mutated requests found to get a 500 (or a closed
connection): lone surrogates, NaN/Infinity, Content-Length values that are
digits only to ``str.isdigit``, non-ASCII ``limit`` values on /v1/models,
``tools`` that is not an array, two Host headers. Each row is sent as raw bytes
to a translating and to a forwarding (Messages API) proxy.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, List, Tuple

import pytest

import claudeproxy
from conftest import UPSTREAM_KEY
from fakes import FakeUpstream
from test_http_errors import (  # noqa: F401 - no_tracebacks is a fixture
    assert_error,
    connect,
    http_bytes,
    json_post,
    no_tracebacks,
    peer_closed,
    raw_request,
    read_response,
    reset_fake,
)

GOOD = b'"model":"claude-test","max_tokens":64,"messages":[{"role":"user","content":"hi"}]'


def body(extra: str = "", text: str = "hi", model: str = "claude-test") -> bytes:
    parts = (f'{{"model":"{model}","max_tokens":64,'
             f'"messages":[{{"role":"user","content":"{text}"}}]{extra}}}')
    return parts.encode("utf-8")


@pytest.fixture(scope="module")
def servers() -> Iterator[Tuple[FakeUpstream, List[Any]]]:
    fake = FakeUpstream()
    token = claudeproxy.static_token(UPSTREAM_KEY)
    proxies = [claudeproxy.start(upstream=fake.url, token=token),
               claudeproxy.start(upstream=fake.url.rsplit("/v1", 1)[0], token=token, upstream_api="messages")]
    yield fake, proxies
    for proxy in proxies:
        proxy.shutdown(grace=1.0)
    fake.close()


@pytest.fixture(params=["chat", "messages"])
def url(request: Any, servers: Tuple[FakeUpstream, List[Any]], no_tracebacks: None) -> Iterator[str]:
    fake, proxies = servers
    reset_fake(fake)
    yield proxies[0 if request.param == "chat" else 1].url
    assert fake.requests == [], "a refused request reached the upstream"


# (what, body, path in the message, endpoint)
BODIES = [
    ("lone high surrogate in a text", body(text="a\\ud800b"), "messages[0].content", "/v1/messages"),
    ("lone low surrogate in the model", body(model="claude-\\udfff"), "model", "/v1/messages"),
    ("lone surrogate in a tool name", body(',"tools":[{"name":"t\\ud801","input_schema":{"type":"object"}}]'),
     "tools[0].name", "/v1/messages"),
    ("lone surrogate in a schema key",
     body(',"tools":[{"name":"t","input_schema":{"type":"object","properties":{"\\udc00":{}}}}]'),
     "tools[0].input_schema.properties", "/v1/messages"),
    ("lone surrogate in the system prompt", body(',"system":[{"type":"text","text":"\\uDBFF"}]'), "system[0].text",
     "/v1/messages"),
    ("reversed surrogate pair", body(text="\\ude00\\ud83d"), "messages[0].content", "/v1/messages"),
    ("lone surrogate in count_tokens", body(text="\\ud800"), "messages[0].content", "/v1/messages/count_tokens"),
    ("NaN temperature", body(',"temperature":NaN'), "temperature", "/v1/messages"),
    ("Infinity top_p", body(',"top_p":Infinity'), "top_p", "/v1/messages"),
    ("-Infinity in a schema", body(',"tools":[{"name":"t","input_schema":{"type":"object","minimum":-Infinity}}]'),
     "tools[0].input_schema.minimum", "/v1/messages"),
    ("1e999 overflows to infinity", body(',"temperature":1e999'), "temperature", "/v1/messages"),
    ("NaN in count_tokens", body(',"x":NaN'), "x", "/v1/messages/count_tokens"),
    ("tools is an object", body(',"tools":{}'), "tools", "/v1/messages"),
    ("tools is a string", body(',"tools":"all"'), "tools", "/v1/messages"),
    ("tools is an object (count_tokens)", body(',"tools":{}'), "tools", "/v1/messages/count_tokens"),
    ("model name of 257 characters", body(model="m" * 257), "model", "/v1/messages"),
    ("model name of 30000 characters (count_tokens)", body(model="m" * 30000), "model", "/v1/messages/count_tokens"),
]


@pytest.mark.parametrize("what,raw,path,endpoint", BODIES, ids=[row[0] for row in BODIES])
def test_bad_body_is_400_naming_the_path(url: str, what: str, raw: bytes, path: str, endpoint: str) -> None:
    resp = raw_request(url, json_post(raw, path=endpoint))
    message = assert_error(resp, 400, "invalid_request_error")
    assert message.startswith(path + ":") or message.startswith(path + "."), message


@pytest.mark.parametrize("raw", [
    body(text="smile \\ud83d\\ude00"),  # a proper pair is an emoji, not an error
    body(',"temperature":0.5,"top_p":1e-300'),
    body(',"tools":null'),
])
def test_good_bodies_still_pass(servers: Tuple[FakeUpstream, List[Any]], raw: bytes) -> None:
    fake, proxies = servers
    reset_fake(fake)
    resp = raw_request(proxies[0].url, json_post(raw))
    assert resp.status == 200, resp
    assert len(fake.requests) == 1


# (what, raw request bytes, status)
HEADS = [
    ("superscript digit", b"\xb9"),  # "¹".isdigit() is True, int("¹") raises
    ("arabic-indic digits in UTF-8", "٣".encode("utf-8")),
    ("plus sign", b"+5"),
    ("hex", b"0x10"),
    ("negative", b"-1"),
]


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100-continue"])
@pytest.mark.parametrize("what,value", HEADS, ids=[row[0] for row in HEADS])
def test_content_length_must_be_ascii_digits(url: str, what: str, value: bytes, expect: bool) -> None:
    head = (b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + (b"Expect: 100-continue\r\n" if expect else b"")
            + b"Content-Length: " + value + b"\r\n\r\n")
    with connect(url) as sock:
        sock.sendall(head)
        resp = read_response(sock)
        assert_error(resp, 400, "invalid_request_error", "Content-Length")
        assert peer_closed(sock)


def test_content_length_with_thousands_of_digits_is_413(url: str) -> None:
    resp = raw_request(url, http_bytes("POST", "/v1/messages", [("Host", "127.0.0.1"),
                                                                ("Content-Length", "9" * 5000)]))
    assert_error(resp, 413, "request_too_large")


@pytest.mark.parametrize("query", ["limit=%C2%B2", "limit=%D9%A3", "limit=\xb2", "limit=%EF%BC%91"])
def test_non_ascii_limit_on_models_is_400(url: str, query: str) -> None:
    resp = raw_request(url, http_bytes("GET", f"/v1/models?{query}", [("Host", "127.0.0.1")]))
    message = assert_error(resp, 400, "invalid_request_error")
    assert message.startswith("limit:"), message


@pytest.mark.parametrize("query", ["after_id=%ED%A0%80", "before_id=\xe9", "after_id=%FF"])
def test_non_ascii_cursor_on_models_is_no_error(servers: Tuple[FakeUpstream, List[Any]], query: str) -> None:
    proxy = servers[1][0]
    resp = raw_request(proxy.url, http_bytes("GET", f"/v1/models?{query}", [("Host", "127.0.0.1")]))
    assert resp.status in (200, 502), resp  # 502 only when the fake's model list is not what it expects
    assert resp.status != 500


@pytest.mark.parametrize("second", ["127.0.0.1", "evil.example"])
def test_two_host_headers_are_400(url: str, second: str) -> None:
    with connect(url) as sock:
        sock.sendall(http_bytes("GET", "/health", [("Host", "127.0.0.1"), ("Host", second)]))
        resp = read_response(sock)
        assert_error(resp, 400, "invalid_request_error", "Host")
        assert peer_closed(sock)


def test_a_message_quoting_a_surrogate_key_is_valid_json(url: str) -> None:
    """The path of a bad key holds the key; the error body must still encode (escaped)."""
    raw = body(',"metadata":{"\\udfff":1}')
    resp = raw_request(url, json_post(raw))
    message = assert_error(resp, 400, "invalid_request_error")
    assert message.startswith("metadata.\udfff"), message


def test_lone_surrogate_escapes_are_told_from_pairs_as_the_decoder_does() -> None:
    # The door walks a decoded body for surrogates only when its text escapes a lone one; a
    # pair is how json.dumps and the Python SDKs write an emoji, and must not cost the walk.
    # 3,000 seeded strings of escapes, escaped backslashes and text, against the decoder itself.
    import json
    import random

    from claudeproxy.door import _lone_surrogate_escape

    pieces = ["\\ud83d", "\\ude00", "\\uDBFF", "\\udc00", "\\\\", "\\\\\\", "x", "\\u00e9", "\\ud7ff", "\\n"]
    rng = random.Random(11)
    checked = 0
    for _ in range(3000):
        text = '"' + "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))) + '"'
        try:
            decoded = json.loads(text)
        except ValueError:
            continue  # an odd run of backslashes before the quote: not JSON
        lone = any(0xD800 <= ord(c) <= 0xDFFF for c in decoded)
        assert _lone_surrogate_escape(text.encode("ascii")) == lone, text
        checked += 1
    assert checked > 1500


def test_a_body_of_more_than_a_million_objects_and_arrays_is_refused_before_decoding() -> None:
    """A 32 MiB body of `{}` took 888 MB to decode, a million tiny text blocks 464 MB (probe A):
    refused by counting, never decoded; brackets inside strings are text and do not count."""
    from claudeproxy import door
    from claudeproxy.errors import InvalidRequest

    hostile = b'{"model":"m","max_tokens":1,"messages":[' + b"{}," * 2_000_000 + b'{}]}'
    began = time.process_time()
    with pytest.raises(InvalidRequest) as caught:
        door.loads_request(hostile)
    assert "2,000,003 JSON objects and arrays; at most 1,000,000" in str(caught.value)  # with the body and its list
    assert time.process_time() - began < 2.0  # counted, not decoded (decoding took several seconds)
    quoted = b'{"model":"m","messages":[{"role":"user","content":"\\"{[' + b"{[" * 1_000_000 + b'"}]}'
    assert door.loads_request(quoted)["messages"][0]["content"].startswith('"{[{[')
    near = b'{"a":[' + b"[]," * 999_997 + b'[]]}'  # the cap itself is taken
    assert len(door.loads_request(near)["a"]) == 999_998


def test_a_body_of_more_than_a_million_values_is_refused_before_decoding() -> None:
    """A 32 MiB body of 6.7 million strings "ab" took 554 MB to decode (probe N): the values are
    counted by the commas between them, outside strings; commas in text are text."""
    from claudeproxy import door
    from claudeproxy.errors import InvalidRequest

    hostile = b'{"model":"m","metadata":{"x":[' + b'"ab",' * 1_500_000 + b'"ab"]}}'
    began = time.process_time()
    with pytest.raises(InvalidRequest) as caught:
        door.loads_request(hostile)
    assert "1,500,005 JSON strings; at most 1,000,000 values" in str(caught.value)  # with the 4 of the keys
    assert time.process_time() - began < 1.0  # counted in C, not decoded (re.sub of them took 2 s and 1.2 GB)
    numbers = b'{"model":"m","metadata":{"x":[' + b'"ab",' * 900_000 + b'1.5,' * 1_000_000 + b'1]}}'
    with pytest.raises(InvalidRequest) as caught:
        door.loads_request(numbers)
    assert "1,900,002 JSON values in its objects and arrays; at most 1,000,000" in str(caught.value)  # commas + 1
    text = b'{"model":"m","messages":[{"role":"user","content":"' + b"a,b," * 1_500_000 + b'"}]}'
    assert door.loads_request(text)["messages"][0]["content"].startswith("a,b,a,b")
    near = b'{"a":[' + b"1," * 999_999 + b'1]}'  # the cap itself is taken
    assert len(door.loads_request(near)["a"]) == 1_000_000
