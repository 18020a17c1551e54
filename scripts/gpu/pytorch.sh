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
  # mst-plan links cuBLASLt 13 (the CUDA backend); torch brings its own CUDA libraries, so point at the system's.
  # Only mst-plan sees these libraries (a wrapper), so that python's torch keeps its own.
  cublas="$(find / -name 'libcublasLt.so.13*' -not -path '*/proc/*' 2>/dev/null | head -1)"
  libs="$PWD/$pack/lib:$(dirname "${cublas:-/usr/local/cuda/lib64/x}")"
  wrapper="$(realpath "$out")/mst-plan"
  printf '#!/bin/sh\nLD_LIBRARY_PATH="%s:${LD_LIBRARY_PATH:-}" exec "%s" "$@"\n' "$libs" "$PWD/$pack/bin/mst-plan" > "$wrapper"
  chmod +x "$wrapper"
  if "$wrapper" --version; then
    mst_plan=(--mst-plan "$wrapper")
  else
    echo "mst-plan does not start here: the bisections will not be bracketed by its predictions"
  fi
fi
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())' \
  | tee "$out/versions.txt"
python3 scripts/pytorch/harness.py --smoke --device cuda 2>&1 | tee "$out/smoke.txt"
python3 scripts/pytorch/harness.py --gpu "${MSTPLAN_GPU:-H100-80G}" --out "$out" --minutes "${MINUTES:-9}" "${mst_plan[@]}"
