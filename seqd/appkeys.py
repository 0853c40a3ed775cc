"""Typed keys for what the aiohttp application carries that the background parts read too
(the API's own keys are in `api/appkeys.py`)."""

from __future__ import annotations

from aiohttp import web

from seqd.config import Config
from seqd.health import Liveness
from seqd.metrics import Metrics
from seqd.store.db import Store
from seqd.timing.policy import Policy

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
# Counters and gauges of this app (seqd.metrics) and the heartbeats of its loops.
METRICS = web.AppKey("metrics", Metrics)
LIVENESS = web.AppKey("liveness", Liveness)
# The tenants' time rules (quiet hours, default zones) from the config.
POLICY = web.AppKey("policy", Policy)
