"""The program's entry point: ``claudeproxy run ...`` goes to the launcher, anything else to the proxy.

Its own module so that ``cli`` and ``launcher`` do not import each other: the launcher
builds on ``cli``'s parser and settings, and this module dispatches to both.
"""

from __future__ import annotations

import os
import sys
from typing import List, Mapping, Optional, TextIO

from . import cli
from .malloc import fewer_arenas
from .open_files import more_open_files


def main(argv: Optional[List[str]] = None, environ: Optional[Mapping[str, str]] = None,
         stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    """``claudeproxy [options]`` (``cli.main``) or ``claudeproxy run [options] -- COMMAND`` (``launcher.run_main``)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["run"]:
        from . import launcher  # only ``run`` needs it: the proxy alone starts without

        return launcher.run_main(args[1:], os.environ if environ is None else environ,
                                 stdout or sys.stdout, stderr or sys.stderr)
    if "run" in args and args[args.index("run") + 1:][:1] == ["--"]:
        # "claudeproxy --upstream URL run -- claude": argparse said "unrecognized arguments: run -- claude".
        print("claudeproxy: error: run comes first: claudeproxy run [options] -- COMMAND", file=stderr or sys.stderr)
        return 2
    return cli.main(args, environ, stdout, stderr)


def process_main() -> int:
    """The entry point of a process that is the proxy's own: ``python -m claudeproxy``, the zipapp,
    the installed ``claudeproxy`` command. It has a thread per connection, so it asks for fewer
    malloc arenas (``malloc.py``) before ``main``; a program calling ``main`` keeps its allocator."""
    try:
        fewer_arenas()
        more_open_files()  # a connection is a file: the shell's usual 1,024 held the cap short (open_files.py)
        return main()
    except KeyboardInterrupt:
        # Ctrl-C before the signal handlers are in place (the first tenth of a second): stopped,
        # as after it, but with the shell's status for an interrupt, not a traceback.
        return 130
