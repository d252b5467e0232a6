"""The records of benchmarks/reproduce.py's runs and RESULTS.md, rendered from them alone.

``benchmarks/results/<run>.json`` holds one trained cell's record (written by ``reproduce.run_cell``),
``benchmarks/results/generalisation__<run>.json`` one run's accuracies on rotated digits (written by
``generalisation.py``); :func:`write_results` regenerates the whole of RESULTS.md from them.
"""

from __future__ import annotations

import collections
import json
import statistics
from pathlib import Path

from cells import (
    ADDITION_CELLS,
    DEFAULT_ORDER,
    DISTORTIONS,
    EXPERIMENTS,
    GENERALISATION_ANGLES,
    LABELS,
    PAPER,
    ROOT,
    SEARCH_BUDGET,
    SEARCH_CELLS,
    SEARCH_VARIANTS,
    TABLE1_BUDGET,
    TABLE1_CELLS,
    TABLE1_GAP_WHY,
    TABLE1_RECIPE,
    TABLE1_RECIPE_WHY,
    VARIANTS,
    cell_label,
    cell_name,
    describe,
    run_stem,
    shared_part,
    split_variant,
    variant_for,
    variant_parts,
    with_recipe,
)

RESULTS_DIR = ROOT / "benchmarks" / "results"
RESULTS_MD = ROOT / "RESULTS.md"
# From then on `python -m train` set its XLA CPU flag (train/xla_cpu.py); records from
# before the summaries noted `xla_flags` are told apart by when they finished.
XLA_FLAG_SINCE = "2026-11-25T14:16"


def record_path(results_dir: Path, cell: str, steps: int, batch: int) -> Path:
    return results_dir / f"{run_stem(cell, steps, batch)}.json"


def load_records(results_dir: Path) -> list[dict]:
    records = []
    for path in sorted(results_dir.glob("*.json")):
        record = json.loads(path.read_text())
        if "cell" in record and "test_error" in record:
            records.append(record)
    return records


def _difference_sigma(a: dict, b: dict) -> float:
    """Binomial standard error of the difference of two test errors, as if independent.

    Both models see the same distorted test digits, so this overstates the test-set noise
    (conservative); run-to-run training noise is not in it.
    """
    return sum(r["test_error"] * (1 - r["test_error"]) / r["test_examples"] for r in (a, b)) ** 0.5


def _best(records: list[dict], variant: str | None = None) -> dict[str, dict]:
    """Per base cell, the record of ``variant`` (None: the standard recipe) with the most images
    seen (latest among equals)."""
    best: dict[str, dict] = {}
    for r in sorted(records, key=lambda r: (r["images_seen"], r.get("finished", ""))):
        base, v = split_variant(r["cell"])
        if v == variant:
            best[base] = r
    return best


def _at(records: list[dict], budget: tuple[int, int]) -> dict[str, dict]:
    """Per cell (variants included), its record at ``budget`` (steps, batch)."""
    return {
        r["cell"]: r
        for r in sorted(records, key=lambda r: r.get("finished", ""))
        if (r["steps"], r["batch_size"]) == budget
    }


def _table1(records: list[dict]) -> dict[str, dict]:
    """Per base cell, its run at :data:`TABLE1_BUDGET` with the Table 1 recipe (no other variant)."""
    at_budget = [r for r in records if (r["steps"], r["batch_size"]) == TABLE1_BUDGET]
    return _best(at_budget, TABLE1_RECIPE or None)


