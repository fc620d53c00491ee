"""The one frozen settings object every part of the proxy is given.

No I/O and no environment reads here: ``cli.py`` resolves flags and environment
variables into a ``Config``; library callers build one directly.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple

# A token source returns the upstream credential each time it is called, so a
# caller can plug in a refresher (OAuth, vault) instead of a static key.
TokenSource = Callable[[], str]

DEFAULT_UPSTREAM = "https://api.openai.com/v1"


def static_token(key: str) -> TokenSource:
    """A token source that always returns ``key`` (may be empty: no auth header)."""

    def token() -> str:
        return key

    return token


def _no_token() -> str:
    return ""


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a running proxy needs to know. Defaults are the documented ones."""

    upstream: str = DEFAULT_UPSTREAM
    token: TokenSource = _no_token
    host: str = "127.0.0.1"
    port: int = 0
    # Upstream model for every request; None passes the client's model through.
    model: Optional[str] = None
    # (fnmatch pattern, upstream model) pairs, first match wins, before ``model``.
    model_map: Tuple[Tuple[str, str], ...] = ()
    # Provider dialect name (see dialects.py); None = detect from the upstream URL.
    provider: Optional[str] = None
    headers: Tuple[Tuple[str, str], ...] = ()
    proxy: Optional[str] = None
    use_env_proxy: bool = False
    ca_bundle: Optional[str] = None
    # Forward Anthropic requests unchanged to an Anthropic-compatible upstream.
    passthrough: bool = False
    # Cap for the upstream max_tokens (Claude Code asks for 32k-128k).
    max_output_tokens: Optional[int] = None
    # Azure OpenAI query parameter.
    azure_api_version: str = "2024-10-21"
    # Clients must present this key (x-api-key or Bearer) when set.
    auth_key: Optional[str] = None
    allowed_hosts: Tuple[str, ...] = ()
    allowed_origins: Tuple[str, ...] = ()
    # Timeouts in seconds.
    connect_timeout: float = 10.0
    idle_timeout: float = 300.0
    request_timeout: float = 600.0
    client_timeout: float = 30.0
    client_request_deadline: float = 60.0
    ping_interval: float = 10.0
    # Finalize a stream this long after finish_reason when nothing else arrives.
    finish_grace: float = 5.0
    shutdown_grace: float = 5.0
    # Limits.
    max_body_bytes: int = 32 * 1024 * 1024
    max_line_bytes: int = 1024 * 1024
    max_concurrency: int = 256
    # Log every request and response body (redacted) at DEBUG.
    log_bodies: bool = False

    def replace(self, **changes: object) -> "Config":
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
