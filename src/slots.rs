//! Logical replication slots across a failover: the adapter of [`repmgr_core::slots`].
//!
//! From PostgreSQL 17, with `repmgr.logical_slot_failover` on, a standby that streams from the
//! primary keeps copies of its failover slots (the settings are written with following's
//! reload), and the primary makes logical decoding wait for the standbys a failover may
//! promote (`synchronized_standby_slots`). A copy left on a node that was a primary (its own
//! slot, `synced = false`) would stop PostgreSQL's syncing of that slot: it is dropped once
//! the node runs as a standby. Before 17 a failover loses every logical slot: `node_check()`
//! and an event say which.

use std::time::Duration;

use pgrx::prelude::*;
use repmgr_core::event;
use repmgr_core::health::LogicalSlot;
use repmgr_core::node::NodeType;
use repmgr_core::slots::{self, SlotCopy, Standby, StandbySettings};

use crate::catalog::NodeRecord;
use crate::config::{FAILOVER_SLOTS, Settings, server_setting};
use crate::db::{Db, Local, in_transaction};
use crate::error::Result;
use crate::events::Event;
use crate::follow;
use crate::peer::Peer;

/// How many usable copies of failover slots a node holds, as an SQL expression (0 before 17).
pub const READY_COPIES: &str = if FAILOVER_SLOTS {
    "(SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_type = 'logical' AND synced AND NOT temporary AND invalidation_reason IS NULL)"
} else {
    "0"
};

/// This node's usable copies of failover slots (none when they cannot be read). In the
/// worker, outside a transaction.
pub fn ready_copies() -> u32 {
    if !FAILOVER_SLOTS {
        return 0;
    }
    in_transaction(|| count_ready(&mut Local))
}

/// [`ready_copies`] within the transaction in progress.
pub fn count_ready(db: &mut dyn Db) -> u32 {
    if !FAILOVER_SLOTS {
        return 0;
    }
    db.read(&format!("SELECT {READY_COPIES}"), &[])
        .ok()
        .and_then(|r| r.get(0, 0).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// How long a written setting is given to be in force (the reload reaching this worker)
/// before it is written again.
const SETTLE: Duration = Duration::from_secs(5);

/// How often a standby looks for slots of its own that shadow the primary's failover slots,
/// and a primary before 17 for logical slots a failover would lose.
const LOOK_EVERY: Duration = Duration::from_secs(10);

/// The worker's memory of what it last did.
#[derive(Default)]
pub struct Keeper {
    applied: Option<Duration>,
    next_look: Duration,
    /// The logical slots last reported as lost by a failover (before 17).
    reported: Vec<String>,
}

fn on(name: &std::ffi::CStr) -> bool {
    server_setting(name).as_deref() == Some("on")
}

/// This standby's settings as in force.
fn in_force<'a>(
    conninfo: Option<&'a str>,
    slot: Option<&'a str>,
    me: &'a NodeRecord,
    from_primary: bool,
) -> StandbySettings<'a> {
    StandbySettings {
        primary_conninfo: conninfo,
        primary_slot_name: slot,
        sync_replication_slots: on(c"sync_replication_slots"),
        hot_standby_feedback: on(c"hot_standby_feedback"),
        from_primary,
        slot_name: me.slot_name.as_deref(),
    }
}

/// Writes what a standby of the primary lacks to keep copies of its failover slots
/// ([`slots::standby_repair`]), creating its slot on `upstream` first when it is not the one
/// in use.
fn repair(settings: &Settings, upstream: &NodeRecord, s: &StandbySettings) -> Result<()> {
    if let Some(slot) = s.slot_name.filter(|w| s.primary_slot_name != Some(*w)) {
        follow::ensure_slot(settings, upstream, slot)?;
    }
    let written = slots::standby_repair(s, &upstream.conninfo)
        .map_err(|e| crate::error::Failure::invalid(format!("primary_conninfo: {e}")))?;
    let written: Vec<(&str, Option<&str>)> = written
        .iter()
        .map(|(k, v)| (*k, Some(v.as_str())))
        .collect();
    follow::set_and_reload(&written)
}

