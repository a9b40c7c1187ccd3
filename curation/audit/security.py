"""The browser's guards: files only from under the run directory, a token off loopback, no
caching of untrusted content as something else, and headers that keep any text inert.

The app is read-only by construction (every route is GET/HEAD); these are the pieces that stand
between a request and the filesystem or another user's browser.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path, PurePosixPath

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

TOKEN_COOKIE = "curate_browse_token"

# Pages: no script at all, images and styles only from this app.
PAGE_CSP = ("default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")
# Files from the run (the static report has inline CSS): still no script of any kind.
FILE_CSP = "default-src 'none'; img-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def file_under(root: Path, requested: str) -> Path | None:
    """The regular file `requested` names under `root`, or None.

    Refused: empty or absolute paths, any `..` or backslash, NUL, and anything whose real path
    (symlinks followed) is outside `root`'s real path, e.g. a symlink in the run pointing out.
    `requested` is the already URL-decoded path, so `%2e%2e%2f` arrives here as `../`.
    """
    if not requested or "\x00" in requested or "\\" in requested or requested.startswith("/"):
        return None
    parts = PurePosixPath(requested).parts
    if any(p in ("..", ".") or ":" in p for p in parts):
        return None
    real_root = root.resolve()
    try:
        real = real_root.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_relative_to(real_root) or not real.is_file():
        return None
    return real


class TokenGuard(BaseHTTPMiddleware):
    """Off loopback every request needs the token printed at start: `?token=` once (it is then
    kept in an HttpOnly, SameSite=Strict cookie), the cookie, or `Authorization: Bearer`."""

    def __init__(self, app, token: str | None):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if self.token is None:
            return await call_next(request)
        offered = (request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE)
                   or request.headers.get("authorization", "").removeprefix("Bearer ").strip())
        if not offered or not hmac.compare_digest(offered.encode(), self.token.encode()):
            return PlainTextResponse("401: this curate browse server needs its token (printed when it started): "
                                     "open the URL it printed, or send Authorization: Bearer <token>", status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
        return response


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy",
                                    FILE_CSP if request.url.path.startswith("/files/") else PAGE_CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cache-Control"] = "no-store" if response.media_type == "text/html" else "private, max-age=60"
        return response


def new_token() -> str:
    import secrets

    return os.environ.get("CURATE_BROWSE_TOKEN") or secrets.token_urlsafe(24)
