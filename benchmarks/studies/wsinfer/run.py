"""heatmap against WSInfer 0.6.1 on one Aperio-like slide with one TorchScript ResNet-18.

Steps (each tool's run is a fresh process, measured by ``measure.run_measured``):

1. the slide (``slide.py``: 20000 x 20000, JPEG tiles, levels 1/4/16, 0.5 um/px, ~45% tissue) and
   the model folder (``model.py``: a calibrated random 2-class ResNet-18, TorchScript, WSInfer's
   ``config.json``), both kept in ``--work`` and reused;
2. WSInfer's default run: ``wsinfer run`` on the slide's folder, non-overlapping 224-pixel patches
   in tissue, its default batch size and data-loader workers, on the CPU;
3. WSInfer at stride 32: the patches its own tissue detection keeps at ``--patch-overlap-ratio``
   6/7 are counted (``patch_count.py``), and its CPU time is estimated as its fixed cost (start,
   thumbnail, segmentation: the patch-only run) plus its default run's CPU time per patch times
   that count; ``--wsinfer-stride32 run`` runs it instead (hours on a 20000-pixel slide);
4. heatmap, dense at stride 32 (``--heatmap-dense``), and with the exact method on WSInfer's grid
   (``--heatmap-exact``: crops at stride 224), through the heatmap console script of
   ``--heatmap`` (by default this checkout's);
5. the CSVs compared at shared patches (``compare.py``), the goals checked, a JSON record written
   to ``results/`` and a markdown table printed.

Goals (issue 24, part 7): the dense stride-32 map in less CPU time than WSInfer's default run; at
equal stride 32 at least 25x less CPU time than WSInfer; the exact method equal to WSInfer's
patches to 1e-5 at shared patches; peak RSS at most 2 GiB.

Run with this folder's venv (see README.md):
    .venv/bin/python run.py [--side 20000] [--quick] [--skip-wsinfer] [--heatmap PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from measure import run_measured

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
PATCH = 224  # model.PATCH: not imported, so that this process stays small (see measure.py)
STRIDE = 32
GOAL_SPEEDUP = 25.0
GOAL_DIFF = 1e-5
GOAL_RSS_MIB = 2048.0
DENSE_ARGS = "{slide} --model {model} --stride 32 --out {out}"
EXACT_ARGS = "{slide} --model {model} --method crops --stride 224 --out {out}"


def wsinfer_env(work: Path) -> dict[str, str]:
    """WSInfer offline: a home with a placeholder model-zoo registry, the Hub offline, the CPU.

    WSInfer's CLI reads ``~/.wsinfer-zoo/wsinfer-zoo-registry.json`` at import (to list ``--model``
    choices) and would download it from the Hugging Face Hub; an empty registry
    (``{"models": {}}``, valid under wsinfer-zoo's schema) with ``HF_HUB_OFFLINE=1`` is enough for
    ``--config``/``--model-path`` runs.
    """
    home = work / "wsinfer-home"
    registry = home / ".wsinfer-zoo" / "wsinfer-zoo-registry.json"
    registry.parent.mkdir(parents=True, exist_ok=True)
    if not registry.exists():
        registry.write_text('{"models": {}}\n', encoding="utf-8")
    return {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1", "WSINFER_FORCE_CPU": "1"}


def prepare(work: Path, side: int) -> tuple[Path, Path, dict]:
    """The slide (alone in its folder, as WSInfer wants) and the model folder, made once."""
    slide_dir = work / f"slides-{side}"
    slide = slide_dir / f"synthetic-{side}.svs"
    facts_path = slide_dir / "slide.json"
    if not slide.exists() or not facts_path.exists():
        slide_dir.mkdir(parents=True, exist_ok=True)
        print(f"writing {slide}", file=sys.stderr)
        made = _helper("slide.py", slide, "--side", side)
        facts_path.write_text(made, encoding="utf-8")
    model = work / "model"
    if not (model / "torchscript_model.pt").exists():
        print(f"writing {model}", file=sys.stderr)
        _helper("model.py", model, slide)
    return slide, model, json.loads(facts_path.read_text(encoding="utf-8"))


def _helper(script: str, *arguments: object) -> str:
    """Runs one of this folder's scripts in a child process; its last line of output."""
    command = [sys.executable, str(HERE / script), *map(str, arguments)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=HERE)
    return done.stdout.strip().splitlines()[-1]


def run_wsinfer(slide: Path, model: Path, work: Path, name: str, overlap: float = 0.0) -> dict:
    """One ``wsinfer run`` with its defaults (and ``overlap``), measured; its CSV's path."""
    results = work / name
    shutil.rmtree(results, ignore_errors=True)
    command = [
        HERE / ".venv" / "bin" / "wsinfer", "run", "--wsi-dir", slide.parent,
        "--results-dir", results, "--config", model / "config.json",
        "--model-path", model / "torchscript_model.pt", "--patch-overlap-ratio", repr(overlap),
    ]  # fmt: skip
    measured = run_measured(command, log=work / "logs" / f"{name}.log", env=wsinfer_env(work))
    measured["csv"] = _stored(results / "model-outputs-csv" / f"{slide.stem}.csv")
    return measured


def _stored(path: Path) -> str:
    """A path as a record keeps it: relative to this folder where it lies inside it."""
    return str(path.relative_to(HERE)) if path.is_relative_to(HERE) else str(path)


def _found(stored: str | None) -> Path | None:
    """A recorded path, if the file is still there."""
    if not stored:
        return None
    path = Path(stored) if Path(stored).is_absolute() else HERE / stored
    return path if path.exists() else None


def count_patches(slide: Path, work: Path, name: str, overlap: float) -> dict:
    """WSInfer's patch count at ``overlap``, and the CPU time of its patching alone."""
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    command = [
        HERE / ".venv" / "bin" / "python", HERE / "patch_count.py", slide, out,
        "--overlap", repr(overlap),
    ]  # fmt: skip
    log = work / "logs" / f"{name}.log"
    measured = run_measured(command, log=log, env=wsinfer_env(work), cwd=HERE)
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    measured.update(json.loads(lines[-1]) if lines else {})
    return measured


def run_heatmap(
    heatmap: Path, template: str, slide: Path, model: Path, work: Path, name: str
) -> dict:
    """One heatmap command from ``template``, measured; the CSV it wrote for the slide, if any."""
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    arguments = shlex.split(template.format(slide=slide, model=model, out=out))
    measured = run_measured([heatmap, *arguments], log=work / "logs" / f"{name}.log")
    found = sorted(out.rglob(f"{slide.stem}*.csv")) if out.exists() else []
    measured["csv"] = _stored(found[0]) if found else None
    return measured


def machine() -> dict[str, object]:
    """The CPU's name, the core count and the load average now."""
    name = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        name = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
            name,
        )
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count(), "load_average": os.getloadavg()}


