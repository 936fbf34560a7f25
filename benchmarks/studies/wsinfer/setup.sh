#!/bin/bash
# The benchmark's own venv: WSInfer 0.6.1 and what it needs offline, over the project's torch.
#
# torch and torchvision come from the project's venv through a .pth (never reinstalled here);
# WSInfer 0.6.1 reads slides through TiffSlide, whose 3.x needs zarr 3, which WSInfer's 0.6.1
# cannot use: hence zarr<3 and tiffslide<3.
set -e
cd "$(dirname "$0")"
PROJECT_VENV=${PROJECT_VENV:-$(cd ../../.. && pwd)/.venv}
SITE=$("$PROJECT_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m venv .venv
OWN=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# The project's packages may be reached through its own .pth (a worktree venv sharing main's).
{ echo "$SITE"; cat "$SITE"/_shared*.pth 2>/dev/null || true; } > "$OWN/_project.pth"
.venv/bin/pip install -q "wsinfer==0.6.1" "zarr<3" "tiffslide<3"
.venv/bin/python -c "import torch, wsinfer, tiffslide, zarr; print('torch', torch.__version__, \
'wsinfer', wsinfer.__version__, 'tiffslide', tiffslide.__version__, 'zarr', zarr.__version__)"
