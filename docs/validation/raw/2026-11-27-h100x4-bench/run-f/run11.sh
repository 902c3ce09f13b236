#!/bin/bash
# Run F: is the slow mid-concurrency per-card row llama-server's RAM prompt cache (idle slots
# saved on every new task, 8 GiB default) in a fleet sized for 64 users?
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$(pwd); W=/tmp/work; mkdir -p $W/res /tmp/models
exec > $W/res/run.log 2>&1
trap 'touch $W/DONE' EXIT
export PYTHONPATH=$R:$R/.gpu/site LLAMA_LAUNCHER_HOME=$W/home PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
L="python3 -m launcher"
set -x
mkdir -p $W/src && tar xJf .gpu/llama.cpp-src.tar.xz -C $W/src
( time $L install-server --source $W/src/llama.cpp ) > $W/res/install.txt 2>&1
export LLAMA_SERVER=$(ls $W/home/cache/llama.cpp/*/bin/llama-server | head -1)
M8=/tmp/models/llama-8b.gguf
$L make-model $M8 --arch llama --shape 8b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
( time LLAMA_ARG_CACHE_RAM=0 $L bench $M8 --layouts per-card --users 1,2,4,8,16,32,64 --out $W/res/bench-8b-cache0.json ) > $W/res/bench-8b-cache0.txt 2> $W/res/bench-8b-cache0.err
( time $L bench $M8 --layouts per-card --users 16 --out $W/res/bench-8b-top16.json ) > $W/res/bench-8b-top16.txt 2> $W/res/bench-8b-top16.err
( time LLAMA_ARG_CACHE_RAM=0 $L bench $M8 --layouts pooled-layer --users 8,16,64 --out $W/res/bench-8b-pl-cache0.json ) > $W/res/bench-8b-pl-cache0.txt 2> $W/res/bench-8b-pl-cache0.err
cp $W/home/state/bench/results.jsonl $W/res/results.jsonl
date -u
