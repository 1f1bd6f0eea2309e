#!/usr/bin/env bash
# onnxruntime-gpu for the GPU check's ONNX Runtime section, on a GPU machine that cannot download it.
#
# The wheel (onnxruntime-gpu 1.31.1, CUDA 13, ~256 MB) is larger than what one device call carries (64 MiB with the
# working tree), so it travels in pieces, one per call, and is joined and installed by the call that carries the last
# one. The GPU machine already has what the wheel needs (numpy, protobuf, flatbuffers, packaging, and the CUDA 13 and
# cuDNN libraries of its torch, which convert.runtime.sessions preloads), so no other wheel travels.
#
#   here, once:         benchmarks/gpu_wheels.sh fetch [WHEEL]   # .whl-1/ ... .whl-5/, each under 60 MiB, git-ignored
#                       (WHEEL: a copy already downloaded; else pip downloads it)
#   there, calls 1-4:   benchmarks/gpu_wheels.sh keep            # carry [".whl-N"]: kept in /tmp/ort-parts
#   there, call 5:      benchmarks/gpu_wheels.sh install && PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_check.py
#
# The machine keeps /tmp only while it is warm (about 30 s after a call): make the calls one right after the other.
# `install` says which pieces are missing if one was lost, and checks the joined wheel's sha256.
set -euo pipefail

VERSION=1.31.1
PIECES=5
PARTS=/tmp/ort-parts
SITE=/tmp/site
cd "$(dirname "$0")/.."

case "${1:-}" in
fetch)
    dir=$(mktemp -d)
    if [[ -n "${2:-}" ]]; then
        cp "$2" "$dir"/
    else
        python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 -d "$dir" "onnxruntime-gpu==$VERSION"
    fi
    wheel=$(ls "$dir"/onnxruntime_gpu-*.whl)
    size=$(stat -c %s "$wheel")
    piece=$(((size + PIECES - 1) / PIECES))
    if ((piece > 60 * 1024 * 1024)); then
        echo "error: $(basename "$wheel") is $((size >> 20)) MiB: raise PIECES so that each piece is under 60 MiB" >&2
        exit 2
    fi
    rm -rf .whl-*
    split -b "$piece" -d -a 1 "$wheel" "$dir/piece."
    for i in $(seq 1 "$PIECES"); do
        mkdir -p ".whl-$i"
        mv "$dir/piece.$((i - 1))" ".whl-$i/piece.$i"
    done
    printf '%s  %s\n' "$(sha256sum "$wheel" | cut -d' ' -f1)" "$(basename "$wheel")" >.whl-$PIECES/SHA256SUMS
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qxF '/.whl-*/' "$exclude" 2>/dev/null || echo '/.whl-*/' >>"$exclude"
    rm -rf "$dir"
    du -sh .whl-*
    ;;
keep)
    mkdir -p "$PARTS"
    cp .whl-*/piece.* "$PARTS"/
    ls -l "$PARTS"
    ;;
install)
    mkdir -p "$PARTS"
    cp .whl-*/piece.* .whl-*/SHA256SUMS "$PARTS"/ 2>/dev/null || true
    missing=$(for i in $(seq 1 "$PIECES"); do [[ -f "$PARTS/piece.$i" ]] || printf ' %s' "$i"; done)
    if [[ -n "$missing" ]]; then
        echo "error: pieces$missing of $PIECES are not in $PARTS (the machine went cold?): send them again" >&2
        exit 2
    fi
    name=$(cut -d' ' -f3 "$PARTS/SHA256SUMS")
    for i in $(seq 1 "$PIECES"); do cat "$PARTS/piece.$i"; done >"$PARTS/$name"
    (cd "$PARTS" && sha256sum -c SHA256SUMS)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$PARTS/$name"
    PYTHONPATH="$SITE" python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"
    ;;
*)
    echo "usage: $0 fetch | keep | install (see the comment at the top)" >&2
    exit 2
    ;;
esac
