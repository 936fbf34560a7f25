"""Multi-scale and flip averaging: plain-result identity, mirroring, localization, ranking."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from heatmap_cli.errors import GeometryError, InvalidOptionError
from heatmap_cli.grid.geometry import GridGeometry
from heatmap_cli.pipeline.activations import softmax
from heatmap_cli.pipeline.engine import GridEngine, GridSettings
from heatmap_cli.pipeline.multiscale import (
    PassAverage,
    multiscale_grid,
    parse_scales,
    resample_grid,
    score_multiscale,
)
from heatmap_cli.pipeline.preprocess import plan_geometry, resize_for_grid
from heatmap_cli.pipeline.ranking import (
    describe_ranking,
    format_ranking,
    image_scores,
    rank_by_peak,
    rank_image,
)
from tests.helpers.nets import WINDOW, VolumeHeadNet, seeded
from tests.helpers.toys import as_loaded

METHODS = [("dense", None), ("dilate", 4), ("stitch", 4), ("crops", 8)]


def engine_for(
    net: nn.Module,
    window: tuple[int, int],
    *,
    size: int,
    method: str = "auto",
    stride: int | None = None,
    classes: int = 10,
) -> GridEngine:
    categories = [f"class {i}" for i in range(classes)]
    loaded = as_loaded(net, window=window, categories=categories, interpolation="bicubic")
    settings = GridSettings(size=size, stride=stride, method=method, device="cpu")
    return GridEngine(loaded, settings)


@functools.cache
def volume_engine(method: str = "auto", stride: int | None = None) -> GridEngine:
    """Converting is the slow part; the engine holds no per-image state, so tests share it."""
    return engine_for(seeded(VolumeHeadNet), WINDOW, size=60, method=method, stride=stride)


def random_photo(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def mirrored(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(np.asarray(image)[:, ::-1]))


@pytest.mark.parametrize(("method", "stride"), METHODS)
def test_single_scale_without_flip_is_the_plain_result(method, stride):
    engine = volume_engine(method, stride)
    image = random_photo(70, 95)
    geometry = engine.plan((image.height, image.width))
    pixels = resize_for_grid(image, geometry.input_size, engine.loaded.interpolation)
    plain = engine.score(pixels[None])[0].numpy()

    result = score_multiscale(engine, image, (1,), flip=False)

    assert result.geometry == geometry
    assert result.logits.dtype == np.float32
    assert np.array_equal(result.logits, plain)  # bitwise: no resampling, no averaging
    assert np.array_equal(result.probs, softmax(plain))
    probs = softmax(plain)
    peaks = probs.reshape(probs.shape[0], -1).max(axis=1)
    assert [i for i, _ in rank_image(result.passes, 4)] == rank_by_peak(probs, 4)
    assert [s for _, s in rank_image(result.passes, 4)] == [
        float(peaks[i]) for i in rank_by_peak(probs, 4)
    ]


@pytest.mark.parametrize(("method", "stride"), METHODS)
def test_flip_pass_is_the_mirror_of_the_mirrored_image(method, stride):
    engine = volume_engine(method, stride)
    image = random_photo(70, 95, seed=1)
    with_flip = score_multiscale(engine, image, (1, 1.5), flip=True, keep_pass_logits=True)
    of_mirror = score_multiscale(
        engine, mirrored(image), (1, 1.5), flip=False, keep_pass_logits=True
    )

    assert [(p.scale, p.flip) for p in with_flip.passes] == [
        (1.0, False),
        (1.0, True),
        (1.5, False),
        (1.5, True),
    ]
    for flipped, plain in zip(with_flip.passes[1::2], of_mirror.passes, strict=True):
        assert flipped.geometry == plain.geometry
        # The network is not mirror-symmetric, so this only holds if the grid is mirrored back.
        np.testing.assert_allclose(flipped.logits, plain.logits[:, :, ::-1], rtol=1e-5, atol=1e-5)
        assert not np.allclose(flipped.logits, plain.logits, atol=1e-3)


def window_means(window: tuple[int, int], stride: int):
    """A scorer whose 'logits' are each window's channel means: unchanged by mirroring."""

    def score(pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(pixels)).permute(0, 3, 1, 2).double()
        return F.avg_pool2d(x, window, stride=stride).float()

    return score


