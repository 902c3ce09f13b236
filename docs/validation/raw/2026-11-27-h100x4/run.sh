#!/bin/bash
# GPU validation batch for issues 2 and 3 (run detached; touches $W/DONE at the end).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$(pwd); W=/tmp/work; mkdir -p $W/res
exec > $W/res/run.log 2>&1
trap 'touch $W/DONE' EXIT
export PYTHONPATH=$R:$R/.gpu/site LLAMA_LAUNCHER_HOME=$W/home PYTHONUNBUFFERED=1
L="python3 -m launcher"
set -x
date -u; nvidia-smi; nvidia-smi topo -m; which nvcc cmake ninja gcc g++; nvcc --version | tail -2
cmake --version | head -1; nproc; python3 --version; python3 -c "import pynvml; print(pynvml.__file__)"
pip list 2>/dev/null | grep -i nvidia-ml
# --- issue 3: discovery against nvidia-smi
$L gpus > $W/res/gpus.txt 2>&1
$L gpus --json > $W/res/gpus.json 2> $W/res/gpus.err
nvidia-smi --query-gpu=index,uuid,name,pci.bus_id,memory.total,memory.used,memory.free,memory.reserved,pcie.link.gen.current,pcie.link.gen.max,pcie.link.gen.gpumax,pcie.link.width.current,pcie.link.width.max,compute_cap,driver_version,power.draw,power.limit,enforced.power.limit,temperature.gpu,clocks.sm,clocks.mem,clocks.max.memory,display_active,mig.mode.current --format=csv,nounits > $W/res/smi.csv
nvidia-smi topo -m > $W/res/topo.txt
nvidia-smi -q > $W/res/smi-q.txt
$L hardware save lab && cp $W/home/config/hardware/lab.toml $W/res/
python3 scripts/bench-gpu-sampler 15 --nvml > $W/res/sampler-nvml.txt 2>&1
# --- issue 2: CUDA build from the packed sources, then every large shape on a card
mkdir -p $W/src && tar xJf .gpu/llama.cpp-src.tar.xz -C $W/src
( time $L install-server --source $W/src/llama.cpp ) > $W/res/install.txt 2>&1
tail -30 $W/home/cache/logs/install-*.log > $W/res/install-log-tail.txt
$L > $W/res/overview.txt 2>&1
S=$(ls $W/home/cache/llama.cpp/*/bin/llama-server | head -1)
mkdir -p /tmp/models
for spec in llama:8b llama:70b qwen3:32b qwen3moe:30b-a3b gemma3:12b gemma3:27b; do
  a=${spec%:*}; z=${spec#*:}; m=/tmp/models/$a-$z.gguf
  case $a in llama) v=llama-bpe;; qwen3|qwen3moe) v=qwen2;; gemma3) v=gemma-4;; esac
  ( time $L make-model $m --arch $a --shape $z --sparse --vocab .gpu/vocab/ggml-vocab-$v.gguf ) >> $W/res/make-model.txt 2>&1
  CUDA_VISIBLE_DEVICES=0 $S -m $m -ngl 999 -c 4096 -np 1 -fa on --host 127.0.0.1 --port 18090 > $W/res/server-$a-$z.log 2>&1 &
  pid=$!; t0=$(date +%s)
  for i in $(seq 1 600); do curl -s -o /dev/null -w "%{http_code}" 127.0.0.1:18090/health | grep -q 200 && break; kill -0 $pid || break; sleep 0.5; done
  load=$(( $(date +%s) - t0 ))
  r=$(curl -s -m 120 127.0.0.1:18090/completion -d '{"prompt":"Hello","n_predict":64,"ignore_eos":true}' | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("tokens_predicted"), round(d["timings"]["predicted_per_second"],1))')
  mem=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0)
  echo "$spec load_s=$load tokens,tok_s=$r gpu0_mem_used_mib=$mem" >> $W/res/shapes.txt
  kill $pid; wait $pid; rm -f $m
done
date -u
