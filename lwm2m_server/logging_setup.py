"""Log output for the daemon: structlog key-value events, one line each.

``configure_logging("info", "auto")`` renders events as readable console lines
when the stream is a terminal and as one JSON object per line otherwise. Every
line carries an ISO-8601 UTC ``timestamp``, the ``level`` and the ``event``.

Libraries that log through the standard ``logging`` module (aiocoap does) are
routed into the same stream and format, from ``stdlib_level`` (WARNING) upward,
so their chatter at INFO/DEBUG stays out unless asked for.

Values of keys that name a secret (``token``, ``password``, ``psk``, ``secret``,
``key`` — alone or as a suffix like ``api_token``) are replaced by ``***`` before
rendering, also inside nested mappings.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Mapping, MutableMapping, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("auto", "console", "json")
SECRET_NAMES = frozenset({"token", "password", "psk", "secret", "key"})
REDACTED = "***"
_MAX_DEPTH = 4


def configure_logging(
    level: str,
    fmt: str,
    stream: TextIO | None = None,
    *,
    stdlib_level: str = "warning",
) -> None:
    """Send structlog events at ``level`` and stdlib records at ``stdlib_level`` and
    above to ``stream`` (``sys.stderr`` at call time), rendered per ``fmt``.

    Calling it again replaces the previous set-up (handlers added by others, such
    as pytest's capture, are left alone).
    """
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if stdlib_level not in LEVELS:
        raise ValueError(f"stdlib log level must be one of {', '.join(LEVELS)}, got {stdlib_level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    stream = sys.stderr if stream is None else stream
    tty = _isatty(stream)
    console = fmt == "console" or (fmt == "auto" and tty)

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    tail: list[Processor]
    if console:
        # ConsoleRenderer formats exc_info itself
        tail = [structlog.dev.ConsoleRenderer(colors=tty)]
    else:
        tail = [
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]

    structlog.configure(
        processors=[*shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        context_class=dict,
        # Loggers bound at import time must follow a later reconfiguration.
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(LEVELS[stdlib_level])


_HANDLER_NAME = "tinymlaas"


def redact_secrets(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace the values of secret-named keys with ``***``."""
    return _redact(event_dict, 0)  # type: ignore[return-value]


def is_secret_name(name: str) -> bool:
    """``token``, ``api_token``, ``PSK``, ``client-secret``… but not ``token_file``."""
    lowered = name.lower().replace("-", "_")
    return lowered in SECRET_NAMES or lowered.rsplit("_", 1)[-1] in SECRET_NAMES


def _redact(mapping: MutableMapping[str, Any], depth: int) -> MutableMapping[str, Any]:
    for name, value in mapping.items():
        if isinstance(name, str) and is_secret_name(name):
            if value is not None:
                mapping[name] = REDACTED
        elif isinstance(value, Mapping) and depth < _MAX_DEPTH:
            mapping[name] = _redact(dict(value), depth + 1)
    return mapping


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