def planner(size: int, window: tuple[int, int], stride: int):
    def plan(original_size: tuple[int, int], scale: float) -> GridGeometry:
        return plan_geometry(
            original_size, shorter_side=round(size * scale), window=window, stride=stride
        )

    return plan


@pytest.mark.parametrize("stride", [8, 5, 3])
def test_mirrored_grid_lands_exactly_on_the_same_geometry(stride):
    # Mirror-invariant window scores: if column j of the flipped grid is column k - j of the
    # plain one, the mirrored-back flip pass equals the plain pass.
    window = (44, 36)
    result = multiscale_grid(
        random_photo(61, 97, seed=2),
        score=window_means(window, stride),
        plan=planner(50, window, stride),
        interpolation="bilinear",
        scales=(1, 1.3, 2),
        flip=True,
        keep_pass_logits=True,
    )
    for plain, flipped in zip(result.passes[::2], result.passes[1::2], strict=True):
        assert plain.geometry == flipped.geometry
        assert not np.allclose(plain.logits, plain.logits[:, :, ::-1])
        np.testing.assert_allclose(flipped.logits, plain.logits, rtol=1e-6)
        xs = plain.geometry.centers()[0, :, 0]
        np.testing.assert_allclose(plain.geometry.original_size[1] - xs[::-1], xs, atol=1e-3)


def red_square_net() -> nn.Module:
    """Window 40, stride 8: class 0 scores redness, weighted towards the window's centre."""
    net = nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(3 * 5 * 5, 2))
    # Small weights keep the probabilities far from saturating to ties at 1.0.
    tent = torch.tensor([1.0, 2.0, 3.0, 2.0, 1.0]) / 30
    redness = torch.tensor([1.0, -0.5, -0.5])  # R - (G + B) / 2, in normalized units
    with torch.no_grad():
        net[2].weight.zero_()
        net[2].bias.zero_()
        net[2].weight[0] = (redness[:, None, None] * tent[:, None] * tent[None, :]).flatten()
    return net.eval()


