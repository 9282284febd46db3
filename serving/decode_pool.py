"""Decoding in a small pool of worker processes, each bounded in time and memory (issue 15).

An upload can cost far more to decode than its size suggests: a progressive JPEG with one
scan repeated 2,000 times (300 KB, seconds of libjpeg per copy), a PNG of a million empty
chunks, a DICOM element of a million backslash-separated numbers (hundreds of MB of Python
objects). A thread cannot be stopped, so in the service process such a decode holds its CPU,
its memory and a decode slot until it ends. Here every decode runs in one of N long-lived
worker processes instead:

- a worker is a fresh interpreter (``subprocess``, not ``fork``: the service runs threads)
  with one BLAS/OpenMP thread; it imports numpy, Pillow, pydicom and highdicom once, sets
  RLIMIT_CORE to 0 (no core file of patient data) and RLIMIT_AS to what those imports mapped
  plus ``memory_mib``, then runs one job at a time;
- the parent sends the upload's bytes and waits at most ``deadline_s``; past it the worker is
  killed (SIGKILL) and replaced: ``DecodeTimeoutError``, 422 ``decode_timeout``;
- a ``MemoryError`` in the worker (an allocation past its limit) or the worker dying (a native
  decoder that cannot handle a refused allocation, the kernel's OOM killer): the worker is
  replaced, ``DecodeTooLargeError``, 413 ``decode_too_large``;
- a ``DecodeError`` raised in the worker is raised again in the parent (class, code, detail);
  any other exception becomes ``corrupt_input`` naming only its type.

A replacement starts at once and is used once its imports are done. Workers exit when the
pool closes or the service process goes away (their socket closes), and each sets an alarm
a few seconds past the deadline for every job, in case nobody is left to kill it.

The pool bounds CPU time and memory; it is not a sandbox against code execution in a
decoder: workers run as the service's user and the parent unpickles their replies.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import math
import os
import pickle
import queue
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cxrmsn.errors import CorruptInputError, DecodeError

if TYPE_CHECKING:
    from cxrmsn.preprocess import PreprocessConfig
    from serving.predictor import PreparedImage

LOGGER = logging.getLogger("cxr_msn.serving.decode")
MIB = 1024 * 1024
#: What a worker imports before it takes jobs (and before its memory limit is set).
WARM_MODULES = (
    "numpy",
    "PIL.Image",
    "PIL.PngImagePlugin",
    "PIL.JpegImagePlugin",
    "pydicom",
    "pydicom.pixels",
    "cxrmsn.imaging.dicom",
    "cxrmsn.imaging.raster",
    "cxrmsn.preprocess",
    "serving.predictor",
    "serving.dicom_output",
)
#: The most a DICOM header read for DICOM output may take, pickled, to come back to the
#: service: a real header is well under 1 MB; a million-value element is tens of MB of
#: Python objects, which the service would then spend seconds unpickling.
MAX_SOURCE_HEADER_BYTES = 4 * MIB
#: A worker kills itself this long after its deadline if nobody has (the service is gone).
ALARM_MARGIN_S = 5
SINGLE_THREADED = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
# Replies from a worker, and what the parent makes of a worker that does not answer.
OK, ERROR, FAILED, MEMORY, READY = "ok", "error", "failed", "memory", "ready"
TIMEOUT, DIED, NOT_SENT, NO_START = "timeout", "died", "not sent", "did not start"
_HEALTHY = (OK, ERROR, FAILED)
_BOOTSTRAP = "import sys; from serving.decode_pool import worker_main; worker_main(sys.argv[1:])"

T = TypeVar("T")


class DecodeTimeoutError(DecodeError):
    """Decoding the upload took longer than the per-upload deadline (422)."""

    code = "decode_timeout"


class DecodeTooLargeError(DecodeError):
    """Decoding the upload needed more memory than a decoder may use (413)."""

    code = "decode_too_large"


class DecodeUnavailableError(DecodeError):
    """No decode worker could be started (503); the upload was not looked at."""

    code = "decode_unavailable"


class _Slot:
    """One of the pool's N places: a worker process, or none yet (started when taken)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.conn: Connection | None = None
        self.ready = False


