#!/bin/bash
# GPU validation of bench (issue 8), run K (session 5): the router compares members' speeds only
# at equal numbers of decoding slots (SpeedMeter), against the previous router (6ae27d9) on the
# same machine. Same grid as run G.
# Pre-registered checks (decided before this run; shipped calibration, unchanged since run G):
#   8B  per-card, pooled-layer at 1,2,4,8,16,32,64 (new router): fit 1,4,16,64 -> check 2,8,32
#       (all within 10%); also fit 1,64 -> check 16 (reported)
#   70B per-card, pooled-layer, pooled-tensor at 1,2,4,8,16: fit 1,4,16 -> check 2,8 (within 10%)
#   router: per-card 8B tokens per worker at 8, 16, 32 users within 5% of even with the new
#       router; the old router's ladder on the same machine beside it (A, B, A order)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$(pwd); W=/tmp/work; mkdir -p $W/res /tmp/models
exec >> $W/res/run.log 2>&1
trap 'touch $W/DONE' EXIT
export PYTHONPATH=$R:$R/.gpu/site LLAMA_LAUNCHER_HOME=$W/home PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
L="python3 -m launcher"
set -x
date -u; nvidia-smi -L; git -C $R log --oneline -1 || true
if ! ls $W/home/cache/llama.cpp/*/bin/llama-server; then
mkdir -p $W/src && tar xJf .gpu/llama.cpp-src.tar.xz -C $W/src
( time $L install-server --source $W/src/llama.cpp ) > $W/res/install.txt 2>&1
fi
export LLAMA_SERVER=$(ls $W/home/cache/llama.cpp/*/bin/llama-server | head -1)
$L gpus > $W/res/gpus.txt 2>&1; nvidia-smi --query-gpu=index,name,memory.total,driver_version,power.limit --format=csv > $W/res/smi.csv
M8=/tmp/models/llama-8b.gguf; M70=/tmp/models/llama-70b.gguf
$L make-model $M8 --arch llama --shape 8b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
( time $L bench $M8 --layouts per-card,pooled-layer --users 1,2,4,8,16,32,64 --out $W/res/bench-8b.json ) > $W/res/bench-8b.txt 2> $W/res/bench-8b.err
touch $W/DONE8
# the previous router, same machine, its own state folder
( cd $R/.gpu/old && time env PYTHONPATH=$R/.gpu/old:$R/.gpu/site LLAMA_LAUNCHER_HOME=$W/home-old python3 -c "import launcher,sys; print(launcher.__file__, file=sys.stderr)" && time env PYTHONPATH=$R/.gpu/old:$R/.gpu/site LLAMA_LAUNCHER_HOME=$W/home-old python3 -m launcher bench $M8 --layouts per-card --users 1,2,4,8,16,32,64 --out $W/res/bench-8b-oldrouter.json ) > $W/res/bench-8b-oldrouter.txt 2> $W/res/bench-8b-oldrouter.err
( time env LLAMA_LAUNCHER_HOME=$W/home-r2 $L bench $M8 --layouts per-card --users 1,2,4,8,16,32,64 --out $W/res/bench-8b-round2.json ) > $W/res/bench-8b-round2.txt 2> $W/res/bench-8b-round2.err
touch $W/DONE8B
$L make-model $M70 --arch llama --shape 70b --sparse --vocab .gpu/vocab/ggml-vocab-llama-bpe.gguf
( time $L bench $M70 --layouts per-card,pooled-layer,pooled-tensor --users 1,2,4,8,16 --out $W/res/bench-70b.json ) > $W/res/bench-70b.txt 2> $W/res/bench-70b.err
cp $W/home/state/bench/results.jsonl $W/res/results.jsonl
cp $W/home-old/state/bench/results.jsonl $W/res/results-oldrouter.jsonl
cp $W/home-r2/state/bench/results.jsonl $W/res/results-round2.jsonl
# plan's own held-out predictions: a home holding only the fitted points
mkdir -p $W/home-fit/state/bench
python3 - $W/res/results.jsonl $W/home-fit/state/bench/results.jsonl <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
with open(sys.argv[2], "w") as f:
    for r in rows:
        fit = {1, 4, 16, 64} if r["model_key"].startswith("llama:32x") else {1, 4, 16}
        if r["users"] in fit:
            f.write(json.dumps(r) + "\n")
PY
for u in 8 32; do LLAMA_LAUNCHER_HOME=$W/home-fit $L plan $M8 --users $u --ctx 1024 > $W/res/plan-heldout-8b-u$u.txt 2>&1; done
for u in 8; do LLAMA_LAUNCHER_HOME=$W/home-fit $L plan $M70 --users $u --ctx 1024 > $W/res/plan-heldout-70b-u$u.txt 2>&1; done
for f in 1,4,16,64 1,64 1,4,16; do python3 scripts/bench-holdout $W/res/results.jsonl --fit $f > $W/res/holdout-fit-${f//,/-}.txt 2>&1; done
for f in 1,4,16,64; do python3 scripts/bench-holdout $W/res/results-oldrouter.jsonl --fit $f > $W/res/holdout-oldrouter-fit-${f//,/-}.txt 2>&1; python3 scripts/bench-holdout $W/res/results-round2.jsonl --fit $f > $W/res/holdout-round2-fit-${f//,/-}.txt 2>&1; done
pgrep -a llama-server > $W/res/leftover.txt
date -u
