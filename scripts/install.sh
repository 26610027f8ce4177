#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install kern_d2 with everything it needs,
# from the package index alone. Idempotent: a second run checks the stamp and returns at once.
#   bash scripts/install.sh            # uses python3; set PYTHON=python3.12 to pick another interpreter
#   KERN_VENV=/path/to/venv bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=${KERN_VENV:-$root/.venv}
python=${PYTHON:-python3}
stamp=$venv/.kern_d2_installed

fail() { echo "install.sh: ERROR: $*" >&2; exit 1; }

# Pins: torch/torchvision are the pair the CUDA 13 toolchain matches; detectron2 is the PyPI build of upstream.
TORCH_SPEC=${KERN_TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
D2_VERSION=0.7.2
# detectron2's own run-time requirements (its wheel pins numpy<2 and black, neither needed), plus ours.
DEPS="fvcore==0.1.5.post20221221 iopath==0.1.9 setuptools<81 pycocotools>=2.0.2 h5py>=3.8 numpy>=1.24
opencv-python-headless>=4.8 Pillow>=9 matplotlib termcolor>=1.1 yacs>=0.1.8 tabulate cloudpickle tqdm>4.29.0
tensorboard omegaconf>=2.1,<2.4 hydra-core>=1.1 packaging portalocker pytest ninja"

want=$(cat scripts/install.sh setup.py | sha1sum | cut -c1-12)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import kern_d2._C, detectron2" 2>/dev/null; then
  echo "install.sh: $venv is up to date"; exit 0
fi

command -v "$python" >/dev/null || fail "no '$python' on PATH (set PYTHON=...)"
"$python" -c 'import sys; assert sys.version_info >= (3, 9), sys.version' || fail "Python >= 3.9 needed"
if [ ! -x "$venv/bin/python" ]; then
  echo "install.sh: creating virtual environment $venv"
  "$python" -m venv "$venv" || fail "could not create a venv (Debian: apt-get install python3-venv)"
fi
pip() { "$venv/bin/python" -m pip --disable-pip-version-check "$@"; }

if ! "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "install.sh: installing $TORCH_SPEC"
  pip install -q $TORCH_SPEC || fail "could not install $TORCH_SPEC from the package index"
fi
echo "install.sh: installing dependencies"
# shellcheck disable=SC2086
pip install -q $(echo $DEPS) || fail "could not install the dependencies: $DEPS"

if ! "$venv/bin/python" -c "import detectron2" 2>/dev/null; then
  echo "install.sh: installing detectron2 (sal-detectron2==$D2_VERSION, retagged py3, without its prebuilt _C)"
  "$venv/bin/python" scripts/retag_detectron2.py --version "$D2_VERSION" --out "$venv/wheels" \
    || fail "could not fetch or retag sal-detectron2==$D2_VERSION"
  pip install -q --no-deps "$venv/wheels/sal_detectron2-$D2_VERSION-py3-none-any.whl" || fail "could not install detectron2"
fi

echo "install.sh: building kern_d2 and its extension kern_d2._C"
pip install -q --no-build-isolation --no-deps -e . || fail "building kern_d2._C failed (see the compiler output above)"
"$venv/bin/python" -c "import kern_d2._C, detectron2, torch; print('install.sh: ok: torch', torch.__version__)" \
  || fail "kern_d2 does not import after install"
echo "$want" > "$stamp"
