#!/bin/bash
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$(pwd); W=/tmp/work; mkdir -p $W/res /tmp/models
exec > $W/res/run.log 2>&1
trap 'touch $W/DONE' EXIT
export PYTHONPATH=$R:$R/.gpu/site LLAMA_LAUNCHER_HOME=$W/home PYTHONUNBUFFERED=1
L="python3 -m launcher"
date -u; git -C $R log --oneline -1
mkdir -p $W/src && tar xJf .gpu/llama.cpp-src.tar.xz -C $W/src
( time $L install-server --source $W/src/llama.cpp ) > $W/res/install.txt 2>&1
S=$(ls $W/home/cache/llama.cpp/*/bin/llama-server | head -1)
$L make-model /tmp/models/llama-8b.gguf --arch llama --shape 8b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
$L make-model /tmp/models/llama-70b.gguf --arch llama --shape 70b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
python3 .gpu/validate_plan.py $S
date -u
