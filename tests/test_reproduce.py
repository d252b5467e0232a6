"""Bookkeeping of benchmarks/reproduce.py: cells (cells.py), records -> RESULTS.md (records.py), finished cells
skipped (no training)."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import cells
import records
import reproduce


def _record(cell, error, steps=100, batch=8):
    distortion, model = cells.parse_cell(cell)
    return {
        "cell": cell,
        "distortion": distortion,
        "model": model,
        "label": cells.cell_label(cell),
        "config": cells.config_name(cell),
        "paper_error_pct": cells.paper_error(cell),
        "test_error": error,
        "test_error_pct": round(100 * error, 2),
        "test_examples": 10_000,
        "steps": steps,
        "batch_size": batch,
        "images_seen": steps * batch,
        "epochs": 0.01,
        "wall_time_s": 61.0,
        "train_images_per_s": 500.0,
        "last_val_error": error,
        "command": f"python -m train --config {cells.config_name(cell)}",
        "finished": "2026-01-01T00:00:00",
        "pictures": {"samples": f"{cell}_samples.png"} if model.startswith("st_") else {},
    }


def test_cells_parse_and_have_configs():
    from train import configs

    for cell in cells.DEFAULT_ORDER:
        assert cells.config_name(cell) in configs.NAMES
        assert cells.paper_error(cell) is not None
    for cell in cells.ADDITION_CELLS:
        assert cells.config_name(cell) in configs.NAMES


def test_addition_variant_sets_its_override_on_the_command_and_in_the_config():
    command = reproduce.train_command("addition_2st_fcn_random_init", 10, 8, workdir=Path("w"), data_dir=Path("d"))
    assert command[command.index("--config") + 1] == "mnist_addition_2st_fcn"
    assert "model_kwargs.theta_init=random" in command and "steps=10" in command
    config = reproduce._config("addition_2st_fcn_random_init", 10, 8)
    assert config["model_kwargs"]["theta_init"] == "random" and config["steps"] == 10
    assert "theta_init" not in reproduce._config("addition_2st_fcn", 10, 8)["model_kwargs"]


def test_table_regenerated_from_records(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "TABLE1_BUDGET", (100, 8))
    monkeypatch.setattr(records, "TABLE1_RECIPE", "")  # the standard recipe, whatever cells.py chose
    runs = [
        _record("rts_st_cnn_affine", 0.0091),
        _record("rts_cnn", 0.0123),
        _record("rts_st_cnn_affine", 0.02, steps=10),
    ]
    for r in runs:
        (tmp_path / f"{cells.run_stem(r['cell'], r['steps'], r['batch_size'])}.json").write_text(json.dumps(r))
    text = records.render_results(records.load_records(tmp_path))
    assert "| ST-CNN Aff | — (0.7) | **0.91** (0.5) | — (0.8) | — (1.2) |" in text
    assert "| CNN | — (1.2) | **1.23** (0.8) |" in text
    # sqrt(0.0091·0.9909/1e4 + 0.0123·0.9877/1e4) = 0.00145: 0.32 points is more than 2σ.
    assert "RTS, 100 steps × 8: ST-CNN Aff 0.91% vs CNN 1.23%, difference 0.32 ± 0.15 points — ST-CNN better\n" in text
    assert "ST-CNN Aff on RTS ≤ 0.7%: **not met** (0.91%)" in text
    assert "rts_st_cnn_affine_samples.png" in text
    assert text.count("| rts_st_cnn_affine |") == 2  # both runs listed


def test_addition_table_shows_accuracy_beside_the_reported_figures(tmp_path):
    r = _record("addition_2st_fcn_random_init", 0.25)
    records.record_path(tmp_path, r["cell"], 100, 8).write_text(json.dumps(r))
    text = records.render_results(records.load_records(tmp_path))
    assert "| 2×ST-FCN, random init | **75.00** (25.00) | — | 69 | — | 100 × 8 | 1m01s |" in text
    assert "| CNN | — | 85.3 | 85 | 14.7 | — | — |" in text


def test_finished_cells_are_skipped(tmp_path):
    todo = reproduce.plan(["rts_st_cnn_affine", "rts_cnn"], 100, 8)
    assert reproduce.pending(todo, tmp_path) == todo
    records.record_path(tmp_path, "rts_cnn", 100, 8).write_text(json.dumps(_record("rts_cnn", 0.01)))
    assert reproduce.pending(todo, tmp_path) == [("rts_st_cnn_affine", 100, 8)]
    assert reproduce.pending(reproduce.plan(["rts_cnn"], 200, 8), tmp_path) == [("rts_cnn", 200, 8)]  # new budget


def test_generalisation_rotates_alternately_by_exactly_the_angle():
    import numpy as np

    import generalisation

    digits = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    x, y = generalisation.rotated_test_set(digits, np.arange(4), 90)
    np.testing.assert_array_equal(y, np.arange(4))
    for i in range(4):  # clockwise (as displayed) for even indices, anticlockwise for odd
        expected = np.rot90(digits[i] / 255.0, -1 if i % 2 == 0 else 1, axes=(0, 1))
        np.testing.assert_allclose(x[i], expected, atol=1e-5)


def test_generalisation_table_is_rendered_into_results(tmp_path):
    r = _record("rts28_st_cnn_affine", 0.02)
    records.record_path(tmp_path, r["cell"], 100, 8).write_text(json.dumps(r))
    result = {
        "cell": r["cell"],
        "label": r["label"],
        "run": "x",
        "steps": 100,
        "batch_size": 8,
        "test_examples": 10000,
        "in_distribution_error_pct": 2.0,
        "finished": "2026-01-01T00:00:00",
        "accuracy_pct": {"45": 97.5, "60": 90.25, "75": 70.0, "90": 40.0},
    }
    records.generalisation_path(tmp_path, "x").write_text(json.dumps(result))
    out = tmp_path / "RESULTS.md"
    records.write_results(tmp_path, out)
    assert "| ST-CNN Aff | 97.50 | 90.25 | 70.00 | 40.00 | 2.00 | 100 × 8 |" in out.read_text()


def test_variant_cell_runs_its_base_config_with_the_variant_overrides():
    command = reproduce.train_command("tc_st_cnn_affine+full_res", 10, 8, workdir=Path("w"), data_dir=Path("d"))
    assert command[command.index("--config") + 1] == "mnist_tc_st_cnn_affine"
    assert "model_kwargs.output_pool=1" in command
    config = reproduce._config("tc_st_cnn_affine+full_res", 10, 8)
    assert config["model_kwargs"]["output_pool"] == 1 and config["model"] == "st_cnn_affine"
    assert cells.parse_cell("tc_st_cnn_affine+full_res") == ("TC", "st_cnn_affine")
    assert cells.paper_error("tc_st_cnn_affine+full_res") == 1.7
    assert reproduce.plan(["tc_cnn+seed_1:30:4"], None, None) == [("tc_cnn+seed_1", 30, 4)]


def test_unknown_variant_is_refused_with_the_known_ones():
    import pytest

    with pytest.raises(ValueError, match=r"unknown variant 'nope'.*full_res"):
        reproduce.plan(["tc_cnn+nope"], None, None)


def test_variants_are_compared_with_the_same_budget_cnn_but_stay_out_of_table_1(tmp_path):
    runs = [
        _record("tc_cnn", 0.0187),
        _record("tc_st_cnn_affine", 0.0218),
        _record("tc_st_cnn_affine+full_res", 0.0150),
        _record("tc_st_cnn_affine+seed_1", 0.0190),
        _record("tc_cnn+seed_1", 0.0200),
        _record("tc_st_cnn_affine+loc_lr_1", 0.01, steps=50),
    ]
    for r in runs:
        records.record_path(tmp_path, r["cell"], r["steps"], r["batch_size"]).write_text(json.dumps(r))
    text = records.render_results(records.load_records(tmp_path))
    assert "| ST-CNN Aff | **2.18** <sub>100×8</sub> (1.7) |" in text  # the standard recipe, not the 1.50
    assert "TC, 100 steps × 8: ST-CNN Aff +full_res 1.50% vs CNN 1.87%, difference 0.37" in text
    assert "TC, 100 steps × 8: ST-CNN Aff +seed_1 1.90% vs CNN +seed_1 2.00%, difference 0.10" in text
    assert "TC, 100 steps × 8: ST-CNN Aff 2.18% vs CNN 1.87%, difference -0.31" in text
    assert "loc_lr_1 1.00%" not in text.split("## Runs")[0]  # no CNN with 50 steps: no pair
    assert "- `+full_res`: classifier on the transformer's full-resolution output" in text
    assert text.count("| tc_st_cnn_affine+full_res |") == 1


def test_addition_table_lists_every_run_and_variant(tmp_path):
    runs = [_record("addition_cnn", 0.6, steps=200), _record("addition_cnn", 0.7), _record("addition_cnn+fc_128", 0.2)]
    for r in runs:
        records.record_path(tmp_path, r["cell"], r["steps"], 8).write_text(json.dumps(r))
    text = records.render_results(records.load_records(tmp_path))
    assert (
        "| CNN | **30.00** (70.00) | 85.3 | 85 | 14.7 | 100 × 8 | 1m01s |\n"
        "| CNN | **40.00** (60.00) | 85.3 | 85 | 14.7 | 200 × 8 | 1m01s |\n"
        "| CNN +fc_128 | **80.00** (20.00) | 85.3 |"
    ) in text
    assert "- `+fc_128`: a hidden FC layer of 128 units" in text
    config = reproduce._config("addition_cnn+fc_128", 10, 8)
    assert list(config["model_kwargs"]["hidden"]) == [128]


def test_combined_variants_apply_every_part_and_pair_with_the_same_combination(tmp_path):
    import pytest

    config = reproduce._config("tc_cnn+fixed_train+seed_1", 10, 8)
    assert config["train_distortion"] == "fixed" and config["seed"] == 1 and config["model"] == "cnn"
    with pytest.raises(ValueError, match="unknown variant 'seed_9'"):
        cells.split_variant("tc_cnn+fixed_train+seed_9")
    runs = [
        _record("tc_cnn", 0.0187),
        _record("tc_cnn+fixed_train", 0.03),
        _record("tc_cnn+fixed_train+seed_1", 0.04),
        _record("tc_st_cnn_affine+fixed_train+seed_1", 0.02),
        _record("tc_st_cnn_affine+fixed_train+full_res", 0.025),
        _record("tc_st_cnn_affine+fixed_train", 0.01, steps=200),
    ]
    for r in runs:
        records.record_path(tmp_path, r["cell"], r["steps"], r["batch_size"]).write_text(json.dumps(r))
    text = records.render_results(records.load_records(tmp_path))
    assert "ST-CNN Aff +fixed_train+seed_1 2.00% vs CNN +fixed_train+seed_1 4.00%, difference 2.00" in text
    assert "ST-CNN Aff +fixed_train+full_res 2.50% vs CNN +fixed_train 3.00%" in text  # transformer-only part dropped
    assert "ST-CNN Aff +fixed_train 1.00%" not in text  # no CNN +fixed_train of 200 steps: never the standard CNN
    assert "- `+fixed_train`: trained on one fixed distorted copy" in text and "- `+seed_1`: " in text
    # The TC table: the standard run, and the fixed-training-set run of seed 0 (not the seed-1 one).
    assert "| CNN | **1.87** <sub>100×8</sub> (3.5) | **3.00** <sub>100×8</sub> (3.5) |" in text
    assert "| ST-CNN Aff | — (1.7) | **1.00** <sub>200×8</sub> (1.7) |" in text


def test_results_md_is_what_the_recorded_runs_render(tmp_path):
    """RESULTS.md is generated, never edited by hand: benchmarks/results/ renders it byte for byte."""
    out = tmp_path / "RESULTS.md"
    records.write_results(records.RESULTS_DIR, out)
    assert out.read_bytes() == records.RESULTS_MD.read_bytes(), (
        "rerun: PYTHONPATH=. python benchmarks/reproduce.py --render"
    )


def test_table_1_shows_only_its_budget_and_recipe_and_checks_the_goals(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "TABLE1_BUDGET", (100, 8))
    monkeypatch.setattr(records, "TABLE1_RECIPE", "")
    runs = [
        _record("rts_st_cnn_affine", 0.0060),
        _record("rts_cnn", 0.0123),
        _record("rts_cnn", 0.0050, steps=200),
        _record("r_fcn", 0.02),
        _record("r_st_fcn_affine", 0.03),
        _record("p_st_fcn_tps", 0.01),
        _record("e_cnn+ema", 0.011),
        _record("e_st_cnn_tps+seed_1", 0.001),
    ]
    for r in runs:
        records.record_path(tmp_path, r["cell"], r["steps"], r["batch_size"]).write_text(json.dumps(r))
    text = records.render_results(records.load_records(tmp_path))
    table = text.split("Translated cluttered")[0]
    assert "| CNN | — (1.2) | **1.23** (0.8) | — (1.5) | — (1.4) |" in table  # not the 0.50 of 200 steps
    assert "| ST-CNN TPS | — (0.7) | — (0.5) | — (0.8) | — (1.1) |" in table  # a seed variant stays out
    assert "| FCN | **2.00** (2.1) |" in table and "| ST-FCN TPS | — (1.1) | — (0.8) | **1.00** (1.4) |" in table
    # RTS ST-CNN Aff beats the CNN; R's ST-FCN Aff does not beat the FCN; P's ST-FCN TPS has no FCN to compare with.
    assert (
        "ST models below their base model (ST-FCN vs FCN, ST-CNN vs CNN): 1 of 2 measured; not below: "
        "ST-FCN Aff on R (3.00% vs 2.00%)" in text
    )
    assert "ST-CNN Aff on RTS ≤ 0.7%: met (0.60%)" in text
    assert "cells at or below the paper's figure: 2 of 5 measured (r_fcn, p_st_fcn_tps)" in text
    assert "Runs of Table 1 (100 × 8) not made yet: rts_fcn, p_fcn," in text
    monkeypatch.setattr(records, "TABLE1_RECIPE", "ema")
    text = records.render_results(records.load_records(tmp_path))
    assert "| CNN | — (1.2) | — (0.8) | — (1.5) | **1.10** (1.4) |" in text  # only the recipe's runs
    assert "and `+ema` (evaluated with a moving average of the weights" in text


def test_recipe_search_compares_each_variant_with_the_standard_recipe_of_the_same_model(tmp_path, monkeypatch, capsys):
    search = ("ema", "ls_01", "loc_lr_1", "ema+loc_lr_1")
    for module in (records, reproduce):
        monkeypatch.setattr(module, "SEARCH_BUDGET", (100, 8))
        monkeypatch.setattr(module, "SEARCH_VARIANTS", search)
    monkeypatch.setattr(records, "TABLE1_RECIPE", "")
    runs = [
        _record("rts_st_cnn_affine", 0.0100),
        _record("rts_cnn", 0.0200),
        _record("rts_cnn+ema", 0.0150),
        _record("rts_st_cnn_affine+ema", 0.0110),
        _record("rts_st_cnn_affine+loc_lr_1", 0.0090),
        _record("rts_st_cnn_affine+ema+loc_lr_1", 0.0080),
        _record("rts_st_cnn_affine+ls_01", 0.005, steps=50),
    ]
    for r in runs:
        records.record_path(tmp_path, r["cell"], r["steps"], r["batch_size"]).write_text(json.dumps(r))
    text = records.render_results(records.load_records(tmp_path))
    section = text.split("## Recipe search (RTS, 100 × 8)")[1].split("\n## ")[0]
    assert "| standard | 1.00 | 2.00 |" in section
    # sqrt(0.011·0.989/1e4 + 0.01·0.99/1e4) = 0.00144; sqrt(0.015·0.985/1e4 + 0.02·0.98/1e4) = 0.00185
    assert (
        "| `+ema`: evaluated with a moving average of the weights, decay 0.999 (standard: the weights) "
        "| 1.10 (+0.10 ± 0.14) | 1.50 (-0.50 ± 0.19) |" in section
    )
    assert "| `+loc_lr_1`: " in section and "| 0.90 (-0.10 ± 0.14) | (no transformer) |" in section
    assert "| `+ls_01`: trained on labels smoothed by 0.1 (standard: none) | — | — |" in section  # other budget
    # The CNN runs ema+loc_lr_1 as ema: the same run as the ema row. sqrt(0.008·0.992/1e4 + 0.01·0.99/1e4) = 0.00134
    assert "| 0.80 (-0.20 ± 0.13) | 1.50 (-0.50 ± 0.19) |" in section.split("| `+ema+loc_lr_1`: ")[1]
    assert "Table 1 is trained with the standard recipe." in section
    capsys.readouterr()
    assert reproduce.main(["--search", "--list", "--results_dir", str(tmp_path)]) == 0
    planned = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert planned == [
        "rts_st_cnn_affine",
        "rts_cnn",
        "rts_st_cnn_affine+ema",
        "rts_cnn+ema",
        "rts_st_cnn_affine+ls_01",
        "rts_cnn+ls_01",
        "rts_st_cnn_affine+loc_lr_1",
        "rts_st_cnn_affine+ema+loc_lr_1",
    ]


def test_table1_says_where_its_cells_were_trained_and_the_runs_list_names_each_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "TABLE1_BUDGET", (100, 8))
    monkeypatch.setattr(records, "TABLE1_RECIPE", "")
    runs = [
        _record("rts_st_cnn_affine", 0.0091) | {"machine": "NVIDIA H200 (gpu, jax 0.11.2)"},
        _record("rts_cnn", 0.0123) | {"machine": "NVIDIA H200 (gpu, jax 0.11.2)"},
        _record("r_cnn", 0.02) | {"machine": "AMD EPYC, 2 cores"},
        _record("p_cnn", 0.01) | {"machine": "AMD EPYC, 2 cores", "rebuilt_from_log": "the files were lost"},
    ]
    text = records.render_results(runs)
    assert "Trained on: NVIDIA H200 (gpu, jax 0.11.2) (2 cells); AMD EPYC, 2 cores (2 cells)." in text
    assert text.count("| AMD EPYC, 2 cores † |") == 1  # the rebuilt record is marked
    assert text.count("| AMD EPYC, 2 cores |") == 1 and text.count("| NVIDIA H200 (gpu, jax 0.11.2) |") == 2


def test_seeds_section_gives_each_seed_the_mean_difference_and_the_standard_recipe_beside(monkeypatch):
    monkeypatch.setattr(records, "TABLE1_BUDGET", (100, 8))
    monkeypatch.setattr(records, "TABLE1_RECIPE", "ls_01")
    errors = {
        "rts_st_cnn_affine+ls_01": 0.0076,
        "rts_st_cnn_affine+ls_01+seed_1": 0.0066,
        "rts_st_cnn_affine+ls_01+seed_2": 0.0072,
        "rts_cnn+ls_01": 0.0120,
        "rts_cnn+ls_01+seed_1": 0.0110,
        "rts_cnn+ls_01+seed_2": 0.0100,
        "rts_st_cnn_affine": 0.0086,
        "rts_cnn": 0.0132,
        "rts_cnn+ls_01+seed_1__other_budget": 0.5,
        "rts_st_cnn_affine+ls_01+loc_lr_1": 0.0070,
        "rts_st_cnn_affine+ls_01+loc_lr_1+seed_2": 0.0060,
    }
    runs = [_record(c.split("__")[0], e, steps=50 if "__" in c else 100) for c, e in errors.items()]
    text = records.render_results(runs)
    section = text.split("## Seeds of Table 1: ST-CNN Aff and CNN")[1].split("\n## ")[0]
    assert "| ST-CNN Aff | — | 0.76 / 0.66 / 0.72 (mean 0.71) | — | — |" in section
    assert "| CNN | — | 1.20 / 1.10 / 1.00 (mean 1.10) | — | — |" in section
    # CNN − ST per seed: 0.44, 0.44, 0.28 -> mean 0.39, sd 0.0924
    assert "| CNN − ST-CNN Aff | — | +0.39 ± 0.09 (3 seeds) | — | — |" in section
    assert "| ST-CNN Aff, standard | — | 0.86 | — | — |" in section and "| CNN, standard | — | 1.32 |" in section
    # A transformer-only change on top of Table 1's recipe, against Table 1's CNN of the same seed (0 and 2):
    # 1.20 − 0.70 = 0.50, 1.00 − 0.60 = 0.40 -> mean 0.45, sd 0.0707
    assert "| ST-CNN Aff `+loc_lr_1` | — | 0.70 / 0.60 (mean 0.65) | — | — |" in section
    assert "| CNN − ST-CNN Aff `+loc_lr_1` | — | +0.45 ± 0.07 (2 seeds) | — | — |" in section
    assert "`+full_res`" not in section  # transformer-only too, but not run
    assert (
        "ST-CNN Aff on RTS ≤ 0.7%: **not met** (0.76%; seeds 0–2: 0.76 / 0.66 / 0.72%, mean 0.71%, 1 of 3 at or below)"
    ) in text


def test_gap_section_lists_each_cells_standard_runs_by_budget_and_counts_those_still_falling(monkeypatch):
    monkeypatch.setattr(records, "TABLE1_BUDGET", (400, 8))
    monkeypatch.setattr(records, "TABLE1_RECIPE", "ls_01")
    runs = [
        _record("r_cnn", 0.04, steps=200),
        _record("r_cnn", 0.02, steps=100),
        _record("r_cnn", 0.012, steps=400),
        _record("r_cnn+ls_01", 0.013, steps=400),
        _record("r_cnn+ema", 0.001, steps=300),  # a variant: left out
        _record("r_cnn", 0.001, steps=300, batch=16),  # another batch: left out
        _record("e_fcn", 0.05, steps=100),
        _record("e_fcn", 0.06, steps=200),  # rose at its largest
        _record("p_fcn", 0.07, steps=100),
        _record("p_fcn+ls_01", 0.03, steps=400),
        _record("rts_fcn", 0.03, steps=100),
        _record("rts_fcn", 0.02, steps=200),
        _record("rts_cnn", 0.03, steps=100),  # one standard run and no Table 1 run: nothing to compare
        _record("r_fcn+ls_01", 0.03, steps=400),  # a Table 1 run alone: nothing to compare
    ]
    section = records.render_results(runs).split("## Why Table 1 is above the paper's figures")[1].split("\n## ")[0]
    assert all(f"- {why}" in section for why in cells.TABLE1_GAP_WHY)
    assert "- CNN, R: 2.00 (100) → 4.00 (200) → 1.20 (400); Table 1 (`+ls_01`): 1.30\n" in section
    assert "- FCN, P: 7.00 (100); Table 1 (`+ls_01`): 3.00\n" in section
    assert "- FCN, E: 5.00 (100) → 6.00 (200)\n" in section
    assert "- FCN, RTS: 3.00 (100) → 2.00 (200)\n" in section
    assert "CNN, RTS" not in section and "FCN, R:" not in section
    assert (
        "Of the 3 cells trained at two budgets or more, 2 had a lower error at the largest than at the one before"
        in section
    )


def test_experiments_compare_each_row_with_the_baseline_seed_by_seed_at_one_budget(monkeypatch):
    tc = cells.Experiment(
        "TC test",
        "intro.",
        (100, 8),
        (("tc_cnn", "CNN", "3.5"), ("tc_st_cnn_affine", "ST-CNN Aff", "1.7")),
        baseline="tc_cnn",
        findings=("a measured reason",),
    )
    addition = cells.Experiment(
        "Addition test",
        "intro.",
        (100, 8),
        (("addition_cnn", "CNN", "85.30"), ("addition_2st_fcn", "2×ST-FCN", "93.47")),
        baseline="addition_cnn",
        accuracy=True,
    )
    monkeypatch.setattr(records, "EXPERIMENTS", {"tc": tc, "addition": addition})
    errors = {
        "tc_cnn": 0.0200,
        "tc_cnn+seed_1": 0.0180,
        "tc_st_cnn_affine": 0.0120,
        "tc_st_cnn_affine+seed_1": 0.0170,
        "addition_cnn": 0.2000,
        "addition_2st_fcn": 0.0700,
        "addition_2st_fcn+seed_1": 0.0800,
    }
    runs = [_record(cell, error) for cell, error in errors.items()]
    runs.append(_record("tc_st_cnn_affine+seed_1", 0.5, steps=50))  # another budget: left out
    text = records.render_results(runs)
    section = text.split("## TC test")[1].split("\n## ")[0]
    assert "| CNN | 3.5 | **2.00** | **1.80** | 1.90 |" in section
    assert "| ST-CNN Aff | 1.7 | **1.20** | **1.70** | 1.45 |" in section
    # Gains: 2.00 − 1.20 = +0.80 (σ = sqrt(.02·.98 + .012·.988)/100 = 0.18%: > 2σ); 1.80 − 1.70 = +0.10 (σ 0.19).
    assert "| ST-CNN Aff | +0.80 ± 0.18 **> 2σ** | +0.10 ± 0.19 | +0.45 ± 0.49 |" in section
    assert "- a measured reason" in section
    assert "python -m train --config mnist_tc_st_cnn_affine" in section
    addition_section = text.split("## Addition test")[1].split("\n## ")[0]
    # Accuracy: 100 − error; the CNN's seed 1 is missing, so no mean and no gain for that seed.
    assert "| CNN | 85.30 | **80.00** | — | — |" in addition_section
    assert "| 2×ST-FCN | 93.47 | **93.00** | **92.00** | 92.50 |" in addition_section
    assert "| 2×ST-FCN | +13.00 ± 0.47 **> 2σ** | — | — |" in addition_section


def test_experiment_runs_are_planned_once_each_at_their_budget():
    runs = reproduce.experiment_runs(["addition", "init"])
    assert len(runs) == len(set(runs))
    budget = cells.EXPERIMENTS["addition"].budget
    assert ("addition_2st_fcn", *budget) in runs and ("addition_2st_fcn+seed_1", *budget) in runs
    assert ("addition_2st_fcn_random_init+seed_1", *budget) in runs
    for cell, _, _ in runs:
        cells.parse_cell(cells.split_variant(cell)[0])
    todo = reproduce.plan([f"{c}:{s}:{b}" for c, s, b in runs], None, None)
    assert todo == runs


def test_paper_sgd_variant_trains_with_the_papers_optimiser():
    from train import configs, optimizer

    cell = "addition_2st_fcn_random_init+paper_sgd+seed_1"
    config = configs.get_config(cells.config_name(cell), reproduce.train_sets(cell, 60000, 128))
    recipe = configs.unpack(config, optimizer.Recipe)
    paper = configs.unpack(configs.get_config("mnist_rts_st_cnn_affine_paper"), optimizer.Recipe)
    assert (recipe.optimizer, recipe.momentum, recipe.weight_decay, recipe.localisation_lr) == (
        paper.optimizer,
        paper.momentum,
        paper.weight_decay,
        paper.localisation_lr,
    )
    lr = optimizer.schedule(recipe)
    np.testing.assert_allclose([lr(0), lr(29999), lr(30000), lr(45000)], [0.01, 0.01, 0.001, 0.0001], rtol=1e-6)
    assert (config.model_kwargs.theta_init, config.seed) == ("random", 1)
