"""Stop strings matched by the proxy cost a stream's text one pass, whatever their number and length.

``apis/stops.py`` ``StopScan``: an automaton over the request's stop strings, fed each delta once.
The code before it searched every stop string, at every prefix length, in every delta, and
searched the text held back for a long stop string again with each delta: 1,000 stop strings
took 4-6 s of CPU for an ordinary 2,000-delta stream, 10,000 took 55 s, one 400 KB string 4.8 s
(probe A). The checks are ratios of thread CPU in one process, not times.
"""

from __future__ import annotations

import random
import time
from typing import List, Optional, Tuple

from claudeproxy.apis.stops import FEW_STOPS, StopFinder, StopScan, first_stop
from stream_playbook import Playbook, chunk


def reference_first_stop(text: str, stops: Tuple[str, ...]) -> Optional[Tuple[int, str]]:
    """The definition: the match that ends first, at one end the longest."""
    found = [(text.find(s) + len(s), -len(s), s) for s in stops if s and s in text]
    return None if not found else (min(found)[0] + min(found)[1], min(found)[2])


def reference_kept(text: str, stops: Tuple[str, ...]) -> int:
    """The definition: the longest end of ``text`` that is, or begins, a stop string."""
    return max([k for s in stops for k in range(1, min(len(s), len(text)) + 1) if text.endswith(s[:k])], default=0)


def test_the_scan_says_what_the_definitions_say_delta_after_delta() -> None:
    rng = random.Random(7)
    for _ in range(4000):
        stops = tuple({"".join(rng.choice("abc") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 6))})
        ending = tuple(s for s in stops if rng.random() < 0.7)
        scan, held = StopScan(stops, ending), ""
        for _ in range(8):
            piece = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 6)))
            hit, kept = scan.scan(held, piece)
            text = held + piece
            assert hit == (reference_first_stop(text, ending) if ending else None), (stops, ending, held, piece)
            if hit is not None:
                break
            assert kept == reference_kept(text, stops), (stops, held, piece)
            # A caller that let the held text go (a flush) scans from nothing again.
            held = text[len(text) - kept:] if rng.random() < 0.8 else ""


def test_many_stop_strings_search_a_whole_answer_as_few_do() -> None:
    rng = random.Random(3)
    stops = tuple("".join(rng.choice("xyz") for _ in range(8)) for _ in range(FEW_STOPS * 4))
    text = "".join(rng.choice("xyz ") for _ in range(5000))
    finder = StopFinder(stops)  # built once, for every text of one answer (a Response's parts)
    for piece in (text, text + stops[5], stops[7] + text, ""):
        assert finder.first(piece) == first_stop(piece, stops) == reference_first_stop(piece, stops)


def _stream_cpu(stops: List[str], deltas: List[str]) -> float:
    """Thread CPU of a Chat stream whose stop strings the upstream was not sent (best of 3)."""
    best = float("inf")
    for _ in range(3):
        pb = Playbook(stop_sequences=stops, local_stops=stops)
        started = time.thread_time()
        for delta in deltas:
            pb.feed(chunk({"content": delta}))
        pb.feed(chunk(finish="stop", usage={"prompt_tokens": 3, "completion_tokens": len(deltas)}))
        best = min(best, time.thread_time() - started)
        assert pb.complete
    return max(best, 1e-4)


def _random_stops(n: int, seed: int) -> List[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghij") for _ in range(30)) for _ in range(n)]


def test_a_thousand_stop_strings_cost_a_stream_about_what_one_costs() -> None:
    deltas = ["hello world "] * 1000
    one, thousand = _stream_cpu(_random_stops(1, 1), deltas), _stream_cpu(_random_stops(1000, 1), deltas)
    # The automaton: about 1-2x (the walk is the same; a few more failure links). Each string
    # searched in each delta: 100x and more.
    assert thousand / one < 10, (one, thousand)


def test_a_long_stop_string_held_back_over_many_deltas_still_ends_the_answer() -> None:
    """The held text is the automaton's state: it is not searched again with each delta, and a
    stop string completed after a hundred deltas is found all the same."""
    stop = "ab" * 5000 + "!"
    pb = Playbook(stop_sequences=[stop], local_stops=[stop])
    pb.feed(chunk({"content": "before "}))
    for _ in range(100):
        pb.feed(chunk({"content": "ab" * 50}))
    pb.feed(chunk({"content": "! after"}))
    assert pb.complete
    text = "".join(e["delta"]["text"] for e in pb.events if e["type"] == "content_block_delta")
    [end] = [e for e in pb.events if e["type"] == "message_delta"]
    assert (text, end["delta"]["stop_reason"], end["delta"]["stop_sequence"]) == ("before ", "stop_sequence", stop)


def test_a_responses_answer_of_many_parts_builds_its_stop_automaton_once() -> None:
    """cut_output searched each part with a new automaton: 8,191 stop strings and 20 parts took
    2.35 s of CPU against 0.03 (review F). The build is the cost: 20 parts cost about one."""
    from claudeproxy.apis.responses.response import cut_output

    stops = tuple(_random_stops(2000, 5))
    message = lambda n: {"type": "message", "content": [{"type": "output_text", "text": "plain words"}] * n}  # noqa: E731

    def cpu(n: int) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.thread_time()
            assert cut_output([message(n)], stops) == ([message(n)], None)
            best = min(best, time.thread_time() - started)
        return max(best, 1e-4)

    assert cpu(20) / cpu(1) < 4


def test_a_big_delta_without_a_stop_strings_first_character_is_not_walked_by_character() -> None:
    """Only the characters that can begin a stop string start a walk; the rest is found in C."""
    big = ["lorem ipsum dolor sit amet " * 150] * 200  # 200 deltas of 4 KB
    ratio = _stream_cpu(["\n\nHuman:"], big) / _stream_cpu([], big)
    assert ratio < 4, ratio  # a walk of every character was 11-14x (review F)


def test_an_automaton_of_no_stop_string_holds_nothing_back() -> None:
    assert StopScan([""], ending=[""]).scan("", "any text") == (None, 0)
    assert StopScan([]).scan("", "") == (None, 0)
