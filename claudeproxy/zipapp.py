"""``python -m claudeproxy.zipapp [OUT]``: build claudeproxy.pyz, the whole proxy in one file.

I/O: copies the package into a temp folder and writes the archive. The result
runs on any Python 3.8+ with nothing installed: ``python claudeproxy.pyz
--upstream URL`` or ``python claudeproxy.pyz run ... -- claude`` behave like
``python -m claudeproxy``. The package is pure Python and reads no files of its
own, so it runs from inside the zip.

``import zipapp`` below is the standard library's: absolute imports never
resolve to this file, since the package folder is not on ``sys.path`` (the
file is not meant to be run as ``python claudeproxy/zipapp.py``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import zipapp
from typing import List, Optional

# The archive's entry point: what ``python -m claudeproxy`` runs (``process_main``), its status the exit status
# (zipapp's own ``-m pkg.mod:fn`` template drops the return value).
# Ctrl-C while the modules load (a renamed archive, which the package's own check does not know):
# stopped with the shell's status for an interrupt, no traceback.
# An older Python gets the package's one line, not the ImportError's traceback (argv[0] is the archive here).
_MAIN = ("import sys\n\nif sys.version_info < (3, 8):\n"
         "    sys.stderr.write('claudeproxy: error: claudeproxy needs Python 3.8 or newer; this is Python '"
         " + sys.version.split()[0] + '\\n')\n    sys.exit(2)\n\ntry:\n    from {package}.commands import process_main\nexcept KeyboardInterrupt:\n"
         "    sys.exit(130)\n\nsys.exit(process_main())\n")
DEFAULT_INTERPRETER = "/usr/bin/env python3"


def build(target: str, interpreter: Optional[str] = DEFAULT_INTERPRETER) -> str:
    """Write the archive to ``target`` (made executable when ``interpreter`` is given); returns ``target``."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    package = os.path.basename(package_dir)
    with tempfile.TemporaryDirectory(prefix="claudeproxy-pyz-") as staging:
        shutil.copytree(package_dir, os.path.join(staging, package),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
        with open(os.path.join(staging, "__main__.py"), "w", encoding="utf-8") as fh:
            fh.write(_MAIN.format(package=package))
        zipapp.create_archive(staging, target, interpreter=interpreter, compressed=True)
    return target


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m claudeproxy.zipapp",
                                     description="Build a single-file claudeproxy (a Python zip application).")
    parser.add_argument("out", nargs="?", default="claudeproxy.pyz", help="the file to write (default: %(default)s)")
    parser.add_argument("--python", default=DEFAULT_INTERPRETER, metavar="INTERPRETER",
                        help="the #! line's interpreter (default: %(default)s; '' for none)")
    args = parser.parse_args(argv)
    try:
        build(args.out, args.python or None)
    except OSError as exc:
        print(f"claudeproxy.zipapp: error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes); run it as: python3 {args.out} --help")
    return 0


if __name__ == "__main__":
    sys.exit(main())
