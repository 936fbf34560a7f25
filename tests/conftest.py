import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=[10**9, -1], ids=["matmul", "conv"])
def head_form(request) -> int:
    """``matmul_max_cells`` for ``convolutionalize``: heads as a matrix product, or as a conv.

    ``windowed_linear`` picks the form by output size; forcing each one keeps both exact.
    """
    return request.param
