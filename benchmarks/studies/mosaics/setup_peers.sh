#!/usr/bin/env bash
# The peers' own virtual environment: pytorch-grad-cam 1.5.7 for the mosaic benchmark, never a
# dependency of heatmap-cli. It reuses the torch and torchvision that the repository's .venv
# sees (a .pth file pointing at their site-packages), so nothing large is downloaded.
#
#   benchmarks/studies/mosaics/setup_peers.sh            # -> benchmarks/studies/mosaics/.venv
#   MOSAICS_PEER_VENV=/tmp/peers benchmarks/studies/mosaics/setup_peers.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
venv="${MOSAICS_PEER_VENV:-$here/.venv}"
python="$repo/.venv/bin/python"
torch_site="$("$python" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
"$python" -m venv "$venv"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$torch_site" > "$site/_torch_from_repo.pth"
"$venv/bin/pip" install -q "grad-cam==1.5.7"
"$venv/bin/python" -c 'import pytorch_grad_cam, torch; print("grad-cam ready, torch", torch.__version__)'
