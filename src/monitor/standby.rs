//! A standby's round: watch the upstream, report replication to the primary, and follow
//! another upstream when told to.

use std::time::Duration;

use pgrx::prelude::*;

use super::{Monitor, Snapshot, Stop, flush_to};
use crate::catalog::NodeRecord;
use crate::events::Event;
use crate::{follow, shmem};

/// The node a standby (or witness) watches: its registered upstream, else the primary.
pub(super) fn upstream_of<'a>(me: &NodeRecord, snap: &'a Snapshot) -> Option<&'a NodeRecord> {
    me.upstream_node_id
        .and_then(|u| snap.node(u))
        .or_else(|| snap.primary())
}

impl Monitor {
    pub(super) fn standby_round(
        &mut self,
        now: Duration,
        snap: &Snapshot,
        me: &NodeRecord,
    ) -> Result<Duration, Stop> {
        let Some(upstream) = upstream_of(me, snap).cloned() else {
            let me = self.me();
            return Ok(self.wait_for(format!(
                "{me} has no registered upstream or primary to monitor"
            )));
        };
        let primary = snap.primary().filter(|p| p.node_id != me.node_id).cloned();
        let history = self
            .settings
            .monitor
            .history
            .then_some(primary.as_ref())
            .flatten();
        // One history row per due check. When the upstream is the primary, that write is itself
        // the check (a stronger one than a ping): no extra connection per round when all is well.
        let due = self.check_due(now, &upstream);
        let to_upstream = history.is_some_and(|p| p.node_id == upstream.node_id);
        let observed = match history {
            Some(p) if due && to_upstream => Some(self.write_history(snap, me, p)),
            _ => None,
        };
        if self.watch_upstream(now, &upstream, observed) {
            if let (Some(p), true, false) = (history, due, to_upstream) {
                self.write_history(snap, me, p);
            }
            if let Some(p) = primary.as_ref() {
                flush_to(&mut self.outbox, &self.settings, &mut self.peers, p);
            }
        }
        self.follow_if_told(snap, me);
        self.degraded_check(now)?;
        Ok(self.until_next_check())
    }

    /// Adds a `repmgr.monitoring_history` row on the primary: this standby's positions, and the
    /// lag measured against the primary's current WAL position. Returns whether the primary
    /// answered (an error it reports still proves it is alive).
    fn write_history(&mut self, snap: &Snapshot, me: &NodeRecord, primary: &NodeRecord) -> bool {
        let (Some(receive), Some(apply_lag)) =
            (snap.receive_lsn.as_deref(), snap.apply_lag.as_deref())
        else {
            return self.check(primary);
        };
        let standby = me.node_id.to_string();
        let primary_id = primary.node_id.to_string();
        let sql = "INSERT INTO repmgr.monitoring_history
                     (primary_node_id, standby_node_id, last_monitor_time, last_apply_time, last_wal_primary_location,
                      last_wal_standby_location, replication_lag, apply_lag)
                   SELECT $1::int, $2::int, $3::timestamptz, $4::timestamptz, pg_catalog.pg_current_wal_lsn(), $5::pg_lsn,
                          GREATEST(pg_catalog.pg_current_wal_lsn() - $5::pg_lsn, 0)::bigint, GREATEST($6::bigint, 0)";
        let monitored = snap.taken_at.as_str();
        let params = [
            Some(primary_id.as_str()),
            Some(standby.as_str()),
            Some(monitored),
            snap.last_replay.as_deref(),
            Some(receive),
            Some(apply_lag),
        ];
        let written = self
            .peers
            .get(primary, &self.settings)
            .and_then(|p| p.run(sql, &params));
        match written {
            Ok(_) => {
                let now = super::timestamp_now();
                shmem::update(|s| s.last_updated = now);
                true
            }
            Err(f) => {
                self.peers.forget(primary.node_id);
                debug1!(
                    "repmgr: could not write monitoring history on {}: {}",
                    primary.describe(),
                    crate::error::mask_text(&f.message)
                );
                !f.is_no_answer()
            }
        }
    }

    /// Acts on `notify_follow_primary()`, unless paused (the notification then waits).
    fn follow_if_told(&mut self, snap: &Snapshot, me: &NodeRecord) {
        let Some(state) = shmem::read() else { return };
        if !state.follow_new_primary || state.paused {
            return;
        }
        let target = state.candidate_node_id;
        shmem::update(|s| {
            s.follow_new_primary = false;
            s.candidate_node_id = -1;
        });
        if target == shmem::ELECTION_RERUN_NOTIFICATION {
            log!(
                "repmgr: {} was asked to rerun the election, but no election is in progress here",
                self.me()
            );
            return;
        }
        let upstream = match snap.node(target) {
            Some(u) if u.node_id != me.node_id => u.clone(),
            _ => {
                warning!(
                    "repmgr: {} was told to follow node {target}, which is not another registered node; ignoring",
                    self.me()
                );
                return;
            }
        };
        let primary = snap.primary().cloned();
        let mut ev = match follow::repoint(&self.settings, me, &upstream, primary.as_ref()) {
            Ok(details) => {
                log!("repmgr: {details}");
                Event::new(me.node_id, "standby_follow", details)
            }
            Err(f) => {
                let details = format!(
                    "{} could not follow {}: {}",
                    self.me(),
                    upstream.describe(),
                    f.message
                );
                warning!("repmgr: {}", crate::error::mask_text(&details));
                let mut ev = Event::new(me.node_id, "standby_follow", details);
                ev.successful = false;
                ev
            }
        };
        ev = ev.about(upstream.node_id, &upstream.node_name, &upstream.conninfo);
        self.queue(ev);
        self.upstream = None;
    }
}
