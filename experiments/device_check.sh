#!/bin/bash
# The GPU check of issue #15: the CUDA tests, `graphop bench layers` and `graphop bench train`
# on a CUDA device, with the hardware named in every result. Written for the lent device
# machine (python3 there has a CUDA torch, torch-geometric, scipy and pytest, and nothing can
# be fetched), usable on any machine with a CUDA torch.
#
# Once, on a machine with the package registries (here), fetch the graphop dependencies that
# the device image lacks, as Python 3.12 wheels, into .whl/ (git-ignored):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       --platform manylinux1_x86_64 -d .whl meshio trimesh triangle ducc0
#
# then run it there with .whl carried (about 5 minutes on an H100):
#
#   bash experiments/device_check.sh "$OUT"
#
# Results: OUT/gpu.txt (nvidia-smi and torch's view), OUT/tests.log, OUT/bench_layers.json,
# OUT/bench_train.json (device, GPU name and every ratio inside).
set -u
out=${1:-device_check_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/graphop_site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/graphop_site:$PWD
else
    export PYTHONPATH=$PWD
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA DEVICE')"
} | tee "$out/gpu.txt"
status=0
python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
python3 -m graphop bench layers --device cuda --json > "$out/bench_layers.json" \
    2> "$out/bench_layers.log" || status=1
python3 -m graphop bench train --device cuda --json > "$out/bench_train.json" \
    2> "$out/bench_train.log" || status=1
tail -n 3 "$out"/bench_*.log
exit $status
