"""Runs that compute nothing answer without torch: usage errors, --list-models, a done resume.

Every check made before the model loads (``heatmap_cli.cli.preflight``) must say what loading
and converting the model would say, and the settings it plans must be the engine's. These tests
run the command in child processes to see what it imports, and compare the plan with the real
engine in this one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner

from heatmap_cli.cli.command import start_job
from heatmap_cli.cli.command_options import CommandOptions
from heatmap_cli.cli.manifest import MANIFEST_NAME
from heatmap_cli.cli.model_cards import ModelRequest, card_key, find_card, keep_card
from heatmap_cli.cli.options import main
from heatmap_cli.cli.preflight import model_request, plan_run
from heatmap_cli.cli.run_settings import run_settings
from heatmap_cli.errors import UsageError
from heatmap_cli.models import get_source
from heatmap_cli.models.card import ModelCard
from heatmap_cli.pipeline import devices
from heatmap_cli.pipeline.devices import device_without_torch
from heatmap_cli.pipeline.profiling import wall_since_start
from heatmap_cli.pipeline.settings import parse_scales

REPO = Path(__file__).resolve().parents[2]
COFFEE = REPO / "sample_images" / "coffee.jpg"
LIBRARIES = ("torch", "torchvision", "timm")
ARRAYS = ("numpy", "PIL", "matplotlib")

_CHILD = """
import json, sys
from heatmap_cli.cli.options import main
try:
    main(sys.argv[1:], prog_name="heatmap")
    code = 0
except SystemExit as done:
    code = done.code
roots = sorted({name.split(".")[0] for name in sys.modules})
print(json.dumps({"code": code, "imported": roots}), file=sys.stderr)
"""


def command(args: list[str], tmp_path: Path) -> tuple[int, str, set[str]]:
    """The command in a child process: its exit status, its stderr, the packages it imported."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    *lines, last = done.stderr.strip().splitlines()
    report = json.loads(last)
    return report["code"], "\n".join([done.stdout, *lines]), set(report["imported"])


def options_of(*args: object) -> CommandOptions:
    """The command's options as click parses ``heatmap ARGS``."""
    context = main.make_context("heatmap", [str(arg) for arg in args])
    return CommandOptions(**context.params)


@pytest.fixture
def short_labels(tmp_path: Path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("one\ntwo\n", encoding="utf-8")
    return path


USAGE_ERRORS = {
    "unknown model": (["-m", "resnt50"], "Did you mean resnet50"),
    "unknown timm model": (["-m", "timm/convnxt_tiny"], "timm/convnext_tiny"),
    "ambiguous class": (["--class", "cat"], "is ambiguous: oystercatcher (143), tiger cat"),
    "misspelt class": (["-m", "vgg16", "--class", "espreso"], "did you mean espresso (967)"),
    "class index": (["--class", "5000"], "out of range 0..999"),
    "stride": (["--stride", "7"], "does not divide the network's native stride 32"),
    "dense finer": (["--method", "dense", "--stride", "16"], "runs at the native stride 32"),
    "size": (["--size", "100"], "below the model's 224-pixel window"),
    "size of a torchvision model": (["-m", "vgg16", "--size", "150"], "224-pixel window"),
    "scale below the window": (["--scales", "1,0.5"], "scale 0.5 of size 384"),
    "labels": (["--labels", "LABELS"], "has 2 names, but the model has 1000 classes"),
    "input size": (["--input-size", "0"], "--input-size must be PIXELS or H,W"),
    "mean": (["--mean", "1,2"], "--mean"),
    "absolute logits": (["--scores", "logits", "--scale", "absolute"], "no absolute range"),
    "method": (["--method", "nope"], "'nope' is not one of"),
    "missing input": (["MISSING"], "no such file or directory"),
    "ray option": (["--workers", "2"], "only works with --ray"),
    "outputs": (["--outputs", "gif"], "outputs must be a comma-separated subset"),
    "tissue mask": (["--tissue", "MISSING"], "must be auto, off or a mask image file"),
    "slide context": (["--slide-context", "wide"], "must be 'exact' or a number of pixels"),
    "mpp": (["--mpp", "0"], "--mpp"),
    "slide mpp": (["--slide-mpp", "-1"], "--slide-mpp"),
    "errors only": (["-qq", "--stride", "7"], "does not divide the network's native stride 32"),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS), ids=list(USAGE_ERRORS))