class DecodePool:
    """N worker processes; ``run(fn, data, *args)`` calls ``fn(data, *args)`` in one of them.

    ``fn`` must be a module-level function (it is pickled by name) and its result picklable.
    ``run`` blocks until a worker is free, so callers bound how many call it at once (the
    service: an ``anyio.CapacityLimiter`` of ``size``). Thread-safe.
    """

    def __init__(
        self, workers: int, *, deadline_s: float, memory_mib: int, startup_timeout_s: float = 60.0
    ) -> None:
        if workers < 1:
            raise ValueError(f"a decode pool needs at least one worker, got {workers}")
        if not 0 < deadline_s < math.inf:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        self.size = workers
        self.deadline_s = deadline_s
        self.memory_mib = memory_mib
        self.startup_timeout_s = startup_timeout_s
        self.replaced = 0  # workers killed or lost and started again, since the pool started
        self._lock = threading.Lock()
        self._closed = False
        self._slots = [_Slot() for _ in range(workers)]
        self._idle: queue.Queue[_Slot] = queue.Queue()
        for slot in self._slots:
            with contextlib.suppress(OSError):  # retried when the slot is taken
                self._launch(slot)
            self._idle.put(slot)
        atexit.register(self.close)

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def worker_pids(self) -> list[int]:
        return [slot.process.pid for slot in self._slots if slot.process is not None]

    def wait_ready(self) -> None:
        """Wait until every worker has done its imports; ``DecodeUnavailableError`` if one cannot.

        For start-up, before any ``run``: a worker that cannot start is a broken install.
        """
        slots = [self._take() for _ in range(self.size)]
        try:
            for slot in slots:
                if not self._await_ready(slot):
                    raise DecodeUnavailableError("a decode worker did not start; see the server log")
        finally:
            for slot in slots:
                self._release(slot, healthy=slot.ready, reason=NO_START)

    def run(self, fn: Callable[..., T], data: bytes, *args: Any) -> T:
        """``fn(data, *args)`` in a worker, within the deadline and memory limit.

        Raises ``DecodeTimeoutError``, ``DecodeTooLargeError``, the worker's ``DecodeError``,
        ``CorruptInputError`` for any other exception in ``fn``, or ``DecodeUnavailableError``.
        """
        for attempt in (1, 2):
            slot = self._take()
            try:
                kind, value = self._exchange(slot, fn, data, args)
            except BaseException:
                self._release(slot, healthy=False, reason="was interrupted")
                raise
            self._release(slot, healthy=kind in _HEALTHY, reason=kind)
            if kind != NOT_SENT or attempt == 2:
                break  # else the worker had died before this job reached it: try a fresh one
        return self._result(kind, value)

    def close(self) -> None:
        """Stop every idle worker now; busy ones are stopped when their job ends."""
        with self._lock:
            self._closed = True
        idle = []
        while True:
            try:
                idle.append(self._idle.get_nowait())
            except queue.Empty:
                break
        for slot in idle:
            self._stop(slot)
            self._idle.put(slot)  # so that a later run() takes it and is refused, not blocked

    def _result(self, kind: str, value: Any) -> Any:
        if kind == OK:
            return value
        if kind == ERROR and isinstance(value, DecodeError):
            raise value
        if kind == FAILED:
            raise CorruptInputError(f"the upload cannot be decoded ({value})")
        if kind == TIMEOUT:
            raise DecodeTimeoutError(
                f"decoding this upload took longer than {self.deadline_s:g} s; the decoder was stopped"
            )
        if kind in (MEMORY, DIED):
            raise DecodeTooLargeError(
                f"decoding this upload needed more than the {self.memory_mib} MiB a decoder may use "
                "(or the decoder stopped); it was not decoded"
            )
        raise DecodeUnavailableError("no decode worker could be started; see the server log")

    def _take(self) -> _Slot:
        slot = self._idle.get()
        if self._closed:
            self._idle.put(slot)
            raise DecodeUnavailableError("the decode pool is closed")
        if slot.process is None:
            try:
                self._launch(slot)
            except OSError as error:
                self._idle.put(slot)
                LOGGER.error("cannot start a decode worker: %s", type(error).__name__)
                raise DecodeUnavailableError(
                    "no decode worker could be started; see the server log"
                ) from None
        return slot

    def _release(self, slot: _Slot, *, healthy: bool, reason: str = "") -> None:
        if not healthy and slot.process is not None:
            LOGGER.warning(
                "decode worker %d %s; starting a new one", slot.process.pid, _describe(reason, self)
            )
            self._stop(slot)
            with self._lock:
                self.replaced += 1
        if self._closed:
            self._stop(slot)
        elif slot.process is None:
            with contextlib.suppress(OSError):  # retried when the slot is next taken
                self._launch(slot)
        self._idle.put(slot)

    def _launch(self, slot: _Slot) -> None:
        parent_end, child_end = socket.socketpair()
        try:
            slot.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _BOOTSTRAP,
                    str(child_end.fileno()),
                    str(self.memory_mib),
                    str(self._alarm_s),
                ],
                pass_fds=(child_end.fileno(),),
                env=_worker_environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        slot.conn = Connection(parent_end.detach())
        slot.ready = False

    @property
    def _alarm_s(self) -> int:
        return math.ceil(self.deadline_s) + ALARM_MARGIN_S

    def _await_ready(self, slot: _Slot) -> bool:
        if slot.ready:
            return True
        assert slot.conn is not None
        try:
            if slot.conn.poll(self.startup_timeout_s):
                kind, _ = _receive(slot.conn)
                slot.ready = kind == READY
        except (EOFError, OSError):
            slot.ready = False
        return slot.ready

    def _exchange(
        self, slot: _Slot, fn: Callable[..., Any], data: bytes, args: tuple[Any, ...]
    ) -> tuple[str, Any]:
        if not self._await_ready(slot):
            return NO_START, None
        assert slot.conn is not None
        deadline = time.monotonic() + self.deadline_s
        try:
            slot.conn.send_bytes(pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL))
            slot.conn.send_bytes(data)
        except OSError:  # the worker is gone: before this job reached it, or while reading it
            return _reply_if_any(slot.conn) or (NOT_SENT, None)
        if not slot.conn.poll(max(0.0, deadline - time.monotonic())):
            return TIMEOUT, None
        try:
            return _receive(slot.conn)
        except (EOFError, OSError):
            return DIED, None

    def _stop(self, slot: _Slot) -> None:
        process, conn = slot.process, slot.conn
        slot.process, slot.conn, slot.ready = None, None, False
        if conn is not None:
            conn.close()
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError):
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


