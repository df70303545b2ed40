"""What every request passes before a route sees it: a deadline for its request line and headers (in the
HTTP protocol, before any ASGI code runs), then the API key, the body-size limit and the body's read timeout
(pure ASGI)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Callable

log = logging.getLogger("w2s.serve")


def header_deadline_protocol(seconds: float):
    """uvicorn's h11 protocol, with a deadline for each request's line and headers: a connection that has
    not sent them all within ``seconds`` of opening (or of the first byte of its next request) is closed.
    uvicorn's own timeouts do not cover this (its keep-alive timer is reset by every byte, and ASGI code
    only runs once the headers are in), so one client trickling a byte at a time could hold a connection
    for ever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        _header_timer = None

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if self._between_requests() and not self.transport.is_closing():
                log.warning("closed a connection from %s: its request headers did not all come within %g s",
                            self.client, seconds)
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._between_requests() and self._header_timer is None:
                self._arm()  # the first byte of the next request on a kept-alive connection
            super().data_received(data)
            if not self._between_requests():
                self._disarm()  # its headers are in: the body's timeout (Guard) and the deadline take over

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline


class Guard:
    """Refuse a request without the API key (401), with a body over ``max_body_bytes`` (413), or whose body
    stalls for ``body_timeout`` seconds (408).

    Args:
        api_key: the key clients send as ``Authorization: Bearer KEY``; None: no key is needed.
        open_endpoints: paths reachable without the key.
        max_body_bytes: the largest body read (by ``Content-Length``, and counted as it arrives).
        error: ``(status, message, param, code, type) -> response`` in the API's error schema.
        body_timeout: seconds the body may go without a part arriving.
    """

    def __init__(self, app, *, api_key: str | None, open_endpoints: tuple[str, ...], max_body_bytes: int,
                 error: Callable, body_timeout: float = 30.0):
        self.app, self.api_key, self.open_endpoints = app, api_key, set(open_endpoints)
        self.max_body_bytes, self.error, self.body_timeout = max_body_bytes, error, body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        if self.api_key is not None and scope["path"] not in self.open_endpoints:
            given = headers.get("authorization", "")
            scheme, _, key = given.partition(" ")
            # as bytes: the header's own (latin-1 is byte for byte), the key's (ASCII, checked at start-up)
            sent = key.strip().encode("latin-1")
            if scheme.lower() != "bearer" or not secrets.compare_digest(sent, self.api_key.encode("ascii")):
                what = "no API key was given" if not given else "the API key is not valid"
                return await self.error((401, f"{what}; send Authorization: Bearer KEY.", None, "invalid_api_key",
                                         "authentication_error"))(scope, receive, send)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return await self._too_large(scope, receive, send)
        # the body is read here, up to the limit, and handed on whole: a route never sees a larger one
        chunks, size, more = [], 0, scope["method"] in ("POST", "PUT", "PATCH")
        while more:
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except asyncio.TimeoutError:  # a slow or stalled client does not hold a connection for ever
                return await self.error((408, f"no part of the request body came for {self.body_timeout:g} s.",
                                         None, "body_timeout", "invalid_request_error"))(scope, receive, send)
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return await self._too_large(scope, receive, send)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # then the client's disconnect, when it comes

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        response = self.error((413, f"the request body is larger than this server's limit of {self.max_body_bytes} "
                                    "bytes.", None, "body_too_large", "invalid_request_error"))
        await response(scope, receive, send)