def test_usage_errors_import_no_torch(case: str, tmp_path: Path, short_labels: Path):
    extra, expected = USAGE_ERRORS[case]
    extra = [str(short_labels) if arg == "LABELS" else arg for arg in extra]
    inputs = [] if extra[0] == "MISSING" else [str(COFFEE)]
    args = [*inputs, *(str(tmp_path / "none.jpg") if a == "MISSING" else a for a in extra)]
    code, said, imported = command([*args, "-o", str(tmp_path / "out")], tmp_path)
    assert code == 2, said
    assert expected in said
    assert not imported & {*LIBRARIES, *ARRAYS}, imported
    assert not (tmp_path / "out").exists()


def test_an_unknown_colormap_imports_matplotlib_but_no_torch(tmp_path: Path):
    code, said, imported = command([str(COFFEE), "--cmap", "infrno"], tmp_path)
    assert code == 2
    assert "unknown colormap 'infrno'; did you mean inferno" in said
    assert not imported & set(LIBRARIES)


@pytest.mark.skipif(sys.platform == "darwin", reason="MPS may be there")
def test_a_device_this_machine_lacks_is_refused_without_torch(tmp_path: Path):
    code, said, imported = command([str(COFFEE), "--device", "mps"], tmp_path)
    assert (code, imported & set(LIBRARIES)) == (2, set())
    assert "--device mps was asked for, but this torch has no MPS support" in said
    if device_without_torch("auto") == "cpu":
        code, said, imported = command([str(COFFEE), "--device", "cuda"], tmp_path)
        assert (code, imported & set(LIBRARIES)) == (2, set())
        assert "torch sees no CUDA GPU" in said


def test_list_models_imports_no_torch(tmp_path: Path):
    code, said, imported = command(["--list-models"], tmp_path)
    assert code == 0
    assert said.startswith("efficientnet_lite0")
    assert "resnet50" in said
    assert not imported & {*LIBRARIES, *ARRAYS}


WSINFER_CONFIG = {
    "spec_version": "1.0",
    "architecture": "resnet34",
    "num_classes": 2,
    "class_names": ["Other", "Tumor"],
    "patch_size_pixels": 350,
    "spacing_um_px": 0.25,
    "transform": [{"name": "Resize", "arguments": {"size": 224}}, {"name": "ToTensor"}],
}


@pytest.mark.parametrize(
    ("model", "extra", "expected"),
    [
        ("folder", ["--class", "tumour"], "did you mean Tumor (1)"),
        ("folder", ["--size", "200"], "below the model's 224-pixel window"),
        ("folder/", ["--class", "5"], "out of range 0..1"),
        ("missing/", [], "missing: no such folder"),
        ("empty", [], "empty: no config.json in it"),
    ],
    ids=["class", "size", "class index", "no folder", "no config"],
)
def test_a_wsinfer_folder_is_a_path_checked_without_torch(
    tmp_path: Path, model: str, extra: list[str], expected: str
):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text(json.dumps(WSINFER_CONFIG))
    (tmp_path / "empty").mkdir()
    args = [str(COFFEE), "--model", model, *extra, "-o", str(tmp_path / "out")]
    code, said, imported = command(args, tmp_path)
    assert code == 2, said
    assert expected in said
    assert "Unknown model" not in said
    assert not imported & {*LIBRARIES, *ARRAYS}, imported


def test_a_resume_with_every_image_done_loads_no_model(tmp_path: Path):
    out = tmp_path / "out"
    first = CliRunner().invoke(main, [str(COFFEE), "-o", str(out), "-q", "--stride", "16"])
    assert first.exit_code == 0, first.output
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != MANIFEST_NAME}
    args = [str(COFFEE), "-o", str(out), "--stride", "16", "--skip-existing"]
    code, said, imported = command(args, tmp_path)
    assert code == 0, said
    assert "0 done, 0 failed, 1 skipped (already done)" in said
    assert "(efficientnet_lite0, auto, stride 16, cpu)" in said  # as the full run says
    assert not imported & {*LIBRARIES, *ARRAYS}
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != MANIFEST_NAME}
    assert after == before  # nothing rewritten
    rows = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    assert [row["status"] for row in rows] == ["skipped"]
    assert rows[0]["top_k"][0]["name"] == "espresso"


