"""From photos to score grids: preprocessing, the engine, passes, activations, rankings.

The application's core: it knows images, models and devices, never command-line flags (the
click layer in :mod:`heatmap_cli.cli` names those).

* :mod:`~heatmap_cli.pipeline.engine`: :class:`GridEngine`, a model converted once, scoring
  batches of resized images on one device (tiled when a pass would not fit memory);
* :mod:`~heatmap_cli.pipeline.scoring`: :func:`score_images`, files to grids, read ahead and
  batched by size, one error policy;
* :mod:`~heatmap_cli.pipeline.preprocess`: snapped resizing;
* :mod:`~heatmap_cli.pipeline.multiscale`: passes at several scales and flips, averaged;
* :mod:`~heatmap_cli.pipeline.activations`: softmax, sigmoid or none, in bands;
* :mod:`~heatmap_cli.pipeline.ranking`: class names resolved, image-level rankings;
* :mod:`~heatmap_cli.pipeline.rendering`: which classes an image's overlays draw, and each
  overlay drawn;
* :mod:`~heatmap_cli.pipeline.limits`: what one image may cost;
* :mod:`~heatmap_cli.pipeline.profiling`: where a run's time goes;
* :mod:`~heatmap_cli.pipeline.thread_warnings`: warnings kept per image.
"""
