//! The primary's side of zero data loss: the adapter of the quorum keeper.
//!
//! Which move comes next, and why the order keeps every acknowledged commit findable by the
//! failover rule, is decided by [`repmgr_core::quorum::Keeper`]. This module only observes (the
//! setting in force, the catalog row, which standbys stream and how far they flushed) and
//! acts (ALTER SYSTEM and a reload; a catalog write). Nothing here waits: a publication is
//! confirmed at a later round, once enough of the applied quorum flushed it, and an applied
//! setting counts as in force once [`quorum::SETTLE`] has passed.

use std::time::Duration;

use pgrx::prelude::*;
use repmgr_core::event;
use repmgr_core::lease::NodeId;
use repmgr_core::quorum::{self, Candidate, Config, KeeperAction, Observed};

use crate::catalog::NodeRecord;
use crate::config::Settings;
use crate::db::{Db, Local, in_transaction, write_transaction};
use crate::error::Result;
use crate::events::Event;

/// How long a standby about to promote itself lets its reload settle.
const RELOAD_BEFORE_PROMOTE: Duration = Duration::from_millis(200);

/// The primary worker's quorum keeper.
#[derive(Default)]
pub struct Keeper(quorum::Keeper);

/// The quorum published in this node's catalog (after replay, on a standby).
pub fn published(db: &mut dyn Db) -> Result<Config> {
    Ok(publication(db)?.0)
}

/// The quorum published in this node's catalog and the WAL position it was written at (0:
/// none).
pub fn publication(db: &mut dyn Db) -> Result<(Config, u64)> {
    let r = db.read(
        "SELECT num_sync, pg_catalog.array_to_string(members, ','), version FROM repmgr.synchronous_quorum",
        &[],
    )?;
    let k = r.get(0, 0).and_then(|v| v.parse().ok()).unwrap_or(0);
    let members = r
        .get(0, 1)
        .unwrap_or_default()
        .split(',')
        .filter_map(|m| m.parse().ok());
    let version = r.get(0, 2).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok((Config::new(k, members), version))
}

/// Where the synchronous quorum this node's catalog publishes was written; 0 when it
/// publishes none or an asynchronous one (what a voter tells candidates). Unreadable counts
/// as none: the candidate's own catalog, and the members' positions, still guard.
pub fn sync_version(db: &mut dyn Db) -> u64 {
    match publication(db) {
        Ok((q, v)) if q.is_sync() => v,
        _ => 0,
    }
}

/// The quorum `synchronous_standby_names` describes, by node id; `None` for a value that is
/// not one this module writes (names of unregistered nodes, `FIRST`, `*`).
pub fn parse_names(value: &str, nodes: &[NodeRecord]) -> Option<Config> {
    let v = value.trim();
    if v.is_empty() {
        return Some(Config::none());
    }
    let rest = v.strip_prefix("ANY ")?;
    let (k, list) = rest.split_once('(')?;
    let k: u32 = k.trim().parse().ok()?;
    let list = list.trim().strip_suffix(')')?;
    let mut ids = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        let name = item
            .strip_prefix('"')
            .and_then(|i| i.strip_suffix('"'))
            .map_or_else(|| item.to_string(), |i| i.replace("\"\"", "\""));
        if name == quorum::NO_STANDBY {
            continue;
        }
        ids.push(nodes.iter().find(|n| n.node_name == name)?.node_id);
    }
    Some(Config::new(k, ids))
}

/// How far each standby has flushed, by node id.
type Flushed = Vec<(NodeId, u64)>;

/// The standbys that may be in the quorum (see [`quorum::candidates`]), and how far every
/// standby streaming from `me` has flushed, from the primary's own WAL senders.
fn observe(me: &NodeRecord, nodes: &[NodeRecord]) -> Result<(Vec<Candidate>, Flushed)> {
    let r = in_transaction(|| {
        Local.read(
            "SELECT application_name, (flush_lsn - '0/0')::bigint FROM pg_catalog.pg_stat_replication WHERE state = 'streaming'",
            &[],
        )
    })?;
    let flushed: Flushed = (0..r.rows.len())
        .filter_map(|i| {
            let name = r.get(i, 0)?;
            let node = nodes.iter().find(|n| n.node_name == name)?;
            Some((node.node_id, r.get(i, 1)?.parse().ok()?))
        })
        .collect();
    // Streaming before its first flush report too.
    let streams = |id: NodeId| {
        nodes
            .iter()
            .find(|n| n.node_id == id)
            .is_some_and(|n| (0..r.rows.len()).any(|i| r.get(i, 0) == Some(n.node_name.as_str())))
    };
    let candidates = quorum::candidates(me.node_id, nodes, streams);
    Ok((candidates, flushed))
}