def test_a_resume_with_other_settings_is_not_done(tmp_path: Path):
    out = tmp_path / "out"
    assert CliRunner().invoke(main, [str(COFFEE), "-o", str(out), "-q"]).exit_code == 0
    options = options_of(COFFEE, "-o", out, "--alpha", "0.6", "--skip-existing")
    plan = plan_run(options, model_request(options), (1.0,))
    assert plan is not None
    from heatmap_cli.cli.resume import check_outputs
    from heatmap_cli.io import find_images

    (item,) = find_images([COFFEE])
    settings = run_settings(plan, plan.rendering, (1.0,), False, start_job_reading(options))
    verdict = check_outputs(out, item.stem, settings)
    assert not verdict.done
    assert verdict.reason == "settings changed: alpha 0.5 -> 0.6"


def start_job_reading(options: CommandOptions):
    from heatmap_cli.pipeline.settings import PhotoReading

    return PhotoReading(max_display_side=options.max_overlay_side)


PLANNED = {
    "default": [],
    "finer stride": ["--stride", "16"],
    "stitch": ["--stride", "8", "--method", "stitch"],
    "crops": ["--method", "crops", "--stride", "64"],
    "classes and labels": ["--class", "label 967", "--class", "2", "--labels", "LABELS"],
    "logits": ["--scores", "logits", "--cmap", "RdBu_r", "--top-k", "5"],
    "no activation": ["--activation", "none", "--mean", "0.4,0.5,0.6", "--std", "0.5,0.5,0.4"],
    "scales": ["--scales", "1,1.5", "--flip", "--size", "448"],
}


@pytest.mark.parametrize("case", list(PLANNED), ids=list(PLANNED))
def test_the_planned_settings_are_the_engines(case: str, tmp_path: Path, pretrained):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"label {i}" for i in range(1000)) + "\n", encoding="utf-8")
    extra = [str(labels) if arg == "LABELS" else arg for arg in PLANNED[case]]
    options = options_of(COFFEE, "-o", tmp_path / "out", "--device", "cpu", *extra)
    scales = (1.0,) if options.scales is None else parse_scales(options.scales)
    request = model_request(options)
    plan = plan_run(options, request, scales)
    assert plan is not None  # the shipped card and the CPU: everything is known
    job = start_job(options, scales)
    reading = start_job_reading(options)
    planned = run_settings(plan, plan.rendering, scales, options.flip, reading)
    assert planned == run_settings(job.engine, job.rendering, scales, options.flip, reading)
    engine = job.engine
    dtype = str(engine.dtype).removeprefix("torch.")
    card = ModelCard.of(engine.loaded, engine.native_stride, dtype, tuple(engine.notes))
    assert card.to_json() == plan.loaded.to_json()
    keep_card(request, engine.loaded, card)
    assert find_card(model_request(options)) == card  # the kept card is read back


BAD_OPTIONS = {
    "stride": ["--stride", "7"],
    "dense finer": ["--method", "dense", "--stride", "16"],
    "size": ["--size", "100"],
    "class": ["--class", "cat"],
    "labels": ["--labels", "LABELS"],
    "scale": ["--scales", "1,0.25"],
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS), ids=list(BAD_OPTIONS))
def test_checks_before_loading_say_what_loading_says(
    case: str, tmp_path: Path, short_labels: Path, pretrained
):
    extra = [str(short_labels) if arg == "LABELS" else arg for arg in BAD_OPTIONS[case]]
    options = options_of(COFFEE, "-o", tmp_path / "out", "--device", "cpu", *extra)
    scales = (1.0,) if options.scales is None else parse_scales(options.scales)
    with pytest.raises(UsageError) as before:
        plan_run(options, model_request(options), scales)
    def load_and_check() -> None:
        job = start_job(options, scales)
        job.engine.check_scales(scales)  # as the batch does before its first image

    with pytest.raises(UsageError) as loaded:
        load_and_check()
    assert (type(before.value), str(before.value)) == (type(loaded.value), str(loaded.value))


def request_for(name: str, **files: Path | None) -> ModelRequest:
    return ModelRequest(name, get_source(name), **files)  # type: ignore[arg-type]


def test_a_cards_key_follows_the_files_by_content_and_by_name(tmp_path: Path):
    weights, copy = tmp_path / "w.pth", tmp_path / "copy.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    copy.write_bytes(weights.read_bytes())
    plain = card_key(request_for("resnet18"))
    with_weights = card_key(request_for("resnet18", weights=weights))
    assert len({plain, with_weights, card_key(request_for("resnet18", weights=copy))}) == 3
    assert card_key(request_for("resnet18", weights=weights)) == with_weights
    torch.save({"fc.weight": torch.ones(2, 2)}, weights)
    assert card_key(request_for("resnet18", weights=weights)) != with_weights
    assert card_key(request_for("resnet18", weights=tmp_path / "absent.pth")) is None
    code = tmp_path / "net.py"
    code.write_text("def net():\n    pass\n", encoding="utf-8")
    assert card_key(request_for(f"{code}:net")) is None  # code may change unseen: no card


