"""Senders: a tenant's numbers and mailboxes with their limits, and the budgets that
enforce them (`models`: the API shapes and the stored record; `budget`: the pure arithmetic
of days, ramps and rotation; the counting itself is `takeBudget-1.lua`)."""
