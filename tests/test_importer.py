"""`seqd import FILE.csv`: upserts, enrolls, rejects with reasons; a second run is a no-op."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pytest

from seqd import cli, importer, models
from seqd.config import Config
from seqd.store.db import Store, connect

ROWS = """first_name,last_name,phone,email,timezone,external_id,company,plan
Ada,,+14155550100,ada@example.com,Europe/London,crm-1,Acme,pro
Alan,Turing,+1 415 555 0101,,,crm-2,Bletchley,
Grace,,,grace@example.com,America/New_York,,Navy,free
Bad,Phone,12345,,,crm-4,,
No,Address,,,,crm-5,,
Tz,Wrong,+14155550105,,Mars/Olympus,,,
Ada,Lovelace,,ada@example.com,,crm-1,,
Dup,Phone,+14155550101,,,crm-9,,
"""

SEQUENCE = models.SequenceCreate(
    name="Import", status="active", steps=[models.StepIn(kind="sms", wait_minutes=60, body="Hi")]
)


def _write(tmp_path: Path, text: str = ROWS) -> Path:
    path = tmp_path / "leads.csv"
    path.write_text(text, encoding="utf-8")
    return path


def _rejected(path: Path) -> list[dict[str, str]]:
    with importer.rejected_path(path).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


async def _snapshot(store: Store) -> dict[str, dict[str, str]]:
    """Every key of this store's prefix with its value, to prove a run changed nothing."""
    out = {}
    async for key in store.client.scan_iter(match=f"*{store.keys.prefix}*"):
        kind = await store.client.type(key)
        if kind == "hash":
            out[key] = await store.client.hgetall(key)
        elif kind == "zset":
            out[key] = dict(await store.client.zrange(key, 0, -1, withscores=True))
        elif kind == "stream":
            out[key] = {"len": str(await store.client.xlen(key))}
        elif kind == "string":
            out[key] = {"v": await store.client.get(key)}
        else:
            out[key] = {"members": str(sorted(await store.client.smembers(key)))}
    return out


async def test_import_upserts_enrolls_and_rejects_then_changes_nothing(
    store: Store, tmp_path: Path
) -> None:
    await store.tenants.create_key("acme")
    seq = await store.sequences.create("acme", SEQUENCE)
    path = _write(tmp_path)
    summary = await importer.run(store, Config(), path, "acme", seq.id)
    assert summary.rows == 8
    assert dict(summary.contacts) == {"created": 3, "updated": 1}
    assert summary.enrolled == 3 and summary.already_enrolled == 1
    assert dict(summary.rejected) == {"invalid": 3, "conflict": 1}
    rejected = _rejected(path)
    assert [(r["line"], r["first_name"]) for r in rejected] == [
        ("5", "Bad"), ("6", "No"), ("7", "Tz"), ("9", "Dup"),
    ]  # fmt: skip
    assert rejected[0]["reason"].startswith("phone: ")
    assert rejected[1]["reason"].startswith("phone: a contact needs a phone or an email")
    assert rejected[2]["reason"].startswith("timezone: ")
    assert rejected[3]["reason"].startswith("contact.phone: ")  # belongs to crm-2
    ada = await store.contacts.get(
        "acme", await store.contacts.find("acme", "external_id", "crm-1") or ""
    )
    assert ada.last_name == "Lovelace"  # row 8 completed row 2's contact
    assert ada.attributes == {"company": "Acme", "plan": "pro"}
    assert ada.timezone == "Europe/London"
    assert (await store.sequences.stats([seq.id]))[seq.id].active == 3

    before = await _snapshot(store)
    again = await importer.run(store, Config(), path, "acme", seq.id)
    assert dict(again.contacts) == {"unchanged": 4}
    assert again.enrolled == 0 and again.already_enrolled == 4
    assert await _snapshot(store) == before  # not a field, index, counter or event more


async def test_import_without_a_sequence_only_upserts(store: Store, tmp_path: Path) -> None:
    await store.tenants.create_key("acme")
    path = _write(tmp_path, "phone,email,notes\n+14155550100,,hello\n+14155550100,,bye\n")
    summary = await importer.run(store, Config(), path, "acme")
    assert dict(summary.contacts) == {"created": 1, "updated": 1}
    assert not importer.rejected_path(path).exists()
    cid = await store.contacts.find("acme", "phone", "+14155550100")
    assert (await store.contacts.get("acme", cid or "")).attributes == {"notes": "bye"}


async def test_import_refuses_an_inactive_sequence_before_writing(
    store: Store, tmp_path: Path
) -> None:
    await store.tenants.create_key("acme")
    draft = await store.sequences.create(
        "acme", models.SequenceCreate(name="Draft", steps=[models.StepIn(kind="sms", body="Hi")])
    )
    with pytest.raises(Exception, match="not active"):
        await importer.run(store, Config(), _write(tmp_path), "acme", draft.id)
    assert await store.contacts.find("acme", "external_id", "crm-1") is None


def test_the_cli_command(
    store_url: str,
    prefix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SEQD_CHECK_SLOTS")  # the tests' switch, not a setting
    config = tmp_path / "seqd.toml"
    config.write_text(f'[redis]\nurl = "{store_url}"\nprefix = "{prefix}"\nshards = 4\n')

    async def key() -> None:
        store = await Store.open(connect(store_url), prefix, 4)
        await store.tenants.create_key("acme")
        await store.close()

    asyncio.run(key())
    path = _write(tmp_path)
    assert cli.main(["--config", str(config), "import", str(path), "--tenant", "acme"]) == 1
    out = capsys.readouterr().out
    assert "contacts: 3 created, 1 updated, 0 unchanged" in out
    assert f"rejected: 4 (3 invalid, 1 conflict) -> {importer.rejected_path(path)}" in out
    assert cli.main(["--config", str(config), "import", str(path), "--tenant", "acme"]) == 1
    assert "contacts: 0 created, 0 updated, 4 unchanged" in capsys.readouterr().out
    assert cli.main(["--config", str(config), "import", str(path), "--tenant", "nobody"]) == 2
    missing = str(tmp_path / "missing.csv")
    assert cli.main(["--config", str(config), "import", missing, "--tenant", "acme"]) == 2
