"""The texture-mosaic benchmark: how far score maps are from the classifier's answer.

Texture mosaics with per-pixel ground truth (:mod:`.textures`, :mod:`.mosaics`), small-window
classifiers trained on them from scratch and cached (:mod:`.training`), the metrics
(:mod:`.metrics`, :mod:`.evaluate`), whole ``heatmap`` processes and the Grad-CAM peers
(:mod:`.runs`, ``peer_cam.py`` in its own venv), the tables (:mod:`.tables`, :mod:`.study`).
Run it with ``python -m benchmarks.studies.mosaics [--quick]`` from the repository root.
"""