def red_square_photo(center: tuple[int, int], side: int = 16) -> Image.Image:
    rng = np.random.default_rng(3)
    pixels = rng.integers(100, 150, (96, 128, 3), dtype=np.uint8)
    x, y = center
    pixels[y - side // 2 : y + side // 2, x - side // 2 : x + side // 2] = (255, 0, 0)
    return Image.fromarray(pixels)


def peak_xy(values: np.ndarray, geometry: GridGeometry) -> np.ndarray:
    row, col = np.unravel_index(np.argmax(values), values.shape)
    return geometry.centers()[row, col]


@pytest.mark.parametrize("common", ["first", "finest"])
def test_every_scale_finds_the_red_square(common):
    engine = engine_for(red_square_net(), (40, 40), size=96, classes=2)
    center = np.array([68.0, 44.0])
    result = score_multiscale(
        engine,
        red_square_photo((68, 44)),
        (1, 1.5, 2),
        flip=True,
        common=common,
        keep_pass_logits=True,
    )

    assert {p.geometry.input_size for p in result.passes} == {(96, 128), (144, 192), (192, 256)}
    for p in result.passes:
        stride_in_original = p.geometry.stride * p.geometry.scale[1]
        found = peak_xy(softmax(p.logits)[0], p.geometry)
        assert np.abs(found - center).max() <= stride_in_original, (p.scale, p.flip, found)
    expected = result.passes[0 if common == "first" else -2].geometry
    assert result.geometry == expected
    assert result.logits.shape == (2, *expected.shape)
    base_stride = result.passes[0].geometry.stride * result.passes[0].geometry.scale[1]
    assert np.abs(peak_xy(result.probs[0], result.geometry) - center).max() <= base_stride
    on_common = [resample_grid(p.logits, p.geometry, result.geometry) for p in result.passes]
    np.testing.assert_allclose(result.logits, np.mean(on_common, axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result.probs.sum(axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(result.probs, softmax(result.logits))


def test_resampling_is_bilinear_between_centres_and_holds_the_edges():
    source = plan_geometry((90, 120), shorter_side=60, window=(44, 44), stride=8)
    target = plan_geometry((90, 120), shorter_side=150, window=(44, 44), stride=8)
    src, dst = source.centers().astype(np.float64), target.centers().astype(np.float64)
    plane = np.stack([2 * src[..., 0] - 3 * src[..., 1] + 1, -src[..., 0]])

    resampled = resample_grid(plane, source, target)

    x = np.clip(dst[..., 0], src[0, 0, 0], src[0, -1, 0])
    y = np.clip(dst[..., 1], src[0, 0, 1], src[-1, 0, 1])
    assert resampled.shape == (2, *target.shape)
    assert (dst[..., 0] < src[0, 0, 0]).any()  # some target centres lie beyond the source's
    np.testing.assert_allclose(resampled, np.stack([2 * x - 3 * y + 1, -x]), atol=1e-4)
    assert resample_grid(plane.astype(np.float32), source, source) is not None
    assert np.array_equal(
        resample_grid(plane.astype(np.float32), source, source), plane.astype(np.float32)
    )
    other = plan_geometry((91, 120), shorter_side=60, window=(44, 44), stride=8)
    with pytest.raises(GeometryError, match="different images"):
        resample_grid(plane, source, other)


def hot_spot_scorer(pixels: np.ndarray) -> torch.Tensor:
    """Class 0: one very confident cell; class 1: fairly confident everywhere; class 2: never."""
    _, height, width, _ = pixels.shape
    rows, cols = (height - 44) // 8 + 1, (width - 44) // 8 + 1
    logits = torch.zeros(1, 3, rows, cols)
    logits[:, 0] = -5.0
    logits[:, 0, 0, 0] = 5.0
    logits[:, 1] = 0.0
    logits[:, 2] = -6.0
    return logits


def test_max_pooling_ranks_the_hot_spot_and_mean_pooling_the_spread_class():
    result = multiscale_grid(
        random_photo(60, 80),
        score=hot_spot_scorer,
        plan=planner(60, (44, 44), 8),
        interpolation="bilinear",
        scales=(1, 2),
        flip=True,
        keep_pass_logits=True,
    )
    hot_cell = np.exp([5.0, 0.0, -6.0]) / np.exp([5.0, 0.0, -6.0]).sum()
    cold_cell = np.exp([-5.0, 0.0, -6.0]) / np.exp([-5.0, 0.0, -6.0]).sum()
    hot, spread = hot_cell[0], cold_cell[1]

    by_max = rank_image(result.passes, 2, "max")
    assert [i for i, _ in by_max] == [0, 1]
    assert by_max[0][1] == pytest.approx(hot, rel=1e-5)
    assert by_max[1][1] == pytest.approx(spread, rel=1e-5)

    by_mean = rank_image(result.passes, 3, pooling="mean")
    assert [i for i, _ in by_mean] == [1, 0, 2]
    cells = [p.geometry.shape[0] * p.geometry.shape[1] for p in result.passes]
    expected_mean = np.mean([((n - 1) * cold_cell + hot_cell) / n for n in cells], axis=0)
    assert [s for _, s in by_mean] == pytest.approx(expected_mean[[1, 0, 2]], rel=1e-5)
    # The scorer puts the hot cell in column 0 of what it sees; a flip pass mirrors it back.
    assert [np.argwhere(p.logits[0] == 5.0)[0, 1] for p in result.passes] == [
        0,
        result.passes[1].geometry.shape[1] - 1,
        0,
        result.passes[3].geometry.shape[1] - 1,
    ]
    np.testing.assert_allclose(
        image_scores(result.passes, "max"), np.mean([p.peak for p in result.passes], axis=0)
    )
    with pytest.raises(InvalidOptionError, match="pooling must be one of max, mean"):
        image_scores(result.passes, "median")

    table = format_ranking(result.passes, ["hot", "spread", "none"], top_k=2)
    lines = table.splitlines()
    assert len(lines) == 3
    assert "1x" in lines[0] and "2x flip" in lines[0]
    assert lines[1].split()[:3] == ["1", "0", "hot"]
    assert describe_ranking(result.passes, ["hot", "spread", "none"], 2) == table
    hot_peak, spread_peak = result.passes[0].peak[:2]
    assert describe_ranking(result.passes[:1], ["hot", "spread", "none"], 2) == (
        f"hot {hot_peak:.2f}, spread {spread_peak:.2f}"
    )


def test_passes_average_in_any_order_on_the_common_grid():
    result = multiscale_grid(
        random_photo(60, 80),
        score=hot_spot_scorer,
        plan=planner(60, (44, 44), 8),
        interpolation="bilinear",
        scales=(1, 1.5),
        flip=True,
        keep_pass_logits=True,
    )
    # The loader adds passes as their batches finish, in any order.
    average = PassAverage([p.geometry for p in result.passes])
    assert average.geometry == result.geometry
    for index in (3, 1, 2, 0):
        assert not average.complete
        average.add(index, result.passes[index].logits, result.passes[index])
    assert average.complete
    again = average.result()
    assert all(a is b for a, b in zip(again.passes, result.passes, strict=True))
    np.testing.assert_allclose(again.logits, result.logits, rtol=1e-6, atol=1e-6)
    partial = PassAverage([p.geometry for p in result.passes[:2]])
    partial.add(0, result.passes[0].logits, result.passes[0])
    with pytest.raises(ValueError, match="1 of 2 passes"):
        partial.result()
    with pytest.raises(InvalidOptionError, match="common grid must be one of first, finest"):
        PassAverage([result.geometry], "coarsest")  # type: ignore[arg-type]


def test_scales_are_parsed_and_checked():
    assert parse_scales("1, 1.5,2") == (1.0, 1.5, 2.0)
    with pytest.raises(
        InvalidOptionError, match=r"comma-separated numbers like 1,1.5,2; got '1,,2'"
    ):
        parse_scales("1,,2")
    with pytest.raises(InvalidOptionError, match="scale 'x' is not a number"):
        parse_scales("1,x")
    with pytest.raises(InvalidOptionError, match=r"scales must be positive numbers, got 0\.0"):
        parse_scales("0")
    with pytest.raises(InvalidOptionError, match="scales must be positive numbers, got nan"):
        parse_scales("nan")
    with pytest.raises(InvalidOptionError, match="at least one scale is needed"):
        multiscale_grid(
            random_photo(60, 80),
            score=hot_spot_scorer,
            plan=planner(60, (44, 44), 8),
            interpolation="bilinear",
            scales=(),
        )


class _NonFiniteNet(nn.Module):
    """VolumeHeadNet whose input pixels above ``threshold`` become ``value`` before its body."""

    def __init__(self, value: float, threshold: float = 1.5) -> None:
        super().__init__()
        self.net = seeded(VolumeHeadNet)
        self.value, self.threshold = value, threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.where(x > self.threshold, self.value, x))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize(("scales", "flip"), [((1,), False), ((1, 1.5), True)])
def test_non_finite_scores_are_refused_with_what_was_found(value, scales, flip):
    from heatmap_cli.errors import NonFiniteScoresError

    engine = engine_for(_NonFiniteNet(value), WINDOW, size=60)
    image = random_photo(70, 95)

    with pytest.raises(NonFiniteScoresError) as excinfo:
        score_multiscale(engine, image, scales, flip=flip)

    message = str(excinfo.value)
    assert message.startswith("the model produced non-finite scores for this image")
    assert message.endswith("; check the model and its weights")
    dark = Image.new("RGB", (95, 70))
    assert np.isfinite(score_multiscale(engine, dark, scales, flip=flip).logits).all()
