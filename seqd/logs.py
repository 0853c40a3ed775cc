"""structlog setup: JSON lines for journald and shippers, readable output on a terminal.

Every line, seqd's own and the libraries' (stdlib `logging`), goes through one processor
chain ending in the same renderer, after `redact.log_processor` has hidden credentials
and message content. With `log.file` set, lines go to that file; SIGHUP calls `reopen()`
(after logrotate moved it) and `set_level()` (the level re-read from the config file).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import IO, Any

import msgspec
import structlog

from seqd.config import ConfigError, LogConfig, load
from seqd.redact import log_processor


class LogFile:
    """A file appended to line by line that can be reopened under the same path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fh = self._open()

    def _open(self) -> IO[str]:
        return open(self.path, "a", buffering=1, encoding="utf-8")

    def write(self, text: str) -> int:
        with self._lock:
            return self._fh.write(text)

    def flush(self) -> None:
        with self._lock:
            self._fh.flush()

    def isatty(self) -> bool:
        return False

    def reopen(self) -> None:
        fresh = self._open()
        with self._lock:
            old, self._fh = self._fh, fresh
        old.close()

    def close(self) -> None:
        with self._lock:
            self._fh.close()


class _Stderr:
    """sys.stderr as it is at each write, not as it was at setup (tests swap it).

    A record reaches stderr whole, in one write: Python's stderr writes through, and
    `print` writes a line and its newline apart, so the workers of one service, sharing
    one stderr, would otherwise cut into each other's lines."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[str] = []

    def write(self, text: str) -> int:
        with self._lock:
            if not text.endswith("\n"):
                self._pending.append(text)
                return len(text)
            line = "".join(self._pending) + text if self._pending else text
            self._pending.clear()
            sys.stderr.write(line)
            return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                sys.stderr.write("".join(self._pending))
                self._pending.clear()
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


class _State:
    config: LogConfig | None = None
    out: Any = None
    file: LogFile | None = None


_state = _State()
_log = structlog.get_logger(__name__)


_encode_json = msgspec.json.Encoder(enc_hook=repr).encode


def _json(obj: Any, **_: Any) -> str:
    # msgspec: several times faster than json.dumps on the access log's hot path.
    return _encode_json(obj).decode()


def _level(name: str) -> int:
    return int(getattr(logging, name.upper()))


def _shared_processors() -> list[structlog.types.Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        log_processor,
    ]


def _configure(config: LogConfig, out: Any) -> None:
    as_json = config.format == "json" or (
        config.format == "auto" and not getattr(out, "isatty", lambda: False)()
    )
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_json)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level(config.level)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries log through stdlib logging: same chain, same renderer, same destination.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_shared_processors(), structlog.stdlib.ExtraAdder()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "seqd", False)]:
        root.removeHandler(old)
    handler.seqd = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(max(_level(config.level), logging.INFO))
    # seqd's access middleware logs each request once; aiohttp's own access log would repeat it.
    logging.getLogger("aiohttp.access").disabled = True


def setup(config: LogConfig, stream: object = None) -> None:
    """Configure logging; `stream` (tests) wins over `log.file`, which wins over stderr."""
    if _state.file is not None and stream is None and config.file == _state.file.path:
        out: Any = _state.file
    else:
        if _state.file is not None:
            _state.file.close()
            _state.file = None
        if stream is not None:
            out = stream
        elif config.file:
            out = _state.file = LogFile(config.file)
        else:
            out = _Stderr()
    _state.config = config
    _state.out = out
    _configure(config, out)


def reopen() -> None:
    """Reopen `log.file` (after logrotate moved it away); no-op when logging elsewhere."""
    if _state.file is not None:
        _state.file.reopen()


def set_level(level: str) -> None:
    """Change the level at run time; loggers already handed out follow (they are not cached)."""
    if _state.config is None:
        return
    config = msgspec.structs.replace(_state.config, level=level)
    _state.config = config
    _configure(config, _state.out)


def reload(config_path: str | None) -> None:
    """SIGHUP: reopen `log.file` and take `log.level` from the config file as it is now.

    Only the level is reloaded; every other setting needs a restart. A config that no
    longer loads keeps the running level, with a warning naming the bad setting.
    """
    reopen()
    try:
        level = load(config_path).log.level
    except ConfigError as exc:
        _log.warning("log.reload_failed", error=str(exc))
        return
    set_level(level)
    _log.info("log.reloaded", level=level, file=_state.file.path if _state.file else None)
