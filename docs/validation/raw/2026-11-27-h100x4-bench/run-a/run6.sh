#!/bin/bash
# GPU validation of bench (issue 8), second run (served predictions, interpolated calibration):
# per-card (one card per user) vs pooled-layer vs pooled-tensor at 1/4/16 users, and the
# held-out check through 'plan': bench at the end points, plan predicts the middle, bench it.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$(pwd); W=/tmp/work; mkdir -p $W/res /tmp/models
exec > $W/res/run.log 2>&1
trap 'touch $W/DONE' EXIT
export PYTHONPATH=$R:$R/.gpu/site LLAMA_LAUNCHER_HOME=$W/home PYTHONUNBUFFERED=1
L="python3 -m launcher"
set -x
date -u; git -C $R log -1 --format=%H 2>/dev/null; nvidia-smi -L
mkdir -p $W/src && tar xJf .gpu/llama.cpp-src.tar.xz -C $W/src
( time $L install-server --source $W/src/llama.cpp ) > $W/res/install.txt 2>&1
export LLAMA_SERVER=$(ls $W/home/cache/llama.cpp/*/bin/llama-server | head -1)
$L gpus > $W/res/gpus.txt 2>&1; nvidia-smi --query-gpu=index,name,memory.total,driver_version,power.limit --format=csv > $W/res/smi.csv
$L make-model /tmp/models/llama-8b.gguf --arch llama --shape 8b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
$L make-model /tmp/models/llama-70b.gguf --arch llama --shape 70b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
M8=/tmp/models/llama-8b.gguf; M70=/tmp/models/llama-70b.gguf
# 8b: fit points (1, 64 users)
( time $L bench $M8 --layouts per-card,pooled-layer --users 1,64 --out $W/res/bench-8b-fit.json ) > $W/res/bench-8b-fit.txt 2> $W/res/bench-8b-fit.err
for u in 4 16; do $L plan $M8 --users $u --ctx 1024 > $W/res/plan-8b-u$u.txt 2>&1; $L plan $M8 --users $u --ctx 1024 --json > $W/res/plan-8b-u$u.json 2>&1; done
# 8b: held-out points (4, 16 users)
( time $L bench $M8 --layouts per-card,pooled-layer --users 4,16 --out $W/res/bench-8b-check.json ) > $W/res/bench-8b-check.txt 2> $W/res/bench-8b-check.err
# 70b: fit points (1, 16 users)
( time $L bench $M70 --layouts per-card,pooled-layer,pooled-tensor --users 1,16 --out $W/res/bench-70b-fit.json ) > $W/res/bench-70b-fit.txt 2> $W/res/bench-70b-fit.err
$L plan $M70 --users 4 --ctx 1024 > $W/res/plan-70b-u4.txt 2>&1; $L plan $M70 --users 4 --ctx 1024 --json > $W/res/plan-70b-u4.json 2>&1
( time $L bench $M70 --layouts per-card,pooled-layer,pooled-tensor --users 4 --out $W/res/bench-70b-check.json ) > $W/res/bench-70b-check.txt 2> $W/res/bench-70b-check.err
cp $W/home/state/bench/results.jsonl $W/res/ 2>/dev/null || find $W/home -name results.jsonl -exec cp {} $W/res/ \;
$L plan $M8 --users 16 --ctx 1024 > $W/res/plan-8b-u16-after.txt 2>&1
nvidia-smi --query-gpu=index,memory.used --format=csv > $W/res/smi-end.csv
pgrep -a llama-server > $W/res/leftover.txt
date -u
