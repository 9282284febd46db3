"""Typed pretraining configuration: one frozen dataclass per section, overridable by name.

Each section maps onto the constructor or function that uses it. ``apply_overrides``
turns ``["optim.lr=5e-4", "mask.per_sample=false"]`` into a new config, parsing each
value with the field's declared type; ``to_dict``/``from_dict`` round-trip the resolved
config that every run folder keeps in ``config.json``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, TypeVar

ConfigT = TypeVar("ConfigT")


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are cached."""

    source: str = "manifest"  # "manifest": read `manifest`; "shared": build one from `shared_root`
    manifest: str = ""  # a manifest CSV (training.data.manifest)
    shared_root: str = ""  # the ../shared/data folder (nih1000/ and covid/), for source="shared"
    splits: tuple[str, ...] = ("train",)  # manifest splits to pretrain on
    datasets: tuple[str, ...] = ()  # keep only these manifest `dataset` values; empty: all
    max_images: int = 0  # a seeded random subset of this many images; 0: all
    cache_dir: str = "~/.cache/cxr-msn/images"
    cache_size: int = 256  # cached images: the whole film, longer side at this size, on a padded square
    # DataLoader worker processes; None (the default): the cores this rank may use less one,
    # at most 16 (training.pretrain_data.default_workers); 0 loads in the training process.
    num_workers: int | None = None
    cache_workers: int = 2  # processes decoding images while the cache is built

    def __post_init__(self) -> None:
        if self.source not in ("manifest", "shared"):
            raise ValueError(f"data.source must be 'manifest' or 'shared', got {self.source!r}")
        unknown = set(self.splits) - {"train", "valid", "test"}
        if not self.splits or unknown:
            raise ValueError(f"data.splits must name train/valid/test, got {self.splits}")
        workers = 0 if self.num_workers is None else self.num_workers
        if self.max_images < 0 or self.cache_size < 16 or workers < 0 or self.cache_workers < 1:
            raise ValueError(
                "need data.max_images >= 0, data.cache_size >= 16, data.num_workers >= 0 and "
                f"data.cache_workers >= 1; got {self.max_images}, {self.cache_size}, "
                f"{self.num_workers}, {self.cache_workers}"
            )


