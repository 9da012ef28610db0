//! A standby's round: watch the upstream, report replication to the primary, and follow
//! another upstream when told to.

use std::time::Duration;

use pgrx::prelude::*;

use super::{Monitor, Snapshot, Stop, flush_to};
use crate::catalog::NodeRecord;
use crate::db::{Db, Local};
use crate::events::Event;
use crate::{follow, shmem};
use repmgr_core::node::NodeType;

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
        if self
            .followed
            .as_ref()
            .is_some_and(|(_, then)| *then != me.upstream_node_id)
        {
            self.followed = None;
        }
        let followed = self
            .followed
            .as_ref()
            .map(|(t, _)| snap.node(t.node_id).cloned().unwrap_or_else(|| t.clone()));
        let Some(upstream) = followed.or_else(|| upstream_of(me, snap).cloned()) else {
            let me = self.me();
            return Ok(self.wait_for(format!(
                "{me} has no registered upstream or primary to monitor"
            )));
        };
        // The primary as the failover protocol knows it: newer than this copy of the catalog
        // right after a failover.
        let primary = self
            .failover
            .current_primary()
            .or_else(|| snap.primary().cloned())
            .filter(|p| p.node_id != me.node_id);
        let history = self
            .settings
            .monitor
            .history
            .then_some(primary.as_ref())
            .flatten();
        let due = self.check_due(now, &upstream);
        // When the upstream is the primary this node confirms every heartbeat, those polls
        // are the check: no extra connection, and no wait on a frozen primary.
        let polled = primary
            .as_ref()
            .is_some_and(|p| p.node_id == upstream.node_id);
        let quiet = self.failover.timing().heartbeat * 2 + Duration::from_millis(200);
        // The catalog can still name a primary the failover protocol has moved past (this
        // node voted for its successor, whose promotion has not replicated here yet): it is
        // gone as far as this node is concerned, and often unreachable. Connecting to it
        // would block this worker for the connect timeout at every round, starving its
        // polls of the new primary, which then stays fenced (seen in CI: for good, with a
        // synchronous quorum waiting for this very standby).
        let replaced = upstream.node_type == NodeType::Primary
            && primary
                .as_ref()
                .is_some_and(|p| p.node_id != upstream.node_id);
        let observed = if polled {
            self.failover.silence().map(|s| s < quiet)
        } else if replaced {
            Some(false)
        } else {
            None
        };
        let up = self.watch_upstream(now, &upstream, observed);
        // A primary that just let the history write time out is not called again this round:
        // a second wait would hold the round past a peer timeout plus an interval (seen in CI
        // with a frozen primary: 4.2 s, with an event queued from the worker's start).
        let silent =
            up && matches!((history, due), (Some(p), true) if !self.write_history(snap, me, p));
        // Events go to the primary whenever it is known to answer: through the upstream
        // check, or because this node's polls reach it (its upstream may be elsewhere, or dead).
        let primary_answers = self.failover.silence().is_some_and(|s| s < quiet);
        if (up || primary_answers)
            && !silent
            && let Some(p) = primary.as_ref()
        {
            flush_to(&mut self.outbox, &self.settings, &mut self.peers, p);
        }
        // A new primary said so (notify_follow_primary), unless paused: the notification
        // then waits.
        self.take_notification();
        // Whom to stream from is the failover state machine's call: the primary it knows,
        // when the upstream is gone (a failover happened, or a cascading upstream died), or
        // the node that said it is the new primary.
        let tracker = self.upstream.as_ref().map(|(_, u)| u);
        let state = repmgr_core::driver::Upstream {
            node: Some(upstream.node_id),
            unreachable: tracker.is_some_and(|u| !u.is_up()),
            down: tracker.is_some_and(|u| u.down_since().is_some()),
            detached: follow::streams_from_nobody(),
        };
        if self.pending_follow.is_none()
            && let Some((target, event)) = self.failover.follow_decision(state)
        {
            // A failure is logged and recorded inside.
            let _ = self.start_follow(now, snap, me, &target, event, None);
        }
        self.confirm_follow(now, me);
        if self.pending_follow.is_none() {
            self.slots
                .standby_round(now, &self.settings, me, &upstream, primary.as_ref());
        }
        crate::rejoin::note_streaming();
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

    /// Hands a `notify_follow_primary()` to the failover state machine, unless paused (the
    /// notification then waits).
    fn take_notification(&mut self) {
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
                "repmgr: {} was asked to rerun the election; its next look around does",
                self.me()
            );
            return;
        }
        self.failover.notified(target);
    }

    /// Repoints this standby at `target`, unless its timeline diverged from `target`'s; the
    /// event is recorded (and `request` answered) once streaming is confirmed (see
    /// [`Monitor::confirm_follow`]). A failure is logged, recorded and returned.
    pub(super) fn start_follow(
        &mut self,
        now: Duration,
        snap: &Snapshot,
        me: &NodeRecord,
        target: &NodeRecord,
        event: &'static str,
        request: Option<u64>,
    ) -> Result<(), String> {
        let fail =
            |m: &mut Monitor, details: String| Err(m.follow_failed(me, target, event, &details));
        if let Some(why) = self.diverged_from(me, target) {
            return fail(self, why);
        }
        let primary = self
            .failover
            .current_primary()
            .or_else(|| snap.primary().cloned());
        match follow::repoint(&self.settings, me, target, primary.as_ref()) {
            Ok(details) => {
                log!("repmgr: {details}; waiting for it to stream");
                self.pending_follow = Some(super::PendingFollow {
                    target: target.clone(),
                    since: now,
                    event,
                    request,
                });
                self.upstream = None;
                Ok(())
            }
            Err(f) => fail(
                self,
                format!(
                    "{} could not follow {}: {}",
                    me.describe(),
                    target.describe(),
                    f.message
                ),
            ),
        }
    }

    /// Logs and records a follow of `target` that failed; returns the details, masked.
    fn follow_failed(
        &mut self,
        me: &NodeRecord,
        target: &NodeRecord,
        event: &'static str,
        details: &str,
    ) -> String {
        let details = crate::error::mask_text(details);
        warning!("repmgr: {details}");
        let mut ev = Event::new(me.node_id, event, details.clone()).about(
            target.node_id,
            &target.node_name,
            &target.conninfo,
        );
        ev.successful = false;
        self.queue(ev);
        details
    }

    /// Whether this standby holds WAL past the point where `target`'s timeline began, which
    /// PostgreSQL refuses to follow (it then marks itself diverged and says why). WAL already
    /// received on the target's own timeline (streamed from it after its promotion) is no
    /// sign of divergence: only WAL of an older timeline is. The position is read fresh: WAL
    /// from the old primary can still arrive while the election runs.
    fn diverged_from(&mut self, me: &NodeRecord, target: &NodeRecord) -> Option<String> {
        let r = self
            .peers
            .get(target, &self.settings)
            .and_then(|p| {
                p.run(
                    "SELECT switch_lsn, CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
                            ELSE ('x' || pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int END
                       FROM repmgr.vote_info()",
                    &[],
                )
            })
            .ok()?;
        let switch: u64 = r
            .get(0, 0)
            .and_then(|v| v.parse().ok())
            .filter(|s| *s > 0)?;
        let target_tli: Option<i64> = r.get(0, 1).and_then(|v| v.parse().ok());
        let (held, my_tli) = crate::db::in_transaction(|| {
            let tli = Local
                .read(
                    "SELECT received_tli FROM pg_catalog.pg_stat_wal_receiver",
                    &[],
                )
                .ok()
                .and_then(|r| r.get(0, 0).and_then(|v| v.parse::<i64>().ok()));
            (crate::protocol::received_lsn(), tli)
        });
        let on_its_timeline = matches!((my_tli, target_tli), (Some(m), Some(t)) if m >= t);
        let held = held.filter(|h| *h > switch && !on_its_timeline)?;
        shmem::update(|s| s.failover.diverged = true);
        Some(format!(
            "{} cannot follow {}: it holds WAL up to {} but that node's timeline began at {}; it needs repmgr node rejoin",
            me.describe(),
            target.describe(),
            repmgr_core::lsn::Lsn(held),
            repmgr_core::lsn::Lsn(switch)
        ))
    }

    /// Records the follow event once this standby streams from its new upstream (or gives up
    /// waiting after a while).
    fn confirm_follow(&mut self, now: Duration, me: &NodeRecord) {
        let Some(p) = self.pending_follow.as_ref() else {
            return;
        };
        let target = p.target.clone();
        let streaming = self
            .peers
            .get(&target, &self.settings)
            .and_then(|c| c.run("SELECT 1 FROM pg_catalog.pg_stat_replication WHERE application_name = $1 AND state = 'streaming'", &[Some(&me.node_name)]))
            .is_ok_and(|r| !r.rows.is_empty());
        let (event, since, request) = (p.event, p.since, p.request);
        let waited = now.saturating_sub(since);
        // WAL that reached it from the old primary after the check before repointing. Asked
        // even while the target lists it as streaming: a standby ahead of the target's
        // timeline streams the old timeline's shared part again every few seconds, and is
        // refused the new one each time (seen in a Jepsen run: confirmed, never re-checked).
        let diverged = self.diverged_from(me, &target);
        if let Some(why) = diverged {
            self.pending_follow = None;
            let why = self.follow_failed(me, &target, event, &why);
            if let Some(seq) = request {
                let refusal = crate::manual::refusal(
                    why,
                    "Rejoin it with repmgr node rejoin --force-rewind, run on its machine.",
                );
                shmem::finish_request(seq, &Err(refusal));
            }
            return;
        }
        if !streaming && waited < super::FOLLOW_CONFIRM_TIMEOUT {
            return;
        }
        self.pending_follow = None;
        let mut ev = if streaming {
            self.followed = Some((target.clone(), me.upstream_node_id));
            let details = format!("{} now follows {}", me.describe(), target.describe());
            log!("repmgr: {details}");
            Event::new(me.node_id, event, details)
        } else {
            let details = format!(
                "{} repointed to {} but is not streaming after {} s",
                me.describe(),
                target.describe(),
                waited.as_secs()
            );
            warning!("repmgr: {details}");
            let mut ev = Event::new(me.node_id, event, details);
            ev.successful = false;
            ev
        };
        if let Some(seq) = request {
            let outcome = if ev.successful {
                Ok(ev.details.clone())
            } else {
                Err(crate::manual::refusal(
                    ev.details.clone(),
                    "Check the upstream's pg_hba.conf and replication settings, and this node's server log.",
                ))
            };
            shmem::finish_request(seq, &outcome);
        }
        ev = ev.about(target.node_id, &target.node_name, &target.conninfo);
        self.queue(ev);
    }
}
