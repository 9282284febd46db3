"""Typed configuration of linear evaluation, fine-tuning and external validation.

One frozen dataclass per section, overridable on the command line with
``--set section.field=value`` (``training.config.apply_overrides``); the resolved config is
saved as ``config.json`` next to every output. Named configs: ``paper`` (the paper's
protocol, REFERENCE section 1, its label policy included: blank and -1 labels are 0),
``masked`` (the same with blank labels masked out of the loss and the metrics instead) and
``smoke`` (the paper's protocol, briefly, on a small subset of ``../shared/data``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from training.config import to_dict
from training.data_root import shared_data_root
from training.downstream.labels import check_policy, policy_name
from training.downstream.metrics import THRESHOLD_METHODS, BootstrapSettings

SOURCES = ("manifest", "shared", "encoder")
HEAD_FEATURES = ("raw", "standardized")
EVAL_VIEWS = ("paper", "pretraining")
HEAD_SOLVERS = ("adam", "logistic")
HEAD_CALIBRATIONS = ("auto", "none", "temperature")


@dataclass(frozen=True)
class EvalDataConfig:
    """Which images: a manifest, ../shared/data, or the encoder's own pretraining manifest."""

    source: str = "manifest"  # manifest: `manifest`; shared: built from `shared_root`; encoder: see docs
    manifest: str = ""
    shared_root: str = ""
    split_seed: int = 0  # source=shared: seed of the covid patient split (pretraining uses train.seed)
    datasets: tuple[str, ...] = ()  # keep only these manifest `dataset` values; empty: all
    max_train_images: int = 0  # seeded random subset of the training split; 0: all
    max_eval_images: int = 0  # seeded random subset of valid and of test; 0: all
    label_fraction: float = 1.0  # share of training images kept, by whole patients (seeded)
    workers: int = 0  # DataLoader processes decoding images (0: in the main process)
    embed_batch_size: int = 64  # images per encoder forward pass when embedding or predicting
    cache_dir: str = "~/.cache/cxr-msn"  # embeddings/ and images/ are kept under it

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got {self.source!r}")
        if self.max_train_images < 0 or self.max_eval_images < 0 or self.workers < 0:
            raise ValueError(
                "data.max_train_images, max_eval_images and workers must be >= 0, got "
                f"{self.max_train_images}, {self.max_eval_images}, {self.workers}"
            )
        if not 0 < self.label_fraction <= 1 or self.embed_batch_size < 1:
            raise ValueError(
                f"need 0 < data.label_fraction <= 1 and data.embed_batch_size >= 1, got "
                f"{self.label_fraction}, {self.embed_batch_size}"
            )