def _describe(reason: str, pool: DecodePool) -> str:
    return {
        TIMEOUT: f"passed its {pool.deadline_s:g} s deadline and was killed",
        MEMORY: f"ran out of its {pool.memory_mib} MiB",
        DIED: "exited during a job (out of memory or crashed)",
        NOT_SENT: "had exited before its job",
        NO_START: "did not start",
    }.get(reason, reason)


def _worker_environment() -> dict[str, str]:
    env = {**os.environ, **dict.fromkeys(SINGLE_THREADED, "1")}
    root = str(Path(__file__).resolve().parents[1])  # the folder holding serving/ and cxrmsn/
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _send(conn: Connection, reply: tuple[str, Any]) -> None:
    """Pickle with out-of-band buffers: numpy arrays go as they are, without a pickled copy."""
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(reply, protocol=5, buffer_callback=buffers.append)
    views = [buffer.raw() for buffer in buffers]
    conn.send_bytes(pickle.dumps((header, [view.nbytes for view in views]), protocol=5))
    for view in views:
        conn.send_bytes(view)


def _receive(conn: Connection) -> tuple[str, Any]:
    header, sizes = pickle.loads(conn.recv_bytes())
    buffers = []
    for size in sizes:
        buffer = bytearray(size)  # writable, so are the arrays made on it
        conn.recv_bytes_into(buffer)
        buffers.append(buffer)
    kind, value = pickle.loads(header, buffers=buffers)
    return str(kind), value


