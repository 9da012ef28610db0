//! The primary's side of zero data loss: keeps `synchronous_standby_names` and the published
//! quorum (`repmgr.synchronous_quorum`) in step, one safe move at a time.
//!
//! Which move comes next, and why the order keeps every acknowledged commit findable by the
//! failover rule, is decided in [`repmgr_core::quorum`]. This module only observes (the
//! setting in force, the catalog row, which standbys stream and how far they flushed) and
//! acts (ALTER SYSTEM and a reload; a catalog write). Nothing here waits: a publication is
//! confirmed at a later round, once enough of the applied quorum flushed it, and an applied
//! setting counts as in force once [`SETTLE`] has passed, by when every WAL sender has reloaded.

use std::time::Duration;

use pgrx::prelude::*;
use repmgr_core::event;
use repmgr_core::lease::NodeId;
use repmgr_core::node::NodeType;
use repmgr_core::quorum::{self, Candidate, Config, Mode, Step};

use crate::catalog::NodeRecord;
use crate::config::Settings;
use crate::db::{Db, Local};
use crate::db::{in_transaction, write_transaction};
use crate::error::Result;
use crate::events::Event;

/// How long after a reload the new `synchronous_standby_names` is taken to be in force in
/// every WAL sender (they reload within milliseconds of the postmaster's signal).
pub const SETTLE: Duration = Duration::from_secs(2);

/// How long a standby about to promote itself lets its reload settle.
const RELOAD_BEFORE_PROMOTE: Duration = Duration::from_millis(200);

enum Pending {
    /// Written at `lsn`; confirmed once enough of the applied quorum flushed it.
    Publish { config: Config, lsn: u64 },
    /// Set at `since`.
    Apply { config: Config, since: Duration },
}

/// The primary worker's quorum keeper.
#[derive(Default)]
pub struct Keeper {
    /// The published quorum, read once: on a primary only this worker writes it.
    published: Option<Config>,
    pending: Option<Pending>,
    /// The last thing it waited for, logged once.
    waiting: Option<String>,
}

