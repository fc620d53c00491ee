"""Whether each upstream takes connections now, said once at start (does I/O).

A client retries the proxy's 502s without a word (Claude Code for minutes), so a mistyped URL
or a server not started yet is said where the person starting the proxy looks: on the terminal
before ``run`` starts its command, or in the server's log just after it listens. Nothing is
tried through an outbound proxy (it would have to be asked), nor said for an upstream that is
only slow: the wait is bounded.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Sequence
from urllib.parse import urlsplit

from .config import Config
from .redact import redact_text, redact_url

PROBE_SECONDS = 1.5  # the longest wait to learn whether the upstreams take connections


def unreachable_upstreams(urls: Iterable[str], config: Config, secrets: Sequence[str],
                          connect: Callable[..., Any] = socket.create_connection) -> List[str]:
    """One line for each upstream URL that refuses a connection now, or whose name does not resolve."""
    if config.proxy or config.use_env_proxy:
        return []
    found: Dict[str, str] = {}

    def probe(url: str, host: str, port: int) -> None:
        try:
            connect((host, port), timeout=PROBE_SECONDS).close()
        except (ConnectionRefusedError, socket.gaierror) as exc:
            found[url] = exc.strerror or type(exc).__name__
        except OSError:
            pass  # slow, or something a retry may get past: not worth a word

    threads = []
    for url in urls:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        threads.append(threading.Thread(target=probe, args=(url, parts.hostname or "", port), daemon=True))
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + PROBE_SECONDS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [redact_text(f"cannot connect to the upstream {redact_url(url)} ({why}): requests to it will fail", secrets)
            for url, why in sorted(found.items())]
