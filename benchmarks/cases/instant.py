"""instant: runs that compute nothing answer in under 0.5 s, without torch (issue 26).

Whole ``heatmap`` processes, each fresh, timed from start to exit (median of 7 runs, 3 in
``--quick``): ``--list-models``, a mistyped model name, an ambiguous ``--class``, a stride the
model cannot give, a size below its window, a labels file of the wrong length, a colormap typo,
a ``--tissue`` mask that is not there, a misspelt class of a WSInfer model folder, and a
``--skip-existing`` resume of a folder whose every image is done. Each also runs once under
``python -X importtime`` to name the heavy packages it imported (torch, torchvision, timm,
numpy, Pillow, matplotlib): a run that answers without the model must import none of torch's.
The first, ordinary run that makes the resumed folder's outputs is not timed; its model card
(``heatmap_cli.cli.model_cards``) is what the resume reads. ``python -c pass`` is timed next to
them: the interpreter's own start. Each process's CPU seconds (user + system, from
``os.wait4``) are reported next to its wall time: on a machine other jobs share, the wall time
grows with their load, the CPU time much less.

Run: .venv/bin/python -m benchmarks.cases.instant [--quick] [--markdown]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.support.common import ROOT, SAMPLES, MatmulPeak, log
from benchmarks.support.harness import Case, Options, run_alone
from benchmarks.support.report import Report

TARGET_S = 0.5
"""What a run that computes nothing may take, whole process (issue 26)."""
HEAVY = ("torch", "torchvision", "timm", "numpy", "PIL", "matplotlib")
LIBRARIES = ("torch", "torchvision", "timm")
_WSINFER_CONFIG = {
    "spec_version": "1.0",
    "architecture": "resnet34",
    "num_classes": 2,
    "class_names": ["Other", "Tumor"],
    "patch_size_pixels": 350,
    "spacing_um_px": 0.25,
    "transform": [{"name": "Resize", "arguments": {"size": 224}}, {"name": "ToTensor"}],
}
"""A WSInfer model folder's configuration (its TorchScript file is not needed to refuse)."""


def scenarios(folder: Path) -> dict[str, tuple[list[str], int]]:
    """``{description: (arguments, expected exit status)}``, inputs and outputs in ``folder``."""
    photo, out = str(SAMPLES / "coffee.jpg"), str(folder / "new")
    labels = folder / "labels.txt"
    labels.write_text("one\ntwo\n", encoding="utf-8")
    resume = [str(folder / "photos"), "-o", str(folder / "done"), "--skip-existing"]
    wsinfer = folder / "wsinfer-model"
    wsinfer.mkdir(exist_ok=True)
    (wsinfer / "config.json").write_text(json.dumps(_WSINFER_CONFIG), encoding="utf-8")
    tissue = str(folder / "no-mask.png")
    return {
        "`--list-models`": (["--list-models"], 0),
        "mistyped model (`-m resnt50`)": ([photo, "-o", out, "-m", "resnt50"], 2),
        "ambiguous class (`--class cat`)": ([photo, "-o", out, "--class", "cat"], 2),
        "stride the model lacks (`--stride 7`)": ([photo, "-o", out, "--stride", "7"], 2),
        "size below the window (`--size 100`)": ([photo, "-o", out, "--size", "100"], 2),
        "labels of the wrong length": ([photo, "-o", out, "--labels", str(labels)], 2),
        "colormap typo (`--cmap infrno`)": ([photo, "-o", out, "--cmap", "infrno"], 2),
        "no such mask (`--tissue FILE`)": ([photo, "-o", out, "--tissue", tissue], 2),
        "WSInfer folder, misspelt class": (
            [photo, "-o", out, "-m", str(wsinfer), "--class", "tumour"],
            2,
        ),
        "`--skip-existing`, every image done": (resume, 0),
    }


def heatmap_script() -> Path:
    return Path(sys.executable).parent / "heatmap"


def run_once(arguments: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """Wall and CPU seconds of one ``heatmap`` process, its exit status and its stderr."""
    return timed_process([str(heatmap_script()), *arguments], env)


def timed_process(command: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """Wall and CPU seconds (user + system, ``os.wait4``) of one process, status, stderr.

    The CPU seconds grow much less than the wall seconds with the load of other jobs.
    """
    with tempfile.TemporaryFile("w+") as errors:
        start = time.perf_counter()
        child = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=errors, env=env, cwd=ROOT, text=True
        )
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        errors.seek(0)
        stderr = errors.read()
    code = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_utime + usage.ru_stime, code, stderr


def heavy_imports(arguments: list[str], env: dict[str, str]) -> list[str]:
    """The heavy packages one such process imports (``python -X importtime``)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(heatmap_script()), *arguments],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=ROOT,
    )
    found = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            root = line.split("|")[-1].strip().split(".")[0]
            if root in HEAVY:
                found.add(root)
    return sorted(found)


def prepare(folder: Path, env: dict[str, str]) -> None:
    """Two photos, and their outputs made by an ordinary run (untimed)."""
    photos = folder / "photos"
    photos.mkdir()
    for name in ("coffee.jpg", "chelsea.jpg"):
        shutil.copyfile(SAMPLES / name, photos / name)
    _, _, status, stderr = run_once([str(photos), "-o", str(folder / "done"), "-q"], env)
    if status != 0:
        raise RuntimeError(f"the run that makes the outputs failed: {stderr.strip()[-300:]}")


def run(options: Options, peak: MatmulPeak, report: Report) -> None:
    """Times every scenario as whole processes and checks the target."""
    del peak  # whole processes: nothing here is a matrix product
    runs = 3 if options.quick else 7
    with tempfile.TemporaryDirectory(prefix="heatmap-instant-") as temp:
        folder = Path(temp)
        env = {**os.environ, "HEATMAP_CACHE_DIR": str(folder / "cache")}
        log("  instant: making the outputs to resume (one ordinary run)")
        prepare(folder, env)
        bare = [timed_process([sys.executable, "-c", "pass"], env)[:2] for _ in range(runs)]
        bare_cpu = statistics.median(cpu for _, cpu in bare)
        report.cli.append(
            (
                f"`python -c pass` (median of {runs})",
                statistics.median(wall for wall, _ in bare),
                f"{bare_cpu:.3f} CPU-s",
            )
        )
        for description, (arguments, expected) in scenarios(folder).items():
            run_once(arguments, env)  # warm the file cache
            walls, cpus, failure = [], [], ""
            for _ in range(runs):
                seconds, cpu, status, stderr = run_once(arguments, env)
                walls.append(seconds)
                cpus.append(cpu)
                if status != expected:
                    failure = f"exit {status}: {stderr.strip()[-200:]}"
            wall, cpu = statistics.median(walls), statistics.median(cpus)
            heavy = heavy_imports(arguments, env)
            torch_free = not set(heavy) & set(LIBRARIES)
            remark = f"imports {', '.join(heavy)}" if heavy else "no torch, numpy, PIL, matplotlib"
            remark = f"{cpu:.3f} CPU-s; {remark}"
            log(f"  instant: {description}: {wall:.3f} s, {remark}")
            report.cli.append((f"{description} (median of {runs})", wall, failure or remark))
            met = wall < TARGET_S and torch_free and not failure
            shown = f"{wall:.3f} s" + ("" if torch_free else ", torch imported") + failure
            report.checks.append((f"{description} < {TARGET_S} s, no torch", shown, met))
    report.notes.append(f"instant: load average at the end {os.getloadavg()}")


CASE = Case("instant", "runs that compute nothing: whole processes, and what they import", run)

if __name__ == "__main__":
    sys.exit(run_alone(CASE))
