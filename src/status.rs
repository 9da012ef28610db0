//! What this node is doing right now: role, WAL positions and lag, read from local state only
//! so that status queries stay instant even when other nodes are down.
//!
//! On a standby the upstream's position comes from the WAL receiver (`latest_end_lsn`, the end
//! of WAL the sender last reported), so lag in bytes needs no connection to the primary.

use repmgr_core::node::NodeType;

use crate::catalog::{self, NodeRecord};
use crate::config::Settings;
use crate::db::{Db, Local, Rows};
use crate::error::Result;
use crate::pglsn::PgLsn;

/// This node at a glance.
pub struct NodeStatus {
    pub node_id: Option<i32>,
    pub node_name: String,
    pub registered_type: Option<String>,
    pub role: String,
    pub in_recovery: bool,
    pub timeline: Option<i32>,
    pub current_lsn: Option<PgLsn>,
    pub receive_lsn: Option<PgLsn>,
    pub replay_lsn: Option<PgLsn>,
    pub upstream_node_id: Option<i32>,
    pub upstream_node_name: Option<String>,
    pub wal_receiver_status: Option<String>,
    pub replication_lag_bytes: Option<i64>,
    pub apply_lag_bytes: Option<i64>,
    pub replication_lag_seconds: Option<f64>,
    pub active_slots: i64,
    pub inactive_slots: i64,
}

/// Seconds a standby's replay is behind, as repmgr defines it: 0 when everything received is
/// replayed, otherwise the age of the last replayed transaction.
const LAG_SECONDS_SQL: &str = "CASE WHEN NOT pg_catalog.pg_is_in_recovery() THEN NULL
     WHEN pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn()
       OR pg_catalog.pg_last_xact_replay_timestamp() IS NULL THEN 0
     ELSE EXTRACT(epoch FROM pg_catalog.clock_timestamp() - pg_catalog.pg_last_xact_replay_timestamp()) END";

fn lsn(rows: &Rows, row: usize, col: usize) -> Option<PgLsn> {
    PgLsn::parse(rows.get(row, col))
}

fn bytes_between(from: Option<PgLsn>, to: Option<PgLsn>) -> Option<i64> {
    Some(from?.0.bytes_until(to?.0) as i64)
}

