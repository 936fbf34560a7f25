"""Whole slides: scored at the model's microns per pixel, tile by tile, background skipped.

* :mod:`~heatmap_cli.pipeline.slides.geometry`: the level read, the resampling, the grid in
  level-0 pixels (:func:`plan_slide`);
* :mod:`~heatmap_cli.pipeline.slides.tissue`: the tissue mask and the cells it keeps;
* :mod:`~heatmap_cli.pipeline.slides.regions`: regions in model pixels, resampled seamlessly;
* :mod:`~heatmap_cli.pipeline.slides.store`: scored tiles kept on disk, resumable;
* :mod:`~heatmap_cli.pipeline.slides.scoring`: :func:`score_slide`, the whole loop;
* :mod:`~heatmap_cli.pipeline.slides.summary`: what a slide's outputs say of its scores;
* :mod:`~heatmap_cli.pipeline.slides.bands`: the grid read in bands of rows for the outputs,
  and whether it is too large for memory;
* :mod:`~heatmap_cli.pipeline.slides.grid_files`: the grid file, a ``.npz`` or a ``.zarr`` store.
"""

from heatmap_cli.pipeline.slides.geometry import SlideGeometry, plan_slide
from heatmap_cli.pipeline.slides.scoring import SlideScores, SlideSettings, score_slide

__all__ = ["SlideGeometry", "SlideScores", "SlideSettings", "plan_slide", "score_slide"]
