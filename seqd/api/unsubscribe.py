"""One-click unsubscribe (RFC 8058): /unsubscribe/{token}, no API key (the token is signed).

Mailbox providers POST `List-Unsubscribe=One-Click` (form-encoded) to the URL of the
`List-Unsubscribe` header; people who open the link in a browser GET a page whose button
POSTs the same. A GET never unsubscribes: link scanners and previews fetch URLs.
"""

from __future__ import annotations

import html

import msgspec
from aiohttp import web

from seqd.api.routing import route
from seqd.api.wire import read_form
from seqd.appkeys import CONFIG, STORE
from seqd.errors import BadRequest, NotFound
from seqd.lifecycle import unsubscribe

TAG = "unsubscribe"
ONE_CLICK = "One-Click"


class OneClick(msgspec.Struct, kw_only=True):
    """RFC 8058's POST body."""

    list_unsubscribe: str = msgspec.field(name="List-Unsubscribe")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font:inherit;padding:.5rem 1.25rem;cursor:pointer}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = _PAGE.format(title=html.escape(title), body=body)
    return web.Response(text=text, status=status, content_type="text/html")


async def _claims(request: web.Request) -> unsubscribe.Claims | None:
    secret = await unsubscribe.signing_secret(request.app[CONFIG], request.app[STORE])
    return unsubscribe.verify(secret, request.match_info["token"])


@route(
    "GET",
    "/unsubscribe/{token}",
    summary="Unsubscribe page: a confirm button; never unsubscribes by itself",
    tag=TAG,
    responses={200: None},
    errors=(404,),
    auth=False,
    media={200: "text/html", 404: "text/html"},
)
async def unsubscribe_page(request: web.Request) -> web.Response:
    claims = await _claims(request)
    if claims is None:
        return _page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 404)
    form = (
        f"<p>Stop emails to <strong>{html.escape(claims.email)}</strong>?</p>"
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'
    )
    return _page("Unsubscribe", form)


@route(
    "POST",
    "/unsubscribe/{token}",
    summary="One-click unsubscribe (RFC 8058): body List-Unsubscribe=One-Click",
    tag=TAG,
    body=OneClick,
    body_content_type="application/x-www-form-urlencoded",
    responses={200: None},
    errors=(404,),
    auth=False,
    media={200: "text/html"},
)
async def unsubscribe_one_click(request: web.Request) -> web.Response:
    claims = await _claims(request)
    if claims is None:
        raise NotFound("this unsubscribe link is not valid", field="token")
    form = dict(await read_form(request))
    if form.get("List-Unsubscribe") != ONE_CLICK:
        raise BadRequest("the body must be List-Unsubscribe=One-Click (RFC 8058)")
    await unsubscribe.apply(request.app[STORE], claims, source="one_click")
    return _page(
        "Unsubscribed", f"<p>{html.escape(claims.email)} will get no more of these emails.</p>"
    )
