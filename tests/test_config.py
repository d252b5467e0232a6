"""The config keys, each declared once (``train.configs.base.KEYS``): defaults, docs and checks derived from it."""

from __future__ import annotations

import math

import ml_collections
import pytest

import helpers

helpers.require("tensorflow_datasets")  # train's extra: in CI a missing one fails, never skips

from train import __main__ as cli
from train import config_checks, configs
from train.configs import base
from train.errors import ConfigError

# Values of every kind a key could be given; each key's check must refuse at least one of them.
ODD_VALUES = (None, -1, 0, 0.5, 1.5, -0.5, math.inf, math.nan, True, "", "surely-not-a-choice", (), (0.9, 0.1), [1])


def valid_config(tmp_path) -> ml_collections.ConfigDict:
    config = configs.get_config("tiny")
    config.data_dir = str(tmp_path)
    return config


def with_value(config: ml_collections.ConfigDict, name: str, value) -> ml_collections.ConfigDict:
    """``config`` with ``name`` set to ``value`` whatever its type (a ConfigDict field refuses another type)."""
    return ml_collections.ConfigDict({**config.to_dict(), name: value}, type_safe=False)


def test_every_key_has_one_declaration_with_a_one_line_doc_and_a_check():
    names = [key.name for key in base.KEYS]
    assert len(names) == len(set(names))
    assert sorted(base.base_config().keys()) == sorted(names)
    for key in base.KEYS:
        assert key.doc.strip() and "\n" not in key.doc, key.name
        assert isinstance(key.check, base.Check) and key.check.expected, key.name
        assert key.check.accepts(key.default), f"{key.name}'s default {key.default!r} fails its own check"


@pytest.mark.parametrize("key", base.KEYS, ids=lambda key: key.name)
def test_every_key_is_checked_by_validate_with_a_message_naming_it(key, tmp_path):
    """A key whose check accepts anything (or that validate forgets) fails here."""
    config = valid_config(tmp_path)
    config_checks.validate(config)
    refused = []
    for value in ODD_VALUES:
        try:
            config_checks.validate(with_value(config, key.name, value))
        except ConfigError as err:
            if str(err).startswith(f"{key.name} must be"):
                refused.append(value)
    assert refused, f"validate accepts every value of {key.name}: {ODD_VALUES}"


@pytest.mark.parametrize("name", configs.NAMES)
def test_every_experiment_passes_the_checks_and_declares_no_other_key(name, tmp_path):
    config = configs.get_config(name)
    config.data_dir = str(tmp_path)
    config_checks.validate(config)


def test_a_key_not_declared_is_refused(tmp_path):
    config = valid_config(tmp_path)
    config.unlock()
    with pytest.raises(ConfigError, match=r"unknown config keys \['learning_rte'\]"):
        config_checks.validate(ml_collections.ConfigDict({**config.to_dict(), "learning_rte": 0.1}))


@pytest.mark.parametrize(
    "name, value, accepted",
    [
        ("momentum", 0.0, True),
        ("momentum", 1.0, False),
        ("lr_drops", (0.5, 0.75), True),
        ("lr_drops", (0.75, 0.5), False),
        ("lr_drops", (0.5, 1.0), False),
        ("warmup_steps", 0, True),
        ("warmup_steps", -1, False),
        ("seed", 3, True),
        ("seed", 2.0, False),
        ("weight_decay", 0.0, True),
        ("weight_decay", math.nan, False),
        ("localisation_lr", -0.1, False),
        ("grad_clip_norm", 1.0, True),
        ("grad_clip_norm", math.inf, False),
        ("steps_per_dispatch", 0, True),
        ("steps_per_dispatch", True, False),
        ("profile_steps", (2, 3), True),
        ("profile_steps", (3, 2), False),
        ("profile_steps", (0, 2), False),
        ("async_checkpoints", 1, False),
        ("model_kwargs", {"channels": (8, 8)}, True),
        ("model_kwargs", "channels=8", False),
    ],
)
def test_the_checks_keys_lacked_before_they_were_declared(name, value, accepted, tmp_path):
    config = with_value(valid_config(tmp_path), name, value)
    if accepted:
        config_checks.validate(config)
    else:
        with pytest.raises(ConfigError, match=f"^{name} must be"):
            config_checks.validate(config)


def test_print_config_shows_every_key_with_its_value_and_doc(capsys):
    assert cli.main(["--config", "tiny", "--print_config", "--set", "steps=7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [key.name for key in base.KEYS]
    shown = {line.split()[0]: line for line in lines}
    assert shown["steps"].split()[1] == "7" and shown["batch_size"].split()[1] == "8"
    assert shown["steps"].endswith("# optimisation steps")


def test_flax_examples_spelling_of_overrides_is_accepted(capsys):
    argv = ["--config", "tiny", "--print_config", "--config.steps=9", "--config.lr_drops", "(0.2,0.4)", "--set",
            "seed=3"]  # fmt: skip
    assert cli.main(argv) == 0
    shown = {
        line.split()[0]: line.split("#")[0].split(maxsplit=1)[1].strip()
        for line in capsys.readouterr().out.splitlines()
    }
    assert (shown["steps"], shown["lr_drops"], shown["seed"]) == ("9", "(0.2, 0.4)", "3")
    assert cli.config_flags_as_set(["--config", "tiny", "--config.steps=4"]) == ["--config", "tiny", "--set", "steps=4"]
