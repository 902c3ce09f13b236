#!/bin/bash
# GPU validation of bench (issue 8), third run: warm-up + 4 requests per user, served
# predictions, interpolated calibration; GPM on/off crash check; held-out checks through plan.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$(pwd); W=/tmp/work; mkdir -p $W/res /tmp/models
exec > $W/res/run.log 2>&1
trap 'touch $W/DONE' EXIT
export PYTHONPATH=$R:$R/.gpu/site LLAMA_LAUNCHER_HOME=$W/home PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
L="python3 -m launcher"
set -x
date -u; nvidia-smi -L
mkdir -p $W/src && tar xJf .gpu/llama.cpp-src.tar.xz -C $W/src
( time $L install-server --source $W/src/llama.cpp ) > $W/res/install.txt 2>&1
export LLAMA_SERVER=$(ls $W/home/cache/llama.cpp/*/bin/llama-server | head -1)
$L gpus > $W/res/gpus.txt 2>&1; nvidia-smi --query-gpu=index,name,memory.total,driver_version,power.limit --format=csv > $W/res/smi.csv
$L make-model /tmp/models/llama-8b.gguf --arch llama --shape 8b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
$L make-model /tmp/models/llama-70b.gguf --arch llama --shape 70b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
M8=/tmp/models/llama-8b.gguf; M70=/tmp/models/llama-70b.gguf
# the SIGSEGV seen in nvmlGpmSampleGet: short benches with GPM off (default) and on
for mode in off on; do
  for t in 1 2 3 4 5 6; do
    if [ $mode = on ]; then g=1; else g=0; fi
    LLAMA_LAUNCHER_GPM=$g LLAMA_LAUNCHER_HOME=$W/home-gpm timeout 90 $L bench $M8 --layouts per-card --users 1 --tokens 32 > /dev/null 2> $W/res/gpm-$mode-$t.err
    echo "gpm=$mode try=$t rc=$?" >> $W/res/gpm-crash-check.txt
  done
done
( time $L bench $M8 --layouts per-card,pooled-layer --users 1,4,16,64 --out $W/res/bench-8b.json ) > $W/res/bench-8b.txt 2> $W/res/bench-8b.err
( time $L bench $M70 --layouts per-card,pooled-layer,pooled-tensor --users 1,4,16 --out $W/res/bench-70b.json ) > $W/res/bench-70b.txt 2> $W/res/bench-70b.err
cp $W/home/state/bench/results.jsonl $W/res/results.jsonl
# plan's own held-out predictions: a home holding only the fitted points
mkdir -p $W/home-fit/state/bench
python3 - $W/res/results.jsonl $W/home-fit/state/bench/results.jsonl <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
with open(sys.argv[2], "w") as f:
    for r in rows:
        fit = {1, 64} if r["model_key"].startswith("llama:32x") else {1, 16}
        if r["users"] in fit:
            f.write(json.dumps(r) + "\n")
PY
for u in 4 16; do LLAMA_LAUNCHER_HOME=$W/home-fit $L plan $M8 --users $u --ctx 1024 > $W/res/plan-heldout-8b-u$u.txt 2>&1; LLAMA_LAUNCHER_HOME=$W/home-fit $L plan $M8 --users $u --ctx 1024 --json > $W/res/plan-heldout-8b-u$u.json; done
LLAMA_LAUNCHER_HOME=$W/home-fit $L plan $M70 --users 4 --ctx 1024 > $W/res/plan-heldout-70b-u4.txt 2>&1; LLAMA_LAUNCHER_HOME=$W/home-fit $L plan $M70 --users 4 --ctx 1024 --json > $W/res/plan-heldout-70b-u4.json
python3 scripts/bench-holdout $W/res/results.jsonl --fit 1,64 > $W/res/holdout-fit-1-64.txt 2>&1
python3 scripts/bench-holdout $W/res/results.jsonl --fit 1,16 > $W/res/holdout-fit-1-16.txt 2>&1
$L plan $M8 --users 16 --ctx 1024 > $W/res/plan-8b-u16-measured.txt 2>&1
pgrep -a llama-server > $W/res/leftover.txt
date -u
