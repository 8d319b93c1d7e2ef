//! The errors of the core; the bindings map each kind to its Python class.

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum Error {
    NotFound(String),
    RowIndex(String),
    ShapeMismatch(String),
    DType(String),
    InvalidArgument(String),
    Corrupt(String),
    Locked(String),
    /// A call that writes, on a store that cannot be written (a package).
    ReadOnly(String),
    Io(io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotFound(m)
            | Error::RowIndex(m)
            | Error::ShapeMismatch(m)
            | Error::DType(m)
            | Error::InvalidArgument(m)
            | Error::Corrupt(m)
            | Error::Locked(m)
            | Error::ReadOnly(m) => f.write_str(m),
            Error::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}
