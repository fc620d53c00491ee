"""The JSON work any translating proxy must do, timed alone: a floor under claudeproxy's CPU.

    python bench/floor.py REQUEST UPSTREAM_BODY CLIENT_ANSWER CLIENT_EVENT

Prints ``{"request_ms": ..., "chunk_us": ...}`` (CPU time of this process; reads its four files).

A proxy that translates has to decode what it is given and encode what it sends, whatever
else it does. Per non-streaming request that is four calls of the standard library's C
JSON codec: decode the client's request, encode the upstream's (the body claudeproxy sent in
this run), decode the upstream's answer (the fake upstream's), encode the client's answer
(claudeproxy's). Per streamed chunk it is two: decode the upstream's chunk, encode one
Anthropic event. Nothing here parses into objects, validates or translates, so what it
measures is a lower bound: the bench adds it to the ceiling's own CPU (which does the HTTP
work and no JSON) to show the best ratio to the ceiling any translating proxy on this
interpreter could reach (bench/run.py prints it under the table).

The loops run hot, with the caches warm and the same objects every time, which is kinder
than a real request is: the floor leans low, so the bound it gives leans high.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, Dict

import fake_upstream

ROUNDS = 5


def best_cpu_seconds(work: Callable[[], Any], n: int) -> float:
    """CPU seconds one call of ``work`` takes: the best of ``ROUNDS`` rounds of ``n`` calls."""
    best = float("inf")
    for _ in range(ROUNDS):
        began = time.process_time()
        for _ in range(n):
            work()
        best = min(best, (time.process_time() - began) / n)
    return best


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _sse_data(framed: bytes) -> bytes:
    """The JSON of the first ``data:`` line of an SSE text (HTTP chunk framing around it allowed)."""
    for line in framed.split(b"\n"):
        if line.startswith(b"data: {"):
            return line[len(b"data: "):].rstrip(b"\r")
    raise ValueError("no data line")


def floors(request: bytes, upstream_body: bytes, client_answer: bytes, client_event: bytes) -> Dict[str, float]:
    upstream_answer = fake_upstream.completion_body()
    upstream_chunk = _sse_data(fake_upstream.Stream.content[1])
    body_obj, answer_obj, event_obj = json.loads(upstream_body), json.loads(client_answer), json.loads(client_event)

    def one_request() -> None:
        json.loads(request)
        json.dumps(body_obj, ensure_ascii=False)
        json.loads(upstream_answer)
        json.dumps(answer_obj, ensure_ascii=False)

    def one_chunk() -> None:
        json.loads(upstream_chunk)
        json.dumps(event_obj, ensure_ascii=False)

    return {"request_ms": best_cpu_seconds(one_request, 300) * 1e3,
            "chunk_us": best_cpu_seconds(one_chunk, 20000) * 1e6}


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit(__doc__.split("\n\n")[1])
    request, upstream_body, client_answer, client_event = (_read(p) for p in sys.argv[1:])
    print(json.dumps(floors(request, upstream_body, client_answer, _sse_data(client_event))))


if __name__ == "__main__":
    main()
