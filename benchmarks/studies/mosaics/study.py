"""The whole benchmark: which sets, which models, which runs, and the results file.

:class:`Plan` says what a ``quick`` or ``full`` run measures; :func:`run_study` does it and
returns the markdown. The pieces are reusable on their own (the fidelity engineer's loop):

    from benchmarks.studies.mosaics import study
    plan = study.Plan.make(quick=True)
    mosaics = study.accuracy_set(plan)
    model = study.model(plan, "shufflenet_v2_x1_0", 96)
    row = study.method_row(plan, mosaics, model, "refine")   # one timed heatmap process
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import os
import shutil
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from benchmarks.support.common import cpu_model

from .evaluate import (
    GridFidelity,
    PhotoFidelity,
    grid_fidelity,
    photo_fidelity,
    score_heatmap_outputs,
    score_peer_outputs,
)
from .metrics import Agreement
from .mosaics import MosaicSet, write_mosaic_set
from .runs import (
    HERE,
    PEERS,
    grid_methods,
    heatmap_command,
    peer_python,
    run_heatmap,
    run_peer,
)
from .tables import (
    FidelityRow,
    MethodRow,
    accuracy_table,
    fidelity_table,
    photo_table,
    refine_goals,
)
from .training import TrainedModel, recipe_for, trained_model

__all__ = [
    "Plan",
    "Results",
    "accuracy_set",
    "method_row",
    "model",
    "peer_row",
    "run_study",
    "write_results",
]

ARCHS = ("resnet18", "mobilenet_v3_small", "shufflenet_v2_x1_0", "efficientnet_b0")
WINDOWS = (64, 96, 224)
_PEER_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}
_REPO = HERE.parents[2]


@dataclass
class Plan:
    """What one run of the benchmark measures.

    Attributes:
        quick: Fewer mosaics and models.
        cache: Folder for mosaics, models and outputs (reused across runs).
        accuracy_models: ``(arch, window)`` of table (a).
        fidelity_models: ``(arch, window)`` of table (b).
        mosaics: Mosaics in the accuracy set.
        side: Their side in pixels.
        fidelity_mosaics: Mosaics of that set used for table (b).
        large_side: Side of the larger mosaics of table (b)'s image-size check (0: none).
        large_mosaics: How many of them.
        photo_sizes: ``--size`` values for the default model on photos.
        repeat: Timed processes per method (median).
        methods: Table (a)'s grid methods (None: dense, refine once registered, crops); any
            ``--method`` value, ``auto`` too.
        reuse: Take table (a)'s rows measured by an earlier run with the same set, model,
            method, ``heatmap`` command, threads and repeat from ``cache/rows`` instead of
            measuring them again (a full run assembled piece by piece); off by default, since
            the timed checkout may have changed since.
        threads: CPU threads of every timed process and of this one (None: torch's default,
            one per core). On a shared, oversubscribed machine 1 is the fair choice: two
            threads that wait at each other's barriers there cost up to 10x the CPU time.
        peers: Run Grad-CAM and Grad-CAM++ (needs the peers' venv).
        log: Progress lines.
    """

    quick: bool
    cache: Path
    accuracy_models: list[tuple[str, int]]
    fidelity_models: list[tuple[str, int]]
    mosaics: int
    side: int
    fidelity_mosaics: int
    large_side: int
    large_mosaics: int
    photo_sizes: list[int]
    repeat: int = 1
    methods: list[str] | None = None
    reuse: bool = False
    threads: int | None = None
    peers: bool = True
    log: Callable[[str], None] = field(default=print, repr=False)

    @classmethod
    def make(cls, quick: bool, cache: Path | None = None, **changes: object) -> Plan:
        """The quick or full plan (``changes`` override its fields)."""
        cache = cache or Path(os.environ.get("MOSAICS_CACHE", HERE / "cache"))
        if quick:
            plan = cls(
                quick=True,
                cache=cache,
                accuracy_models=[("shufflenet_v2_x1_0", 96)],
                fidelity_models=[("shufflenet_v2_x1_0", 96)],
                mosaics=6,
                side=768,
                fidelity_mosaics=2,
                large_side=0,
                large_mosaics=0,
                photo_sizes=[448],
            )
        else:
            plan = cls(
                quick=False,
                cache=cache,
                accuracy_models=[(arch, 96) for arch in ARCHS],
                fidelity_models=[(arch, w) for w in WINDOWS for arch in ARCHS],
                mosaics=24,
                side=768,
                fidelity_mosaics=4,
                large_side=1536,
                large_mosaics=1,
                photo_sizes=[384, 448, 768],
            )
        for name, value in changes.items():
            setattr(plan, name, value)
        return plan


def accuracy_set(plan: Plan) -> MosaicSet:
    """The evaluation mosaics (seeds 0 onwards), written once into the cache."""
    root = plan.cache / "sets" / f"{plan.mosaics}x{plan.side}"
    return write_mosaic_set(root, plan.mosaics, plan.side, first_seed=0)


def _large_set(plan: Plan) -> MosaicSet:
    root = plan.cache / "sets" / f"{plan.large_mosaics}x{plan.large_side}-large"
    return write_mosaic_set(root, plan.large_mosaics, plan.large_side, first_seed=500)


def model(plan: Plan, arch: str, window: int) -> TrainedModel:
    """The texture model for ``arch`` at ``window`` (trained once, then cached)."""
    return trained_model(recipe_for(arch, window), plan.cache, plan.log)


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _out(plan: Plan, trained: TrainedModel, mosaics: MosaicSet, method: str) -> Path:
    return plan.cache / "runs" / mosaics.root.name / trained.recipe.key / method


def method_row(plan: Plan, mosaics: MosaicSet, trained: TrainedModel, method: str) -> MethodRow:
    """Runs ``heatmap --method METHOD`` over the set ``plan.repeat`` times and scores it."""
    runs = []
    out = _out(plan, trained, mosaics, method)
    for _ in range(plan.repeat):
        runs.append(run_heatmap(mosaics, trained, method, _fresh(out), threads=plan.threads))
    scores = score_heatmap_outputs(mosaics, out)
    count = len(mosaics.stems())
    start_up = [sum(r.stages.get(s, 0.0) for s in ("import", "load", "convert")) for r in runs]
    return MethodRow(
        model=f"{trained.recipe.arch}@{trained.recipe.window}",
        method=method,
        pixel_accuracy=scores.pixels.accuracy,
        miou=scores.pixels.miou,
        cell_accuracy=scores.cells.accuracy if scores.cells is not None else None,
        exact_share=(
            None if scores.exact_cells is None else scores.exact_cells / scores.total_cells
        ),
        wall=statistics.median(r.wall for r in runs) / count,
        network=statistics.median(r.network for r in runs) / count,
        start_up=statistics.median(start_up),
        mosaics=count,
        runs=len(runs),
    )


def peer_row(plan: Plan, mosaics: MosaicSet, trained: TrainedModel, peer: str) -> MethodRow:
    """Runs a peer (``gradcam``, ``gradcam++``) over the set ``plan.repeat`` times and scores it."""
    runs = []
    out = _out(plan, trained, mosaics, peer)
    for _ in range(plan.repeat):
        runs.append(run_peer(peer, mosaics, trained, _fresh(out), plan.threads))
    scores = score_peer_outputs(mosaics, out)
    count = len(mosaics.stems())
    return MethodRow(
        model=f"{trained.recipe.arch}@{trained.recipe.window}",
        method=_PEER_NAMES[peer],
        pixel_accuracy=scores.pixels.accuracy,
        miou=scores.pixels.miou,
        cell_accuracy=None,
        exact_share=None,
        wall=statistics.median(r.wall for r in runs) / count,
        network=statistics.median(r.network for r in runs) / count,
        start_up=None,
        mosaics=count,
        runs=len(runs),
    )


def _row_once(plan: Plan, key: dict, measure: Callable[[], MethodRow]) -> MethodRow:
    """``measure()``, stamped with its time and load, kept in ``cache/rows``; reused if asked."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = plan.cache / "rows" / f"{digest}.json"
    if plan.reuse and path.exists():
        plan.log(f"  reused: {path}")
        return MethodRow(**json.loads(path.read_text())["row"])
    stamp = f"{datetime.datetime.now().isoformat(timespec='minutes')}, load {_load_average()}"
    row = dataclasses.replace(measure(), measured=stamp)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "row": asdict(row)}, indent=1))
    return row


