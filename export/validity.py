"""The per-label validity gate written into ``manifest.json`` at export.

A label the model was trained on is *validated* when the lower bound of the bootstrap CI of its
AUROC on the validation split is above ``min_auroc_lower_bound`` (default 0.5: better than chance
with 95 % confidence). Serving reports every other trained label as *not validated*: its
probability is returned, it is never positive, and the SR says why instead of Yes/No.

Where the per-label validation AUROCs come from, first found wins:

1. ``--run-metrics PATH``: the ``metrics.json`` of the linear-eval or fine-tuning run;
2. the checkpoint's own metadata, when its ``metrics.valid`` carries ``per_label`` entries;
3. ``metrics.json`` next to the checkpoint (what ``cxr-msn linear-eval --out DIR`` leaves).

A ``metrics.json`` must belong to the checkpoint: the same trained labels and thresholds, or the
export stops (exit 2). The gate fails closed: a label without an estimate (no positives or no
negatives in validation, no usable resample) is not validated, and a checkpoint with no per-label
validation CIs at all (an imported or hand-made classifier) gets ``status: not_evaluated`` with
**every** trained label not validated: an unmeasured label is not a validated one. CIs narrower
than 95 % are not accepted for the same reason. Pure functions of JSON-like values, no torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrmsn.fileio import sha256_file
from cxrmsn.repository import GATE_EVALUATED, GATE_NOT_EVALUATED, ValidityGate

SPLIT = "valid"
MIN_CI_LEVEL = 0.95
RUN_METRICS_NAME = "metrics.json"
# Too few cases of a class make a bootstrap CI meaningless (most resamples lack the class and
# are dropped; the rest agree by construction): such a label is not validated, whatever its CI.
MIN_CASES = 5


def build_gate(
    metadata: Any, checkpoint: Path, *, run_metrics: Path | None, min_auroc_lower_bound: float
) -> ValidityGate:
    """The gate for ``metadata`` (a ``CheckpointMetadata``) from the first source that has one."""
    trained = list(metadata.trained_labels)
    found = _validation_block(metadata, checkpoint, run_metrics)
    if found is None:
        reason = (
            "no per-label validation AUROC CIs: the checkpoint carries none and no "
            f"{RUN_METRICS_NAME} from its run was found next to it (pass --run-metrics)"
        )
        return not_evaluated(trained, min_auroc_lower_bound, reason)
    block, level, source = found
    return evaluate_gate(
        trained, block, ci_level=level, min_auroc_lower_bound=min_auroc_lower_bound, source=source
    )


def not_evaluated(
    trained: Sequence[str], min_auroc_lower_bound: float, reason: str, **known: Any
) -> ValidityGate:
    """Fail closed: every trained label is not validated, for ``reason``."""
    return ValidityGate(
        status=GATE_NOT_EVALUATED,
        min_auroc_lower_bound=min_auroc_lower_bound,
        not_validated_labels=list(trained),
        auroc_lower_bounds={label: None for label in trained},
        reasons={label: f"the gate was not evaluated: {reason}" for label in trained},
        reason=reason,
        **known,
    )


def evaluate_gate(
    trained: Sequence[str],
    block: dict[str, Any],
    *,
    ci_level: float,
    min_auroc_lower_bound: float,
    source: dict[str, Any],
) -> ValidityGate:
    """The gate from one split's metrics: ``block`` as ``training.downstream.metrics.evaluate``
    returns it (``per_label`` -> {"auroc": {"value", "ci": [low, high]} or None, "reason"})."""
    images = block.get("images")
    known: dict[str, Any] = {
        "ci_level": ci_level,
        "images": images if isinstance(images, int) else None,
        "source": source,
    }
    if ci_level < MIN_CI_LEVEL:
        narrow = f"the validation CIs are {ci_level:.0%} intervals; the gate needs {MIN_CI_LEVEL:.0%} or more"
        return not_evaluated(trained, min_auroc_lower_bound, narrow, **known)
    per_label = block["per_label"]
    bounds: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for label in trained:
        bound, why = _lower_bound(per_label.get(label), min_auroc_lower_bound, source)
        bounds[label] = bound
        if why is not None:
            reasons[label] = why
    return ValidityGate(
        status=GATE_EVALUATED,
        min_auroc_lower_bound=min_auroc_lower_bound,
        not_validated_labels=[label for label in trained if label in reasons],
        auroc_lower_bounds=bounds,
        reasons=reasons,
        **known,
    )


def _lower_bound(entry: Any, floor: float, source: dict[str, Any]) -> tuple[float | None, str | None]:
    """(the CI's lower bound or None, why the label is not validated or None)."""
    if entry is None:
        return None, f"no {SPLIT} result for this label"
    if not isinstance(entry, dict) or "auroc" not in entry:
        raise ValueError(f"{source['kind']}: a per-label {SPLIT} entry without 'auroc': {entry!r}")
    auroc = entry["auroc"]
    if auroc is None:
        return None, f"AUROC not estimable on the {SPLIT} split ({entry.get('reason', 'no reason given')})"
    ci = auroc.get("ci") if isinstance(auroc, dict) else None
    if ci is None:
        return None, f"no bootstrap CI of the AUROC on the {SPLIT} split (no resample had both classes)"
    if not (isinstance(ci, list) and len(ci) == 2 and all(_is_number(value) for value in ci)):
        raise ValueError(f"{source['kind']}: a {SPLIT} AUROC CI that is not [low, high]: {ci!r}")
    low, high = float(ci[0]), float(ci[1])
    cases = [entry.get(key) for key in ("positives", "negatives")]
    if any(isinstance(count, int | float) and count < MIN_CASES for count in cases):
        return low, (
            f"{cases[0]} positive and {cases[1]} negative {SPLIT} images: fewer than {MIN_CASES} of a "
            "class, too few for a meaningful CI"
        )
    if low > floor:
        return low, None
    return low, (
        f"AUROC {auroc.get('value')} on the {SPLIT} split, CI [{low}, {high}]: lower bound not above {floor}"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _validation_block(
    metadata: Any, checkpoint: Path, run_metrics: Path | None
) -> tuple[dict[str, Any], float, dict[str, Any]] | None:
    """(the validation split's metrics, their CI level, where they came from) or None."""
    if run_metrics is not None:
        return _from_run_metrics(metadata, run_metrics, "--run-metrics")
    own = metadata.metrics.get(SPLIT)
    if isinstance(own, dict) and isinstance(own.get("per_label"), dict):
        level = _level(own.get("bootstrap"), metadata.metrics.get("bootstrap"), where="checkpoint metadata")
        return own, level, {"kind": "checkpoint metadata"}
    beside = checkpoint.with_name(RUN_METRICS_NAME)
    if beside.is_file():
        return _from_run_metrics(metadata, beside, f"{RUN_METRICS_NAME} next to the checkpoint")
    return None


def _from_run_metrics(metadata: Any, path: Path, kind: str) -> tuple[dict[str, Any], float, dict[str, Any]]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} ({kind}) is not readable JSON ({exc})") from None
    block = values.get(SPLIT) if isinstance(values, dict) else None
    if not isinstance(block, dict) or not isinstance(block.get("per_label"), dict):
        raise ValueError(f"{path} ({kind}) has no '{SPLIT}.per_label': not a linear-eval or finetune run's")
    _check_same_run(metadata, values, path)
    level = _level(block.get("bootstrap"), values.get("bootstrap"), where=str(path))
    return block, level, {"kind": kind, "path": str(path), "sha256": sha256_file(path)}


def _check_same_run(metadata: Any, values: dict[str, Any], path: Path) -> None:
    """A metrics.json of another run would gate this model on someone else's numbers."""
    thresholds = {
        label: round(float(entry["value"]), 6)
        for label, entry in (values.get("thresholds") or {}).items()
        if isinstance(entry, dict) and _is_number(entry.get("value"))
    }
    ours = {label: round(float(value), 6) for label, value in metadata.thresholds.items()}
    differences = []
    if values.get("trained_labels") != list(metadata.trained_labels):
        theirs, ours_trained = values.get("trained_labels"), list(metadata.trained_labels)
        differences.append(f"trained labels {theirs} != the checkpoint's {ours_trained}")
    if thresholds != ours:
        differences.append("thresholds differ from the checkpoint's")
    if differences:
        raise ValueError(
            f"{path} is not from the run that wrote this checkpoint: {'; '.join(differences)}. "
            "Pass the run's own metrics.json with --run-metrics"
        )


def _level(*blocks: Any, where: str) -> float:
    for block in blocks:
        if isinstance(block, dict) and _is_number(block.get("level")):
            return float(block["level"])
    raise ValueError(f"{where}: the {SPLIT} metrics do not say their bootstrap CI level")