impl Keeper {
    /// A standby's round: puts its settings right when something is missing (adding it to
    /// the connection in force, once per [`SETTLE`]), and drops its own slots that shadow the primary's
    /// failover slots.
    pub fn standby_round(
        &mut self,
        now: Duration,
        settings: &Settings,
        me: &NodeRecord,
        upstream: &NodeRecord,
        primary: Option<&NodeRecord>,
    ) {
        if !settings.manages_failover_slots() || crate::shmem::read().is_some_and(|s| s.paused) {
            return;
        }
        let from_primary = primary.is_some_and(|p| p.node_id == upstream.node_id);
        // Neither the primary nor a standby of it: the catalog still names a replaced primary
        // (following is under way), or no primary is known.
        if !from_primary && upstream.node_type != NodeType::Standby {
            return;
        }
        let conninfo = server_setting(c"primary_conninfo");
        let slot = server_setting(c"primary_slot_name");
        let s = in_force(conninfo.as_deref(), slot.as_deref(), me, from_primary);
        let missing = slots::standby_missing(&s);
        let settled = self.applied.is_none_or(|t| now >= t + SETTLE);
        if !missing.is_empty() && slots::repairable(&s) && settled {
            self.applied = Some(now);
            let done = if from_primary {
                repair(settings, upstream, &s)
            } else {
                follow::set_and_reload(&[("sync_replication_slots", Some("off"))])
            };
            match done {
                Ok(()) if from_primary => log!(
                    "repmgr: {} keeps copies of the primary's failover slots: {}; settings written",
                    me.describe(),
                    missing.join(", ")
                ),
                Ok(()) => log!(
                    "repmgr: {} turned slot synchronization off: it streams from another standby, and PostgreSQL copies slots only from the primary",
                    me.describe()
                ),
                Err(f) => warning!(
                    "repmgr: {} could not write its slot synchronization settings ({}): {}",
                    me.describe(),
                    missing.join(", "),
                    f.message
                ),
            }
        }
        if from_primary && now >= self.next_look {
            self.next_look = now + LOOK_EVERY;
            if let Some(p) = primary {
                drop_shadowing(settings, me, p);
            }
        }
    }

    /// A primary's round: `synchronized_standby_slots` follows its standbys (17+); before
    /// 17, a new set of logical slots is reported once as what a failover would lose.
    pub fn primary_round(
        &mut self,
        now: Duration,
        settings: &Settings,
        me: &NodeRecord,
        nodes: &[NodeRecord],
    ) -> Option<Event> {
        if !FAILOVER_SLOTS {
            if now < self.next_look {
                return None;
            }
            self.next_look = now + LOOK_EVERY;
            let logical = in_transaction(|| logical_slots(&mut Local)).ok()?;
            if logical == self.reported {
                return None;
            }
            self.reported = logical.clone();
            return (!logical.is_empty()).then(|| {
                let details = lost_slots(&logical);
                warning!("repmgr: {details}");
                let mut ev = Event::new(me.node_id, event::LOGICAL_SLOTS_AT_RISK, details);
                ev.successful = false;
                ev
            });
        }
        if !settings.manages_failover_slots() || self.applied.is_some_and(|t| now < t + SETTLE) {
            return None;
        }
        // A fenced primary keeps the list it has: emptied because its standbys left, it would
        // let consumers that still reach it decode WAL the new primary lacks.
        if crate::fence::refusal().is_some() {
            return None;
        }
        let want = match wanted_standby_slots(me, nodes) {
            Ok(w) => w,
            Err(f) => {
                warning!(
                    "repmgr: could not read this primary's standbys and slots: {}",
                    f.message
                );
                return None;
            }
        };
        let have = server_setting(c"synchronized_standby_slots").unwrap_or_default();
        if want == have {
            return None;
        }
        self.applied = Some(now);
        let value = (!want.is_empty()).then_some(want.as_str());
        match follow::set_and_reload(&[("synchronized_standby_slots", value)]) {
            Ok(()) => log!(
                "repmgr: logical decoding now waits for {}",
                if want.is_empty() {
                    "no standby (none that may be promoted streams)".to_string()
                } else {
                    format!("the slots {want} (synchronized_standby_slots)")
                }
            ),
            Err(f) => warning!(
                "repmgr: could not set synchronized_standby_slots to '{want}': {}",
                f.message
            ),
        }
        None
    }
}