def _accuracy_rows(plan: Plan) -> list[MethodRow]:
    mosaics = accuracy_set(plan)
    rows = []
    peers = plan.peers and peer_python().exists()
    if plan.peers and not peers:
        plan.log(f"no peer venv at {peer_python()}: Grad-CAM rows left out (setup_peers.sh)")
    methods = plan.methods or grid_methods()
    for arch, window in plan.accuracy_models:
        trained = model(plan, arch, window)
        key = {
            "set": mosaics.root.name,
            "model": trained.recipe.key,
            "heatmap": heatmap_command(),
            "threads": plan.threads,
            "repeat": plan.repeat,
        }
        for method in methods:
            plan.log(f"table (a): {arch}@{window} {method}")
            measure = functools.partial(method_row, plan, mosaics, trained, method)
            rows.append(_row_once(plan, key | {"method": method}, measure))
        for peer in PEERS if peers else ():
            plan.log(f"table (a): {arch}@{window} {peer}")
            measure = functools.partial(peer_row, plan, mosaics, trained, peer)
            rows.append(_row_once(plan, key | {"method": peer, "heatmap": None}, measure))
    return rows


def _fidelity_rows(plan: Plan) -> list[FidelityRow]:
    mosaics = accuracy_set(plan)
    large = _large_set(plan) if plan.large_mosaics > 0 else None
    count = min(plan.fidelity_mosaics, plan.mosaics)
    rows = []
    for arch, window in plan.fidelity_models:
        trained = model(plan, arch, window)
        plan.log(f"table (b): {arch}@{window}")
        fidelity = grid_fidelity(trained, mosaics, count, plan.cache)
        large_fidelity = grid_fidelity(trained, large, cache=plan.cache) if large else None
        rows.append(
            FidelityRow(
                arch,
                window,
                trained.window_accuracy,
                trained.train_seconds,
                f"{count} x {plan.side}²",
                fidelity,
                large_fidelity,
                f"{plan.large_mosaics} x {plan.large_side}²" if large is not None else "",
            )
        )
    return rows


