#!/usr/bin/env bash
# Runs on the GPU machine (the device tool's `run`, carrying .device-pack for mst-plan): the PyTorch
# fidelity harness over its grid (147 configurations of llama-, qwen- and gemma-shaped models, cut
# to 4 layers) and its bisections, bracketed by the planner's predictions. Results in
# $OUT/pytorch: measured.json (the measurement file: copy it to scenarios/measured/ and commit),
# raw.jsonl (every configuration, out-of-memory ones too) and harness.log.
#
#   MINUTES=9 scripts/gpu/pytorch.sh          # stop starting configurations after 9 minutes
#
# Then, on the build machine: cp <files_at>/pytorch/measured.json scenarios/measured/pytorch-h100-80g.json
# && mst-plan fidelity (the README's table) && ctest -R Fidelity.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-gpu-out}/pytorch"
mkdir -p "$out"
pack=.device-pack
mst_plan=()
if [ -x "$pack/bin/mst-plan" ]; then
  export LD_LIBRARY_PATH="$PWD/$pack/lib:${LD_LIBRARY_PATH:-}"
  mst_plan=(--mst-plan "$PWD/$pack/bin/mst-plan")
fi
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())' \
  | tee "$out/versions.txt"
python3 scripts/pytorch/harness.py --smoke --device cuda 2>&1 | tee "$out/smoke.txt"
python3 scripts/pytorch/harness.py --gpu "${MSTPLAN_GPU:-H100-80G}" --out "$out" --minutes "${MINUTES:-9}" "${mst_plan[@]}"
