#!/usr/bin/env bash
# Runs on the GPU machine over the repository with .device-pack/ carried (scripts/gpu/pack.sh):
# the CUDA tests, `verify` of tiny plans for every method, predicted against measured peak for
# llama3.2-1b and llama3-8b (random weights) at several lengths per method, the longest length
# the runtime fits against the planner's (bisection), and the benchmarks. Results go to $OUT
# (or ./gpu-out): one JSON line per measurement in measurements.jsonl, logs beside it.
#
#   scripts/gpu/on_gpu.sh [quick]
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-gpu-out}"
mkdir -p "$out"
pack=.device-pack
cublas="$(find / -name 'libcublasLt.so.13*' -not -path '*/proc/*' 2>/dev/null | head -1)"
export LD_LIBRARY_PATH="$PWD/$pack/lib:$(dirname "${cublas:-/usr/local/cuda/lib64/x}"):${LD_LIBRARY_PATH:-}"
bin="$PWD/$pack/bin"
gpu="${MSTPLAN_GPU:-H100-80G}"
log="$out/log.txt"
echo "commit $(cat $pack/commit) on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader) $(date -u +%FT%TZ)" | tee "$log"

# 1. Every CUDA_* test (kernels against their CPU twins, whole steps op by op).
"$bin/mstplan_tests" --gtest_filter='CUDA_*' --gtest_output=json:"$out/cuda_tests.json" 2>&1 | tail -40 | tee -a "$log"

# 2. verify on the GPU: tiny models, every method.
for model in tiny-llama tiny-qwen2 tiny-gemma2; do
  for method in vanilla recompute mst mst-offload; do
    plan="$out/plan.yaml"
    "$bin/mst-plan" --model "$model" --gpu "$gpu" --seq 1024 --method "$method" --out "$plan" >/dev/null 2>&1 || continue
    "$bin/mst-plan" verify "$plan" --backend cuda --json > "$out/verify.json" 2>>"$log"
    python3 - "$out/verify.json" "$model" "$method" >> "$out/measurements.jsonl" <<'PY'
import json, sys
v = json.load(open(sys.argv[1])) if open(sys.argv[1]).read().strip() else {}
print(json.dumps({"kind": "verify", "model": sys.argv[2], "method": sys.argv[3], "seq_len": 1024,
                  "ok": v.get("ok"), "loss": v.get("loss"), "reference_loss": v.get("reference_loss"),
                  "memory": v.get("memory")}))
PY
  done
done

# 3. Predicted against measured peak, per method and length (one step each).
measure() {  # model method seq [gpu spec to plan for] [extra run flags]
  local plan="$out/plan.yaml"
  "$bin/mst-plan" --model "$1" --gpu "${4:-$gpu}" --seq "$3" --method "$2" --out "$plan" >/dev/null 2>&1 || return 2
  # shellcheck disable=SC2086
  "$bin/mst-plan" run "$plan" --backend cuda --steps 1 --json ${5:-} > "$out/run.json" 2>>"$log"
  local rc=$?
  python3 - "$out/run.json" "$1" "$2" "$3" "$rc" >> "$out/measurements.jsonl" <<'PY'
import json, sys
text = open(sys.argv[1]).read().strip()
r = json.loads(text) if text else {}
print(json.dumps({"kind": "run", "model": sys.argv[2], "method": sys.argv[3], "seq_len": int(sys.argv[4]),
                  "exit": int(sys.argv[5]), "memory_only": r.get("memory_only"),
                  "seconds_per_step": r.get("seconds_per_step"), "memory": r.get("memory")}))
PY
  return $rc
}
#    Whole steps at lengths whose attention our kernel (fp32 FMA, no tensor cores yet) finishes in
#    seconds; memory-only steps (every tensor allocated and freed as planned, no kernel) beyond.
lengths="4096 16384"
[ "${1:-}" = quick ] && lengths="4096"
for model in llama3.2-1b llama3-8b; do
  for method in vanilla recompute mst mst-offload; do
    for seq in $lengths; do measure "$model" "$method" "$seq"; echo "$model $method $seq exit $?" | tee -a "$log"; done
    for seq in 65536 131072; do
      measure "$model" "$method" "$seq" "$gpu" --memory-only; echo "$model $method $seq memory-only exit $?" | tee -a "$log"
    done
  done
