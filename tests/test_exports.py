"""GET /exports/enrollments and /exports/events against a real valkey-server: every match,
as NDJSON or CSV, resumable from the token on a page's last row."""

from __future__ import annotations

import csv
import io
import json

import pytest

from seqd import exports
from seqd.config import WebhooksConfig
from seqd.events.reader import Reader
from seqd.store import enrollment_search
from tests.conftest import Api

N = 450  # three export pages of 200


async def _raw(api: Api, path: str) -> tuple[int, str, str]:
    resp = await api.client.get("/v1" + path, headers=api.headers())  # type: ignore[attr-defined]
    return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def _world(api: Api) -> tuple[str, list[str]]:
    steps = [{"kind": "sms", "wait_minutes": 60, "body": "hi"}]
    code, s = await api.call(
        "POST", "/sequences", {"name": "x", "status": "active", "steps": steps}
    )
    assert code == 201, s
    sid = s["sequence"]["id"]  # type: ignore[index]
    eids = []
    for start in range(0, N, 150):
        items = [{"contact": {"phone": f"+1415555{i:04d}"}, "metadata": {"row": i}}
                 for i in range(start, start + 150)]  # fmt: skip
        code, b = await api.call("POST", f"/sequences/{sid}/enrollments/batch", {"items": items})
        assert code == 200, b
        eids += [r["enrollment"]["id"] for r in b["results"]]  # type: ignore[index]
    return sid, eids


async def test_enrollments_as_ndjson_and_csv_resumable(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(enrollment_search, "EXPORT_PAGE", 50)
    sid, eids = await _world(api)
    code, ctype, text = await _raw(api, "/exports/enrollments")
    assert code == 200 and ctype.startswith("application/x-ndjson"), (code, text[:200])
    rows = [json.loads(line) for line in text.splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(eids)
    assert {r["metadata"]["row"] for r in rows} == set(range(N))
    tokens = [(n, r["next_page_token"]) for n, r in enumerate(rows) if "next_page_token" in r]
    assert len(tokens) >= N // 50 and tokens[-1][0] < N - 1  # pages of at most 50

    # Cut off after any page: resumed from its token, nothing twice, nothing lost.
    for n, token in tokens[:: max(1, len(tokens) // 4)]:
        code, _, rest = await _raw(api, f"/exports/enrollments?page_token={token}")
        assert code == 200
        resumed = [json.loads(line)["id"] for line in rest.splitlines()]
        assert resumed == [r["id"] for r in rows[n + 1 :]]

    code, ctype, text = await _raw(api, f"/exports/enrollments?format=csv&sequence_id={sid}")
    assert code == 200 and ctype.startswith("text/csv"), (code, text[:200])
    table = list(csv.DictReader(io.StringIO(text)))
    assert list(table[0]) == [*exports.ENROLLMENT_COLUMNS, "next_page_token"]
    assert [t["id"] for t in table] == [r["id"] for r in rows]
    assert json.loads(table[7]["metadata"]) == rows[7]["metadata"]
    assert [n for n, t in enumerate(table) if t["next_page_token"]] == [n for n, _ in tokens]
    assert {t["status"] for t in table} == {"active"}


async def test_events_export_matches_the_log(api: Api) -> None:
    _, eids = await _world(api)
    await Reader(api.store, WebhooksConfig()).run_once()
    code, ctype, text = await _raw(api, "/exports/events?type=sequence.enrollment.created")
    assert code == 200 and ctype.startswith("application/x-ndjson"), text[:200]
    rows = [json.loads(line) for line in text.splitlines()]
    assert sorted(r["data"]["id"] for r in rows) == sorted(eids)
    listed, token = [], None
    while True:
        url = "/events?type=sequence.enrollment.created&limit=200"
        code, body = await api.call("GET", url + (f"&page_token={token}" if token else ""))
        listed += [e["id"] for e in body["data"]]  # type: ignore[index]
        token = body["next_page_token"]  # type: ignore[index]
        if token is None:
            break
    assert [r["id"] for r in rows] == listed
    code, _, text = await _raw(api, "/exports/events?format=csv")
    table = list(csv.DictReader(io.StringIO(text)))
    assert {t["type"] for t in table} >= {"sequence.enrollment.created"}
    assert all(json.loads(t["data"]) for t in table)


async def test_bad_export_queries_are_4xx(api: Api) -> None:
    for path, status, field in [
        ("/exports/enrollments?format=xml", 422, "query.format"),
        ("/exports/enrollments?page_token=bm9wZQ", 422, "query.page_token"),
        ("/exports/enrollments?limit=5", 422, "query.limit"),
        ("/exports/events?since=yesterday", 422, "query.since"),
        ("/exports/events?type=nope", 422, "query.type"),
        ("/exports/enrollments?sequence_id=seq_nope", 404, None),
    ]:
        code, body = await api.call("GET", path)
        assert code == status, (path, body)
        if field:
            assert body["errors"][0]["path"] == field, body  # type: ignore[index]
