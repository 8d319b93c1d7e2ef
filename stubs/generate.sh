#!/usr/bin/env bash
# Regenerates the type stub of the extension module numpack._core,
# stubs/numpack/_core/__init__.pyi, from the #[gen_stub_*] attributes in rust/python.rs
# (pyo3-stub-gen, through the stub_gen binary of rust/bin/stub_gen.rs). Nobody edits the
# output by hand: change rust/python.rs and run this again.
#
# Usage: stubs/generate.sh [OUT_DIR]     (default stubs/; the stub lands in OUT_DIR/numpack/)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --release --bin stub_gen -- "${1:-stubs}"
