import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

# Figures cached on disk by a test run stay in the run's own folder, never in the user's cache;
# set here, at import, so the command's subprocesses inherit it too.
_CACHE = tempfile.mkdtemp(prefix="heatmap-test-cache-")
os.environ["HEATMAP_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=[10**9, -1], ids=["matmul", "conv"])
def head_form(request) -> int:
    """``matmul_max_cells`` for ``convolutionalize``: heads as a matrix product, or as a conv.

    ``windowed_linear`` picks the form by output size; forcing each one keeps both exact.
    """
    return request.param


# ---------------------------------------------------------------------------------------------
# Application fixtures: the pretrained default model, and toy models served by a model source
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pretrained():
    """The offline default model, loaded once for the whole session.

    Tests may run it (and engines may lay it out channels_last), but must not change its weights.
    """
    from heatmap_cli.models import load_model

    return load_model()


@pytest.fixture
def serve_model():
    """Registers model sources that serve ready-made models by name, for the test's duration.

    ``serve_model(name, build)`` makes ``load_model(name)`` (and ``--model name``) return
    ``build()``; it returns the list of ``(name, weights)`` loads, which grows on every load.
    """
    from heatmap_cli.models import ModelSource, register_source, unregister_source

    families: list[str] = []

    def serve(name, build):
        loads = []

        class Served(ModelSource):
            family = f"test:{name}"

            def claims(self, key):
                return key == name

            def load(self, key, request):
                loads.append((key, request.weights))
                return build()

        register_source(Served())
        families.append(Served.family)
        return loads

    yield serve
    for family in families:
        unregister_source(family)


@pytest.fixture
def crashing_open(monkeypatch):
    """Opening a file named ``crash.*`` raises an error no one planned for (not an OSError)."""
    real_open = Path.open

    def crashing(self, *args, **kwargs):
        if self.name.startswith("crash."):
            raise RuntimeError("decoder crashed")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", crashing)


@pytest.fixture
def interrupt_on_commit(monkeypatch: pytest.MonkeyPatch):
    """``interrupt_on_commit(name)``: Ctrl-C just before a file of that name is committed.

    The writers fill a temporary file and rename it over the target with ``os.replace``; the
    interruption comes at that rename, when the temporary is complete but not yet the output.
    ``interrupt_on_commit(None)`` stops interrupting.
    """
    real_replace = os.replace
    target: list[str | None] = [None]

    def replace(source: object, destination: object) -> None:
        if Path(str(destination)).name == target[0]:
            raise KeyboardInterrupt
        real_replace(source, destination)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)

    def interrupt(name: str | None) -> None:
        target[0] = name

    return interrupt


@pytest.fixture
def tiny(serve_model) -> list[tuple[str, Path | None]]:
    """Serves the tiny padding-free network as the model ``tiny`` (``tests.helpers.cli.run_tiny``).

    Returns the list of loads, which grows on every load.
    """
    from tests.helpers.cli import tiny_model

    return serve_model("tiny", tiny_model)