/// `synchronous_standby_names` for `config`.
fn names(config: &Config, nodes: &[NodeRecord]) -> String {
    config.standby_names(|id| {
        nodes
            .iter()
            .find(|n| n.node_id == id)
            .map_or_else(|| format!("node{id}"), |n| n.node_name.clone())
    })
}

/// Sets `synchronous_standby_names` (an empty value removes it) and reloads.
fn apply(value: &str) -> Result<()> {
    let value = (!value.is_empty()).then_some(value);
    crate::follow::set_and_reload(&[("synchronous_standby_names", value)])
}

/// Before a standby promotes itself: the quorum it will start with as a primary (see
/// [`quorum::for_promotion`]), set before `pg_promote()`.
pub fn prepare_promotion(settings: &Settings, me: NodeId) -> Result<Option<String>> {
    let (published, nodes) = in_transaction(|| -> Result<_> {
        Ok((published(&mut Local)?, crate::catalog::nodes(&mut Local)?))
    })?;
    let mode = settings.failover.synchronous_mode;
    let Some(start) = quorum::for_promotion(&published, me, mode, &nodes) else {
        return Ok(None);
    };
    let value = names(&start, &nodes);
    apply(&value)?;
    // Let the startup process take the reload before the promotion request: when both reach
    // it together it can sleep a whole wal_retrieve_retry_interval before promoting.
    crate::latch::wait(None, RELOAD_BEFORE_PROMOTE);
    Ok(Some(value))
}

impl Keeper {
    /// One round on the primary. Returns an event when `synchronous_standby_names` changed.
    pub fn round(
        &mut self,
        now: Duration,
        settings: &Settings,
        me: &NodeRecord,
        nodes: &[NodeRecord],
    ) -> Option<Event> {
        match self.try_round(now, settings, me, nodes) {
            Ok(ev) => ev,
            Err(f) => {
                log!(
                    "repmgr: synchronous quorum: cannot manage it now: {}",
                    f.message
                );
                None
            }
        }
    }

    fn try_round(
        &mut self,
        now: Duration,
        settings: &Settings,
        me: &NodeRecord,
        nodes: &[NodeRecord],
    ) -> Result<Option<Event>> {
        let fenced = crate::fence::refusal().is_some();
        let published = if self.0.needs_published() && !fenced {
            Some(in_transaction(|| published(&mut Local))?)
        } else {
            None
        };
        let current =
            crate::config::server_setting(c"synchronous_standby_names").unwrap_or_default();
        let (candidates, flushed) = if fenced {
            (Vec::new(), Vec::new())
        } else {
            observe(me, nodes)?
        };
        let o = Observed {
            n: settings.failover.synchronous_standbys,
            mode: settings.failover.synchronous_mode,
            fenced,
            applied: parse_names(&current, nodes).unwrap_or_else(Config::none),
            published,
            candidates,
            flushed,
        };
        let (action, say) = self.0.round(now, &o);
        if let Some(line) = say {
            log!("repmgr: synchronous quorum: {line}");
        }
        match action {
            None => Ok(None),
            Some(KeeperAction::Publish(config)) => {
                let members: Vec<String> = config.members.iter().map(|m| m.to_string()).collect();
                let (k, list, id) = (
                    config.k.to_string(),
                    format!("{{{}}}", members.join(",")),
                    me.node_id.to_string(),
                );
                write_transaction(|| {
                    Local.write("DELETE FROM repmgr.synchronous_quorum", &[])?;
                    Local.write(
                        "INSERT INTO repmgr.synchronous_quorum (primary_node_id, num_sync, members, version) VALUES ($1::int, $2::int, $3::int[], (pg_catalog.pg_current_wal_insert_lsn() - '0/0')::bigint)",
                        &[Some(&id), Some(&k), Some(&list)],
                    )
                })?;
                let lsn = in_transaction(|| {
                    Local.read(
                        "SELECT (pg_catalog.pg_current_wal_lsn() - '0/0')::bigint",
                        &[],
                    )
                })?
                .get(0, 0)
                .and_then(|l| l.parse().ok())
                .unwrap_or(u64::MAX);
                log!(
                    "repmgr: synchronous quorum: published {}",
                    config.describe()
                );
                self.0.wrote(config, lsn);
                Ok(None)
            }
            Some(KeeperAction::Apply { config, why }) => {
                let value = names(&config, nodes);
                apply(&value)?;
                self.0.set(config, now);
                let details = format!(
                    "synchronous_standby_names changed from '{current}' to '{value}': {why}"
                );
                log!("repmgr: {details}");
                Ok(Some(Event::new(
                    me.node_id,
                    event::SYNCHRONOUS_STANDBYS_CHANGED,
                    details,
                )))
            }
        }
    }
}
