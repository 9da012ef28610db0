//! A node's failover state, and how it answers the other nodes.
//!
//! One [`State`] per node, shared by its monitoring worker (which drives it through
//! [`crate::driver::Driver`]) and every backend that answers another node's poll, pre-vote
//! question or vote request (the methods here). In the server it lives in shared memory and
//! every call runs under its lock; in the simulator it is a plain field. A change that a vote
//! or a confirmation depends on reaches the [`Disk`] before the answer leaves, and is undone
//! when it cannot.

use std::time::Duration;

use crate::durable::Saved;
use crate::election::Answer;
use crate::lease::{Lease, Membership, NodeId, Poll, PollReply, Timing};
use crate::vote::{Durable, VoteReply, VoteRequest, Voter, VoterFacts};

/// Where a node keeps its [`Saved`] state. `save` returns whether it is durable now.
pub trait Disk {
    fn save(&mut self, saved: &Saved) -> bool;
}

/// The failover state of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    pub node_id: NodeId,
    pub voter: Voter,
    /// Present while this node runs as a primary in the protocol.
    pub lease: Option<Lease>,
    /// Whether commits are checked against the lease.
    pub armed: bool,
    /// This node's timing in force (validated settings, published by the worker).
    pub timing: Timing,
    /// Whether this node may stand, as its settings say now: `repmgr.failover = automatic`
    /// and its `repmgr.priority` (published by the worker, reported to candidates).
    pub automatic: bool,
    pub priority: i32,
    /// Its own catalog lists it: a node that is not registered never stands.
    pub member: bool,
    /// It voted for itself and its campaign (or promotion) is under way: it votes for nobody
    /// else meanwhile.
    pub standing: bool,
    /// In this outage it declined to stand for a lasting reason (see
    /// [`crate::election::Plan::Wait`]): others should not defer to it.
    pub declined: bool,
    /// The newest membership version this node's catalog has shown.
    pub version: u64,
    /// The WAL position where this node's timeline began when it was promoted.
    pub switch_lsn: u64,
    /// This standby cannot follow the current primary: its timeline diverged.
    pub diverged: bool,
    /// Unique to this run of the server; every new lease takes the next value, so that no
    /// stamp of an earlier lease or run is ever counted.
    pub incarnation: u64,
}

/// What a pre-vote answer holds beyond [`Answer`]: the primary this voter follows (with its
/// term), where this node's timeline began, and its timing (for `node_check()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreVote {
    pub answer: Answer,
    pub primary: Option<(NodeId, u64)>,
    pub switch_lsn: u64,
    pub timing: Timing,
    /// How long it waits without hearing the primary before it votes.
    pub wait: Duration,
}

/// What a backend knows of its node when it answers a pre-vote question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    pub in_recovery: bool,
    /// Received (or replayed, if further) WAL position, on a standby, and its timeline (0:
    /// unknown).
    pub lsn: Option<u64>,
    pub timeline: u32,
    pub timeline_start: u64,
    pub paused: bool,
    /// Where the synchronous quorum its catalog publishes was written (0: none, or an
    /// asynchronous one).
    pub sync_quorum: u64,
    /// Its usable copies of failover slots. `repmgr.vote_info()` does not return it: the
    /// asking node reads the count in the same statement (see `Answer::failover_slots`).
    pub failover_slots: u32,
}

impl State {
    /// What a node knows when it starts: its saved term, support and fence, and, if it was a
    /// primary, a lease with no confirmation (fenced until its voters confirm).
    pub fn new(
        node_id: NodeId,
        saved: Option<Saved>,
        now: Duration,
        incarnation: u64,
        timing: Timing,
    ) -> State {
        let saved = saved.filter(|s| s.node_id == node_id);
        let durable = saved.as_ref().map_or(Durable::default(), |s| s.durable);
        let lease = saved
            .and_then(|s| s.lease_views)
            .map(|views| Lease::new(durable.term, incarnation, node_id, &views, None));
        State {
            node_id,
            voter: Voter::new(durable, now),
            armed: lease.is_some(),
            lease,
            timing,
            automatic: true,
            priority: 0,
            member: false,
            standing: false,
            declined: false,
            version: 0,
            switch_lsn: 0,
            diverged: false,
            incarnation,
        }
    }

