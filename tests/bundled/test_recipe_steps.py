"""The bundled-model recipe reuses a finished step only while its recipe section is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

from recipes.bundled_model import Pipeline


def _run(work: Path, recipe: dict[str, object], ran: list[str]) -> None:
    pipeline = Pipeline(work, work / "repository", recipe)
    for name in ("pretrain", "linear_eval", "export"):
        pipeline.step(name, lambda name=name: ran.append(name))


def test_a_changed_section_reruns_its_step_and_every_later_one(tmp_path: Path) -> None:
    recipe: dict[str, object] = {
        "pretrain": {"config": "small-D"},
        "linear_eval": {"set": ["seed=0"]},
        "export": {},
    }
    ran: list[str] = []
    _run(tmp_path, recipe, ran)
    _run(tmp_path, recipe, ran)
    assert ran == ["pretrain", "linear_eval", "export"]
    recipe["linear_eval"] = {"set": ["seed=0", "head.solver=logistic"]}
    _run(tmp_path, recipe, ran)
    assert ran[3:] == ["linear_eval", "export"]
    log = json.loads((tmp_path / "pipeline.json").read_text())
    assert log["linear_eval"]["settings"] == recipe["linear_eval"]
