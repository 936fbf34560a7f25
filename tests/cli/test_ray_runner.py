"""``--ray`` on a local Ray: the plain run's outputs, manifest and resume; a killed actor survived.

One local Ray for the module (``ray.init(num_cpus=2)``, no dashboard, actors' output not
forwarded), an actor pool of one (below the CPU count), Ray Data's progress bars off (the
command turns them off), and every test under an alarm so that nothing waits forever. The model
is ``tests/helpers/nets.py:seeded_pooled_head`` (own code, built by name in the actors' processes
too).

Without Ray installed these tests skip, unless ``HEATMAP_REQUIRE_RAY=1`` (set by CI) makes the
missing package an error.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from heatmap_cli.cli.batch import Batch
from heatmap_cli.cli.manifest import MANIFEST_NAME
from heatmap_cli.cli.ray_runner import KILL_ACTOR_ONCE
from tests.helpers.cli import output_files, run, save_photo, stderr_lines

try:
    import ray
except ImportError:
    if os.environ.get("HEATMAP_REQUIRE_RAY") == "1":
        raise
    pytest.skip("Ray is not installed: pip install -e '.[ray]'", allow_module_level=True)

NETS = Path(__file__).resolve().parents[1] / "helpers" / "nets.py"
MODEL = ("--model", f"{NETS}:seeded_pooled_head", "--input-size", "44", "-s", "52", "-k", "2")
# a method asked for: auto chooses by each run's measured time, which Ray's start-up changes
MODEL += ("--method", "dense")
ON_RAY = ("--ray", "--workers", "1", "--batch-size", "2")
TEST_TIMEOUT_S = 180  # a safety net for a hung cluster, not a measurement

# Ray Data's own context warns about its renamed settings when it is copied to the actors.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One local Ray for the module; the command finds it initialized and uses it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def alarm() -> Iterator[None]:
    """Fails a test that runs for more than ``TEST_TIMEOUT_S`` instead of waiting forever."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"the test ran for more than {TEST_TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_TIMEOUT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def photos(folder: Path, broken: bool = True) -> Path:
    """Three small photos (one in a subfolder) and, with ``broken``, a file that is not one."""
    save_photo(folder / "a.png", size=(60, 52), seed=1)
    save_photo(folder / "b.jpg", size=(84, 56), seed=2)
    save_photo(folder / "sub" / "c.png", size=(56, 70), seed=3)
    if broken:
        (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


def manifest_rows(out: Path) -> dict[str, dict]:
    lines = (out / MANIFEST_NAME).read_text(encoding="ascii").splitlines()
    return {row["stem"]: row for row in map(json.loads, lines)}


def assert_close(ours: object, theirs: object, where: str = "") -> None:
    """Equal json values, floats to 1e-5 (the actors' network runs on another thread count)."""
    if isinstance(ours, float) or isinstance(theirs, float):
        assert ours == pytest.approx(theirs, abs=1e-5), where
    elif isinstance(ours, dict) and isinstance(theirs, dict):
        assert ours.keys() == theirs.keys(), where
        for key in ours:
            assert_close(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, list) and isinstance(theirs, list):
        assert len(ours) == len(theirs), where
        for index, (one, other) in enumerate(zip(ours, theirs, strict=True)):
            assert_close(one, other, f"{where}[{index}]")
    else:
        assert ours == theirs, where


def private_leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.startswith(".")]


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One folder with a broken file, run plainly and on Ray (each once for the module)."""
    folder = photos(tmp_path_factory.mktemp("photos"))
    outs = {"plain": folder.parent / "plain", "ray": folder.parent / "ray"}
    results = {
        "plain": run(folder, "--out", outs["plain"], *MODEL),
        "ray": run(folder, "--out", outs["ray"], *MODEL, *ON_RAY),
    }
    return {"folder": folder, "outs": outs, "results": results}


def test_ray_writes_the_plain_runs_files_and_names_the_broken_one(both_runs) -> None:
    plain_out, ray_out = both_runs["outs"]["plain"], both_runs["outs"]["ray"]
    plain, on_ray = both_runs["results"]["plain"], both_runs["results"]["ray"]
    broken = both_runs["folder"] / "broken.jpg"

    assert (plain.exit_code, on_ray.exit_code) == (1, 1), on_ray.output
    for result in (plain, on_ray):
        errors = [line for line in stderr_lines(result) if line.startswith("Error:")]
        assert len(errors) == 1 and str(broken) in errors[0]
        assert "3 done, 1 failed" in result.stderr
    assert "Ray: 1 cpu actor" in on_ray.stderr
    assert output_files(ray_out) == output_files(plain_out)  # names, folders, nothing private
    npzs = [name for name in output_files(plain_out) if name.endswith(".npz")]
    assert len(npzs) == 3
    for name in npzs:
        with np.load(plain_out / name) as ours, np.load(ray_out / name) as theirs:
            assert ours.files == theirs.files
            for key in ours.files:
                if ours[key].dtype.kind == "f":
                    np.testing.assert_allclose(theirs[key], ours[key], rtol=0, atol=1e-5)
                else:
                    np.testing.assert_array_equal(theirs[key], ours[key])
    for name in (n for n in output_files(plain_out) if n.endswith(".json")):
        ours, theirs = (json.loads((out / name).read_bytes()) for out in (plain_out, ray_out))
        names = [[entry["name"] for entry in record.pop("files")] for record in (ours, theirs)]
        assert names[0] == names[1]  # sizes may differ by a pixel's rounding in a picture
        assert_close(theirs, ours, name)


def test_ray_leaves_one_manifest_row_per_input_as_the_plain_run(both_runs) -> None:
    plain, on_ray = (manifest_rows(out) for out in both_runs["outs"].values())

    assert set(on_ray) == {"a", "b", "sub/c", "broken"}
    assert [on_ray[key]["status"] for key in sorted(on_ray)] == ["done", "done", "failed", "done"]
    assert_close(on_ray, plain)


def test_a_resumed_ray_run_rewrites_nothing(both_runs) -> None:
    out = both_runs["outs"]["ray"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != MANIFEST_NAME}

    result = run(both_runs["folder"], "--out", out, *MODEL, *ON_RAY, "--skip-existing")

    assert result.exit_code == 1  # the broken file is tried again
    assert "0 done, 1 failed, 3 skipped (already done)" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != MANIFEST_NAME} == before
    statuses = {key: row["status"] for key, row in manifest_rows(out).items()}
    assert statuses == {"a": "skipped", "b": "skipped", "sub/c": "skipped", "broken": "failed"}


def test_an_actor_killed_on_its_first_batch_is_restarted_and_its_images_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos(tmp_path / "photos", broken=False)
    out, marker = tmp_path / "out", tmp_path / "killed"
    monkeypatch.setenv(KILL_ACTOR_ONCE, str(marker))
    monkeypatch.chdir(tmp_path)  # relative paths: the actors work in the command's folder

    result = run("photos", "--out", "out", *MODEL, *ON_RAY)

    assert marker.exists()  # an actor claimed it, and killed its own process
    assert result.exit_code == 0, result.output
    rows = manifest_rows(out)
    assert {key: row["status"] for key, row in rows.items()} == dict.fromkeys(
        ("a", "b", "sub/c"), "done"
    )
    for row in rows.values():
        assert all((out / name).is_file() for name in row["files"])
    assert private_leftovers(out) == []


def test_interrupting_the_driver_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, out = photos(tmp_path / "photos", broken=False), tmp_path / "out"
    real_report = Batch.report

    def interrupted(self: Batch, processed: object) -> None:
        real_report(self, processed)
        raise KeyboardInterrupt  # Ctrl-C once the first image is in

    monkeypatch.setattr(Batch, "report", interrupted)
    result = run(folder, "--out", out, *MODEL, *ON_RAY)
    monkeypatch.undo()

    assert result.exit_code == 130
    assert "Interrupted: 1 done, 0 failed, 2 not finished" in result.stderr
    for name in output_files(out):  # every file in place is whole: json, npz and pictures
        if not Path(name).name.startswith("."):
            path = out / name
            if name.endswith(".json"):
                record = json.loads(path.read_bytes())
                assert all((path.parent / e["name"]).is_file() for e in record["files"])
            elif name.endswith(".npz"):
                np.load(path).close()
    assert len(manifest_rows(out)) >= 1
    resumed = run(folder, "--out", out, *MODEL, *ON_RAY, "--skip-existing")
    assert resumed.exit_code == 0, resumed.output
    assert {row["status"] for row in manifest_rows(out).values()} <= {"done", "skipped"}
    assert len(manifest_rows(out)) == 3


def test_ray_spreads_slides_over_its_actors(tmp_path: Path) -> None:
    from tests.helpers.slides import require_slides, write_slide

    require_slides()
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_slide(inputs / "s1.svs", (300, 360), downsamples=(1, 4))
    write_slide(inputs / "s2.svs", (280, 340), downsamples=(1, 4), seed=1)
    out = tmp_path / "out"
    result = run(inputs, "--out", out, *MODEL, *ON_RAY, "--mpp", "0.5", "-q")
    assert result.exit_code == 0, result.stderr
    rows = manifest_rows(out)
    assert {rows[s]["status"] for s in ("s1", "s2")} == {"done"}
    for stem in ("s1", "s2"):
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["kind"] == "slide" and (out / f"{stem}.csv").is_file()
