"""The byte-forwarding ceiling: the best a ThreadingHTTPServer + http.client proxy can do (does I/O).

    python bench/ceiling.py --upstream http://127.0.0.1:PORT [--ca-bundle CERT]

Prints ``ceiling listening on http://127.0.0.1:PORT -> URL`` and serves until killed.

It is claudeproxy's design with all of claudeproxy's work taken out: the same server
(``ThreadingHTTPServer``, a thread per client connection, keep-alive, ``TCP_NODELAY``)
and the same client library (``http.client``), but no JSON, no translation, no
logging. A POST goes to the upstream at the same path with the same body, over one
kept-alive upstream connection per client connection; the answer comes back byte for
byte: a sized body in one write, a chunked one relayed piece by piece as it arrives,
one write per piece. Whatever claudeproxy spends beyond this is its own work.
"""

from __future__ import annotations

import argparse
import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import urlsplit

FORWARDED = ("Content-Type", "Authorization", "Accept")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default of 5 drops bursts of 64 connections


class Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    upstream_conn: Optional[http.client.HTTPConnection] = None

    def log_message(self, *args: Any) -> None:
        pass

    def finish(self) -> None:
        if self.upstream_conn is not None:
            self.upstream_conn.close()
        super().finish()

    def _connection(self) -> http.client.HTTPConnection:
        if self.upstream_conn is None:
            make = self.server.make_connection  # type: ignore[attr-defined]
            self.upstream_conn = make()
        return self.upstream_conn

    def _call(self, body: bytes) -> http.client.HTTPResponse:
        """POST upstream on the kept connection; once more on a fresh one if it had gone stale."""
        headers = {k: v for k in FORWARDED for v in [self.headers.get(k)] if v is not None}
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request("POST", self.path, body, headers)
                return conn.getresponse()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.upstream_conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            resp = self._call(body)
        except (OSError, http.client.HTTPException):
            self._send(502, "application/json", b'{"error": "upstream unreachable"}')
            return
        ctype = resp.getheader("Content-Type", "application/octet-stream")
        if resp.chunked:
            self._relay(resp, ctype)
        else:
            self._send(resp.status, ctype, resp.read())

    def _head(self, status: int, ctype: str, framing: str) -> bytes:
        return (f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
                f"Content-Type: {ctype}\r\n{framing}\r\n\r\n").encode("latin-1")

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.wfile.write(self._head(status, ctype, f"Content-Length: {len(body)}") + body)

    def _relay(self, resp: http.client.HTTPResponse, ctype: str) -> None:
        """Head at once, then each piece the upstream sends as one chunk, one write each."""
        self.wfile.write(self._head(resp.status, ctype, "Transfer-Encoding: chunked"))
        while True:
            data = resp.read1(65536)
            if not data:
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.write(b"0\r\n\r\n")


def connection_factory(url: str, ca_bundle: Optional[str]) -> Any:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    if parts.scheme == "https":
        import ssl  # only here: the plain ceiling should not pay for importing it at start
        context = ssl.create_default_context(cafile=ca_bundle)
        return lambda: http.client.HTTPSConnection(host, port, timeout=60, context=context)
    return lambda: http.client.HTTPConnection(host, port, timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="upstream origin, e.g. http://127.0.0.1:8000")
    parser.add_argument("--ca-bundle", help="CA certificates for an https upstream")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = Server(("127.0.0.1", args.port), Relay)
    server.make_connection = connection_factory(args.upstream, args.ca_bundle)  # type: ignore[attr-defined]
    print(f"ceiling listening on http://127.0.0.1:{server.server_address[1]} -> {args.upstream}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