/// The words for logical slots a failover would lose (before PostgreSQL 17).
pub fn lost_slots(names: &[String]) -> String {
    format!(
        "a failover loses the logical replication slots {} (PostgreSQL {} has no failover slots; from 17 repmgr keeps them on the standbys): after one, their consumers must be re-created on the new primary",
        names.join(", "),
        pg_sys::PG_MAJORVERSION_NUM
    )
}

/// The names of this node's logical slots.
pub fn logical_slots(db: &mut dyn Db) -> Result<Vec<String>> {
    let r = db.read(
        "SELECT slot_name::text FROM pg_catalog.pg_replication_slots WHERE slot_type = 'logical' ORDER BY 1",
        &[],
    )?;
    Ok((0..r.rows.len())
        .filter_map(|i| r.get(i, 0).map(str::to_string))
        .collect())
}

/// `synchronized_standby_slots` for this primary's standbys now: streaming, promotable, with
/// a physical slot that exists here.
fn wanted_standby_slots(me: &NodeRecord, nodes: &[NodeRecord]) -> Result<String> {
    let (streaming, physical) = in_transaction(|| -> Result<_> {
        let s = Local.read(
            "SELECT application_name FROM pg_catalog.pg_stat_replication WHERE state = 'streaming'",
            &[],
        )?;
        let p = Local.read(
            "SELECT slot_name::text FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical'",
            &[],
        )?;
        Ok((s, p))
    })?;
    let names = |r: &crate::db::Rows| -> Vec<String> {
        (0..r.rows.len())
            .filter_map(|i| r.get(i, 0).map(str::to_string))
            .collect()
    };
    let (streaming, physical) = (names(&streaming), names(&physical));
    let standbys: Vec<Standby> = nodes
        .iter()
        .filter(|n| n.node_id != me.node_id && n.upstream_node_id == Some(me.node_id))
        .map(|n| Standby {
            slot: n
                .slot_name
                .as_deref()
                .filter(|s| physical.iter().any(|p| p == s)),
            streaming: streaming.contains(&n.node_name),
            promotable: promotable_standby(me, n),
        })
        .collect();
    Ok(slots::synchronized_standby_slots(&standbys))
}

/// Whether `n` is a standby of `me` that a failover may promote (registered, active,
/// priority above 0).
pub fn promotable_standby(me: &NodeRecord, n: &NodeRecord) -> bool {
    n.node_type == NodeType::Standby
        && n.active
        && n.priority > 0
        && n.upstream_node_id == Some(me.node_id)
}

