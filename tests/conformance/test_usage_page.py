"""The usage page in a real browser: headless Chromium loads it after a scripted session.

A session like a day's work goes through the proxy against a fake upstream
that answers like four models would (prices from the built-in table for
three, none for the local one; a growing prompt that the upstream's cache
mostly serves; streams that take a moment before the first token): a 429, a
bad request, a quota probe and count_tokens calls among them. Chromium
(Debian's ``chromium``, installed by ``.ci/run``) takes a screenshot; the
test decodes the PNG with zlib alone and checks that it is a real picture of
the page: its size, not one flat colour, and the charts' colours in it.

``CLAUDEPROXY_SCREENSHOT=PATH`` keeps the picture (the README's is
``.ci/usage-page.png``). ``CLAUDEPROXY_CHROMIUM`` names the browser; set to
the empty string it skips the test (``.ci/run`` does that on the other
interpreters: one browser run per CI is enough).
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

import claudeproxy
from claudeproxy.config import Provider, Route, RouteTarget
from conftest import UPSTREAM_KEY, minimal_request, quota_probe, request
from fakes import FakeUpstream, Reply, Sleep, chunk, completion, json_reply, sse_reply

pytestmark = pytest.mark.conformance

WIDTH, HEIGHT = 1280, 1960
PALETTE_FIRST = (0x63, 0x66, 0xF1)  # usage_page.PALETTE[0], the dearest model's colour
OK_GREEN = (0x10, 0xB9, 0x81)


def find_chromium() -> Optional[str]:
    named = os.environ.get("CLAUDEPROXY_CHROMIUM")
    if named is not None:
        return named or None
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM = find_chromium()


# ---------------------------------------------------------------------------
# The session.

# upstream model -> (seconds before the answer, seconds before the first streamed token, cache)
MODELS = {"gpt-4o": (0.30, 0.20, True), "gpt-4o-mini": (0.10, 0.08, True),
          "deepseek-chat": (0.22, 0.35, True), "qwen3-coder": (0.45, 0.30, False)}


class DayOfWork(FakeUpstream):
    """Answers each chat request like its model would; requests come one at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.prompt = 6000  # Claude Code's system prompt and tools, then the conversation grows

    def next_reply(self) -> Reply:
        body = self.requests[-1].json
        self.calls += 1
        if self.calls == 9:
            return json_reply({"error": {"message": "Rate limit reached for requests", "type": "requests",
                                         "code": "rate_limit_exceeded"}}, status=429)
        delay, first_token, caches = MODELS[body["model"]]
        self.prompt += 900 + 137 * (self.calls % 5)
        cached = (self.prompt - 900) // 1024 * 1024 if caches and self.calls > 2 else 0
        usage = {"prompt_tokens": self.prompt, "completion_tokens": 80 + 23 * (self.calls % 7),
                 "total_tokens": 0, "prompt_tokens_details": {"cached_tokens": cached}}
        if not body.get("stream"):
            reply = json_reply(completion("Done.", usage=usage))
            reply.delay = delay
            return reply
        return sse_reply(chunk({"role": "assistant", "content": ""}), Sleep(first_token), chunk({"content": "Working"}),
                         Sleep(delay), chunk({"content": " on it."}), chunk({}, "stop"),
                         {**chunk(), "choices": [], "usage": usage})


# (client model, stream): Claude Code's main loop on sonnet, haiku for small jobs, opus now and then.
SCRIPT = [("claude-sonnet-4-5", True), ("claude-haiku-4-5", False), ("claude-sonnet-4-5", True),
          ("claude-opus-4-1", True), ("claude-sonnet-4-5", True), ("llama-local", False),
          ("claude-haiku-4-5", False), ("claude-sonnet-4-5", True), ("claude-sonnet-4-5", True),
          ("claude-opus-4-1", True), ("claude-sonnet-4-5", True), ("claude-haiku-4-5", False),
          ("llama-local", True), ("claude-sonnet-4-5", True), ("claude-opus-4-1", False),
          ("claude-sonnet-4-5", True), ("claude-haiku-4-5", False), ("claude-sonnet-4-5", True)]


def run_session(url: str) -> List[int]:
    statuses = []
    for i, (model, stream) in enumerate(SCRIPT):
        body = minimal_request(model=model, stream=stream, max_tokens=4096)
        statuses.append(request(url, "POST", "/v1/messages", body).status)
        if i % 6 == 2:
            counted = request(url, "POST", "/v1/messages/count_tokens", {"model": model, "messages": body["messages"]})
            statuses.append(counted.status)
    statuses.append(request(url, "POST", "/v1/messages", quota_probe(model="claude-haiku-4-5")).status)
    statuses.append(request(url, "POST", "/v1/messages", {"model": "claude-sonnet-4-5", "messages": "oops"}).status)
    return statuses