def _search_lines(records: list[dict]) -> list[str]:
    """The recipe search: each variant on both models' RTS cell at :data:`SEARCH_BUDGET`, against the standard."""
    at = _at(records, SEARCH_BUDGET)
    if not any(c in at for c in SEARCH_CELLS):
        return []
    steps, batch = SEARCH_BUDGET
    labels = [LABELS[split_variant(c)[0].partition("_")[2]] for c in SEARCH_CELLS]
    lines = [
        "",
        f"## Recipe search (RTS, {steps} × {batch})",
        "",
        "One change to the standard recipe at a time, on the RTS cell of both models at a fifth of Table 1's "
        "budget (`--search`); a change is kept for Table 1 only if it helps both (the comparison stays "
        "fair; a CNN runs a change less its parts that touch only the transformer, such as `loc_lr_1`). "
        "Δ: change − standard in points, ± the binomial standard error of the difference on the "
        "test set (run-to-run noise is not in it; the seeds of Table 1 show it).",
        "",
        "| recipe | " + " | ".join(f"{label} % (Δ)" for label in labels) + " |",
        "| --- |" + " ---: |" * len(labels),
    ]
    for variant in ("", *SEARCH_VARIANTS):
        row = []
        for cell in SEARCH_CELLS:
            runs = variant_for(cell, variant)
            r, standard = at.get(with_recipe(cell, runs)), at.get(cell)
            if variant and not runs:
                row.append("(no transformer)")
            elif r is None:
                row.append("—")
            elif not variant or standard is None:
                row.append(f"{r['test_error_pct']:.2f}")
            else:
                diff = 100 * (r["test_error"] - standard["test_error"])
                row.append(f"{r['test_error_pct']:.2f} ({diff:+.2f} ± {100 * _difference_sigma(r, standard):.2f})")
        name = f"`+{variant}`: {describe(variant)}" if variant else "standard"
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    chosen = f"`+{TABLE1_RECIPE}`" if TABLE1_RECIPE else "the standard recipe"
    return [*lines, "", f"Table 1 is trained with {chosen}" + (f": {TABLE1_RECIPE_WHY}." if TABLE1_RECIPE else ".")]


def _seed_runs(records: list[dict], cell: str, recipe: str | None = None) -> dict[int, dict]:
    """``cell``'s runs at Table 1's budget with ``recipe`` (default Table 1's), by seed: 0, then each ``+seed_<n>``."""
    at = _at(records, TABLE1_BUDGET)
    recipe = TABLE1_RECIPE if recipe is None else recipe
    names = {0: cell, **{int(v.removeprefix("seed_")): f"{cell}+{v}" for v in VARIANTS if v.startswith("seed_")}}
    runs = {seed: with_recipe(name, recipe) for seed, name in names.items()}
    return {seed: at[run] for seed, run in runs.items() if run in at}


def _seed_lines(records: list[dict]) -> list[str]:
    """Table 1's ST-CNN Aff and CNN over seeds, the CNN − ST-CNN difference's mean ± sd, and what the recipe
    changed at this budget: the standard recipe's runs, and the ST-CNN with Table 1's recipe plus a change that
    only the transformer has (such as ``loc_lr_1``: the CNN's runs stay its fair partner)."""
    columns = ("R", "RTS", "P", "E")
    runs = {(d, m): _seed_runs(records, cell_name(d, m)) for d in columns for m in ("st_cnn_affine", "cnn")}
    if not any(len(runs[d, "st_cnn_affine"]) > 1 for d in columns):
        return []
    lines = [
        "",
        "## Seeds of Table 1: ST-CNN Aff and CNN",
        "",
        "Each entry: seed 0 (Table 1's) / seed 1 / ... % test error; the difference is CNN − ST-CNN Aff per "
        "seed, its mean ± standard deviation over the seeds: run-to-run noise, which the binomial ± of the "
        "acceptance list leaves out. A row `+<change>`: Table 1's recipe plus a change that only the "
        "transformer has, against Table 1's CNN of the same seed.",
        "",
        "| | R | RTS | P | E |",
        "| --- | --- | --- | --- | --- |",
    ]

    def entry(by_seed: dict[int, dict]) -> str:
        if not by_seed:
            return "—"
        errors = [r["test_error_pct"] for _, r in sorted(by_seed.items())]
        return " / ".join(f"{e:.2f}" for e in errors) + (
            f" (mean {statistics.fmean(errors):.2f})" if len(errors) > 1 else ""
        )

    def difference(st: dict[int, dict], cnn: dict[int, dict]) -> str:
        d = [cnn[seed]["test_error_pct"] - st[seed]["test_error_pct"] for seed in sorted(st.keys() & cnn.keys())]
        return f"{statistics.fmean(d):+.2f} ± {statistics.stdev(d):.2f} ({len(d)} seeds)" if len(d) > 1 else "—"

    for model in ("st_cnn_affine", "cnn"):
        lines.append(f"| {LABELS[model]} | " + " | ".join(entry(runs[d, model]) for d in columns) + " |")
    lines.append(
        "| CNN − ST-CNN Aff | "
        + " | ".join(difference(runs[d, "st_cnn_affine"], runs[d, "cnn"]) for d in columns)
        + " |"
    )
    for variant in (v for v in VARIANTS if VARIANTS[v].transformer_only):
        recipe = "+".join(filter(None, (TABLE1_RECIPE, variant)))
        st = {d: _seed_runs(records, cell_name(d, "st_cnn_affine"), recipe) for d in columns}
        if any(st.values()):
            lines.append(
                f"| {LABELS['st_cnn_affine']} `+{variant}` | " + " | ".join(entry(st[d]) for d in columns) + " |"
            )
            lines.append(
                f"| CNN − ST-CNN Aff `+{variant}` | "
                + " | ".join(difference(st[d], runs[d, "cnn"]) for d in columns)
                + " |"
            )
    if TABLE1_RECIPE:
        lines += [
            "",
            f"The same models with the standard recipe (without `+{TABLE1_RECIPE}`) at this budget, where measured:",
            "",
            "| | R | RTS | P | E |",
            "| --- | --- | --- | --- | --- |",
        ]
        for model in ("st_cnn_affine", "cnn"):
            row = [entry(_seed_runs(records, cell_name(d, model), "")) for d in columns]
            lines.append(f"| {LABELS[model]}, standard | " + " | ".join(row) + " |")
    return lines


