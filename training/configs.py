"""Named pretraining configs: the paper's experiments (ViT-T and ViT-S) and ``smoke``.

``vit_t-<variant>`` and ``vit_s-<variant>`` for the variants ``vanilla`` (no EHR), each
single feature (``age``, ``sex``, ``view``, ``position``, ``icu``, ``mortality``) and the
groups ``D``, ``SM``, ``SI`` and ``all``: the paper's settings (REFERENCE section 1) on a
manifest you pass with ``--manifest`` (MIMIC-CXR + MIMIC-IV for the paper's numbers).
ViT-T is the paper's 6-head ViT-Tiny (``vit_tiny_h6_patch16_224``).

``smoke``: one short epoch of ViT-Tiny MSN + all EHR features on 64 training images of
``../shared/data`` (a manifest built in the run folder), paper-sized views, in a few
minutes on a CPU.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from training.config import DataConfig, EHRConfig, ModelConfig, PretrainConfig, TrainConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ARCHITECTURES = {"vit_t": "vit_tiny_h6_patch16_224", "vit_s": "vit_small_patch16_224"}
VARIANTS: dict[str, tuple[str, ...]] = {
    "vanilla": (),
    **{name: (name,) for name in ("age", "sex", "view", "position", "icu", "mortality")},
    **{group: (group,) for group in ("D", "SM", "SI", "all")},
}


def paper_config(backbone: str, variant: str) -> PretrainConfig:
    """The paper's settings for ``backbone`` (vit_t, vit_s) and ``variant`` (see VARIANTS)."""
    if backbone not in ARCHITECTURES or variant not in VARIANTS:
        raise ValueError(
            f"unknown paper config {backbone}-{variant}; backbones {list(ARCHITECTURES)}, "
            f"variants {list(VARIANTS)}"
        )
    return PretrainConfig(
        name=f"{backbone}-{variant}",
        model=ModelConfig(arch=ARCHITECTURES[backbone]),
        ehr=EHRConfig(features=VARIANTS[variant]),
    )


def smoke_config() -> PretrainConfig:
    return PretrainConfig(
        name="smoke",
        data=DataConfig(source="shared", shared_root=str(SHARED_DATA), max_images=64, num_workers=0),
        model=ModelConfig(arch="vit_tiny_h6_patch16_224"),
        ehr=EHRConfig(features=("all",), imputer_trees=10, imputer_max_iter=3),
        train=replace(TrainConfig(), epochs=1, batch_size=16, log_every=1),
    )


def config_names() -> list[str]:
    return [f"{b}-{v}" for b in ARCHITECTURES for v in VARIANTS] + ["smoke"]


def named_config(name: str) -> PretrainConfig:
    if name == "smoke":
        return smoke_config()
    backbone, _, variant = name.partition("-")
    if backbone not in ARCHITECTURES or variant not in VARIANTS:
        raise ValueError(f"unknown config {name!r}; known: {', '.join(config_names())}")
    return paper_config(backbone, variant)
