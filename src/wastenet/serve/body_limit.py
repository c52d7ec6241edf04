"""An ASGI middleware that refuses request bodies over a size limit (413) before anything parses them.

Generic (any ASGI app)::

    app.add_middleware(BodyLimitMiddleware, limit=10 * 2**20 + MULTIPART_MARGIN)
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimitMiddleware", "MULTIPART_MARGIN", "json_error"]

# Room for the multipart boundary and part headers around the file itself.
MULTIPART_MARGIN = 64 * 1024


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The service's error answer: ``{"error": message}`` with ``status``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413, before anything parses them.

    Checks ``Content-Length`` first (no body is read at all), then counts the bytes as they
    arrive, so a missing or lying header (chunked uploads) cannot get past the limit
    either. The counted body is replayed to the app, which then parses it as usual.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = int(limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await json_error(400, "invalid Content-Length header")(scope, receive, send)
                    return
        if declared is not None and declared > self.limit:
            await self._too_large(scope, receive, send)
            return

        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away: nobody to answer
            body = message.get("body", b"")
            total += len(body)
            if total > self.limit:
                await self._too_large(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break

        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect as usual

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit_mb = (self.limit - MULTIPART_MARGIN) / 2**20
        await json_error(413, f"upload too large: the limit is {limit_mb:g} MB",
                     headers={"Connection": "close"})(scope, receive, send)
