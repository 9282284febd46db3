"""An on-disk outbox: results wait here until the destination has confirmed them.

Layout under the outbox folder::

    pending/<key>.dcm    the DICOM bytes to send
    pending/<key>.json   its state: attempts, next attempt time, last error (no patient data)
    failed/<key>.dcm     a poison item, moved aside after ``max_attempts`` tries
    failed/<key>.json    ... with the reason
    seen/<digest>        one empty file per source instance already turned into results
    sent.count           how many items the destination has confirmed, ever

Every file is written atomically (a temporary file, fsync, rename). An item exists once its
``.json`` exists (written after the ``.dcm``); it is removed only after ``send`` returned,
which the sender does only once the destination confirmed. A crash at any point leaves
either the whole item or nothing: a ``.dcm`` without its ``.json`` is an interrupted write,
removed when the outbox is opened. Keys are chosen by the caller, so enqueueing the same key
twice keeps one item. Retries back off exponentially (``base_delay_s`` doubled per attempt, at
most ``max_delay_s``) and the schedule survives restarts since it lives in the ``.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrmsn.fileio import atomic_write_bytes, atomic_write_text

LOGGER = logging.getLogger("cxr_msn.pacs.outbox")
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_REASON_CHARS = 300


class DeliveryError(Exception):
    """The destination did not confirm an item (unreachable, refused, or a failure status)."""


@dataclass(frozen=True)
class Item:
    key: str
    attempts: int
    next_attempt_at: float
    created_at: float
    last_error: str | None
    order: int = 0  # enqueue order (nanoseconds), so equal clock readings keep it


Sender = Callable[[bytes, Item], None]


def source_digest(uid: str) -> str:
    """A short stable name for a source instance: used for keys and logs instead of its UID."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:24]


