"""The notebook API: from a photo to its class maps and overlays in three lines.

```python
import heatmap_cli as hm

mapper = hm.HeatmapModel(hm.load_model(), size=384)
s = mapper("sample_images/coffee.jpg")
s.top(3), s.overlay("espresso")
```

* :func:`~heatmap_cli.api.loading.load_model`: a classifier by name or file, with its class
  names and preprocessing, as the command's ``--model`` loads it;
* :class:`~heatmap_cli.api.heatmap_model.HeatmapModel`: it converted once; called on photos;
* :class:`~heatmap_cli.api.score_map.ScoreMap`: one photo's maps (the npz's numbers), its
  ranking (the json's ``top_k``), its fidelity check (the json's ``fidelity``, a
  :class:`~heatmap_cli.pipeline.fidelity.Fidelity`) and its overlays (the command's pictures).

Everything goes through the command's own pipeline (engine, loader, ranking, rendering), so the
API and the command give the same numbers and pictures for the same options.
"""

from __future__ import annotations

from heatmap_cli.api.heatmap_model import HeatmapModel
from heatmap_cli.api.loading import describe_module, load_model
from heatmap_cli.api.pictures import ImageLike
from heatmap_cli.api.score_map import ScoreMap
from heatmap_cli.pipeline.fidelity import Fidelity

__all__ = ["Fidelity", "HeatmapModel", "ImageLike", "ScoreMap", "describe_module", "load_model"]
