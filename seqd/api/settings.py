"""The tenant's own settings: /tenant/settings (frequency caps across its sequences)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from seqd.api.auth import tenant_of
from seqd.api.routing import route
from seqd.api.wire import read_body, respond
from seqd.appkeys import CONFIG, STORE
from seqd.senders.models import SettingsPatch, TenantSettings

TAG = "settings"


async def _current(request: web.Request) -> TenantSettings:
    tenant = tenant_of(request)
    stored = await request.app[STORE].settings.get(tenant)
    if stored.frequency_caps is not None:
        return TenantSettings(frequency_caps=stored.frequency_caps, frequency_caps_source="api")
    caps = request.app[CONFIG].frequency_caps_for(tenant)
    return TenantSettings(frequency_caps=caps, frequency_caps_source="config")


@route(
    "GET",
    "/tenant/settings",
    summary="The tenant's settings in force: its frequency caps",
    tag=TAG,
    responses={200: TenantSettings},
)
async def get_settings(request: web.Request) -> web.Response:
    return respond(await _current(request))


@route(
    "PATCH",
    "/tenant/settings",
    summary="Set the tenant's frequency caps (null: back to the config's)",
    tag=TAG,
    body=SettingsPatch,
    responses={200: TenantSettings},
)
async def patch_settings(request: web.Request) -> web.Response:
    body = await read_body(request, SettingsPatch)
    store = request.app[STORE]
    tenant = tenant_of(request)
    if not isinstance(body.frequency_caps, msgspec.UnsetType):
        stored = await store.settings.get(tenant)
        changed = msgspec.structs.replace(stored, frequency_caps=body.frequency_caps)
        await store.settings.put(tenant, changed)
    return respond(await _current(request))
