"""Whole processes, timed: the ``heatmap`` command over a mosaic folder, and the peers.

Each run is one fresh process over a whole folder of mosaics, as a user runs it, so its wall
time includes start-up, reading, the network and writing (:attr:`ProcessRun.wall`). The
secondary, network-only figure comes from the process itself: the ``heatmap`` command's
``network`` stage (``HEATMAP_PROFILE=1``, :mod:`heatmap_cli.pipeline.profiling`), the peers'
time inside their CAM calls.

Grid methods are read from the library's registry (:func:`grid_methods`), so a method added
there (``refine``) is run and tabled with no change here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .mosaics import MosaicSet
from .training import MEAN, STD, TrainedModel

__all__ = [
    "HERE",
    "PEERS",
    "ProcessRun",
    "grid_methods",
    "peer_python",
    "run_heatmap",
    "run_peer",
]

HERE = Path(__file__).resolve().parent
PEERS = ("gradcam", "gradcam++")
"""The peers, as ``peer_cam.py --method`` names them."""

_WANTED = ("dense", "refine", "crops")
"""The grid methods of the accuracy table, in table order, where the registry has them."""


def grid_methods() -> list[str]:
    """The grid methods to table: dense, refine (once registered), crops."""
    from heatmap_cli.grid import method_names

    available = set(method_names())
    return [name for name in _WANTED if name in available]


@dataclass(frozen=True)
class ProcessRun:
    """One whole process over a folder.

    Attributes:
        wall: Wall seconds from launch to exit.
        network: Seconds the process itself reports for its network (0 when it says none).
        stages: The ``heatmap`` command's stage seconds (empty for peers).
    """

    wall: float
    network: float
    stages: dict[str, float]


def _heatmap_command() -> list[str]:
    script = Path(sys.executable).parent / "heatmap"
    return [str(script)] if script.exists() else [sys.executable, "-m", "heatmap_cli"]


def _has_option(option: str) -> bool:
    """Whether this checkout's ``heatmap`` knows ``option`` (``--fidelity`` comes with issue 23)."""
    help_text = subprocess.run(
        [*_heatmap_command(), "--help"], capture_output=True, text=True, check=True
    ).stdout
    return option in help_text


def _stages(stderr: str) -> dict[str, float]:
    match = re.search(r"stages \(s\): (.*)", stderr)
    if match is None:
        return {}
    stages = {}
    for part in match.group(1).split(","):
        name, _, seconds = part.strip().rpartition(" ")
        stages[name] = float(seconds)
    return stages


def _environment(threads: int | None) -> dict[str, str]:
    """The child's environment: ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set when ``threads``."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_heatmap(
    mosaics: MosaicSet,
    model: TrainedModel,
    method: str,
    out: Path,
    extra: tuple[str, ...] = (),
    threads: int | None = None,
) -> ProcessRun:
    """One ``heatmap`` process over the set's images with a texture model.

    The mosaics are scored at their own pixels (``--size native``: their sides are already
    ``window + 32 k``), every class kept in the npz, no overlays (``--outputs npz,json``), and,
    where the option exists, ``--fidelity 0`` so that the method alone is timed.

    Args:
        mosaics: The set (its ``images`` folder is the input).
        model: The trained model (architecture name and weights file).
        method: A grid method name.
        out: Output folder (emptied first by the caller).
        extra: More options.
        threads: CPU threads of the process (``OMP_NUM_THREADS``); None: torch's default.

    Returns:
        The run's times.

    Raises:
        RuntimeError: If the command fails (its stderr in the message).
    """
    command = [
        *_heatmap_command(),
        str(mosaics.images),
        "--model", model.recipe.arch,
        "--weights", str(model.weights),
        "--labels", str(mosaics.root / "classes.txt"),
        "--input-size", str(model.recipe.window),
        "--mean", ",".join(f"{v:g}" for v in MEAN),
        "--std", ",".join(f"{v:g}" for v in STD),
        "--size", "native",
        "--method", method,
        "--outputs", "npz,json",
        "--out", str(out),
        "--quiet",
        *extra,
    ]  # fmt: skip
    if _has_option("--fidelity"):
        command += ["--fidelity", "0"]
    env = {**_environment(threads), "HEATMAP_PROFILE": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"heatmap --method {method} failed:\n{done.stderr[-2000:]}")
    stages = _stages(done.stderr)
    return ProcessRun(wall, stages.get("network", 0.0), stages)


def peer_python() -> Path:
    """The peers' interpreter: ``MOSAICS_PEER_VENV`` or ``benchmarks/studies/mosaics/.venv``."""
    venv = Path(os.environ.get("MOSAICS_PEER_VENV", HERE / ".venv"))
    return venv / "bin" / "python"


def run_peer(
    peer: str, mosaics: MosaicSet, model: TrainedModel, out: Path, threads: int | None = None
) -> ProcessRun:
    """One peer process (``peer_cam.py`` in the peers' venv) over the set's images.

    ``threads`` as for :func:`run_heatmap`.

    Raises:
        FileNotFoundError: If the peers' venv is missing (run ``setup_peers.sh``).
        RuntimeError: If the peer fails.
    """
    python = peer_python()
    if not python.exists():
        raise FileNotFoundError(
            f"no peer environment at {python.parent.parent}: run {HERE / 'setup_peers.sh'}"
        )
    command = [
        str(python), str(HERE / "peer_cam.py"),
        "--method", peer,
        "--arch", model.recipe.arch,
        "--weights", str(model.weights),
        "--classes", str(len(mosaics.names)),
        "--images", str(mosaics.images),
        "--out", str(out),
        "--mean", ",".join(f"{v:g}" for v in MEAN),
        "--std", ",".join(f"{v:g}" for v in STD),
    ]  # fmt: skip
    start = time.perf_counter()
    env = _environment(threads)
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{peer} failed:\n{done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return ProcessRun(wall, float(summary["network"]), {})
