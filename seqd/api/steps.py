"""What a sequence's steps name outside themselves, checked when it is saved: a webhook
step's URL (the SSRF guard) and signing secret, an enroll step's sequence."""

from __future__ import annotations

from aiohttp import web

from seqd import models
from seqd.appkeys import CONFIG, STORE
from seqd.errors import FieldError, Invalid, NotFound
from seqd.events import ssrf


async def check_steps(request: web.Request, tenant: str, steps: list[models.StepIn]) -> None:
    """Invalid naming each step whose URL or sequence cannot be used."""
    config = request.app[CONFIG]
    store = request.app[STORE]
    errors: list[FieldError] = []
    for i, step in enumerate(steps):
        if step.kind == "webhook" and isinstance(step.url, str):
            if config.webhook_step_secret_for(tenant) is None:
                errors.append(
                    FieldError(
                        f"steps[{i}].kind",
                        "webhook steps sign their calls: set webhooks.step_secret first",
                    )
                )
            try:
                await ssrf.check(step.url, allow_private=config.webhooks.allow_private_targets)
            except Invalid as exc:
                errors += [FieldError(f"steps[{i}].{e.path}", e.message) for e in exc.errors]
        if step.kind == "enroll" and isinstance(step.sequence_id, str):
            try:
                await store.sequences.get(tenant, step.sequence_id, with_stats=False)
            except NotFound:
                errors.append(
                    FieldError(f"steps[{i}].sequence_id", f"no sequence {step.sequence_id}")
                )
    if errors:
        raise Invalid(errors)