def _threads(plan: Plan) -> str:
    if plan.threads is None:
        return f"every process with torch's default threads ({torch.get_num_threads()} here)"
    return f"every process with {plan.threads} thread(s) (OMP_NUM_THREADS)"


def _load_average() -> str:
    try:
        return ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


@dataclass
class Results:
    """What one run measured.

    Attributes:
        accuracy: Table (a)'s rows.
        fidelity: Table (b)'s rows.
        photos: The default model's rows.
        load: The load averages at the start and at the end.
    """

    accuracy: list[MethodRow]
    fidelity: list[FidelityRow]
    photos: list[PhotoFidelity]
    load: tuple[str, str]


def run_study(plan: Plan, tables: tuple[str, ...], command: str) -> tuple[str, dict]:
    """Measures the chosen tables; returns the markdown and the raw figures.

    Args:
        plan: What to measure.
        tables: Any of ``accuracy`` (a), ``fidelity`` (b), ``photos``.
        command: The command line, for the header.

    Returns:
        The markdown text and a JSON-able dict of every row.
    """
    load_before = _load_average()
    if plan.threads is not None:
        torch.set_num_threads(plan.threads)
    accuracy = _accuracy_rows(plan) if "accuracy" in tables else []
    fidelity = _fidelity_rows(plan) if "fidelity" in tables else []
    photos = []
    if "photos" in tables:
        plan.log("photos: the default model, dense against crops")
        samples = sorted((_REPO / "sample_images").glob("*.jpg"))
        photos = photo_fidelity(samples, plan.photo_sizes)
    results = Results(accuracy, fidelity, photos, (load_before, _load_average()))
    raw = {
        "mode": "quick" if plan.quick else "full",
        "cpu": cpu_model(),
        "load_average": list(results.load),
        "threads": plan.threads,
        "heatmap": heatmap_command(),
        "accuracy": [asdict(row) for row in accuracy],
        "fidelity": [_fidelity_dict(row) for row in fidelity],
        "photos": [_photo_dict(row) for row in photos],
    }
    return _markdown(plan, command, results), raw


