#!/usr/bin/env bash
# Builds what the GPU machine runs and packs it into .device-pack/ (ignored by git): the
# mst-plan binary, the test binary and the benchmarks, built for Hopper (sm_90) only, and the
# shared libraries they need that a bare CUDA image lacks (fmt, yaml-cpp, Google Benchmark, ...).
# cuBLASLt is not packed (hundreds of MiB): on_gpu.sh finds the one of the machine's CUDA 13.
#
#   scripts/gpu/pack.sh            # then, on the GPU machine (the device tool's run, carrying
#                                  # .device-pack):  scripts/gpu/on_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
arch="${MSTPLAN_GPU_ARCH:-90}"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMSTPLAN_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" >/dev/null
cmake --build build-gpu -j"$(nproc)" --target mst-plan mstplan_tests mstplan_runtime_bench
rm -rf .device-pack && mkdir -p .device-pack/bin .device-pack/lib
cp build-gpu/mst-plan build-gpu/tests/mstplan_tests build-gpu/benchmarks/mstplan_runtime_bench .device-pack/bin/
strip .device-pack/bin/*  # the carried tree is limited to 64 MiB
# Every shared library of the binaries but the C runtime, the GPU driver and CUDA's own.
for bin in .device-pack/bin/*; do
  ldd "$bin" | awk '/=> \//{print $3}'
done | sort -u | grep -Ev '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libgcc_s|libstdc\+\+|libcuda|libcublas[^/]*|libcudart[^/]*)\.so' |
  while read -r lib; do cp -L "$lib" .device-pack/lib/; done
git rev-parse HEAD > .device-pack/commit
du -sh .device-pack
[ "$(du -sm .device-pack | cut -f1)" -lt 60 ] || { echo 'pack.sh: .device-pack is over 60 MiB: the device tool carries 64 MiB at most' >&2; exit 1; }
