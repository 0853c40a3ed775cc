"""The dashboard's pages. Each GET reads one page of what it shows (nothing loaded whole,
so a tenant with millions of enrollments pages through them); each POST carries the
session's CSRF token. Errors a user can cause (a bad filter, an unknown id) answer a page
saying so, never a 500."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web

from seqd import ids, kinds, models
from seqd.api.forecast import HOUR_MS, bucket_edges
from seqd.api.ops import split_listen
from seqd.api.ui import charts, session
from seqd.appkeys import CONFIG, STORE
from seqd.cursors import decode_token, encode_token
from seqd.errors import SeqdError
from seqd.kinds import Channel
from seqd.store import backlog
from seqd.store.counters import DAY_MS
from seqd.store.enrollment_search import EnrollmentFilter
from seqd.store.events import EventFilter
from seqd.store.rates import SendRates
from seqd.store.tenants import hash_key
from seqd.times import now_ms

log = structlog.get_logger("seqd.ui")
PREFIX = "/ui"
PAGE = 50
# The session secret, read from the store on the first request that needs it.
SECRET = web.AppKey("ui_secret", dict[str, str])
PageHandler = Callable[[web.Request, session.Session], Awaitable[web.StreamResponse]]
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


_STATUSES = ("active", "paused", "completed", "cancelled")


def _by_status(stats: models.SequenceStats) -> list[charts.Bar]:
    return charts.bars([(st, int(getattr(stats, st))) for st in _STATUSES], width=70)


def _render(
    request: web.Request, name: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    response = aiohttp_jinja2.render_template(name, request, context, status=status)
    response.headers.update(_HEADERS)
    return response


def _cookie_secure(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto") == "https"


async def _secret(request: web.Request) -> str:
    held = request.app[SECRET]
    if "secret" not in held:
        held["secret"] = await request.app[STORE].secret(session.META_FIELD)
    return held["secret"]


async def current(request: web.Request) -> session.Session | None:
    """The signed-in session, when its cookie is good and its key still exists."""
    raw = request.cookies.get(session.COOKIE)
    if not raw:
        return None
    found = session.decode(await _secret(request), raw)
    if found is None:
        return None
    store = request.app[STORE]
    if not await store.client.hexists(store.keys.api_keys(), found.key_digest):
        return None  # the key was revoked: its sessions end
    return found


def page(handler: PageHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A page for the signed in: others go to the sign-in form; a POST without the
    session's CSRF token is refused (403)."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        signed_in = await current(request)
        if signed_in is None:
            if request.method == "POST":
                return _render(request, "error.html", {"message": "Sign in first."}, 403)
            raise web.HTTPSeeOther(f"{PREFIX}/login")
        if request.method == "POST":
            form = await request.post()
            token = form.get("csrf")
            if not session.csrf_ok(signed_in, token if isinstance(token, str) else None):
                message = "This form is not from this session (CSRF)."
                return _render(request, "error.html", {"message": message, "s": None}, 403)
        try:
            return await handler(request, signed_in)
        except SeqdError as exc:
            failed = {"message": exc.detail, "s": signed_in}
            return _render(request, "error.html", failed, exc.status)

    wrapper.seqd_auth = False  # type: ignore[attr-defined]
    return wrapper


def public(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    handler.seqd_auth = False  # type: ignore[attr-defined]
    return handler


@public
async def login_form(request: web.Request) -> web.StreamResponse:
    return _render(request, "login.html", {"s": None, "error": None})


@public
async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    key = form.get("key")
    key = key.strip() if isinstance(key, str) else ""
    tenant = None
    if key and key.isascii() and key.isprintable():
        tenant = await request.app[STORE].tenants.authenticate(key)
    if tenant is None:
        context = {"s": None, "error": "That API key is not valid (revoked or mistyped)."}
        return _render(request, "login.html", context, 401)
    signed = session.new(tenant, hash_key(key))
    response = web.HTTPSeeOther(f"{PREFIX}/")
    response.set_cookie(
        session.COOKIE,
        session.encode(await _secret(request), signed),
        max_age=session.LIFETIME_S,
        path=PREFIX,
        httponly=True,
        samesite="Strict",
        secure=_cookie_secure(request),
    )
    raise response


@page
async def logout(request: web.Request, s: session.Session) -> web.StreamResponse:
    response = web.HTTPSeeOther(f"{PREFIX}/login")
    response.del_cookie(session.COOKIE, path=PREFIX)
    raise response


@page
async def sequences(request: web.Request, s: session.Session) -> web.StreamResponse:
    store = request.app[STORE]
    after = decode_token(request.query.get("page_token"))
    seqs, after, total = await store.sequences.list(s.tenant, limit=PAGE, after=after, status=None)
    rows = [
        {
            "seq": seq,
            "chart": charts.bars(
                [
                    (st, getattr(seq.stats, st))
                    for st in ("active", "paused", "completed", "cancelled")
                ]
            ),
        }
        for seq in seqs
    ]
    context = {"s": s, "rows": rows, "total": total, "next": encode_token(after)}
    return _render(request, "sequences.html", context)


@page
async def sequence(request: web.Request, s: session.Session) -> web.StreamResponse:
    store = request.app[STORE]
    seq = await store.sequences.get(s.tenant, request.match_info["id"])
    status = request.query.get("status") or None
    reason = request.query.get("paused_reason") or None
    statuses = {e.value for e in models.EnrollmentStatus}
    if status is not None and status not in statuses:
        raise web.HTTPSeeOther(f"{PREFIX}/sequences/{seq.id}")
    where = EnrollmentFilter(
        sequence_id=seq.id,
        status=models.EnrollmentStatus(status) if status else None,
        paused_reason=reason if status in (None, "paused") else None,
    )
    after = decode_token(request.query.get("page_token"))
    rows, after, total = await store.enrollment_search.page(s.tenant, where, PAGE, after)
    funnel = _by_status(seq.stats)
    steps = await _per_step(request, seq.id, len(seq.steps))
    context = {
        "s": s,
        "seq": seq,
        "rows": rows,
        "total": total,
        "next": encode_token(after),
        "status": status or "",
        "paused_reason": reason or "",
        "statuses": sorted(statuses),
        "funnel": funnel,
        "steps": steps,
        "step_chart": charts.bars(
            [(f"step {n}", row["sent"]) for n, row in enumerate(steps)], width=70, funnel=True
        ),
    }
    return _render(request, "sequence.html", context)


# The per-step columns of a sequence's page, from its counters (store/stats.py).
STEP_COLUMNS = ("sent", "delivered", "replied", "clicked", "opted_out", "bounced", "failed")


async def _per_step(request: web.Request, sid: str, steps: int) -> list[dict[str, Any]]:
    """Counts per step over the last 30 UTC days, and reply rate (replied / delivered where
    delivery is known, else / sent: the stats endpoint's rule)."""
    today = now_ms() // DAY_MS
    cells = await request.app[STORE].stats.cells(sid, range(today - 29, today + 1))
    rows: list[dict[str, Any]] = [dict.fromkeys(STEP_COLUMNS, 0) for _ in range(steps)]
    for cell in cells:
        if cell.sender or not cell.step.isdigit() or int(cell.step) >= steps:
            continue
        row = rows[int(cell.step)]
        for name in STEP_COLUMNS:
            row[name] += cell.counts.get(name, 0)
    for row in rows:
        base = row["delivered"] or row["sent"]
        row["reply_rate"] = f"{100 * row['replied'] / base:.1f}%" if base else ""
    return rows


@page
async def enrollment(request: web.Request, s: session.Session) -> web.StreamResponse:
    """Its steps from its own hash (complete, whatever the log's size), and its events from
    the tenant's log, paged: a page reads from the enrollment's creation (or where the last
    page stopped) at most the log's bounded scan, so a long log is walked page by page."""
    store = request.app[STORE]
    found = await store.enrollments.get(s.tenant, request.match_info["id"])
    seq = await store.sequences.get(s.tenant, found.sequence_id, with_stats=False)
    config = request.app[CONFIG].webhooks
    events, after, _ = await store.events.list(
        s.tenant,
        limit=200,
        # (A bad position is a 422 of events.check_position: a page saying so.)
        after=request.query.get("page_token") or None,
        flt=EventFilter(enrollment_id=found.id, since=ids.time_of(found.id)),
        now=now_ms(),
        retention_ms=config.events_retention_hours * 3_600_000,
    )
    steps = await store.stats.steps(s.tenant, found.id, len(seq.steps))
    context = {"s": s, "e": found, "events": events, "next": after, "steps": steps}
    return _render(request, "enrollment.html", context)


@page
async def contacts(request: web.Request, s: session.Session) -> web.StreamResponse:
    store = request.app[STORE]
    q = request.query.get("q", "").strip()
    after = decode_token(request.query.get("page_token"))
    filters: dict[str, str] = {}
    if q:
        field = "email" if "@" in q else "phone" if q.startswith("+") else "external_id"
        filters[field] = q.lower() if field == "email" else q
    rows, after, total = await store.contacts.list(
        s.tenant, limit=PAGE, after=after, filters=filters
    )
    context = {"s": s, "rows": rows, "q": q, "total": total, "next": encode_token(after)}
    return _render(request, "contacts.html", context)


@page
async def contact(request: web.Request, s: session.Session) -> web.StreamResponse:
    store = request.app[STORE]
    found = await store.contacts.get(s.tenant, request.match_info["id"])
    rows, _, _ = await store.enrollment_search.page(
        s.tenant, EnrollmentFilter(contact_id=found.id), PAGE, None
    )
    return _render(request, "contact.html", {"s": s, "c": found, "rows": rows})


@page
async def suppressions(request: web.Request, s: session.Session) -> web.StreamResponse:
    store = request.app[STORE]
    after = decode_token(request.query.get("page_token"))
    channels: list[Channel] = list(kinds.CHANNELS)
    rows, after, total = await store.suppressions.list(
        s.tenant, channels=channels, limit=PAGE, after=after
    )
    context = {"s": s, "rows": rows, "total": total, "next": encode_token(after)}
    return _render(request, "suppressions.html", context)


@page
async def webhooks(request: web.Request, s: session.Session) -> web.StreamResponse:
    store = request.app[STORE]
    endpoints = []
    for endpoint in await store.webhooks.all(s.tenant):
        failed, _, total = await store.deliveries.list_failed(
            s.tenant, endpoint.id, limit=PAGE, after=None
        )
        endpoints.append({"endpoint": endpoint, "failed": failed, "total": total})
    retried = request.query.get("retried")
    context = {"s": s, "endpoints": endpoints, "retried": retried}
    return _render(request, "webhooks.html", context)


@page
async def retry_delivery(request: web.Request, s: session.Session) -> web.StreamResponse:
    store = request.app[STORE]
    eid, did = request.match_info["id"], request.match_info["delivery_id"]
    endpoint = await store.webhooks.get(s.tenant, eid)
    if not endpoint.enabled:
        context = {"message": f"Endpoint {eid} is disabled: enable it first.", "s": s}
        return _render(request, "error.html", context, 409)
    await store.deliveries.retry(s.tenant, eid, did, now_ms())
    raise web.HTTPSeeOther(f"{PREFIX}/webhooks?retried={did}")


@page
async def forecast(request: web.Request, s: session.Session) -> web.StreamResponse:
    store = request.app[STORE]
    now = now_ms()
    seqs = [q for q in await store.sequences.all_of(s.tenant) if q.status == "active"]
    edges = bucket_edges(now, 72, HOUR_MS)
    overdue, counts = await store.forecasts.count(seqs, edges, None)
    labels = [f"{(lo - lo % HOUR_MS) // HOUR_MS % 24:02d}h" for lo in edges[:-1]]
    chart = charts.bars(list(zip(labels, counts, strict=True)), width=8)
    context = {"s": s, "plot": chart, "overdue": overdue, "total": sum(counts)}
    return _render(request, "forecast.html", context)


@page
async def dispatcher(request: web.Request, s: session.Session) -> web.StreamResponse:
    store = request.app[STORE]
    at = now_ms()
    snap = await backlog.read(store, at)
    sends = await SendRates(store).window(at)
    rates = sorted(
        (channel, outcome, n / sends.seconds)
        for channel, by in sends.counts.items()
        for outcome, n in by.items()
    )
    chart = charts.bars([(f"{c} {o}", round(r)) for c, o, r in rates], width=90)
    hour = await SendRates(store).series(at)
    minute = [f"{m.start // 60_000 % 60:02d}" for m in hour]
    sent = charts.bars([(label, m.sent) for label, m in zip(minute, hour, strict=True)], 10)
    late = charts.bars(
        [(label, round(m.lateness * 1000)) for label, m in zip(minute, hour, strict=True)], 10
    )
    context = {
        "s": s,
        "snap": snap,
        "rates": rates,
        "plot": chart,
        "window": sends.seconds,
        "sent_hour": sent,
        "late_hour": late,
    }
    return _render(request, "dispatcher.html", context)


@public
async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name != "style.css":
        raise web.HTTPNotFound()
    text = resources.files("seqd.api.ui").joinpath("static", name).read_text()
    return web.Response(
        text=text, content_type="text/css", headers={"Cache-Control": "max-age=3600"}
    )


async def listener(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the dashboard alone on `ui.listen`."""
    config = app[CONFIG]
    assert config.ui.listen is not None
    host, port = split_listen(config.ui.listen)
    side = web.Application()
    side[CONFIG], side[STORE] = config, app[STORE]
    setup(side)
    runner = web.AppRunner(side, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("ui.listening", host=host, port=port)
        yield
    finally:
        await runner.cleanup()


def setup(app: web.Application) -> None:
    app[SECRET] = {}
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("seqd.api.ui", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        context_processors=[],
    )
    r = app.router
    r.add_get(f"{PREFIX}/login", login_form)
    r.add_post(f"{PREFIX}/login", login)
    r.add_post(f"{PREFIX}/logout", logout)
    r.add_get(f"{PREFIX}/", sequences)
    r.add_get(f"{PREFIX}/sequences/{{id}}", sequence)
    r.add_get(f"{PREFIX}/enrollments/{{id}}", enrollment)
    r.add_get(f"{PREFIX}/contacts", contacts)
    r.add_get(f"{PREFIX}/contacts/{{id}}", contact)
    r.add_get(f"{PREFIX}/suppressions", suppressions)
    r.add_get(f"{PREFIX}/webhooks", webhooks)
    r.add_post(f"{PREFIX}/webhooks/{{id}}/failed/{{delivery_id}}/retry", retry_delivery)
    r.add_get(f"{PREFIX}/forecast", forecast)
    r.add_get(f"{PREFIX}/dispatcher", dispatcher)
    r.add_get(f"{PREFIX}/static/{{name}}", static)
