//! The store's write lock: an exclusive `flock` on `numpack.lock`, polled until a timeout.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use super::error::{Error, Result};

/// Holds the lock on a file descriptor until dropped; the descriptor must outlive it.
pub struct WriteLock(RawFd);

impl WriteLock {
    pub fn acquire(fd: RawFd, timeout: Duration, what: &str) -> Result<Self> {
        let start = Instant::now();
        loop {
            // SAFETY: flock only reads the descriptor number; the caller keeps it open.
            if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(WriteLock(fd));
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) => {}
                Some(libc::EINTR) => continue,
                _ => return Err(err.into()),
            }
            if start.elapsed() >= timeout {
                return Err(Error::Locked(format!(
                    "{what}: another process holds the write lock (waited {:.1} s)",
                    timeout.as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl WriteLock {
    /// The lock if no one holds it now, without waiting.
    pub fn try_acquire(fd: RawFd) -> Result<Option<Self>> {
        loop {
            // SAFETY: as in `acquire`.
            if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Some(WriteLock(fd)));
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) => return Ok(None),
                Some(libc::EINTR) => continue,
                _ => return Err(err.into()),
            }
        }
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        // SAFETY: as above; an unlock that fails leaves nothing we could repair.
        unsafe { libc::flock(self.0, libc::LOCK_UN) };
    }
}
