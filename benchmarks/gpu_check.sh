#!/usr/bin/env bash
# One GPU, under 8 minutes: tokens/s per backend and greedy token agreement with hf bf16.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Runs the generate benchmark's workload (bench_prompts(64), greedy, up to 64 new tokens, one batch of 64) on
# SmolLM2-135M-Instruct as real `lmsweep worker` processes on GPU 0:
#   hf bf16 · hf fp16 · deepspeed bf16 with kernel injection · vllm bf16 · vllm fp32
# and then the CUDA-marked tests (tests/runner/test_vllm_cuda.py, tests/runner/test_deepspeed_mpi.py -m cuda).
# Each line: backend, dtype, tokens/s over the worker's time after its model load (engine start apart), load
# or engine start seconds, and how many of the 64 greedy sequences equal hf bf16's token for token.
#
# Environments: PYTHON runs hf and deepspeed (default .venv/bin/python); VLLM_PYTHON runs vllm (default
# .venv-vllm/bin/python; on a GPU machine an environment with the CUDA `vllm` package: docs/vllm.md).
# A backend whose environment lacks its package is reported as skipped, not failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d -t lmsweep-gpu-check-XXXX)}
PYTHON=${PYTHON:-.venv/bin/python}
VLLM_PYTHON=${VLLM_PYTHON:-.venv-vllm/bin/python}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export VLLM_ENABLE_V1_MULTIPROCESSING=0
unset DS_ACCELERATOR
mkdir -p "$OUT"
START=$(date +%s)
echo "gpu_check: results under $OUT"
"$PYTHON" -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU"; print("gpu:", torch.cuda.get_device_name(0))' \
  || exit 1

# spec NAME BACKEND DTYPE [KERNEL_INJECT]: a generate spec of the benchmark workload
spec() {
  "$PYTHON" - "$OUT/$1.yaml" "$1" "$2" "$3" "${4:-}" <<'EOF'
import sys, yaml
from benchmarks.workload import bench_prompts
path, name, backend, dtype, inject = sys.argv[1:]
model = {"alias": "smollm2", "source": "package:smollm2-135m-instruct", "dtype": dtype}
if inject:
    model["kernel_inject"] = inject == "true"
spec = {"name": name, "models": [model], "prompts": [{"name": "bench", "items": bench_prompts(64)}],
        "task": "generate", "decoding": {"max_new_tokens": 64},
        "execution": {"backend": backend, "batch_size": 64}}
open(path, "w").write(yaml.safe_dump(spec, sort_keys=False))
EOF
}

# run NAME PYTHON: plan with PYTHON's lmsweep, run element 0 in a fresh worker; skip when the package is missing
run() {
  local name=$1 py=$2 package=$3
  if ! "$py" -c "import $package" 2>/dev/null; then
    echo "$name: skipped ($py has no $package)"; return 0
  fi
  "$py" -m lmsweep plan "$OUT/$name.yaml" --output-dir "$OUT/runs" >/dev/null || { echo "$name: plan failed"; return 0; }
  timeout 300 "$py" -m lmsweep worker --plan "$OUT/runs/$name" --element 0 >"$OUT/$name.log" 2>&1 \
    || echo "$name: worker failed (exit $?; see $OUT/$name.log)"
}

spec hf-bf16 hf bfloat16
spec hf-fp16 hf float16
spec ds-inject deepspeed bfloat16 true
spec vllm-bf16 vllm bfloat16
spec vllm-fp32 vllm float32
run hf-bf16 "$PYTHON" transformers
run hf-fp16 "$PYTHON" transformers
run ds-inject "$PYTHON" deepspeed
run vllm-bf16 "$VLLM_PYTHON" vllm
run vllm-fp32 "$VLLM_PYTHON" vllm

"$PYTHON" - "$OUT/runs" <<'EOF'
import json, sys
from pathlib import Path
import lmsweep
runs = Path(sys.argv[1])
def figures(name):
    exp = runs / name
    metas = sorted((exp / "meta").glob("element-*-rank-*.json")) if exp.exists() else []
    if not metas:
        return None
    meta, df = json.loads(metas[0].read_text()), lmsweep.load(exp).sort_values("prompt_id")
    t = meta["timers"]
    after = t["total_s"] - t["setup_s"] - t["load_s"]
    start = (meta.get("backend_config") or {}).get("engine_start_s") or t["load_s"]
    return {"tps": df["num_new_tokens"].sum() / after, "start": start, "ids": [list(x) for x in df["token_ids"]],
            "gpu": meta.get("binding", {}).get("gpu_name")}
base = figures("hf-bf16")
print(f"{'backend':<12}{'tokens/s':>10}{'load/engine s':>15}{'same as hf bf16':>17}")
for name in ("hf-bf16", "hf-fp16", "ds-inject", "vllm-bf16", "vllm-fp32"):
    f = figures(name)
    if f is None:
        print(f"{name:<12}{'-':>10}{'-':>15}{'not run':>17}")
        continue
    same = f"{sum(a == b for a, b in zip(f['ids'], base['ids']))}/{len(base['ids'])}" if base else "-"
    print(f"{name:<12}{f['tps']:>10.1f}{f['start']:>15.1f}{same:>17}")
EOF

# The CUDA-marked tests, in what time is left of the 8 minutes.
LEFT=$(( 480 - ($(date +%s) - START) ))
if [ "$LEFT" -gt 60 ]; then
  VLLM_PYTHON="$VLLM_PYTHON" timeout "$LEFT" "$PYTHON" -m pytest -q -m cuda tests/runner/test_vllm_cuda.py \
    tests/runner/test_deepspeed_mpi.py -p no:cacheprovider || echo "gpu_check: CUDA tests failed or ran out of time"
else
  echo "gpu_check: no time left for the CUDA tests (${LEFT}s)"
fi
echo "gpu_check: $(( $(date +%s) - START ))s"
