"""The decoder of bodies a gateway compressed (claudeproxy/content_coding.py): no network."""

from __future__ import annotations

import gzip
import random
import zlib
from typing import List

import pytest

from claudeproxy.content_coding import ContentDecoder, decoder_for
from claudeproxy.errors import UpstreamUnavailable

TEXT = b"".join(b"data: {\"n\": %d, \"text\": \"%s\"}\n\n" % (i, b"x" * (i % 50)) for i in range(400))


def raw_deflate(data: bytes) -> bytes:
    squeeze = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return squeeze.compress(data) + squeeze.flush()


def decode_in_pieces(decoder: ContentDecoder, data: bytes, cut: int, most: int) -> bytes:
    """Fed ``cut`` bytes at a time, asked for ``most`` at a time, as the stream reader does."""
    out: List[bytes] = []
    for i in range(0, len(data), cut):
        out.append(decoder.decompress(data[i:i + cut], most))
        while decoder.has_more:
            piece = decoder.decompress(b"", most)
            assert len(piece) <= most
            out.append(piece)
    out.append(decoder.finish())
    return b"".join(out)


@pytest.mark.parametrize("coding, packed", [
    ("gzip", gzip.compress(TEXT)),
    ("gzip", b"".join(gzip.compress(TEXT[i:i + 500]) for i in range(0, len(TEXT), 500))),  # many members
    ("gzip", gzip.compress(TEXT) + b"\0" * 8),  # zero padding after the last member, as gzip's reader allows
    ("gzip", gzip.compress(TEXT) + b"\r\n"),  # a framework's newline after the body: ignored, as GNU gzip does
    ("gzip", gzip.compress(TEXT) + b"\x1f"),  # one byte that could have begun a member, then nothing
    ("deflate", zlib.compress(TEXT) + b"\n"),
    ("x-gzip", gzip.compress(TEXT)),
    ("deflate", zlib.compress(TEXT)),
    ("deflate", raw_deflate(TEXT)),
], ids=["gzip", "members", "padded", "newline", "lone-magic-byte", "deflate-newline", "x-gzip", "zlib", "raw"])
@pytest.mark.parametrize("cut, most", [(1, 7), (13, 64), (4096, 1 << 20)])
def test_every_form_decodes_whole_in_any_pieces(coding: str, packed: bytes, cut: int, most: int) -> None:
    decoder = decoder_for(coding)
    assert decoder is not None
    assert decode_in_pieces(decoder, packed, cut, most) == TEXT


@pytest.mark.parametrize("coding, packed", [
    ("gzip", b"not gzip at all"),
    ("gzip", gzip.compress(TEXT) + b"\x1f\x8bnot a member"),  # a second member that does not decode
    ("deflate", b"\xff"),  # one byte: no stream of either kind
])
def test_what_does_not_decode_is_refused_with_no_retry(coding: str, packed: bytes) -> None:
    decoder = decoder_for(coding)
    assert decoder is not None
    with pytest.raises(UpstreamUnavailable) as caught:
        decode_in_pieces(decoder, packed, 5, 100)
    assert "does not decode" in str(caught.value)
    assert ("x-should-retry", "false") in caught.value.headers


def test_a_body_cut_inside_its_coding_is_an_error_not_an_end() -> None:
    decoder = decoder_for("gzip")
    assert decoder is not None
    packed = gzip.compress(TEXT)
    with pytest.raises(UpstreamUnavailable) as caught:
        decode_in_pieces(decoder, packed[: len(packed) // 2], 64, 1 << 20)
    assert "cut short" in str(caught.value)
    assert ("x-should-retry", "false") not in caught.value.headers  # a cut may go better next time


def test_an_empty_body_is_empty_and_identity_needs_no_decoder() -> None:
    decoder = decoder_for("gzip")
    assert decoder is not None and decoder.finish() == b""
    assert decoder_for("") is None and decoder_for("identity") is None
    with pytest.raises(UpstreamUnavailable):
        decoder_for("br")


def test_a_small_body_asking_for_little_never_gives_more_than_asked() -> None:
    """A compressed megabyte may hold a gigabyte: each piece is bounded by what was asked."""
    bomb = gzip.compress(b"\0" * (8 << 20))
    decoder = decoder_for("gzip")
    assert decoder is not None
    first = decoder.decompress(bomb, 1000)
    assert len(first) == 1000 and decoder.has_more


def test_random_member_splits_decode_alike() -> None:
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(TEXT)), rng.randint(1, 6)))
        parts = [TEXT[a:b] for a, b in zip([0] + cuts, cuts + [len(TEXT)])]
        packed = b"".join(gzip.compress(p) for p in parts)
        decoder = decoder_for("gzip")
        assert decoder is not None
        assert decode_in_pieces(decoder, packed, rng.randint(1, 300), rng.randint(1, 5000)) == TEXT