    /// The term this node is in: the one place it is kept is the voter's durable state, which
    /// a lease keeps at or above its own term.
    pub fn term(&self) -> u64 {
        self.voter.durable.term
    }

    /// A fresh incarnation for a new lease.
    pub fn next_incarnation(&mut self) -> u64 {
        self.incarnation += 1;
        self.incarnation
    }

    /// What this node saves.
    pub fn saved(&self) -> Saved {
        Saved {
            node_id: self.node_id,
            durable: self.voter.durable,
            lease_views: self.lease.map(|l| l.views()),
        }
    }

    /// Whether this node, running as a primary, may commit now.
    pub fn may_commit(&self, now: Duration) -> bool {
        match self.lease.filter(|_| self.armed) {
            Some(l) => l.may_commit(now, self.timing.fence),
            None => true,
        }
    }

    /// Whether this node could still commit at `now` once its node list is `view` (a change
    /// about to be made): voters it adds count only once they have confirmed it.
    pub fn may_commit_with(&self, now: Duration, view: &Membership) -> bool {
        match self.lease.filter(|_| self.armed) {
            Some(mut l) => {
                l.change_view(view);
                l.may_commit(now, self.timing.fence)
            }
            None => true,
        }
    }

    /// Whether this node leads: it runs as a primary and holds its lease.
    pub fn leading(&self, now: Duration, in_recovery: bool) -> bool {
        !in_recovery
            && self
                .lease
                .is_some_and(|l| l.may_commit(now, self.timing.fence))
    }

    /// Moves the lease to `term` and supports itself in it: the term stays in one place.
    pub fn lead_in(&mut self, term: u64) {
        if let Some(l) = self.lease.as_mut() {
            l.term = term;
        }
        let fence = self.timing.fence;
        self.voter.durable = Durable {
            term: self.voter.durable.term.max(term),
            supports: Some(self.node_id),
            fence,
        };
    }

    /// Applies `change` and saves the result; when it cannot be saved, the state is put back
    /// and `None` returned: nothing may act on a change that is not durable.
    pub fn durably<R>(
        &mut self,
        disk: &mut dyn Disk,
        change: impl FnOnce(&mut State) -> R,
    ) -> Option<R> {
        let before = *self;
        let r = change(self);
        if self.saved() == before.saved() || disk.save(&self.saved()) {
            Some(r)
        } else {
            *self = before;
            None
        }
    }

    /// The catalog's voters are changing to `view` (the trigger on `repmgr.nodes`, inside
    /// the transaction that changes them): a primary in the protocol counts the new view from
    /// now on, and the old one until enough of its voters have seen the change, and saves
    /// that before the change may commit. Refused while an earlier change is still settling,
    /// or when it cannot be saved.
    /// `vouched`: the operator vouches that the voters removed are gone for good (see
    /// [`Lease::replace_views`]).
    pub fn change_view(
        &mut self,
        view: &Membership,
        vouched: bool,
        disk: &mut dyn Disk,
    ) -> Result<(), String> {
        let Some(lease) = self.lease.as_ref() else {
            return Ok(());
        };
        if vouched {
            let node_id = self.node_id;
            return self
                .durably(disk, |s| {
                    if let Some(l) = s.lease.as_mut() {
                        l.replace_views(view);
                    }
                })
                .ok_or_else(|| {
                    format!(
                        "node {node_id} could not save its failover state in the data directory"
                    )
                });
        }
        if lease.changing() {
            let pending = lease.views().get(1).map_or(String::new(), |m| {
                format!(
                    " (the node list before it, {} voters, still counts until enough of them have the newer one)",
                    m.voters.len()
                )
            });
            return Err(format!(
                "node {} is still waiting for its previous change of the node list to reach the voters{pending}",
                self.node_id
            ));
        }
        self.durably(disk, |s| {
            if let Some(l) = s.lease.as_mut() {
                l.change_view(view);
            }
        })
        .ok_or_else(|| {
            format!(
                "node {} could not save its failover state in the data directory, so the node list may not change now",
                self.node_id
            )
        })
    }

