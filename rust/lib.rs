//! numpack: a directory store of NumPy arrays. `core` holds the format and the operations
//! with no Python in them; `python` is the thin PyO3 layer that exposes them as `numpack._core`.

pub mod core;
mod python;