/// The quorum published in this node's catalog (after replay, on a standby).
pub fn published(db: &mut dyn Db) -> Result<Config> {
    let r = db.read(
        "SELECT num_sync, pg_catalog.array_to_string(members, ',') FROM repmgr.synchronous_quorum",
        &[],
    )?;
    let k = r.get(0, 0).and_then(|v| v.parse().ok()).unwrap_or(0);
    let members = r
        .get(0, 1)
        .unwrap_or_default()
        .split(',')
        .filter_map(|m| m.parse().ok());
    Ok(Config::new(k, members))
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

/// Standbys that may be in the quorum: registered, active, priority above 0, not cascaded;
/// with whether each streams from `me` now and how far it flushed.
fn candidates(me: &NodeRecord, nodes: &[NodeRecord]) -> Result<Vec<(Candidate, Option<u64>)>> {
    let r = in_transaction(|| {
        Local.read(
            "SELECT application_name, state, (flush_lsn - '0/0')::bigint FROM pg_catalog.pg_stat_replication",
            &[],
        )
    })?;
    let attached = |name: &str| {
        (0..r.rows.len())
            .find(|i| r.get(*i, 0) == Some(name))
            .map(|i| {
                (
                    r.get(i, 1) == Some("streaming"),
                    r.get(i, 2).and_then(|l| l.parse::<u64>().ok()),
                )
            })
    };
    // A standby that streams from another standby never acknowledges for the primary. One
    // registered under the old primary (just after a failover) is about to follow this one.
    let cascades_from = |u: NodeId| {
        nodes
            .iter()
            .any(|x| x.node_id == u && x.node_type == NodeType::Standby && x.active)
    };
    Ok(nodes
        .iter()
        .filter(|n| {
            n.node_type == NodeType::Standby
                && n.active
                && n.priority > 0
                && n.node_id != me.node_id
                && n.upstream_node_id
                    .is_none_or(|u| u == me.node_id || !cascades_from(u))
        })
        .map(|n| {
            let (streaming, flushed) = attached(&n.node_name).unwrap_or((false, None));
            (
                Candidate {
                    node_id: n.node_id,
                    streaming,
                },
                flushed,
            )
        })
        .collect())
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

/// Before a standby promotes itself: the quorum it will start with as a primary, so that not
/// one commit of the new primary is acknowledged before its worker manages the quorum. It is
/// the published quorum without this node (in preferred mode with `k` lowered to what is
/// left), which the publication covers.
pub fn prepare_promotion(settings: &Settings, me: NodeId) -> Result<Option<String>> {
    let (published, nodes) = in_transaction(|| -> Result<_> {
        Ok((published(&mut Local)?, crate::catalog::nodes(&mut Local)?))
    })?;
    if !published.is_sync() {
        return Ok(None);
    }
    let mut rest: Vec<NodeId> = published
        .members
        .iter()
        .copied()
        .filter(|m| *m != me)
        .collect();
    if rest.is_empty() {
        // It was the only member: wait for the standbys that may join (a quorum the
        // publication does not cover, but nobody can be promoted under the publication, which
        // names only this node, before this node's worker publishes the new one).
        rest = nodes
            .iter()
            .filter(|n| {
                n.node_type == NodeType::Standby && n.active && n.priority > 0 && n.node_id != me
            })
            .map(|n| n.node_id)
            .collect();
    }
    let k = match settings.failover.synchronous_mode {
        Mode::Strict => published.k,
        Mode::Preferred => published.k.min(rest.len() as u32),
    };
    let start = Config::new(k, rest);
    let value = names(&start, &nodes);
    apply(&value)?;
    // Let the startup process take the reload before the promotion request: when both reach
    // it together it can sleep a whole wal_retrieve_retry_interval before promoting.
    crate::latch::wait(None, RELOAD_BEFORE_PROMOTE);
    Ok(Some(value))
}

impl Keeper {
    fn wait(&mut self, why: String) {
        if self.waiting.as_ref() != Some(&why) {
            log!("repmgr: synchronous quorum: {why}");
            self.waiting = Some(why);
        }
    }

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
                self.wait(format!("cannot manage it now: {}", f.message));
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
        let n = settings.failover.synchronous_standbys;
        let mode = settings.failover.synchronous_mode;
        if crate::fence::refusal().is_some() {
            // It cannot publish, and its commits are refused anyway.
            self.wait(
                "this primary is fenced; the quorum is managed again once it holds its lease"
                    .into(),
            );
            return Ok(None);
        }
        let published = match &self.published {
            Some(p) => p.clone(),
            None => {
                let p = in_transaction(|| published(&mut Local))?;
                self.published = Some(p.clone());
                p
            }
        };
        if n == 0 && !published.is_sync() && self.pending.is_none() {
            // Off, and nothing promised: synchronous_standby_names is the DBA's.
            return Ok(None);
        }
        let current =
            crate::config::server_setting(c"synchronous_standby_names").unwrap_or_default();
        let applied = parse_names(&current, nodes).unwrap_or_else(Config::none);
        let cands = candidates(me, nodes)?;
        match self.pending.take() {
            Some(Pending::Publish { config, lsn }) => {
                let flushed = |id: NodeId| {
                    cands
                        .iter()
                        .find(|(c, _)| c.node_id == id)
                        .and_then(|(c, f)| f.filter(|_| c.streaming))
                };
                let streaming = applied
                    .members
                    .iter()
                    .filter(|m| flushed(**m).is_some())
                    .count();
                let needed = match mode {
                    Mode::Strict => applied.k as usize,
                    Mode::Preferred => (applied.k as usize).min(streaming),
                };
                let have = applied
                    .members
                    .iter()
                    .filter(|m| flushed(**m).is_some_and(|f| f >= lsn))
                    .count();
                if have < needed {
                    self.wait(format!(
                        "waiting for {needed} of the applied quorum ({}) to receive the published {} ({have} have it)",
                        applied.describe(),
                        config.describe()
                    ));
                    self.published = Some(config.clone());
                    self.pending = Some(Pending::Publish { config, lsn });
                    return Ok(None);
                }
            }
            Some(Pending::Apply { config, since }) if applied != config || now < since + SETTLE => {
                self.pending = Some(Pending::Apply { config, since });
                return Ok(None);
            }
            Some(Pending::Apply { .. }) => {}
            None => {}
        }
        let candidates: Vec<Candidate> = cands.iter().map(|(c, _)| c.clone()).collect();
        let target = quorum::target(n, mode, &candidates);
        match quorum::step(&target, &applied, &published) {
            Step::Done => {
                self.waiting = None;
                Ok(None)
            }
            Step::Publish(config) => {
                let members: Vec<String> = config.members.iter().map(|m| m.to_string()).collect();
                let (k, list, id) = (
                    config.k.to_string(),
                    format!("{{{}}}", members.join(",")),
                    me.node_id.to_string(),
                );
                write_transaction(|| {
                    Local.write("DELETE FROM repmgr.synchronous_quorum", &[])?;
                    Local.write(
                        "INSERT INTO repmgr.synchronous_quorum (primary_node_id, num_sync, members) VALUES ($1::int, $2::int, $3::int[])",
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
                    "repmgr: synchronous quorum: published {} (was {})",
                    config.describe(),
                    published.describe()
                );
                self.published = Some(config.clone());
                self.pending = Some(Pending::Publish { config, lsn });
                Ok(None)
            }
            Step::Apply(config) => {
                let value = names(&config, nodes);
                apply(&value)?;
                self.pending = Some(Pending::Apply {
                    config: config.clone(),
                    since: now,
                });
                let streaming = candidates.iter().filter(|c| c.streaming).count();
                let why = if n == 0 {
                    "repmgr.synchronous_standbys is 0: commits no longer wait for standbys"
                        .to_string()
                } else if (streaming as u32) < n && mode == Mode::Preferred {
                    format!(
                        "{streaming} of the {n} standbys asked for stream: commits wait for {} until more return (repmgr.synchronous_mode = preferred)",
                        config.k
                    )
                } else if (streaming as u32) < n {
                    format!(
                        "only {streaming} of the {n} standbys asked for stream: commits wait until {n} acknowledge (repmgr.synchronous_mode = strict)"
                    )
                } else {
                    format!(
                        "{n} of {} streaming standbys acknowledge each commit",
                        config.members.len()
                    )
                };
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
