"""Image-level classes: multi-scale + flip averaging against the classifier's 224 centre crop.

For each sample photo this prints the top-5 classes of

* the reference: the original classifier on one centre crop (shorter side resized to 256,
  bicubic; centre 224x224; the model's mean/std), as ImageNet validation is usually run;
* one dense pass at ``--size`` (no flip), ranked by each class's peak probability;
* the multi-scale passes (``--scales``, with flips), ranked by ``rank_image`` with max pooling
  (OverFeat) and with mean pooling;
* the averaged map itself: peak over the common grid of softmax(averaged logits).

Run: .venv/bin/python -m benchmarks.studies.multiscale_vs_center_crop [--size 384]
     [--scales 1,1.5,2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from benchmarks.support.common import SAMPLES
from heatmap_cli.grid.pixels import normalize
from heatmap_cli.io import read_image
from heatmap_cli.models import LoadedModel, load_model
from heatmap_cli.pipeline.engine import GridEngine, GridSettings
from heatmap_cli.pipeline.multiscale import parse_scales, score_multiscale
from heatmap_cli.pipeline.ranking import format_ranking, rank_by_peak, rank_image

Ranking = list[tuple[int, float]]


def center_crop_ranking(loaded: LoadedModel, image: Image.Image, top_k: int) -> Ranking:
    """The classifier's own answer: resize shorter side to 256 (bicubic), centre-crop 224."""
    scale = 256 / min(image.size)
    resized = image.resize(
        (round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC
    )
    crop_h, crop_w = loaded.input_size
    left = round((resized.width - crop_w) / 2)
    top = round((resized.height - crop_h) / 2)
    crop = np.asarray(resized.crop((left, top, left + crop_w, top + crop_h)), dtype=np.uint8)
    with torch.inference_mode():
        probs = loaded.model(normalize(crop, loaded.mean, loaded.std)).softmax(1)[0]
    scores, indices = probs.topk(top_k)
    return [(int(i), float(s)) for i, s in zip(indices, scores, strict=True)]


def describe(ranking: Ranking, categories: tuple[str, ...], reference: Ranking) -> str:
    top1_index, top1_score = ranking[0]
    top5 = ", ".join(f"{categories[i]} {s:.2f}" for i, s in ranking)
    shared = len({i for i, _ in ranking} & {i for i, _ in reference})
    same = "yes" if top1_index == reference[0][0] else "no"
    return (
        f"{categories[top1_index]} ({top1_score:.2f}) | {same} | {shared}/{len(reference)} | {top5}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--scales", default="1,1.5,2")
    parser.add_argument("--no-flip", action="store_true")
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args()
    scales, flip, top_k = parse_scales(args.scales), not args.no_flip, args.top_k
    torch.set_grad_enabled(False)

    loaded = load_model()
    engine = GridEngine(loaded, GridSettings(size=args.size))
    categories = loaded.categories
    passes = f"scales {','.join(f'{s:g}' for s in scales)}{' + flip' if flip else ''}"
    print(f"model {loaded.name}, size {args.size}, {passes}, device {engine.device}\n")
    center_crop_ranking(loaded, Image.new("RGB", (256, 256)), top_k)  # warm-up, not timed
    breakdowns: list[str] = []
    print("| photo | method | top-1 | same top-1 as crop | top-5 overlap | top-5 | seconds |")
    print("|---|---|---|---|---|---|---|")
    for photo in sorted(SAMPLES.glob("*.jpg")):
        image = read_image(photo)
        start = time.perf_counter()
        reference = center_crop_ranking(loaded, image, top_k)
        crop_s = time.perf_counter() - start

        start = time.perf_counter()
        single = score_multiscale(engine, image, (1.0,))
        single_s = time.perf_counter() - start
        start = time.perf_counter()
        multi = score_multiscale(engine, image, scales, flip=flip)
        multi_s = time.perf_counter() - start
        peaks = multi.probs.reshape(multi.probs.shape[0], -1).max(axis=1)
        averaged_map = [(i, float(peaks[i])) for i in rank_by_peak(multi.probs, top_k)]

        rows = [
            ("224 centre crop (reference)", reference, crop_s),
            (
                f"dense, 1 pass at {args.size}, max pooling",
                rank_image(single.passes, top_k),
                single_s,
            ),
            (f"{passes}, max pooling", rank_image(multi.passes, top_k, "max"), multi_s),
            (f"{passes}, mean pooling", rank_image(multi.passes, top_k, "mean"), multi_s),
            (f"{passes}, peak of averaged map", averaged_map, multi_s),
        ]
        for method, ranking, seconds in rows:
            print(
                f"| {photo.name} | {method} | {describe(ranking, categories, reference)} "
                f"| {seconds:.2f} |"
            )
        grids = ", ".join(
            f"{p.scale:g}{'f' if p.flip else ''}:{p.geometry.input_size[1]}x"
            f"{p.geometry.input_size[0]}/{p.geometry.shape[0]}x{p.geometry.shape[1]}"
            for p in multi.passes
        )
        print(f"|  | passes (input WxH / grid rows x cols) | {grids} |  |  |  |  |", flush=True)
        for pooling in ("max", "mean"):
            table = format_ranking(multi.passes, categories, top_k, pooling)
            breakdowns.append(f"{photo.name}, {pooling} pooling, per pass:\n{table}")
    print("\n" + "\n\n".join(breakdowns))


if __name__ == "__main__":
    main()
