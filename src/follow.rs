//! Repointing this standby at another upstream, without a restart.
//!
//! Since PostgreSQL 13 `primary_conninfo` and `primary_slot_name` take effect on reload: the
//! startup process restarts the WAL receiver against the new upstream. They are written with
//! PostgreSQL's own ALTER SYSTEM code (SPI cannot run ALTER SYSTEM), then the postmaster is
//! sent SIGHUP, exactly what `pg_reload_conf()` does.

use std::ffi::CString;

use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, quote_literal};
use repmgr_core::conninfo;

use crate::catalog::NodeRecord;
use crate::config::Settings;
use crate::error::{Failure, Result};
use crate::peer::Peer;

/// Runs one ALTER SYSTEM statement through PostgreSQL's own code (SPI refuses ALTER SYSTEM).
/// Must run inside a transaction, as a superuser.
fn alter_system_statement(sql: String) -> Result<()> {
    let sql =
        CString::new(sql).map_err(|_| Failure::invalid("a setting value contains a NUL byte"))?;
    unsafe {
        let list = pg_sys::raw_parser(sql.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        let raw = (*(*list).elements).ptr_value as *mut pg_sys::RawStmt;
        pg_sys::AlterSystemSetConfigFile((*raw).stmt as *mut pg_sys::AlterSystemStmt);
    }
    Ok(())
}

/// Writes `name = value` to postgresql.auto.conf. Must run inside a transaction.
fn alter_system(name: &str, value: &str) -> Result<()> {
    alter_system_statement(format!(
        "ALTER SYSTEM SET {} = {}",
        quote_identifier(name),
        quote_literal(value)
    ))
}

/// Removes `name` from postgresql.auto.conf. Must run inside a transaction.
fn alter_system_reset(name: &str) -> Result<()> {
    alter_system_statement(format!("ALTER SYSTEM RESET {}", quote_identifier(name)))
}

/// Writes each setting to postgresql.auto.conf (`None` removes it). Must run inside a
/// transaction.
fn write_settings(settings: &[(&str, Option<&str>)]) -> Result<()> {
    for (name, value) in settings {
        match value {
            Some(v) => alter_system(name, v)?,
            None => alter_system_reset(name)?,
        }
    }
    Ok(())
}

/// Makes the server re-read its configuration, as `pg_reload_conf()` does.
fn reload() {
    unsafe { libc::kill(pg_sys::PostmasterPid, libc::SIGHUP) };
}

/// Writes each setting to postgresql.auto.conf (`None` removes it), in one transaction of
/// the worker's own, then reloads.
pub fn set_and_reload(settings: &[(&str, Option<&str>)]) -> Result<()> {
    crate::db::in_transaction(|| write_settings(settings))?;
    reload();
    Ok(())
}

/// Stops streaming from the node this standby follows, for good: an empty `primary_conninfo`
/// written and reloaded first, then the WAL receiver stopped. A stopped receiver alone is
/// restarted by the startup process at once against the same node (seen in the long
/// Jepsen-style run: 140 ms after a vote stopped it, a new receiver streamed the thawed old
/// primary's last WAL, and the standby diverged). Whatever follows sets `primary_conninfo`
/// again. `why` ends the log line. In a backend, which already runs a transaction
/// (`in_backend`), only a superuser may write the setting; otherwise the receiver is stopped
/// and the worker detaches for good.
pub fn detach(me: &str, why: &str, in_backend: bool) {
    let cleared = if in_backend {
        if unsafe { pg_sys::superuser() } {
            write_settings(&[("primary_conninfo", Some(""))]).map(|()| reload())
        } else {
            Err(Failure::invalid(
                "this session is not a superuser's; the worker clears it",
            ))
        }
    } else {
        set_and_reload(&[("primary_conninfo", Some(""))])
    };
    if let Err(f) = cleared {
        warning!(
            "repmgr: {me} could not clear primary_conninfo {why}: {}",
            f.message
        );
    }
    stop_wal_receiver(me, why);
}

/// Stops this standby's WAL receiver, if one runs; `why` ends the log line. The receiver is
/// an auxiliary process, which pg_terminate_backend() refuses to signal; the server's own
/// user may. Its pid is read from shared memory, so this works in any process, inside a
/// transaction or not.
pub fn stop_wal_receiver(me: &str, why: &str) {
    let pid = unsafe {
        let w = pg_sys::WalRcv;
        if w.is_null() { 0 } else { (*w).pid }
    };
    if pid > 0 && unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
        log!("repmgr: {me} stopped its WAL receiver (pid {pid}) {why}");
    }
}

