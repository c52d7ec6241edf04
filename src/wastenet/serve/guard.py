"""Who may reach the service, and who may change what it stored.

Two rules, both checked here and nowhere else:

- **Host**: every request must name this server in its ``Host`` header: an IP address
  (what a browser sends when it was pointed at one), ``localhost``, the host the server was
  bound to, or a name given with ``--allowed-host``. A page on another domain that re-points
  its DNS name at this machine (DNS rebinding) sends its own name, and gets 403.
- **Review**: reading the review queue and its stored photos needs the review token
  (``Authorization: Bearer TOKEN``, :func:`token_refusal`); a request that changes stored data
  (relabelling) also needs ``Content-Type: application/json`` and, when the browser sends an
  ``Origin``, an origin whose host is the request's ``Host`` (no cross-site forms, not even
  from a page on another IP address).

::

    guard = HostGuard(bound_host="0.0.0.0", allowed=["bin-3.local"])
    guard.allows("192.168.1.20:8000"), guard.allows("evil.example")    # (True, False)
    review_refusal(headers, token="s3cret", guard=guard)    # None, or (status, message)
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from typing import Iterable, Mapping
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from wastenet.serve.body_limit import json_error

__all__ = ["HostGuard", "HostCheckMiddleware", "new_review_token", "review_refusal", "token_refusal", "host_name"]

_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain"})
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def new_review_token() -> str:
    """A fresh random review token (URL-safe, 32 characters)."""
    return secrets.token_urlsafe(24)


def host_name(value: str | None) -> str | None:
    """The host part of a ``Host`` header value, lower case, without port or brackets.

    >>> host_name("[::1]:8000"), host_name("Bin-3.Local.:80"), host_name("10.0.0.2")
    ('::1', 'bin-3.local', '10.0.0.2')
    """
    if not value:
        return None
    value = value.strip().lower()
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        return value[1:end] if end > 0 else None
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".") or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class HostGuard:
    """Decides whether a ``Host`` (or ``Origin``) names this server."""

    def __init__(self, bound_host: str | None = None, allowed: Iterable[str] = ()) -> None:
        names = set(_LOCAL_NAMES)
        if bound_host and bound_host not in _WILDCARD_HOSTS:
            names.add(host_name(bound_host) or "")
        names.update(host_name(a) or "" for a in allowed)
        names.discard("")
        self.names = frozenset(names)

    def allows(self, host_header: str | None) -> bool:
        name = host_name(host_header)
        # an IP literal cannot be a rebound DNS name; names must be known
        return name is not None and (_is_ip(name) or name in self.names)

    def allows_origin(self, origin: str, host_header: str | None) -> bool:
        """Whether a browser's ``Origin`` is this very page: its host must be the request's
        ``Host`` exactly (the port may differ behind a proxy). Not the Host rule itself: "any IP
        address" would let a page on ``http://10.9.9.9`` through (PITFALLS "IP-literal Origins").

        >>> g = HostGuard()
        >>> g.allows_origin("http://127.0.0.1:8000", "127.0.0.1:8000"), g.allows_origin("http://10.9.9.9", "127.0.0.1:8000")
        (True, False)
        """
        try:
            parts = urlsplit(origin.strip())
        except ValueError:
            return False
        name = host_name(parts.netloc)
        return (parts.scheme in ("http", "https") and name is not None and name == host_name(host_header)
                and self.allows(host_header))


class HostCheckMiddleware:
    """Answer 403 JSON to any HTTP request whose ``Host`` header does not name this server."""

    def __init__(self, app: ASGIApp, guard: HostGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None)
            if not self.guard.allows(host):
                hint = "; start the server with --allowed-host NAME to accept it" if host else ""
                await json_error(403, f"unknown Host header {host!r}{hint}")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def token_refusal(headers: Mapping[str, str], token: str) -> tuple[int, str] | None:
    """``(401, message)`` unless ``headers`` carry ``Authorization: Bearer <token>``; else None."""
    scheme, _, given = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return 401, "review needs the review token: Authorization: Bearer TOKEN (printed by `wastenet serve`)"
    return None


def review_refusal(headers: Mapping[str, str], token: str, guard: HostGuard) -> tuple[int, str] | None:
    """Why a data-changing request must be refused, as ``(status, message)``; None when it may go on.

    ``headers`` is case-insensitive (Starlette's ``request.headers``).
    """
    origin = headers.get("origin")
    if origin is not None and not guard.allows_origin(origin, headers.get("host")):
        return 403, f"cross-origin request refused (Origin {origin!r})"
    refused = token_refusal(headers, token)
    if refused is not None:
        return refused
    ctype = (headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        return 415, "review requests must be Content-Type: application/json"
    return None
