#!/usr/bin/env bash
# The CUDA path, measured once: run inside a bundle from deploy/gpu/prepare.sh on an NVIDIA box with
# CUDA's compiler, CMake, ninja and Python 3.12, and no network. It joins the parts (each checked by
# sha256), builds llama-cpp-python from the stripped source with CUDA for this card only, installs
# Espalier beside it from the bundle's wheels, and writes every figure under one folder:
#   engine-small.json  `bench engine`, all layers offloaded, 1/4/8/16/32 sequences
#   answers.json       `bench answers` small-only, direct/sot/sgd on the first 8 vicuna80 questions
#   spec.json          `bench spec` at 1 and 4 sequences (when the large model is in the bundle)
#   env.txt, build.log, *.log
#
#   ./gpu-check.sh [RESULTS]        (default RESULTS: ./results)
#   GPU_CHECK_CPU=1 builds and runs without CUDA (to test the bundle on a CPU machine, shorter runs)
#   PYTHON=python3.12 (the interpreter to build the environment with)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RESULTS=$(mkdir -p "${1:-$HERE/results}" && cd "${1:-$HERE/results}" && pwd)
PYTHON=${PYTHON:-python3.12}
CPU=${GPU_CHECK_CPU:-0}
V=$(cat "$HERE/LLAMA_VERSION")
MODELS="$HERE/models"
say() { echo "[gpu-check $(date +%H:%M:%S)] $*" | tee -a "$RESULTS/progress.log" >&2; }
step() {  # step NAME SECONDS command...: run with a time limit, output to RESULTS/NAME.log, never abort the rest
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    if timeout "$limit" "$@" >"$RESULTS/$name.log" 2>&1; then say "$name: done in $((SECONDS - t0)) s"
    else say "$name: FAILED (exit $?, $((SECONDS - t0)) s): tail of $RESULTS/$name.log:"; tail -5 "$RESULTS/$name.log" >&2; fi
}

say "joining the parts (sha256 checked)"
for manifest in "$HERE"/parts/*.manifest.json; do
    "$PYTHON" "$HERE/chunks.py" join "$manifest" "$MODELS" >&2
done

if [ "$CPU" = 1 ]; then
    ARCH=cpu; CMAKE_ARGS="-DLLAVA_BUILD=OFF"; LAYERS=0; SEQS="1 4"; LIMIT=2; TOKENS=32
else
    # the card's compute capability, e.g. 9.0 -> 90: kernels for this card only build several times faster
    ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH -DLLAVA_BUILD=OFF"; LAYERS=-1
    SEQS="1 4 8 16 32"; LIMIT=8; TOKENS=128
fi
{ echo "arch: $ARCH"; echo "cmake args: $CMAKE_ARGS"; nproc; "$PYTHON" --version; cmake --version | head -1
  command -v nvcc >/dev/null && nvcc --version | tail -2; command -v nvidia-smi >/dev/null && nvidia-smi || true
} >"$RESULTS/env.txt" 2>&1

say "environment and the llama-cpp-python $V build ($CMAKE_ARGS)"
"$PYTHON" -m venv "$HERE/venv"
PIP=("$HERE/venv/bin/python" -m pip install -q --no-index --find-links "$HERE/wheels")
"${PIP[@]}" scikit-build-core numpy typing-extensions diskcache jinja2
t0=$SECONDS
CMAKE_ARGS="$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "${PIP[@]}" --no-build-isolation "$MODELS/llama_cpp_python-$V-stripped.tar.gz" >"$RESULTS/build.log" 2>&1 \
    || { say "the build failed: tail of $RESULTS/build.log"; tail -30 "$RESULTS/build.log" >&2; exit 1; }
say "built in $((SECONDS - t0)) s"
"${PIP[@]}" espalier
ESPALIER="$HERE/venv/bin/espalier"

# shellcheck disable=SC2086 # SEQS is a list of numbers
step engine-small 150 sh -c "'$ESPALIER' bench engine --model '$MODELS/small.gguf' --gpu-layers $LAYERS \
    --sequences $SEQS --tokens $TOKENS --rounds 1 --json > '$RESULTS/engine-small.json'"
step answers 200 "$ESPALIER" bench answers --small-only --small "$MODELS/small.gguf" --gpu-layers "$LAYERS" \
    --set "$HERE/data/vicuna80-first8.csv" --limit "$LIMIT" --modes direct,sot,sgd --judge none \
    --json "$RESULTS/answers.json"
if [ -f "$MODELS/large.gguf" ]; then
    # verify_rows 0: a GPU verifies any number of drafted rows in one batch
    step spec 150 sh -c "'$ESPALIER' bench spec --target '$MODELS/large.gguf' --draft '$MODELS/small.gguf' \
        --gpu-layers $LAYERS --sequences 1 4 --verify-rows 0 --tokens $TOKENS --json > '$RESULTS/spec.json'"
fi
say "results in $RESULTS: $(cd "$RESULTS" && ls | tr '\n' ' ')"