def test_no_card_is_guessed_for_a_model_never_loaded():
    assert find_card(request_for("resnet18", input_size=(200, 200))) is None
    assert find_card(request_for("efficientnet_lite0", input_size=(200, 200))) is None


def test_the_summary_counts_from_the_process_start():
    script = (
        "import time; time.sleep(0.6)\n"
        "from heatmap_cli.pipeline.profiling import seconds_since_start\n"
        "print(seconds_since_start())"
    )
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    waited = time.perf_counter() - started
    assert 0.6 <= float(done.stdout) <= waited + 0.02


def test_auto_budgets_against_the_commands_whole_run_once_it_started():
    script = (
        "import time; time.sleep(0.6)\n"
        "from heatmap_cli.pipeline import profiling\n"
        "before = profiling.run_seconds()\n"
        "profiling.record_start_up()\n"
        "print(before, profiling.run_seconds())"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    before, after = (float(value) for value in done.stdout.split())
    assert before < 0.6 <= after  # the library's clock, then the command's process's


def test_a_process_that_ran_exec_late_counts_from_the_command_not_from_its_shell():
    assert wall_since_start(3.2, 3.0) == 3.2  # the interpreter's start-up counts
    assert wall_since_start(99.8, 3.0) == 3.0  # `bash -c 'pip install ... && heatmap ...'`
    assert wall_since_start(2.9, 3.0) == 3.0  # never less than the command's own time


def test_the_device_is_told_without_torch_only_when_certain(monkeypatch: pytest.MonkeyPatch):
    assert device_without_torch("cpu") == "cpu"
    assert device_without_torch("xpu") is None
    if device_without_torch("auto") == "cpu":  # the machine's own answer must be torch's
        assert not torch.cuda.is_available()
    monkeypatch.setattr(devices, "gpu_support", lambda: None)  # a CPU-only build
    monkeypatch.setattr(sys, "platform", "linux")
    assert device_without_torch("auto") == "cpu"
    with pytest.raises(UsageError, match="torch sees no CUDA GPU"):
        device_without_torch("cuda:1")
    monkeypatch.setattr(devices, "gpu_support", lambda: "cuda")
    monkeypatch.setattr(os.path, "exists", lambda path: path == "/proc/driver/nvidia")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device_without_torch("auto") is None  # a driver: only torch knows
    assert device_without_torch("cuda") is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert device_without_torch("auto") == "cpu"


def test_under_ray_the_driver_leaves_the_workers_device_alone(tmp_path: Path):
    options = options_of(COFFEE, "-o", tmp_path / "out", "--ray", "--device", "cuda")
    assert plan_run(options, model_request(options), (1.0,)) is None  # and no error


def test_a_tile_is_checked_with_the_network_loaded(tmp_path: Path):
    options = options_of(COFFEE, "-o", tmp_path / "out", "--device", "cpu", "--tile", "64")
    assert plan_run(options, model_request(options), (1.0,)) is None


def test_a_kept_card_plans_what_the_engine_runs(tmp_path: Path):
    weights = tmp_path / "three.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    args = [COFFEE, "-o", tmp_path / "out", "--device", "cpu", "-m", "resnet18"]
    options = options_of(*args, "--weights", weights, "--stride", "16")
    request = model_request(options)
    assert plan_run(options, request, (1.0,)) is None  # never loaded: no card yet
    job = start_job(options, (1.0,))
    engine = job.engine
    dtype = str(engine.dtype).removeprefix("torch.")
    keep_card(request, engine.loaded, ModelCard.of(engine.loaded, engine.native_stride, dtype))
    plan = plan_run(options, model_request(options), (1.0,))
    assert plan is not None
    assert plan.loaded.categories == ("class 0", "class 1", "class 2")
    reading = start_job_reading(options)
    planned = run_settings(plan, plan.rendering, (1.0,), False, reading)
    assert planned == run_settings(engine, job.rendering, (1.0,), False, reading)
    with pytest.raises(UsageError, match=r"class index 3 is out of range 0\.\.2"):
        plan_run(options_of(*args, "--weights", weights, "--class", "3"), request, (1.0,))
    torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), weights)
    assert plan_run(options, model_request(options), (1.0,)) is None  # other weights: no card
