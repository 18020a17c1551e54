#!/usr/bin/env bash
# Installs what mst-plan needs to build and test, from Debian 12's packages (as root, or through
# sudo). A run on a machine that has everything only checks, in well under a second.
#
# The CUDA toolkit is not a Debian package here: the CUDA backend is built when nvcc is on PATH
# (cmake -DMSTPLAN_CUDA=AUTO, the default) and left out otherwise.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git   # toolchain
  libfmt-dev libyaml-cpp-dev libboost-graph-dev libcli11-dev nlohmann-json3-dev   # libraries
  libgtest-dev libgmock-dev librapidcheck-dev libbenchmark-dev   # tests and benchmarks
  libexpat1-dev   # the report tests parse every SVG figure
  python3 python3-yaml   # the PyTorch harness's grid is checked in the tests (no torch needed)
  gnuplot-nox   # report figures
  libopenmpi-dev openmpi-bin   # multi-rank plans run as MPI processes on the CPU backend (mpirun -np 4 in the tests)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} == 0)); then
  echo "setup: all ${#packages[@]} packages are installed"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "setup: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
