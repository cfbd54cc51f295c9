#!/usr/bin/env bash
# Run the Triton backend's tests (interpreter, no GPU) under the lowest supported Triton.
#
# The project supports Triton 3.6 to 3.8; .venv pins the newest. This installs the lowest into
# the git-ignored folder .triton-min/ (once) and puts it first on PYTHONPATH, so that
# `import triton` finds 3.6 while torch and everything else come from .venv.
# Usage, from the repository root:
#   bash tests/triton_min_version.sh [pytest args...]     the Triton tests
#   bash tests/triton_min_version.sh --run CMD [ARGS...]  any command under the lowest Triton
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
min=${TRITON_MIN_VERSION:-3.6.0}
if [ ! -f ".triton-min/triton-${min}.dist-info/METADATA" ]; then
  rm -rf .triton-min
  echo "triton_min_version.sh: installing triton ${min} into .triton-min/"
  # pip warns that torch pins a newer Triton: expected, this copy only shadows the pinned one.
  "$py" -m pip install -q --target .triton-min "triton==${min}" 2>&1 | grep -v "dependency resolver\|requires triton" || true
fi
export PYTHONPATH=".triton-min${PYTHONPATH:+:$PYTHONPATH}"
got=$("$py" -c "import triton; print(triton.__version__)")
if [ "$got" != "$min" ]; then
  echo "expected triton ${min} first on PYTHONPATH, got ${got}" >&2
  exit 1
fi
if [ "${1:-}" = "--run" ]; then
  shift
  echo "triton_min_version.sh: running with triton ${got} from .triton-min/: $*"
  exec "$@"
fi
echo "triton_min_version.sh: running the Triton tests with triton ${got} from .triton-min/"
export TRITON_INTERPRET=1
# The Triton tests: this backend's own (tests/test_mollify_triton*.py: the launch path too), the
# parity tests that run it (-k triton; noise=, the uint8 input map and the device-resident stream
# too), and the sm_90 budget check of the representative subset.
files=(tests/test_mollify_triton*.py tests/test_mollify_backends.py tests/test_mollify_noise_input.py tests/test_mollify_uint8.py
       tests/test_mollify_device_stream.py)
for f in tests/test_sass_report.py; do [ -f "$f" ] && files+=("$f"); done
exec "$py" -m pytest -q -p no:cacheprovider "${files[@]}" -k "triton or sass" "$@"
