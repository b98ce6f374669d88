"""Connection bounds for uvicorn's HTTP protocol: at most ``max_connections`` open connections (more are
answered 503 and closed at once), and connections that never finish their request headers are
closed (slowloris). Bodies that stall are dropped by ``app.BodyLimitMiddleware``; idle keep-alive
connections by uvicorn's own ``timeout_keep_alive``.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol


def busy_response(max_connections: int) -> bytes:
    body = json.dumps({"detail": f"busy: {max_connections} connections are open, the limit; retry later"}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def guarded_protocol(header_timeout_s: float, max_connections: int,
                     base: type[asyncio.Protocol] = AutoHTTPProtocol) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's HTTP protocol) bounded: a connection beyond ``max_connections`` open ones gets a
    JSON 503 and is closed; one whose request headers are not complete within ``header_timeout_s`` of its
    opening (or of the first byte of its next request) is closed."""
    busy = busy_response(max_connections)

    class GuardedProtocol(base):  # type: ignore[valid-type,misc]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(busy)
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing():
                return
            super().data_received(data)
            if self._in_request():
                self._disarm()  # headers complete: the request's body and answer have their own bounds
            elif self._header_timer is None:
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _in_request(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return cycle is not None and not cycle.response_complete

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if not self._in_request() and not self.transport.is_closing():
                self.transport.close()

    GuardedProtocol.__name__ = GuardedProtocol.__qualname__ = f"Guarded{base.__name__}"
    return GuardedProtocol