def _gap_lines(records: list[dict]) -> list[str]:
    """Why Table 1 is above the paper (:data:`TABLE1_GAP_WHY`), then each Table 1 cell's error at every budget
    it was trained at with the standard recipe (seed 0, Table 1's batch), and its Table 1 run."""
    table1 = _table1(records)
    if not table1:
        return []
    steps, batch = TABLE1_BUDGET
    trends, several, falling = [], 0, 0
    for d in ("R", "RTS", "P", "E"):
        for model in LABELS:
            cell = cell_name(d, model)
            by_steps = sorted(
                {
                    r["steps"]: r["test_error"]
                    for r in sorted(records, key=lambda r: r.get("finished", ""))
                    if r["cell"] == cell and r["batch_size"] == batch
                }.items()
            )
            errors = [e for _, e in by_steps]
            line = " → ".join(f"{100 * e:.2f} ({s})" for s, e in by_steps)
            if TABLE1_RECIPE and cell in table1:
                line += ("; " if line else "") + f"Table 1 (`+{TABLE1_RECIPE}`): {table1[cell]['test_error_pct']:.2f}"
            if len(errors) > 1:
                several += 1
                falling += errors[-1] < errors[-2]
            if len(errors) > 1 or (errors and TABLE1_RECIPE and cell in table1):
                trends.append(f"- {LABELS[model]}, {d}: {line}")
    return [
        "",
        "## Why Table 1 is above the paper's figures",
        "",
        *(f"- {why}" for why in TABLE1_GAP_WHY),
        "",
        f"Percent test error of each Table 1 cell at every budget it was trained at (steps of {batch}, "
        f"standard recipe, seed 0; Table 1's runs are {steps} steps). Of the {several} cells trained at two "
        f"budgets or more, {falling} had a lower error at the largest than at the one before.",
        "",
        *trends,
    ]


