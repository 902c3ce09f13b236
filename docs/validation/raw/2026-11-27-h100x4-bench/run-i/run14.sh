#!/bin/bash
# Run I: same-machine A/B of router slot packing on the concurrency ladder that spoiled runs D/E
# (1,2,4,8,16,32,64 in one fleet), llama-server defaults (RAM prompt cache on): packed first,
# then a copy of the code whose _slot_for returns None (llama-server picks slots).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$(pwd); W=/tmp/work; mkdir -p $W/res /tmp/models
exec > $W/res/run.log 2>&1
trap 'touch $W/DONE' EXIT
export PYTHONUNBUFFERED=1 LLAMA_LAUNCHER_HOME=$W/home
set -x
date -u; nvidia-smi -L
mkdir -p $W/src && tar xJf .gpu/llama.cpp-src.tar.xz -C $W/src
mkdir -p /tmp/nopack && cp -r $R/launcher /tmp/nopack/
sed -i 's/^        return m.take_slot(key)$/        return None/' /tmp/nopack/launcher/router/server.py
diff $R/launcher/router/server.py /tmp/nopack/launcher/router/server.py > $W/res/nopack-patch.txt
( time PYTHONPATH=$R:$R/.gpu/site python3 -m launcher install-server --source $W/src/llama.cpp ) > $W/res/install.txt 2>&1
export LLAMA_SERVER=$(ls $W/home/cache/llama.cpp/*/bin/llama-server | head -1)
M8=/tmp/models/llama-8b.gguf
PYTHONPATH=$R:$R/.gpu/site python3 -m launcher make-model $M8 --arch llama --shape 8b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
b() { # name code-dir
  ( time env PYTHONPATH=$2:$R/.gpu/site LLAMA_LAUNCHER_HOME=$W/home-$1 python3 -m launcher bench $M8 --layouts per-card --users 1,2,4,8,16,32,64 --out $W/res/$1.json ) > $W/res/$1.txt 2> $W/res/$1.err
  cp $W/home-$1/state/bench/results.jsonl $W/res/results-$1.jsonl
}
b pack $R; b nopack /tmp/nopack
pgrep -a llama-server > $W/res/leftover.txt
date -u
