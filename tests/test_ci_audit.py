"""`.ci/audit.py`: a vulnerability fails CI; an unreachable database is reported, not failed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "audit.py"


def _audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ci_audit", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vulnerability_fails() -> None:
    report = {
        "dependencies": [
            {"name": "aiohttp", "version": "3.8.0", "vulns": [
                {"id": "GHSA-xxxx", "fix_versions": ["3.9.2"]}]},
            {"name": "msgspec", "version": "0.18.0", "vulns": []},
        ]
    }  # fmt: skip
    status, lines = _audit().verdict(report)
    assert status == 1 and lines == ["VULNERABLE aiohttp 3.8.0: GHSA-xxxx (fixed in 3.9.2)"]


def test_unreachable_database_is_reported_not_failed() -> None:
    report = {"dependencies": [{"name": "aiohttp", "skip_reason": "Dependency not found"}] * 3}
    status, lines = _audit().verdict(report)
    assert status == 0 and "NOT audited" in lines[0]


def test_clean_report_passes() -> None:
    report = {"dependencies": [{"name": "aiohttp", "version": "3.14", "vulns": []}]}
    status, lines = _audit().verdict(report)
    assert status == 0 and lines == ["pip-audit: 1 audited, no known vulnerability; 0 skipped"]
