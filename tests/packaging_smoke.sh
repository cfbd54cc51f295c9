#!/usr/bin/env bash
# Packaging smoke run: what a user gets from a clean clone.
#
#   1. git clone of the repository (committed files only) into a temporary folder;
#   2. `python -m build` there: an sdist, then a wheel built from that sdist, which must hold
#      the compiled extension (MOLLIFY_FAST_REQUIRE_EXT=1: a failed build fails);
#   3. a fresh virtual environment holding only a CPU torch (and numpy, which the wheel pulls in);
#   4. the wheel installed there; `python -m mollify_fast info`;
#   5. every available backend (torch, cpu, reference; triton only if installed) against the
#      reference on a small input, and each CPU instruction-set path bit-identical to the others.
#
# Usage: tests/packaging_smoke.sh [REPO]   (REPO: a path or URL to clone, default this checkout)
# Environment:
#   PYTHON            the interpreter that runs `build` and makes the venv (default python3); it
#                     needs the `build` package (requirements-dev.txt)
#   TORCH_SPEC        what pip installs as torch (default: /opt/wheels/torch-2.13.0+cpu-*.whl when
#                     present, else torch==2.13.0 from PyTorch's CPU index)
#   MOLLIFY_FAST_CUDA default off here: a CPU-only extension keeps the run to a few minutes
#   SMOKE_NO_ISOLATION=1  build with the current environment's setuptools/pybind11/cmake instead
#                     of an isolated build environment (no network needed for the build)
# The network is needed for pip (torch's dependencies, numpy; the isolated build's tools).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
repo="${1:-$here}"
PYTHON="${PYTHON:-python3}"
export MOLLIFY_FAST_CUDA="${MOLLIFY_FAST_CUDA:-off}"
export MOLLIFY_FAST_REQUIRE_EXT=1
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
t_all=$(date +%s)

step() {  # step NAME COMMAND...: run it, print how long it took
  local name="$1"; shift
  local t0; t0=$(date +%s%N)
  echo "== $name"
  "$@"
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '== %s: %d.%01d s\n' "$name" $((ms / 1000)) $(((ms % 1000) / 100))
}

build_args=()
[ "${SMOKE_NO_ISOLATION:-0}" = 1 ] && build_args+=(--no-isolation)

step "clone" git clone --quiet "$repo" "$tmp/src"
build() {  # the log only on failure: compiler output is long
  "$PYTHON" -m build "${build_args[@]}" --outdir "$tmp/dist" "$tmp/src" > "$tmp/build.log" 2>&1 \
    || { tail -50 "$tmp/build.log"; return 1; }
}
step "python -m build (sdist, then the wheel from it)" build

check_dist() {
  local sdist wheel
  sdist=$(ls "$tmp"/dist/*.tar.gz) && wheel=$(ls "$tmp"/dist/*.whl)
  echo "sdist: $(basename "$sdist") ($(tar tzf "$sdist" | wc -l) files)"
  echo "wheel: $(basename "$wheel")"
  "$PYTHON" - "$sdist" "$wheel" <<'EOF'
import json, sys, tarfile, zipfile
sdist, wheel = sys.argv[1:]
names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
for need in ("CMakeLists.txt", "csrc/bindings.cpp", "csrc/cpu_dispatch.cpp", "kernels/mollify_cuda.cu", "LICENSE"):
    assert need in names, f"sdist lacks {need}"
z = zipfile.ZipFile(wheel)
so = [n for n in z.namelist() if n.startswith("mollify_fast/_C") and n.endswith(".so")]
assert so, "the wheel has no compiled extension"
st = json.loads(z.read("mollify_fast/_build_status.json"))
assert st["built"] is True, st
assert "mollify_fast/py.typed" in z.namelist()
assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in z.namelist()), "no LICENSE"
print("wheel holds", so[0], "and", st)
EOF
}
step "check the sdist and the wheel" check_dist

if [ -z "${TORCH_SPEC:-}" ]; then
  TORCH_SPEC=$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1 || true)
fi
torch_args=("${TORCH_SPEC:-torch==2.13.0}")
[ -z "${TORCH_SPEC:-}" ] && torch_args+=(--extra-index-url https://download.pytorch.org/whl/cpu)
step "fresh venv with a CPU torch only" bash -c '
  "$1" -m venv "$2/v" && "$2/v/bin/pip" install --quiet --disable-pip-version-check "${@:3}"' _ \
  "$PYTHON" "$tmp" "${torch_args[@]}"
step "pip install the wheel" "$tmp/v/bin/pip" install --quiet --disable-pip-version-check "$tmp"/dist/*.whl

cd "$tmp"  # not the checkout: the installed package is what gets imported
step "python -m mollify_fast info" "$tmp/v/bin/python" -m mollify_fast info

run_backends() {
  "$tmp/v/bin/python" - <<'EOF'
import os, subprocess, sys
import torch
import mollify_fast as mf
from mollify_fast.backends._native import extension

assert "site-packages" in mf.__file__, mf.__file__
avail = {n: ok for n, (ok, _) in mf.available_backends().items()}
assert avail["cpu"] and avail["torch"] and avail["reference"], mf.available_backends()
x = torch.randn(2, 3, 10, 12, generator=torch.Generator().manual_seed(0))
sig = torch.tensor([0.2, 0.7])
for name in [n for n in ("torch", "cpu", "triton", "reference") if avail[n]]:
    # Blur only (sigma = 0): every backend, the torch one included, computes alpha * B(x).
    got = mf.mollify(x, 0.0, alpha=0.9, blur_sigma=1.2, backend=name)
    ref = mf.mollify(x, 0.0, alpha=0.9, blur_sigma=1.2, backend="reference")
    assert torch.allclose(got, ref, rtol=0, atol=1e-5), name
    if name != "torch":  # the torch backend draws PyTorch's own noise; the others share the Philox stream
        for kw in ({}, {"blur_sigma": sig, "alpha": sig}):
            got = mf.mollify(x, sig, generator=mf.Generator(7), backend=name, **kw)
            ref = mf.mollify(x, sig, generator=mf.Generator(7), backend="reference", **kw)
            assert torch.allclose(got, ref, rtol=2e-5, atol=2e-5), name
    print(f"{name:<9} equal to the reference")
ext = extension()[0]
outs = {}
for isa in ext.cpu_isas():  # each path this CPU runs, forced as a user would
    code = ("import torch, mollify_fast as mf; x = torch.randn(3, 2, 17, 33, generator=torch.Generator().manual_seed(1)); "
            "y = mf.mollify(x, 0.6, alpha=0.8, blur_sigma=1.1, generator=mf.Generator(3), backend='cpu'); "
            "z = mf.mollify(x.double(), 0.6, alpha=0.8, generator=mf.Generator(4), backend='cpu'); "
            "import hashlib; print(hashlib.sha256(y.numpy().tobytes() + z.numpy().tobytes()).hexdigest())")
    env = {**os.environ, "MOLLIFY_FAST_CPU_ISA": isa}
    outs[isa] = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                               check=True).stdout.strip()
assert len(set(outs.values())) == 1, outs
print("cpu paths", ", ".join(outs), "give the same bits")
EOF
}
step "every available backend against the reference" run_backends
echo "== packaging smoke passed in $(( $(date +%s) - t_all )) s"
