"""Middleware for a proxy in front of clipserve replicas (Ray Serve's HTTP proxy): a request whose
replica died before answering gets a clear 503, never a bare 500 or a hang."""

from __future__ import annotations

import logging

from clipserve.server.guard import SERVED_BY_HEADER, error_response

PROXY_LOG = logging.getLogger("ray.serve")
"""Ray's own logger in its proxy: what the middleware says lands in the proxy's log."""


class ReplicaLossAs503:
    """Middleware of Ray Serve's HTTP proxy: a request whose replica died before answering gets a
    clear ``503`` with ``Retry-After`` (clipserve's clients retry it), never a bare 500 or a hang.

    When a replica dies, Ray's proxy ends the requests it held without an answer (its server then
    sends ``500 Internal Server Error``), answers 500 itself, or, for a request caught in the
    reassignment, answers nothing until Ray's ``request_timeout_s`` (then 408). Every answer of
    clipserve's app carries ``x-clipserve-model``: a 500 or 408 without it, or no answer at all, is
    the proxy's. Ray installs this middleware in its proxy from the variable of :data:`PROXY_ENV`,
    which must be in the environment of the Ray job that starts Serve
    (``ray.init(runtime_env={"env_vars": PROXY_ENV})``, as ``clipserve serve --ray`` does) or of
    the cluster's nodes.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = replaced = False

        async def guarded_send(message) -> None:
            nonlocal started, replaced
            if replaced:
                return  # the rest of the proxy's own answer
            if message["type"] == "http.response.start":
                ours = any(name.lower() == SERVED_BY_HEADER for name, _ in message.get("headers", []))
                if message["status"] in (408, 500) and not ours:
                    replaced = True
                    await self._unavailable(scope, receive, send, message["status"])
                    return
                started = True
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except Exception:
            if started or replaced:
                raise
            replaced = True
            await self._unavailable(scope, receive, send, None)
        if not (started or replaced):
            await self._unavailable(scope, receive, send, None)

    @staticmethod
    async def _unavailable(scope, receive, send, proxy_status: int | None) -> None:
        PROXY_LOG.warning(
            "a request to %s lost its replica (proxy status %s): answering 503", scope["path"], proxy_status
        )
        detail = "the replica handling this request stopped before answering; retry"
        answer = error_response(scope, 503, "ReplicaUnavailable", detail, None)
        answer.headers["Retry-After"] = "1"
        await answer(scope, receive, send)


def proxy_middlewares() -> list:
    """The proxy's middlewares, for Ray's ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``."""
    from starlette.middleware import Middleware

    return [Middleware(ReplicaLossAs503)]
