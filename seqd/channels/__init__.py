"""Senders: one module per provider behind the small protocol in `base.py`."""