@dataclass(frozen=True)
class LabelConfig:
    """Label policy (training.downstream.labels)."""

    blank: str = "zeros"  # blank -> 0 (the paper's code, where the data set annotates the label), or masked
    uncertain: str = "zeros"  # -1 -> 0 (the paper's code), 1, or ignore (masked)
    blank_zero_datasets: tuple[str, ...] = ()  # blank=masked: data sets whose blanks still mean 0

    def __post_init__(self) -> None:
        try:
            check_policy(self.blank, self.uncertain, self.blank_zero_datasets)
        except ValueError as exc:
            raise ValueError(f"labels: {exc}") from None

    @property
    def policy(self) -> str:
        """``paper``, ``masked`` or ``custom``."""
        return policy_name(self.blank, self.uncertain, self.blank_zero_datasets)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation of linear evaluation (the paper's: flip, random affine, centre crop)."""

    copies: int = 4  # augmented embeddings cached per training image, besides the plain view
    flip_p: float = 0.5
    degrees: float = 45.0  # rotation in [-degrees, degrees]
    translate: float = 0.15  # shift up to this fraction of the side, each axis
    scale: tuple[float, float] = (0.85, 1.15)
    # paper: resize the shorter side by 256/224 of the input, centre-crop the input size (the
    # paper's Resize(256) + CenterCrop(224)); pretraining: the encoder's own view (resize = crop),
    # what linear evaluation used before 2026-11-30 and the bundled model was built with
    eval_view: str = "paper"

    def __post_init__(self) -> None:
        if self.eval_view not in EVAL_VIEWS:
            raise ValueError(f"augment.eval_view must be one of {EVAL_VIEWS}, got {self.eval_view!r}")
        if self.copies < 0 or not 0 <= self.flip_p <= 1 or self.degrees < 0:
            raise ValueError(
                f"need augment.copies >= 0, 0 <= flip_p <= 1, degrees >= 0; got "
                f"{self.copies}, {self.flip_p}, {self.degrees}"
            )
        if not 0 <= self.translate < 1 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(
                "need 0 <= augment.translate < 1 and 0 < scale low <= high, got "
                f"{self.translate}, {self.scale}"
            )


@dataclass(frozen=True)
class HeadConfig:
    """The paper's five linear-head runs: Adam, batch 64, at most 50 epochs."""

    cosine_lrs: tuple[float, ...] = (1e-3, 5e-4, 1e-4)  # cosine annealing + early stopping
    plateau_lrs: tuple[float, ...] = (5e-4, 1e-4)  # ReduceLROnPlateau, no early stopping
    max_epochs: int = 50
    batch_size: int = 64
    patience: int = 5  # early stopping on validation macro AUROC
    min_delta: float = 1e-4
    plateau_factor: float = 0.5  # the paper's code (torch's defaults are 0.1 and 10)
    plateau_patience: int = 3
    weight_decay: float = 0.0
    # raw: the paper's head on the raw CLS embedding; standardized: each embedding dimension
    # scaled to zero mean and unit variance over the training views first (MAE's linear probe,
    # a BatchNorm without affine), folded into the saved linear layer
    features: str = "raw"
    # adam: the paper's five runs above; logistic: one L2-regularised logistic regression per
    # label (L-BFGS, every training view), its inverse strength chosen from logistic_cs on the
    # validation macro AUROC (CLIP's linear probe)
    solver: str = "adam"
    logistic_cs: tuple[float, ...] = (0.01, 0.1, 1.0)
    # temperature: per-label temperature scaling fitted on validation; none: the head's own
    # sigmoid; auto: temperature for the Adam head, none for the logistic head, which is fitted by
    # likelihood already and got worse test ECE on all 7 runs measured (docs/results/calibration)
    calibration: str = "auto"

    def calibration_method(self) -> str:
        """The method ``calibration`` means for this head: "temperature" or "none"."""
        if self.calibration != "auto":
            return self.calibration
        return "none" if self.solver == "logistic" else "temperature"

    def __post_init__(self) -> None:
        if self.calibration not in HEAD_CALIBRATIONS:
            raise ValueError(f"head.calibration must be one of {HEAD_CALIBRATIONS}, got {self.calibration!r}")
        if self.features not in HEAD_FEATURES:
            raise ValueError(f"head.features must be one of {HEAD_FEATURES}, got {self.features!r}")
        if self.solver not in HEAD_SOLVERS or not self.logistic_cs or min(self.logistic_cs) <= 0:
            raise ValueError(
                f"need head.solver in {HEAD_SOLVERS} and head.logistic_cs > 0, got "
                f"{self.solver!r}, {self.logistic_cs}"
            )
        if not self.cosine_lrs and not self.plateau_lrs:
            raise ValueError("head.cosine_lrs and head.plateau_lrs cannot both be empty")
        if any(lr <= 0 for lr in (*self.cosine_lrs, *self.plateau_lrs)):
            raise ValueError(f"learning rates must be > 0, got {self.cosine_lrs}, {self.plateau_lrs}")
        if self.max_epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.plateau_patience < 0:
            raise ValueError(
                "need head.max_epochs, batch_size, patience >= 1 and plateau_patience >= 0; got "
                f"{self.max_epochs}, {self.batch_size}, {self.patience}, {self.plateau_patience}"
            )
        if self.min_delta < 0 or not 0 < self.plateau_factor < 1 or self.weight_decay < 0:
            raise ValueError(
                f"need head.min_delta >= 0, 0 < plateau_factor < 1, weight_decay >= 0; got "
                f"{self.min_delta}, {self.plateau_factor}, {self.weight_decay}"
            )


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning (encoder unfrozen) on fractions of the training labels."""

    fractions: tuple[float, ...] = (0.01, 0.05, 0.1, 1.0)
    lr: float = 1e-4  # Adam, cosine annealing over max_epochs, early stopping on validation AUROC
    max_epochs: int = 50
    batch_size: int = 64
    patience: int = 5
    min_delta: float = 1e-4
    weight_decay: float = 0.0
    max_steps_per_epoch: int = 0  # 0: the whole training subset every epoch

    def __post_init__(self) -> None:
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError(f"finetune.fractions must be in (0, 1], got {self.fractions}")
        if self.lr <= 0 or self.max_epochs < 1 or self.batch_size < 2 or self.patience < 1:
            raise ValueError(
                "need finetune.lr > 0, max_epochs >= 1, batch_size >= 2, patience >= 1; got "
                f"{self.lr}, {self.max_epochs}, {self.batch_size}, {self.patience}"
            )
        if self.min_delta < 0 or self.weight_decay < 0 or self.max_steps_per_epoch < 0:
            raise ValueError(
                "finetune.min_delta, weight_decay and max_steps_per_epoch must be >= 0, got "
                f"{self.min_delta}, {self.weight_decay}, {self.max_steps_per_epoch}"
            )


@dataclass(frozen=True)
class MetricsConfig:
    resamples: int = 1000  # bootstrap resamples of the images
    seed: int = 0
    level: float = 0.95
    threshold: str = "youden"  # youden (max TPR - FPR) or f1, chosen per label on validation

    def __post_init__(self) -> None:
        self.bootstrap()  # validates resamples and level
        if self.threshold not in THRESHOLD_METHODS:
            raise ValueError(f"metrics.threshold must be one of {THRESHOLD_METHODS}, got {self.threshold!r}")

    def bootstrap(self) -> BootstrapSettings:
        return BootstrapSettings(resamples=self.resamples, seed=self.seed, level=self.level)


@dataclass(frozen=True)
class DownstreamConfig:
    name: str = "paper"
    seed: int = 0  # head initialisation, shuffling, augmentation and subsets
    device: str = "auto"  # auto (CUDA when available), cpu, cuda
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


def masked_config() -> DownstreamConfig:
    """The paper's protocol with blank labels masked out of the loss and the metrics."""
    return DownstreamConfig(name="masked", labels=LabelConfig(blank="masked"))


def smoke_config() -> DownstreamConfig:
    """The protocol, briefly: 64 training and 32 + 32 evaluation images of ../shared/data."""
    return DownstreamConfig(
        name="smoke",
        data=EvalDataConfig(
            source="shared", shared_root=str(shared_data_root()), max_train_images=64, max_eval_images=32
        ),
        augment=AugmentConfig(copies=1),
        head=HeadConfig(max_epochs=10),
        finetune=FinetuneConfig(fractions=(0.1, 1.0), max_epochs=1, batch_size=16, max_steps_per_epoch=2),
    )


CONFIGS = {"paper": DownstreamConfig, "masked": masked_config, "smoke": smoke_config}


def named_config(name: str) -> DownstreamConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown downstream config {name!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[name]()


def config_to_dict(config: DownstreamConfig) -> dict[str, Any]:
    return to_dict(config)


def with_fraction(config: DownstreamConfig, fraction: float) -> DownstreamConfig:
    return replace(config, data=replace(config.data, label_fraction=fraction))
