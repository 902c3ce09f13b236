"""GPU validation of the planner (issue 4): predicted per-card memory and tok/s vs reality."""
import asyncio, json, os, subprocess, sys, time, urllib.request
import aiohttp

W = "/tmp/work"; RES = f"{W}/res"; L = [sys.executable, "-m", "launcher"]
S = sys.argv[1]; BENCH = os.path.join(os.path.dirname(S), "llama-bench")
MODELS = {"8b": "/tmp/models/llama-8b.gguf", "70b": "/tmp/models/llama-70b.gguf"}
CONFIGS = [("8b", "per-card", "0", 16), ("8b", "pooled-layer", "0,1", 16),
           ("8b", "pooled-layer", "0,1,2,3", 16), ("8b", "pooled-tensor", "0,1,2,3", 16),
           ("70b", "per-card", "0", 4), ("70b", "pooled-layer", "0,1", 4),
           ("70b", "pooled-layer", "0,1,2,3", 4), ("70b", "pooled-tensor", "0,1,2,3", 4)]
out = []

def smi():
    t = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                       capture_output=True, text=True).stdout
    return {int(a): int(b) for a, b in (l.split(",") for l in t.strip().splitlines())}

async def load(url, users, n):
    async with aiohttp.ClientSession() as s:
        async def one(i):
            async with s.post(url + "/completion", json={"prompt": f"User {i} says hello", "n_predict": n,
                              "ignore_eos": True, "cache_prompt": False}) as r:
                return (await r.json())["tokens_predicted"]
        t0 = time.monotonic(); toks = await asyncio.gather(*[one(i) for i in range(users)])
        return sum(toks), time.monotonic() - t0

for size, kind, cards, users in CONFIGS:
    rec = {"model": size, "kind": kind, "cards": cards, "users": users}
    p = subprocess.run(L + ["--llama-server", S, "plan", MODELS[size], "--layout", kind, "--cards", cards,
                            "--users", str(users), "--ctx", "4096", "--json"], capture_output=True, text=True)
    if p.returncode not in (0, 3):
        rec["error"] = p.stderr; out.append(rec); continue
    plan = json.loads(p.stdout)["layouts"][0]
    rec["plan"] = {"cards": plan["cards"], "predicted": plan["predicted"], "tensor_split": plan["tensor_split"]}
    proc = plan["processes"][0]; env = {**os.environ, **proc["env"]}
    log = open(f"{RES}/srv-{size}-{kind}-{cards.replace(',', '')}.log", "w")
    t0 = time.monotonic()
    srv = subprocess.Popen(proc["argv"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{proc['port']}"
    ok = False
    while time.monotonic() - t0 < 240 and srv.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200: ok = True; break
        except Exception: pass
        time.sleep(0.5)
    rec["load_s"] = round(time.monotonic() - t0, 1)
    if not ok:
        rec["error"] = "not healthy"; srv.kill(); out.append(rec); continue
    time.sleep(1)
    rec["smi_mib"] = smi()
    req = urllib.request.Request(url + "/completion", data=json.dumps({"prompt": "Hello", "n_predict": 128,
                                 "ignore_eos": True}).encode(), headers={"Content-Type": "application/json"})
    rec["single_tok_s"] = json.load(urllib.request.urlopen(req, timeout=120))["timings"]["predicted_per_second"]
    asyncio.run(load(url, users, 16))  # warm up
    toks, secs = asyncio.run(load(url, users, 128))
    rec["load_tokens"] = toks; rec["load_s_wall"] = round(secs, 2); rec["aggregate_tok_s"] = round(toks / secs, 1)
    srv.terminate(); srv.wait(30)
    argv = proc["argv"]; mode = argv[argv.index("-sm") + 1]
    bench = [BENCH, "-m", MODELS[size], "-ngl", "999", "-sm", mode, "-fa", "1", "-p", "0", "-n", "128", "-r", "2", "-o", "json"]
    if "-ts" in argv: bench += ["-ts", argv[argv.index("-ts") + 1].replace(",", "/")]
    b = subprocess.run(bench, env=env, capture_output=True, text=True, timeout=300)
    try: rec["bench_tg128"] = json.loads(b.stdout)[0]["avg_ts"]
    except Exception: rec["bench_error"] = (b.stderr or b.stdout)[-500:]
    out.append(rec)
    json.dump(out, open(f"{RES}/plan-validation.json", "w"), indent=1)
    print(json.dumps({k: v for k, v in rec.items() if k != "plan"}), flush=True)

for size, cards in (("8b", "0"), ("70b", "0,1,2,3")):
    kind = "per-card" if cards == "0" else "pooled-layer"
    v = subprocess.run(L + ["--llama-server", S, "plan", MODELS[size], "--layout", kind, "--cards", cards,
                            "--users", "16" if size == "8b" else "4", "--verify"], capture_output=True, text=True)
    open(f"{RES}/verify-{size}.txt", "w").write(v.stdout + v.stderr)
