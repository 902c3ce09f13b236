#!/bin/bash
# GPU validation of the router (issue 7): 4 per-card workers behind the router vs the same
# workers called directly round-robin, and vs pooled-layer, at 64 concurrent users.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$(pwd); W=/tmp/work; mkdir -p $W/res /tmp/models
exec > $W/res/run.log 2>&1
trap 'touch $W/DONE' EXIT
export PYTHONPATH=$R:$R/.gpu/site LLAMA_LAUNCHER_HOME=$W/home PYTHONUNBUFFERED=1
L="python3 -m launcher"
date -u
mkdir -p $W/src && tar xJf .gpu/llama.cpp-src.tar.xz -C $W/src
$L install-server --source $W/src/llama.cpp > $W/res/install.txt 2>&1
export LLAMA_SERVER=$(ls $W/home/cache/llama.cpp/*/bin/llama-server | head -1)
$L make-model /tmp/models/llama-8b.gguf --arch llama --shape 8b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
$L up /tmp/models/llama-8b.gguf --layout per-card --users 64 --ctx 4096 --port 8080 --detach > $W/res/up-per-card.txt 2>&1
$L status --json > $W/res/status-per-card.json
URLS=$(python3 -c "import json;d=json.load(open('$W/res/status-per-card.json'));print(' '.join(w['url'] for w in d['fleets'][0]['workers']))")
$L load http://127.0.0.1:8080 -c 64 -n 64 --tokens 32 --json > /dev/null 2>&1   # warm-up
for i in 1; do
  $L load http://127.0.0.1:8080 -c 64 -n 512 --tokens 128 --json > $W/res/router-$i.json 2>&1
  $L load $URLS -c 64 -n 512 --tokens 128 --json > $W/res/direct-$i.json 2>&1
done
curl -s http://127.0.0.1:8080/metrics > $W/res/router-metrics.txt
$L down > /dev/null 2>&1
$L up /tmp/models/llama-8b.gguf --layout pooled-layer --users 64 --ctx 4096 --port 8080 --detach > $W/res/up-pooled.txt 2>&1
$L load http://127.0.0.1:8080 -c 64 -n 256 --tokens 128 --json > $W/res/pooled-router.json 2>&1
$L down > /dev/null 2>&1
date -u
