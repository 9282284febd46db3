"""Named pretraining configs: the paper's experiments (ViT-T and ViT-S) and ``smoke``.

``vit_t-<variant>`` and ``vit_s-<variant>`` for the variants ``vanilla`` (no EHR), each
single feature (``age``, ``sex``, ``view``, ``position``, ``icu``, ``mortality``) and the
groups ``D``, ``SM``, ``SI`` and ``all``: the paper's settings (REFERENCE section 1) on a
manifest you pass with ``--manifest`` (MIMIC-CXR + MIMIC-IV for the paper's numbers).
ViT-T is the paper's 6-head ViT-Tiny (``vit_tiny_h6_patch16_224``).

``small-<variant>`` (``small-vanilla``, ``small-D``, ...): recipes that learn at the scale of
one CPU machine and ../shared/data (about 800 training films of 64 px): ViT-Tiny (6 heads)
at native resolution with 8 px patches (``vit_tiny_h6_patch8_64``), 64 px target and anchor
views and six 32 px focal views, 256 prototypes for about 800 images, batch 32 (24 steps an
epoch), 8 epochs, learning rate 1e-3 after 2 warm-up epochs with the original MSN's
weight-decay schedule (0.04 -> 0.4) and gradient clipping, and an EMA that ramps from 0.95
to 1 (with the paper's 0.996 the target would barely move in 192 steps). Chosen by the
learning monitor (docs/training.md, "Small recipes"): with 20 epochs the validation probe
peaked at epochs 4-8 and fell after, on all three seeds. The monitor probes every 2 epochs;
no early stopping on the training loss. About 5 minutes on 2 CPU cores (estimated from a
2-thread trial). The paper's configs are unchanged.

``<backbone>-dino`` and ``<backbone>-mae`` (``vit_t-dino``, ``vit_s-mae``, ``small-dino``, ...):
the image-only baselines of the paper's Table 3 (``method`` dino or mae; training.baselines),
with the data, views, optimiser, schedule and epochs of the same backbone's MSN config, so
that only the method differs. DINO: the original's temperatures (student 0.1, teacher 0.04),
centre momentum 0.9, a 2048-wide head with a 256-d bottleneck, 65,536 prototypes (1,024 for
``small-``) and the last layer frozen for the first epoch; the teacher is the EMA network of
the ``ema`` section. MAE: mask ratio 0.75 on the target view, per-patch normalised pixel
targets, a 256-wide 4-block decoder (128 wide, 2 blocks for ``small-``); it reads no focal
views, so they are not drawn.

``smoke``: one short epoch of ViT-Tiny MSN + all EHR features on 64 training images of
``../shared/data`` (a manifest built in the run folder), paper-sized views, in a few
minutes on a CPU.
"""

from __future__ import annotations

from dataclasses import replace

from training.config import (
    DataConfig,
    DINOConfig,
    EHRConfig,
    EMAConfig,
    LossConfig,
    MAEConfig,
    ModelConfig,
    MonitorConfig,
    OptimConfig,
    PretrainConfig,
    TrainConfig,
    ViewsConfig,
)
from training.data_root import shared_data_root

ARCHITECTURES = {"vit_t": "vit_tiny_h6_patch16_224", "vit_s": "vit_small_patch16_224"}
VARIANTS: dict[str, tuple[str, ...]] = {
    "vanilla": (),
    **{name: (name,) for name in ("age", "sex", "view", "position", "icu", "mortality")},
    **{group: (group,) for group in ("D", "SM", "SI", "all")},
}
#: Pretraining baselines named like variants: ``<backbone>-dino``, ``<backbone>-mae``.
PRETRAIN_BASELINES = ("dino", "mae")


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


SMALL_ARCHITECTURE = "vit_tiny_h6_patch8_64"


def small_config(variant: str) -> PretrainConfig:
    """The ``small-<variant>`` recipe (see the module docstring) for ../shared/data."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown small config small-{variant}; variants {list(VARIANTS)}")
    return PretrainConfig(
        name=f"small-{variant}",
        data=DataConfig(source="shared", shared_root=str(shared_data_root()), cache_size=64, num_workers=0),
        views=ViewsConfig(target_size=64, rand_size=64, focal_views=6, focal_size=32, focal_scale=(0.1, 0.4)),
        model=ModelConfig(arch=SMALL_ARCHITECTURE),
        ehr=EHRConfig(features=VARIANTS[variant]),
        loss=LossConfig(num_prototypes=256),
        ema=EMAConfig(momentum=0.95, ramp=True, final_momentum=1.0),
        optim=OptimConfig(
            lr=1e-3, min_lr=1e-5, warmup_epochs=2, weight_decay=0.04, final_weight_decay=0.4, clip_grad=3.0
        ),
        train=replace(
            TrainConfig(), epochs=8, batch_size=32, early_stopping=False, log_every=5, progress=False
        ),
        monitor=MonitorConfig(every=2),
    )


def baseline_config(backbone: str, method: str) -> PretrainConfig:
    """``<backbone>-<method>``: the backbone's vanilla MSN config with ``method`` dino or mae."""
    if method not in PRETRAIN_BASELINES:
        raise ValueError(f"unknown baseline {method!r}; known: {list(PRETRAIN_BASELINES)}")
    small = backbone == "small"
    base = small_config("vanilla") if small else paper_config(backbone, "vanilla")
    config = replace(base, name=f"{backbone}-{method}", method=method)
    if method == "dino":
        return replace(config, dino=DINOConfig(num_prototypes=1024) if small else DINOConfig())
    mae = MAEConfig(decoder_dim=128, decoder_depth=2, decoder_heads=4) if small else MAEConfig()
    return replace(config, mae=mae, views=replace(config.views, focal_views=0))


def smoke_config() -> PretrainConfig:
    return PretrainConfig(
        name="smoke",
        data=DataConfig(source="shared", shared_root=str(shared_data_root()), max_images=64, num_workers=0),
        model=ModelConfig(arch="vit_tiny_h6_patch16_224"),
        ehr=EHRConfig(features=("all",), imputer_trees=10, imputer_max_iter=3),
        train=replace(TrainConfig(), epochs=1, batch_size=16, log_every=1),
        monitor=MonitorConfig(max_images=64),  # the probe at 224 px costs seconds per image on a CPU
    )


def config_names() -> list[str]:
    backbones = [*ARCHITECTURES, "small"]
    return [f"{b}-{v}" for b in backbones for v in (*VARIANTS, *PRETRAIN_BASELINES)] + ["smoke"]


def named_config(name: str) -> PretrainConfig:
    if name == "smoke":
        return smoke_config()
    backbone, _, variant = name.partition("-")
    if backbone in (*ARCHITECTURES, "small") and variant in PRETRAIN_BASELINES:
        return baseline_config(backbone, variant)
    if backbone == "small":
        return small_config(variant)
    if backbone not in ARCHITECTURES or variant not in VARIANTS:
        raise ValueError(f"unknown config {name!r}; known: {', '.join(config_names())}")
    return paper_config(backbone, variant)
