"""``--ray``: the batch on a Ray cluster, as Ray Data's batch inference does it.

The driver (the ``heatmap`` process) finds the inputs as any run does and ships their *paths*
(``ray.data.from_items``; bytes of the file system's own names, so names that are not UTF-8
travel intact), never decoded photos. ``map_batches`` hands them, ``batch_size`` at a time, to a
pool of actors (:class:`ImageWorker`, ``ActorPoolStrategy``): each actor converts the model
once, then runs the same per-image path as a plain run (``heatmap_cli.cli.batch.ImageJob.run``:
``--skip-existing``'s check, read, score, render, write with the json last) on the shared
file system, working in the command's folder (so relative paths name the same files), and
returns one small json per image (its manifest row and its lines). The driver
reports them as they come (``Batch.report``), so the tally, the lines, the manifest and the
exit status are the plain run's.

Faults: a broken image is its own failed row. An actor whose process dies ends the pool's run;
the driver then gives the images not yet reported to a new pool, at most :data:`MAX_RESTARTS`
times (an image that kills every actor ends the run instead of retrying forever); writes are
atomic and idempotent, so images written twice are simply complete. Ray's own actor restarts are
off (``max_restarts=0``): Ray Data keeps an actor's constructor arguments in the object store,
where a restarted actor may not find them any more, and Ray says so on every run that allows
restarts (``core_worker.cc ... max_restarts > 0``). The test-only variable
``HEATMAP_TEST_KILL_ACTOR_ONCE=FILE`` makes the first actor to claim ``FILE`` kill its own
process on its first batch. Ctrl-C leaves no partial file (every file is moved into place
whole); the private folders of killed actors are removed by the next run.

Lifetime: a local Ray that the command starts ends with it, even when the command is killed
(SIGKILL, the OOM killer): ``heatmap_cli.cli.ray_keeper`` kills every process of it that is
left, and no actor writes after the driver is gone. On a cluster the command connects to, Ray
kills a dead driver's actors itself once it notices.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import socket
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from heatmap_cli.cli.batch import Batch, ImageJob, Processed
from heatmap_cli.cli.params import SETTING_FLAGS
from heatmap_cli.cli.ray_keeper import exit_with, start_keeper
from heatmap_cli.errors import ClusterError, InvalidOptionError, command_line_names, first_line
from heatmap_cli.io import ImageInput

if TYPE_CHECKING:
    from ray.data import Dataset

__all__ = [
    "CONNECT_TIMEOUT_S",
    "KILL_ACTOR_ONCE",
    "MAX_RESTARTS",
    "ImageWorker",
    "RaySettings",
    "check_ray",
    "run_on_ray",
]

KILL_ACTOR_ONCE = "HEATMAP_TEST_KILL_ACTOR_ONCE"
"""Test-only: a file path; the first actor that creates it kills its own process, once."""

MAX_RESTARTS = 3
"""How often the images not finished are given to a new pool after an actor died."""

CONNECT_TIMEOUT_S = 10.0
"""How long a named cluster may take to accept a connection."""


@dataclass(frozen=True)
class RaySettings:
    """Where and how ``--ray`` runs.

    Attributes:
        address: The cluster (``--ray-address``); None: ``RAY_ADDRESS``, else a local Ray.
        workers: Actors in the pool (``--workers``); None: one per GPU of the cluster for a
            CUDA ``device``, else one per CPU but one (the driver's).
        device: ``--device``: ``cuda`` or ``auto`` on a cluster with GPUs gives GPU actors.
        batch_size: Images per actor call (``--batch-size``: they are scored together).
    """

    address: str | None = None
    workers: int | None = None
    device: str = "auto"
    batch_size: int = 8


def check_ray(device: str) -> None:
    """Refuses ``--ray`` when Ray Data is not installed, or with a numbered GPU.

    Raises:
        InvalidOptionError: With the reason and what to do.
    """
    try:
        import ray.data  # noqa: F401
    except ImportError as error:
        raise InvalidOptionError(
            f"needs Ray Data ({error}); install it with: pip install 'heatmap-cli[ray]'"
        ) from None
    if device.startswith("cuda:"):
        raise InvalidOptionError(
            f"--device {device}: Ray gives each actor its own GPU; use --device cuda"
        )


def run_on_ray(
    batch: Batch, items: list[ImageInput], build: Callable[[], ImageJob], settings: RaySettings
) -> str:
    """Runs the batch's images on a pool of Ray actors; reports each through ``batch``.

    Connects to the cluster (or starts a local Ray, shut down at the end) unless Ray is already
    initialized in this process, as a test's or a notebook's is.

    Args:
        batch: Counts, records and reports every image (its ``job`` says where outputs go).
        items: The images found.
        build: Makes an actor's :class:`~heatmap_cli.cli.batch.ImageJob` (model converted there);
            pickled, so a module-level function or a ``functools.partial`` of one.
        settings: Cluster, pool size and device.

    Returns:
        Where the images ran, for the summary line (``"Ray: 2 cpu actors"``).

    Raises:
        ClusterError: The cluster cannot be reached, or its actors kept dying.
    """
    import ray
    import ray.data.exceptions

    started_here = not ray.is_initialized()
    keeper = start_keeper() if started_here else None  # before Ray starts any process
    try:
        if started_here:
            _connect(settings.address)
        gpus = _gpus_per_actor(settings.device)
        pool = _pool_size(settings, gpus)
        if settings.workers is not None and pool < settings.workers:
            batch.console.say(
                f"Note: --workers {settings.workers}: the cluster has room for "
                f"{_actors(pool, gpus)} now; using that"
            )
        # actors of a local Ray started here end the moment the command does
        command = os.getpid() if started_here and _local(settings) else None
        dataset_of = functools.partial(
            _dataset, build=build, batch=batch, settings=settings, pool=pool, gpus=gpus,
            command=command,
        )  # fmt: skip
        batch.report_all(_processed(items, dataset_of, batch), len(items))
    except (ray.exceptions.RayError, ray.data.exceptions.SystemException, ConnectionError) as error:
        if batch.debug:
            raise
        raise ClusterError(f"Ray: {first_line(error)}") from error
    finally:
        if started_here:
            ray.shutdown()
        if keeper is not None:
            keeper.stop()
    return f"Ray: {pool} {'gpu' if gpus else 'cpu'} actor{'s' if pool > 1 else ''}"


class ImageWorker:
    """One actor of the pool: converts the model once, then does batches of images.

    Args:
        build: Makes the job (model, rendering, output folder).
        skip_existing: Leave out images whose outputs are complete for these settings.
        debug: Let an image's exception escape (Ray then carries its traceback).
        cwd: The command's working folder: the actor works there, so that relative paths of
            inputs, ``--out`` and model files name the same files on every node.
        kill_once: Test-only file path (:data:`KILL_ACTOR_ONCE`).
        command: The command's process id when the actor runs on a local Ray it started: the
            actor ends the moment the command does (``ray_keeper.exit_with``).
    """

    def __init__(
        self,
        build: Callable[[], ImageJob],
        skip_existing: bool,
        debug: bool,
        cwd: str | None = None,
        kill_once: str | None = None,
        command: int | None = None,
    ) -> None:
        if command is not None:
            exit_with(command)
        if cwd is not None:  # relative paths of the command line mean what they meant there
            try:
                os.chdir(cwd)
            except OSError as error:
                raise ClusterError(
                    f"{cwd} (the command's folder) is not reachable on this node: run it in "
                    "a folder every node shares, or give absolute paths"
                ) from error
        with command_line_names(SETTING_FLAGS):
            self.job = build()
        self.skip_existing = skip_existing
        self.debug = debug
        self.kill_once = kill_once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Does a batch of images: ``path`` and ``stem`` (file system bytes) in, one json out.

        Args:
            batch: Columns ``path`` and ``stem``, ``(n,)`` arrays of ``bytes``.

        Returns:
            Column ``processed``: ``(n,)`` json strings of each image's
            :class:`~heatmap_cli.cli.batch.Processed` (the order the images finished in).
        """
        self._kill_once()
        items = [
            ImageInput(Path(os.fsdecode(path)), Path(os.fsdecode(stem)))
            for path, stem in zip(batch["path"], batch["stem"], strict=True)
        ]
        with command_line_names(SETTING_FLAGS):  # its messages name the command's options
            done = self.job.run(items, skip_existing=self.skip_existing, debug=self.debug)
        return {"processed": np.array([json.dumps(p.to_json()) for p in done], dtype=object)}

    def _kill_once(self) -> None:
        if self.kill_once is None:
            return
        try:
            os.close(os.open(self.kill_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def _local(settings: RaySettings) -> bool:
    """Whether the actors run on a local Ray this command starts (on this machine)."""
    return settings.address is None and not os.environ.get("RAY_ADDRESS")


def _connect(address: str | None) -> None:
    """``ray.init``: ``address``, else ``RAY_ADDRESS``, else a new local Ray; quietly.

    Raises:
        ClusterError: The named cluster does not answer within ``CONNECT_TIMEOUT_S`` (Ray
            itself would retry for minutes).
    """
    import ray

    _check_reachable(address or os.environ.get("RAY_ADDRESS"))
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=False,  # actors report through their rows, not their stderr
        logging_level=logging.ERROR,  # not Ray's start-up notices in the command's output
    )


def _check_reachable(address: str | None) -> None:
    """Refuses a ``host:port`` (or ``ray://host:port``) address that accepts no connection."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # not an address of that form: Ray says what is wrong with it
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ClusterError(
            f"Ray: cannot reach the cluster at {address}: {error.strerror or error}"
        ) from error


def _actors(count: int, gpus: int) -> str:
    """``"2 cpu actors"``, ``"1 gpu actor"``."""
    return f"{count} {'gpu' if gpus else 'cpu'} actor{'s' if count > 1 else ''}"


def _gpus_per_actor(device: str) -> int:
    """1 for CUDA actors (``--device cuda``, or ``auto`` on a cluster with GPUs), else 0."""
    import ray

    if device == "cuda":
        return 1
    return int(device == "auto" and ray.cluster_resources().get("GPU", 0) >= 1)


def _pool_size(settings: RaySettings, gpus: int) -> int:
    """``--workers``, or one actor per GPU (GPU actors) or per CPU but one (CPU actors)."""
    import ray

    resources = ray.cluster_resources()
    room = int(resources.get("GPU" if gpus else "CPU", 0))  # actors that fit at once
    if room < 1:
        raise ClusterError(f"Ray: the cluster has no {'GPU' if gpus else 'CPU'} for an actor")
    if settings.workers is not None:
        return min(settings.workers, room)
    return room if gpus else max(1, room - 1)


def _dataset(
    items: list[ImageInput],
    *,
    build: Callable[[], ImageJob],
    batch: Batch,
    settings: RaySettings,
    pool: int,
    gpus: int,
    command: int | None = None,
) -> Dataset:
    """The paths, mapped by a pool of :class:`ImageWorker` actors (ended with ``command``)."""
    import ray.data

    # Its execution notices, and its tracebacks of failures the command says in one line (an
    # actor's death, retried by _processed; any other as a ClusterError), unless --debug.
    logging.getLogger("ray.data").setLevel(logging.ERROR if batch.debug else logging.CRITICAL)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the command's own bar counts images
    context.print_on_execution_start = False
    rows = [{"path": os.fsencode(item.path), "stem": os.fsencode(item.stem)} for item in items]
    resources = {"num_gpus": gpus} if gpus else {"num_cpus": 1}
    with warnings.catch_warnings():
        # Ray Data's own defaults restart actors and retry their batches forever, which needs
        # their constructor arguments kept in the object store (Ray warns about it on every
        # run); the command retries itself (_processed). Ray 2.60 deprecates setting this
        # through map_batches, and still honours it.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return ray.data.from_items(rows).map_batches(
            ImageWorker,
            fn_constructor_args=(build, batch.skip_existing, batch.debug),
            fn_constructor_kwargs={
                "cwd": os.getcwd(),
                "kill_once": os.environ.get(KILL_ACTOR_ONCE),
                "command": command,
            },
            batch_size=settings.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool),
            max_restarts=0,
            **resources,
        )


def _processed(
    items: list[ImageInput], dataset_of: Callable[[list[ImageInput]], Dataset], batch: Batch
) -> Iterator[Processed]:
    """Each image's :class:`~heatmap_cli.cli.batch.Processed`, as the actors finish them.

    When an actor dies (its process killed, out of memory), the pool's run ends; the images not
    reported yet go to a new pool, at most :data:`MAX_RESTARTS` times, each time said in one
    line.

    Args:
        items: The images.
        dataset_of: The images mapped by a new pool of actors.
        batch: Where the line about a retry is said.

    Raises:
        RayActorError: Actors died more than :data:`MAX_RESTARTS` times.
    """
    import ray.exceptions

    remaining = {str(item.stem): item for item in items}
    for attempt in range(MAX_RESTARTS + 1):
        try:
            for row in dataset_of(list(remaining.values())).iter_rows():
                processed = Processed.from_json(json.loads(row["processed"]))
                remaining.pop(processed.row.key, None)
                yield processed
            return
        except ray.exceptions.RayActorError as error:
            if not remaining:
                return
            if attempt == MAX_RESTARTS:
                raise
            batch.console.say(
                f"Note: Ray: an actor died ({first_line(error)}); the {len(remaining)} "
                "image(s) not finished go to new actors"
            )