def stride32_estimate(default: dict, fixed: dict, counted: dict, default_count: int) -> float:
    """WSInfer's CPU seconds at stride 32: fixed cost + its default run's cost per patch x count."""
    per_patch = (float(default["cpu_s"]) - float(fixed["cpu_s"])) / max(default_count, 1)
    return float(fixed["cpu_s"]) + per_patch * int(counted["patches"])


def goals(record: dict) -> dict[str, object]:
    """Each goal of the issue: the figures it compares and whether it is met (None: not run)."""
    wsinfer = record.get("wsinfer", {})
    dense, exact = record.get("heatmap_dense", {}), record.get("heatmap_exact", {})
    dense_ok = dense.get("exit") == 0 and dense.get("csv")
    checks: dict[str, object] = {}
    if dense_ok and "default" in wsinfer:
        checks["dense stride 32 < WSInfer default (CPU s)"] = {
            "heatmap": dense["cpu_s"], "wsinfer": wsinfer["default"]["cpu_s"],
            "met": dense["cpu_s"] < wsinfer["default"]["cpu_s"],
        }  # fmt: skip
    if dense_ok and "stride32_cpu_s" in wsinfer:
        speedup = wsinfer["stride32_cpu_s"] / max(dense["cpu_s"], 1e-9)
        checks[f"stride 32: WSInfer / heatmap CPU >= {GOAL_SPEEDUP:g}"] = {
            "speedup": round(speedup, 1), "met": speedup >= GOAL_SPEEDUP,
        }  # fmt: skip
    agreement = record.get("exact_vs_wsinfer", {})
    if "max_abs_diff" in agreement:
        checks[f"exact method = WSInfer to {GOAL_DIFF:g}"] = {
            "max_abs_diff": agreement["max_abs_diff"],
            "shared_patches": agreement["shared_patches"],
            "met": agreement["max_abs_diff"] <= GOAL_DIFF,
        }
    runs = [run for run in (dense, exact) if run.get("exit") == 0]
    if runs:
        peak = max(float(run["peak_tree_rss_mib"]) for run in runs)
        checks[f"peak RSS <= {GOAL_RSS_MIB:g} MiB"] = {
            "peak_mib": peak,
            "met": peak <= GOAL_RSS_MIB,
        }
    return checks


