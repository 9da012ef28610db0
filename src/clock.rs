//! The clock the failover protocol measures with: CLOCK_BOOTTIME.
//!
//! It never goes back and, unlike CLOCK_MONOTONIC, keeps counting while the machine is
//! suspended, so a node that was frozen or suspended sees the whole gap when it wakes and
//! cannot mistake an old confirmation for a fresh one. Every process of the server reads the
//! same clock, so values stored in shared memory compare across backends and the worker.

use std::time::Duration;

/// Time since the machine booted.
pub fn now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // CLOCK_BOOTTIME cannot fail on Linux with a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// An id for this run of the server (wall-clock microseconds at its start): stamps from an
/// earlier run are never counted.
pub fn incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}
