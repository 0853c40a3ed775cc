"""Click tracking: the links of a tracked step's body point at `<base>/<token>`, a token
signed like the unsubscribe token (seqd/tokens.py) that names the enrollment, the step,
the link's place in the body and when the message was composed:
`<enrollment id>.<step>.<link>.<time, base 36 s> "." base64url(HMAC-SHA256(secret,
"click." + first part)[:16])`. Nothing is stored per link: `GET /c/<token>` verifies the
token, renders the step's body for the enrollment again and redirects to its link number
`link` (api/clicks.py). The secret is the unsubscribe links' (`unsubscribe.signing_secret`).

A click is a link scanner's (`suspected_bot`: recorded, not counted) when it is a HEAD
request, comes from a known scanner's user agent, or comes within `scanner_seconds` of the
send (security gateways follow every link of a message on arrival).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from seqd import ids
from seqd.channels.base import OutboundMessage
from seqd.config import Config
from seqd.links import rewrite
from seqd.tokens import mac, verified

_DOMAIN = b"click."
_DIGITS36 = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True, slots=True)
class ClickClaims:
    enrollment_id: str
    step: int
    link: int
    # When the message was composed (s): a click right after it is a scanner's.
    sent_at: int


def _base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _DIGITS36[r] + out
        if not n:
            return out


def sign(secret: str, enrollment_id: str, step: int, link: int, sent_at: int) -> str:
    payload = f"{enrollment_id}.{step}.{link}.{_base36(sent_at)}"
    return f"{payload}.{mac(secret, _DOMAIN, payload)}"


def verify(secret: str, token: str) -> ClickClaims | None:
    """The claims of a token this secret signed, else None (never raises on bad input)."""
    payload, dot, given = token.rpartition(".")
    if not dot or not verified(secret, _DOMAIN, payload, given):
        return None
    parts = payload.split(".")
    if len(parts) != 4:
        return None
    eid, step, link, at = parts
    if not (ids.is_valid(eid, ids.ENROLLMENT) and step.isdigit() and link.isdigit()):
        return None
    try:
        sent_at = int(at, 36)
    except ValueError:
        return None
    return ClickClaims(eid, int(step), int(link), sent_at)


def base_url(config: Config, kind: str) -> str:
    """Where a kind's tracked links point: `<base>/<token>`."""
    if kind == "sms" and config.stats.sms_click_base_url:
        return config.stats.sms_click_base_url.rstrip("/")
    return f"{config.http.public_url.rstrip('/')}{config.http.base_path}/c"


def message_links(config: Config, secret: str) -> Callable[[OutboundMessage, int], str]:
    """The dispatcher's hook: the body of a tracked message about to be sent at `now` (ms),
    its links rewritten."""

    def links(message: OutboundMessage, now: int) -> str:
        base, at = base_url(config, message.kind), now // 1000

        def tracked(n: int) -> str:
            return f"{base}/{sign(secret, message.enrollment_id, message.step, n, at)}"

        return rewrite(message.body, tracked)

    return links


def suspected_bot(config: Config, method: str, user_agent: str, sent_at: int, now: int) -> bool:
    """Whether a click (a request at `now` ms) looks like a link scanner's."""
    if method == "HEAD" or now / 1000 - sent_at < config.stats.scanner_seconds:
        return True
    agent = user_agent.lower()
    return not agent or any(a.lower() in agent for a in config.stats.scanner_agents)
