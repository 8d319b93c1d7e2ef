//! The `numpack._core` extension: converts types, releases the GIL and maps errors; nothing else.

use std::ffi::{c_char, c_int, c_void};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use numpy::{PyReadonlyArray1, PyReadwriteArray1};
use pyo3::exceptions::{PyBufferError, PyOSError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{ffi, import_exception};
use pyo3_stub_gen::derive::{gen_stub_pyclass, gen_stub_pymethods};

use crate::core::format::{Compressed, Compression};
use crate::core::{self, compress, Error, Item, Replacement};

import_exception!(numpack._errors, ArrayNotFoundError);
import_exception!(numpack._errors, RowIndexError);
import_exception!(numpack._errors, ShapeMismatchError);
import_exception!(numpack._errors, DTypeError);
import_exception!(numpack._errors, InvalidArgumentError);
import_exception!(numpack._errors, CorruptStoreError);
import_exception!(numpack._errors, StoreLockedError);
import_exception!(numpack._errors, StoreClosedError);
import_exception!(numpack._errors, ReadOnlyStoreError);

fn to_py(e: Error) -> PyErr {
    match e {
        Error::NotFound(m) => ArrayNotFoundError::new_err(m),
        Error::RowIndex(m) => RowIndexError::new_err(m),
        Error::ShapeMismatch(m) => ShapeMismatchError::new_err(m),
        Error::DType(m) => DTypeError::new_err(m),
        Error::InvalidArgument(m) => InvalidArgumentError::new_err(m),
        Error::Corrupt(m) => CorruptStoreError::new_err(m),
        Error::Locked(m) => StoreLockedError::new_err(m),
        Error::ReadOnly(m) => ReadOnlyStoreError::new_err((libc::EROFS, m)),
        Error::Io(e) => match e.raw_os_error() {
            // OSError(errno, strerror), so Python sees the errno (ENOSPC, EFBIG...) and picks
            // the subclass (FileNotFoundError...) as it does for its own calls.
            Some(code) => {
                let msg = e.to_string();
                let suffix = format!(" (os error {code})");
                let msg = msg.strip_suffix(&suffix).unwrap_or(&msg).to_owned();
                PyOSError::new_err((code, msg))
            }
            None => PyErr::from(e),
        },
    }
}

fn slice<'a, T: numpy::Element>(a: &'a PyReadonlyArray1<T>, what: &str) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| InvalidArgumentError::new_err(format!("{what} must be C-contiguous")))
}

/// What `get_metadata` reports of a compressed array (see `numpack._backend`).
fn compression_info(
    py: Python<'_>,
    e: &core::format::Entry,
    c: &Compressed,
) -> PyResult<Py<PyAny>> {
    let filters = PyDict::new(py);
    for b in &c.blocks {
        let name = if b.codec == compress::STORED_RAW {
            "raw"
        } else {
            compress::FILTER_NAMES[b.filter as usize]
        };
        let n: u64 = filters.get_item(name)?.map_or(Ok(0), |v| v.extract())?;
        filters.set_item(name, n + 1)?;
    }
    let d = PyDict::new(py);
    d.set_item("codec", compress::CODEC)?;
    d.set_item("level", c.level)?;
    d.set_item("block_rows", c.block_rows)?;
    d.set_item("blocks", c.blocks.len())?;
    d.set_item("filters", filters)?;
    d.set_item("raw_bytes", e.physical_bytes())?;
    d.set_item("stored_bytes", c.stored_bytes())?;
    Ok(d.into_any().unbind())
}

/// Of a compression this numpack cannot read, only the codec's name (and the raw size).
fn unreadable_compression(py: Python<'_>, e: &core::format::Entry) -> PyResult<Py<PyAny>> {
    let codec = match &e.compression {
        Compression::Unreadable {
            value: rmpv::Value::Map(m),
            ..
        } => m
            .iter()
            .find(|(k, _)| k.as_str() == Some("codec"))
            .and_then(|(_, v)| v.as_str().map(str::to_owned)),
        _ => None,
    };
    let d = PyDict::new(py);
    d.set_item("codec", codec)?;
    for key in ["level", "block_rows", "blocks", "filters", "stored_bytes"] {
        d.set_item(key, py.None())?;
    }
    d.set_item("raw_bytes", e.physical_bytes())?;
    Ok(d.into_any().unbind())
}

/// A NumPack store directory (the rust backend of `numpack.NumPack`).
#[gen_stub_pyclass]
#[pyclass(frozen, module = "numpack._core")]
struct Store {
    inner: Mutex<Option<core::Store>>,
}

impl Store {
    /// Runs `f` on the open store with the GIL released.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut core::Store) -> core::Result<T> + Send,
    ) -> PyResult<T> {
        let result = py.detach(|| {
            let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            guard.as_mut().map(f)
        });
        match result {
            Some(r) => r.map_err(to_py),
            None => Err(StoreClosedError::new_err("the store is closed")),
        }
    }
}

