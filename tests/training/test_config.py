"""Typed configs: named experiments, command-line overrides, the saved round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import PretrainConfig, apply_overrides, from_dict, to_dict
from training.configs import config_names, named_config
from training.data_root import CHECKOUT_DATA, ENV_VAR, shared_data_root
from training.ehr import resolve_features


def test_defaults_are_the_papers_settings() -> None:
    config = named_config("vit_t-D")
    assert config.model.arch == "vit_tiny_h6_patch16_224"
    assert (config.optim.lr, config.optim.weight_decay, config.train.batch_size, config.train.epochs) == (
        1e-4, 1e-3, 64, 100,
    )  # fmt: skip
    assert (config.train.patience, config.train.min_delta) == (5, 1e-5)
    assert (config.loss.num_prototypes, config.loss.tau, config.loss.sharpen, config.loss.sinkhorn_iters) == (
        1024, 0.1, 0.25, 3,
    )  # fmt: skip
    assert config.loss.me_max_weight == 1.0 and config.mask.ratio == 0.15 and config.ema.momentum == 0.996
    views = config.views
    assert (views.target_size, views.rand_views, views.rand_size, views.focal_views, views.focal_size) == (
        224, 1, 224, 10, 96,
    )  # fmt: skip
    assert (views.rand_scale, views.focal_scale, views.flip_p) == ((0.3, 1.0), (0.05, 0.3), 0.5)
    assert config.ehr.embed_dim == 128 and resolve_features(config.ehr.features) == ("age", "sex")


def test_every_paper_experiment_is_named() -> None:
    names = config_names()
    for backbone in ("vit_t", "vit_s"):
        for variant in (
            "vanilla",
            "age",
            "sex",
            "view",
            "position",
            "icu",
            "mortality",
            "D",
            "SM",
            "SI",
            "all",
        ):
            assert f"{backbone}-{variant}" in names
    assert named_config("vit_s-all").model.arch == "vit_small_patch16_224"
    assert named_config("vit_t-vanilla").ehr.features == ()
    smoke = named_config("smoke")
    assert smoke.train.epochs == 1 and smoke.data.source == "shared" and smoke.ehr.features
    with pytest.raises(ValueError, match="unknown config"):
        named_config("vit_b-D")


def test_overrides_parse_each_type() -> None:
    config = apply_overrides(
        PretrainConfig(),
        [
            "optim.lr=5e-4",
            "train.epochs=3",
            "mask.per_sample=false",
            "ehr.features=age,sex",
            "views.focal_scale=0.1,0.2",
            "optim.final_weight_decay=0.4",
            "name=mine",
        ],
    )
    assert config.optim.lr == 5e-4 and config.train.epochs == 3 and config.mask.per_sample is False
    assert config.ehr.features == ("age", "sex") and config.views.focal_scale == (0.1, 0.2)
    assert config.optim.final_weight_decay == 0.4 and config.name == "mine"
    assert apply_overrides(config, ["optim.final_weight_decay=none"]).optim.final_weight_decay is None
    assert apply_overrides(config, ["ehr.features="]).ehr.features == ()


@pytest.mark.parametrize(
    "override",
    ["optim.learning_rate=1", "optimiser.lr=1", "train.epochs=two", "mask.per_sample=maybe", "optim.lr",
     "views.focal_scale=0.1", "mask.ratio=1.5", "train.epochs=2.5"],
)  # fmt: skip
def test_bad_overrides_are_refused(override: str) -> None:
    with pytest.raises(ValueError):
        apply_overrides(PretrainConfig(), [override])


def test_round_trip_through_json() -> None:
    config = apply_overrides(
        named_config("smoke"), ["views.rand_scale=0.2,0.9", "optim.final_weight_decay=0.4"]
    )
    assert from_dict(json.loads(json.dumps(to_dict(config)))) == config
    with pytest.raises(ValueError, match="unknown config keys"):
        from_dict({**to_dict(config), "extra": 1})


def test_the_shared_data_root_comes_from_the_command_line_then_the_environment_then_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.downstream.config import named_config as downstream_config

    monkeypatch.delenv(ENV_VAR, raising=False)
    assert shared_data_root() == CHECKOUT_DATA == Path(__file__).resolve().parents[3] / "shared" / "data"
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert shared_data_root() == tmp_path
    assert shared_data_root(tmp_path / "given") == tmp_path / "given"
    # the named configs that read the shared data take it from there too
    assert named_config("smoke").data.shared_root == str(tmp_path)
    assert named_config("small-vanilla").data.shared_root == str(tmp_path)
    assert downstream_config("smoke").data.shared_root == str(tmp_path)


def test_a_missing_shared_data_root_names_both_ways_to_give_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "absent"))
    with pytest.raises(
        ValueError, match=r"absent does not exist: pass it with --shared-root or set CXR_MSN_DATA_ROOT"
    ):
        shared_data_root(check=True, flag="--shared-root")
    with pytest.raises(
        ValueError, match=r"pass it with --set data\.shared_root=DIR or set CXR_MSN_DATA_ROOT"
    ):
        shared_data_root(tmp_path / "gone", check=True)
    assert shared_data_root(tmp_path, check=True) == tmp_path
