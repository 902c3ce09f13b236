#!/bin/bash
# GPU validation of fleets (issue 5): up per-card and pooled-layer from profiles on all cards,
# status against NVML's process list, live tok/s against the load generator's own count.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$(pwd); W=/tmp/work; mkdir -p $W/res /tmp/models
exec > $W/res/run.log 2>&1
trap 'touch $W/DONE' EXIT
export PYTHONPATH=$R:$R/.gpu/site LLAMA_LAUNCHER_HOME=$W/home PYTHONUNBUFFERED=1
L="python3 -m launcher"
date -u
mkdir -p $W/src && tar xJf .gpu/llama.cpp-src.tar.xz -C $W/src
$L install-server --source $W/src/llama.cpp > $W/res/install.txt 2>&1
S=$(ls $W/home/cache/llama.cpp/*/bin/llama-server | head -1); export LLAMA_SERVER=$S
$L make-model /tmp/models/llama-8b.gguf --arch llama --shape 8b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
for kind in per-card pooled-layer; do
  n=$([ $kind = per-card ] && echo 512 || echo 256)
  $L profile save v-$kind --model /tmp/models/llama-8b.gguf --layout $kind --users 64 --ctx 4096 > $W/res/profile-$kind.txt 2>&1
  $L profile show v-$kind >> $W/res/profile-$kind.txt 2>&1
  $L up v-$kind --detach > $W/res/up-$kind.txt 2>&1
  $L status --json > $W/res/status-$kind-idle.json
  nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv > $W/res/smi-apps-$kind.csv
  URLS=$(python3 -c "import json;d=json.load(open('$W/res/status-$kind-idle.json'));print(' '.join(w['url'] for w in d['fleets'][0]['workers']))")
  $L load $URLS -c 64 -n $n --tokens 128 --json > $W/res/load-$kind.json 2> $W/res/load-$kind.err &
  lp=$!
  : > $W/res/status-$kind-live.jsonl
  while kill -0 $lp 2>/dev/null; do
    python3 -c "import json,sys,time; d=json.loads(sys.stdin.read()); print(json.dumps({'t': time.time(), 'tok_s': [w['tok_s'] for w in d['fleets'][0]['workers']], 'busy': [w['slots_busy'] for w in d['fleets'][0]['workers']], 'vram': [w['vram_bytes'] for w in d['fleets'][0]['workers']], 'nvml_cards': [w['nvml_cards'] for w in d['fleets'][0]['workers']]}))" <<< "$($L status --json)" >> $W/res/status-$kind-live.jsonl
    sleep 1
  done
  wait $lp
  $L status > $W/res/status-$kind-text.txt
  $L down v-$kind >> $W/res/up-$kind.txt 2>&1
  pgrep -a llama-server >> $W/res/up-$kind.txt || echo "no llama-server left" >> $W/res/up-$kind.txt
done
date -u
