#!/usr/bin/env bash
# Prepare, on a machine that reaches the package index, everything deploy/gpu/gpu-check.sh needs on an
# offline NVIDIA box, in parts of at most 60 MiB (the box takes 64 MiB per transfer):
#   llama-cpp-python's source without what the build does not need (llama.cpp's vocabulary test files,
#   examples, docs, media, git history), Espalier's wheel and every dependency's wheel for the box's
#   Python, the default models, the first 8 vicuna80 questions, and the two scripts.
#
#   deploy/gpu/prepare.sh [OUT]            (default OUT: gpu-bundle)
#   PYTHON_VERSION=3.12 (the box's), MODELS="small large" (or "small"), SHARED=../shared
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-gpu-bundle}
PY=${PY:-.venv/bin/python}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
MODELS=${MODELS:-small large}
SHARED=${SHARED:-../shared}
MAX_MIB=60
LLAMA_VERSION=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)
ABI=cp${PYTHON_VERSION/./}
say() { echo "[gpu prepare] $*" >&2; }

rm -rf "$OUT" && mkdir -p "$OUT/wheels" "$OUT/parts" "$OUT/data"
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT

say "llama-cpp-python $LLAMA_VERSION source, stripped"
"$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$work/sdist"
tar xzf "$work/sdist/llama_cpp_python-$LLAMA_VERSION.tar.gz" -C "$work"
src="$work/llama_cpp_python-$LLAMA_VERSION"
# Not built when llama.cpp is a subdirectory (its tests, examples and tools are off) nor read by CMake.
rm -rf "$src/.git" "$src/vendor/llama.cpp/models"/ggml-vocab-* "$src/vendor/llama.cpp/docs" \
    "$src/vendor/llama.cpp/examples" "$src/vendor/llama.cpp/media" "$src/vendor/llama.cpp/.github"
tar czf "$work/llama_cpp_python-$LLAMA_VERSION-stripped.tar.gz" -C "$work" "llama_cpp_python-$LLAMA_VERSION"

say "wheels for Python $PYTHON_VERSION (manylinux x86_64): Espalier's dependencies and the source build's"
"$PY" -m pip download -q --only-binary :all: --python-version "$PYTHON_VERSION" --implementation cp \
    --abi "$ABI" --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$OUT/wheels" \
    "grpcio>=1.60" "grpcio-tools>=1.60" "grpcio-health-checking>=1.60" "grpcio-reflection>=1.60" \
    "protobuf>=4.25" "uvloop>=0.19" "h11>=0.14" "prometheus-client>=0.20" \
    "scikit-build-core>=0.9.2" "numpy>=1.20.0" "typing-extensions>=4.5.0" "diskcache>=5.6.1" \
    "jinja2>=2.11.3"
"$PY" -m pip wheel -q --no-deps --no-build-isolation . -w "$OUT/wheels"

say "models: $MODELS"
for role in $MODELS; do
    path=$(.venv/bin/espalier models fetch "$role" | awk -v r="$role" '$1 == r {print $2}')
    cp "$path" "$work/$role.gguf"
    "$PY" deploy/gpu/chunks.py split "$work/$role.gguf" "$OUT/parts" --max-mib "$MAX_MIB" >&2
done
"$PY" deploy/gpu/chunks.py split "$work/llama_cpp_python-$LLAMA_VERSION-stripped.tar.gz" "$OUT/parts" \
    --max-mib "$MAX_MIB" >&2

say "the first 8 vicuna80 questions, the scripts"
"$PY" - "$SHARED/data/vicuna80.csv" "$OUT/data/vicuna80-first8.csv" <<'PYEOF'
import csv, sys
with open(sys.argv[1], newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
with open(sys.argv[2], "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows(rows[:9])  # the header and the first 8 questions
PYEOF
cp "$SHARED/data/NOTICE"* "$OUT/data/" 2>/dev/null || true  # the question set's attribution
cp deploy/gpu/chunks.py deploy/gpu/gpu-check.sh "$OUT/"
echo "$LLAMA_VERSION" > "$OUT/LLAMA_VERSION"

big=$(find "$OUT" -type f -size +"$MAX_MIB"M)
if [ -n "$big" ]; then say "files over $MAX_MIB MiB: $big"; exit 1; fi
say "ready: $(find "$OUT" -type f | wc -l) files, $(du -sh "$OUT" | cut -f1), none over $MAX_MIB MiB, in $OUT"
