"""seqd: a self-hosted sequence engine on Redis."""

__version__ = "0.1.0"