type ItemArgs<'py> = Vec<(String, String, Vec<u64>, PyReadonlyArray1<'py, u8>)>;

fn items<'a>(args: &'a ItemArgs) -> PyResult<Vec<Item<'a>>> {
    args.iter()
        .map(|(name, dtype, shape, data)| {
            Ok(Item {
                name,
                dtype,
                shape,
                data: slice(data, "data")?,
            })
        })
        .collect()
}

#[gen_stub_pymethods]
#[pymethods]
impl Store {
    #[new]
    #[pyo3(signature = (path, lock_timeout, durable=false))]
    fn new(py: Python<'_>, path: PathBuf, lock_timeout: f64, durable: bool) -> PyResult<Self> {
        let timeout = Duration::try_from_secs_f64(lock_timeout.max(0.0))
            .map_err(|e| InvalidArgumentError::new_err(format!("lock_timeout: {e}")))?;
        let store = py
            .detach(|| core::Store::open(&path, timeout, durable))
            .map_err(to_py)?;
        Ok(Store {
            inner: Mutex::new(Some(store)),
        })
    }

    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    fn names(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.with(py, |s| s.names())
    }

    #[gen_stub(override_return_type(type_repr = "tuple[builtins.str, tuple[builtins.int, ...], builtins.int]", imports = ("builtins")))]
    fn info<'py>(
        &self,
        py: Python<'py>,
        name: &str,
    ) -> PyResult<(String, Bound<'py, PyTuple>, i64)> {
        let (dtype, shape, modified) = self.with(py, |s| s.info(name))?;
        Ok((dtype, PyTuple::new(py, shape)?, modified))
    }

    #[allow(clippy::type_complexity)]
    #[gen_stub(override_return_type(type_repr = "builtins.list[tuple[builtins.str, builtins.str, tuple[builtins.int, ...], builtins.int, builtins.int, builtins.str, builtins.int, dict[builtins.str, typing.Any] | None]]", imports = ("builtins", "typing")))]
    fn entries<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<
        Vec<(
            String,
            String,
            Bound<'py, PyTuple>,
            u64,
            i64,
            String,
            u64,
            Py<PyAny>,
        )>,
    > {
        let entries = self.with(py, |s| s.entries())?;
        entries
            .into_iter()
            .map(|e| {
                let shape = PyTuple::new(py, e.logical_shape())?;
                let (disk, compression) = match e.compressed() {
                    Ok(None) => (e.physical_bytes(), py.None()),
                    Ok(Some(c)) => (c.stored_bytes(), compression_info(py, &e, &c)?),
                    Err(_) => (0, unreadable_compression(py, &e)?),
                };
                Ok((
                    e.name.clone(),
                    e.dtype.clone(),
                    shape,
                    e.dropped(),
                    e.modified_us,
                    e.file,
                    disk,
                    compression,
                ))
            })
            .collect()
    }

    #[pyo3(signature = (items, level=None, block_rows=None))]
    fn save(
        &self,
        py: Python<'_>,
        items: ItemArgs,
        level: Option<i32>,
        block_rows: Option<u64>,
    ) -> PyResult<()> {
        let items = self::items(&items)?;
        self.with(py, |s| s.save(&items, level, block_rows))
    }

    fn append(&self, py: Python<'_>, items: ItemArgs) -> PyResult<()> {
        let items = self::items(&items)?;
        self.with(py, |s| s.append(&items))
    }

    #[allow(clippy::type_complexity)]
    fn replace(
        &self,
        py: Python<'_>,
        items: Vec<(String, PyReadonlyArray1<i64>, PyReadonlyArray1<u8>)>,
    ) -> PyResult<()> {
        let items = items
            .iter()
            .map(|(name, rows, data)| {
                Ok(Replacement {
                    name,
                    rows: slice(rows, "rows")?,
                    data: slice(data, "data")?,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        self.with(py, |s| s.replace(&items))
    }

    fn drop_arrays(&self, py: Python<'_>, names: Vec<String>) -> PyResult<()> {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.with(py, |s| s.drop_arrays(&names))
    }

    fn drop_rows(&self, py: Python<'_>, name: &str, rows: PyReadonlyArray1<i64>) -> PyResult<()> {
        let rows = slice(&rows, "rows")?;
        self.with(py, |s| s.drop_rows(name, rows))
    }

    #[pyo3(signature = (names=None))]
    fn compact(&self, py: Python<'_>, names: Option<Vec<String>>) -> PyResult<()> {
        let names: Option<Vec<&str>> = names
            .as_ref()
            .map(|n| n.iter().map(String::as_str).collect());
        self.with(py, |s| s.compact(names.as_deref()))
    }

    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |s| s.reset())
    }

    /// Starts a transaction (takes the write lock): the writing calls until `commit` make one
    /// commit record.
    fn begin(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |s| s.begin())
    }

    fn commit(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |s| s.commit())
    }

    /// Ends the transaction, undoing everything it did.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |s| s.abort())
    }

    fn format_version(&self, py: Python<'_>) -> PyResult<u64> {
        self.with(py, |s| s.format_version())
    }

    /// The metadata as one snapshot, the log folded in (what a package holds).
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let bytes = self.with(py, |s| s.snapshot())?;
        Ok(pyo3::types::PyBytes::new(py, &bytes))
    }

    fn view(&self, py: Python<'_>, name: &str) -> PyResult<View> {
        let view = self.with(py, |s| s.view(name))?;
        Ok(View {
            inner: Arc::new(view),
        })
    }
}

