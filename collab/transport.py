"""How a tier reaches the tier above: in process, or over HTTP (the client side)."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Protocol

from famflow.collab.codec import ProtocolError
from famflow.familial.errors import FamflowError

HIDDEN_PATH = "/v1/hidden"
CONTENT_TYPE = "application/octet-stream"


class Handler(Protocol):
    def handle(self, payload: bytes) -> bytes: ...


class Transport(Protocol):
    def exchange(self, payload: bytes) -> bytes:
        """Send one request frame, return the reply frame."""
        ...


class LocalTransport:
    """The tier above lives in this process: the frames still go through the codec."""

    def __init__(self, tier: Handler) -> None:
        self.tier = tier

    def exchange(self, payload: bytes) -> bytes:
        return self.tier.handle(payload)


class HttpTransport:
    """The tier above is a ``TierService``; ``timeout`` bounds every exchange (seconds)."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/") + HIDDEN_PATH
        self.timeout = timeout

    def exchange(self, payload: bytes) -> bytes:
        request = urllib.request.Request(
            self.url, data=payload, method="POST", headers={"Content-Type": CONTENT_TYPE}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            reason = error.read().decode("utf-8", "replace").strip() or error.reason
            if error.code == 400:
                raise ProtocolError(f"{self.url} refused the request: {reason}") from None
            raise FamflowError(f"{self.url} failed ({error.code}): {reason}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            raise FamflowError(
                f"Cannot reach the tier at {self.url} ({error}): start its service or fix the URL."
            ) from None
