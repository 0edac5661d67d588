"""An edge or cloud tier as a small HTTP service (stdlib ``ThreadingHTTPServer``).

``POST /v1/hidden`` takes a request frame (``famflow.collab.protocol``) and answers with a
reply frame; ``GET /v1/health`` answers ``ok``. A malformed request gets 400 with one
sentence, a failure of the tier above 502. Requests are served one at a time (the tier's
caches are one sequence's state); sockets time out after ``timeout`` seconds.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from famflow.collab.codec import ProtocolError
from famflow.collab.transport import CONTENT_TYPE, HIDDEN_PATH, Handler
from famflow.familial.errors import FamflowError

logger = logging.getLogger("famflow.collab")
MAX_BODY_BYTES = 64 << 20


class TierService:
    """Serve ``tier`` on ``host:port`` (port 0: a free one) in a background thread."""

    def __init__(
        self,
        tier: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout: float = 30.0,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        handler = _handler_class(tier, timeout, max_body_bytes)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> TierService:
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server.server_close()

    def __enter__(self) -> TierService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handler_class(
    tier: Handler, timeout: float, max_body_bytes: int
) -> type[BaseHTTPRequestHandler]:
    class TierRequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            self.timeout = timeout
            super().setup()

        def log_message(self, format: str, *args: object) -> None:
            logger.debug("%s - %s", self.address_string(), format % args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _refuse(self, status: int, sentence: str) -> None:
            self._send(status, sentence.encode() + b"\n", "text/plain; charset=utf-8")

        def do_GET(self) -> None:
            if self.path == "/v1/health":
                self._send(200, b"ok\n", "text/plain; charset=utf-8")
            else:
                self._refuse(404, f"No resource {self.path}: POST frames to {HIDDEN_PATH}.")

        def do_POST(self) -> None:
            if self.path != HIDDEN_PATH:
                self._refuse(404, f"No resource {self.path}: POST frames to {HIDDEN_PATH}.")
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self.close_connection = True
                self._refuse(400, "The request has no valid Content-Length: send the frame's size.")
                return
            if not 0 < length <= max_body_bytes:
                self.close_connection = True
                self._refuse(
                    400, f"The request body is {length} bytes: send 1 to {max_body_bytes} bytes."
                )
                return
            try:
                body = self.rfile.read(length)
            except OSError:  # the socket timed out or the client went away
                self.close_connection = True
                return
            try:
                reply = tier.handle(body)
            except ProtocolError as error:
                self._refuse(400, str(error))
            except FamflowError as error:
                self._refuse(502, str(error))
            except Exception:
                logger.exception("tier failed on a request")
                self._refuse(500, "The tier failed on this request: see its log.")
            else:
                self._send(200, reply, CONTENT_TYPE)

    return TierRequestHandler
