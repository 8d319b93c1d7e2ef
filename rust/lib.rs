//! numpack: a directory store of NumPy arrays. `core` holds the format and the operations
//! with no Python in them; `python` is the thin PyO3 layer that exposes them as `numpack._core`.

pub mod core;
mod python;

// What `cargo run --bin stub_gen` writes into stubs/ (see stubs/README.md).
pyo3_stub_gen::define_stub_info_gatherer!(stub_info);
