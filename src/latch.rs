//! The monitoring worker's process flags, and every wait that watches the process latch.
//!
//! Waits in this extension, in the worker and in backends alike, go through here: they wake
//! on the latch, so a cancel request, a termination or a shutdown is served at once. In the
//! worker a shutdown request ends the wait (the worker then leaves); in a backend a cancel
//! raises an ERROR as usual.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgrx::prelude::*;
use repmgr_pq::Interest;

use crate::error::Result;

/// True in the worker process only.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// True while the stopping worker makes its last, short writes.
static FINISHING: AtomicBool = AtomicBool::new(false);

/// Set in the worker once a wait saw the postmaster gone.
static POSTMASTER_GONE: AtomicBool = AtomicBool::new(false);

/// Marks this process as the monitoring worker (once, at its start).
pub fn become_worker() {
    ACTIVE.store(true, Ordering::Relaxed);
}

/// Whether this process is the monitoring worker.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Whether the postmaster asked the worker to stop (SIGTERM), outside [`finishing`].
pub fn shutdown_requested() -> bool {
    let requested = unsafe { pg_sys::ShutdownRequestPending != 0 };
    (requested && !FINISHING.load(Ordering::Relaxed)) || postmaster_gone()
}

/// Whether the worker saw its postmaster gone (killed): it must leave at once, after telling
/// the voters if it led ([`crate::failover::Failover::announce_exit`]).
pub fn postmaster_gone() -> bool {
    POSTMASTER_GONE.load(Ordering::Relaxed)
}

/// Runs the stopping worker's last writes, which must not be cut short by the very request
/// to stop; the caller bounds them with short timeouts.
pub fn finishing<R>(f: impl FnOnce() -> R) -> R {
    FINISHING.store(true, Ordering::Relaxed);
    let r = f();
    FINISHING.store(false, Ordering::Relaxed);
    r
}

/// Waits for `events` on the process latch (and `fd`). Returns false when the monitoring
/// worker has been asked to stop; in a backend, a cancel request or termination raises an
/// ERROR instead, closing any connection as it unwinds.
pub(crate) fn latch_wait(events: u32, fd: RawFd, timeout: Duration) -> bool {
    // A backend exits at once when the postmaster dies; the worker is told, so that it can
    // tell the voters first.
    let death = if active() {
        pg_sys::WL_POSTMASTER_DEATH
    } else {
        pg_sys::WL_EXIT_ON_PM_DEATH
    };
    let events = events | pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | death;
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as std::ffi::c_long;
    unsafe {
        let rc = pg_sys::WaitLatchOrSocket(
            pg_sys::MyLatch,
            events as i32,
            fd,
            ms,
            pg_sys::PG_WAIT_EXTENSION,
        );
        if rc & pg_sys::WL_LATCH_SET as i32 != 0 {
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        if rc & pg_sys::WL_POSTMASTER_DEATH as i32 != 0 {
            POSTMASTER_GONE.store(true, Ordering::Relaxed);
        }
    }
    if active() {
        return !shutdown_requested();
    }
    check_for_interrupts!();
    true
}

/// Sleeps without ignoring cancel requests or shutdown. Returns false when the worker must stop.
pub fn sleep(d: Duration) -> bool {
    latch_wait(0, pg_sys::PGINVALID_SOCKET, d)
}

/// Calls `check` every `every` until it gives a value, or gives `None` once `timeout` has
/// passed (or the worker must stop). Waits like [`sleep`].
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(Some(v));
        }
        if Instant::now() >= deadline || !sleep(every) {
            return Ok(None);
        }
    }
}

/// Like [`sleep`], returning early when `socket` is ready.
pub fn wait(socket: Option<(RawFd, Interest)>, d: Duration) -> bool {
    match socket {
        None => sleep(d),
        Some((fd, Interest::Read)) => latch_wait(pg_sys::WL_SOCKET_READABLE, fd, d),
        Some((fd, Interest::Write)) => latch_wait(pg_sys::WL_SOCKET_WRITEABLE, fd, d),
    }
}
