#!/bin/bash
# GPU run O (session 6, written after run N, before running): llama-server's RAM prompt cache.
# Run N: with --rounds 3, rounds 2-3 at 1-4 users were far slower than round 1 (8B pooled-layer
# 1 user 191.0 -> 81.8 / 71.3; per-card 190.7 -> 126.9 / 136.0). Hypothesis: llama-server's prompt
# cache (--cache-ram, default 8192 MiB; --cache-idle-slots, default on) copies idle slots' KV
# (~80 MiB each for 8B at 640 tokens) to host RAM on each new task; after a 64-user phase a
# server holds many such slots. Shown on CPU (q06, 8 slots: first request after a burst 5.7 s vs
# 4.2-4.4 fresh; with --cache-ram 0 4.3).
# Checks: with LLAMA_ARG_CACHE_RAM=0, round 2 at 1 user within 10% of round 1 (both layouts);
# and the pooled-layer default ladder on the same machine shows the drop again (> 25%).
# Reported besides: aggregate at 16/32/64 users against run N (prompt cache on).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$(pwd); W=/tmp/work; mkdir -p $W/res /tmp/models
exec >> $W/res/run.log 2>&1
trap 'touch $W/DONE; tar czf $W/res.tgz -C $W/res .' EXIT
export PYTHONPATH=$R:$R/.gpu/site PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
L="python3 -m launcher"
set -x
date -u; nvidia-smi -L
if ! ls $W/home/cache/llama.cpp/*/bin/llama-server; then
mkdir -p $W/src && tar xJf .gpu/llama.cpp-src.tar.xz -C $W/src
( time env LLAMA_LAUNCHER_HOME=$W/home $L install-server --source $W/src/llama.cpp ) > $W/res/install.txt 2>&1
fi
export LLAMA_SERVER=$(ls $W/home/cache/llama.cpp/*/bin/llama-server | head -1)
M8=/tmp/models/llama-8b.gguf
[ -e $M8 ] || LLAMA_LAUNCHER_HOME=$W/home $L make-model $M8 --arch llama --shape 8b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
( time env LLAMA_LAUNCHER_HOME=$W/home-c0 LLAMA_ARG_CACHE_RAM=0 $L bench $M8 --layouts pooled-layer --users 1,4,16,64 --rounds 2 ) > $W/res/pl-c0.txt 2> $W/res/pl-c0.err
touch $W/DONE1
( time env LLAMA_LAUNCHER_HOME=$W/home-c0 LLAMA_ARG_CACHE_RAM=0 $L bench $M8 --layouts per-card --users 1,4,16,32,64 --rounds 2 ) > $W/res/pc-c0.txt 2> $W/res/pc-c0.err
tar czf $W/res2.tgz -C $W/res . ; touch $W/DONE2
( time env LLAMA_LAUNCHER_HOME=$W/home-def $L bench $M8 --layouts pooled-layer --users 1,4,16,64 --rounds 2 ) > $W/res/pl-def.txt 2> $W/res/pl-def.err
cp $W/home-c0/state/bench/results.jsonl $W/res/results-c0.jsonl; cp $W/home-def/state/bench/results.jsonl $W/res/results-def.jsonl
pgrep -a llama-server > $W/res/leftover.txt
date -u
