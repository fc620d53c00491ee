"""This checkout's claudeproxy against another's, paired: CPU per 1,000 streamed chunks and the first text delta.

    python bench/pair.py OTHER [--rounds 8] [--shape 250,20] [--streams 16] [--no-ttft]

OTHER is another checkout of the project (``git worktree add /tmp/before HEAD~3``, or
``git archive REV | tar -x -C DIR``). bench/run.py's per-chunk figure moves 20-40 % from one
run to the next on a shared VM, more than most single changes do. Here the ceiling, this
checkout's claudeproxy (``this``) and OTHER's (``other``) run at the same time, pinned to the
same core, against one fake upstream; every round measures the three in a rotating order
(bench/run.py's ``measure_cpu_per_chunk`` and ``measure_ttft``: 16 paced streams of 250 chunks
20 ms apart, 20 paced first deltas). What a change claims is the median of the rounds' ratios
this/other: each ratio pairs two measurements a few seconds apart, so the machine's drift
cancels out of it. Standard library only; about 10 s a round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from typing import Dict, List

import procs
from run import DEFAULT, Bench, Target

NAMES = ("ceiling", "this", "other")


def _median(xs: List[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", help="the other checkout's root (holding claudeproxy/)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--shape", default="250,20", help="chunks per stream, ms between them (default 250,20)")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--no-ttft", action="store_true", help="CPU per chunk only")
    parser.add_argument("--no-cpu", action="store_true", help="first text delta only (a round takes ~6 s)")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    other = os.path.abspath(args.other)
    if not os.path.isfile(os.path.join(other, "claudeproxy", "__main__.py")):
        parser.error(f"{other} holds no claudeproxy package")
    chunks, pause = (int(x) for x in args.shape.split(","))
    plan = DEFAULT._replace(cpu_shape=(chunks, pause), cpu_streams=args.streams)
    bench_args = argparse.Namespace(client="stdlib", quick=False, tls=False, python=args.python, proxy_arg=[])
    cpu: Dict[str, List[float]] = {n: [] for n in NAMES}
    ttft: Dict[str, List[float]] = {n: [] for n in NAMES}
    with tempfile.TemporaryDirectory(prefix="claudeproxy-pair-") as tmp:
        bench = Bench(bench_args, plan, tmp)
        procs.pin_self(bench.cores.client)
        for root in (procs.ROOT, other):  # both start from bytecode, as a user's second start does
            bench.compile_bytecode(root)
        bench.start_upstream()
        servers = []
        try:
            bench.capture_translation()
            servers.append(bench.start_target("ceiling"))
            servers.append(bench.start_target("claudeproxy"))
            servers.append(procs.start_server(bench.target_cmd("claudeproxy"), bench.cores.target,
                                              bench.log("other"), cwd=other))
            # The two claudeproxy targets share a name: Bench knows them as "claudeproxy" alike.
            targets = [Target(n, s.port, s.proc.pid) for n, s in zip(("ceiling", "claudeproxy", "claudeproxy"), servers)]
            for t in targets:
                bench.warm_up(t)
            for r in range(args.rounds):
                order = [(r + i) % 3 for i in range(3)]
                for i in (order if r % 2 == 0 else order[::-1]):
                    bench.values.clear()
                    if not args.no_cpu:
                        bench.measure_cpu_per_chunk(targets[i])
                        cpu[NAMES[i]].append(bench.values["cpu_per_1k_chunks"][targets[i].name][-1])
                    if not args.no_ttft:
                        bench.measure_ttft(targets[i])
                        ttft[NAMES[i]].append(bench.values["ttft"][targets[i].name][-1])
                last = cpu if not args.no_cpu else ttft
                print(f"round {r + 1}: " + ", ".join(f"{n} {last[n][-1]:.2f}" for n in NAMES if last[n]),
                      file=sys.stderr, flush=True)
        finally:
            for server in servers:
                procs.stop(server.proc)
            assert bench.upstream is not None
            procs.stop(bench.upstream.proc)
    if not args.no_cpu:
        _print_cpu(cpu, args.rounds, args.streams, chunks, pause)
    if not args.no_ttft:
        ratios = [a / b for a, b in zip(ttft["this"], ttft["other"]) if b]
        print("first text delta (ms), median of each round's 20 samples:")
        for n in NAMES:
            print(f"  {n:8} median {_median(ttft[n]):5.2f}   {' '.join(f'{x:.2f}' for x in ttft[n])}")
        print(f"  this/other median {_median(ratios):.3f} ({sum(x < 1 for x in ratios)} of {len(ratios)} rounds sooner)")
    for warning in bench.warnings:
        print(f"warning: {warning}")


def _print_cpu(cpu: Dict[str, List[float]], rounds: int, streams: int, chunks: int, pause: int) -> None:
    ratios = [a / b for a, b in zip(cpu["this"], cpu["other"]) if b]
    print(f"CPU per 1,000 chunks (ms), {rounds} rounds of {streams} streams x {chunks} chunks {pause} ms apart:")
    for n in NAMES:
        print(f"  {n:8} median {_median(cpu[n]):6.1f}   {' '.join(f'{x:.1f}' for x in cpu[n])}")
    print(f"  this/other per round: {' '.join(f'{x:.3f}' for x in ratios)}")
    print(f"  this/other median {_median(ratios):.3f} ({sum(x < 1 for x in ratios)} of {len(ratios)} rounds cheaper); "
          f"x ceiling: this {_median(cpu['this']) / _median(cpu['ceiling']):.2f}, "
          f"other {_median(cpu['other']) / _median(cpu['ceiling']):.2f}")


if __name__ == "__main__":
    main()