done

# 4. The longest length the runtime fits (bisection over multiples of 1024 up to the planner's
#    maximum + 10%, memory-only steps: the kernels allocate nothing, so a step fits exactly when
#    its tensors do), against the planner's maximum. Plans beyond the planner's maximum are written
#    for a copy of the GPU spec with 25% more memory (the plan's knobs do not depend on it).
"$bin/mst-plan" gpus "$gpu" | python3 -c '
import re, sys
text = sys.stdin.read()
cap = int(re.search(r"capacity_bytes: (\d+)", text).group(1))
text = re.sub(r"capacity_bytes: \d+", "capacity_bytes: %d" % (cap * 5 // 4), text)
text = re.sub(r"(?m)^name: .*$", "name: oversized-for-bisection", text)
text = re.sub(r"(?m)^(aliases|device_names): .*$", r"\1: []", text)
print(text)' > "$out/oversized-gpu.yaml"
for method in mst mst-offload; do
  max=$("$bin/mst-plan" --model llama3-8b --gpu "$gpu" --method "$method" --json | python3 -c \
        'import json,sys; print(json.load(sys.stdin)["methods"][0]["max_seq_len"])')
  lo=1024; hi=$(( (max * 11 / 10) / 1024 * 1024 + 1024 ))
  while [ $((hi - lo)) -gt 1024 ]; do
    mid=$(( (lo + hi) / 2 / 1024 * 1024 ))
    measure llama3-8b "$method" "$mid" "$out/oversized-gpu.yaml" --memory-only
    rc=$?  # 0: fits and matches; 6: fits, memory differs from the prediction; else it did not fit
    if [ $rc -eq 0 ] || [ $rc -eq 6 ]; then lo=$mid; else hi=$mid; fi
  done
  echo "{\"kind\": \"longest\", \"model\": \"llama3-8b\", \"method\": \"$method\", \"planner_max\": $max, \"runtime_max\": $lo}" \
    | tee -a "$out/measurements.jsonl" "$log"
done

# 5. Benchmarks (kernels and steps).
"$bin/mstplan_runtime_bench" --benchmark_out="$out/runtime_bench.json" --benchmark_out_format=json 2>&1 | tail -12 | tee -a "$log"
# 6. The measurements as a measurement file (docs/specs.md) for scenarios/measured/: the pool's used
#    high-water mark is what the device handed out; bisections become `longest` entries.
python3 - "$out/measurements.jsonl" "$gpu" "$(cat $pack/commit)" > "$out/measured-native.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
gpu, commit = sys.argv[2], sys.argv[3]
peaks, longest = [], []
for r in rows:
    if r.get("kind") == "run" and r.get("exit") in (0, 6) and r.get("memory"):
        by = {row["what"]: row["measured_bytes"] for row in r["memory"].get("rows", [])}
        if "pool used high-water" not in by:
            continue
        e = {"model": r["model"], "gpu": gpu, "method": r["method"], "seq_len": r["seq_len"], "profile": "native",
             "peak_allocated_bytes": by["pool used high-water"], "peak_reserved_bytes": by["pool reserved high-water"]}
        if not r.get("memory_only") and r.get("seconds_per_step"):
            e["step_seconds"] = r["seconds_per_step"]
        peaks.append(e)
    elif r.get("kind") == "longest":
        longest.append({"model": r["model"], "gpu": gpu, "method": r["method"], "profile": "native",
                        "longest_seq_len": r["runtime_max"], "granularity": 1024})
print(json.dumps({"source": f"mst-plan run --backend cuda (scripts/gpu/on_gpu.sh, commit {commit})",
                  "measurements": peaks, "longest": longest}, indent=1))
PY
echo "measured-native.json: copy it to scenarios/measured/ (then: mst-plan fidelity --profile native)" | tee -a "$log"
echo "done" | tee -a "$log"
