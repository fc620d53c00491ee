"""``python -m claudeproxy``: run the proxy from the command line."""

from .commands import process_main

if __name__ == "__main__":
    raise SystemExit(process_main())
