"""lite0-384: the default model on a 384x384 input, every method against crops.

EfficientNet-Lite0 with its shipped weights (``load_model()``), stride 32 (``dense``) and 16
(the finer-stride methods), each against ``crops`` at the same stride.

Run: .venv/bin/python -m benchmarks.cases.lite0_384 [--quick] [--markdown] [--repeat N]
"""

from __future__ import annotations

import sys

from benchmarks.support.common import MatmulPeak, convert
from benchmarks.support.grid_case import GridCase, run_grid_case
from benchmarks.support.harness import Case, Options, run_alone
from benchmarks.support.report import Report
from heatmap_cli.models import load_model


def run(options: Options, peak: MatmulPeak, report: Report) -> None:
    """Times the case."""
    loaded = load_model()
    net = convert(loaded.model, loaded.input_size)
    strides = (net.stride, net.stride // 2)
    run_grid_case(GridCase(CASE.name, loaded.name, net, (384, 384), strides), options, peak, report)


CASE = Case("lite0-384", "the default model at 384: dense and finer strides against crops", run)

if __name__ == "__main__":
    sys.exit(run_alone(CASE))
