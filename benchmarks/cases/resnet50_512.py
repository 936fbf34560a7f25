"""resnet50-512: ResNet-50 on a 512x512 input, one dense pass against a forward pass per window.

ResNet-50 (torchvision architecture, random weights), stride 32: ``dense`` against ``crops``.

Run: .venv/bin/python -m benchmarks.cases.resnet50_512 [--quick] [--markdown] [--repeat N]
"""

from __future__ import annotations

import sys

from benchmarks.support.common import MatmulPeak, convert, random_torchvision
from benchmarks.support.grid_case import GridCase, run_grid_case
from benchmarks.support.harness import Case, Options, run_alone
from benchmarks.support.report import Report


def run(options: Options, peak: MatmulPeak, report: Report) -> None:
    """Times the case."""
    net = convert(random_torchvision("resnet50"))
    case = GridCase(CASE.name, "resnet50", net, (512, 512), (net.stride,))
    run_grid_case(case, options, peak, report)


CASE = Case("resnet50-512", "ResNet-50 at 512, stride 32: dense against crops", run)

if __name__ == "__main__":
    sys.exit(run_alone(CASE))
