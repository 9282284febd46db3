"""``metrics.json``: one typed, versioned record of what a downstream run measured.

Every writer (linear evaluation and fine-tuning through ``artifact.finish``, external
evaluation, the pixel baseline) builds a ``RunMetrics`` and writes ``to_json()``; every reader
in ``training`` (report, compare, experiment, controls, finetune's resume) goes through
``RunMetrics.read``, so no reader indexes the file by string or guesses which command wrote it.

The JSON stays flat, as before the record existed (export's validity gate and the recipes read
it as plain JSON): the named fields at the top level, ``details`` (what only one protocol
records: the augmentation, the fine-tuning label fraction, memory peaks ...) merged beside
them, and ``version``. Files written before ``version`` existed have the shape of version 1 and
are read as such; any other version is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from training.run_folder import write_json

METRICS_FILE = "metrics.json"
VERSION = 1
#: linear evaluation, fine-tuning, a classifier applied to another split, the pixel baseline
PROTOCOLS = ("linear", "finetune", "external", "pixels")

Block = dict[str, Any]  # ``training.downstream.metrics.evaluate``'s block of one split


@dataclass(frozen=True)
class RunMetrics:
    """One run's ``metrics.json``; a field that is ``None`` is not in the file."""

    protocol: str  # one of PROTOCOLS
    trained_labels: list[str]
    valid: Block | None = None  # linear, finetune, pixels (and the gate's input)
    test: Block | None = None  # every protocol but the gate's test helper
    untrained_labels: list[str] | None = None
    thresholds: dict[str, dict[str, Any]] | None = None  # the run's own: value, method, chosen_on ...
    calibration: dict[str, Any] | None = None  # ``calibration.calibration_report``
    encoder: dict[str, Any] | None = None  # linear, finetune: the encoder evaluated
    classifier: dict[str, Any] | None = None  # external: the classifier applied (with its thresholds)
    training_data: dict[str, Any] | None = None  # linear, finetune: ``data.data_summary``
    data: dict[str, Any] | None = None  # external: the manifest, images and label policy
    evaluated_split: str | None = None  # external
    label_masks: dict[str, Any] | None = None
    selected_run: str | None = None  # linear, finetune: the run kept on validation
    runs: list[dict[str, Any]] | None = None  # linear, finetune: every run of the protocol
    history: list[dict[str, Any]] | None = None  # finetune: the selected run's epochs
    best_epoch: int | None = None  # finetune
    finetune_runs: str | None = None  # finetune: "grid" or "single"
    pretraining_overlap: dict[str, Any] | None = None
    seconds: float | None = None
    details: dict[str, Any] = field(default_factory=dict)  # written at the top level too

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        clash = set(self.details) & (_NAMED | {"version"})
        if clash:
            raise ValueError(f"details repeat named fields: {sorted(clash)}")

    def to_json(self) -> dict[str, Any]:
        named = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "details"}
        return {"version": VERSION, **{k: v for k, v in named.items() if v is not None}, **self.details}

    @classmethod
    def from_json(cls, values: dict[str, Any], *, where: str = "metrics.json") -> RunMetrics:
        """The record of ``values``; unversioned files (before version 1) have version 1's shape."""
        if not isinstance(values, dict):
            raise ValueError(f"{where} is not a JSON object")
        version = values.get("version", VERSION)
        if type(version) is not int or version != VERSION:  # not True, not "1"
            raise ValueError(f"{where} has version {version!r}; this code reads version {VERSION}")
        if "protocol" not in values or "trained_labels" not in values:
            raise ValueError(f"{where} has no 'protocol' or 'trained_labels': not a run's metrics.json")
        return cls(protocol=values["protocol"], trained_labels=values["trained_labels"]).merged(
            {k: v for k, v in values.items() if k != "version"}
        )

    def merged(self, values: dict[str, Any]) -> RunMetrics:
        """This record with top-level ``values`` added: named fields set, the rest in ``details``."""
        named = {k: v for k, v in values.items() if k in _NAMED}
        details = {k: v for k, v in values.items() if k not in _NAMED}
        return replace(self, **named, details={**self.details, **details})

    @classmethod
    def read(cls, run: Path) -> RunMetrics:
        """``run/metrics.json`` (``run`` an --out folder of linear-eval, finetune, evaluate or the
        pixel baseline)."""
        path = run / METRICS_FILE
        if not path.is_file():
            raise ValueError(
                f"{path} does not exist: pass an --out folder of linear-eval, finetune "
                "(fraction_<f>) or evaluate"
            )
        return cls.from_json(json.loads(path.read_text()), where=str(path))

    def write(self, out: Path) -> Path:
        path = out / METRICS_FILE
        write_json(path, self.to_json())
        return path

    def split(self, name: str) -> Block:
        """The ``valid`` or ``test`` block, with an error naming the run's protocol when absent."""
        block = {"valid": self.valid, "test": self.test}.get(name)
        if block is None:
            raise ValueError(f"a {self.protocol} run's metrics.json has no {name!r} block")
        return block

    def macro(self, split: str = "test") -> dict[str, Any]:
        macro: dict[str, Any] = self.split(split)["macro"]
        return macro

    def threshold(self, label: str) -> float | None:
        """The saved threshold of ``label``: a linear-eval/finetune run records its own (with the
        method), an external evaluation the ones of the classifier it ran."""
        own = (self.thresholds or {}).get(label)
        if own is not None:
            return float(own["value"])
        applied = (self.classifier or {}).get("thresholds", {}).get(label)
        return float(applied) if applied is not None else None

    def data_block(self) -> dict[str, Any]:
        """What the run's data was: the training data of linear/finetune, the evaluated data of
        an external evaluation."""
        return self.training_data or self.data or {}


_NAMED = frozenset(f.name for f in fields(RunMetrics)) - {"details"}
