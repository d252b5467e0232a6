"""What benchmarks/reproduce.py runs, by name: the cells of Table 1, the smaller experiments, the recipe variants.

A *cell* is one model on one distortion, ``<distortion>_<model>`` (``rts_st_cnn_affine``), trained by the
config ``mnist_<cell>`` of :mod:`train.configs`, whose Table 1 names (distortions, models, row labels) it
uses; or one of the MNIST-addition experiments (:data:`ADDITION_CELLS`). ``<cell>+<variant>[+<variant>...]``
is that cell with recipe variants (:data:`VARIANTS`). A *run* is a cell with a budget, named
``<cell>__s<steps>_b<batch>`` (:func:`run_stem`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from train import configs
from train.configs.base import PAPER_SGD

ROOT = Path(__file__).resolve().parent.parent
RUNS_DIR = ROOT / "out" / "reproduce"  # gitignored: checkpoints and whole workdirs stay here

DISTORTIONS = (*configs.TABLE1_DISTORTIONS, "TC")  # TC: measured in the paper's text (sec. 4.1), not in Table 1
LABELS = configs.TABLE1_LABELS  # model name -> row label of Table 1, in its order
# The paper's percent test errors, per model (Table 1; TC from sec. 4.1's text).
PAPER = {
    "fcn": {"R": 2.1, "RTS": 5.2, "P": 3.1, "E": 3.2},
    "cnn": {"R": 1.2, "RTS": 0.8, "P": 1.5, "E": 1.4, "TC": 3.5},
    "st_fcn_affine": {"R": 1.2, "RTS": 0.8, "P": 1.5, "E": 2.7},
    "st_fcn_projective": {"R": 1.3, "RTS": 0.9, "P": 1.4, "E": 2.6},
    "st_fcn_tps": {"R": 1.1, "RTS": 0.8, "P": 1.4, "E": 2.4},
    "st_cnn_affine": {"R": 0.7, "RTS": 0.5, "P": 0.8, "E": 1.2, "TC": 1.7},
    "st_cnn_projective": {"R": 0.8, "RTS": 0.6, "P": 0.8, "E": 1.3},
    "st_cnn_tps": {"R": 0.7, "RTS": 0.5, "P": 0.8, "E": 1.1},
}

# The cells, in the order they are run by default (priority first).
DEFAULT_ORDER = (
    "rts_st_cnn_affine",
    "rts_cnn",
    "r_cnn",
    "r_st_cnn_affine",
    "p_cnn",
    "p_st_cnn_affine",
    "e_cnn",
    "e_st_cnn_affine",
    "tc_cnn",
    "tc_st_cnn_affine",
    "rts_st_cnn_projective",
    "rts_st_cnn_tps",
    "e_st_cnn_projective",
    "e_st_cnn_tps",
    "rts_fcn",
    "rts_st_fcn_affine",
)


# Table 1 at one budget, every cell trained the same way: 15000 steps of 128, 1/20 of the paper's 150k × 256.
TABLE1_BUDGET = (15_000, 128)
# The recipe of every Table 1 cell: "" (each config's own) or "+"-joined VARIANTS chosen by the recipe search.
TABLE1_RECIPE = "ls_01"
# Why (rendered under the recipe search in RESULTS.md).
TABLE1_RECIPE_WHY = (
    "of the four variants measured when a GPU was lent for Table 1 (`ema`, `ls_01`, `lr_6e3`, `lr_1e3`), the one "
    "that lowered the error of both models. Measured afterwards on the CPU: `warmup_600` helps neither; `loc_lr_1` "
    "helps the ST-CNN here (a CNN has nothing it changes), but on top of `ls_01` at Table 1's budget its gain is "
    "within the spread of the seeds (the seeds section); `lr_6e3` helps the CNN here, where the CNN is far from "
    "converged, and is not measured at Table 1's budget. Before the next run of the table (about 8 minutes on one "
    "H200), the RTS pair with `ls_01+lr_6e3` at 15000 steps (a minute) tells whether that gain lasts"
)
# Why Table 1's cells are above the paper's figures (rendered in RESULTS.md above the error of each cell at
# every budget it was trained at, which is the evidence for the first point).
TABLE1_GAP_WHY = (
    "Budget: every cell saw 1/20 of the paper's images (1.92 M against 38.4 M), and every cell trained at several "
    "budgets was still improving at its largest (below). This is the main reason, and the one a longer run on a "
    "GPU removes.",
    "FCN family (furthest above, most on RTS and E): fully connected layers have no translation prior, so every "
    "position of a digit is learnt on its own; their errors fell by a quarter to a half between 5000 steps and "
    "Table 1's 15000 (below; the recipe changed too), so they are the furthest from done. Where they level off is "
    "not measured.",
    "ST-CNN Aff on RTS (goal ≤ 0.7%): the mean over three seeds is within the seeds' spread of the goal, and that "
    "spread is as large as the gains of the recipe changes tried (`+loc_lr_1` in the seeds section), so a larger "
    "budget is the surest next step.",
    "P and E: the paper gives no strength for its projective and elastic distortions; ours (corner noise σ 3 px, "
    "control-point noise σ 2 px, chosen by eye: `train/distortions.py`) can be milder or harsher than the "
    "paper's, so these columns compare less directly: the CNN family is at or below the paper on P and above it "
    "on E.",
    "E: the elastic distortion is local, so an affine or projective transformer undoes little of it (the ST-CNN's "
    "gain over the CNN is smallest there) and TPS does best, as in the paper.",
)
# Table 1's cells in the order --table1 runs them: the FCN family (minutes each), then the CNN family column by
# column, then a second seed of the ST-CNN Aff and CNN cells (the ± of each difference across seeds).
TABLE1_CELLS = (
    *(f"{d.lower()}_{m}" for m in LABELS if "cnn" not in m for d in ("RTS", "R", "P", "E")),
    *(f"{d.lower()}_{m}" for d in ("RTS", "R", "P", "E") for m in LABELS if "cnn" in m),
    *(f"{d.lower()}_{m}+seed_1" for d in ("RTS", "R", "P", "E") for m in ("st_cnn_affine", "cnn")),
)
# The recipe search (issue 17): the RTS cell of both models at a fifth of the budget, one variant at a time.
SEARCH_CELLS, SEARCH_BUDGET = ("rts_st_cnn_affine", "rts_cnn"), (3000, 128)
SEARCH_VARIANTS = (
    "ema",
    "ls_01",
    "lr_6e3",
    "lr_1e3",
    "warmup_600",
    "loc_lr_1",
    "ls_01+lr_6e3",
    "ls_01+loc_lr_1",
    "ls_01+lr_6e3+loc_lr_1",
)  # a CNN runs a variant less its transformer-only parts (shared_part)


@dataclasses.dataclass(frozen=True)
class AdditionCell:
    """One of the smaller experiments (b) and (c): MNIST addition, two RTS digits as two channels of a 42×42
    image, label = their sum."""

    config: str
    label: str  # its row in RESULTS.md
    overrides: dict[str, object] = dataclasses.field(default_factory=dict)  # beyond the config and the budget
    reported_two_channels: float | None = None  # percent accuracy the source documents report for (b)
    reported_init: float | None = None  # ... and for (c), the regression layer's initialisation
    paper_error: float | None = None  # the paper's percent error


ADDITION_CELLS = {
    "addition_2st_fcn": AdditionCell(
        "mnist_addition_2st_fcn",
        "2×ST-FCN, identity init",
        reported_two_channels=93.47,
        reported_init=90,
        paper_error=9.0,  # the appendix's 2×ST-FCN Aff; its 5.9 and 5.8 are Proj and TPS
    ),
    "addition_2st_fcn_projective": AdditionCell(
        "mnist_addition_2st_fcn", "2×ST-FCN Proj", {"model_kwargs.transform": "projective"}, paper_error=5.9
    ),
    "addition_2st_fcn_tps": AdditionCell(
        "mnist_addition_2st_fcn", "2×ST-FCN TPS", {"model_kwargs.transform": "tps"}, paper_error=5.8
    ),
    "addition_2st_fcn_random_init": AdditionCell(
        "mnist_addition_2st_fcn", "2×ST-FCN, random init", {"model_kwargs.theta_init": "random"}, reported_init=69
    ),
    "addition_2st_fcn_random_zero_bias": AdditionCell(
        "mnist_addition_2st_fcn",
        "2×ST-FCN, random init with zero bias",
        {"model_kwargs.theta_init": "random_zero_bias"},
        reported_init=69,
    ),
    "addition_cnn": AdditionCell(
        "mnist_addition_cnn", "CNN", reported_two_channels=85.30, reported_init=85, paper_error=14.7
    ),
    "addition_fcn": AdditionCell("mnist_addition_fcn", "FCN", paper_error=47.7),
    "addition_st_fcn": AdditionCell("mnist_addition_st_fcn", "ST-FCN Aff", paper_error=18.5),
}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One of the smaller experiments as a comparison at one budget: every row's cell trained with
    ``seeds`` seeds (seed 0: the cell; seed n: ``<cell>+seed_<n>``), each compared seed by seed with
    ``baseline``, the reference figures beside. Rendered in RESULTS.md, run by ``reproduce.py --experiments``."""

    title: str
    intro: str
    budget: tuple[int, int]
    rows: tuple[tuple[str, str, str], ...]  # (cell, its label, the reference's figure for it as text)
    baseline: str  # the cell of ``rows`` the others are compared with
    accuracy: bool = False  # figures as percent accuracy (the addition's references are accuracies)
    seeds: int = 2
    findings: tuple[str, ...] = ()  # what the runs showed and why a gap to the reference remains

    def runs(self) -> list[tuple[str, int, int]]:
        """(cell, steps, batch) of every run, baseline first, seed 0 of every row before seed 1."""
        cells = [self.baseline, *(cell for cell, _, _ in self.rows if cell != self.baseline)]
        seeded = [cell if seed == 0 else f"{cell}+seed_{seed}" for seed in range(self.seeds) for cell in cells]
        return [(cell, *self.budget) for cell in seeded]


