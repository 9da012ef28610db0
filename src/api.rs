//! The SQL functions of this project's own API (the repmgr 5.x ones are in [`crate::compat`]).
//!
//! Each is a thin entry point: read the settings once, run the operation, and turn a failure
//! into a PostgreSQL error. None is executable by PUBLIC (see `sql/finalize.sql`).

use pgrx::prelude::*;

use crate::config::Settings;
use crate::error::Failure;
use crate::pglsn::PgLsn;
use crate::raise::{OrRaise, required};
use crate::{registration, shmem, status};

/// The settings, with the `nodes.config_file` to record: the caller's repmgr.conf when the
/// command line registers, else the server's own configuration file.
fn settings_with(config_file: Option<String>) -> Settings {
    let mut s = Settings::current();
    if let Some(f) = config_file.filter(|f| !f.is_empty()) {
        s.config_file = f;
    }
    s
}

/// Registers this server, which must not be in recovery, as the cluster's primary.
#[pg_extern(volatile)]
fn register_primary(
    force: default!(Option<bool>, "false"),
    config_file: default!(Option<String>, "NULL"),
) -> i32 {
    let force = required(force, "force", "repmgr.register_primary()");
    registration::register_primary(&settings_with(config_file), force).or_raise()
}

/// Registers this standby, writing its record on the primary.
#[pg_extern(volatile)]
fn register_standby(
    upstream_node_id: default!(Option<i32>, "NULL"),
    force: default!(Option<bool>, "false"),
    config_file: default!(Option<String>, "NULL"),
) -> i32 {
    let force = required(force, "force", "repmgr.register_standby()");
    registration::register_standby(&settings_with(config_file), upstream_node_id, force).or_raise()
}

/// Registers this separate server as the cluster's witness.
#[pg_extern(volatile)]
fn register_witness(
    primary_conninfo: Option<&str>,
    force: default!(Option<bool>, "false"),
    config_file: default!(Option<String>, "NULL"),
) -> i32 {
    let f = "repmgr.register_witness()";
    let primary_conninfo = required(primary_conninfo, "primary_conninfo", f);
    let force = required(force, "force", f);
    registration::register_witness(&settings_with(config_file), primary_conninfo, force).or_raise()
}

/// Removes a node's record (this node's when `node_id` is NULL).
#[pg_extern(volatile)]
fn unregister_node(node_id: default!(Option<i32>, "NULL"), force: default!(Option<bool>, "false")) {
    let force = required(force, "force", "repmgr.unregister_node()");
    registration::unregister_node(&Settings::current(), node_id, force).or_raise()
}

/// A connection string with its passwords replaced by `********`.
#[pg_extern(immutable, parallel_safe, strict)]
fn mask_conninfo(conninfo: &str) -> String {
    repmgr_core::conninfo::mask(conninfo)
}

/// The version of the repmgr library this server runs, which during a rolling upgrade may
/// differ from the catalog's (`pg_extension.extversion`).
#[pg_extern(immutable, parallel_safe)]
fn library_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// This node: identity, role, WAL positions, lag, the last error repmgr saw here, its
/// monitoring worker (pid, and when it last finished a round), and where its automatic
/// rejoin stands when it needs one.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn node_status() -> TableIterator<
    'static,
    (
        name!(node_id, Option<i32>),
        name!(node_name, String),
        name!(registered_type, Option<String>),
        name!(role, String),
        name!(in_recovery, bool),
        name!(timeline, Option<i32>),
        name!(current_lsn, Option<PgLsn>),
        name!(receive_lsn, Option<PgLsn>),
        name!(replay_lsn, Option<PgLsn>),
        name!(upstream_node_id, Option<i32>),
        name!(upstream_node_name, Option<String>),
        name!(wal_receiver_status, Option<String>),
        name!(replication_lag_bytes, Option<i64>),
        name!(apply_lag_bytes, Option<i64>),
        name!(replication_lag_seconds, Option<f64>),
        name!(active_slots, i64),
        name!(inactive_slots, i64),
        name!(last_error, Option<String>),
        name!(last_error_time, Option<TimestampWithTimeZone>),
        name!(worker_pid, Option<i32>),
        name!(worker_last_round, Option<TimestampWithTimeZone>),
        name!(term, Option<i64>),
        name!(fenced, bool),
        name!(diverged, bool),
        name!(rejoin_state, Option<String>),
        name!(rejoin_detail, Option<String>),
    ),