def _table1_goal_lines(table1: dict[str, dict], rts_seeds: list[dict]) -> list[str]:
    """Issue 17's goals, checked on Table 1: each ST model below its base model, ST-CNN Aff on RTS ≤ 0.7%
    (also over ``rts_seeds``, its runs of every seed), the cells at or below the paper's figure."""
    lines, worse, compared, at_paper, measured = [], [], 0, [], 0
    for d in ("R", "RTS", "P", "E"):
        for model in LABELS:
            r = table1.get(cell_name(d, model))
            if r is None:
                continue
            measured += 1
            if r["test_error_pct"] <= PAPER[model][d]:
                at_paper.append(cell_name(d, model))
            base = table1.get(cell_name(d, "cnn" if "cnn" in model else "fcn"))
            if model.startswith("st_") and base is not None:
                compared += 1
                if r["test_error"] >= base["test_error"]:
                    worse.append(
                        f"{LABELS[model]} on {d} ({r['test_error_pct']:.2f}% vs {base['test_error_pct']:.2f}%)"
                    )
    if compared:
        lines.append(
            f"- Table 1, ST models below their base model (ST-FCN vs FCN, ST-CNN vs CNN): {compared - len(worse)} "
            f"of {compared} measured" + (f"; not below: {', '.join(worse)}" if worse else "")
        )
    rts = table1.get("rts_st_cnn_affine")
    if rts:
        ok = "met" if rts["test_error_pct"] <= 0.7 else "**not met**"
        seeds = ""
        if len(rts_seeds) > 1:
            errors = [r["test_error_pct"] for r in rts_seeds]
            seeds = (
                f"; seeds 0–{len(errors) - 1}: {' / '.join(f'{e:.2f}' for e in errors)}%, mean "
                f"{statistics.fmean(errors):.2f}%, {sum(e <= 0.7 for e in errors)} of {len(errors)} at or below"
            )
        lines.append(f"- Table 1, ST-CNN Aff on RTS ≤ 0.7%: {ok} ({rts['test_error_pct']:.2f}%{seeds})")
    if measured:
        lines.append(
            f"- Table 1 cells at or below the paper's figure: {len(at_paper)} of {measured} measured"
            + (f" ({', '.join(at_paper)})" if at_paper else "")
        )
    return lines


def _same_budget_pairs(records: list[dict], distortion: str) -> list[tuple[dict, dict]]:
    """(ST-CNN Aff, CNN) records of one distortion trained with the same budget.

    A variant of the ST-CNN is paired with the CNN of the same variants, leaving out those
    that change only the transformer (``Variant.transformer_only``): ``+fixed_train+seed_1``
    with the CNN ``+fixed_train+seed_1``, ``+full_res`` with the standard CNN.
    """
    st_cell, cnn_cell = cell_name(distortion, "st_cnn_affine"), cell_name(distortion, "cnn")
    by_run = {(r["cell"], r["steps"], r["batch_size"]): r for r in records}
    pairs = []
    for r in sorted(records, key=lambda r: (r["images_seen"], r["cell"])):
        base, variant = split_variant(r["cell"])
        if base != st_cell:
            continue
        partner = by_run.get((with_recipe(cnn_cell, shared_part(variant)), r["steps"], r["batch_size"]))
        if partner:
            pairs.append((r, partner))
    return pairs


