"""``python -m claudeproxy``: run the proxy from the command line."""

from .commands import main
from .malloc import fewer_arenas

if __name__ == "__main__":
    fewer_arenas()  # the process is the proxy's own: a thread per connection, fewer arenas (malloc.py)
    raise SystemExit(main())