/// Whether this standby's WAL receiver is streaming.
pub fn receiver_streams() -> bool {
    unsafe {
        let w = pg_sys::WalRcv;
        !w.is_null() && (*w).walRcvState == pg_sys::WalRcvState::WALRCV_STREAMING
    }
}

/// Whether this standby's `primary_conninfo` is empty (as the worker's last reload read it):
/// it streams from nobody.
pub fn streams_from_nobody() -> bool {
    crate::config::server_setting(c"primary_conninfo").is_none()
}

/// The `primary_conninfo` this standby uses to stream from `upstream`.
pub fn primary_conninfo(me: &NodeRecord, upstream: &NodeRecord) -> Result<String> {
    conninfo::replication(&upstream.conninfo, &upstream.repluser, &me.node_name).map_err(|e| {
        Failure::invalid(format!(
            "the conninfo of {} is not valid: {e}",
            upstream.describe()
        ))
    })
}

/// Creates the physical slot `slot` on `upstream` unless it exists.
pub fn ensure_slot(settings: &Settings, upstream: &NodeRecord, slot: &str) -> Result<()> {
    Peer::connect(&upstream.conninfo, &upstream.describe(), settings)?.run(
        "SELECT pg_catalog.pg_create_physical_replication_slot($1)
          WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)",
        &[Some(slot)],
    )?;
    Ok(())
}

/// Streams from `upstream` from now on: makes sure this node's slot exists there (when slots
/// are used), rewrites the replication settings, reloads, and records the new upstream on the
/// primary. Returns a description of what happened. Runs in the worker, outside a transaction.
pub fn repoint(
    settings: &Settings,
    me: &NodeRecord,
    upstream: &NodeRecord,
    primary: Option<&NodeRecord>,
) -> Result<String> {
    let from_primary = upstream.node_type == repmgr_core::node::NodeType::Primary
        || primary.is_some_and(|p| p.node_id == upstream.node_id);
    let mut conn = primary_conninfo(me, upstream)?;
    let mut slot_sync = Vec::new();
    // Copies of the primary's failover slots are kept through the same reload; PostgreSQL
    // copies them only to a standby streaming through a slot.
    if settings.manages_failover_slots() && me.slot_name.is_some() {
        if from_primary {
            conn = repmgr_core::slots::with_dbname(&conn, &upstream.conninfo).map_err(|e| {
                Failure::invalid(format!(
                    "the conninfo of {} is not valid: {e}",
                    upstream.describe()
                ))
            })?;
        }
        slot_sync = repmgr_core::slots::standby_settings(from_primary);
    }
    if let Some(slot) = me.slot_name.as_deref() {
        ensure_slot(settings, upstream, slot)?;
    }
    let mut written = vec![
        ("primary_conninfo", Some(conn.as_str())),
        (
            "primary_slot_name",
            Some(me.slot_name.as_deref().unwrap_or("")),
        ),
    ];
    written.extend(slot_sync.iter().map(|&(k, v)| (k, Some(v))));
    set_and_reload(&written)?;
    if let Some(p) = primary {
        Peer::connect(&p.conninfo, &p.describe(), settings)?.run(
            "UPDATE repmgr.nodes SET upstream_node_id = $2::int, type = 'standby', active = true WHERE node_id = $1::int",
            &[Some(&me.node_id.to_string()), Some(&upstream.node_id.to_string())],
        )?;
    }
    Ok(format!(
        "{} now follows {}",
        me.describe(),
        upstream.describe()
    ))
}
