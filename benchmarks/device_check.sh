#!/usr/bin/env bash
# The GPU check, prepared for a session that is lent a CUDA machine (untimed; a few minutes expected):
# the CUDA tests, then training throughput per precision (with minutes per assignment epoch).
# Needs torch with CUDA and this package installed (`pip install -e ".[dev]"`). Writes into $OUT
# (default: ./device-check): pytest.log, throughput.json, nvidia-smi.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device-check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/torch.txt"
python -m pytest -q tests/test_cuda.py 2>&1 | tee "$out/pytest.log"
tests=${PIPESTATUS[0]}
python benchmarks/train_throughput.py --device cuda --configs fp32,bf16,fp16,bf16:compile \
    --rounds 20 --warmup 3 > "$out/throughput.json"
bench=$?
cat "$out/throughput.json"
exit $(( tests || bench ))
