"""The user's own model and data named by import path, library model names, and the generic image folder:
resolved, checked before any trial, and refused with one message naming the key when they are wrong."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from gnp_study import user_code
from gnp_study.models import build_model, count_parameters, model_kind
from gnp_study.own_data import build_own_datasets
from gnp_study.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tabular" / "study.yaml"


def _package(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for fname, text in files.items():
        (pkg / fname).write_text(textwrap.dedent(text))
    return tmp_path


def test_model_kinds():
    assert model_kind("small_cnn") == "registry"
    assert model_kind("torchvision:resnet18") == "torchvision"
    assert model_kind("timm:resnet18") == "timm"
    assert model_kind("my_project.nets:WideNet") == "import"
    assert model_kind("no such model") == "unknown"


def test_torchvision_model_by_name_matches_get_model():
    import torchvision

    torch.manual_seed(0)
    ours = build_model("torchvision:resnet18", 7)
    torch.manual_seed(0)
    ref = torchvision.models.get_model("resnet18", weights=None, num_classes=7)
    assert count_parameters(ours) == count_parameters(ref)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values()))
    with pytest.raises(ValueError, match="torchvision has no model 'resnet9000'"):
        build_model("torchvision:resnet9000", 10)


def test_user_model_gets_the_arguments_it_names(tmp_path, monkeypatch):
    _package(tmp_path, "upkg_a", {"nets.py": """
        from torch import nn
        class Net(nn.Module):
            def __init__(self, in_features, num_classes, hidden=4):
                super().__init__()
                self.fc = nn.Linear(in_features, hidden)
                self.out = nn.Linear(hidden, num_classes)
        def not_a_module(num_classes):
            return 3
        def raises():
            raise RuntimeError("boom")
    """})
    monkeypatch.syspath_prepend(str(tmp_path))
    m = build_model("upkg_a.nets:Net", 3, in_features=5, hidden=6)
    assert (m.fc.in_features, m.fc.out_features, m.out.out_features) == (5, 6, 3)
    with pytest.raises(user_code.UserCodeError, match="returned a int, not a torch.nn.Module"):
        build_model("upkg_a.nets:not_a_module", 3)
    with pytest.raises(user_code.UserCodeError, match="raised RuntimeError: boom"):
        build_model("upkg_a.nets:raises", 3)
    with pytest.raises(user_code.UserCodeError, match="has no attribute 'Missing'"):
        build_model("upkg_a.nets:Missing", 3)
    with pytest.raises(user_code.UserCodeError, match="module 'upkg_nope.nets' does not import: ModuleNotFoundError"):
        build_model("upkg_nope.nets:Net", 3)


def test_user_data_function_and_options(tmp_path, monkeypatch):
    _package(tmp_path, "upkg_b", {"data.py": """
        import torch
        from torch.utils.data import TensorDataset
        class T(TensorDataset):
            def __init__(self, n, k, shift=0):
                g = torch.Generator().manual_seed(n)
                y = torch.arange(n) % k + shift
                super().__init__(torch.randn(n, 4, generator=g), y)
                self.targets = y
        def load(n=60, k=3):
            return T(n, k), T(n // 2, k)
        def bad_labels():
            return T(30, 3, shift=5), T(10, 3)
        def empty():
            return T(0, 3), T(10, 3)
        def no_targets():
            return TensorDataset(torch.randn(30, 4), torch.arange(30) % 3), T(10, 3)
    """})
    monkeypatch.syspath_prepend(str(tmp_path))
    b = build_own_datasets("upkg_b.data:load", kwargs={"n": 90}, train_subset=30, validation_size=15,
                           label_noise_fraction=0.2)
    assert (b.num_classes, b.in_features, len(b.train), len(b.val), len(b.test)) == (3, 4, 30, 15, 45)
    assert b.info["label_noise"]["n_changed"] == 6 and b.info["sample_shape"] == [4]
    with pytest.raises(user_code.UserCodeError, match="train set has label 7, out of range for 3 classes"):
        build_own_datasets("upkg_b.data:bad_labels", num_classes=3)
    with pytest.raises(user_code.UserCodeError, match="train set of upkg_b.data:empty has no samples"):
        build_own_datasets("upkg_b.data:empty")
    with pytest.raises(ValueError, match="data.train_subset needs the labels .* `targets` attribute"):
        build_own_datasets("upkg_b.data:no_targets", num_classes=3, train_subset=9)
    with pytest.raises(ValueError, match="augmentation: none"):
        build_own_datasets("upkg_b.data:load", augmentation="basic")


def test_generic_image_folder(tmp_path):
    from PIL import Image

    for split, n in (("train", 4), ("test", 2)):
        for c in ("cat", "dog", "eel"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 12), (40 * i, 90, 200)).save(d / f"{i}.png")
    b = build_own_datasets("imagefolder", root=str(tmp_path), image_size=16, augmentation="basic")
    x, y = b.train[0]
    assert (b.num_classes, b.in_channels, b.image_size, len(b.train), len(b.test)) == (3, 3, 16, 12, 6)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 0
    (tmp_path / "test" / "eel").rename(tmp_path / "test" / "fish")
    with pytest.raises(ValueError, match="test classes .* differ from the training classes"):
        build_own_datasets("imagefolder", root=str(tmp_path))


def _study(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load(EXAMPLE.read_text())
    for key, value in changes.items():
        section, field = key.split(".")
        raw[section][field] = value
    (tmp_path / "tabular_gnp").symlink_to(EXAMPLE.parent / "tabular_gnp")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_example_study_plans_with_its_parameter_count():
    out = subprocess.run([sys.executable, "-m", "gnp_study", "plan", str(EXAMPLE)], capture_output=True,
                         text=True, timeout=300, cwd="/")
    assert out.returncode == 0, out.stderr
    # MLP(30 -> 32 -> 32 -> 2): 30*32+32 + 32*32+32 + 32*2+2 = 2114, counted independently here
    assert "2,114 parameters, 2 classes" in out.stdout
    assert "298 training, 171 test, 100 validation samples; one sample (30,) float32" in out.stdout


@pytest.mark.parametrize("changes, message", [
    ({"model.name": "tabular_gnp.nets:Nope"}, "model.name: module 'tabular_gnp.nets' has no attribute 'Nope'"),
    ({"model.name": "nopkg_x.nets:MLP"}, "model.name: module 'nopkg_x.nets' does not import"),
    ({"data.dataset": "tabular_gnp.data:Table"}, "data.dataset: calling 'Table'"),
    ({"model.kwargs": {"depth": 3}}, "model.name: calling 'MLP' with .* raised TypeError"),
])
def test_bad_own_code_is_refused_before_any_trial(tmp_path, changes, message):
    path = _study(tmp_path, **changes)
    with pytest.raises(SpecError, match=message):
        load_spec(path)
    out = subprocess.run([sys.executable, "-m", "gnp_study", "validate", str(path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_ship_dirs_names_the_package_not_installed_code(tmp_path, monkeypatch):
    _package(tmp_path, "upkg_c", {"m.py": "X = 1\n"})
    (tmp_path / "single_c.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert user_code.ship_dirs(["upkg_c.m:X", "torch.nn:Linear", "gnp_study.models:MLP"]) == [
        str((tmp_path / "upkg_c").resolve())]
    with pytest.raises(user_code.UserCodeError, match="single file"):
        user_code.ship_dirs(["single_c:X"])
