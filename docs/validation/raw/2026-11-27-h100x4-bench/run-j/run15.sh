#!/bin/bash
# Run J (session 4, last 300 s of device time): staggered arrivals against lockstep on one
# machine, 8B per-card at 16 and 32 users (where lockstep runs G and I missed the held-out check).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$(pwd); W=/tmp/work; O=${OUT:-/tmp/out}; mkdir -p $W /tmp/models $O
export PYTHONPATH=$R:$R/.gpu/site LLAMA_LAUNCHER_HOME=$W/home PYTHONUNBUFFERED=1
L="python3 -m launcher"
date -u > $O/run.log
mkdir -p $W/src && tar xJf .gpu/llama.cpp-src.tar.xz -C $W/src
( time $L install-server --source $W/src/llama.cpp ) > $O/install.txt 2>&1
export LLAMA_SERVER=$(ls $W/home/cache/llama.cpp/*/bin/llama-server | head -1)
M8=/tmp/models/llama-8b.gguf
$L make-model $M8 --arch llama --shape 8b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf >> $O/run.log 2>&1
date -u >> $O/run.log
$L bench $M8 --layouts per-card --users 16,32 --staggered --out $O/staggered.json > $O/staggered.txt 2> $O/staggered.err
date -u >> $O/run.log
$L bench $M8 --layouts per-card --users 16,32 --out $O/lockstep.json > $O/lockstep.txt 2> $O/lockstep.err
date -u >> $O/run.log
pgrep -a llama-server > $O/leftover.txt
