"""Whole processes, timed: the ``heatmap`` command over a mosaic folder, and the peers.

Each run is one fresh process over a whole folder of mosaics, as a user runs it, so its wall
time includes start-up, reading, the network and writing (:attr:`ProcessRun.wall`). The
secondary, network-only figure comes from the process itself: the ``heatmap`` command's
``network`` stage (``HEATMAP_PROFILE=1``, :mod:`heatmap_cli.pipeline.profiling`), the peers'
time inside their CAM calls.

Grid methods are read from the library's registry (:func:`grid_methods`), so a method added
there (``refine``) is run and tabled with no change here. ``MOSAICS_HEATMAP`` (the path of
another checkout's ``heatmap``) times that command instead, with that checkout's methods.
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
    "HEATMAP_ENV",
    "HERE",
    "PEERS",
    "ProcessRun",
    "command_methods",
    "grid_methods",
    "heatmap_command",
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
    """The grid methods to table: dense, refine (once registered), crops.

    From this checkout's registry, or from that of the command ``$MOSAICS_HEATMAP`` names.
    """
    if os.environ.get(HEATMAP_ENV):
        return command_methods()
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


HEATMAP_ENV = "MOSAICS_HEATMAP"
"""Names the ``heatmap`` executable to time (another checkout's, for before/after figures)."""


def heatmap_command() -> list[str]:
    """The ``heatmap`` command timed: ``$MOSAICS_HEATMAP``, else this interpreter's."""
    chosen = os.environ.get(HEATMAP_ENV)
    if chosen:
        return [chosen]
    script = Path(sys.executable).parent / "heatmap"
    return [str(script)] if script.exists() else [sys.executable, "-m", "heatmap_cli"]


def _help() -> str:
    return subprocess.run(
        [*heatmap_command(), "--help"], capture_output=True, text=True, check=True
    ).stdout


def command_methods() -> list[str]:
    """The methods of the accuracy table that the timed command's checkout registers.

    Asked of the interpreter beside the command (``bin/python`` next to ``bin/heatmap``), so
    ``$MOSAICS_HEATMAP`` can name another checkout whose registry this process cannot import.
    """
    python = Path(heatmap_command()[0]).parent / "python"
    if not python.exists():
        python = Path(sys.executable)
    names = subprocess.run(
        # -I: not this folder's heatmap_cli (the current directory) but the venv's own.
        [str(python), "-I", "-c", "from heatmap_cli.grid import method_names as m; print(*m())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [name for name in _WANTED if name in names]


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
        *heatmap_command(),
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
    if "--fidelity" in _help():
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
