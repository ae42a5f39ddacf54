#!/usr/bin/env bash
# The GPU checks of issue 13 in one script, for one CUDA GPU, in under 5 minutes:
#   1. bf16 training throughput and MFU of a 12-layer GPT-2 Medium-shape child (width 1024, 16 heads),
#      batch 8 x 1024, eager and --compile on (target: >= 45% MFU compiled)
#   2. the chunked head + loss vs the plain path (eager, bf16)
#   3. analyze SmolLM2-135M on the GPU, N = 100, T = 100 (target: under 5 s after the model is loaded)
#   4. a 2-process FSDP2 run of (1), when two GPUs are present
# MFU is against the datasheet bf16 peak of the GPU (optim.GPU_PEAKS). Results go to $OUT (default
# runs/gpu-bench) and are printed; copy the printed table into docs/benchmarks.md.
#
# Needs: the repo's .venv with a CUDA build of torch (pip install torch for your CUDA), and the default assets
# (make assets) -- no network is used.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/gpu-bench}
mkdir -p "$OUT"
STEPS=${STEPS:-40}

"$PY" - <<'EOF'
import torch, sys
if not torch.cuda.is_available():
    sys.exit("benchmarks/gpu.sh needs a CUDA GPU (torch.cuda.is_available() is False)")
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| GPUs:", torch.cuda.device_count())
EOF

if [ ! -f "$OUT/data/meta.json" ]; then
  "$PY" -m inheritune data prepare --input "$("$PY" -m inheritune assets path corpus)" --tokenizer gpt2 \
    --out "$OUT/data" --progress false
fi

CHILD="scratch:gpt2:layers=12,hidden=1024,heads=16,context=1024"
common=(--model "$CHILD" --data "$OUT/data" --max-steps "$STEPS" --seq-len 1024 --micro-batch-size 8
        --dtype bfloat16 --device cuda --eval-interval 0 --eval-windows 2 --checkpoint-interval 0
        --progress false --overwrite true)

summary() {  # median tokens/s and MFU of the steps after the first 10 (compilation and warm-up)
  "$PY" - "$1" "$2" <<'EOF'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")][10:]
rate = statistics.median(l["tokens_per_s"] for l in lines)
mfu = statistics.median(l["mfu"] for l in lines)
print(f"| {sys.argv[2]} | {rate:,.0f} | {mfu:.1%} |")
EOF
}

echo "| bf16, 12 x 1024 GPT-2 child, batch 8 x 1024 | tokens/s (median) | MFU |"
echo "|---|---|---|"
time "$PY" -m inheritune train "${common[@]}" --out "$OUT/eager" --compile off > "$OUT/eager.log" 2>&1
summary "$OUT/eager" "eager, chunked loss"
time "$PY" -m inheritune train "${common[@]}" --out "$OUT/plain" --compile off --chunked-loss false > "$OUT/plain.log" 2>&1
summary "$OUT/plain" "eager, plain loss"
time "$PY" -m inheritune train "${common[@]}" --out "$OUT/compiled" --compile on > "$OUT/compiled.log" 2>&1
summary "$OUT/compiled" "--compile on, chunked loss"

"$PY" - <<'EOF'
import time, torch
from inheritune.analyze import AnalyzeConfig, analyze
from inheritune.models import load_model
import subprocess, sys
data = "runs/gpu-bench/data-smollm2"
import os
if not os.path.exists(data + "/meta.json"):
    subprocess.run([sys.executable, "-m", "inheritune", "data", "prepare", "--input",
                    subprocess.check_output([sys.executable, "-m", "inheritune", "assets", "path", "corpus"], text=True).strip(),
                    "--tokenizer", "smollm2", "--out", data, "--progress", "false"], check=True)
model, tokenizer = load_model("smollm2", device="cuda", attn_implementation="eager")
config = AnalyzeConfig(data=data, n=100, t=100, progress=False, device="cuda")
analyze(config, model=model, tokenizer=tokenizer)  # warm-up
torch.cuda.synchronize()
started = time.perf_counter()
analyze(config, model=model, tokenizer=tokenizer)
torch.cuda.synchronize()
print(f"| analyze SmolLM2-135M on the GPU, N = 100, T = 100 (model loaded) | {time.perf_counter() - started:.2f} s | target < 5 s |")
EOF

if [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  time "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m inheritune train "${common[@]}" \
    --out "$OUT/fsdp" --compile off --distributed fsdp > "$OUT/fsdp.log" 2>&1
  summary "$OUT/fsdp" "FSDP2, 2 GPUs, eager (MFU over both)"
else
  echo "FSDP2: one GPU only, not run"
fi
