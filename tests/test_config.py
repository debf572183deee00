"""Config: recipes load, flags override, typos are errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsight.config import list_recipes, load_config, save_config
from medsight.errors import ConfigError


@pytest.mark.parametrize("recipe", list_recipes())
def test_every_recipe_validates_and_round_trips(recipe: str, tmp_path: Path) -> None:
    cfg = load_config(recipe=recipe)
    save_config(cfg, tmp_path / "cfg.yaml")
    assert load_config(tmp_path / "cfg.yaml") == cfg


def test_layers_file_over_recipe_and_flags_over_file(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("train: {epochs: 7, lr: 0.5}\nmodel: {name: resnet18}\n")
    cfg = load_config(path, recipe="medmnist", overrides={"train.lr": 0.01, "train.batch_size": None})
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.name) == (7, 0.01, "resnet18")
    assert cfg.train.batch_size == 128  # None means "not given" and keeps the recipe's value
    assert cfg.preprocess.size == [28, 28]


def test_recipe_none_is_the_defaults() -> None:
    assert load_config(recipe="none") == load_config()


@pytest.mark.parametrize(
    ("text", "needle"),
    [("train: {epoch: 3}\n", "train.epoch"), ("preprocess: {size: [64]}\n", "preprocess.size"),
     ("train: [1, 2]\n", "train"), ("train: {epochs: 3\n", "YAML")],
    ids=["typo", "bad-size", "not-a-mapping", "bad-yaml"],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="cfg.yaml") as info:
        load_config(path)
    assert needle in str(info.value)
    assert path.read_text() == text
