//! The monitoring worker's process: registration, start, signals, reload, sleep and exit.
//!
//! It replaces repmgr's separate repmgrd daemon with a background worker in each node's
//! postmaster. This module is only the process shell; what a round does is in
//! [`crate::monitor`]. The worker starts once recovery is consistent (so standbys run it too),
//! is restarted by the postmaster one second after it dies, and leaves promptly on SIGTERM:
//! every wait in it, including waits on other nodes, watches the process latch.

use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;

use crate::config::Settings;
use crate::http::{Http, Publisher};
use crate::monitor::Monitor;
use crate::{latch, shmem};

/// How long the postmaster waits before restarting a worker that died.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Registers the worker. Only valid while preloading.
pub fn register() {
    BackgroundWorkerBuilder::new("repmgr monitor")
        .set_type("repmgr monitor")
        .set_library("repmgr")
        .set_function("repmgr_worker_main")
        .enable_spi_access()
        // After enable_spi_access(), which would otherwise wait for the end of recovery:
        // standbys need their worker too.
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(RESTART_DELAY))
        .load();
}

/// Reloads postgresql.conf when a SIGHUP arrived. Returns whether it did.
fn reload_if_asked() -> bool {
    unsafe {
        if pg_sys::ConfigReloadPending == 0 {
            return false;
        }
        pg_sys::ConfigReloadPending = 0;
        pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
    }
    true
}

/// Leaves the process. Exit code 1 makes the postmaster start the worker again after
/// [`RESTART_DELAY`] (it does not during a server shutdown); 0 stops it for good.
fn exit(restart: bool) -> ! {
    unsafe { pg_sys::proc_exit(i32::from(restart)) };
    // proc_exit never returns; PostgreSQL 18's bindings do not say so.
    #[allow(unreachable_code)]
    {
        unreachable!("proc_exit returned")
    }
}

/// Connects to `repmgr.database`. If it does not exist, connecting raises FATAL and the
/// postmaster would restart us every second, logging each failure. So the attempt is marked in
/// shared memory first; a worker that finds the mark from a failed predecessor connects to no
/// database instead, waits quietly until the database appears, and exits to be restarted.
fn connect(settings: &Settings) {
    let failed_before =
        shmem::update(|s| std::mem::replace(&mut s.worker_connecting, true)).unwrap_or(false);
    if !failed_before {
        BackgroundWorker::connect_worker_to_spi(Some(&settings.database), None);
        shmem::update(|s| s.worker_connecting = false);
        return;
    }
    BackgroundWorker::connect_worker_to_spi(None, None);
    log!(
        "repmgr: database \"{}\" does not exist on this node; monitoring starts once it does (CREATE DATABASE {}; CREATE EXTENSION repmgr)",
        settings.database,
        settings.database
    );
    loop {
        if !latch::sleep(settings.monitor.retry.monitor_interval) {
            exit(true);
        }
        reload_if_asked();
        if database_exists(&settings.database) {
            shmem::update(|s| s.worker_connecting = false);
            log!(
                "repmgr: database \"{}\" now exists; restarting the monitoring worker to connect to it",
                settings.database
            );
            exit(true);
        }
    }
}

/// Whether a database exists, for a worker connected to no database: it can read the shared
/// catalog pg_database, but only by a plain scan (looking it up by name needs an index, which
/// needs a database), as PostgreSQL's own logical replication launcher does for its catalogs.
fn database_exists(name: &str) -> bool {
    BackgroundWorker::transaction(|| unsafe {
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, lock);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        let mut found = false;
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let header = (*tuple).t_data;
            let form = header
                .cast::<u8>()
                .add(usize::from((*header).t_hoff))
                .cast::<pg_sys::FormData_pg_database>();
            if std::ffi::CStr::from_ptr((*form).datname.data.as_ptr()).to_bytes() == name.as_bytes()
            {
                found = true;
                break;
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, lock);
        found
    })
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn repmgr_worker_main(_arg: pg_sys::Datum) {
    latch::become_worker();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let settings = Settings::current();
    connect(&settings);
    // A fenced primary makes new sessions read-only by default; the worker's own writes
    // (its catalog, once the lease is back) must not inherit that from a reload it has not
    // processed yet. A session value outranks the configuration file.
    // Likewise the worker's writes (events, history, the published quorum) must never wait
    // for synchronous standbys: a worker blocked in a commit would stop watching the lease.
    // Where a write must reach the standbys, the worker checks their positions itself.
    for (name, value) in [
        (c"default_transaction_read_only", c"off"),
        (c"synchronous_commit", c"local"),
    ] {
        unsafe {
            pg_sys::SetConfigOption(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_SESSION,
            );
        }
    }
    let pid = unsafe { pg_sys::MyProcPid };
    shmem::update(|s| s.daemon_pid = pid);
    shmem::abandon_request();
    if settings.node_id > 0 {
        shmem::set_local_node_id(settings.node_id);
    }
    log!(
        "repmgr: monitoring worker started on {} (pid {pid}), checking every {} ms",
        settings.describe(),
        settings.monitor.retry.monitor_interval.as_millis()
    );
    let mut http = Http::default();
    http.configure(settings.http_listen_address.as_deref(), settings.http_port);
    let mut publisher = Publisher::default();
    let mut monitor = Monitor::new(settings);
    // Monitoring rounds come every repmgr.monitor_interval; the failover protocol ticks in
    // between (every heartbeat, or when its poll's socket is ready).
    let mut next_round = std::time::Instant::now();
    let stop_for_good = loop {
        if latch::shutdown_requested() {
            break false;
        }
        let pass = std::time::Instant::now();
        if reload_if_asked() {
            let new = Settings::current();
            http.configure(new.http_listen_address.as_deref(), new.http_port);
            monitor.reload(new);
        }
        if pass >= next_round || monitor.round_wanted() {
            match monitor.round() {
                Ok(pause) => next_round = std::time::Instant::now() + pause,
                Err(crate::monitor::Stop) => break true,
            }
            if http.serving() {
                publisher.refresh(monitor.settings());
            }
        }
        let wait = monitor.tick_failover();
        crate::command::reap();
        publisher.observe(pass.elapsed());
        if http.serving() {
            publisher.publish();
        }
        let until_round = next_round.saturating_duration_since(std::time::Instant::now());
        if !latch::wait(wait.socket, wait.timeout.min(until_round)) {
            break false;
        }
    };
    // Stop answering health checks first: this node is going away.
    drop(http);
    if latch::postmaster_gone() {
        // Nothing of this server may be used any more: no catalog writes, no event.
        monitor.announce_exit();
        exit(true);
    }
    monitor.shutdown(if stop_for_good {
        "degraded monitoring timeout exceeded"
    } else {
        "TERM signal received"
    });
    shmem::update(|s| s.daemon_pid = -1);
    exit(!stop_for_good);
}
