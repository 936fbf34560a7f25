"""The shipped model catalog against the installed libraries, and naming models without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from heatmap_cli.models import catalog
from heatmap_cli.models.files import torch_hub_cache_path, torch_hub_dir
from heatmap_cli.versions import installed_version

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "timm", "numpy", "PIL", "matplotlib")


def _shipped() -> dict:
    return json.loads(catalog.CATALOG_FILE.read_text(encoding="utf-8"))


def test_the_shipped_imagenet_names_are_torchvisions():
    names = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert catalog.imagenet_categories() == tuple(names)
    assert catalog.imagenet_categories()[281] == "tabby"


def test_the_shipped_catalog_is_the_installed_libraries():
    # Fails after an upgrade of torchvision, timm or the default model: run
    # `python -m heatmap_cli.models.catalog_writer` and commit heatmap_cli/models/data/.
    assert _shipped() == catalog.build_catalog()


def test_installed_versions_are_read_without_importing():
    assert installed_version("torchvision") == torchvision.__version__
    assert installed_version("timm") == timm.__version__
    assert installed_version("no_such_package_here") is None


def test_the_catalog_names_what_the_libraries_accept():
    assert set(catalog.torchvision_models()) == set(
        torchvision.models.list_models(module=torchvision.models)
    )
    assert catalog.timm_architectures() == frozenset(timm.list_models())
    old_names = catalog.timm_architectures(deprecated=True) - catalog.timm_architectures()
    assert old_names
    assert all(timm.is_model(name) for name in old_names)


def test_another_library_version_is_listed_from_the_library(monkeypatch: pytest.MonkeyPatch):
    stale = _shipped()
    stale["torchvision"] = {"version": "0.0.1", "models": {"not_a_model": {}}}
    stale["timm"] = {"version": "0.0.1", "models": ["not_a_model"], "deprecated": []}
    monkeypatch.setattr(catalog, "_shipped", lambda: stale)
    catalog.torchvision_models.cache_clear()
    catalog.timm_architectures.cache_clear()
    try:
        assert "resnet50" in catalog.torchvision_models()
        assert "not_a_model" not in catalog.torchvision_models()
        assert catalog.timm_architectures() == frozenset(timm.list_models())
    finally:
        catalog.torchvision_models.cache_clear()
        catalog.timm_architectures.cache_clear()


@pytest.mark.parametrize("torch_home", [None, "custom"])
def test_torch_hubs_folder_is_found_as_torch_finds_it(
    torch_home: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    if torch_home is None:
        monkeypatch.delenv("TORCH_HOME", raising=False)
    else:
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / torch_home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    script = (
        "import sys; from heatmap_cli.models.files import torch_hub_dir; "
        "print(torch_hub_dir()); assert 'torch' not in sys.modules"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert Path(done.stdout.strip()) == Path(torch.hub.get_dir())
    assert torch_hub_dir() == Path(torch.hub.get_dir())  # torch imported: torch answers
    url = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
    assert torch_hub_cache_path(url) == Path(torch.hub.get_dir()) / "checkpoints" / Path(
        url
    ).name


def test_models_are_named_listed_and_suggested_without_torch():
    script = (
        "import sys\n"
        "from heatmap_cli.models import available_models, get_source, imagenet_categories\n"
        "from heatmap_cli.errors import UnknownModelError\n"
        "assert len(available_models()) > 50\n"
        "assert get_source('vgg16').family == 'torchvision'\n"
        "assert get_source('timm/convnext_tiny.fb_in1k').family == 'timm'\n"
        "assert len(imagenet_categories()) == 1000\n"
        "try:\n    get_source('resnt50')\nexcept UnknownModelError as e:\n    print(e)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    message, imported = done.stdout.strip().splitlines()
    assert "Did you mean resnet50" in message
    assert imported == "[]"
