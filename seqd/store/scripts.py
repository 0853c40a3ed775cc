"""Loads the Lua scripts and calls each through one typed wrapper.

A script file is `<verbNoun>-<numKeys>.lua`; its header lists KEYS and ARGV, and the
wrapper here builds them in that order. `-- @include name` pulls in `includes/name.lua`
(and what that includes; each include once per script), and every script is prefixed with
`k_<family>(tag, ...)` helpers generated from `keys.SHARD_TEMPLATES` and
`keys.TENANT_TEMPLATES`, so key names are spelled in one place for Python and Lua alike
(and with the constants they share, `_constants`).
Each script is called through its builder in `calls.py`; its refusals surface as one
`ScriptError` (calls.py says how).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from seqd import kinds
from seqd.store import counters, settles
from seqd.store import keys as keymod
from seqd.store.calls import Call, refusal
from seqd.store.calls import ScriptError as ScriptError  # re-exported: the facades' one error
from seqd.store.client import Client
from seqd.store.replication import ReplicaWait, Write, write_and_wait

LUA = resources.files("seqd.store") / "lua"
_INCLUDE = re.compile(r"^-- @include (\w+)\s*$", re.MULTILINE)
_FIELD = re.compile(r"\{(\w+)\}")

# Tests set this so a call whose keys span two cluster slots fails on its first run.
CHECK_SLOTS = os.environ.get("SEQD_CHECK_SLOTS") == "1"


class CrossSlotError(AssertionError):
    pass


def _key_helpers() -> str:
    out = []
    templates = {**keymod.SHARD_TEMPLATES, **keymod.TENANT_TEMPLATES}
    if len(templates) != len(keymod.SHARD_TEMPLATES) + len(keymod.TENANT_TEMPLATES):
        raise ValueError("a key family is both a shard and a tenant template")
    for family, template in templates.items():
        params = [p for p in _FIELD.findall(template) if p != "tag"]
        body = " .. ".join(
            p if i % 2 else repr(p) if p else ""
            for i, p in enumerate(re.split(r"\{(\w+)\}", template))
            if p
        )
        out.append(f"local function k_{family}({', '.join(['tag', *params])}) return {body} end")
    return "\n".join(out) + "\n"


# Members per variadic command a script builds from a batch (claimDue's leases, advance's
# next due times: dispatch.lua `zadd_chunked`), so that unpack() stays under Lua's limit on
# the values it spreads at once (8,000) whatever the batch size.
BULK = 1000
# Events one batched outbox entry holds at most (OUTBOX_ITEMS in the scripts).
OUTBOX_ITEMS = 200


def _constants() -> str:
    """Values the scripts share with Python, defined on the Python side."""
    return f"local OUTBOX_ITEMS = {OUTBOX_ITEMS}\nlocal BULK = {BULK}\n" + kinds.lua_constants()


# Includes generated from Python definitions, beside the files of includes/.
GENERATED = {"settles": settles.lua_prelude(), "stat_codes": counters.lua_prelude()}


def _expand(source: str, seen: set[str] | None = None) -> str:
    """`source` with its includes in place, theirs too; each include once per script."""
    seen = set() if seen is None else seen

    def include(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in seen:
            return ""
        seen.add(name)
        text = GENERATED.get(name)
        if text is None:
            text = (LUA / "includes" / f"{name}.lua").read_text()
        return _expand(text, seen)

    return _INCLUDE.sub(include, source)


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    num_keys: int
    source: str
    sha: str


def load_scripts() -> dict[str, Script]:
    helpers = _key_helpers() + _constants()
    scripts = {}
    for entry in LUA.iterdir():
        match = re.fullmatch(r"(\w+)-(\d+)\.lua", entry.name)
        if not match:
            continue
        text = _expand(entry.read_text())
        # Helpers go after the header comment and the `local rcall` line would not matter:
        # they are plain functions, so prefixing the whole file is enough.
        source = helpers + text
        sha = hashlib.sha1(source.encode()).hexdigest()
        scripts[match.group(1)] = Script(match.group(1), int(match.group(2)), source, sha)
    return scripts


SCRIPTS = load_scripts()


def _check_slots(name: str, keys: Sequence[str], tag: str | None) -> None:
    probe = list(keys) + ([f"{tag}:probe"] if tag else [])
    if not keymod.same_slot(probe):
        raise CrossSlotError(f"script {name} called with keys in several slots: {probe}")


class Runner:
    """Calls scripts by name with EVALSHA, loading them on NOSCRIPT.

    A call made `acknowledged` (an enrollment, a transition: what the API answers for)
    answers only once `wait` says enough replicas have it, when `wait` is set
    (`redis.wait_replicas`, store/replication.py).
    """

    def __init__(self, client: Client, wait: ReplicaWait | None = None) -> None:
        self.client = client
        self.wait = wait

    async def load_all(self) -> None:
        for script in SCRIPTS.values():
            await self.client.script_load(script.source)

    async def run(self, call: Call, *, acknowledged: bool = False) -> Any:
        """One call from its builder (store/calls.py)."""
        if acknowledged and self.wait is not None:
            [result] = await self._acknowledged([call], self.wait)
            if isinstance(result, Exception):
                raise result
            return result
        return await self.call(call.name, call.keys, call.args, tag=call.tag)

    async def call(
        self, name: str, keys: Sequence[str], args: Sequence[Any], *, tag: str | None = None
    ) -> Any:
        script = SCRIPTS[name]
        if len(keys) != script.num_keys:
            raise TypeError(f"{name} takes {script.num_keys} keys, got {len(keys)}")
        if CHECK_SLOTS:
            _check_slots(name, keys, tag)
        try:
            try:
                return await self.client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                return await self.client.eval(script.source, len(keys), *keys, *args)
        except ResponseError as exc:
            parsed = refusal(str(exc))
            if parsed is None:
                raise
            raise parsed from None

    async def call_many(
        self,
        calls: Sequence[tuple[str, Sequence[str], Sequence[Any], str | None]],
        reads: Sequence[Sequence[Any]] = (),
        *,
        acknowledged: bool = False,
    ) -> list[Any]:
        """Run several script calls in one round trip; each result or its ScriptError. Plain
        commands in `reads` (a command and its arguments, each of one key) go in the same
        round trip, after the scripts; their results (or errors) follow the scripts'.
        """
        if acknowledged and self.wait is not None and not reads:
            return await self._acknowledged(calls, self.wait)
        pipe = self.client.pipeline(transaction=False)
        for name, keys, args, tag in calls:
            script = SCRIPTS[name]
            if CHECK_SLOTS:
                _check_slots(name, keys, tag)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        for command in reads:
            pipe.execute_command(*command)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        for i, result in enumerate(results[: len(calls)]):
            if isinstance(result, NoScriptError):
                name, keys, args, tag = calls[i]
                try:
                    results[i] = await self.call(name, keys, args, tag=tag)
                except ScriptError as exc:
                    results[i] = exc
            else:
                results[i] = _answer(result)
        return results

    async def _acknowledged(
        self,
        calls: Sequence[tuple[str, Sequence[str], Sequence[Any], str | None]],
        wait: ReplicaWait,
    ) -> list[Any]:
        """`call_many`'s answers, once `wait.replicas` replicas of each call's node have it."""
        writes = []
        for name, keys, args, tag in calls:
            script = SCRIPTS[name]
            if CHECK_SLOTS:
                _check_slots(name, keys, tag)
            call_args = (len(keys), *keys, *args)
            writes.append(
                Write(
                    ("EVALSHA", script.sha, *call_args),
                    keys[0],
                    ("EVAL", script.source, *call_args),
                )
            )
        return [_answer(result) for result in await write_and_wait(self.client, writes, wait)]


def _answer(result: Any) -> Any:
    """A script's result in a round trip: its value, or the ScriptError of its refusal;
    any other error is raised."""
    if isinstance(result, ResponseError):
        parsed = refusal(str(result))
        if parsed is None:
            raise result
        return parsed
    if isinstance(result, Exception):
        raise result
    return result