@pytest.fixture
def served() -> Iterator[Any]:
    fake = DayOfWork()
    key = claudeproxy.static_token(UPSTREAM_KEY)
    providers = (Provider("openai", fake.url, token=key), Provider("deepseek", fake.url + "/deepseek", token=key),
                 Provider("ollama", fake.url + "/ollama"))
    routes = (Route("opus", RouteTarget("openai", "gpt-4o")), Route("haiku", RouteTarget("openai", "gpt-4o-mini")),
              Route("sonnet", RouteTarget("deepseek", "deepseek-chat")), Route("*", RouteTarget("ollama", "qwen3-coder")))
    proxy = claudeproxy.start(providers=providers, routes=routes)
    yield proxy
    proxy.shutdown(grace=1.0)
    fake.close()


# ---------------------------------------------------------------------------
# PNG, read with zlib alone.


def read_png(data: bytes, max_rows: int) -> Tuple[int, int, int, List[bytes]]:
    """(width, height, bytes per pixel, the first ``max_rows`` rows unfiltered) of an 8-bit RGB(A) PNG.

    Every IDAT byte is decompressed (zlib checks it); rows are unfiltered only as far as
    needed, because each depends on the one above and Python does it byte by byte.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0], kind
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and interlace == 0 and color in (2, 6), (depth, color, interlace)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    assert len(raw) == height * (width * bpp + 1)
    return width, height, bpp, _unfilter(raw, width * bpp, bpp, min(height, max_rows))


def _unfilter(raw: bytes, stride: int, bpp: int, rows: int) -> List[bytes]:
    out: List[bytes] = []
    prev = bytearray(stride)
    for y in range(rows):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 2:  # Up: bytewise sum with the row above, carries kept inside each byte
            a, b = int.from_bytes(line, "big"), int.from_bytes(prev, "big")
            low = int.from_bytes(b"\x7f" * stride, "big")
            line = bytearray(((((a & low) + (b & low)) ^ ((a ^ b) & ~low)) & ((1 << 8 * stride) - 1))
                             .to_bytes(stride, "big"))
        elif kind in (1, 3, 4):
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
                if kind == 1:
                    guess = left
                elif kind == 3:
                    guess = (left + up) >> 1
                else:
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    guess = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + guess) & 255
        out.append(bytes(line))
        prev = line
    return out


def pixels(rows: List[bytes], bpp: int, step: int = 2) -> List[Tuple[int, int, int]]:
    return [(row[i], row[i + 1], row[i + 2]) for row in rows[::step] for i in range(0, len(row), bpp * step)]


def near(pixel: Tuple[int, int, int], color: Tuple[int, int, int], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, color))


# ---------------------------------------------------------------------------
# The test.


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium; .ci/run does)")
def test_usage_page_screenshot_after_a_session(served: Any, tmp_path: Any) -> None:
    statuses = run_session(served.url)
    assert statuses.count(429) == 1 and statuses.count(400) == 1 and statuses.count(200) == len(statuses) - 2
    assert served.server.wait_idle(2)
    usage = request(served.url, "GET", "/v1/usage").json
    assert usage["today_totals"]["cost_usd"] > 0 and usage["today_totals"]["unpriced_requests"] >= 1
    assert len(usage["series"]["points"]) >= 2  # the session spans several seconds: several bars

    shot = str(tmp_path / "usage-page.png")
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            "--force-color-profile=srgb", "--force-device-scale-factor=1", f"--user-data-dir={tempfile.mkdtemp()}",
            f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}", served.url + "/"]
    done = subprocess.run(argv, capture_output=True, timeout=90, env={**os.environ, "HOME": str(tmp_path)})
    assert os.path.exists(shot), done.stderr.decode("utf-8", "replace")[-2000:]
    with open(shot, "rb") as fh:
        data = fh.read()
    keep = os.environ.get("CLAUDEPROXY_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
    assert len(data) > 40_000, len(data)  # a page of text and charts, not an empty canvas

    width, height, bpp, rows = read_png(data, max_rows=900)
    assert (width, height) == (WIDTH, HEIGHT)
    seen = pixels(rows, bpp)
    counts: Dict[Tuple[int, int, int], int] = {}
    for p in seen:
        counts[p] = counts.get(p, 0) + 1
    background = max(counts.values())
    assert background < 0.85 * len(seen), "the page is (almost) one colour"
    assert len(counts) > 200, len(counts)  # text anti-aliasing, cards, bars
    light = [0.299 * r + 0.587 * g + 0.114 * b for r, g, b in seen]
    mean = sum(light) / len(light)
    assert math.sqrt(sum((v - mean) ** 2 for v in light) / len(light)) > 8
    # The SVG charts were drawn: the dearest model's bars and the ok-requests bars are there.
    assert sum(near(p, PALETTE_FIRST) for p in seen) > 300
    assert sum(near(p, OK_GREEN) for p in seen) > 300
