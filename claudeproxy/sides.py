"""What the pipeline and the relay ask of the HTTP side facing the client: protocols, no code.

``handler.MessagesHandler`` and ``handler.ResponseWriter`` are what fits them. The handler calls
the pipeline's endpoints and the pipeline writes through the handler's writer; these types let
both be named without either module importing the other.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Tuple

Headers = Iterable[Tuple[str, str]]


class ClientRequestSide(Protocol):
    """The request as the handler read it."""

    connection: socket.socket
    headers: Any  # the request's header fields (case-insensitive ``get``)
    path: str

    @property
    def route_path(self) -> str: ...

    @property
    def query(self) -> str: ...

    def read_json_body(self) -> Any: ...


class Writer(Protocol):
    """The response to one request: a JSON or raw answer, or a stream of events."""

    request_id: str
    status: Optional[int]
    last_write: float

    @property
    def started(self) -> bool: ...

    def json(self, status: int, payload: Any, headers: Headers = ()) -> None: ...

    def raw(self, status: int, headers: List[Tuple[str, str]], body: bytes) -> None: ...

    def start_stream(self, headers: Headers = ()) -> None: ...

    def events(self, events: List[Dict[str, Any]], end: bool = False) -> None: ...

    def end_stream(self) -> None: ...


# An endpoint: what answers one method and path (health, messages, ...), given the request and its writer.
Endpoint = Callable[[ClientRequestSide, Writer], None]
