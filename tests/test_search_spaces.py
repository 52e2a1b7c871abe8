"""Every shipped study file in ``search_spaces/`` validates, plans the number of trials the paper describes,
and sets up its experiment as the paper says (grids, seeds, epochs, ViT patches and input sizes).

The expected trial counts are written here from the paper (Zhao, Zhang & Hu 2022, Sections 4.1-4.2) and
the greedy protocol, not read from the files: stage 1 is one configuration of the literature's recipe unless
noted, stage 2 is the r grid {0.01, 0.02, 0.05, 0.1, 0.2} with alpha = 1, stage 3 the alpha grid 0.1 .. 0.9 (plus
B_a and B_b in the parameter study), every configuration over every seed. No data folder is needed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gnp_study import cli
from gnp_study.data import build_transforms
from gnp_study.models import build_model
from gnp_study.paper import paper_reference
from gnp_study.protocol import count_trials
from gnp_study.spec import load_spec

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"

# The paper's grids, typed in from Section 4.1 (not imported from the code under test).
R_GRID = [0.01, 0.02, 0.05, 0.1, 0.2]
ALPHA_GRID = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
B_A = [-0.1, -0.2, -0.5]
B_B = [1.1, 1.2, 1.3, 1.5, 2.0]


def greedy(standard_configs: int, n_r: int, n_alpha: int, n_seeds: int, gnp_r_values: int = 1) -> dict:
    """Trials per stage of the greedy protocol: every configuration runs over every seed; stage 3 runs
    its alphas at the best r and at each Figure-2 r (worst case: the best r is none of them)."""
    std, sam, gnp = standard_configs * n_seeds, n_r * n_seeds, n_alpha * n_seeds * gnp_r_values
    return {"standard": std, "sam": sam, "gnp": gnp, "total": std + sam + gnp}


EXPECTED: dict[str, dict] = {}
# Table 1: five seeds; the literature's recipe in stage 1, 5 r values, 9 alphas. VGG16 (no batch norm):
# the paper says large learning rates often fail and it did not follow the protocol strictly, so the
# study searches three learning rates in stage 1.
for _ds in ("cifar10", "cifar100"):
    for _aug in ("basic", "cutout"):
        for _m in ("vgg16_bn", "wrn28_10", "wrn_ss26_2x96d"):
            EXPECTED[f"table1_{_m}_{_ds}_{_aug}"] = greedy(1, 5, 9, 5)
        EXPECTED[f"table1_vgg16_{_ds}_{_aug}"] = greedy(3, 5, 9, 5)
    # PyramidNet-SD: "only three random seeds are used".
    EXPECTED[f"table1_pyramidnet_sd_{_ds}_autoaugment_cutmix"] = greedy(1, 5, 9, 3)
# Tables 2-3: same greedy protocol, five seeds, basic and heavy.
for _ds, _t in (("cifar10", 2), ("cifar100", 3)):
    for _m in ("vit_ti16", "vit_s16"):
        for _aug in ("basic", "vit_heavy"):
            EXPECTED[f"table{_t}_{_m}_{_ds}_{_aug}"] = greedy(1, 5, 9, 5)
# Table 4: one standard run, r = 0.05 only, alpha in {0.2, 0.3}; three seeds.
for _m in ("imagenet_vgg16_bn", "resnet50", "resnet101"):
    EXPECTED[f"table4_{_m}_imagenet"] = greedy(1, 1, 2, 3)
# Figure 2: 9 + 3 (B_a) + 5 (B_b) alphas at the best r and at r = 0.05 and 0.1 (three r at worst).
for _ds in ("cifar10", "cifar100"):
    for _aug in ("basic", "cutout"):
        EXPECTED[f"figure2_wrn26_10_{_ds}_{_aug}"] = greedy(1, 5, 9 + 3 + 5, 5, gnp_r_values=3)
# Figure 3 alone: alpha 0.8 and B_b at the best r.
EXPECTED["figure3_wrn26_10_cifar10_basic"] = greedy(1, 5, 1 + 5, 5)
# CPU study: lr in 2 values, r in {0.05, 0.1}, alphas {0.5, 0.8} + one of B_a + one of B_b, Figure-2 r
# = both r values (so the best r is one of them: 2 r values in stage 3), 2 seeds.
EXPECTED["cifar10_quick"] = greedy(2, 2, 4, 2, gnp_r_values=2)
# Default digits study: lr in 3 values, the full r grid, 9 + 8 alphas at the best r and r = 0.05, 0.1;
# four seeds.
EXPECTED["digits"] = greedy(3, 5, 17, 4, gnp_r_values=3)
# Noisy-label digits study (the demo): lr in 2 values, r in 3, alphas 0.2, 0.4, 0.6, 0.8 at the best r
# and the Figure-2 r = 0.1 (two r values at worst), six seeds; then the confirmation stage: the three
# chosen configurations on six fresh seeds (18 trials); then the cost stage: the chosen GNP with the
# second pass every 2, 5 and 10 steps on the six confirmation seeds (18 trials).
EXPECTED["digits_label_noise"] = greedy(2, 3, 4, 6, gnp_r_values=2)
EXPECTED["digits_label_noise"]["total"] += 18 + 18
#: Studies with a confirmation stage (the paper studies follow the paper's protocol: none).
CONFIRMED = {"digits_label_noise": 18}
#: Studies with a cost stage: {stem: (its k values other than 1, its seeds)}.
COSTED = {"digits_label_noise": ((2, 5, 10), 6)}

SHIPPED = sorted(p.stem for p in SPACES.glob("*.yaml"))
PAPER_FILES = [s for s in SHIPPED if s.startswith(("table", "figure"))]


def test_every_shipped_file_has_an_expected_count():
    assert SHIPPED == sorted(EXPECTED), "a study file was added or removed: give it its paper count here"


@pytest.mark.parametrize("stem", SHIPPED)
def test_validates_and_counts_match_paper(stem):
    spec = load_spec(SPACES / f"{stem}.yaml")
    assert spec.name == stem
    counts = count_trials(spec)
    assert counts["standard_search"] == 0
    assert {k: counts[k] for k in ("standard", "sam", "gnp", "total")} == EXPECTED[stem]
    assert counts["confirm"] == CONFIRMED.get(stem, 0)
    ks, seeds = COSTED.get(stem, ((), 0))
    assert counts["cost"] == len(ks) * seeds


@pytest.mark.parametrize("stem", SHIPPED)
def test_plan_prints_paper_total_and_cost(stem, capsys):
    spec = load_spec(SPACES / f"{stem}.yaml")
    assert cli.main(["plan", str(SPACES / f"{stem}.yaml"), "--epoch-time", "30"]) == 0
    out = capsys.readouterr().out
    exp = EXPECTED[stem]
    assert int(re.search(r"total\s*:\s*(\d+) trials", out).group(1)) == exp["total"]
    # Cost at 30 s per standard epoch: alpha = 0 is one forward-backward pass per step, SAM and GNP
    # two (Algorithm 1, lines 4 and 6).
    ep = spec.training.epochs
    hours = (exp["standard"] * ep * 30 + (exp["sam"] + exp["gnp"]) * ep * 2 * 30) / 3600
    conf = CONFIRMED.get(stem, 0) // 3  # confirmation: Standard one pass, SAM and GNP two, per seed
    hours += (conf * ep * 30 + 2 * conf * ep * 2 * 30) / 3600
    ks, seeds = COSTED.get(stem, ((), 0))  # cost stage: 1 + 1/k passes per step
    hours += sum(seeds * ep * (1 + 1 / k) * 30 for k in ks) / 3600
    assert f"{hours:.1f} trial-hours" in out


@pytest.mark.parametrize("stem", [s for s in PAPER_FILES if s.startswith("table")])
def test_table_studies_use_paper_grids_seeds_and_reference(stem):
    spec = load_spec(SPACES / f"{stem}.yaml")
    st = spec.stages
    assert spec.paper is not None
    assert (spec.paper.model, spec.paper.dataset, spec.paper.augmentation) == \
        (spec.model.name, spec.data.dataset, spec.data.augmentation)
    ref = paper_reference(spec.paper.model, spec.paper.dataset, spec.paper.augmentation)
    assert ref is not None and set(ref["scheme"]) == {"standard", "sam", "gnp"}
    assert st.gnp.alpha_extra == [] and st.gnp.figure2_r == []
    if stem.startswith("table4"):
        assert spec.data.dataset == "imagenet" and spec.data.augmentation == "imagenet"
        assert st.standard.space == {}
        assert st.sam.r == [0.05] and st.gnp.alpha == [0.2, 0.3]
        assert len(spec.seeds) == 3
        assert spec.training.epochs == 100 and spec.training.lr_schedule == "cosine"
        return
    assert st.sam.r == R_GRID and st.gnp.alpha == ALPHA_GRID
    pyramid = "pyramidnet" in stem
    assert len(spec.seeds) == (3 if pyramid else 5)
    assert stem.endswith(f"_{spec.data.dataset}_{spec.data.augmentation}")
    if stem.startswith("table1"):
        assert spec.data.augmentation in (("autoaugment_cutmix",) if pyramid else ("basic", "cutout"))
    else:
        assert spec.data.augmentation in ("basic", "vit_heavy")


@pytest.mark.parametrize("stem", [s for s in PAPER_FILES if s.startswith("figure")])
def test_figure_studies_use_parameter_study_sets(stem):
    spec = load_spec(SPACES / f"{stem}.yaml")
    g = spec.stages.gnp
    assert spec.model.name == "wrn26_10" and spec.stages.sam.r == R_GRID and len(spec.seeds) == 5
    if stem.startswith("figure2"):
        assert g.alpha == ALPHA_GRID and sorted(g.alpha_extra) == sorted(B_A + B_B)
        assert g.figure2_r == [0.05, 0.1]
    else:
        assert (spec.data.dataset, spec.data.augmentation) == ("cifar10", "basic")
        assert sorted(spec.figure3_alpha()) == sorted(B_B + [0.8])
        assert sorted(g.all_alpha()) == sorted(B_B + [0.8])
    if stem == "figure2_wrn26_10_cifar10_basic":  # the default Figure-3 alphas are B_b and 0.8
        assert sorted(spec.figure3_alpha()) == sorted(B_B + [0.8])


VIT_FILES = [s for s in SHIPPED if "_vit_" in s]


def test_all_eight_vit_files_present():
    assert len(VIT_FILES) == 8


@pytest.mark.parametrize("stem", VIT_FILES)
def test_vit_patches_and_input_size(stem):
    """4x4 patches on 32x32 (basic, 200 epochs) or 48x48 (heavy, 1200 epochs, label smoothing, drop path)."""
    import torch

    spec = load_spec(SPACES / f"{stem}.yaml")
    heavy = spec.data.augmentation == "vit_heavy"
    assert spec.model.kwargs.get("patch_size") == 4
    assert spec.training.epochs == (1200 if heavy else 200)
    assert (spec.training.label_smoothing > 0) == heavy
    assert (spec.model.kwargs.get("drop_path_rate", 0.0) > 0) == heavy
    # The input size the trainer hands the model is the one the data pipeline produces.
    train_tf, test_tf, _, size = build_transforms(spec.data.dataset, spec.data.augmentation)
    assert size == (48 if heavy else 32)
    from PIL import Image

    img = Image.new("RGB", (32, 32), (120, 60, 30))
    assert tuple(train_tf(img).shape) == (3, size, size) == tuple(test_tf(img).shape)
    n_classes = 10 if spec.data.dataset == "cifar10" else 100
    torch.manual_seed(0)
    model = build_model(spec.model.name, n_classes, image_size=size, **spec.model.kwargs).eval()
    assert tuple(model.patch_embed.patch_size) == (4, 4)
    assert tuple(model.patch_embed.grid_size) == (size // 4, size // 4)  # 8x8 = 64 or 12x12 = 144 tokens
    with torch.no_grad():
        assert tuple(model(torch.zeros(1, 3, size, size)).shape) == (1, n_classes)


def _training_lines(path: Path) -> list[str]:
    lines, inside = [], False
    for line in path.read_text().splitlines():
        if re.match(r"^training:", line):
            inside = True
            continue
        if inside and re.match(r"^\S", line):
            break
        if inside and line.strip() and not line.lstrip().startswith("#"):
            lines.append(line)
    return lines


@pytest.mark.parametrize("stem", PAPER_FILES + ["cifar10_quick"])
def test_every_training_value_names_its_source(stem):
    lines = _training_lines(SPACES / f"{stem}.yaml")
    assert lines, "no training block found"
    bare = [ln for ln in lines if "#" not in ln or not ln.split("#", 1)[1].strip()]
    assert not bare, f"training values without a source comment: {bare}"


@pytest.mark.parametrize("stem", PAPER_FILES + ["cifar10_quick"])
def test_data_root_is_a_documented_relative_placeholder(stem):
    path = SPACES / f"{stem}.yaml"
    raw = yaml.safe_load(path.read_text())
    root = raw["data"]["root"]
    assert root.startswith("data/") and not Path(root).is_absolute()
    text = path.read_text()
    assert "# DATA:" in text and "edit" in text.lower()
    spec = load_spec(path)
    if stem != "cifar10_quick":  # GPU studies: a whole GPU or a share of one, CPUs for the loader workers
        assert 0 < spec.resources.gpus_per_trial <= 1
        assert spec.resources.cpus_per_trial >= spec.data.num_workers + 1


def test_cifar10_quick_is_cpu_sized_and_reads_imagefolder():
    spec = load_spec(SPACES / "cifar10_quick.yaml")
    assert spec.data.dataset == "cifar10" and spec.data.format == "imagefolder"
    assert spec.data.train_subset is not None and spec.data.train_subset <= 10000
    assert spec.data.test_subset is not None and spec.data.test_subset <= 10000
    assert spec.training.epochs <= 10 and spec.resources.gpus_per_trial == 0
    assert spec.model.name == "resnet8"
    g = spec.stages.gnp
    assert 0.8 in g.alpha
    assert any(a in B_A for a in g.alpha_extra) and any(a in B_B for a in g.alpha_extra)
    assert g.figure2_r == [0.05, 0.1] == spec.stages.sam.r