pub fn node_status(settings: &Settings) -> Result<NodeStatus> {
    let rows = Local.read(
        &format!(
            "SELECT pg_catalog.pg_is_in_recovery(),
                    CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL ELSE pg_catalog.pg_current_wal_lsn() END,
                    pg_catalog.pg_last_wal_receive_lsn(),
                    pg_catalog.pg_last_wal_replay_lsn(),
                    CASE WHEN pg_catalog.pg_is_in_recovery()
                         THEN COALESCE((SELECT received_tli FROM pg_catalog.pg_stat_wal_receiver),
                                       (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()))
                         ELSE ('x' || pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int
                    END,
                    (SELECT status FROM pg_catalog.pg_stat_wal_receiver),
                    (SELECT latest_end_lsn FROM pg_catalog.pg_stat_wal_receiver),
                    {LAG_SECONDS_SQL},
                    (SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical' AND active),
                    (SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical' AND NOT active)"
        ),
        &[],
    )?;
    let in_recovery = rows.get(0, 0) == Some("t");
    let receive = lsn(&rows, 0, 2);
    let replay = lsn(&rows, 0, 3);
    let upstream_end = lsn(&rows, 0, 6);
    let nodes = registered_nodes()?;
    let own = nodes.iter().find(|n| n.node_id == settings.node_id);
    let upstream = own
        .and_then(|o| o.upstream_node_id)
        .and_then(|u| nodes.iter().find(|n| n.node_id == u));
    let role = live_role(in_recovery, own.map_or(NodeType::Primary, |o| o.node_type));
    Ok(NodeStatus {
        node_id: (settings.node_id > 0).then_some(settings.node_id),
        node_name: settings.node_name.clone(),
        registered_type: own.map(|o| o.node_type.to_string()),
        role,
        in_recovery,
        timeline: rows.get(0, 4).and_then(|t| t.parse().ok()),
        current_lsn: lsn(&rows, 0, 1),
        receive_lsn: receive,
        replay_lsn: replay,
        upstream_node_id: own.and_then(|o| o.upstream_node_id),
        upstream_node_name: upstream.map(|u| u.node_name.clone()),
        wal_receiver_status: rows.get(0, 5).map(str::to_string),
        replication_lag_bytes: if in_recovery {
            bytes_between(receive, upstream_end)
        } else {
            None
        },
        apply_lag_bytes: if in_recovery {
            bytes_between(replay, receive)
        } else {
            None
        },
        replication_lag_seconds: rows.get(0, 7).and_then(|s| s.parse().ok()),
        active_slots: rows.get(0, 8).and_then(|s| s.parse().ok()).unwrap_or(0),
        inactive_slots: rows.get(0, 9).and_then(|s| s.parse().ok()).unwrap_or(0),
    })
}

/// This node's copy of the node list.
fn registered_nodes() -> Result<Vec<NodeRecord>> {
    catalog::nodes(&mut Local)
}

/// One standby's replication, as seen from the primary or by the standby itself.
pub struct Lag {
    pub node_id: Option<i32>,
    pub node_name: String,
    pub upstream_node_id: Option<i32>,
    pub state: Option<String>,
    pub sync_state: Option<String>,
    pub sent_lsn: Option<PgLsn>,
    pub write_lsn: Option<PgLsn>,
    pub flush_lsn: Option<PgLsn>,
    pub replay_lsn: Option<PgLsn>,
    pub replication_lag_bytes: Option<i64>,
    pub apply_lag_bytes: Option<i64>,
    pub replay_lag_seconds: Option<f64>,
}

/// On a primary: every attached standby (registered or not). On a standby: itself.
pub fn replication_lag(settings: &Settings) -> Result<Vec<Lag>> {
    let nodes = registered_nodes()?;
    let in_recovery = Local
        .read("SELECT pg_catalog.pg_is_in_recovery()", &[])?
        .get(0, 0)
        == Some("t");
    if in_recovery {
        let rows = Local.read(
            &format!(
                "SELECT r.status, r.latest_end_lsn, r.written_lsn, pg_catalog.pg_last_wal_receive_lsn(),
                        pg_catalog.pg_last_wal_replay_lsn(), {LAG_SECONDS_SQL}
                   FROM (SELECT 1) one LEFT JOIN pg_catalog.pg_stat_wal_receiver r ON true"
            ),
            &[],
        )?;
        let own = nodes.iter().find(|n| n.node_id == settings.node_id);
        let (sent, flush, replay) = (lsn(&rows, 0, 1), lsn(&rows, 0, 3), lsn(&rows, 0, 4));
        return Ok(vec![Lag {
            node_id: (settings.node_id > 0).then_some(settings.node_id),
            node_name: settings.node_name.clone(),
            upstream_node_id: own.and_then(|o| o.upstream_node_id),
            state: rows.get(0, 0).map(str::to_string),
            sync_state: None,
            sent_lsn: sent,
            write_lsn: lsn(&rows, 0, 2),
            flush_lsn: flush,
            replay_lsn: replay,
            replication_lag_bytes: bytes_between(flush, sent),
            apply_lag_bytes: bytes_between(replay, flush),
            replay_lag_seconds: rows.get(0, 5).and_then(|s| s.parse().ok()),
        }]);
    }
    let rows = Local.read(
        "SELECT application_name, state, sync_state, sent_lsn, write_lsn, flush_lsn, replay_lsn,
                EXTRACT(epoch FROM replay_lag), pg_catalog.pg_current_wal_lsn()
           FROM pg_catalog.pg_stat_replication ORDER BY application_name",
        &[],
    )?;
    Ok((0..rows.rows.len())
        .map(|i| {
            let name = rows.get(i, 0).unwrap_or_default().to_string();
            let node = nodes.iter().find(|n| n.node_name == name);
            let current = lsn(&rows, i, 8);
            let (flush, replay) = (lsn(&rows, i, 5), lsn(&rows, i, 6));
            Lag {
                node_id: node.map(|n| n.node_id),
                upstream_node_id: node.and_then(|n| n.upstream_node_id),
                node_name: name,
                state: rows.get(i, 1).map(str::to_string),
                sync_state: rows.get(i, 2).map(str::to_string),
                sent_lsn: lsn(&rows, i, 3),
                write_lsn: lsn(&rows, i, 4),
                flush_lsn: flush,
                replay_lsn: replay,
                replication_lag_bytes: bytes_between(flush, current),
                apply_lag_bytes: bytes_between(replay, flush),
                replay_lag_seconds: rows.get(i, 7).and_then(|s| s.parse().ok()),
            }
        })
        .collect())
}

/// One node's monitoring worker, as that node reports it.
pub struct DaemonStatus {
    pub node_id: i32,
    pub node_name: String,
    /// The live role; None when the node cannot be reached.
    pub role: Option<String>,
    pub reachable: bool,
    pub worker_running: Option<bool>,
    pub worker_pid: Option<i32>,
    pub paused: Option<bool>,
    /// Seconds since the node's worker last reached its upstream; None on a primary.
    pub upstream_last_seen: Option<i32>,
    pub priority: i32,
    pub location: String,
}

fn live_role(in_recovery: bool, registered: NodeType) -> String {
    match (in_recovery, registered) {
        (true, _) => "standby",
        (false, NodeType::Witness) => "witness",
        (false, _) => "primary",
    }
    .to_string()
}

/// Every registered node's worker, asked live; a node that does not answer within the peer
/// timeouts is reported unreachable.
pub fn daemon_status(settings: &Settings) -> Result<Vec<DaemonStatus>> {
    let now = unsafe { pgrx::pg_sys::GetCurrentTimestamp() };
    let nodes = registered_nodes()?;
    Ok(nodes
        .iter()
        .map(|n| {
            let mut st = DaemonStatus {
                node_id: n.node_id,
                node_name: n.node_name.clone(),
                role: None,
                reachable: false,
                worker_running: None,
                worker_pid: None,
                paused: None,
                upstream_last_seen: None,
                priority: n.priority,
                location: n.location.clone(),
            };
            let facts = if n.node_id == settings.node_id {
                let in_recovery = unsafe { pgrx::pg_sys::RecoveryInProgress() };
                crate::shmem::read().map(|s| (in_recovery, s.daemon_pid, s.worker_running(), s.paused, s.upstream_last_seen_secs(now)))
            } else {
                crate::peer::Peer::connect(&n.conninfo, &n.describe(), settings)
                    .and_then(|mut p| {
                        p.run(
                            "SELECT pg_catalog.pg_is_in_recovery(), repmgr.get_repmgrd_pid(), repmgr.repmgrd_is_running(),
                                    repmgr.repmgrd_is_paused(), repmgr.get_upstream_last_seen()",
                            &[],
                        )
                    })
                    .ok()
                    .map(|r| {
                        let int = |c| r.get(0, c).and_then(|v: &str| v.parse().ok()).unwrap_or(-1);
                        (r.get(0, 0) == Some("t"), int(1), r.get(0, 2) == Some("t"), r.get(0, 3) == Some("t"), int(4))
                    })
            };
            if let Some((in_recovery, pid, running, paused, seen)) = facts {
                let role = live_role(in_recovery, n.node_type);
                st.reachable = true;
                st.worker_running = Some(running);
                st.worker_pid = Some(pid);
                st.paused = Some(paused);
                st.upstream_last_seen = (role != "primary").then_some(seen);
                st.role = Some(role);
            }
            st
        })
        .collect())
}

/// One cell of the connectivity matrix.
pub struct MatrixCell {
    pub source: i32,
    pub target: i32,
    /// Whether `source`'s server reaches `target`'s; `None` when `source` could not be asked.
    pub reachable: Option<bool>,
}

/// The connectivity matrix as this node sees it: every node's own view of every node, asked
/// of that node (its `daemon_status()`), or unknown when it cannot be asked from here.
pub fn cluster_matrix(settings: &Settings) -> Result<Vec<MatrixCell>> {
    let nodes = registered_nodes()?;
    let mut out = Vec::new();
    for source in &nodes {
        let seen: Option<Vec<(i32, bool)>> = if source.node_id == settings.node_id {
            daemon_status(settings)
                .ok()
                .map(|v| v.iter().map(|d| (d.node_id, d.reachable)).collect())
        } else {
            crate::peer::Peer::connect(&source.conninfo, &source.describe(), settings)
                .and_then(|mut p| {
                    p.run("SELECT node_id, reachable FROM repmgr.daemon_status()", &[])
                })
                .ok()
                .map(|r| {
                    (0..r.rows.len())
                        .filter_map(|i| {
                            Some((r.get(i, 0)?.parse().ok()?, r.get(i, 1) == Some("t")))
                        })
                        .collect()
                })
        };
        for target in &nodes {
            out.push(MatrixCell {
                source: source.node_id,
                target: target.node_id,
                reachable: seen
                    .as_ref()
                    .map(|s| s.iter().any(|(id, ok)| *id == target.node_id && *ok)),
            });
        }
    }
    Ok(out)
}
