"""Error and bearer-token middlewares."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import ApiError
from ..keys import STORAGE
from ..tokens import allows, token_hash
from .jsonutil import error_response

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# handler -> the least role that may call it; handlers not listed are public.
REQUIRED_ROLE: dict[Callable[..., object], str] = {}
TOKEN = web.RequestKey("token", dict)


def needs(role: str) -> Callable[[Handler], Handler]:
    """Declare the least role a handler requires."""

    def mark(handler: Handler) -> Handler:
        REQUIRED_ROLE[handler] = role
        return handler

    return mark


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


@web.middleware
async def errors_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes ``{"error": {"code", "message"}}``."""
    try:
        return await handler(request)
    except ApiError as err:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return error_response(err.status, err.code, err.message, headers)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        code = _HTTP_CODES.get(err.status, err.reason.lower().replace(" ", "_"))
        message = {
            404: f"no such resource: {request.path}",
            405: f"method {request.method} not allowed on {request.path}",
        }.get(err.status, err.text or err.reason)
        headers = {k: v for k, v in err.headers.items() if k.lower() == "allow"}
        return error_response(err.status, code, message, headers)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal_error", "internal error (see the hub log)")


@web.middleware
async def auth_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the bearer token against the role the matched route requires."""
    route_handler = request.match_info.route.handler
    needed = REQUIRED_ROLE.get(route_handler)
    if needed is None or request.match_info.http_exception is not None:
        return await handler(request)
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthenticated", "missing bearer token")
    found = await request.app[STORAGE].find_token(token_hash(token.strip()))
    if found is None:
        raise ApiError(401, "unauthenticated", "invalid or revoked token")
    if not allows(found["role"], needed):
        raise ApiError(403, "forbidden", f"this needs the {needed} role; token has {found['role']}")
    request[TOKEN] = found
    return await handler(request)
