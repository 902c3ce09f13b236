#!/bin/bash
# GPU run P (written in session 6 for the next session, checks chosen 2026-11-27 before any run).
# Code: session 6's (workers start with --cache-ram 0). Each part tars its results ($W/resN.tgz).
# Part 1: 8B per-card and pooled-layer at 1,2,4,8,16,32,64, --rounds 3 (one fleet per layout).
#   Pre-registered, on the rounds' means (scripts/bench-holdout averages them), within 10%:
#   per-card fit 1,8,32,64 -> check 2,4,16; pooled-layer fit 1,8,16,64 -> check 2,4,32.
#   Also: at 1 user the rounds within 10% of each other (the prompt cache is off).
# Part 2: 70B per-card, pooled-layer, pooled-tensor at 1,2,4,8,16, one round (7 min in run K;
#   two would not fit the 30 min with part 1 at ~7 min and the build):
#   fit 1,4,16 -> check 2,8, within 10%.
# Part 3: 8B per-card at 1,4,16,32,64: plain, then a profile with extra_args
#   ["--backend-sampling"] (.gpu/bs-per-card.toml), alternated, two rounds each, own homes.
#   Reported: aggregate and user p50 per point.
# Start detached, wait on $W/DONE1, DONE2, DONE; pass carry [".gpu"] on EVERY device call.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$(pwd); W=/tmp/work; mkdir -p $W/res /tmp/models
exec >> $W/res/run.log 2>&1
trap 'touch $W/DONE; tar czf $W/res.tgz -C $W/res .' EXIT
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
M8=/tmp/models/llama-8b.gguf; M70=/tmp/models/llama-70b.gguf
[ -e $M8 ] || $L make-model $M8 --arch llama --shape 8b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
$L plan $M8 --layout per-card --users 64 --ctx 1024 > $W/res/plan-8b.txt 2>&1  # the argv: --cache-ram 0
( time $L bench $M8 --layouts per-card,pooled-layer --users 1,2,4,8,16,32,64 --rounds 3 --out $W/res/bench-8b.json ) > $W/res/bench-8b.txt 2> $W/res/bench-8b.err
F=$W/home/state/bench/results.jsonl; cp $F $W/res/results-8b.jsonl
python3 scripts/bench-holdout $W/res/results-8b.jsonl --fit 1,8,32,64 > $W/res/holdout-8b-fit-1-8-32-64.txt 2>&1
python3 scripts/bench-holdout $W/res/results-8b.jsonl --fit 1,8,16,64 > $W/res/holdout-8b-fit-1-8-16-64.txt 2>&1
tar czf $W/res1.tgz -C $W/res . ; touch $W/DONE1
[ -e $M70 ] || $L make-model $M70 --arch llama --shape 70b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
( time env LLAMA_LAUNCHER_HOME=$W/home-70b $L bench $M70 --layouts per-card,pooled-layer,pooled-tensor --users 1,2,4,8,16 --out $W/res/bench-70b.json ) > $W/res/bench-70b.txt 2> $W/res/bench-70b.err
cp $W/home-70b/state/bench/results.jsonl $W/res/results-70b.jsonl
python3 scripts/bench-holdout $W/res/results-70b.jsonl --fit 1,4,16 > $W/res/holdout-70b-fit-1-4-16.txt 2>&1
tar czf $W/res2.tgz -C $W/res . ; touch $W/DONE2
for round in 1 2; do
  ( time env LLAMA_LAUNCHER_HOME=$W/home-plain $L bench $M8 --layouts per-card --users 1,4,16,32,64 ) > $W/res/bs-off-$round.txt 2> $W/res/bs-off-$round.err
  ( time env LLAMA_LAUNCHER_HOME=$W/home-bs $L bench .gpu/bs-per-card.toml --users 1,4,16,32,64 ) > $W/res/bs-on-$round.txt 2> $W/res/bs-on-$round.err
done
pgrep -a llama-server > $W/res/leftover.txt
date -u
