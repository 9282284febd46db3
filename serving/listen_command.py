"""Receive chest X-rays from a PACS or router by DICOM C-STORE and store the results back.

A C-STORE SCP (``--ae-title``, ``--port``) accepting CR, DX and chest Secondary Capture
images in the transfer syntaxes the decoder reads. Each image goes through the same
prediction path as ``POST /predict_dicom``; its Structured Report and heatmap Secondary
Capture are written to an on-disk outbox before the C-STORE is answered, then stored at
``--destination`` by C-STORE, retried with back-off (across restarts) until the destination
confirms; after ``--max-attempts`` an item is moved to ``OUTBOX/failed`` with its reason.
Other modalities, lateral views and instances already processed are answered with success
(so the sender does not retry) and skipped with the reason logged. An undecodable image is
refused (0xC000) and nothing is queued. ``--status`` prints the outbox's counts and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from serving.config import add_model_arguments

HELP = "DICOM C-STORE listener: predict on received chest X-rays, store SR + heatmap at a PACS"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ae-title", default="CXRMSN", help="this listener's AE title (also used to send)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=11112, help="DICOM port (0: any free port)")
    parser.add_argument(
        "--destination",
        default=os.environ.get("CXR_MSN_PACS_DESTINATION"),
        help="where results are stored, HOST:PORT:AET (env CXR_MSN_PACS_DESTINATION)",
    )
    parser.add_argument(
        "--allow-caller",
        action="append",
        default=None,
        metavar="AET",
        help="accept associations only from this calling AE title (repeat for several; env "
        "CXR_MSN_PACS_ALLOWED_CALLERS, comma-separated); default: any",
    )
    parser.add_argument(
        "--outbox",
        type=Path,
        default=Path(os.environ.get("CXR_MSN_OUTBOX", "pacs-outbox")),
        help="outbox folder (env CXR_MSN_OUTBOX)",
    )
    parser.add_argument("--max-attempts", type=int, default=10, help="tries before an item is moved aside")
    parser.add_argument("--retry-base-s", type=float, default=5.0, help="first retry delay (doubles per try)")
    parser.add_argument("--retry-max-s", type=float, default=600.0, help="longest retry delay")
    add_model_arguments(parser)
    parser.add_argument(
        "--decode-workers",
        type=int,
        default=None,
        help="decode worker processes (0: decode in this process); default: CXR_MSN_DECODE_WORKERS "
        "or as the service",
    )
    parser.add_argument("--status", action="store_true", help="print the outbox's counts (JSON) and exit")


def run(args: argparse.Namespace) -> int:
    from serving.pacs.outbox import Outbox

    if args.status:
        outbox = Outbox(args.outbox, repair=False)
        print(json.dumps({**outbox.counts(), "failed_items": outbox.failed_items()}, indent=1))
        return 0
    if not args.destination:
        print("cxr-msn listen: --destination HOST:PORT:AET is required", file=sys.stderr)
        return 2
    return _listen(args)


def _listen(args: argparse.Namespace) -> int:
    import logging

    from cxrmsn.repository import RepositoryError
    from serving import decode_pool
    from serving.config import ServingConfig
    from serving.pacs.listener import CStoreSender, Destination, Listener
    from serving.pacs.outbox import Outbox
    from serving.predictor import load_predictor

    # pynetdicom's DEBUG output dumps data set elements (patient attributes): never below WARNING.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # (Listener.start does it too)
    try:
        destination = Destination.parse(args.destination)
        outbox = Outbox(
            args.outbox,
            max_attempts=args.max_attempts,
            base_delay_s=args.retry_base_s,
            max_delay_s=args.retry_max_s,
        )
    except ValueError as error:
        print(f"cxr-msn listen: {error}", file=sys.stderr)
        return 2
    try:
        predictor = load_predictor(args.repository, variant=args.variant)
    except RepositoryError as error:
        print(f"cxr-msn listen: {error}", file=sys.stderr)
        return 2
    config = ServingConfig.from_env()
    workers = config.decode_workers if args.decode_workers is None else args.decode_workers
    pool = None
    if workers > 0:
        pool = decode_pool.DecodePool(
            workers, deadline_s=config.decode_deadline_s, memory_mib=config.decode_memory_mib
        )
        pool.wait_ready()
    preprocessing = predictor.preprocessing

    def prepare(data: bytes) -> tuple[object, object]:
        return decode_pool.prepare(pool, data, preprocessing, read_source=True)

    callers = args.allow_caller
    if callers is None:
        callers = [c for c in os.environ.get("CXR_MSN_PACS_ALLOWED_CALLERS", "").split(",") if c.strip()]
    sender = CStoreSender(destination, args.ae_title)
    listener = Listener(
        predictor,
        outbox,
        prepare,
        ae_title=args.ae_title,
        host=args.host,
        port=args.port,
        allowed_callers=callers,
        send=sender,
        close_sender=sender.close,
    )
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    listener.start()
    print(f"cxr-msn listen: ready on port {listener.port}, results to {destination}", flush=True)
    try:
        stopping.wait()
    finally:
        listener.stop()
        if pool is not None:
            pool.close()
    return 0