/// This standby's logical slots that are its own (not synced), with the same name as a
/// failover slot of the primary: left from when it was a primary, they stop PostgreSQL from
/// syncing that slot. Dropped, and logged.
fn drop_shadowing(settings: &Settings, me: &NodeRecord, primary: &NodeRecord) {
    let own = in_transaction(|| {
        Local.read(
            "SELECT slot_name::text FROM pg_catalog.pg_replication_slots WHERE slot_type = 'logical' AND NOT synced AND NOT active",
            &[],
        )
    });
    let own = match own {
        Ok(own) => own,
        Err(f) => {
            warning!(
                "repmgr: {} could not list its logical slots: {}",
                me.describe(),
                f.message
            );
            return;
        }
    };
    if own.rows.is_empty() {
        return;
    }
    let theirs = Peer::connect(&primary.conninfo, &primary.describe(), settings).and_then(|mut p| {
        p.run(
            "SELECT slot_name::text FROM pg_catalog.pg_replication_slots WHERE slot_type = 'logical' AND failover",
            &[],
        )
    });
    let theirs = match theirs {
        Ok(theirs) => theirs,
        Err(f) => {
            warning!(
                "repmgr: {} could not list the failover slots of {}: {}",
                me.describe(),
                primary.describe(),
                f.message
            );
            return;
        }
    };
    for i in 0..own.rows.len() {
        let Some(name) = own.get(i, 0) else { continue };
        if !(0..theirs.rows.len()).any(|j| theirs.get(j, 0) == Some(name)) {
            continue;
        }
        // A read-only statement: a write would take a transaction id, which recovery refuses,
        // and any error ends the worker; so the slot is dropped only while it is still idle
        // and its own.
        let dropped = in_transaction(|| {
            Local.read(
                "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots
                  WHERE slot_name = $1 AND slot_type = 'logical' AND NOT synced AND NOT active",
                &[Some(name)],
            )
        });
        match dropped {
            Ok(r) if r.rows.is_empty() => {}
            Ok(_) => log!(
                "repmgr: {} dropped its own logical slot {name}, left from when it was a primary: the primary's failover slot of that name is synced here from now on",
                me.describe()
            ),
            Err(f) => warning!(
                "repmgr: {} could not drop its own logical slot {name}, which stops the primary's failover slot of that name from being synced here: {}",
                me.describe(),
                f.message
            ),
        }
    }
}

/// This standby's copies of failover slots.
pub fn copies(db: &mut dyn Db) -> Result<Vec<SlotCopy>> {
    let r = db.read(
        "SELECT slot_name::text, temporary::text, invalidation_reason FROM pg_catalog.pg_replication_slots WHERE slot_type = 'logical' AND synced ORDER BY 1",
        &[],
    )?;
    Ok((0..r.rows.len())
        .filter_map(|i| {
            Some(SlotCopy {
                name: r.get(i, 0)?.to_string(),
                temporary: r.get(i, 1) == Some("true"),
                invalidated: r.get(i, 2).map(str::to_string),
            })
        })
        .collect())
}

/// This node's logical slots and what a failover does to them (a primary), or its copies of
/// the primary's failover slots (a standby), for the metrics and `/status`.
pub fn view(db: &mut dyn Db, in_recovery: bool) -> Result<Vec<LogicalSlot>> {
    if in_recovery {
        if !FAILOVER_SLOTS {
            return Ok(Vec::new());
        }
        return Ok(copies(db)?
            .iter()
            .map(|c| LogicalSlot {
                slot: c.name.clone(),
                state: c.state_word(),
            })
            .collect());
    }
    let failover = if FAILOVER_SLOTS { "failover" } else { "false" };
    let r = db.read(
        &format!(
            "SELECT slot_name::text, {failover}::text FROM pg_catalog.pg_replication_slots WHERE slot_type = 'logical' ORDER BY 1"
        ),
        &[],
    )?;
    Ok((0..r.rows.len())
        .filter_map(|i| {
            Some(LogicalSlot {
                slot: r.get(i, 0)?.to_string(),
                state: if r.get(i, 1) == Some("true") {
                    "failover"
                } else {
                    "lost"
                },
            })
        })
        .collect())
}

/// What this standby lacks to keep copies (see [`slots::standby_missing`]), and whether the
/// worker can put it right.
pub fn standby_missing(me: &NodeRecord, from_primary: bool) -> (Vec<String>, bool) {
    let conninfo = server_setting(c"primary_conninfo");
    let slot = server_setting(c"primary_slot_name");
    let s = in_force(conninfo.as_deref(), slot.as_deref(), me, from_primary);
    (slots::standby_missing(&s), slots::repairable(&s))
}
