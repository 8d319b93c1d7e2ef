//! Writes the type stub of `numpack._core` from the `#[gen_stub_*]` attributes in
//! `rust/python.rs`: `cargo run --bin stub_gen [OUT_DIR]` (default: `stubs/` beside
//! Cargo.toml), giving `OUT_DIR/numpack/_core/__init__.pyi`. See stubs/README.md.

use std::path::PathBuf;

fn main() -> pyo3_stub_gen::Result<()> {
    let mut stub = numpack::stub_info()?;
    stub.python_root = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("stubs"),
    };
    stub.generate()?;
    Ok(())
}