def _markdown(plan: Plan, command: str, results: Results) -> str:
    refine = "refine" in grid_methods()
    timed = " ".join(heatmap_command())
    header = (
        f"# Fidelity: dense, {'refine, ' if refine else ''}crops and the peers on texture mosaics"
        f"\n\nGenerated by `{command}` ({'quick' if plan.quick else 'full'} mode) on "
        f"{datetime.date.today().isoformat()}: {cpu_model()}, {os.cpu_count()} logical CPUs, torch "
        f"{torch.__version__}, {_threads(plan)}; load average (1, 5, 15 min) "
        f"{results.load[0]} at the start, {results.load[1]} at the end; `heatmap` timed: "
        f"`{timed}`. Times are wall seconds on a shared machine: compare them within one table."
        "\n\nWhat the columns mean, how the models were trained and how a grid becomes "
        "per-pixel labels: `benchmarks/studies/mosaics/README.md`."
    )
    parts = [header]
    if results.accuracy:
        parts.append(
            f"## (a) Pixel accuracy, mIoU and time: {results.accuracy[0].mosaics} mosaics of "
            f"{plan.side}²\n\n" + accuracy_table(results.accuracy)
        )
        stamps = sorted({row.measured for row in results.accuracy if row.measured})
        if len(stamps) > 1:
            parts.append(
                f"Rows measured from {stamps[0]} to {stamps[-1]} (each row's time and load "
                "average: `measured` in the .json)."
            )
        goals = refine_goals(results.accuracy)
        if goals:
            parts.append("Issue 23's goals for refine:\n\n" + "\n".join(goals))
    if results.fidelity:
        parts.append(
            "## (b) Dense against crops, per model and window (stride 32)\n\n"
            + fidelity_table(results.fidelity, refine)
        )
    if results.photos:
        parts.append(
            "## The offline default model (EfficientNet-Lite0, ImageNet) on the sample photos"
            "\n\n" + photo_table(results.photos)
        )
    return "\n\n".join(parts) + "\n"


def _agreement_dict(agreement: Agreement) -> dict:
    return {
        "cells": agreement.cells,
        "top1": agreement.top1,
        "mean_diff": agreement.mean_diff,
        "max_diff": agreement.diff_max,
    }


def _grid_fidelity_dict(fidelity: GridFidelity) -> dict:
    parts = ("all", "inside", "boundary", "border", "interior")
    return {part: _agreement_dict(getattr(fidelity, part)) for part in parts} | {
        "dense_cell_accuracy": fidelity.dense_cells.accuracy,
        "crops_cell_accuracy": fidelity.crops_cells.accuracy,
    }


def _fidelity_dict(row: FidelityRow) -> dict:
    large = None
    if row.large is not None:
        large = _grid_fidelity_dict(row.large) | {"set": row.large_label}
    return {
        "arch": row.arch,
        "window": row.window,
        "window_accuracy": row.window_accuracy,
        "train_seconds": row.train_seconds,
        "set": row.set_label,
        "fidelity": _grid_fidelity_dict(row.fidelity),
        "large": large,
    }


def _photo_dict(row: PhotoFidelity) -> dict:
    return {
        "photo": row.photo,
        "size": row.size,
        "grid": list(row.grid),
        **_agreement_dict(row.agreement),
        "top1_dense": row.top1_dense,
        "top1_crops": row.top1_crops,
    }


def write_results(markdown: str, raw: dict, path: Path) -> None:
    """Writes the markdown to ``path`` and the raw figures to ``path`` with ``.json``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown)
    path.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
