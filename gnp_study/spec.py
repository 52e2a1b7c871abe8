"""Study specification: one YAML file in ``search_spaces/``, validated before any trial starts.

A study names the data set, the model, the training recipe (base optimizer and its settings), the three
greedy stages of the paper (Section 4.1: standard search, the r grid with alpha = 1, the alpha grid), the
seeds and the resources per trial. :func:`load_spec` turns a YAML file into a :class:`StudySpec` or raises
:class:`SpecError` with one message that names the offending key and what is accepted.

Validation is done by pydantic (``extra="forbid"`` catches typos); the registries of models and data sets
are consulted so that an unknown name fails here, not inside a trial.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

#: The paper's extra alpha sets (Section 4.1, parameter study).
B_A = (-0.1, -0.2, -0.5)
B_B = (1.1, 1.2, 1.3, 1.5, 2.0)
#: The paper's basic alpha grid 0.1 .. 0.9 and r grid (Section 4.1, after Foret et al. 2021).
BASIC_ALPHA = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PAPER_R = (0.01, 0.02, 0.05, 0.1, 0.2)

#: Training fields that the standard stage (stage 1) may search over.
SEARCHABLE = ("lr", "weight_decay", "momentum", "batch_size", "label_smoothing", "warmup_epochs")

#: The shipped studies: ``search_spaces/`` beside the package in a checkout (an editable install), and
#: ``gnp_study/search_spaces/`` in a wheel (pyproject.toml maps the folder there).
SEARCH_SPACES = next((d for d in (Path(__file__).resolve().parent / "search_spaces",
                                  Path(__file__).resolve().parent.parent / "search_spaces") if d.is_dir()),
                     Path(__file__).resolve().parent.parent / "search_spaces")


def config_key(config: dict) -> str:
    """The canonical key of a configuration (a trial's hyper-parameters without its seed): JSON with sorted
    keys, floats as given, so every seed of one configuration has the same key.

    Args:
        config: hyper-parameter name -> JSON-serialisable value (always ``alpha`` and ``r`` in a study).

    Returns:
        The JSON string, e.g. ``'{"alpha": 0.8, "r": 0.1}'``.
    """
    return json.dumps({k: config[k] for k in sorted(config)}, sort_keys=True)


class SpecError(ValueError):
    """A study file is missing, unreadable or invalid; the message names the key or file at fault."""


def _type_tree(annotation: Any):
    """The annotation and, recursively, its type arguments (``list[float] | None`` -> that, list[float],
    float, None)."""
    yield annotation
    for a in get_args(annotation):
        yield from _type_tree(a)


def _numeric_field(annotation: Any) -> bool:
    """Whether a field holds numbers (int/float, alone or in a list, union or mapping) and never a bool."""
    types = list(_type_tree(annotation))
    return any(t is int or t is float for t in types) and not any(t is bool or t is Any for t in types)


def _bool_inside(value: Any) -> tuple[str, bool] | None:
    """Where a boolean hides in a numeric field's raw value, and the boolean: ``("", b)`` (the value
    itself), ``("item [i]", b)`` (a list item) or ``("key", b)`` / ``("key[i]", b)`` (a mapping value or its
    list item); None when there is none. A mapping inside a mapping is a sub-model (an Optuna range) with
    its own check."""
    if isinstance(value, bool):
        return "", value
    if isinstance(value, (list, tuple)):
        return next(((f"item [{i}]", v) for i, v in enumerate(value) if isinstance(v, bool)), None)
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, bool):
                return str(k), v
            if isinstance(v, (list, tuple)):
                hit = next(((f"{k}[{i}]", x) for i, x in enumerate(v) if isinstance(x, bool)), None)
                if hit is not None:
                    return hit
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v, info):
        # YAML's true/false are Python bools, and bool is a subclass of int: pydantic would take `lr: true`
        # as 1.0 and `seeds: [false]` as [0]. A boolean is never a number here, wherever a number goes.
        field = cls.model_fields.get(info.field_name)
        hit = _bool_inside(v) if field is not None and _numeric_field(field.annotation) else None
        if hit is not None:
            where, b = hit
            raise ValueError(f"{where + ' is ' if where else ''}a boolean ({str(b).lower()}) where a number "
                             f"is expected")
        return v


def _finite(v: float, what: str) -> float:
    if not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, got {v}")
    return v


def _no_bool(v: Any) -> Any:
    if isinstance(v, bool):  # pydantic's lax mode would read true/false as 1/0
        raise ValueError(f"expected a number, not a boolean ({v!r})")
    return v


class ValidationSpec(_Strict):
    """A fixed, class-balanced validation split carved out of the training data (validation mode: stages
    decide on it, so the test set never chooses).

    When set, every stage decides on validation error instead of test error: each trial's score is its
    best validation error during training (the epoch with the lowest validation error, the earliest on
    ties), and the test error reported is the test error at that epoch. Absent (None): the paper's
    protocol (Zhao et al. 2022, Sec. 4.1), which decides and reports on the best test error during
    training. The split is disjoint from the images trained on (``data.train_subset`` keeps the same
    images as without a split; without a subset the training set shrinks by ``size``), uses the test
    transforms, is the same for every configuration and trial seed, and its labels are never corrupted
    (``gnp_study.data.validation_split``).
    """

    size: int | None = Field(None, gt=0, description=(
        "validation images taken from the training data; None: the validation set your data function "
        "returns (gnp_study.own_data)"))
    seed: int = Field(0, ge=0, lt=2**63, description="seed of the class-balanced validation draw")

    @field_validator("size", "seed", mode="before")
    @classmethod
    def _not_bool(cls, v):
        return _no_bool(v)


class LabelNoiseSpec(_Strict):
    """Training-label noise, fixed once per study (Foret et al. 2021, SAM, Sec. 3.3).

    Exactly the nearest integer to ``fraction`` x (training images) labels are changed, after
    ``data.train_subset`` is taken: ``symmetric`` gives each chosen image a class drawn uniformly from
    the OTHER classes (never its true one, so ``fraction`` is the fraction of wrong labels), ``pairflip``
    maps class c to (c + 1) mod K. The choice depends only on ``seed`` (and the data and subset), never on
    a trial seed, so every configuration and trial sees the same labels; test and validation labels are
    never changed (``gnp_study.data.noisy_labels``).
    """

    fraction: float = Field(ge=0, lt=1, description="fraction of training labels made wrong, in [0, 1)")
    kind: Literal["symmetric", "pairflip"] = Field("symmetric", description=(
        "symmetric: a uniformly drawn other class; pairflip: class c becomes (c + 1) mod K"))
    seed: int = Field(0, ge=0, lt=2**63, description="seed of the corrupted labels (not the trial seed)")

    @field_validator("fraction", "seed", mode="before")
    @classmethod
    def _not_bool(cls, v):
        return _no_bool(v)

    @field_validator("fraction")
    @classmethod
    def _fraction_finite(cls, v):
        return _finite(v, "data.label_noise.fraction")


class DataSpec(_Strict):
    """Data set and augmentation, with the optional validation split (:class:`ValidationSpec`) and
    training-label noise (:class:`LabelNoiseSpec`).

    ``dataset`` is a registry name (``gnp_study.data.DATASETS``), ``imagefolder`` (any
    ``root/train/<class>``, ``root/test/<class>`` folder) or an import path ``package.module:function`` to
    the user's function returning their ``torch.utils.data.Dataset``s (``gnp_study.own_data``).
    """

    dataset: str = Field(description="registry name (digits, cifar10, ...), imagefolder, or package.module:function")
    root: str | None = Field(None, description="local folder with the data set files (None for digits)")
    format: Literal["auto", "python", "imagefolder"] = Field("auto", description=(
        "files of a registry data set under root: python (CIFAR's pickle batches), imagefolder "
        "(root/train/<class>, root/test/<class>), or auto (the layout found)"))
    augmentation: str = Field("none", description=(
        "training augmentation: none, basic (pad-crop, flip), cutout (DeVries & Taylor 2017), "
        "autoaugment_cutmix, vit_heavy or imagenet, as the data set accepts (gnp_study.data)"))
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of your data function")
    image_size: int | None = Field(None, gt=0, description="imagefolder: side the images are resized to (32)")
    num_classes: int | None = Field(None, gt=0, description="your data: the label count, when the data "
                                                          "cannot tell it (classes or targets attribute)")
    train_subset: int | None = Field(None, gt=0, description="class-balanced subset of the training set")
    test_subset: int | None = Field(None, gt=0, description="class-balanced subset of the test set")
    subset_seed: int = Field(0, ge=0, lt=2**63, description="seed of the train and test subsets")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes per trial")
    loader: Literal["torch", "device"] = Field(
        "torch", description="torch DataLoader, or the whole data set on the trial's device (gpu_data)")
    validation: ValidationSpec | None = Field(
        None, description="validation split to decide on (None: the paper's protocol, best test error)")
    label_noise: LabelNoiseSpec | None = Field(None, description="training-label noise (None: clean labels)")

    def is_registry(self) -> bool:
        """Whether ``dataset`` is a registry name (not the user's image folder or function)."""
        return self.dataset != "imagefolder" and ":" not in self.dataset

    @model_validator(mode="after")
    def _device_loader(self):
        if self.loader == "device" and not self.is_registry():
            raise ValueError("loader 'device' serves the registry's data sets only; use loader: torch")
        if self.loader == "device" and self.augmentation not in ("none", "basic", "cutout"):
            raise ValueError(f"loader 'device' augments batches with none, basic or cutout only, not "
                             f"{self.augmentation!r}; use loader: torch")
        return self

    @model_validator(mode="after")
    def _own_options(self):
        if self.kwargs and ":" not in self.dataset:
            raise ValueError("kwargs are the keyword arguments of your data function (dataset: "
                             "package.module:function), not of a registry data set")
        if self.image_size is not None and self.dataset != "imagefolder":
            raise ValueError("image_size resizes a generic image folder (dataset: imagefolder) only")
        if self.num_classes is not None and self.is_registry():
            raise ValueError(f"num_classes is fixed by the registry data set {self.dataset!r}")
        if self.validation is not None and self.validation.size is None and self.dataset != "imagefolder" \
                and ":" not in self.dataset:
            raise ValueError("validation.size is needed: only your data function can return a validation set")
        return self

    @model_validator(mode="after")
    def _split_sizes(self):
        from gnp_study.data import DATASETS, check_split_sizes

        if self.dataset in DATASETS:  # an unknown name is reported by the registry check
            check_split_sizes(self.dataset, self.train_subset,
                              self.validation.size if self.validation is not None else None)
        return self


class ModelSpec(_Strict):
    """The model: a registry name (``gnp_study.models.MODELS``), ``torchvision:<name>``, ``timm:<name>``, or an
    import path ``package.module:attribute`` to your ``nn.Module`` class or a function returning one, with
    extra constructor arguments (:func:`gnp_study.models.build_model`)."""

    name: str = Field(description="registry name, torchvision:<name>, timm:<name>, or package.module:attribute")
    kwargs: dict[str, Any] = Field(default_factory=dict, description=(
        "more constructor arguments (e.g. drop_path_rate for a ViT); your own class or function also gets "
        "num_classes, in_channels, image_size and in_features when its signature names them"))


class TrainingSpec(_Strict):
    """The standard training recipe; stage 1 may override the fields named in ``SEARCHABLE`` (the keys of
    ``stages.standard.space``)."""

    epochs: int = Field(gt=0, description="training epochs of every trial")
    batch_size: int = Field(gt=0, description="training images per optimizer step")
    base_optimizer: Literal["sgd", "adamw", "adam"] = Field(
        "sgd", description="the torch optimizer GNP wraps (torch.optim.SGD, AdamW or Adam)")
    lr: float = Field(gt=0, description="base learning rate (the schedule's peak)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only)")
    nesterov: bool = Field(False, description="Nesterov momentum (sgd with momentum > 0 only)")
    weight_decay: float = Field(0.0, ge=0, description=(
        "the base optimizer's weight_decay (L2 for sgd and adam, decoupled for adamw)"))
    lr_schedule: Literal["constant", "cosine", "step"] = Field("cosine", description=(
        "learning-rate schedule after the warm-up: constant, cosine decay to 0, or step (see lr_milestones)"))
    lr_milestones: list[float] = Field(default_factory=lambda: [0.3, 0.6, 0.8],
                                       description="step schedule: where the lr drops, as fractions of the steps after the warm-up")
    lr_gamma: float = Field(0.2, gt=0, le=1, description="step schedule: the lr is multiplied by this at each milestone")
    warmup_epochs: int = Field(0, ge=0, description="linear lr warm-up over the first this many epochs")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy loss")
    grad_clip: float | None = Field(None, gt=0, description="clip the final gradient to this global norm")
    normalize_g1: bool = Field(False, description="mix (1-alpha) g1/|g1| + alpha g2 (authors' code)")
    perturb_weight_decay: bool = Field(False, description="L2 weight decay inside the perturbation")
    precision: Literal["fp32", "bf16"] = Field("fp32", description=(
        "fp32, or bfloat16 autocast of the forward passes (training and evaluation)"))
    channels_last: bool = Field(False, description="model and batches in channels-last memory format")
    every: StrictInt = Field(1, ge=1, description=(
        "amortised GNP: the second pass every `every` optimizer steps, the stored penalty direction reused "
        "in between (gnp_study.optim.GNP, after LookSAM, Liu et al. 2022); 1 is Algorithm 1"))
    reuse: Literal["orthogonal", "difference"] = Field("orthogonal", description=(
        "what amortised GNP reuses between full steps (training.every > 1 and the cost stage): the part of "
        "g2 - g1 orthogonal to g1 (LookSAM) or g2 - g1 itself (gnp_study.optim.GNP reuse)"))
    function: str | None = Field(None, description=(
        "your own training function (import path package.module:function) instead of the package's loop: "
        "called once per trial with a gnp_study.own_loop.TrialContext; it reports each epoch's metrics"))

    @field_validator("lr", "weight_decay", "grad_clip", "label_smoothing")
    @classmethod
    def _is_finite(cls, v, info):
        return v if v is None else _finite(v, info.field_name)


#: The per-epoch metrics the package's own training loop reports (``gnp_study.train.train_trial``): the
#: names a study's ``metric`` may take without a ``training.function``.
PACKAGE_METRICS = ("train_loss", "train_error", "test_loss", "test_error", "val_loss", "val_error")
#: Report keys that are bookkeeping, never a metric to decide on.
RESERVED_METRICS = ("epoch", "status", "node", "diverged_epoch", "diverged_reason", "epoch_time_s", "lr",
                    "passes_per_step", "grad_norm", "gnp_trial_id")


class MetricSpec(_Strict):
    """The metric the stages decide on and every output reports, when it is not the paper's (best test
    error during training, percent, lower is better; or the validation error with ``data.validation``).

    A trial's score is the best value of ``name`` over its epochs: the lowest for ``mode: min``, the
    highest for ``mode: max`` (the paper's "best test error during training", Section 4.1, for any
    metric). ``mode`` follows Ray Tune's ``metric`` / ``mode`` convention (``tune.TuneConfig``).
    """

    name: str = Field(description="a metric every epoch's report carries: one of the package loop's "
                      f"({', '.join(PACKAGE_METRICS)}; a val_ metric needs data.validation) or one your "
                      "training.function reports")
    mode: Literal["min", "max"] = Field(description="min: lower is better (a loss, an error); max: higher is "
                                        "better (accuracy, BLEU)")

    @field_validator("name")
    @classmethod
    def _metric_name(cls, v):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError(f"must be a Python identifier (letters, digits, '_'), got {v!r}")
        if v in RESERVED_METRICS or v.startswith("best_"):
            raise ValueError(f"{v!r} is a bookkeeping name, not a metric to decide on; name the metric "
                             f"itself (the study keeps its best value as best_<name>)")
        return v


class DivergenceSpec(_Strict):
    """When a trial counts as diverged (checked after every epoch)."""

    max_loss: float = Field(1e4, gt=0, description="train loss above this ends the trial as diverged")
    max_grad_norm: float = Field(1e6, gt=0, description="mean norm(g1) above this ends it as diverged")


class OptunaRange(_Strict):
    """A continuous or integer range for the Optuna search of stage 1."""

    low: float = Field(description="lowest value tried")
    high: float = Field(description="highest value tried (included for an integer range)")
    log: bool = Field(False, description="sample on a log scale (needs low > 0)")
    integer: bool = Field(False, description="integers only (batch_size, warmup_epochs)")

    @model_validator(mode="after")
    def _ordered(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"needs finite low < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self


class StandardStage(_Strict):
    """Stage 1 (alpha = 0): grid or Optuna TPE search over training fields."""

    search: Literal["grid", "optuna"] = Field("grid", description=(
        "grid: every combination of the space's lists on every seed; optuna: a TPE search on the first seed"))
    space: dict[str, list[float] | OptunaRange] = Field(default_factory=dict, description=(
        "training field -> list of values (grid or optuna) or {low, high, log, integer} range (optuna); "
        "keys: lr, weight_decay, momentum, batch_size, label_smoothing, warmup_epochs"))
    num_samples: int = Field(8, gt=0, description="Optuna: configurations tried on one seed")
    top_k: int = Field(2, gt=0, description="Optuna: best configurations then run over all seeds")

    @model_validator(mode="after")
    def _check_space(self):
        for key, values in self.space.items():
            if key not in SEARCHABLE:
                raise ValueError(f"space key '{key}' is not searchable; accepted: {', '.join(SEARCHABLE)}")
            if self.search == "grid" and not isinstance(values, list):
                raise ValueError(f"space.{key}: a grid search needs a list of values")
            if isinstance(values, list):
                if not values:
                    raise ValueError(f"space.{key}: empty grid")
                if len(set(values)) != len(values):
                    raise ValueError(f"space.{key}: duplicate values in {values}")
                for v in values:
                    _finite(v, f"space.{key}")
        if self.search == "optuna" and not self.space:
            raise ValueError("an optuna search needs a non-empty space")
        return self


#: Largest |alpha| accepted: far beyond the paper's B_b (2.0); larger values only overflow float32.
MAX_ABS_ALPHA = 100.0


def _unique_finite(values: list[float], name: str, positive: bool = False, bound: float | None = None
                   ) -> list[float]:
    if not values:
        raise ValueError(f"{name}: empty grid")
    for v in values:
        _finite(v, name)
        if bound is not None and abs(v) > bound:
            raise ValueError(f"{name}: |value| must be at most {bound:g}, got {v}")
        if positive and v <= 0:
            raise ValueError(f"{name}: values must be > 0, got {v}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name}: duplicate values in {values}")
    return values


def _check_seed_list(v: list[int]) -> list[int]:
    """Seeds are distinct and in [0, 2**63) (what torch.manual_seed accepts); raises ValueError naming them."""
    if len(set(v)) != len(v):
        raise ValueError(f"duplicate seeds in {v}")
    bad = [s for s in v if not 0 <= s < 2**63]
    if bad:
        raise ValueError(f"seeds must be in [0, 2**63), got {bad}")
    return v


class RaceSpec(_Strict):
    """A racing stage (``stages.sam.race`` / ``stages.gnp.race``): candidates raced over seeds and dropped by
    a paired test against the best (F-Race, Birattari et al. 2002; see :mod:`gnp_study.racing`). Absent:
    the fixed protocol (every candidate on every seed)."""

    first_block: int = Field(2, ge=2, description="seeds every candidate runs before the first test")
    block: int = Field(1, ge=1, description="seeds added to every survivor after each test")
    level: float = Field(0.05, gt=0, lt=1, description="family-wise significance level of one block's "
                                                       "eliminations (not GNP's alpha)")
    correction: Literal["holm", "bonferroni"] = Field("holm", description=(
        "multiple-comparison correction of a block's tests: Holm's step-down (Holm 1979) or Bonferroni"))
    max_trials: int | None = Field(None, gt=0, description="trial budget of one race (default: candidates x "
                                                           "seeds, the fixed protocol's count)")
    extra_seeds: list[int] = Field(default_factory=list, description="seeds after the study's seeds that "
                                                                     "survivors may get within max_trials")
    lookahead: int = Field(1, ge=0, description="next-block trials that may start before a block's test")

    @field_validator("extra_seeds")
    @classmethod
    def _extra_seeds(cls, v):
        return _check_seed_list(v)


class SamStage(_Strict):
    """Stage 2 (alpha = 1, SAM): the grid of perturbation radii r."""

    r: list[float] = Field(default_factory=lambda: list(PAPER_R), description=(
        "perturbation radii tried with alpha = 1 (the paper's grid, after Foret et al. 2021)"))
    race: RaceSpec | None = Field(None, description="race the r grid over seeds (None: every r on every seed)")

    @field_validator("r")
    @classmethod
    def _r(cls, v):
        return _unique_finite(v, "r", positive=True)


class GnpStage(_Strict):
    """Stage 3: the alpha grid at the best r and at each Figure-2 r."""

    alpha: list[float] = Field(default_factory=lambda: list(BASIC_ALPHA),
                               description="the grid the GNP row is chosen from")
    alpha_extra: list[float] = Field(default_factory=list,
                                     description="run for the figures only, never chosen (B_a, B_b)")
    figure2_r: list[float] = Field(default_factory=list, description="r values with a Figure-2 panel")
    figure3_alpha: list[float] | None = Field(
        None, description="alphas drawn in Figure 3 (default: the paper's, the B_b values and 0.8, those of them "
        "stage 3 runs; when it runs none of them, the chosen alpha)")
    race: RaceSpec | None = Field(None, description=(
        "race the alphas at each r over seeds (None: every alpha on every seed)"))

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v):
        return _unique_finite(v, "alpha", bound=MAX_ABS_ALPHA)

    @field_validator("alpha_extra")
    @classmethod
    def _extra(cls, v):
        return _unique_finite(v, "alpha_extra", bound=MAX_ABS_ALPHA) if v else v

    @field_validator("figure2_r")
    @classmethod
    def _f2(cls, v):
        return _unique_finite(v, "figure2_r", positive=True) if v else v

    @model_validator(mode="after")
    def _no_overlap(self):
        both = set(self.alpha) & set(self.alpha_extra)
        if both:
            raise ValueError(f"alpha and alpha_extra share {sorted(both)}")
        return self

    def all_alpha(self) -> list[float]:
        """Every alpha run in stage 3: the selectable grid, then the extras (list of floats)."""
        return list(self.alpha) + list(self.alpha_extra)


class ConfirmStage(_Strict):
    """The confirmation stage: after stage 3, the chosen Standard, SAM and GNP configurations run again on
    fresh seeds that no decision used, and the study's verdicts come from those seeds. Choosing the best
    of a grid and scoring it on the same seeds biases every comparison towards the scheme with the larger
    grid (the winner's curse; e.g. Cawley & Talbot 2010, "On over-fitting in model selection and
    subsequent selection bias in performance evaluation", JMLR 11); seeds the selection never saw do not.
    """

    seeds: list[int] = Field(min_length=2, description="fresh seeds, disjoint from `seeds` and race extra seeds")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        return _check_seed_list(v)


class CostStage(_Strict):
    """The cost stage: after stage 3 (and the confirmation stage), the chosen GNP configuration runs with
    the second pass every k steps (:class:`gnp_study.optim.GNP` ``every``), for each k of ``every``, on the
    seeds that score the study (the confirmation seeds when there are any, else ``seeds``), paired there
    against Standard and full GNP (k = 1, whose trials are already run): what an amortised second pass
    keeps of GNP's improvement, against what it costs (passes per step and trial time, both measured).
    """

    every: list[StrictInt] = Field(default_factory=lambda: [1, 2, 5, 10], min_length=1,
                                   description="the k values; 1 is full GNP (its trials are reused)")

    @field_validator("every")
    @classmethod
    def _every(cls, v):
        bad = [k for k in v if k < 1]
        if bad:
            raise ValueError(f"every: each k must be an integer >= 1, got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"every: duplicate values in {v}")
        if not any(k > 1 for k in v):
            raise ValueError(f"every: needs at least one k > 1 to compare with full GNP, got {v}")
        return sorted(v)


class Stages(_Strict):
    """The stages of a study: the three greedy stages of the paper, then the optional confirmation and cost
    stages."""

    standard: StandardStage = Field(default_factory=StandardStage, description=(
        "stage 1: the standard recipe search (alpha = 0)"))
    sam: SamStage = Field(default_factory=SamStage, description="stage 2: the r grid with alpha = 1 (SAM)")
    gnp: GnpStage = Field(default_factory=GnpStage, description="stage 3: the alpha grid at the best r")
    confirm: ConfirmStage | None = Field(None, description=(
        "the chosen configurations again on fresh seeds (None: no confirmation stage)"))
    cost: CostStage | None = Field(None, description=(
        "the chosen GNP with its second pass every k steps (None: no cost stage)"))


class Resources(_Strict):
    """Resources each trial asks Ray for; a GPU fraction lets several trials share one GPU."""

    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs Ray reserves for each trial")
    gpus_per_trial: float = Field(0.0, ge=0, description=(
        "GPUs Ray reserves for each trial (0: train on CPUs; a fraction shares one GPU)"))
    max_concurrent_trials: int | None = Field(None, gt=0, description=(
        "most trials running at once (None: as many as the resources allow)"))


class PaperRef(_Strict):
    """The paper experiment a study reproduces (its numbers go beside the measured ones)."""

    model: str = Field(description=(
        "a model of the GNP paper's tables (Zhao, Zhang & Hu, ICML 2022) as gnp_study/paper_results.csv "
        "names it, e.g. wrn28_10; an experiment the paper lacks shows no numbers"))
    dataset: str = Field(description="the experiment's data set: cifar10, cifar100 or imagenet")
    augmentation: str = Field(description=(
        "the experiment's augmentation: basic, cutout, autoaugment_cutmix, vit_heavy or imagenet"))


class StudySpec(_Strict):
    """A whole study: what to train, the three greedy stages, seeds and resources.

    Source: the greedy protocol of Zhao, Zhang & Hu (2022), Section 4.1; stage 2 uses alpha = 1 (SAM,
    Eq. 10) where the paper's text says zero by mistake.
    """

    name: str = Field(description="the study's name (letters, digits, _ - .); its folder is reports/<name>/")
    description: str = Field("", description="free text shown in the report")
    data: DataSpec = Field(description="the data set and its options")
    model: ModelSpec = Field(description="the model")
    training: TrainingSpec = Field(description="the training recipe every trial starts from")
    stages: Stages = Field(default_factory=Stages, description="the greedy stages (and optional extra stages)")
    seeds: list[int] = Field(description=(
        "trial seeds: every configuration runs on each (distinct, in [0, 2**63))"))
    resources: Resources = Field(default_factory=Resources, description="what each trial asks Ray for")
    divergence: DivergenceSpec = Field(default_factory=DivergenceSpec, description=(
        "when a trial counts as diverged"))
    max_failures: int = Field(2, ge=0, description="retries of a crashed trial from its last checkpoint")
    checkpoint_every: int = Field(1, gt=0, description="epochs between trial checkpoints")
    report_every: int = Field(1, gt=0, description=(
        "epochs between a trial's reports to Ray Tune; a trial also reports at every checkpoint and at its "
        "end, and every epoch still reaches the tables and TensorBoard (from the checkpoint's history)"))
    paper: PaperRef | None = Field(None, description=(
        "the paper experiment whose numbers go beside the measured ones (None: none)"))
    metric: MetricSpec | None = Field(None, description=(
        "the metric the stages decide on and the outputs report, with its direction (None: the paper's "
        "best test error, or the validation error with data.validation)"))
    code_dir: str | None = Field(None, description=(
        "folder holding the package your import paths name (relative to the study file; default: the study "
        "file's folder when the study names an import path); put on the driver's and the workers' path"))

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError(f"name must be letters, digits, '_', '-', '.', got {v!r}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if not v:
            raise ValueError("at least one seed is needed")
        return _check_seed_list(v)

    @model_validator(mode="after")
    def _cross(self):
        # Every value stage 1 may try must be a valid training value: checked by the training field
        # itself, so a grid cannot smuggle in what `training:` would refuse (lr 0, batch size 0, ...).
        base = self.training.model_dump()
        for key, values in self.stages.standard.space.items():
            tried = values if isinstance(values, list) else [values.low, values.high]
            for v in tried:
                if isinstance(v, bool):
                    raise ValueError(f"stages.standard.space.{key}: {v!r} is not a number")
                try:
                    TrainingSpec.model_validate(dict(base, **{key: v}))
                except ValidationError as err:
                    why = "; ".join(e["msg"] for e in err.errors())
                    raise ValueError(f"stages.standard.space.{key}: value {v!r} is invalid: {why}") from None
        run = self.stages.gnp.all_alpha()
        if self.stages.gnp.figure3_alpha is not None:
            absent = [a for a in self.stages.gnp.figure3_alpha if a not in run]
            if absent:
                raise ValueError(f"stages.gnp.figure3_alpha {absent} are not run in stage 3 "
                                 f"(alpha + alpha_extra: {run})")
        for stage in ("sam", "gnp"):
            race = getattr(self.stages, stage).race
            if race is None:
                continue
            both = sorted(set(race.extra_seeds) & set(self.seeds))
            if both:
                raise ValueError(f"stages.{stage}.race.extra_seeds {both} are already in seeds")
            if race.first_block > len(self.seeds) + len(race.extra_seeds):
                raise ValueError(f"stages.{stage}.race.first_block is {race.first_block} but the race has only "
                                 f"{len(self.seeds) + len(race.extra_seeds)} seeds")
        if self.stages.confirm is not None:
            used = set(self.seeds)
            for stage in ("sam", "gnp"):
                race = getattr(self.stages, stage).race
                used |= set(race.extra_seeds) if race is not None else set()
            both = sorted(set(self.stages.confirm.seeds) & used)
            if both:
                raise ValueError(f"stages.confirm.seeds {both} are used by the selection stages (seeds or race "
                                 f"extra_seeds): confirmation seeds must be fresh")
        if self.stages.cost is not None and self.training.every != 1:
            raise ValueError(f"stages.cost compares amortised GNP with full GNP, but training.every is "
                             f"{self.training.every}: the study's GNP is already amortised; set training.every "
                             f"to 1 or remove stages.cost")
        if (self.metric is not None and self.training.function is None
                and self.metric.name not in PACKAGE_METRICS):
            raise ValueError(f"metric.name {self.metric.name!r} is not reported by the package's training "
                             f"loop (it reports {', '.join(PACKAGE_METRICS)}); name one of those, or report "
                             f"it from your own training.function")
        if self.metric is not None and self.stages.cost is not None:
            raise ValueError(f"stages.cost compares test errors and is not available with a study metric "
                             f"(metric.name {self.metric.name!r}); remove stages.cost or the metric")
        if (self.metric is not None and self.metric.name.startswith("val_") and self.training.function is None
                and self.data.validation is None):
            raise ValueError(f"metric.name {self.metric.name!r} needs a validation set: set data.validation")
        missing = [r for r in self.stages.gnp.figure2_r if r not in self.stages.sam.r]
        if missing:
            raise ValueError(f"stages.gnp.figure2_r {missing} must be values of stages.sam.r "
                             f"{self.stages.sam.r} (Figure 2 marks the SAM point at each r)")
        return self

    def figure3_alpha(self) -> list[float]:
        """Alphas of Figure 3: the configured list, else every B_b value run plus 0.8 when run."""
        g = self.stages.gnp
        if g.figure3_alpha is not None:
            return list(g.figure3_alpha)
        run = g.all_alpha()
        return [a for a in run if a in B_B] + ([0.8] if 0.8 in run else [])

    def resolved(self) -> dict:
        """The spec with every default filled in, as plain YAML-ready data (dict).

        ``data.validation`` and ``data.label_noise`` appear only when set (absent means the paper's
        protocol and clean labels), a stage's ``race``, ``stages.confirm`` and ``stages.cost`` only when set,
        ``report_every`` and ``training.every`` only when not 1, ``training.reuse`` only when not
        ``"orthogonal"``, so study folders written before these options existed still resume.
        """
        d = self.model_dump(mode="json")
        d["stages"]["gnp"]["figure3_alpha"] = self.figure3_alpha()
        for key in ("validation", "label_noise"):  # unset: left out, so folders of older versions resume
            if d["data"][key] is None:
                del d["data"][key]
        for stage in ("sam", "gnp"):  # likewise a stage without a race
            if d["stages"][stage]["race"] is None:
                del d["stages"][stage]["race"]
        for stage in ("confirm", "cost"):  # likewise a study without a confirmation or a cost stage
            if d["stages"][stage] is None:
                del d["stages"][stage]
        if d["training"]["every"] == 1:  # likewise full GNP (Algorithm 1)
            del d["training"]["every"]
        if d["training"]["reuse"] == "orthogonal":  # likewise the default reuse of amortised GNP
            del d["training"]["reuse"]
        if d["training"]["function"] is None:  # likewise the package's own training loop
            del d["training"]["function"]
        if d["report_every"] == 1:  # likewise the default reporting cadence
            del d["report_every"]
        for key in ("kwargs", "image_size", "num_classes"):  # likewise the registry's data sets
            if not d["data"][key]:
                del d["data"][key]
        if d["code_dir"] is None:  # likewise a study of the registry's models and data
            del d["code_dir"]
        if d["metric"] is None:  # likewise the paper's metric (test or validation error)
            del d["metric"]
        return d

    def import_paths(self) -> list[str]:
        """The import paths (``package.module:attribute``) the study names: its model, data function and
        training function."""
        from gnp_study.user_code import is_target

        return [n for n in (self.model.name, self.data.dataset, self.training.function or "") if is_target(n)]


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (a typo?)"
        inp = e.get("input")
        shown = "" if e["type"] in ("missing", "extra_forbidden") or isinstance(inp, dict) else f" (got {inp!r})"
        if e["type"] == "value_error":  # this module's own checks: their message names the key and the value
            msg, shown = msg.removeprefix("Value error, "), ""
        lines.append(f"{loc}: {msg}{shown}" if loc else msg)
    if len(lines) == 1:  # the usual case: one line naming the key
        return f"invalid study {source}: {lines[0]}"
    return f"invalid study {source}:\n  " + "\n  ".join(lines)


def _build_checked(spec: StudySpec, num_classes: int, in_channels: int, image_size: int,
                   in_features: int | None):
    """Build the study's model once, on the meta device (no weights allocated) or, where the user's code
    cannot run there, on the CPU; returns the module."""
    import torch

    from gnp_study import models

    args = dict(in_channels=in_channels, image_size=image_size, **spec.model.kwargs)
    if in_features is not None:
        args["in_features"] = in_features
    try:
        with torch.device("meta"):
            return models.build_model(spec.model.name, num_classes, **args)
    except Exception:  # noqa: BLE001 - the user's code may not run on meta tensors: try once for real
        if models.model_kind(spec.model.name) == "registry":
            raise
        return models.build_model(spec.model.name, num_classes, **args)


def check_study_code(spec: StudySpec, source: str = "<dict>") -> dict:
    """Check the study's model and data names and build both once, before any trial starts.

    Registry data sets are only looked up (their files are checked when the data is read); the user's
    image folder or data function is loaded (sizes, classes, one sample). The model is built with the
    data's facts (see :func:`_build_checked`).

    Args:
        spec: the validated study.
        source: a name for messages (usually the file path).
    Returns:
        Facts for ``plan``: ``model`` (its name), ``parameters`` (int), ``num_classes``; for the user's data
        also ``n_train``, ``n_test``, ``n_val``, ``sample_shape``, ``sample_dtype``.
    Raises:
        SpecError: an unknown name, a model or data function that does not import, raises or returns the
            wrong kind of object, model kwargs the model does not take, or an unknown augmentation; the
            message names the key.
    """
    from gnp_study import data, models, own_data, user_code

    kind = models.model_kind(spec.model.name)
    if kind == "unknown":
        raise SpecError(f"invalid study {source}: model.name: unknown model {spec.model.name!r}; accepted: a "
                        f"registry name ({', '.join(sorted(models.MODELS))}), torchvision:<name>, timm:<name>, "
                        f"or an import path package.module:attribute")
    facts: dict[str, Any] = {"model": spec.model.name}
    d = spec.data
    if d.dataset in data.DATASETS:
        reg = data.DATASETS[d.dataset]
        shape = dict(num_classes=reg.num_classes, in_channels=reg.in_channels, image_size=reg.image_size,
                     in_features=None)
        if d.augmentation not in data.AUGMENTATIONS:
            raise SpecError(f"invalid study {source}: data.augmentation: unknown augmentation "
                            f"{d.augmentation!r}; accepted: {', '.join(data.AUGMENTATIONS)}")
    elif own_data.is_own(d.dataset):
        try:
            bundle = own_data.build_for(d)
        except (ValueError, TypeError) as e:  # UserCodeError and DataError are ValueErrors
            raise SpecError(f"invalid study {source}: {e}") from None
        shape = dict(num_classes=bundle.num_classes, in_channels=bundle.in_channels, image_size=bundle.image_size,
                     in_features=bundle.in_features)
        facts.update({k: bundle.info[k] for k in ("n_train", "n_test", "n_val", "sample_shape", "sample_dtype")})
    else:
        raise SpecError(f"invalid study {source}: data.dataset: unknown data set {d.dataset!r}; accepted: a "
                        f"registry name ({', '.join(sorted(data.DATASETS))}), imagefolder, or an import path "
                        f"package.module:function")
    try:
        model = _build_checked(spec, **shape)
    except user_code.UserCodeError as e:
        raise SpecError(f"invalid study {source}: {e}") from None
    except (TypeError, ValueError) as e:
        raise SpecError(f"invalid study {source}: model.kwargs {spec.model.kwargs} are not accepted by model "
                        f"{spec.model.name!r}: {e}") from None
    facts.update(parameters=models.count_parameters(model), num_classes=shape["num_classes"])
    if spec.training.function is not None:
        try:
            user_code.load_function(spec.training.function)
        except user_code.UserCodeError as e:
            raise SpecError(f"invalid study {source}: {e}") from None
        facts["function"] = spec.training.function
    return facts


def _check_registries(spec: StudySpec, source: str) -> None:
    check_study_code(spec, source)


def parse_spec(raw: Any, source: str = "<dict>", *, check_names: bool = True,
               base_dir: str | Path | None = None) -> StudySpec:
    """Validate already-parsed YAML data into a :class:`StudySpec`.

    Args:
        raw: the mapping read from a study file.
        source: a name for messages (usually the file path).
        check_names: also check the model, data set and augmentation names and build the model and the
            user's data once (:func:`check_study_code`).
        base_dir: the folder a relative ``code_dir`` is relative to (default: the current directory;
            :func:`load_spec` passes the study file's folder).

    Returns:
        The validated spec.

    Raises:
        SpecError: not a mapping, a key unknown or of the wrong type, a value out of range, or an
            unknown registry name; the message names each offending key and what is accepted.
    """
    if not isinstance(raw, dict):
        raise SpecError(f"invalid study {source}: the file must hold a YAML mapping, got {type(raw).__name__}")
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_format_validation_error(err, source)) from None
    _place_code(spec, source, base_dir, strict=check_names)
    if check_names:
        _check_registries(spec, source)
    return spec


def _place_code(spec: StudySpec, source: str, base_dir: str | Path | None, strict: bool) -> None:
    """Make the study's import paths importable: ``code_dir`` (relative to ``base_dir``, default the study
    file's folder) goes first on ``sys.path`` and, made absolute, into the spec.

    A folder that does not exist is an error only when ``strict`` and the import paths do not import
    without it (on a cluster the code arrives through Ray's runtime environment, not the folder)."""
    import importlib

    from gnp_study.user_code import add_code_dir

    if not spec.import_paths() and spec.code_dir is None:
        return
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    folder = Path(spec.code_dir).expanduser() if spec.code_dir is not None else base
    folder = folder if folder.is_absolute() else base / folder
    if folder.is_dir():
        add_code_dir(folder)
        spec.code_dir = str(folder.resolve())
        return
    if not strict:
        return
    for target in spec.import_paths():
        try:
            importlib.import_module(target.split(":", 1)[0])
        except Exception:  # noqa: BLE001 - reported below with the folder that is missing
            raise SpecError(f"invalid study {source}: code_dir: folder {str(folder)!r} does not exist (it "
                            f"should hold the package of {target})") from None


def find_study(name_or_path: str | Path | None) -> Path:
    """Resolve a study argument to a file: a path, or the name of a shipped search space.

    Args:
        name_or_path: ``None`` (the embedded default ``digits``), a path to a YAML file, or a bare name
            such as ``cifar10_quick`` looked up in ``search_spaces/``.

    Returns:
        The path of the YAML file.

    Raises:
        SpecError: no such file.
    """
    if name_or_path is None:
        name_or_path = "digits"
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (SEARCH_SPACES / f"{p.name}", SEARCH_SPACES / f"{p.name}.yaml"):
        if cand.is_file():
            return cand
    raise SpecError(f"study file {str(name_or_path)!r} not found (give a path to a YAML file, or one of the "
                    f"names in {SEARCH_SPACES}: {', '.join(sorted(q.stem for q in SEARCH_SPACES.glob('*.yaml')))})")


def load_spec(path: str | Path | None, *, check_names: bool = True) -> StudySpec:
    """Read and validate a study YAML file.

    Args:
        path: the YAML file, a shipped study name, or ``None`` for the default digits study.
        check_names: check registry names too (see :func:`parse_spec`).

    Returns:
        The validated :class:`StudySpec`.

    Raises:
        SpecError: missing file, YAML syntax error (with line and column), or invalid content.
    """
    p = find_study(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"cannot read study file {p}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"study file {p} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(f"YAML syntax error in {p}{where}: {problem}") from None
    return parse_spec(raw, str(p), check_names=check_names, base_dir=p.resolve().parent)
