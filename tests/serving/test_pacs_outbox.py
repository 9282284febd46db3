"""The on-disk outbox: atomic items, removal only after confirmation, back-off across restarts,
poison items moved aside, counts. The destination is a plain function that records what it got."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.pacs.outbox import DeliveryError, Item, Outbox


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Destination:
    """Stores what it is sent; ``down`` makes it refuse (as an unreachable PACS would)."""

    def __init__(self) -> None:
        self.down = False
        self.stored: list[tuple[str, bytes]] = []
        self.refuse: set[str] = set()

    def __call__(self, data: bytes, item: Item) -> None:
        if self.down:
            raise DeliveryError("no association with PACS@127.0.0.1:4242")
        if item.key in self.refuse:
            raise DeliveryError("PACS answered C-STORE status 0xA900")
        self.stored.append((item.key, data))


def open_outbox(root: Path, clock: Clock, **options: float) -> Outbox:
    settings = {"max_attempts": 3, "base_delay_s": 10.0, "max_delay_s": 25.0, **options}
    return Outbox(
        root,
        max_attempts=int(settings["max_attempts"]),
        base_delay_s=settings["base_delay_s"],
        max_delay_s=settings["max_delay_s"],
        clock=clock,
    )


def test_delivered_items_are_removed_only_after_the_destination_confirms(tmp_path: Path) -> None:
    clock, destination = Clock(), Destination()
    outbox = open_outbox(tmp_path, clock)
    assert outbox.enqueue("a.sr", b"report")
    assert outbox.enqueue("a.sc", b"capture")
    assert not outbox.enqueue("a.sr", b"other bytes")  # same key: still one item
    assert outbox.counts()["pending"] == 2

    def failing(data: bytes, item: Item) -> None:
        raise ConnectionResetError("peer went away mid-store")

    assert outbox.deliver_due(failing) == {"sent": 0, "retry": 2, "failed": 0}
    assert sorted(p.name for p in (tmp_path / "pending").iterdir()) == [
        "a.sc.dcm",
        "a.sc.json",
        "a.sr.dcm",
        "a.sr.json",
    ]
    clock.now += 10
    assert outbox.deliver_due(destination) == {"sent": 2, "retry": 0, "failed": 0}
    assert destination.stored == [("a.sr", b"report"), ("a.sc", b"capture")]
    assert list((tmp_path / "pending").iterdir()) == []
    counts = outbox.counts()
    assert (counts["pending"], counts["sent"], counts["failed"]) == (0, 2, 0)


def test_back_off_survives_a_restart_and_poison_items_are_moved_aside(tmp_path: Path) -> None:
    clock, destination = Clock(), Destination()
    outbox = open_outbox(tmp_path, clock)
    outbox.enqueue("good.sr", b"good")
    outbox.enqueue("bad.sr", b"bad")
    destination.down = True
    assert outbox.deliver_due(destination) == {"sent": 0, "retry": 2, "failed": 0}
    state = json.loads((tmp_path / "pending" / "good.sr.json").read_text())
    assert state["attempts"] == 1 and "no association" in state["last_error"]
    assert state["next_attempt_at"] == clock.now + 10  # base delay

    # A restart: a new Outbox on the same folder keeps the schedule.
    clock.now += 5
    outbox = open_outbox(tmp_path, clock)
    assert outbox.due() == []
    assert outbox.next_due_in() == pytest.approx(5.0)
    clock.now += 5
    assert outbox.deliver_due(destination)["retry"] == 2
    assert outbox.next_due_in() == pytest.approx(20.0)  # doubled
    clock.now += 20

    destination.down = False
    destination.refuse = {"bad.sr"}
    assert outbox.deliver_due(destination) == {"sent": 1, "retry": 0, "failed": 1}  # third try: aside
    assert destination.stored == [("good.sr", b"good")]
    counts = outbox.counts()
    assert (counts["pending"], counts["failed"], counts["sent"]) == (0, 1, 1)
    [failed] = outbox.failed_items()
    assert failed["attempts"] == 3
    assert "0xA900" in failed["reason"] and "after 3 attempts" in failed["reason"]
    assert (tmp_path / "failed" / "bad.sr.dcm").read_bytes() == b"bad"  # kept for a person to look at


def test_delays_are_capped(tmp_path: Path) -> None:
    clock, destination = Clock(), Destination()
    outbox = open_outbox(tmp_path, clock, max_attempts=10, base_delay_s=10.0, max_delay_s=25.0)
    outbox.enqueue("x.sr", b"x")
    destination.down = True
    delays = []
    for _ in range(4):
        outbox.deliver_due(destination)
        delay = outbox.next_due_in()
        assert delay is not None
        delays.append(delay)
        clock.now += delay
    assert delays == [10.0, 20.0, 25.0, 25.0]


def test_interrupted_writes_are_cleaned_on_open_and_never_sent(tmp_path: Path) -> None:
    clock, destination = Clock(), Destination()
    outbox = open_outbox(tmp_path, clock)
    outbox.enqueue("whole.sr", b"whole")
    # A crash between the data and its state, and one in the middle of a temporary file.
    (tmp_path / "pending" / "half.sr.dcm").write_bytes(b"half")
    (tmp_path / "pending" / ".whole.sr.json.0123abcd.tmp").write_text("{")
    outbox = open_outbox(tmp_path, clock)
    assert sorted(p.name for p in (tmp_path / "pending").iterdir()) == ["whole.sr.dcm", "whole.sr.json"]
    outbox.deliver_due(destination)
    assert destination.stored == [("whole.sr", b"whole")]


def test_seen_markers_and_a_read_only_status_view(tmp_path: Path) -> None:
    clock = Clock()
    outbox = open_outbox(tmp_path, clock)
    assert not outbox.seen("abc")
    outbox.mark_seen("abc")
    outbox.enqueue("abc.sr", b"r")
    (tmp_path / "pending" / "writing.sr.dcm").write_bytes(b"in flight")  # a listener mid-write
    view = Outbox(tmp_path, repair=False, clock=clock)
    assert view.seen("abc")
    assert view.counts()["pending"] == 1
    assert (tmp_path / "pending" / "writing.sr.dcm").exists()  # the status view repairs nothing
    with pytest.raises(ValueError):
        outbox.enqueue("../escape", b"x")
