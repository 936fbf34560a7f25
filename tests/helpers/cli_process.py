"""The ``heatmap`` command in a child process, serving test models.

Usage: ``python -m tests.helpers.cli_process ARGS``.

For what only a real process shows (a memory cap, pipes, closed descriptors, SIGINT). Run from
the repository root; it serves two models:

* ``tiny``: a seeded padding-free network (``tests.helpers.nets``), ready at once;
* ``slow``: the same, but loading first writes the file named by ``$HEATMAP_TEST_LOADING`` and
  then waits, so a test can press Ctrl-C during model loading. With ``$HEATMAP_TEST_STUBBORN``
  naming a file too, the first Ctrl-C is caught, that file is written and it waits again (a slow
  cleanup), so that a second Ctrl-C comes while the first is being handled.

``$HEATMAP_TEST_MEMORY_GIB``: cap the address space to that many GiB above what the process
holds once started (``resource.setrlimit``), so that a large allocation fails with MemoryError
instead of the machine's OOM killer taking the test run.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

from heatmap_cli.models import LoadedModel, ModelSource, register_source
from tests.helpers.nets import WINDOW, VolumeHeadNet, seeded
from tests.helpers.toys import as_loaded


def _tiny() -> LoadedModel:
    return as_loaded(seeded(VolumeHeadNet), window=WINDOW)


def _slow() -> LoadedModel:
    Path(os.environ["HEATMAP_TEST_LOADING"]).write_text("loading", encoding="utf-8")
    try:
        time.sleep(120)
    except KeyboardInterrupt:
        stubborn = os.environ.get("HEATMAP_TEST_STUBBORN")
        if not stubborn:
            raise
        Path(stubborn).write_text("cleaning up", encoding="utf-8")
        time.sleep(120)
        raise
    return _tiny()


class _TestModels(ModelSource):
    family = "test:process"

    def claims(self, key: str) -> bool:
        return key in ("tiny", "slow")

    def load(self, key: str, request: object) -> LoadedModel:
        return _tiny() if key == "tiny" else _slow()


def _cap_memory(gib: float) -> None:
    import heatmap_cli.cli.batch  # noqa: F401  (torch and every module, counted in the base)

    with open("/proc/self/status", encoding="ascii") as status:
        size_kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    cap = size_kib * 1024 + int(gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def main() -> None:
    register_source(_TestModels())
    if "HEATMAP_TEST_MEMORY_GIB" in os.environ:
        _cap_memory(float(os.environ["HEATMAP_TEST_MEMORY_GIB"]))
    from heatmap_cli.cli.options import run

    run(sys.argv[1:])


if __name__ == "__main__":
    main()
