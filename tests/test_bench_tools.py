"""The bench's tools name functions of the package by their paths: a rename must not break them.

``bench/functions.py`` (README "Performance": where a request's CPU goes) stopped at its start for a
round after the log filter's class was renamed (``cli._RedactingFilter``). Not the bench itself,
which is not part of the test run: only that what it names is there.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _default_functions() -> tuple:
    sys.path.insert(0, BENCH)
    try:
        import functions  # bench/functions.py

        return functions.DEFAULT
    finally:
        sys.path.remove(BENCH)


@pytest.mark.parametrize("spec", _default_functions())
def test_every_function_the_bench_times_is_there(spec: str) -> None:
    module, _, path = spec.partition(":")
    owner = importlib.import_module("claudeproxy." + module)
    for part in path.split("."):
        owner = getattr(owner, part)
    assert callable(owner), spec
