//! The numpack core: the store format and every operation on it, with no Python in it.

pub mod blocks;
pub mod compress;
pub mod error;
pub mod files;
pub mod format;
pub mod gather;
pub mod journal;
pub mod lock;
pub mod log;
pub mod naming;
pub mod package;
pub mod rows;
pub mod store;
mod transpose;

#[cfg(test)]
mod fuzz_tests;

pub use error::{Error, Result};
pub use store::{Item, Replacement, Store, View};
