#!/bin/bash
# GPU run N (prepared in session 5 for the next session; checks chosen 2026-11-27 before any run):
# Part 1, rounds: 8B per-card and pooled-layer at 1,2,4,8,16,32,64 with --rounds 3 (one fleet each).
#   Pre-registered, on the rounds' means (scripts/bench-holdout averages them):
#   per-card fit 1,8,32,64 -> check 2,4,16; pooled-layer fit 1,8,16,64 -> check 2,4,32; within 10%.
# Part 2, backend sampling: 8B per-card at 1,4,16,32,64, llama.cpp default against
#   LLAMA_ARG_BACKEND_SAMPLING=1, alternated (off, on, off, on), same machine, own state folders.
#   Reported: aggregate and user p50 per point; the launcher should enable it for GPU workers if it
#   gains at 16 users and more without losing at 1 user (both rounds).
# Start detached, wait on $W/DONE1 then $W/DONE; pass carry [".gpu"] on EVERY device call.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$(pwd); W=/tmp/work; mkdir -p $W/res /tmp/models
exec >> $W/res/run.log 2>&1
trap 'touch $W/DONE' EXIT
export PYTHONPATH=$R:$R/.gpu/site LLAMA_LAUNCHER_HOME=$W/home PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
L="python3 -m launcher"
set -x
date -u; nvidia-smi -L
if ! ls $W/home/cache/llama.cpp/*/bin/llama-server; then
mkdir -p $W/src && tar xJf .gpu/llama.cpp-src.tar.xz -C $W/src
( time $L install-server --source $W/src/llama.cpp ) > $W/res/install.txt 2>&1
fi
export LLAMA_SERVER=$(ls $W/home/cache/llama.cpp/*/bin/llama-server | head -1)
nvidia-smi --query-gpu=index,name,memory.total,driver_version,power.limit --format=csv > $W/res/smi.csv
M8=/tmp/models/llama-8b.gguf
[ -e $M8 ] || $L make-model $M8 --arch llama --shape 8b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
( time $L bench $M8 --layouts per-card,pooled-layer --users 1,2,4,8,16,32,64 --rounds 3 --out $W/res/bench-rounds.json ) > $W/res/bench-rounds.txt 2> $W/res/bench-rounds.err
F=$W/home/state/bench/results.jsonl; cp $F $W/res/results-rounds.jsonl
python3 scripts/bench-holdout $F --fit 1,8,32,64 > $W/res/holdout-fit-1-8-32-64.txt 2>&1
python3 scripts/bench-holdout $F --fit 1,8,16,64 > $W/res/holdout-fit-1-8-16-64.txt 2>&1
touch $W/DONE1
for round in 1 2; do
  ( time env LLAMA_LAUNCHER_HOME=$W/home-off $L bench $M8 --layouts per-card --users 1,4,16,32,64 ) > $W/res/bs-off-$round.txt 2> $W/res/bs-off-$round.err
  ( time env LLAMA_LAUNCHER_HOME=$W/home-on LLAMA_ARG_BACKEND_SAMPLING=1 $L bench $M8 --layouts per-card --users 1,4,16,32,64 ) > $W/res/bs-on-$round.txt 2> $W/res/bs-on-$round.err
done
pgrep -a llama-server > $W/res/leftover.txt
date -u
