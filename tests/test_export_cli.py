"""`seqd export`: the same rows as the API's export, into a file, resumable after a cut."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from seqd import cli, exports, models
from seqd.store import enrollment_search
from seqd.store.db import Store, connect

N = 450


def _config(tmp_path: Path, store_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("SEQD_CHECK_SLOTS")  # the tests' switch, not a setting
    config = tmp_path / "seqd.toml"
    config.write_text(f'[redis]\nurl = "{store_url}"\nprefix = "{prefix}"\nshards = 4\n')
    return str(config)


def _seed(tmp_path: Path, store_url: str, prefix: str, config: str) -> list[str]:
    """N contacts imported and enrolled through `seqd import`; their enrollment ids."""

    async def sequence() -> str:
        store = await Store.open(connect(store_url), prefix, 4)
        await store.tenants.create_key("acme")
        step = models.StepIn(kind="sms", wait_minutes=60, body="hi")
        seq = await store.sequences.create(
            "acme", models.SequenceCreate(name="x", status="active", steps=[step])
        )
        await store.close()
        return seq.id

    sid = asyncio.run(sequence())
    rows = tmp_path / "contacts.csv"
    rows.write_text("phone\n" + "".join(f"+1415555{i:04d}\n" for i in range(N)))
    assert cli.main(["--config", config, "import", str(rows), "--tenant", "acme",
                     "--sequence", sid]) == 0  # fmt: skip

    async def listed() -> list[str]:
        store = await Store.open(connect(store_url), prefix, 4)
        page, _, _ = await store.enrollment_search.page(
            "acme", exports.EnrollmentFilter(), 1000, None
        )
        await store.close()
        return [e.id for e in page]

    return asyncio.run(listed())


def test_export_to_a_file_and_resume(
    store_url: str,
    prefix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(enrollment_search, "EXPORT_PAGE", 50)
    config = _config(tmp_path, store_url, prefix, monkeypatch)
    eids = _seed(tmp_path, store_url, prefix, config)
    assert len(eids) == N
    out = tmp_path / "enrollments.csv"
    args = ["--config", config, "export", "enrollments", "--tenant", "acme", "--out", str(out)]
    assert cli.main([*args, "--format", "csv"]) == 0
    assert f"{N} enrollments written" in capsys.readouterr().out
    with out.open() as f:
        table = list(csv.DictReader(f))
    assert sorted(t["id"] for t in table) == sorted(eids)
    assert (tmp_path / "enrollments.csv.cursor").read_text() == ""

    # Cut off after two pages (the third's rows half written): --resume finishes it.
    real = exports.enrollments
    ndjson = tmp_path / "enrollments.ndjson"
    args[-1] = str(ndjson)

    async def two_pages(*a: Any) -> AsyncIterator[exports.Chunk]:
        n = 0
        async for chunk in real(*a):
            yield chunk
            n += 1
            if n == 2:
                raise ConnectionError("the store went away")

    monkeypatch.setattr(exports, "enrollments", two_pages)
    with pytest.raises(ConnectionError):
        cli.main(args)
    monkeypatch.setattr(exports, "enrollments", real)
    with ndjson.open("ab") as f:
        f.write(b'{"id": "enr_half')
    lines = ndjson.read_text().splitlines()
    assert len(lines) > 2 and lines[-1] == '{"id": "enr_half'
    assert cli.main([*args, "--resume"]) == 0
    resumed = [json.loads(line)["id"] for line in ndjson.read_text().splitlines()]
    assert resumed == [t["id"] for t in table]  # the export's order, each once
    assert cli.main([*args, "--resume"]) == 0  # complete: nothing more
    assert "is complete" in capsys.readouterr().err

    assert cli.main([*args, "--tenant", "nobody"]) == 2
    assert cli.main([*args[:-2], "--out", str(tmp_path / "new"), "--resume"]) == 2
    events = ["--config", config, "export", "events", "--tenant", "acme", "--type", "nope"]
    assert cli.main([*events, "--out", str(tmp_path / "ev")]) == 2
