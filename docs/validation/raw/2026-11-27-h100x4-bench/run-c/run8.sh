#!/bin/bash
# Re-check of the router speed fix: 8b per-card at 1 then 4 then 16 users in one bench.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$(pwd); W=/tmp/work; mkdir -p $W/res /tmp/models
export PYTHONPATH=$R:$R/.gpu/site LLAMA_LAUNCHER_HOME=$W/home PYTHONUNBUFFERED=1
L="python3 -m launcher"
mkdir -p $W/src && tar xJf .gpu/llama.cpp-src.tar.xz -C $W/src
$L install-server --source $W/src/llama.cpp -j 64 > $OUT/install.txt 2>&1
export LLAMA_SERVER=$(ls $W/home/cache/llama.cpp/*/bin/llama-server | head -1)
$L make-model /tmp/models/llama-8b.gguf --arch llama --shape 8b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf > /dev/null
$L bench /tmp/models/llama-8b.gguf --layouts per-card --users 1,4,16 --out $OUT/bench-8b-router-fix.json > $OUT/bench-8b-router-fix.txt 2> $OUT/bench-8b-router-fix.err
cp $W/home/state/bench/results.jsonl $OUT/results-router-fix.jsonl
