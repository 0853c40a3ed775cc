"""structlog setup: JSON lines for journald and shippers, readable output on a terminal."""

from __future__ import annotations

import logging
import sys

import structlog

from seqd.config import LogConfig


def setup(config: LogConfig, stream: object = None) -> None:
    out = stream or sys.stderr
    level = getattr(logging, config.level.upper())
    as_json = config.format == "json" or (
        config.format == "auto" and not getattr(out, "isatty", lambda: False)()
    )
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
