"""The HTML report: ``index.html`` over an output folder, opened from disk, offline.

``write_report(out_dir)`` turns every finished image of an output folder into a gallery
(thumbnail, image-level ranking, failures with their reason) and a viewer that draws any
stored class's map from its grid over the photo, with the overlays' colour map, an opacity
slider, and each cell's window and top-5 classes under the pointer. See docs/report.md
for what is stored per image and how large it is.
"""

from __future__ import annotations

from heatmap_cli.report.build import REPORT_FILE, write_report
from heatmap_cli.report.records import ASSETS_DIR_NAME

__all__ = ["ASSETS_DIR_NAME", "REPORT_FILE", "write_report"]
