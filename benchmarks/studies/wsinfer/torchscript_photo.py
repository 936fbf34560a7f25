"""A TorchScript file on a 1024x1024 photo: before (crops), after (converted, dense), and Python.

Three whole ``heatmap`` processes score the same photo at ``--size native`` (a 26 x 26 grid of
224-pixel windows at stride 32) with the same 2-class ResNet-18 (seeded random weights):

* ``before``: another checkout's console script (``--before``, default ``/work/main``'s), where a
  TorchScript file cannot be traced and runs window by window (crops);
* ``after``: this checkout's, where torch.export's converter makes the TorchScript file a graph
  that runs dense (conversion time included);
* ``python``: this checkout's on the same weights as ``--model resnet18 --weights FILE``: the
  converted copy the TorchScript file is measured against.

CPU time (user + system, children included) is the figure to compare on a shared machine; the
grids of ``after`` and ``python`` are compared too (they must agree to float rounding).

Run: python torchscript_photo.py [--before /work/main/.venv/bin/heatmap] [--work DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

from measure import run_measured

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SIDE = 1024


def make_inputs(work: Path) -> tuple[Path, Path, Path]:
    """The photo, the TorchScript file and the same weights as a state dict."""
    import torch
    import torchvision
    from PIL import Image

    work.mkdir(parents=True, exist_ok=True)
    photo = work / "photo-1024.png"
    source = Image.open(REPO / "sample_images" / "coffee.jpg").convert("RGB")
    source.resize((SIDE, SIDE), Image.Resampling.BICUBIC).save(photo)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=2).eval()
    script, weights = work / "resnet18.pt", work / "resnet18-weights.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), str(script))
    torch.save(model.state_dict(), weights)
    return photo, script, weights


def logits(out: Path) -> object:
    import numpy as np

    with np.load(out / "photo-1024.npz") as data:
        return data["logits"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, default=Path("/work/main/.venv/bin/heatmap"))
    parser.add_argument("--after", type=Path, default=REPO / ".venv" / "bin" / "heatmap")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "torchscript-photo")
    args = parser.parse_args()
    photo, script, weights = make_inputs(args.work)
    common = ["--size", "native", "--input-size", "224", "--device", "cpu"]
    runs = {
        "before (TorchScript, crops)": (args.before, ["--model", script]),
        "after (TorchScript converted, dense)": (args.after, ["--model", script]),
        "python (resnet18 + weights, dense)": (
            args.after, ["--model", "resnet18", "--weights", weights],
        ),
    }  # fmt: skip
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    cpu = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model" in line)
    record: dict[str, object] = {"cpu": cpu, "load_before": os.getloadavg(), "runs": {}}
    outs = {}
    for name, (heatmap, model_args) in runs.items():
        out = args.work / name.split()[0]
        command = [heatmap, photo, *model_args, *common, "--out", out]
        log = args.work / f"{name.split()[0]}.log"
        record["runs"][name] = run_measured(command, log=log)  # type: ignore[index]
        outs[name.split()[0]] = out
        print(name, record["runs"][name], file=sys.stderr)  # type: ignore[index]
    import numpy as np

    difference = np.abs(logits(outs["after"]) - logits(outs["python"])).max()
    record["after_vs_python_max_abs_logit_diff"] = float(difference)
    record["load_after"] = os.getloadavg()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    saved = HERE / "results" / f"torchscript-photo-{stamp}.json"
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