def wsinfer_side(args: argparse.Namespace, slide: Path, model: Path, runs: Path) -> dict:
    """WSInfer's default run, its patch counts and its stride-32 CPU time (outputs in ``runs``)."""
    result: dict[str, object] = {}
    default = run_wsinfer(slide, model, runs, "wsinfer-default")
    result["default"] = default
    fixed = count_patches(slide, runs, "wsinfer-patches-default", 0.0)
    overlap = 1 - STRIDE / PATCH
    counted = count_patches(slide, runs, "wsinfer-patches-stride32", overlap)
    result.update(patching_default=fixed, patching_stride32=counted)
    if args.wsinfer_stride32 == "run":
        run = run_wsinfer(slide, model, runs, "wsinfer-stride32", overlap)
        result["stride32"] = run
        result["stride32_cpu_s"] = run["cpu_s"]
        result["stride32_cpu_from"] = "measured"
    elif default["exit"] == 0:
        estimate = stride32_estimate(default, fixed, counted, int(fixed["patches"]))
        result["stride32_cpu_s"] = round(estimate, 1)
        result["stride32_cpu_from"] = "estimated: patching + default run's CPU per patch x count"
    return result


def reused_wsinfer(side: int) -> dict[str, object]:
    """The WSInfer block of this slide's latest record that has one (its CSV still in work/)."""
    for path in sorted((HERE / "results").glob(f"wsinfer-{side}-*.json"), reverse=True):
        earlier = json.loads(path.read_text(encoding="utf-8"))
        if _found(earlier.get("wsinfer", {}).get("default", {}).get("csv")):
            return {"wsinfer": earlier["wsinfer"], "wsinfer_reused_from": path.name}
    return {}


def markdown(record: dict) -> str:
    """The record as a markdown table and goal list."""
    lines = [
        f"Slide {record['slide']['side']}^2, {record['machine']['cpu']}, "
        f"{record['machine']['cores']} cores, load {record['machine']['load_average']}",
        "",
        "| run | exit | CPU s | wall s | peak RSS, all processes MiB | largest process MiB |",
        "|---|---|---|---|---|---|",
    ]
    runs = {
        "WSInfer default (stride 224)": record.get("wsinfer", {}).get("default"),
        "WSInfer stride 32": record.get("wsinfer", {}).get("stride32"),
        "heatmap dense stride 32": record.get("heatmap_dense"),
        "heatmap exact (crops) stride 224": record.get("heatmap_exact"),
    }
    for name, run in runs.items():
        if run:
            lines.append(
                f"| {name} | {run['exit']} | {run['cpu_s']} | {run['wall_s']} | "
                f"{run['peak_tree_rss_mib']} | {run['max_rss_mib']} |"
            )
    wsinfer = record.get("wsinfer", {})
    if "stride32_cpu_s" in wsinfer:
        lines.append(
            f"\nWSInfer stride 32: {wsinfer['patching_stride32'].get('patches')} patches, "
            f"{wsinfer['stride32_cpu_s']} CPU s ({wsinfer['stride32_cpu_from']})"
        )
    lines.append("")
    for goal, figures in record.get("goals", {}).items():
        lines.append(f"- {goal}: {'met' if figures['met'] else 'NOT met'} {figures}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--quick", action="store_true", help="a 4096-pixel slide")
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--heatmap", type=Path, default=REPO / ".venv" / "bin" / "heatmap")
    parser.add_argument("--heatmap-dense", default=DENSE_ARGS)
    parser.add_argument("--heatmap-exact", default=EXACT_ARGS)
    parser.add_argument(
        "--skip-wsinfer", action="store_true", help="reuse the latest WSInfer record of the slide"
    )
    parser.add_argument("--skip-heatmap", action="store_true")
    parser.add_argument("--wsinfer-stride32", choices=("estimate", "run"), default="estimate")
    args = parser.parse_args()
    side = 4096 if args.quick else args.side
    slide, model, facts = prepare(args.work, side)
    runs = args.work / f"runs-{side}"  # each tool's outputs and logs, per slide size
    record: dict[str, object] = {"machine": machine(), "slide": facts, "model": str(model)}
    if not args.skip_wsinfer:
        record["wsinfer"] = wsinfer_side(args, slide, model, runs)
    else:
        record.update(reused_wsinfer(side))
    if not args.skip_heatmap:
        record["heatmap"] = str(args.heatmap)
        for key, template in (("dense", args.heatmap_dense), ("exact", args.heatmap_exact)):
            name = f"heatmap_{key}"
            record[name] = run_heatmap(args.heatmap, template, slide, model, runs, name)
    from compare import compare_csv  # pandas: imported after the measured runs

    reference = _found(record.get("wsinfer", {}).get("default", {}).get("csv"))
    for key in ("dense", "exact"):
        ours = _found(record.get(f"heatmap_{key}", {}).get("csv"))
        if reference and ours:
            record[f"{key}_vs_wsinfer"] = compare_csv(reference, ours)
    record["goals"] = goals(record)
    record["machine_after"] = machine()["load_average"]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = HERE / "results" / f"wsinfer-{side}-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(markdown(record))
    print(f"\nrecord: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
