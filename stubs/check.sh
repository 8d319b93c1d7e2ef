#!/usr/bin/env bash
# The type checks CI runs (see stubs/README.md); any drift between the stubs, the extension and
# the public annotations fails:
#   1. the committed stubs are exactly what stubs/generate.sh writes now;
#   2. mypy.stubtest finds the stubs true to the built extension numpack._core;
#   3. mypy --strict accepts tests/typing/usage.py, a typed use of the public API, and the
#      file runs;
#   4. mypy proves both backends implement the backend contract of numpack/_backend.py.
# Needs cargo, and $PYTHON (default: python3) with numpack installed and mypy.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PYTHON=${PYTHON:-python3}
# The checks below run from a temporary directory: a relative interpreter path must not break.
if [[ $PYTHON == */* ]]; then
    PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export MYPY_CACHE_DIR="$tmp/mypy-cache"

echo "stubs: regenerating"
stubs/generate.sh "$tmp/gen"
if ! diff -ru stubs/numpack "$tmp/gen/numpack"; then
    echo "stubs/numpack differs from what the generator writes: run stubs/generate.sh" >&2
    exit 1
fi

# The mypy runs start in $tmp, away from the sources: mypy then sees numpack as a user does, an
# installed package with its py.typed (from here, numpack/ would be checked as code of its
# own), and whatever cache it writes goes away with $tmp.
cd "$tmp"

echo "stubs: mypy.stubtest numpack._core"
MYPYPATH="$root/stubs" "$PYTHON" -m mypy.stubtest numpack._core \
    --allowlist "$root/stubs/stubtest-allowlist.txt" --ignore-unused-allowlist

echo "stubs: mypy --strict tests/typing/usage.py"
"$PYTHON" -m mypy --strict "$root/tests/typing/usage.py"
"$PYTHON" "$root/tests/typing/usage.py"

# A copy of the package with the extension's stub beside it: mypy then sees numpack._core's
# types while it checks the assignments at the end of _backend.py (errors elsewhere are not
# this check's business, hence silent imports).
echo "stubs: mypy numpack/_backend.py (both backends implement the contract)"
mkdir "$tmp/pkg"
cp -r "$root/numpack" "$tmp/pkg/numpack"
cp "$root/stubs/numpack/_core/__init__.pyi" "$tmp/pkg/numpack/_core.pyi"
(cd "$tmp/pkg" && "$PYTHON" -m mypy --follow-imports=silent numpack/_backend.py)
