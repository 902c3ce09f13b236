#!/bin/bash
# Run H: same-machine A/B of router slot packing (session 4). Question: is packing a net win at
# every concurrency? Run G (packing) was slower than F (no packing) at 4 and 64 users with the
# cache off, on another machine. Here: 8B per-card, users 1,4,16,64, LLAMA_ARG_CACHE_RAM=0,
# alternated packed / not packed (a copy of the code whose _slot_for returns None), 2 rounds,
# then one round each with the cache on.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$(pwd); W=/tmp/work; mkdir -p $W/res /tmp/models
exec > $W/res/run.log 2>&1
trap 'touch $W/DONE' EXIT
export PYTHONUNBUFFERED=1 LLAMA_LAUNCHER_HOME=$W/home
set -x
date -u; nvidia-smi -L; lscpu | head -20 > $W/res/lscpu.txt
mkdir -p $W/src && tar xJf .gpu/llama.cpp-src.tar.xz -C $W/src
cp -r $R /tmp/nopack && rm -rf /tmp/nopack/.gpu/llama.cpp-src.tar.xz
sed -i 's/^        return m.take_slot(key)$/        return None/' /tmp/nopack/launcher/router/server.py
grep -n "return None$" /tmp/nopack/launcher/router/server.py > $W/res/nopack-patch.txt
diff $R/launcher/router/server.py /tmp/nopack/launcher/router/server.py >> $W/res/nopack-patch.txt
( time PYTHONPATH=$R:$R/.gpu/site python3 -m launcher install-server --source $W/src/llama.cpp ) > $W/res/install.txt 2>&1
export LLAMA_SERVER=$(ls $W/home/cache/llama.cpp/*/bin/llama-server | head -1)
M8=/tmp/models/llama-8b.gguf
PYTHONPATH=$R:$R/.gpu/site python3 -m launcher make-model $M8 --arch llama --shape 8b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
b() { # name code-dir cache
  ( time env PYTHONPATH=$2:$R/.gpu/site LLAMA_ARG_CACHE_RAM=$3 LLAMA_LAUNCHER_HOME=$W/home-$1 python3 -m launcher bench $M8 --layouts per-card --users 1,4,16,64 --out $W/res/$1.json ) > $W/res/$1.txt 2> $W/res/$1.err
}
b pack-c0-r1 $R 0; b nopack-c0-r1 /tmp/nopack 0
b nopack-c0-r2 /tmp/nopack 0; b pack-c0-r2 $R 0
touch $W/DONE8
b pack-c8-r1 $R 8192; b nopack-c8-r1 /tmp/nopack 8192
pgrep -a llama-server > $W/res/leftover.txt
date -u