def _antialias_lines(records: list[dict]) -> list[str]:
    """ST-CNN Aff on TC with a 30×30 transformer output, with and without ``antialias``, per seed."""
    by_run = {(r["cell"], r["steps"], r["batch_size"]): r for r in records}
    pairs = []
    for (cell, steps, batch), plain in sorted(by_run.items()):
        base, variant = split_variant(cell)
        parts = variant_parts(variant)
        if base != "tc_st_cnn_affine" or "out_30" not in parts or "antialias" in parts:
            continue
        on = by_run.get(("+".join([base, "out_30", "antialias", *[p for p in parts if p != "out_30"]]), steps, batch))
        if on:
            pairs.append((plain, on))
    if not pairs:
        return []
    lines = [
        "",
        "## Antialiased sampling on TC (ST-CNN Aff, transformer output 30×30)",
        "",
        "The transformer reads the 60×60 input onto 30×30 (`+out_30`), plain bilinear or with "
        "`antialias=True` (`+antialias`); same recipe, budget and seed in each pair. ± is the binomial "
        "standard error of the difference on the test set (run-to-run noise is what the seeds show).",
        "",
        "| seed | steps × batch | plain % | antialias % | antialias − plain (points) |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    diffs = []
    for plain, on in pairs:
        diff = on["test_error"] - plain["test_error"]
        diffs.append(diff)
        lines.append(
            f"| {plain.get('overrides', {}).get('seed', 0)} | {plain['steps']} × {plain['batch_size']} | {plain['test_error_pct']:.2f} | "
            f"{on['test_error_pct']:.2f} | {100 * diff:+.2f} ± {100 * _difference_sigma(plain, on):.2f} |"
        )
    if len(diffs) > 1:
        spread = statistics.stdev(diffs) / len(diffs) ** 0.5
        lines += [
            "",
            f"Mean difference over {len(diffs)} seeds: {100 * statistics.mean(diffs):+.2f} ± {100 * spread:.2f} "
            "points (standard error across seeds; negative: antialiasing helps).",
        ]
    return lines


def _experiment_lines(records: list[dict]) -> list[str]:
    """Each of :data:`EXPERIMENTS` at its budget: every row per seed beside its reference, then each row
    against the baseline seed by seed, with the binomial standard error of each difference."""
    at = {(r["cell"], r["steps"], r["batch_size"]): r for r in sorted(records, key=lambda r: r.get("finished", ""))}
    lines = []
    for experiment in EXPERIMENTS.values():
        steps, batch = experiment.budget
        seeds = range(experiment.seeds)
        labels = {cell: label for cell, label, _ in experiment.rows}

        def run(cell: str, seed: int, steps=steps, batch=batch) -> dict | None:
            return at.get((cell if seed == 0 else f"{cell}+seed_{seed}", steps, batch))

        def figure(r: dict, accuracy=experiment.accuracy) -> float:
            return 100 - r["test_error_pct"] if accuracy else r["test_error_pct"]

        kind = "accuracy" if experiment.accuracy else "error"
        lines += [
            "",
            f"## {experiment.title}",
            "",
            f"{experiment.intro} Every run: {steps} steps × {batch}; seed n is `+seed_<n>` (initialisation and "
            "data order). The runs not recorded yet: `PYTHONPATH=. python benchmarks/reproduce.py --experiments` "
            "here, or on a lent accelerator `benchmarks/reproduce_on_device.py run --pack P --experiments "
            f"{','.join(EXPERIMENTS)} --workers 6 --out OUT` (then `import OUT/records.json` here).",
            "",
            f"| model | reference {kind} % | " + " | ".join(f"seed {s} {kind} %" for s in seeds) + " | mean |",
            "| --- | ---: |" + " ---: |" * (experiment.seeds + 1),
        ]
        for cell, label, reference in experiment.rows:
            runs = [run(cell, s) for s in seeds]
            done = [figure(r) for r in runs if r]
            mean = f"{statistics.fmean(done):.2f}" if len(done) == experiment.seeds else "—"
            figures = " | ".join(f"**{figure(r):.2f}**" if r else "—" for r in runs)
            lines.append(f"| {label} | {reference} | {figures} | {mean} |")
        lines += [
            "",
            f"Each row against {labels[experiment.baseline]}, seed by seed: the gain in {kind} points (positive: "
            "the row is better), ± the binomial standard error of the difference on the test set; **> 2σ** where "
            "the gain is more than twice that. Last column: mean ± standard deviation of the gain over the seeds.",
            "",
            "| model | " + " | ".join(f"seed {s}" for s in seeds) + " | over seeds |",
            "| --- |" + " ---: |" * (experiment.seeds + 1),
        ]
        for cell, label, _ in experiment.rows:
            if cell == experiment.baseline:
                continue
            entries, gains = [], []
            for s in seeds:
                row, base = run(cell, s), run(experiment.baseline, s)
                if row is None or base is None:
                    entries.append("—")
                    continue
                gain = 100 * (base["test_error"] - row["test_error"])
                sigma = 100 * _difference_sigma(row, base)
                entries.append(f"{gain:+.2f} ± {sigma:.2f}" + (" **> 2σ**" if gain > 2 * sigma else ""))
                gains.append(gain)
            spread = f"{statistics.fmean(gains):+.2f} ± {statistics.stdev(gains):.2f}" if len(gains) > 1 else "—"
            lines.append(f"| {label} | " + " | ".join(entries) + f" | {spread} |")
        if experiment.findings:
            lines += ["", *(f"- {finding}" for finding in experiment.findings)]
        commands = [run(cell, s) for s in seeds for cell, _, _ in experiment.rows]
        commands = [r["command"] for r in commands if r and r.get("command")]
        if commands:
            lines += ["", "<details><summary>Commands</summary>", ""]
            lines += [f"    {command}" for command in commands]
            lines += ["", "</details>"]
    return lines


def _ours(record: dict | None) -> str:
    if record is None:
        return "—"
    return f"**{record['test_error_pct']:.2f}** <sub>{record['steps']}×{record['batch_size']}</sub>"


def _fmt_time(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes}m{s:02d}s"


def render_results(
    records: list[dict], *, results_link: str = "benchmarks/results", generalisation: list[str] = ()
) -> str:
    """The whole of RESULTS.md, from the records alone."""
    best = _best(records)
    lines = [
        "# Results: distorted MNIST (Jaderberg et al. 2015, Table 1)",
        "",
        "<!-- Generated by benchmarks/reproduce.py from benchmarks/results/*.json; do not edit by hand. -->",
        "",
        "Percent test error on the full 10,000-image MNIST test split, distorted once with the fixed seed "
        "`test_seed=0` (`train.distortions.test_set`); training on `train[:92%]` (55,200 digits, distorted "
        "afresh every step), AdamW with warm-up and cosine decay"
        + (f" and `+{TABLE1_RECIPE}` ({describe(TABLE1_RECIPE)})" if TABLE1_RECIPE else "")
        + f". Every cell of this table is trained the same way, {TABLE1_BUDGET[0]} steps of {TABLE1_BUDGET[1]} "
        f"({TABLE1_BUDGET[0] * TABLE1_BUDGET[1]:,} images; the paper trained 150k steps of 256 on a GPU). Each "
        "entry: **ours** (paper); — : not run at this budget yet (`PYTHONPATH=. python benchmarks/reproduce.py "
        "--table1`). Runs at other budgets are in the runs table below. Regenerate: "
        "`PYTHONPATH=. python benchmarks/reproduce.py --render`.",
        "",
        "| model | R | RTS | P | E |",
        "| --- | --- | --- | --- | --- |",
    ]
    table1 = _table1(records)
    for model, label in LABELS.items():
        cells = []
        for d in ("R", "RTS", "P", "E"):
            paper = PAPER[model].get(d)
            r = table1.get(cell_name(d, model))
            ours = "—" if r is None else f"**{r['test_error_pct']:.2f}**"
            cells.append(f"{ours} ({paper})" if paper is not None else ours)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    machines = collections.Counter(r.get("machine", "unknown") for r in table1.values())
    if machines:  # the same recipe; the device's float arithmetic differs (e.g. its default matmul precision)
        lines += ["", "Trained on: " + "; ".join(f"{m} ({n} cells)" for m, n in machines.most_common()) + "."]
    # The paper does not say whether its TC training set was fixed; both regimes are shown.
    fixed = _best(records, "fixed_train")
    lines += [
        "",
        "Translated cluttered MNIST (TC, 60×60), trained on digits cluttered afresh every step, "
        "and on one fixed cluttered copy of the training split (`+fixed_train`, the same images "
        "every epoch):",
        "",
        "| model | TC | TC, fixed training set |",
        "| --- | --- | --- |",
    ]
    for model in ("cnn", "st_cnn_affine"):
        cell = cell_name("TC", model)
        lines.append(
            f"| {LABELS[model]} | {_ours(best.get(cell))} ({PAPER[model]['TC']}) | "
            f"{_ours(fixed.get(cell))} ({PAPER[model]['TC']}) |"
        )

    lines += ["", "## Acceptance: ST-CNN Aff vs CNN with the same budget", ""]
    any_pair = False
    for d in DISTORTIONS:
        for a, b in _same_budget_pairs(records, d):
            any_pair = True
            diff, sigma = b["test_error"] - a["test_error"], _difference_sigma(a, b)
            verdict = "ST-CNN better" if diff > 0 else "**ST-CNN not better**"
            if abs(diff) < 2 * sigma:
                verdict += " (within 2σ: not significant)"
            lines.append(
                f"- {d}, {a['steps']} steps × {a['batch_size']}: {cell_label(a['cell'])} "
                f"{a['test_error_pct']:.2f}% vs {cell_label(b['cell'])} {b['test_error_pct']:.2f}%, "
                f"difference {100 * diff:.2f} ± {100 * sigma:.2f} points — {verdict}"
            )
    if not any_pair:
        lines.append("- no pair measured yet")
    rts_seeds = _seed_runs(records, "rts_st_cnn_affine")
    lines += _table1_goal_lines(table1, [r for _, r in sorted(rts_seeds.items())])
    used = sorted({part for r in records for part in variant_parts(split_variant(r["cell"])[1])})
    if used:
        lines += [
            "",
            "Variants of the recipe (`<cell>+<variant>`; Table 1 above shows its own recipe's runs only, seed 0):",
            "",
        ]
        lines += [f"- `+{v}`: {VARIANTS[v].description}" for v in used]

    lines += _seed_lines(records)
    lines += _gap_lines(records)
    lines += _search_lines(records)
    lines += _antialias_lines(records)
    lines += _experiment_lines(records)
    lines += [
        "",
        "## Runs",
        "",
        "Every recorded run (`benchmarks/results/<cell>__s<steps>_b<batch>.json`). Wall time is the driver's, "
        "summed over attempts, and includes data loading, compilation and evaluation; img/s is the training "
        "loop's own rate. The machine was shared with other jobs (test suites) at times, so wall times are "
        "upper bounds. A machine marked † ran a run whose record was rebuilt from the run's log (test error, "
        "wall time; the record's `rebuilt_from_log` says why). img/s marked * ran before the training command set "
        "its XLA CPU flag "
        "(`train/xla_cpu.py`), about 2× slower per step.",
        "",
        "| cell | ours % | paper % | steps × batch | images seen (epochs) | wall time | train img/s | last val % "
        "| pictures | command | machine |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    order = {c: i for i, c in enumerate(DEFAULT_ORDER)}
    for r in sorted(records, key=lambda r: (order.get(split_variant(r["cell"])[0], 99), r["images_seen"], r["cell"])):
        pics = " ".join(f"[{k}]({results_link}/{v})" for k, v in r.get("pictures", {}).items()) or "—"
        val = f"{100 * r['last_val_error']:.2f}" if r.get("last_val_error") is not None else "—"
        rate = f"{r['train_images_per_s']:.0f}" if r.get("train_images_per_s") else "—"
        rate += "" if r.get("xla_flags") or r["finished"] >= XLA_FLAG_SINCE else "*"
        paper = r.get("paper_error_pct")
        machine = r.get("machine", "—") + (" †" if r.get("rebuilt_from_log") else "")
        lines.append(
            f"| {r['cell']} | {r['test_error_pct']:.2f} | {paper if paper is not None else '—'} | "
            f"{r['steps']} × {r['batch_size']} | {r['images_seen']:,} ({r['epochs']}) | {_fmt_time(r['wall_time_s'])} | "
            f"{rate} | {val} | {pics} | `{r['command']}` | {machine} |"
        )
    missing = [c for c in DEFAULT_ORDER if c not in best]
    lines += ["", "Cells of the issue not measured yet: " + (", ".join(missing) if missing else "none") + "."]
    missing = [c for c in (with_recipe(c, TABLE1_RECIPE) for c in TABLE1_CELLS) if c not in _at(records, TABLE1_BUDGET)]
    lines += [
        "",
        f"Runs of Table 1 ({TABLE1_BUDGET[0]} × {TABLE1_BUDGET[1]}) not made yet: "
        + (", ".join(missing) if missing else "none")
        + ".",
    ]

    pictures = [r for r in best.values() if r["model"].startswith("st_") and r.get("pictures", {}).get("samples")]
    if pictures:
        lines += [
            "",
            "## What the transformers do",
            "",
            "Test inputs (left of each pair) beside the transformer's output, at the end of training:",
            "",
        ]
        for r in sorted(pictures, key=lambda r: order.get(r["cell"], 99)):
            lines += [
                f"**{r['label']}, {r['distortion']}** ({r['steps']} × {r['batch_size']}, {r['test_error_pct']:.2f}%)",
                "",
                f"![{r['cell']}]({results_link}/{r['pictures']['samples']})",
                "",
            ]
    lines += [
        "",
        "## Smaller experiments",
        "",
        "(b) MNIST addition with two channels and (c) the regression layer's initialisation: two digits, "
        "each RTS-distorted, as the two channels of a 42×42 image; 19 classes (their sum). Percent test "
        "accuracy on 10,000 test pairs (fixed seed); the source documents' figures are accuracies, the "
        "paper's are errors. Every recorded run is listed, so that runs of equal steps or of equal wall "
        "time can be compared.",
        "",
        "| model | ours: accuracy % (error %) | reported (b) | reported (c) | paper error % | steps × batch | wall time |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for cell, addition in ADDITION_CELLS.items():
        runs = sorted(
            (r for r in records if split_variant(r["cell"])[0] == cell), key=lambda r: (r["cell"], r["images_seen"])
        )
        reported = " | ".join(
            _or_dash(v) for v in (addition.reported_two_channels, addition.reported_init, addition.paper_error)
        )
        if not runs:
            lines.append(f"| {addition.label} | — | {reported} | — | — |")
        for r in runs:
            lines.append(
                f"| {cell_label(r['cell'])} | **{100 - r['test_error_pct']:.2f}** "
                f"({r['test_error_pct']:.2f}) | {reported} | {r['steps']} × {r['batch_size']} | "
                f"{_fmt_time(r['wall_time_s'])} |"
            )
    lines += [
        "",
        *(generalisation or ["(a) Generalisation beyond the training rotations: not measured yet.", ""]),
    ]
    return "\n".join(lines)


def _or_dash(value) -> str:
    return "—" if value is None else str(value)


def generalisation_path(results_dir: Path, stem: str) -> Path:
    return results_dir / f"generalisation__{stem}.json"


def load_generalisation(results_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results_dir.glob("generalisation__*.json"))]


def render_generalisation(results: list[dict]) -> list[str]:
    """The RESULTS.md table of experiment (a) (most images seen per cell)."""
    lines = [
        "(a) Generalisation beyond the training rotations: trained on RTS28 (rotation ±45°, scale 0.7–1.3, "
        "shift ±0.1), tested on the 10,000 test digits rotated by exactly each angle (alternately clockwise "
        "and anticlockwise); percent accuracy (`benchmarks/generalisation.py`).",
        "",
    ]
    if not results:
        return lines + ["Not measured yet.", ""]
    angles = GENERALISATION_ANGLES
    lines += [
        "| model | " + " | ".join(f"{a}°" for a in angles) + " | in-distribution error % | steps × batch |",
        "| --- | " + " | ".join("---:" for _ in angles) + " | ---: | --- |",
    ]
    best = {}
    for r in sorted(results, key=lambda r: (r["steps"] * r["batch_size"], r["finished"])):
        best[r["cell"]] = r
    for r in best.values():
        cells = " | ".join(f"{r['accuracy_pct'][str(a)]:.2f}" for a in angles)
        lines.append(
            f"| {r['label']} | {cells} | {r['in_distribution_error_pct']:.2f} | {r['steps']} × {r['batch_size']} |"
        )
    return lines + [""]


def write_results(results_dir: Path = RESULTS_DIR, out: Path = RESULTS_MD) -> None:
    table = render_generalisation(load_generalisation(results_dir))
    out.write_text(render_results(load_records(results_dir), generalisation=table))