> {
    let s = status::node_status(&Settings::current()).or_raise();
    let shared = shmem::read();
    let (last_error, last_error_time) = match shared.and_then(|st| st.last_error()) {
        Some((msg, at)) => (Some(msg), TimestampWithTimeZone::try_from(at).ok()),
        None => (None, None),
    };
    let worker_pid = shared
        .filter(|st| st.worker_running())
        .map(|st| st.daemon_pid);
    let worker_last_round = shared
        .filter(|st| st.last_round_at != 0)
        .and_then(|st| TimestampWithTimeZone::try_from(st.last_round_at).ok());
    let term = shared.map(|st| st.failover.term() as i64);
    let fenced = !s.in_recovery && crate::fence::refusal().is_some();
    let diverged = shared.is_some_and(|st| st.failover.diverged);
    let (rejoin_state, rejoin_detail) = shared
        .and_then(|st| st.rejoin())
        .map_or((None, None), |(state, detail)| {
            (Some(state.to_string()), Some(detail))
        });
    TableIterator::once((
        s.node_id,
        s.node_name,
        s.registered_type,
        s.role,
        s.in_recovery,
        s.timeline,
        s.current_lsn,
        s.receive_lsn,
        s.replay_lsn,
        s.upstream_node_id,
        s.upstream_node_name,
        s.wal_receiver_status,
        s.replication_lag_bytes,
        s.apply_lag_bytes,
        s.replication_lag_seconds,
        s.active_slots,
        s.inactive_slots,
        last_error,
        last_error_time,
        worker_pid,
        worker_last_round,
        term,
        fenced,
        diverged,
        rejoin_state,
        rejoin_detail,
    ))
}

/// Replication lag: on a primary, every attached standby; on a standby, its own.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn replication_lag() -> TableIterator<
    'static,
    (
        name!(node_id, Option<i32>),
        name!(node_name, String),
        name!(upstream_node_id, Option<i32>),
        name!(state, Option<String>),
        name!(sync_state, Option<String>),
        name!(sent_lsn, Option<PgLsn>),
        name!(write_lsn, Option<PgLsn>),
        name!(flush_lsn, Option<PgLsn>),
        name!(replay_lsn, Option<PgLsn>),
        name!(replication_lag_bytes, Option<i64>),
        name!(apply_lag_bytes, Option<i64>),
        name!(replay_lag_seconds, Option<f64>),
    ),
> {
    let rows = status::replication_lag(&Settings::current()).or_raise();
    TableIterator::new(rows.into_iter().map(|l| {
        (
            l.node_id,
            l.node_name,
            l.upstream_node_id,
            l.state,
            l.sync_state,
            l.sent_lsn,
            l.write_lsn,
            l.flush_lsn,
            l.replay_lsn,
            l.replication_lag_bytes,
            l.apply_lag_bytes,
            l.replay_lag_seconds,
        )
    }))
}

/// Every node's monitoring worker, asked live: role, whether the worker runs (and its pid),
/// paused, seconds since it last reached its upstream, priority and location.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn daemon_status() -> TableIterator<
    'static,
    (
        name!(node_id, i32),
        name!(node_name, String),
        name!(role, Option<String>),
        name!(reachable, bool),
        name!(worker_running, Option<bool>),
        name!(worker_pid, Option<i32>),
        name!(paused, Option<bool>),
        name!(upstream_last_seen, Option<i32>),
        name!(priority, i32),
        name!(location, String),
    ),
> {
    let rows = status::daemon_status(&Settings::current()).or_raise();
    TableIterator::new(rows.into_iter().map(|d| {
        (
            d.node_id,
            d.node_name,
            d.role,
            d.reachable,
            d.worker_running,
            d.worker_pid,
            d.paused,
            d.upstream_last_seen,
            d.priority,
            d.location,
        )
    }))
}

/// Pauses (true) or resumes (false) this node's automatic actions; monitoring goes on. The
/// choice survives a restart.
#[pg_extern(volatile)]
fn pause(pause: Option<bool>) {
    let pause = required(pause, "pause", "repmgr.pause()");
    if !shmem::set_paused(pause) {
        Failure::state("repmgr.pause() needs the repmgr library in shared_preload_libraries")
            .hint("Add 'repmgr' to shared_preload_libraries in postgresql.conf and restart PostgreSQL.")
            .raise();
    }
}

/// What could stop this node, or the cluster, from failing over safely: one row per check,
/// with status OK, WARNING or CRITICAL and what to do about it.
#[pg_extern(volatile)]
fn node_check() -> TableIterator<
    'static,
    (
        name!(check, String),
        name!(status, String),
        name!(details, String),
    ),
> {
    let checks = crate::check::node_check(&Settings::current()).or_raise();
    TableIterator::new(
        checks
            .into_iter()
            .map(|c| (c.name.to_string(), c.status.to_string(), c.details)),
    )
}

/// Which node's server reaches which, as each node answers when asked from here (a NULL
/// `reachable`: the source node could not be asked).
#[pg_extern(volatile)]
fn cluster_matrix() -> TableIterator<
    'static,
    (
        name!(source_node_id, i32),
        name!(target_node_id, i32),
        name!(reachable, Option<bool>),
    ),
> {
    let cells = status::cluster_matrix(&Settings::current()).or_raise();
    TableIterator::new(cells.into_iter().map(|c| (c.source, c.target, c.reachable)))
}