# Issue 29's three experiments. Budgets: the one each comparison needs (the addition's 2×ST-FCN was still
# climbing steeply at 20000 × 128); TC at the budget its CNN seeds were trained at on the CPU.
EXPERIMENTS = {
    "tc": Experiment(
        "Translated cluttered MNIST (TC) at one budget",
        "60×60 digits among 6×6 clutter patches cut from other digits, cluttered afresh every step; percent "
        "test error on the 10,000 test digits cluttered once (fixed seed). Reference: the paper's sec. 4.1 "
        "(ST-CNN 1.7%, CNN 3.5%). `+loc_lr_1`: localisation net at the full learning rate; `+out_30`: the "
        "transformer writes 30×30 directly instead of 60×60 average-pooled by 2, `+antialias`: read with "
        "`antialias=True`.",
        (5000, 128),
        (
            ("tc_cnn", "CNN", "3.5"),
            ("tc_st_cnn_affine", "ST-CNN Aff", "1.7"),
            ("tc_st_cnn_affine+loc_lr_1", "ST-CNN Aff `+loc_lr_1`", "1.7"),
            ("tc_st_cnn_affine+out_30+antialias+loc_lr_1", "ST-CNN Aff `+out_30+antialias+loc_lr_1`", "1.7"),
        ),
        baseline="tc_cnn",
        findings=(
            "Why the ST-CNN trailed the CNN here: its localisation net learnt at 0.1× the learning rate (the "
            "standard recipe; the paper's choice for its SGD runs). At the full rate (`+loc_lr_1`) the same model "
            "reaches 1.75 / 1.71%, the paper's 1.7%, level with the CNN (gain +0.12 ± 0.19 and +0.05 ± 0.18 "
            "points): the goal of a gain above 2σ in both seeds is not reached with fresh clutter at this budget.",
            "The figure that departs from the paper is the CNN's: 1.87 / 1.76% on fresh clutter, half the "
            "paper's 3.5%, but 3.39 / 3.72% (mean 3.56%) when trained on one fixed cluttered copy of the training "
            "split (next section). Our clutter and CNN reproduce the paper's CNN exactly when the training set is "
            "fixed, which is most likely what the paper trained on (a cluttered dataset generated once); drawn "
            "afresh every step, the clutter is a data augmentation against which the CNN learns to ignore it "
            "nearly as well as the transformer crops it away. On the fixed set the ST-CNN is ahead by more "
            "than 2σ in both seeds.",
            "Writing 30×30 directly with `antialias=True` (`+out_30+antialias+loc_lr_1`) is worse, 2.22 / "
            "2.33%: in its samples the transformer zooms in less and keeps more clutter in the frame than with "
            "the standard 60×60 output pooled by 2, so a smaller output does not make zooming pay at this budget.",
            "The transformer does zoom onto the digit and cut most clutter away in every TC run (the samples "
            "pictures in the runs table), so the sampler and the model are not the cause.",
            "Our clutter against DeepMind's public generator (`google-deepmind/mnist-cluttered`, 2014, written "
            "for the recurrent attention model's cluttered MNIST): there each distractor is cut anywhere in a "
            "random training digit (8×8 by default, so many crops are mostly background), added onto the canvas "
            "and clipped at 1, and a new example, clutter and position are drawn at every call; ours are 6 "
            "patches of 6×6 cut from a digit's central 20×20 (where the strokes are) and pasted by maximum. So "
            "ours is the denser clutter, which would make the task harder for the CNN, not explain its lower "
            "error (not measured); and that "
            "generator draws afresh too, so whether the paper's training set was fixed is not settled by its "
            "code: the evidence for it is the CNN's 3.56% on the fixed set against 1.81% on fresh clutter.",
        ),
    ),
    "tc_fixed": Experiment(
        "TC on one fixed cluttered training set, at the same budget",
        "As above, but trained on one cluttered copy of the training split made once (`+fixed_train`, the same "
        "60×60 images every epoch), as a dataset generated in advance would be; the test set is the same.",
        (5000, 128),
        (
            ("tc_cnn+fixed_train", "CNN `+fixed_train`", "3.5"),
            ("tc_st_cnn_affine+fixed_train", "ST-CNN Aff `+fixed_train`", "1.7"),
            ("tc_st_cnn_affine+fixed_train+loc_lr_1", "ST-CNN Aff `+fixed_train+loc_lr_1`", "1.7"),
        ),
        baseline="tc_cnn+fixed_train",
        findings=(
            "The CNN here is the paper's CNN (3.39 / 3.72% against 3.5%), and the standard ST-CNN is ahead of "
            "it by +0.79 ± 0.24 and +1.10 ± 0.25 points, more than 2σ in both seeds; it stays above the paper's "
            "1.7% (2.60 / 2.62%). `+loc_lr_1`, which brought the ST-CNN to 1.7% on fresh clutter, gives 2.35% "
            "here in seed 0, better than the standard rate and still above the paper's 1.7%; in seed 1 it "
            "collapses: the transformer's output is blank for every test digit (its grid left the image, the "
            "samples picture), the loss stays at chance (2.30 from step 50 to 5000, the gradient norm falling "
            "from 1.16 at step 50 to 0.1) and the test error is 88.65%. With zero padding a grid wholly outside "
            "the image reads zeros and gets no gradient back, so nothing pulls it in again. At the full "
            "localisation rate 3 of the 6 runs we made collapsed in this way (here; both transformers of the "
            "addition's seed 0 and one of its seed 1, next sections), none of the 6 at 0.1×: the lower rate is "
            "the safe recipe, the full rate a gamble that pays on fresh clutter (1.75 / 1.71%, above).",
        ),
    ),
    "addition": Experiment(
        "MNIST addition at one budget",
        "Two RTS digits as the two channels of a 42×42 image, label their sum (19 classes); percent test "
        "accuracy on 10,000 test pairs (fixed seed). References: the source documents' accuracies (2×ST-FCN "
        "93.47%, CNN 85.30%), and the paper's appendix table as accuracies (its errors: FCN 47.7%, CNN 14.7%, "
        "2×ST-FCN Aff 9.0%, Proj 5.9%, TPS 5.8%; the PDF was not reachable here, these are from a public "
        "summary whose Table 1 matches the paper's figure for figure; its appendix A.1 text, read in a "
        "transcription, gives FCN 47.7, CNN 14.7, 2×ST-FCN 5.8). `2×ST-FCN Proj` and `TPS` are the same model "
        "with `model_kwargs.transform=projective` / `tps` (4×4 control points). The paper's protocol (A.1), "
        "and what we follow: each digit RTS-distorted on its own 42×42 channel (as ours); each of the two "
        "transformers reads both channels and warps both, their outputs concatenated into 4 channels for the "
        "FCN (as ours); all networks with about the same number of parameters, so our CNN gets a hidden FC "
        "layer of 128 (`+fc_128`: 467,603 parameters, against the FCN's 470,675 and the 2×ST-FCN's 469,169; "
        "the plain CNN has 116,243, and at 2000 steps it was at 67.5% error against 32.9% with the layer); "
        "SGD (ours: AdamW, as everywhere; the paper's SGD is a row of the initialisation table). Its single "
        "ST-FCN (18.5% error; the text does not say which transform) is `st_fcn_affine` on the 2-channel "
        "input (470,601 parameters): one transformer warps both channels alike.",
        (60000, 128),
        (
            ("addition_cnn+fc_128", "CNN +FC 128 (parameters matched)", "85.30 (paper 85.3)"),
            ("addition_st_fcn", "ST-FCN Aff (one transformer)", "paper 81.5"),
            ("addition_2st_fcn", "2×ST-FCN Aff", "93.47 (paper 91.0)"),
            ("addition_2st_fcn_projective", "2×ST-FCN Proj", "paper 94.1"),
            ("addition_2st_fcn_tps", "2×ST-FCN TPS", "paper 94.2"),
            ("addition_fcn", "FCN", "paper 52.3"),
        ),
        baseline="addition_cnn+fc_128",
        accuracy=True,
        findings=(
            "The 2×ST-FCN Aff reaches 91.55 / 91.92%: above the paper's own figure for this model (91.0%, 9.0% "
            "error in its appendix), below the source documents' 93.47%. It has not levelled off: its validation "
            "error fell from 11.8 / 11.5% at 30000 steps to 8.5 / 8.5% at 60000 (the curves pictures) while the "
            "cosine schedule took the learning rate to zero, so the gap to 93.47% is the budget's (a longer run "
            "is not measured). An independent reproduction, tensorpack's `examples/SpatialTransformer` "
            "(TensorFlow; two affine transformers with convolutional localisation nets whose gradient is scaled "
            "by 0.1, 28×28 outputs, an FC 256-128 classifier, Adam), reports 8.8% error after about 300 of its "
            "epochs (in the version read, an epoch is 5 passes over MNIST: about 90M pairs, 12× our 7.68M). "
            "That agrees with the paper's 9.0% and with ours, not with the source documents' 93.47%. With the "
            "paper's SGD (the initialisation table) the same model reaches 92.16 / 92.63%.",
            "The 2×ST-FCN TPS, the paper's best (94.2%): 92.05 / 90.02%, against the affine model of the same "
            "seed +0.50 ± 0.39 and −1.90 ± 0.41 points (mean −0.70): so the paper's ordering (TPS 3.2 points "
            "ahead of affine) is not reproduced at this budget; in neither seed has it levelled off (validation "
            "error 11.1 / 15.0% at 30000 steps, 8.25 / 10.4% at 60000), and seed 1 was the slower of the two "
            "from the start (training loss 1.45 against 0.76 at step 10000, 0.72 against 0.49 at 20000). The "
            "Proj rows and the single-transformer ST-FCN are still to run (about 30 minutes a seed here).",
            "The FCN is at 37.96 / 40.11% against the paper's 52.3%, and it underfits: its training accuracy over "
            "the last 2000 steps (37.4 / 39.1%) is its test accuracy, and its validation error still fell from "
            "67.2 / 65.3% at 30000 steps to 62.6 / 60.9% at 60000. So the gap is the budget's or the width's "
            "(ours: 2 hidden layers of 128, the 2×ST-FCN matched to its parameter count; the paper gives no widths "
            "for this experiment).",
            "The CNN (parameters matched, `+fc_128`) is not run at this budget, so the gains table is empty. "
            "It trains at 470–600 images/s on the 2 CPU cores (its two convolutions: a forward+backward of "
            "them alone is 260 ms a batch of 128; 485 images/s on the AMD EPYC without AVX-512 of "
            "2026-12-06), 3.5–4.4 h a seed, longer than one working session, and the run directories are "
            "not kept between sessions (the 10,000-step checkpoint of one session's run was gone at the "
            "next); bfloat16 convolutions are no way out on this CPU (1.1–1.2× slower than float32, "
            "measured on the same convolutions). It is one command on a lent accelerator "
            "(`reproduce_on_device.py run --experiments addition`).",
        ),
    ),
    "init": Experiment(
        "Initialisation of the regression layer (MNIST addition, 2×ST-FCN) at one budget",
        "The localisation nets' regression layer initialised to the identity transform (zero kernel, "
        "identity bias) or at random (`theta_init=random`: LeCun-normal kernel, identity bias; "
        "`theta_init=random_zero_bias`: LeCun-normal kernel, zero bias, as a plain dense layer starts), with the "
        "localisation nets at 0.1× the learning rate (our standard) or at the full rate (`+loc_lr_1`); the "
        "addition task and budget above. References: the source documents' accuracies, identity 90%, random "
        '69%, and 92% for a variant they call "LR" (which we take to be the localisation nets\' lower '
        "learning rate: the rows with and without `+loc_lr_1` test that reading).",
        (60000, 128),
        (
            ("addition_2st_fcn_random_init", "random init", "69"),
            ("addition_2st_fcn_random_zero_bias", "random init, zero bias (θ starts around 0)", "69"),
            ("addition_2st_fcn+loc_lr_1", "identity init, localisation at 1× the learning rate", "90"),
            ("addition_2st_fcn", 'identity init, localisation at 0.1× ("LR"?)', "92"),
            ("addition_2st_fcn_random_init+paper_sgd", "random init, the paper's SGD", "69"),
            ("addition_2st_fcn+paper_sgd", "identity init, the paper's SGD", "90 / 92"),
        ),
        baseline="addition_2st_fcn_random_init",
        accuracy=True,
        findings=(
            "Identity init at 0.1× beats random init by more than 2σ in both seeds (+2.05 ± 0.41 and +1.30 ± 0.40 points), but "
            "random init is at 90.06% over its two seeds, not the source documents' 69%: with the "
            "localisation nets at 0.1× and our optimiser (AdamW, cosine schedule), a random regression layer "
            "still learns to put both digits in both transformers' outputs (the samples picture). Ours keeps "
            "the identity bias under the random kernel, so every net starts from transforms near the "
            "identity; the source documents do not say what theirs started from. Without that bias "
            "(`theta_init=random_zero_bias`, θ starts around 0: every output pixel reads near the input's "
            "centre) seed 0 reaches 88.14%: 1.36 ± 0.45 points below the random kernel with the identity bias "
            "(more than 2σ) and 3.41 below the identity init, its loss a little slower to leave chance (2.48 "
            "at step 2500 against 2.25 and 2.29), and its transformers grow into zoomed-out views that hold "
            "both digits (the samples picture). So the identity bias is worth a point here, but it is not why "
            "our random init is at 88–91% and not 69%: with AdamW and a cosine schedule over 60000 steps every "
            "initialisation we tried recovers. Seed 1 of this row is still to run.",
            "With the paper's optimiser (`+paper_sgd`: SGD, momentum 0.9, 0.01 divided by 10 at 50% and 75% of "
            "the steps, no weight decay; localisation nets at 0.1× as always) a random init does not fall "
            "behind either: random 92.31 / 92.05% and identity 92.16 / 92.63% in seeds 0 / 1, the identity "
            "init −0.15 ± 0.38 and +0.58 ± 0.38 points against the random one (within 2σ in both seeds), and "
            "both above their AdamW rows (random +2.81 / +1.43, identity +0.61 / +0.71 points). SGD changes how "
            "the two start, not where they end: the loss stays near chance (ln 19 = 2.94) for longer than "
            "under AdamW (random / identity 2.67 / 2.70 at step 2500 in seed 0, 2.65 / 2.70 in seed 1), and "
            "it is the identity init that is slower to leave it (training loss 2.27 / 1.41 at step 10000 in "
            "seeds 0 / 1, against 0.93 / 0.94 for the random init; all near 0.4 at 30000). So neither the "
            "optimiser nor the identity bias (above) accounts for the source documents' 69%, and a shorter "
            "budget would not either: in every setting we ran, a random regression layer ends within 2 points "
            "of the identity init, and under SGD it is the identity init that lags early on. What is left is "
            "the source documents' own random init, whose scale and bias they do not state: no setting of "
            "ours reproduces 69%.",
            "At the full localisation rate (`+loc_lr_1`) the identity init is fragile: in seed 0 both "
            "transformers' outputs are blank at step 60000 (their grids left the image) and the loss never "
            "left chance (2.81 at step 100, 2.80 at 60000; the gradient norm fell from 0.74 at step 50 to 0.14 "
            "at 500, so it happened early): 10.23% accuracy; in seed 1 one of the two transformers' outputs is blank and the other zooms out "
            "on both digits: 57.64%. So the lower localisation rate is what lets this model train at all, "
            'which fits reading the source documents\' "LR" (92%, their best) as that lower rate; our '
            "0.1× identity runs are at 91.55 / 91.92%. Their 90% for the identity init cannot be our 1× "
            "rate, which collapses.",
        ),
    ),
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """A change to the recipe, run as ``<cell>+<variant>``: the cell's config with these fields changed."""

    overrides: dict[str, object]
    description: str  # what it changes, against the standard recipe
    transformer_only: bool = False  # changes only the transformer: a CNN has nothing to change


# Recipe variants, run as "<cell>+<variant>" (e.g. "tc_st_cnn_affine+full_res"; combined:
# "tc_cnn+fixed_train+seed_1"). Recorded and compared with the same-budget CNN like the standard
# recipe, but the Table 1 entries stay the standard recipe's.
VARIANTS = {
    "loc_lr_1": Variant(
        {"localisation_lr": 1.0}, "localisation nets at the full learning rate (standard: 0.1×)", transformer_only=True
    ),
    "full_res": Variant(
        {"model_kwargs.output_pool": 1},
        "classifier on the transformer's full-resolution output (standard: average-pooled 2× above 32 px)",
        transformer_only=True,
    ),
    "paper_sgd": Variant(
        dict(PAPER_SGD),
        "the paper's optimiser: SGD, momentum 0.9, learning rate 0.01 divided by 10 at 50% and 75% of the steps, "
        "no weight decay (standard: AdamW, 3e-3 with warm-up and cosine decay, weight decay 1e-4)",
    ),
    "seed_1": Variant({"seed": 1}, "another initialisation and data order (seed 1; standard: 0)"),
    "seed_2": Variant({"seed": 2}, "a third initialisation and data order (seed 2; standard: 0)"),
    "fixed_train": Variant(
        {"train_distortion": "fixed"},
        "trained on one fixed distorted copy of the training split, the same every epoch "
        "(standard: distorted afresh every step)",
    ),
    "out_30": Variant(
        {"model_kwargs.out_shape": (30, 30), "model_kwargs.output_pool": 1},
        "the transformer samples its 30×30 output directly (standard: samples 60×60, then average-pools 2×)",
        transformer_only=True,
    ),
    "antialias": Variant(
        {"model_kwargs.antialias": True},
        "the transformer samples with `antialias=True` (standard: plain bilinear)",
        transformer_only=True,
    ),
    "ema": Variant(
        {"ema_decay": 0.999}, "evaluated with a moving average of the weights, decay 0.999 (standard: the weights)"
    ),
    "ls_01": Variant({"label_smoothing": 0.1}, "trained on labels smoothed by 0.1 (standard: none)"),
    "lr_1e3": Variant({"learning_rate": 1e-3}, "peak learning rate 1e-3 (standard: 3e-3)"),
    "lr_6e3": Variant({"learning_rate": 6e-3}, "peak learning rate 6e-3 (standard: 3e-3)"),
    "warmup_600": Variant({"warmup_steps": 600}, "600 warm-up steps (standard: 5% of the steps, at most 200)"),
    "fc_128": Variant(
        {"model_kwargs.hidden": [128]},
        "a hidden FC layer of 128 units before the CNN's output (standard: none); on addition "
        "467,603 parameters, as many as the FCN (470,675) and 2×ST-FCN (469,169)",
    ),
}


def with_recipe(cell: str, recipe: str | None = None) -> str:
    """``cell`` with the Table 1 recipe's variants (default :data:`TABLE1_RECIPE`) in front of its own."""
    base, variant = split_variant(cell)
    recipe = TABLE1_RECIPE if recipe is None else recipe
    return "+".join([base, *variant_parts(recipe), *variant_parts(variant)])


def shared_part(variant: str | None) -> str:
    """``variant`` less its transformer-only parts: what a model without a transformer runs of it
    (``"ls_01+loc_lr_1"`` -> ``"ls_01"``, ``"loc_lr_1"`` -> ``""``)."""
    return "+".join(v for v in variant_parts(variant) if not VARIANTS[v].transformer_only)


def variant_for(cell: str, variant: str) -> str:
    """What of ``variant`` ``cell``'s model runs: all of it with a transformer, else its :func:`shared_part`."""
    return variant if parse_cell(cell)[1].startswith("st_") else shared_part(variant)


def describe(variant: str) -> str:
    """What ``variant`` (``"a+b"``) changes against the standard recipe, part by part."""
    return "; ".join(VARIANTS[v].description for v in variant_parts(variant))


def cell_name(distortion: str, model: str) -> str:
    return f"{distortion.lower()}_{model}"


def variant_parts(variant: str | None) -> list[str]:
    """``"fixed_train+seed_1"`` -> ``["fixed_train", "seed_1"]``; None or "" -> []."""
    return variant.split("+") if variant else []


def split_variant(cell: str) -> tuple[str, str | None]:
    """``"tc_cnn+fixed_train+seed_1"`` -> ``("tc_cnn", "fixed_train+seed_1")``; no variant: None."""
    base, plus, variant = cell.partition("+")
    for part in variant.split("+") if plus else ():  # "tc_cnn+" names the empty variant: refused
        if part not in VARIANTS:
            raise ValueError(f"unknown variant {part!r} of cell {cell!r}: expected one of {', '.join(VARIANTS)}")
    return base, (variant if plus else None)


def parse_cell(cell: str) -> tuple[str, str]:
    """``"rts_st_cnn_affine"`` -> ``("RTS", "st_cnn_affine")`` (a variant's: its base cell's)."""
    cell = split_variant(cell)[0]
    if cell in ADDITION_CELLS:
        return "addition", cell.removeprefix("addition_")
    head, _, model = cell.partition("_")
    distortion = head.upper()
    if distortion not in (*DISTORTIONS, "RTS28") or model not in LABELS:
        raise ValueError(
            f"unknown cell {cell!r}: expected <{'|'.join(d.lower() for d in DISTORTIONS)}>_<"
            f"{'|'.join(LABELS)}> or one of {', '.join(ADDITION_CELLS)}"
        )
    return distortion, model


def config_name(cell: str) -> str:
    cell = split_variant(cell)[0]
    return ADDITION_CELLS[cell].config if cell in ADDITION_CELLS else f"mnist_{cell}"


def extra_overrides(cell: str) -> dict[str, object]:
    """What the cell sets beyond its config and the budget (e.g. the random-init variant)."""
    cell, variant = split_variant(cell)
    overrides = dict(ADDITION_CELLS[cell].overrides) if cell in ADDITION_CELLS else {}
    for part in variant_parts(variant):
        overrides |= VARIANTS[part].overrides
    return overrides


def cell_label(cell: str) -> str:
    base, variant = split_variant(cell)
    label = ADDITION_CELLS[base].label if base in ADDITION_CELLS else LABELS[parse_cell(base)[1]]
    return f"{label} +{variant}" if variant else label


def paper_error(cell: str) -> float | None:
    cell = split_variant(cell)[0]
    if cell in ADDITION_CELLS:
        return ADDITION_CELLS[cell].paper_error
    distortion, model = parse_cell(cell)
    return PAPER[model].get(distortion)


def run_stem(cell: str, steps: int, batch: int) -> str:
    return f"{cell}__s{steps}_b{batch}"


# Experiment (a), benchmarks/generalisation.py: these cells, tested on digits rotated by exactly these angles.
GENERALISATION_CELLS = ("rts28_cnn", "rts28_st_cnn_affine")
GENERALISATION_ANGLES = (45, 60, 75, 90)
