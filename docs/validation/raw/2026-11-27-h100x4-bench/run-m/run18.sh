#!/bin/bash
# GPU run M (session 5, the last ~7.5 min of device time), router 4d50c2e, calibration unchanged.
# Pre-registered checks, interpolation only (each held-out point lies between two fitted points
# on its own side of the MMVQ/MMQ kernel change, 8 users per worker):
#   8B per-card (4 workers) at 1,2,4,8,16,32,64: fit 1,8,32,64 -> check 2,4,16 (within 10%)
#   8B pooled-layer (1 worker) at 1,2,4,8,16,32,64: fit 1,8,16,64 -> check 2,4,32 (within 10%)
# Reported beside them, run G's design: fit 1,4,16,64 -> check 2,8,32.
# Results are written straight under $OUT so that a run cut short by the device budget keeps them.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$(pwd); W=/tmp/work; mkdir -p $W /tmp/models $OUT/m
exec > $OUT/m/run.log 2>&1
export PYTHONPATH=$R:$R/.gpu/site LLAMA_LAUNCHER_HOME=$W/home PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
L="python3 -m launcher"
set -x
date -u; nvidia-smi -L
mkdir -p $W/src && tar xJf .gpu/llama.cpp-src.tar.xz -C $W/src
( time $L install-server --source $W/src/llama.cpp ) > $OUT/m/install.txt 2>&1
export LLAMA_SERVER=$(ls $W/home/cache/llama.cpp/*/bin/llama-server | head -1)
M8=/tmp/models/llama-8b.gguf
$L make-model $M8 --arch llama --shape 8b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
date -u
export LLAMA_LAUNCHER_HOME=$OUT/m/home
( time $L bench $M8 --layouts per-card --users 1,2,4,8,16,32,64 --out $OUT/m/bench-per-card.json ) > $OUT/m/bench-per-card.txt 2> $OUT/m/bench-per-card.err
( time $L bench $M8 --layouts pooled-layer --users 1,2,4,8,16,32,64 --out $OUT/m/bench-pooled-layer.json ) > $OUT/m/bench-pooled-layer.txt 2> $OUT/m/bench-pooled-layer.err
F=$OUT/m/home/state/bench/results.jsonl
python3 scripts/bench-holdout $F --fit 1,8,32,64 > $OUT/m/holdout-fit-1-8-32-64.txt 2>&1
python3 scripts/bench-holdout $F --fit 1,8,16,64 > $OUT/m/holdout-fit-1-8-16-64.txt 2>&1
python3 scripts/bench-holdout $F --fit 1,4,16,64 > $OUT/m/holdout-fit-1-4-16-64.txt 2>&1
pgrep -a llama-server > $OUT/m/leftover.txt
date -u
