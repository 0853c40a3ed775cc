"""Tracked links: /c/{token}, no API key (the token is signed, seqd/clicks.py). Answers 302
to the link the token names and records the click; a scanner's is recorded as
`suspected_bot` and not counted."""

from __future__ import annotations

import html

from aiohttp import web

from seqd import clicks
from seqd.api.routing import route
from seqd.appkeys import CONFIG, METRICS, STORE
from seqd.lifecycle import unsubscribe
from seqd.times import now_ms

TAG = "clicks"
# What of the user agent the event keeps.
_AGENT_CHARS = 200

_GONE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<title>Link not valid</title></head>
<body><h1>Link not valid</h1><p>{}</p></body></html>
"""


def _gone(reason: str) -> web.Response:
    return web.Response(
        text=_GONE.format(html.escape(reason)), status=404, content_type="text/html"
    )


async def _follow(request: web.Request) -> web.Response:
    config, store = request.app[CONFIG], request.app[STORE]
    secret = await unsubscribe.signing_secret(config, store)
    claims = clicks.verify(secret, request.match_info["token"])
    if claims is None:
        return _gone("This link is not valid.")
    url = await store.stats.link(claims.enrollment_id, claims.step, claims.link)
    if url is None:
        return _gone("This link is no longer available.")
    now = now_ms()
    agent = request.headers.get("User-Agent", "")
    bot = clicks.suspected_bot(config, request.method, agent, claims.sent_at, now)
    event = {
        "link": claims.link,
        "url": url,
        "suspected_bot": bot,
        "user_agent": agent[:_AGENT_CHARS],
    }
    await store.stats.click(claims.enrollment_id, claims.step, bot=bot, now=now, event=event)
    request.app[METRICS].click(bot)
    return web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})


@route(
    "GET",
    "/c/{token}",
    summary="Follow a tracked link: 302 to it, the click recorded",
    tag=TAG,
    responses={302: None},
    errors=(404,),
    auth=False,
    media={404: "text/html"},
)
async def follow_link(request: web.Request) -> web.Response:
    return await _follow(request)


@route(
    "HEAD",
    "/c/{token}",
    summary="A tracked link fetched by HEAD (a scanner's): 302, recorded as suspected_bot",
    tag=TAG,
    responses={302: None},
    errors=(404,),
    auth=False,
    media={404: "text/html"},
)
async def head_link(request: web.Request) -> web.Response:
    return await _follow(request)
