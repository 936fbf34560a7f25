"""The benchmark's rows and their markdown tables.

Rows are plain dataclasses (what :mod:`.study` measures); :func:`accuracy_table`,
:func:`fidelity_table` and :func:`photo_table` print them as GitHub markdown, and
:func:`refine_goals` checks issue 23's goals for ``refine`` once it is in the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from .evaluate import GridFidelity, PhotoFidelity

__all__ = [
    "FidelityRow",
    "MethodRow",
    "accuracy_table",
    "fidelity_table",
    "photo_table",
    "recommend",
    "refine_goals",
]

SE_ARCHITECTURES = ("mobilenet_v3_small", "efficientnet_b0")
"""The architectures with squeeze-and-excitation blocks (global pools inside the body)."""


@dataclass(frozen=True)
class MethodRow:
    """One method on one model over the accuracy set.

    Attributes:
        model: ``arch@window``.
        method: ``dense``, ``refine``, ``crops``, ``Grad-CAM``, ``Grad-CAM++``.
        pixel_accuracy: In ``[0, 1]``.
        miou: In ``[0, 1]``.
        cell_accuracy: Top-1 against the class at each window centre (grid methods).
        exact_share: Share of cells evaluated as crops, when the method says (``refine``).
        wall: Median whole-process seconds per mosaic.
        network: Median network seconds per mosaic (the process's own figure).
        start_up: Median seconds of import, model loading and conversion (``heatmap`` only).
        mosaics: Mosaics in the set.
        runs: Timed processes (the median is taken).
        measured: When, and at which load average (1, 5, 15 min), the row was measured.
    """

    model: str
    method: str
    pixel_accuracy: float
    miou: float
    cell_accuracy: float | None
    exact_share: float | None
    wall: float
    network: float
    start_up: float | None
    mosaics: int
    runs: int
    measured: str = ""


@dataclass(frozen=True)
class FidelityRow:
    """Dense against crops for one texture model.

    Attributes:
        arch: torchvision name.
        window: Window side.
        window_accuracy: Held-out window accuracy of the trained model.
        train_seconds: Its training time.
        set_label: Which mosaics (e.g. ``4 x 768²``).
        fidelity: The measurement.
        large: The same on larger mosaics (the image-size check), if measured.
        large_label: Which larger mosaics.
    """

    arch: str
    window: int
    window_accuracy: float
    train_seconds: float
    set_label: str
    fidelity: GridFidelity
    large: GridFidelity | None = None
    large_label: str = ""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def accuracy_table(rows: list[MethodRow]) -> str:
    """Table (a): methods' pixel accuracy, mIoU and time, model by model."""
    lines = [
        "| model | method | pixel acc. % | mIoU % | cell acc. % | exact cells % "
        "| s / mosaic (process) | above dense | network s / mosaic | start-up s | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    dense = {row.model: row for row in rows if row.method == "dense"}
    for row in rows:
        base = dense.get(row.model)
        above = "-" if base is None or row is base else f"{row.wall - base.wall:+.2f}"
        start_up = "-" if row.start_up is None else f"{row.start_up:.1f}"
        lines.append(
            f"| {row.model} | {row.method} | {_pct(row.pixel_accuracy)} | {_pct(row.miou)} "
            f"| {_pct(row.cell_accuracy)} | {_pct(row.exact_share)} | {row.wall:.2f} | {above} "
            f"| {row.network:.2f} | {start_up} | {row.runs} |"
        )
    return "\n".join(lines)


def refine_goals(rows: list[MethodRow]) -> list[str]:
    """Issue 23's goals for ``refine``, one line per model that has it (none without refine).

    Within 1 point of crops on pixel accuracy and mIoU; time above dense at most a third of
    crops' time above dense; ahead of Grad-CAM on accuracy and time.
    """
    by_model: dict[str, dict[str, MethodRow]] = {}
    for row in rows:
        by_model.setdefault(row.model, {})[row.method] = row
    lines = []
    for model, methods in by_model.items():
        refine, crops, dense = methods.get("refine"), methods.get("crops"), methods.get("dense")
        if refine is None or crops is None or dense is None:
            continue
        accuracy_gap = 100 * (crops.pixel_accuracy - refine.pixel_accuracy)
        miou_gap = 100 * (crops.miou - refine.miou)
        crops_above = crops.wall - dense.wall
        share = (refine.wall - dense.wall) / crops_above if crops_above > 0 else float("nan")
        parts = [
            f"pixel accuracy {accuracy_gap:+.1f} pt below crops "
            f"({'met' if accuracy_gap <= 1 else 'missed'})",
            f"mIoU {miou_gap:+.1f} pt below crops ({'met' if miou_gap <= 1 else 'missed'})",
            f"time above dense {share:.2f} of crops' ({'met' if share <= 1 / 3 else 'missed'})",
        ]
        cam = methods.get("Grad-CAM")
        if cam is not None:
            ahead = (
                refine.pixel_accuracy > cam.pixel_accuracy
                and refine.miou > cam.miou
                and refine.wall < cam.wall
            )
            parts.append(
                f"ahead of Grad-CAM on accuracy, mIoU and time: {'yes' if ahead else 'no'}"
            )
        lines.append(f"- **{model}** refine: " + "; ".join(parts))
    return lines


def recommend(agreement: float, refine: bool) -> str:
    """Which method to pick for a measured dense-vs-crops top-1 agreement.

    At 97% and above a dense map is the classifier's answer nearly everywhere; below 85% it is
    another map; between, the doubtful cells are few enough to check or refine.
    """
    if agreement >= 0.97:
        return "dense"
    if agreement >= 0.85:
        return "refine" if refine else "dense + --fidelity check, crops where it matters"
    return "crops" if not refine else "crops (refine where crops is too slow)"


def fidelity_table(rows: list[FidelityRow], refine: bool) -> str:
    """Table (b): dense against crops per model and window size."""
    lines = [
        "| model | SE blocks | window | held-out window acc. % | mosaics | top-1 agreement % "
        "| inside regions % | on boundaries % | at the image border % | interior % "
        "| mean \\|Δp\\| | max \\|Δp\\| "
        "| dense cell acc. % | crops cell acc. % | larger mosaics: agreement % | pick |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        f = row.fidelity
        large = "-" if row.large is None else f"{_pct(row.large.all.top1)} ({row.large_label})"
        lines.append(
            f"| {row.arch} | {'yes' if row.arch in SE_ARCHITECTURES else 'no'} | {row.window} "
            f"| {_pct(row.window_accuracy)} | {row.set_label} | {_pct(f.all.top1)} "
            f"| {_pct(f.inside.top1)} | {_pct(f.boundary.top1)} | {_pct(f.border.top1)} "
            f"| {_pct(f.interior.top1)} "
            f"| {f.all.mean_diff:.3f} | {f.all.diff_max:.3f} | {_pct(f.dense_cells.accuracy)} "
            f"| {_pct(f.crops_cells.accuracy)} | {large} | {recommend(f.all.top1, refine)} |"
        )
    return "\n".join(lines)


def photo_table(rows: list[PhotoFidelity]) -> str:
    """The default model on photos: dense against crops per photo and ``--size``."""
    lines = [
        "| photo | --size | grid | top-1 agreement % | mean \\|Δp\\| | max \\|Δp\\| "
        "| image top-1, dense | image top-1, crops |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        a = row.agreement
        lines.append(
            f"| {row.photo} | {row.size} | {row.grid[0]}x{row.grid[1]} | {_pct(a.top1)} "
            f"| {a.mean_diff:.3f} | {a.diff_max:.3f} | {row.top1_dense} | {row.top1_crops} |"
        )
    return "\n".join(lines)