class Outbox:
    def __init__(
        self,
        root: Path,
        *,
        max_attempts: int = 10,
        base_delay_s: float = 5.0,
        max_delay_s: float = 600.0,
        clock: Callable[[], float] = time.time,
        repair: bool = True,
    ) -> None:
        """``repair=False`` opens for reading only (the status view beside a running listener)."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if base_delay_s < 0 or max_delay_s < base_delay_s:
            raise ValueError("need 0 <= base_delay_s <= max_delay_s")
        self.root = Path(root)
        self.pending = self.root / "pending"
        self.failed = self.root / "failed"
        self.seen_dir = self.root / "seen"
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.clock = clock
        self._lock = threading.Lock()
        self.changed = threading.Event()  # set whenever an item is added (wakes a sender)
        if repair:
            for folder in (self.pending, self.failed, self.seen_dir):
                folder.mkdir(parents=True, exist_ok=True)
            self._remove_interrupted_writes()

    # -- writing ---------------------------------------------------------------------------

    def enqueue(self, key: str, data: bytes) -> bool:
        """Add an item, due now; False (and nothing written) if ``key`` is already queued."""
        _check_key(key)
        with self._lock:
            meta = self.pending / f"{key}.json"
            if meta.exists():
                return False
            now = self.clock()
            atomic_write_bytes(self.pending / f"{key}.dcm", data)
            self._write_state(Item(key, 0, now, now, None, time.time_ns()))
        self.changed.set()
        return True

    def mark_seen(self, name: str) -> None:
        _check_key(name)
        atomic_write_bytes(self.seen_dir / name, b"")

    def seen(self, name: str) -> bool:
        _check_key(name)
        return (self.seen_dir / name).exists()

    # -- sending ---------------------------------------------------------------------------

    def items(self) -> list[Item]:
        """Every pending item, oldest first."""
        found = []
        for path in self.pending.glob("*.json"):
            item = self._read_state(path)
            if item is not None:
                found.append(item)
        return sorted(found, key=lambda item: (item.created_at, item.order, item.key))

    def due(self) -> list[Item]:
        now = self.clock()
        return [item for item in self.items() if item.next_attempt_at <= now]

    def next_due_in(self) -> float | None:
        """Seconds until the next item is due (0 if one is due now), None when nothing is pending."""
        items = self.items()
        if not items:
            return None
        return max(0.0, min(item.next_attempt_at for item in items) - self.clock())

    def deliver_due(self, send: Sender) -> dict[str, int]:
        """Try every due item once with ``send``: counts of sent, retried later and moved aside.

        ``send`` returns only once the destination confirmed the item; any exception is a
        failed attempt (its type and message, cut short, become the item's last error).
        """
        counts = {"sent": 0, "retry": 0, "failed": 0}
        for item in self.due():
            try:
                data = (self.pending / f"{item.key}.dcm").read_bytes()
            except FileNotFoundError:  # removed meanwhile (another sender, or by hand)
                continue
            try:
                send(data, item)
            except Exception as error:
                counts["failed" if self._attempt_failed(item, error) else "retry"] += 1
                continue
            self._remove(item.key)
            self._add_sent(1)
            counts["sent"] += 1
        return counts

    def _attempt_failed(self, item: Item, error: Exception) -> bool:
        """Record a failed attempt; True when the item was moved aside as poison."""
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:MAX_REASON_CHARS]
        attempts = item.attempts + 1
        with self._lock:
            if attempts >= self.max_attempts:
                state = {**_state(item), "attempts": attempts, "last_error": reason}
                state["failed_at"] = self.clock()
                state["reason"] = f"gave up after {attempts} attempts; last: {reason}"
                source = self.pending / f"{item.key}.dcm"
                with contextlib.suppress(FileNotFoundError):
                    source.replace(self.failed / f"{item.key}.dcm")
                atomic_write_text(self.failed / f"{item.key}.json", json.dumps(state, indent=1))
                (self.pending / f"{item.key}.json").unlink(missing_ok=True)
                LOGGER.error("outbox item %s moved aside after %d attempts: %s", item.key, attempts, reason)
                return True
            delay = min(self.max_delay_s, self.base_delay_s * 2 ** (attempts - 1))
            self._write_state(
                Item(item.key, attempts, self.clock() + delay, item.created_at, reason, item.order)
            )
        LOGGER.warning(
            "outbox item %s not delivered (attempt %d of %d, next in %.1f s): %s",
            item.key,
            attempts,
            self.max_attempts,
            delay,
            reason,
        )
        return False

    def _remove(self, key: str) -> None:
        with self._lock:
            (self.pending / f"{key}.json").unlink(missing_ok=True)  # the item is gone from here on
            (self.pending / f"{key}.dcm").unlink(missing_ok=True)

    # -- status ----------------------------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        items = self.items()
        now = self.clock()
        return {
            "pending": len(items),
            "due": sum(item.next_attempt_at <= now for item in items),
            "retrying": sum(item.attempts > 0 for item in items),
            "failed": len(list(self.failed.glob("*.json"))),
            "sent": self.sent_count(),
            "oldest_pending_age_s": round(now - items[0].created_at, 1) if items else None,
        }

    def failed_items(self) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.failed.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                found.append(json.loads(path.read_text()))
        return found

    def sent_count(self) -> int:
        try:
            return int((self.root / "sent.count").read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _add_sent(self, number: int) -> None:
        with self._lock:
            atomic_write_text(self.root / "sent.count", str(self.sent_count() + number))

    # -- files -----------------------------------------------------------------------------

    def _write_state(self, item: Item) -> None:
        atomic_write_text(self.pending / f"{item.key}.json", json.dumps(_state(item), indent=1))

    def _read_state(self, path: Path) -> Item | None:
        try:
            state = json.loads(path.read_text())
            return Item(
                key=path.stem,
                attempts=int(state["attempts"]),
                next_attempt_at=float(state["next_attempt_at"]),
                created_at=float(state["created_at"]),
                last_error=state.get("last_error"),
                order=int(state.get("order", 0)),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            LOGGER.error("outbox state %s is unreadable; retrying it now", path.name)
            now = self.clock()
            return Item(path.stem, 0, now, now, "unreadable state")

    def _remove_interrupted_writes(self) -> None:
        for folder in (self.pending, self.failed, self.seen_dir, self.root):
            for temporary in folder.glob(".*.tmp"):
                temporary.unlink(missing_ok=True)
        for data in self.pending.glob("*.dcm"):
            if not data.with_suffix(".json").exists():
                data.unlink(missing_ok=True)


def _state(item: Item) -> dict[str, Any]:
    return {
        "attempts": item.attempts,
        "next_attempt_at": item.next_attempt_at,
        "created_at": item.created_at,
        "last_error": item.last_error,
        "order": item.order,
    }


def _check_key(key: str) -> None:
    if not KEY_PATTERN.match(key):
        raise ValueError(f"outbox key must match {KEY_PATTERN.pattern}: {key[:40]!r}")