/// A snapshot of one array (see `numpack._backend`).
#[gen_stub_pyclass]
#[pyclass(frozen, module = "numpack._core")]
struct View {
    inner: Arc<core::View>,
}

#[gen_stub_pymethods]
#[pymethods]
impl View {
    #[getter]
    fn dtype(&self) -> &str {
        &self.inner.dtype
    }

    #[getter]
    #[gen_stub(override_return_type(type_repr = "tuple[builtins.int, ...]", imports = ("builtins")))]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.inner.shape)
    }

    #[getter]
    fn dropped(&self) -> u64 {
        self.inner.dropped
    }

    fn read(
        &self,
        py: Python<'_>,
        start: u64,
        stop: u64,
        mut out: PyReadwriteArray1<u8>,
    ) -> PyResult<()> {
        let out = out
            .as_slice_mut()
            .map_err(|_| InvalidArgumentError::new_err("out must be C-contiguous"))?;
        py.detach(|| self.inner.read(start, stop, out))
            .map_err(to_py)
    }

    fn gather(
        &self,
        py: Python<'_>,
        rows: PyReadonlyArray1<i64>,
        mut out: PyReadwriteArray1<u8>,
    ) -> PyResult<()> {
        let rows = slice(&rows, "rows")?;
        let out = out
            .as_slice_mut()
            .map_err(|_| InvalidArgumentError::new_err("out must be C-contiguous"))?;
        py.detach(|| self.inner.gather(rows, out)).map_err(to_py)
    }

    /// A read-only buffer over the mapped rows, or None (see `core::View::bytes`).
    fn buffer(&self) -> Option<Buffer> {
        self.inner.bytes().map(|_| Buffer {
            view: self.inner.clone(),
        })
    }
}

/// Exports a view's mapping through the buffer protocol; it keeps the mapping alive.
#[gen_stub_pyclass]
#[pyclass(frozen, module = "numpack._core")]
struct Buffer {
    view: Arc<core::View>,
}

// The stub of what CPython makes of `__getbuffer__` (`__buffer__`, from Python 3.12 on), which
// `#[gen_stub(skip)]` leaves out because of its raw pointers.
pyo3_stub_gen::inventory::submit! {
    pyo3_stub_gen::derive::gen_methods_from_python! {
        r#"
        class Buffer:
            def __buffer__(self, flags: builtins.int, /) -> builtins.memoryview: ...
        "#
    }
}

#[gen_stub_pymethods]
#[pymethods]
impl Buffer {
    #[gen_stub(skip)]
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("null view"));
        }
        if flags & ffi::PyBUF_WRITABLE != 0 {
            return Err(PyBufferError::new_err("a numpack mapping is read-only"));
        }
        let (ptr, len) = {
            let data = slf.get().view.bytes().unwrap_or(&[]);
            (data.as_ptr(), data.len())
        };
        // SAFETY: `view` is a valid Py_buffer to fill (checked non-null); the data stays
        // mapped while the exporter, whose reference we hand over in `obj`, is alive; the
        // format string is static.
        unsafe {
            (*view).obj = slf.into_any().into_ptr();
            (*view).buf = ptr as *mut c_void;
            (*view).len = len as isize;
            (*view).readonly = 1;
            (*view).itemsize = 1;
            (*view).format = if flags & ffi::PyBUF_FORMAT != 0 {
                c"B".as_ptr() as *mut c_char
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = 1;
            (*view).shape = if flags & ffi::PyBUF_ND != 0 {
                &mut (*view).len
            } else {
                std::ptr::null_mut()
            };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                &mut (*view).itemsize
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
        }
        Ok(())
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // One decoding thread more than there are cores: the caller blocks while the pool decodes,
    // and after another library's threads ran (blosc2's, say) the kernel tended to wake both
    // workers of a two-core machine on one core, so full loads ran at one core's speed until
    // it moved one (benchmarks/bench_compress.py, where calls of all libraries interleave). A
    // spare worker always finds the idle core. RAYON_NUM_THREADS, when set, still decides.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Fails only when the pool already exists, and then it is already sized.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(cores + 1)
            .build_global();
    }
    m.add_class::<Store>()?;
    m.add_class::<View>()?;
    m.add_class::<Buffer>()?;
    Ok(())
}