@dataclass(frozen=True)
class ViewsConfig:
    """MSN views: one target view, `rand_views` anchor views and `focal_views` small ones."""

    target_size: int = 224
    target_scale: tuple[float, float] = (0.3, 1.0)
    rand_views: int = 1
    rand_size: int = 224
    rand_scale: tuple[float, float] = (0.3, 1.0)
    focal_views: int = 10
    focal_size: int = 96
    focal_scale: tuple[float, float] = (0.05, 0.3)
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        if self.rand_views < 1 or self.focal_views < 0:
            raise ValueError(
                f"need views.rand_views >= 1 and views.focal_views >= 0, got "
                f"{self.rand_views}, {self.focal_views}"
            )
        for name in ("target_scale", "rand_scale", "focal_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise ValueError(f"views.{name} must satisfy 0 < low <= high <= 1, got {(low, high)}")
        if not 0 <= self.flip_p <= 1:
            raise ValueError(f"views.flip_p must be in [0, 1], got {self.flip_p}")

    @property
    def num_anchor_views(self) -> int:
        return self.rand_views + self.focal_views


@dataclass(frozen=True)
class MaskConfig:
    """Patch dropping on anchor views (the CLS token is always kept).

    Default, as the paper's code: a new mask per sample, focal views masked too.
    Original MSN: ``per_sample=false mask_focal=false`` (one mask per batch, focal unmasked).
    """

    ratio: float = 0.15
    per_sample: bool = True
    mask_focal: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise ValueError(f"mask.ratio must be in [0, 1), got {self.ratio}")


@dataclass(frozen=True)
class ModelConfig:
    """Encoder and projection head h: Linear-BN-GELU-Linear-BN-GELU-Linear."""

    arch: str = "vit_tiny_h6_patch16_224"
    head_hidden: int = 0  # 0: 4 x the encoder width (the paper's code); original MSN: 2048
    head_out: int = 0  # 0: the encoder width (the paper's code); original MSN: 256

    def __post_init__(self) -> None:
        if self.head_hidden < 0 or self.head_out < 0:
            raise ValueError(
                f"model.head_hidden and head_out must be >= 0, got {self.head_hidden}, {self.head_out}"
            )


@dataclass(frozen=True)
class EHRConfig:
    """Static EHR features on the anchor branch; no features: vanilla MSN."""

    features: tuple[
        str, ...
    ] = ()  # names (age, sex, view, position, icu, mortality) or groups (D, SM, SI, all)
    embed_dim: int = 128  # f_ehr: Linear(n -> embed_dim)
    age_min: float = 16.0  # age -> (age - age_min) / (age_max - age_min), as the paper's code
    age_max: float = 100.0
    imputer_trees: int = 100  # random-forest size inside IterativeImputer
    imputer_max_iter: int = 10
    imputer_fit_rows: int = 50_000  # fit on a seeded subset of at most this many training rows
    # MIMIC studies outside every admission (blank mortality, patient in MIMIC-IV): zero (the
    # paper's extraction: not an in-hospital death) or impute (predicted like a missing value)
    mortality_outside_admission: str = "zero"

    def __post_init__(self) -> None:
        if self.mortality_outside_admission not in ("zero", "impute"):
            raise ValueError(
                "ehr.mortality_outside_admission must be zero or impute, got "
                f"{self.mortality_outside_admission!r}"
            )
        if self.embed_dim < 1 or self.age_max <= self.age_min:
            raise ValueError(
                f"need ehr.embed_dim >= 1 and ehr.age_max > ehr.age_min, got "
                f"{self.embed_dim}, {self.age_min}, {self.age_max}"
            )
        if self.imputer_trees < 1 or self.imputer_max_iter < 1 or self.imputer_fit_rows < 1:
            raise ValueError(
                "ehr.imputer_trees, imputer_max_iter and imputer_fit_rows must be >= 1, got "
                f"{self.imputer_trees}, {self.imputer_max_iter}, {self.imputer_fit_rows}"
            )


@dataclass(frozen=True)
class LossConfig:
    """MSN loss (training.msn.msn_loss)."""

    num_prototypes: int = 1024
    tau: float = 0.1  # anchor temperature
    sharpen: float = 0.25  # target temperature is tau * sharpen (0.025)
    sinkhorn_iters: int = 3  # 0: no Sinkhorn balancing of the targets
    me_max_weight: float = 1.0  # lambda of the mean-entropy term

    def __post_init__(self) -> None:
        if self.num_prototypes < 1 or self.tau <= 0 or self.sharpen <= 0:
            raise ValueError(
                f"need loss.num_prototypes >= 1, loss.tau > 0 and loss.sharpen > 0, got "
                f"{self.num_prototypes}, {self.tau}, {self.sharpen}"
            )
        if self.sinkhorn_iters < 0 or self.me_max_weight < 0:
            raise ValueError(
                f"need loss.sinkhorn_iters >= 0 and loss.me_max_weight >= 0, got "
                f"{self.sinkhorn_iters}, {self.me_max_weight}"
            )


@dataclass(frozen=True)
class DINOConfig:
    """The DINO baseline (method=dino, training.baselines): student/teacher self-distillation.

    Caron et al., ICCV 2021. The projection head (no BatchNorm) ends in an L2-normalised
    bottleneck scored against ``num_prototypes`` weight-normalised vectors (DINO's last layer);
    the teacher is the EMA of the student (ema section), its outputs centred and sharpened.
    """

    head_hidden: int = 2048
    bottleneck: int = 256
    num_prototypes: int = 65536  # DINO's out_dim
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04  # linear from this to teacher_temp over the warm-up epochs
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9
    freeze_last_layer_epochs: int = 1  # the prototypes get no update during the first epochs

    def __post_init__(self) -> None:
        if self.head_hidden < 1 or self.bottleneck < 1 or self.num_prototypes < 1:
            raise ValueError(
                "need dino.head_hidden, bottleneck and num_prototypes >= 1, got "
                f"{self.head_hidden}, {self.bottleneck}, {self.num_prototypes}"
            )
        if min(self.student_temp, self.teacher_temp, self.warmup_teacher_temp) <= 0:
            raise ValueError(
                "dino temperatures must be > 0, got "
                f"{self.student_temp}, {self.teacher_temp}, {self.warmup_teacher_temp}"
            )
        if not 0 <= self.center_momentum < 1:
            raise ValueError(f"dino.center_momentum must be in [0, 1), got {self.center_momentum}")
        if self.warmup_teacher_temp_epochs < 0 or self.freeze_last_layer_epochs < 0:
            raise ValueError(
                "dino.warmup_teacher_temp_epochs and freeze_last_layer_epochs must be >= 0, got "
                f"{self.warmup_teacher_temp_epochs}, {self.freeze_last_layer_epochs}"
            )


@dataclass(frozen=True)
class MAEConfig:
    """The MAE baseline (method=mae, training.baselines): masked patch reconstruction.

    He et al., CVPR 2022. The encoder sees the kept patches of the target view only; a light
    transformer decoder predicts the pixels of the masked ones (MAE's default decoder is 512
    wide and 8 deep; a lighter one suits ViT-T/S).
    """

    mask_ratio: float = 0.75
    decoder_dim: int = 256
    decoder_depth: int = 4
    decoder_heads: int = 8
    norm_pix_loss: bool = True  # targets normalised per patch (MAE's default for its best results)

    def __post_init__(self) -> None:
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mae.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.decoder_dim < 1 or self.decoder_depth < 1 or self.decoder_heads < 1:
            raise ValueError(
                "need mae.decoder_dim, decoder_depth and decoder_heads >= 1, got "
                f"{self.decoder_dim}, {self.decoder_depth}, {self.decoder_heads}"
            )
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(
                f"mae.decoder_dim {self.decoder_dim} must be a multiple of decoder_heads {self.decoder_heads}"
            )


@dataclass(frozen=True)
class EMAConfig:
    """Target encoder and head: an exponential moving average of the anchor ones."""

    momentum: float = 0.996
    ramp: bool = False  # original MSN: ramp linearly from `momentum` to `final_momentum`
    final_momentum: float = 1.0
    ramp_stretch: float = 1.25  # the ramp reaches final_momentum after stretch x total steps (MSN)

    def __post_init__(self) -> None:
        if not 0 <= self.momentum <= self.final_momentum <= 1 or self.ramp_stretch < 1:
            raise ValueError(
                "need 0 <= ema.momentum <= ema.final_momentum <= 1 and ema.ramp_stretch >= 1, got "
                f"{self.momentum}, {self.final_momentum}, {self.ramp_stretch}"
            )


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a per-step cosine schedule and optional linear warm-up."""

    lr: float = 1e-4
    min_lr: float = 0.0  # the cosine ends here
    warmup_epochs: float = 0.0
    weight_decay: float = 1e-3
    final_weight_decay: float | None = None  # cosine weight-decay schedule (original MSN: 0.04 -> 0.4)
    clip_grad: float = 0.0  # max gradient norm; 0: no clipping
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        if self.lr <= 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need optim.lr > 0 and 0 <= optim.min_lr <= lr, got {self.lr}, {self.min_lr}")
        if self.warmup_epochs < 0 or self.weight_decay < 0 or self.clip_grad < 0:
            raise ValueError(
                "optim.warmup_epochs, weight_decay and clip_grad must be >= 0, got "
                f"{self.warmup_epochs}, {self.weight_decay}, {self.clip_grad}"
            )
        if self.final_weight_decay is not None and self.final_weight_decay < 0:
            raise ValueError(f"optim.final_weight_decay must be >= 0, got {self.final_weight_decay}")


@dataclass(frozen=True)
class TrainConfig:
    """The loop."""

    epochs: int = 100
    batch_size: int = 64  # global: split evenly over the DDP ranks
    seed: int = 0
    early_stopping: bool = True  # on the epoch's mean training loss
    patience: int = 5
    min_delta: float = 1e-5
    max_steps_per_epoch: int = 0  # 0: the whole data set each epoch
    device: str = "auto"  # auto (CUDA when available), cpu, cuda
    amp: bool = True  # mixed precision; CUDA only
    amp_dtype: str = "bfloat16"  # bfloat16, or float16 (with a gradient scaler)
    sync_batchnorm: bool = True  # SyncBatchNorm in the heads under DDP on CUDA
    log_every: int = 10  # steps between rows of steps.csv
    progress: bool = True  # a tqdm progress bar on rank 0
    keep_epoch_encoders: bool = False  # also keep encoder_epochNNN.safetensors for every epoch

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.patience < 1 or self.log_every < 1:
            raise ValueError(
                "need train.epochs >= 1, batch_size >= 2, patience >= 1, log_every >= 1; got "
                f"{self.epochs}, {self.batch_size}, {self.patience}, {self.log_every}"
            )
        if self.min_delta < 0 or self.max_steps_per_epoch < 0:
            raise ValueError(
                f"need train.min_delta >= 0 and max_steps_per_epoch >= 0, got "
                f"{self.min_delta}, {self.max_steps_per_epoch}"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device must be auto, cpu or cuda, got {self.device!r}")
        if self.amp_dtype not in ("bfloat16", "float16"):
            raise ValueError(f"train.amp_dtype must be bfloat16 or float16, got {self.amp_dtype!r}")


@dataclass(frozen=True)
class MonitorConfig:
    """The learning monitor (training.monitor): a probe of the target encoder and collapse signals."""

    every: int = 1  # epochs between measurements (and one before the first); 0: off
    probe: str = "logistic"  # logistic (per-label logistic regression) or knn (cosine k-NN)
    knn_k: int = 20
    logistic_c: float = 0.1  # inverse L2 strength of the logistic probe (standardised embeddings)
    max_images: int = 2000  # labelled images per split (train fits, valid scores); 0: all
    warn_after: int = 5  # epochs before "not learning" can be said
    min_gain: float = 0.02  # probe AUROC gain over initialisation below which the run is "not learning"
    min_embedding_std: float = 0.03  # embedding spread (1: spread over the sphere) below which: collapsing
    min_prototypes_fraction: float = 0.01  # prototypes in use below this share of K: collapsing

    def __post_init__(self) -> None:
        if self.every < 0 or self.knn_k < 1 or self.logistic_c <= 0 or self.max_images < 0:
            raise ValueError(
                "need monitor.every >= 0, knn_k >= 1, logistic_c > 0 and max_images >= 0; got "
                f"{self.every}, {self.knn_k}, {self.logistic_c}, {self.max_images}"
            )
        if self.probe not in ("logistic", "knn"):
            raise ValueError(f"monitor.probe must be logistic or knn, got {self.probe!r}")
        if self.min_gain < 0 or self.min_embedding_std < 0:
            raise ValueError(
                f"need monitor.min_gain >= 0 and min_embedding_std >= 0; got {self.min_gain}, "
                f"{self.min_embedding_std}"
            )
        if self.warn_after < 1 or not 0 <= self.min_prototypes_fraction <= 1:
            raise ValueError(
                f"need monitor.warn_after >= 1 and 0 <= min_prototypes_fraction <= 1; got "
                f"{self.warn_after}, {self.min_prototypes_fraction}"
            )


METHODS = ("msn", "dino", "mae")


@dataclass(frozen=True)
class PretrainConfig:
    name: str = "custom"
    # msn: the paper's (multimodal) MSN; dino, mae: the image-only baselines of its Table 3
    # (training.baselines). The mask, loss and ehr sections are MSN's; dino and mae have theirs.
    method: str = "msn"
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ehr: EHRConfig = field(default_factory=EHRConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.method != "msn" and self.ehr.features:
            raise ValueError(
                f"method={self.method} is an image-only baseline: EHR fusion is MSN's (set ehr.features=)"
            )


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict (tuples become lists)."""
    return json_ready(dataclasses.asdict(config))


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


def from_dict(values: dict[str, Any]) -> PretrainConfig:
    """The inverse of ``to_dict``; unknown keys fail loudly."""
    return _build(PretrainConfig, values, prefix="")


def dataclass_from_dict(cls: type[ConfigT], values: dict[str, Any]) -> ConfigT:
    """``from_dict`` for any config tree of frozen dataclasses (e.g. the downstream config)."""
    result: ConfigT = _build(cls, values, prefix="")
    return result


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown config keys {sorted(prefix + k for k in unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        kind = hints[name]
        if is_dataclass(kind) and isinstance(kind, type):
            kwargs[name] = _build(kind, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, kind, key=prefix + name)
    return cls(**kwargs)


def apply_overrides(config: ConfigT, overrides: list[str]) -> ConfigT:
    """Apply ``section.field=value`` strings, parsing values with each field's type.

    Works on any config whose fields are ``name`` and dataclass sections (PretrainConfig,
    the downstream config); top-level scalar fields are set with ``field=value``.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"an override is section.field=value, got {item!r}")
        config = _set(config, key.strip(), text.strip())
    return config


def _set(config: Any, key: str, text: str) -> Any:
    top_hints = typing.get_type_hints(type(config))
    if "." not in key and key in top_hints and not is_dataclass(top_hints[key]):
        return replace(config, **{key: parse_value(text, top_hints[key], key=key)})
    section_name, _, field_name = key.partition(".")
    sections = {f.name for f in fields(config) if is_dataclass(top_hints[f.name])}
    if section_name not in sections:
        raise ValueError(f"unknown config section in {key!r}; known: {sorted(sections)}")
    section = getattr(config, section_name)
    hints = typing.get_type_hints(type(section))
    if field_name not in hints:
        raise ValueError(f"unknown config key {key!r}; {section_name} has {sorted(hints)}")
    value = parse_value(text, hints[field_name], key=key)
    return replace(config, **{section_name: replace(section, **{field_name: value})})


def parse_value(text: str, kind: Any, *, key: str) -> Any:
    """Parse a command-line string as ``kind`` (int, float, bool, str, tuples, optionals)."""
    args = typing.get_args(kind)
    if _is_optional(kind):
        if text.lower() in ("none", "null", ""):
            return None
        return parse_value(text, next(a for a in args if a is not type(None)), key=key)
    if typing.get_origin(kind) is tuple:
        items = [part.strip() for part in text.split(",") if part.strip()]
        return _coerce(items, kind, key=key)
    return _coerce(text, kind, key=key)


def _coerce(value: Any, kind: Any, *, key: str) -> Any:
    if _is_optional(kind):
        if value is None:
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{key} expects a list, got {value!r}")
        args = typing.get_args(kind)
        item_kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_kinds) != len(value):
            raise ValueError(f"{key} expects {len(item_kinds)} values, got {list(value)}")
        return tuple(
            _coerce(item, item_kind, key=key) for item, item_kind in zip(value, item_kinds, strict=True)
        )
    return _scalar(value, kind, key=key)


def _scalar(value: Any, kind: Any, *, key: str) -> Any:
    try:
        if kind is bool:
            return _parse_bool(value, key=key)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            return float(value)
        if kind is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} expects {kind.__name__}, got {value!r}") from None
    raise ValueError(f"{key}: unsupported config type {kind}")


def _parse_bool(value: Any, *, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{key} expects true or false, got {value!r}")


def _is_optional(kind: Any) -> bool:
    origin = typing.get_origin(kind)
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)