def _reply_if_any(conn: Connection) -> tuple[str, Any] | None:
    try:
        return _receive(conn) if conn.poll(0) else None
    except (EOFError, OSError):
        return None


# The worker side.


def worker_main(argv: list[str]) -> None:
    """A worker's life: imports, limits, then one job at a time until its socket closes."""
    fd, memory_mib, alarm_s = (int(value) for value in argv)
    conn = Connection(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the service; it stops the pool
    warnings.simplefilter("ignore")  # pydicom's warnings quote element values
    logging.disable(logging.CRITICAL)
    try:
        for name in WARM_MODULES:
            importlib.import_module(name)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        limit = _mapped_bytes() + memory_mib * MIB
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except Exception as error:
        _send(conn, (FAILED, type(error).__name__))
        return
    _send(conn, (READY, os.getpid()))
    while True:
        try:
            job = conn.recv_bytes()
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the pool closed, or the service is gone
        except MemoryError:
            _send(conn, (MEMORY, None))
            return
        signal.alarm(alarm_s)
        reply = _call(job, data)
        del job, data
        try:
            _send(conn, reply)
        except OSError:
            return
        except MemoryError:  # pickling the result: nothing was sent yet
            reply = (MEMORY, None)
            _send(conn, reply)
        except Exception as error:  # a result that cannot be pickled
            _send(conn, (FAILED, type(error).__name__))
        signal.alarm(0)
        if reply[0] == MEMORY:
            return  # a fresh worker is cheaper to trust than one that hit its limit


def _call(job: bytes, data: bytes) -> tuple[str, Any]:
    try:
        fn, args = pickle.loads(job)
        return OK, fn(data, *args)
    except DecodeError as error:
        error.__traceback__ = None
        return ERROR, error
    except MemoryError:
        return MEMORY, None
    except Exception as error:  # only the type: messages can quote file values
        return FAILED, type(error).__name__


def _mapped_bytes() -> int:
    """This process's address space now (VmSize), or 0 where /proc is not there."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


# The service's job: decode, preprocess and (for DICOM output) read the header.


def prepare_upload(
    data: bytes, preprocessing: PreprocessConfig, read_source: bool
) -> tuple[PreparedImage, bytes | None]:
    """In a worker: ``prepare_image``, and for DICOM output the source header, pickled."""
    from serving.predictor import prepare_image

    prepared = prepare_image(data, preprocessing, keep_header=read_source)
    if not read_source:
        return prepared, None
    from serving import dicom_output

    source = dicom_output.source_header(prepared.decoded)
    prepared = replace(prepared, decoded=replace(prepared.decoded, header=None))  # sent once, below
    source.buffer = None  # pydicom may keep the whole upload here, pixel data included
    header = pickle.dumps(source, protocol=pickle.HIGHEST_PROTOCOL)
    if len(header) > MAX_SOURCE_HEADER_BYTES:
        raise DecodeTooLargeError(
            f"DICOM output: the header is {len(header) // MIB} MiB once read, more than the "
            f"{MAX_SOURCE_HEADER_BYTES // MIB} MiB that are copied into the outputs"
        )
    return prepared, header


def prepare(
    pool: DecodePool | None, data: bytes, preprocessing: PreprocessConfig, *, read_source: bool = False
) -> tuple[PreparedImage, Any]:
    """The prepared image and, with ``read_source``, the DICOM header for DICOM output.

    In ``pool`` when there is one, else here (no deadline, no memory limit). Blocking: call
    it in a thread. Raises ``DecodeError``.
    """
    if pool is None:
        from serving.predictor import prepare_image

        prepared = prepare_image(data, preprocessing, keep_header=read_source)
        if not read_source:
            return prepared, None
        from serving import dicom_output

        return prepared, dicom_output.source_header(prepared.decoded)
    prepared, header = pool.run(prepare_upload, data, preprocessing, read_source)
    return prepared, None if header is None else pickle.loads(header)
