"""Who may talk to the service: a Host allow-list, an optional token, no cross-origin state changes.

``AccessMiddleware`` checks every HTTP request, before any route runs:

1. the ``Host`` header names an allowed host (default: the loopback names), so a page on
   another site that re-points its DNS name at this machine (DNS rebinding) is refused;
2. a state-changing request (``POST``, ``PUT``, ``PATCH``, ``DELETE``) coming from a browser
   page of another origin is refused: its ``Origin`` must name this server's host, and
   ``Sec-Fetch-Site`` (sent by browsers) must not be ``cross-site`` or ``same-site``; so a
   cross-origin HTML form cannot make the service work for it;
3. when a token is set, every route except the search page and its static files needs it,
   as ``Authorization: Bearer <token>`` (API clients) or the ``cirlab_token`` cookie (the
   page sets it, ``SameSite=Strict``); the comparison takes constant time.

Every refusal is JSON ``{"detail": ...}``.
"""
from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

#: the environment variable ``cirlab serve`` reads the token from
TOKEN_ENV = "CIRLAB_SERVE_TOKEN"
TOKEN_COOKIE = "cirlab_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: methods that may change state, refused when they come from another origin
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: routes the search page needs before it has a token (it has no data in it)
PUBLIC_PATHS = ("/", "/static/")


def host_name(value: str) -> str:
    """The host of a ``Host`` header or URL netloc, without port and brackets, lower-cased."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def is_loopback(host: str) -> bool:
    name = host_name(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeAccess:
    """Who may use the service.

    ``allowed_hosts``: host names (or addresses) the ``Host`` header may carry; ``"*"``
    allows any. ``token``: when set, requests must carry it (see the module docstring).
    """

    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES
    token: str | None = None
    _hosts: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            raise ValueError("the token is empty")
        object.__setattr__(self, "_hosts", frozenset(host_name(h) if h != "*" else h for h in self.allowed_hosts))

    @classmethod
    def for_bind(cls, host: str, token: str | None = None, extra_hosts: tuple[str, ...] = ()) -> "ServeAccess":
        """Access for a server bound to ``host``: that host, the loopback names and ``extra_hosts``."""
        names = [*LOOPBACK_NAMES]
        if host and host not in ("0.0.0.0", "::", ""):
            names.append(host)
        return cls(allowed_hosts=tuple(dict.fromkeys([*names, *extra_hosts])), token=token or None)

    @property
    def hosts(self) -> list[str]:
        """The allowed host names, normalised (lower case, no port or brackets)."""
        return sorted(self._hosts)

    def host_allowed(self, host: str) -> bool:
        return "*" in self._hosts or host_name(host) in self._hosts

    def token_ok(self, given: str | None) -> bool:
        if self.token is None:
            return True
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


def exposure_warning(host: str, token: str | None) -> str | None:
    """The warning to print when the service listens beyond this machine, else ``None``."""
    if is_loopback(host):
        return None
    lines = [f"WARNING: cirlab serve is listening on {host}, reachable from other machines."]
    if not token:
        lines.append("WARNING: no token is set: anyone who can reach this address can search and read every "
                     "gallery image. Set one with --token-file or $" + TOKEN_ENV + ".")
    lines.append("WARNING: traffic is plain HTTP; put a TLS reverse proxy in front (see docs/serve.md, "
                 "'Exposing the service') and list its host name with --allowed-hosts.")
    return "\n".join(lines)


def _header(scope: dict, name: bytes) -> str | None:
    for k, v in scope.get("headers") or []:
        if k == name:
            return v.decode("latin-1")
    return None


def _cookie(scope: dict, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return unquote(v)
    return None


def refusal(scope: dict, access: ServeAccess) -> tuple[int, str, dict[str, str]] | None:
    """``(status, message, headers)`` if the request in ``scope`` must be refused, else ``None``."""
    host = _header(scope, b"host") or ""
    if not access.host_allowed(host):
        return 400, (f"Host {host!r} is not served here (allowed: {', '.join(access.hosts)}); "
                     "a server reached under another name is started with --allowed-hosts NAME"), {}
    if scope["method"] in UNSAFE_METHODS:
        site = (_header(scope, b"sec-fetch-site") or "").lower()
        if site in ("cross-site", "same-site"):
            return 403, f"cross-origin {scope['method']} refused (Sec-Fetch-Site: {site})", {}
        origin = _header(scope, b"origin")
        if origin is not None:
            netloc = urlsplit(origin).netloc if origin != "null" else ""
            if not netloc or netloc.lower() != host.lower():
                return 403, (f"cross-origin {scope['method']} refused: Origin {origin!r} is not this server "
                             f"({host!r})"), {}
    path = scope.get("path", "")
    if access.token is not None and not (path == "/" or path.startswith(PUBLIC_PATHS[1])):
        auth = _header(scope, b"authorization") or ""
        scheme, _, given = auth.partition(" ")
        token = given.strip() if scheme.lower() == "bearer" else _cookie(scope, TOKEN_COOKIE)
        if not access.token_ok(token):
            return 401, ("this server needs a token: send 'Authorization: Bearer <token>' "
                         "(the search page asks for it)"), {"www-authenticate": "Bearer"}
    return None


class AccessMiddleware:
    def __init__(self, app: Any, access: ServeAccess) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            refused = refusal(scope, self.access)
            if refused is not None:
                from starlette.responses import JSONResponse

                status, message, headers = refused
                await JSONResponse({"detail": message}, status_code=status, headers=headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)
