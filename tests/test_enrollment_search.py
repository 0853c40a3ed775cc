"""GET /enrollments: enrollments across sequences, by contact, status, paused reason and
time of change, paged, against a real valkey-server."""

from __future__ import annotations

from typing import Any

import pytest

from seqd.store import enrollment_search
from seqd.times import now_ms, to_rfc3339
from tests.conftest import Api


async def _setup(api: Api) -> dict[str, Any]:
    contacts = []
    for i in range(10):
        code, c = await api.call("POST", "/contacts", {"phone": f"+1415555020{i}"})
        assert code == 201, c
        contacts.append(c["contact"]["id"])  # type: ignore[index]
    seqs, enrolled = [], {}
    for name, n in [("a", 10), ("b", 4), ("c", 3)]:
        steps = [{"kind": "sms", "wait_minutes": 60 * (len(seqs) + 1), "body": name}]
        code, s = await api.call(
            "POST", "/sequences", {"name": name, "status": "active", "steps": steps}
        )
        assert code == 201, s
        sid = s["sequence"]["id"]  # type: ignore[index]
        seqs.append(sid)
        items = [{"contact_id": cid} for cid in contacts[:n]]
        code, b = await api.call("POST", f"/sequences/{sid}/enrollments/batch", {"items": items})
        assert code == 200, b
        for cid, r in zip(contacts, b["results"], strict=False):  # type: ignore[index]
            enrolled[(sid, cid)] = r["enrollment"]["id"]
    return {"contacts": contacts, "seqs": seqs, "enrolled": enrolled}


async def _all(api: Api, query: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """Every item of the listing, page by page; the totals each page gave."""
    items: list[dict[str, Any]] = []
    totals, token = [], None
    for _ in range(100):
        url = f"/enrollments?{query}" + (f"&page_token={token}" if token else "")
        code, body = await api.call("GET", url)
        assert code == 200, body
        items += body["data"]  # type: ignore[index]
        totals.append(body["total"])  # type: ignore[index]
        token = body["next_page_token"]  # type: ignore[index]
        if token is None:
            return items, totals
    raise AssertionError("the listing never ended")


async def test_lists_across_sequences_with_filters(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = await _setup(api)
    seqs, contacts, enrolled = world["seqs"], world["contacts"], world["enrolled"]
    last_enrolled = now_ms()
    while now_ms() <= last_enrolled:  # the mark after every enrollment's time
        pass
    mark = to_rfc3339(now_ms())
    paused = [enrolled[(seqs[0], contacts[0])], enrolled[(seqs[0], contacts[5])],
              enrolled[(seqs[1], contacts[1])]]  # fmt: skip
    for eid in paused:
        code, body = await api.call("POST", f"/enrollments/{eid}/pause")
        assert code == 200, body
    cancelled = enrolled[(seqs[2], contacts[2])]
    code, body = await api.call("POST", f"/enrollments/{cancelled}/cancel")
    assert code == 200, body

    items, totals = await _all(api, "limit=3")
    assert sorted(e["id"] for e in items) == sorted(enrolled.values())
    assert set(totals) == {17}
    # Sequence after sequence in id order.
    order = [e["sequence_id"] for e in items]
    assert order == sorted(order)

    items, totals = await _all(api, "status=paused&limit=2")
    assert sorted(e["id"] for e in items) == sorted(paused) and set(totals) == {3}
    reason = items[0]["paused_reason"]
    items, totals = await _all(api, f"paused_reason={reason}&limit=2")
    assert sorted(e["id"] for e in items) == sorted(paused) and set(totals) == {None}

    items, _ = await _all(api, f"updated_since={mark}")
    assert sorted(e["id"] for e in items) == sorted([*paused, cancelled])

    items, totals = await _all(api, f"contact_id={contacts[2]}&limit=1")
    assert sorted(e["id"] for e in items) == sorted(enrolled[(s, contacts[2])] for s in seqs)
    assert set(totals) == {3}
    items, _ = await _all(api, f"contact_id={contacts[2]}&status=cancelled")
    assert [e["id"] for e in items] == [cancelled]
    items, _ = await _all(api, f"contact_id={contacts[1]}&sequence_id={seqs[1]}")
    assert [e["id"] for e in items] == [enrolled[(seqs[1], contacts[1])]]

    items, totals = await _all(api, f"sequence_id={seqs[1]}&limit=3")
    assert len(items) == 4 and set(totals) == {4}

    # A scan budget smaller than the page: pages come short (or empty) and go on.
    monkeypatch.setattr(enrollment_search, "SCAN_BUDGET", 2)
    items, _ = await _all(api, f"updated_since={mark}&limit=5")
    assert sorted(e["id"] for e in items) == sorted([*paused, cancelled])


async def test_bad_queries_name_the_field(api: Api) -> None:
    for query, status, field in [
        ("updated_since=yesterday", 422, "query.updated_since"),
        ("status=active&paused_reason=reply", 422, "query.paused_reason"),
        ("status=gone", 422, "query.status"),
        ("page_token=bm9wZQ", 422, "query.page_token"),
        ("page_token=MTpub3BlfA", 422, "query.page_token"),
        ("limit=0", 422, "query.limit"),
    ]:
        code, body = await api.call("GET", f"/enrollments?{query}")
        assert code == status, (query, body)
        assert body["errors"][0]["path"] == field, body  # type: ignore[index]
    code, body = await api.call("GET", "/enrollments?contact_id=con_nope")
    assert code == 404, body
    code, body = await api.call("GET", "/enrollments?sequence_id=seq_nope")
    assert code == 404, body