    /// The transaction that called [`State::change_view`] for `version` rolled back.
    pub fn undo_view(&mut self, version: u64, disk: &mut dyn Disk) {
        let undone = self.durably(disk, |s| {
            if let Some(l) = s.lease.as_mut() {
                l.undo_view(version);
            }
        });
        // Not saved: the saved file still counts the view, which only asks more of it.
        if undone.is_none()
            && let Some(l) = self.lease.as_mut()
        {
            l.undo_view(version);
        }
    }

    /// A voter confirms this primary (`repmgr.lease_poll()`). `None`: this node is not a
    /// primary in the protocol.
    pub fn answer_poll(
        &mut self,
        now: Duration,
        in_recovery: bool,
        poll: &Poll,
    ) -> Option<PollReply> {
        if in_recovery {
            return None;
        }
        let timing = self.timing;
        self.lease.as_mut().map(|l| l.poll(now, poll, &timing))
    }

    /// How things look from this node (`repmgr.vote_info()`).
    pub fn pre_vote(&self, now: Duration, local: &Local) -> PreVote {
        let leading = self.leading(now, local.in_recovery);
        let primary_here = !local.in_recovery && self.lease.is_some();
        let silence = match (primary_here, leading) {
            (true, true) => Duration::ZERO,
            (true, false) => Duration::MAX / 4,
            (false, _) => self.voter.silence(now),
        };
        let primary = if primary_here {
            Some((self.node_id, self.term()))
        } else {
            self.voter
                .leader
                .filter(|_| !self.voter.lease_expired(now, &self.timing))
                .map(|l| (l, self.term()))
        };
        PreVote {
            answer: Answer {
                term: self.term(),
                leading,
                in_recovery: local.in_recovery,
                silence,
                lost: !primary_here && self.voter.lease_expired(now, &self.timing),
                lsn: if local.in_recovery { local.lsn } else { None },
                timeline: local.timeline,
                timeline_start: local.timeline_start,
                unavailable: local.paused
                    || self.diverged
                    || !self.automatic
                    || self.priority <= 0
                    || !self.member
                    || self.declined,
                diverged: self.diverged,
                priority: self.priority,
                failover_slots: local.failover_slots,
                version: self.version,
                sync_quorum: if local.in_recovery && !self.diverged {
                    local.sync_quorum
                } else {
                    0
                },
            },
            primary,
            switch_lsn: self.switch_lsn,
            timing: self.timing,
            wait: self.voter.wait_needed(&self.timing),
        }
    }

    /// A candidate asks for this node's vote (`repmgr.request_vote()`). `facts.is_primary`
    /// should say whether the node runs as a primary; a standby that holds a lease (it won
    /// and is promoting) is treated as one, so it never helps a rival while it promotes.
    pub fn vote(
        &mut self,
        now: Duration,
        req: &VoteRequest,
        facts: &VoterFacts,
        disk: &mut dyn Disk,
    ) -> VoteReply {
        if self.standing {
            return VoteReply {
                term: self.term(),
                granted: false,
                reason: "this node is standing for election itself".into(),
            };
        }
        let facts = VoterFacts {
            is_primary: facts.is_primary || self.lease.is_some(),
            version: facts.version.max(self.version),
            ..facts.clone()
        };
        let timing = self.timing;
        let before = self.voter.durable.term;
        self.durably(disk, |s| s.voter.decide(now, req, &facts, &timing))
            .unwrap_or_else(|| VoteReply {
                term: before,
                granted: false,
                reason: "could not save the vote durably".into(),
            })
    }

