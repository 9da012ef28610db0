//! The fence: no transaction that wrote anything commits on a primary without its lease.
//!
//! Every backend runs this check when a transaction that has a transaction id is about to
//! commit (or prepare). It reads the lease from shared memory and compares its newest
//! sufficient confirmation with `repmgr.fence_timeout` on CLOCK_BOOTTIME, on its own: it does
//! not need the monitoring worker to be running, or to have noticed anything, so a node that
//! was frozen and wakes up refuses at once. Reads, and transactions that wrote nothing, are
//! not affected.

use std::ffi::c_void;

use pgrx::PgSqlErrorCode;
use pgrx::prelude::*;

use crate::error::Failure;
use crate::{clock, shmem};

/// Registers the check for every backend. Only while preloading (the postmaster's callback
/// list is inherited by every process it starts).
pub fn install() {
    unsafe { pg_sys::RegisterXactCallback(Some(check_commit), std::ptr::null_mut()) };
}

/// Why this node may not commit now, if it may not.
pub fn refusal() -> Option<Failure> {
    let st = shmem::read()?;
    let f = st.failover;
    let lease = f.lease.filter(|_| f.armed)?;
    let now = clock::now();
    if lease.may_commit(now, f.timing.fence) {
        return None;
    }
    let since = repmgr_core::lease::confirmed_since(now, &lease.confirmations(), lease.voters());
    let age = since.map_or("never since it started".to_string(), |t| {
        format!("for {} ms", now.saturating_sub(t).as_millis())
    });
    Some(
        Failure::new(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            format!("cannot commit: node {} is fenced, it has not been confirmed by enough voters {age}", f.node_id),
        )
        .detail(format!(
            "A primary needs fresh confirmations from {} of its {} other voters (repmgr.fence_timeout is {} ms); without them another node may have been promoted.",
            repmgr_core::lease::confirmations_needed(lease.voters()),
            lease.voters() - 1,
            f.timing.fence.as_millis()
        ))
        .hint("Send writes to the current primary (SELECT * FROM repmgr.daemon_status()). If this node was replaced it needs repmgr node rejoin."),
    )
}

#[pg_guard]
unsafe extern "C-unwind" fn check_commit(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    if event != pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT
        && event != pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE
    {
        return;
    }
    // A transaction without an id wrote nothing: reads always go through.
    if unsafe { pg_sys::GetTopTransactionIdIfAny() } == pg_sys::InvalidTransactionId {
        return;
    }
    if unsafe { pg_sys::RecoveryInProgress() } {
        return;
    }
    if let Some(f) = refusal() {
        f.raise();
    }
}
