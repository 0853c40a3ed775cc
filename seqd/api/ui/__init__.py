"""The web dashboard at /ui: server-rendered pages (Jinja2 through aiohttp-jinja2, no
script, no build step) over the same store calls as the API, signed in with an API key
(seqd/api/ui/session.py). `setup` mounts it; `[ui] enabled = false` leaves it out."""

from __future__ import annotations

from seqd.api.ui.pages import setup

__all__ = ["setup"]
