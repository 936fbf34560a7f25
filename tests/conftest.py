import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the shared test networks in tests/nets.py


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=["matmul", "conv"])
def head_form(request, monkeypatch):
    """Runs a test once with converted heads computed as a matrix product, once as a conv.

    ``windowed_linear`` picks the form by output size; forcing each one here keeps both exact.
    """
    from heatmap_cli import surgery

    limit = 10**9 if request.param == "matmul" else -1
    monkeypatch.setattr(surgery, "MATMUL_HEAD_MAX_CELLS", limit)
    return request.param
