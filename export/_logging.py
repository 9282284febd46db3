"""Keep other libraries' progress chatter out of the export log."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quieter(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the named loggers (``""`` for the root logger) to at least ``level`` for a while."""
    loggers = [logging.getLogger(name or None) for name in names]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(level, logger.level))
    try:
        yield
    finally:
        for logger, old in zip(loggers, previous, strict=True):
            logger.setLevel(old)