    /// The worker of primary `node_id` reported that its postmaster exited while it led in
    /// `term` under lease `incarnation` (`repmgr.primary_exited()`). Returns whether it was
    /// the lease this node last confirmed ([`Voter::primary_exited`]).
    pub fn primary_exited(
        &mut self,
        now: Duration,
        node_id: NodeId,
        term: u64,
        incarnation: u64,
    ) -> bool {
        let timing = self.timing;
        self.voter
            .primary_exited(now, node_id, term, incarnation, &timing)
    }

    /// A switchover stopped `node_id` and verified its clean shutdown
    /// (`repmgr.primary_stopped()`). Returns whether it was the primary this node follows.
    pub fn primary_stopped(&mut self, now: Duration, node_id: NodeId) -> bool {
        let timing = self.timing;
        self.voter.primary_gone(now, node_id, &timing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem {
        saved: Option<Saved>,
        fail: bool,
    }

    impl Disk for Mem {
        fn save(&mut self, s: &Saved) -> bool {
            if !self.fail {
                self.saved = Some(s.clone());
            }
            !self.fail
        }
    }

    const T: Timing = Timing {
        heartbeat: Duration::from_millis(200),
        fence: Duration::from_millis(1600),
        lease: Duration::from_millis(2100),
    };

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn req(term: u64) -> VoteRequest {
        VoteRequest {
            term,
            candidate: 2,
            lsn: 10,
            timeline: 1,
            timeline_start: 0,
            fence: T.fence,
            version: 0,
            quorum_version: 0,
            failover_slots: 0,
        }
    }

    fn facts() -> VoterFacts {
        VoterFacts {
            is_primary: false,
            received_lsn: Some(10),
            timeline: 1,
            timeline_start: 0,
            may_stand: true,
            max_lag: 0,
            failover_slots: 0,
            quorum_member: false,
            sync_quorum: 0,
            candidate_ineligible: None,
            version: 0,
        }
    }

    #[test]
    fn a_vote_leaves_only_once_it_is_on_disk() {
        let mut s = State::new(3, None, ms(0), 1, T);
        let mut disk = Mem {
            saved: None,
            fail: true,
        };
        let r = s.vote(ms(5000), &req(2), &facts(), &mut disk);
        assert!(!r.granted);
        assert_eq!(r.reason, "could not save the vote durably");
        assert_eq!(s.voter.durable, Durable::default(), "put back");
        disk.fail = false;
        assert!(s.vote(ms(5000), &req(2), &facts(), &mut disk).granted);
        assert_eq!(disk.saved.as_ref().map(|d| d.durable.term), Some(2));
        // A restart reads it back: the same term is never granted to another node.
        let mut again = State::new(3, disk.saved.clone(), ms(9000), 2, T);
        let other = VoteRequest {
            candidate: 4,
            ..req(2)
        };
        assert!(!again.vote(ms(20_000), &other, &facts(), &mut disk).granted);
    }

    #[test]
    fn a_restarted_primary_comes_back_fenced_over_its_saved_views() {
        let mut s = State::new(1, None, ms(0), 1, T);
        s.lease = Some(Lease::new(3, 1, 1, &[Membership::new(5, [1, 2, 3])], None));
        s.lead_in(3);
        let saved = s.saved();
        let back = State::new(1, Some(saved), ms(100), 2, T);
        assert!(back.lease.is_some() && back.armed);
        assert!(!back.may_commit(ms(100)));
        assert_eq!(back.term(), 3);
        // Another node's file (brought by pg_basebackup) is ignored.
        assert!(State::new(2, Some(s.saved()), ms(0), 1, T).lease.is_none());
    }

    #[test]
    fn a_standby_holding_a_lease_never_votes() {
        let mut s = State::new(3, None, ms(0), 1, T);
        s.lease = Some(Lease::new(4, 1, 3, &[Membership::new(1, [1, 2, 3])], None));
        let mut disk = Mem {
            saved: None,
            fail: false,
        };
        let r = s.vote(ms(9000), &req(5), &facts(), &mut disk);
        assert_eq!(r.reason, "this node is the primary");
    }
}
