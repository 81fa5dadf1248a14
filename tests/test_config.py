from __future__ import annotations

from dataclasses import dataclass

import pytest

from edgesr.config import check_choice, describe, load_yaml, opt, parse_overrides, to_yaml
from edgesr.errors import ConfigError


@dataclass(frozen=True)
class Trainer:
    steps: int = opt(100, "optimisation steps")
    lr: float = opt(1e-3, "learning rate")


@dataclass(frozen=True)
class Recipe:
    name: str = opt("kd", "recipe name")
    scales: tuple[int, ...] = opt((2, 4), "scales")
    trainer: Trainer = opt(Trainer(), "trainer")

    def __post_init__(self) -> None:
        check_choice("name", self.name, ("kd", "prune"))


def test_defaults_and_dotted_overrides():
    cfg = parse_overrides(Recipe, ["trainer.steps=200", "scales=[2,3]", "name=prune"])
    assert cfg == Recipe(name="prune", scales=(2, 3), trainer=Trainer(steps=200))
    with pytest.raises(AttributeError):
        cfg.name = "x"  # frozen


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'trainer\.stesp'; did you mean 'trainer\.steps'\?"):
        parse_overrides(Recipe, ["trainer.stesp=3"])


def test_bad_values_name_their_key():
    with pytest.raises(ConfigError, match="trainer.steps"):
        parse_overrides(Recipe, ["trainer.steps=many"])
    with pytest.raises(ConfigError, match="name='distil' is not valid"):
        parse_overrides(Recipe, ["name=distil"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(Recipe, ["trainer.steps"])
    # From a sweep of user commands: `key=` with nothing after it.
    with pytest.raises(ConfigError, match="bad value for 'name': it is empty; give a value after the '='"):
        parse_overrides(Recipe, ["name="])
    # A list without its brackets (`scales=2`, `configs=a,b`): how to write it, and what was given.
    with pytest.raises(
        ConfigError, match=r"bad value for 'scales': it takes a list, .*scales=\[a,b\]; got 2,3"
    ):
        parse_overrides(Recipe, ["scales=2,3"])
    # A key given twice: the last wins (as in OmegaConf's dotlists; scripts append overrides to a base).
    assert parse_overrides(Recipe, ["trainer.steps=2", "trainer.steps=3"]).trainer.steps == 3


def test_yaml_unknown_key_names_the_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: kd\ntrainer:\n  step: 5\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'trainer\.step' in .*recipe\.yaml; did you mean 'trainer\.steps'"
    ):
        load_yaml(Recipe, path)
    path.write_text("name: kd\ntrainer:\n  steps: 5\n")
    cfg = load_yaml(Recipe, path, ["trainer.lr=0.1"])
    assert cfg.trainer == Trainer(steps=5, lr=0.1)
    assert "steps: 5" in to_yaml(cfg)


@dataclass(frozen=True)
class Pipeline:
    stages: list[Trainer] = opt([Trainer()], "stages")


def test_yaml_unknown_key_in_a_list_item_names_the_item(tmp_path):
    # OmegaConf reports the key relative to its item; the error names the item and suggests its keys
    # (it used to suggest a top-level key: "unknown key 'stepz'; did you mean 'stages'?").
    path = tmp_path / "pipeline.yaml"
    path.write_text("stages:\n  - {steps: 5}\n  - {stepz: 5}\n")
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'stages\.1\.stepz' in .*pipeline\.yaml; did you mean 'stages\.1\.steps'",
    ):
        load_yaml(Pipeline, path)


def test_describe_lists_nested_keys_with_defaults_and_help():
    rows = {row.key: row for row in describe(Recipe)}
    assert set(rows) == {"name", "scales", "trainer.steps", "trainer.lr"}
    assert rows["trainer.steps"].default == 100
    assert rows["trainer.lr"].help == "learning rate"


def test_exactly_one_source_names_the_keys_and_what_was_given():
    from edgesr.config import check_exactly_one

    check_exactly_one({"model": "rdn-mr-x2", "checkpoint": "", "artifact": ""})
    hints = {"model": "shipped: a, b"}
    with pytest.raises(ConfigError) as both:
        check_exactly_one({"model": "a", "checkpoint": "", "artifact": "out/fp32"}, hints=hints)
    assert str(both.value) == (
        "give exactly one of model= (shipped: a, b), checkpoint= or artifact=; got model= and artifact="
    )
    with pytest.raises(ConfigError, match="give exactly one of checkpoint= or model=; got none of them"):
        check_exactly_one({"checkpoint": "", "model": ""})


def test_a_bad_value_is_blamed_on_the_file_or_on_the_command_line_whichever_set_it(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: kd\ntrainer:\n  steps: many\n")
    with pytest.raises(ConfigError, match=f"bad value for 'trainer.steps' in {path}"):
        load_yaml(Recipe, path, ["name=prune"])  # the file's own mistake, whatever the command line adds
    path.write_text("name: kd\n")
    with pytest.raises(ConfigError, match=r"'trainer.steps' \(set on the command line\)"):
        load_yaml(Recipe, path, ["trainer.steps=many"])
