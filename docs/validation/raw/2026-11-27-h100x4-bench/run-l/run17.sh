#!/bin/bash
# GPU run L (session 5): the router compares members at equal numbers of decoding slots
# (Balancer._speed over SpeedMeter.by_slots), against the original router (6ae27d9), every pick
# logged. Pre-registered: 8B per-card at 1,2,4,8,16,32,64, two rounds of the new router, one of
# the original (order new, old, new); fit 1,4,16,64 -> check 2,8,32 within 10% in each round;
# tokens per worker at 8, 16, 32 users within 5% of even with the new router.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$(pwd); W=/tmp/work; mkdir -p $W/res /tmp/models
exec >> $W/res/run.log 2>&1
trap 'touch $W/DONE' EXIT
export PYTHONPATH=$R:$R/.gpu/site LLAMA_LAUNCHER_HOME=$W/home PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
L="python3 -m launcher"
set -x
date -u; nvidia-smi -L
mkdir -p $W/src && tar xJf .gpu/llama.cpp-src.tar.xz -C $W/src
( time $L install-server --source $W/src/llama.cpp ) > $W/res/install.txt 2>&1
export LLAMA_SERVER=$(ls $W/home/cache/llama.cpp/*/bin/llama-server | head -1)
M8=/tmp/models/llama-8b.gguf
$L make-model $M8 --arch llama --shape 8b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
touch $W/BUILT
( time env LLAMA_LAUNCHER_HOME=$W/home-r1 python3 .gpu/benchlog.py $W/res/picks-r1.jsonl bench $M8 --layouts per-card --users 1,2,4,8,16,32,64 --out $W/res/bench-r1.json ) > $W/res/bench-r1.txt 2> $W/res/bench-r1.err
( cd $R/.gpu/old && time env PYTHONPATH=$R/.gpu/old:$R/.gpu/site LLAMA_LAUNCHER_HOME=$W/home-old python3 $R/.gpu/benchlog.py $W/res/picks-old.jsonl bench $M8 --layouts per-card --users 1,2,4,8,16,32,64 --out $W/res/bench-old.json ) > $W/res/bench-old.txt 2> $W/res/bench-old.err
( time env LLAMA_LAUNCHER_HOME=$W/home-r2 python3 .gpu/benchlog.py $W/res/picks-r2.jsonl bench $M8 --layouts per-card --users 1,2,4,8,16,32,64 --out $W/res/bench-r2.json ) > $W/res/bench-r2.txt 2> $W/res/bench-r2.err
for h in r1 old r2; do cp $W/home-$h/state/bench/results.jsonl $W/res/results-$h.jsonl; python3 scripts/bench-holdout $W/res/results-$h.jsonl --fit 1,4,16,64 > $W/res/holdout-$h.txt 2>&1; done
pgrep -a llama-server > $W/res/leftover.txt
date -u
