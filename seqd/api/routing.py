"""The route table: each handler declares method, path, body, query and responses once.

The app is built from this table and so is the OpenAPI document, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from seqd.config import Config

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type | None = None
    query: type | None = None
    # status -> response Struct (None: no body)
    responses: dict[int, type | None] = field(default_factory=dict)
    # error statuses this route can answer besides 401/422/500
    errors: tuple[int, ...] = ()
    auth: bool = True
    body_content_type: str = "application/json"
    # Mounted at the server root, not under http.base_path (health, metrics).
    root: bool = False
    # Served only when this says so for the config (e.g. /metrics not on a separate listener).
    when: Callable[[Config], bool] | None = None
    # Statuses answered with a text body instead of JSON or problem+json: status -> media
    # type (the unsubscribe pages' text/html, the metrics' text/plain), or several
    # comma-separated when the request picks one (an export's NDJSON or CSV).
    media: dict[int, str] = field(default_factory=dict)

    def full_path(self, base_path: str) -> str:
        return self.path if self.root else base_path + self.path

    def served(self, config: Config) -> bool:
        return self.when is None or self.when(config)


ROUTES: list[Route] = []


def route(
    method: str,
    path: str,
    *,
    summary: str,
    tag: str,
    responses: dict[int, type | None],
    body: type | None = None,
    query: type | None = None,
    errors: tuple[int, ...] = (),
    auth: bool = True,
    body_content_type: str = "application/json",
    root: bool = False,
    when: Callable[[Config], bool] | None = None,
    media: dict[int, str] | None = None,
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ROUTES.append(
            Route(
                method,
                path,
                handler,
                summary,
                tag,
                body,
                query,
                responses,
                errors,
                auth,
                body_content_type,
                root,
                when,
                media or {},
            )
        )
        handler.seqd_auth = auth  # type: ignore[attr-defined]
        return handler

    return register


def requires_auth(handler: Any) -> bool:
    return bool(getattr(handler, "seqd_auth", True))
