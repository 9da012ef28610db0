//! A voter's side of the protocol: hearing the primary, and answering vote requests.
//!
//! Every active node except the primary votes: standbys and the witness. A voter remembers
//! durably the highest term it knows, whom it supported in it (a vote, or accepting a
//! primary's poll reply in that term) and the fence timeout that node announced; it never
//! supports two nodes in one term, even across a restart. It grants a vote only when it too
//! has heard nothing from the primary for long enough: its own `repmgr.lease_timeout`, and at
//! least what the fence of the node it supported needs ([`lease_for`]), counted from its own
//! start when it does not know (a voter that restarts may have confirmed the primary just
//! before). It refuses a candidate whose node list is older than its own.

use std::time::Duration;

use crate::election;
use crate::lease::{NodeId, PollReply, Stamp, Timing, lease_for};
use crate::lsn::{Lsn, Position};
use crate::node::{NodeRecord, NodeType};

/// What a voter keeps on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Durable {
    pub term: u64,
    /// Whom this voter supports in `term`.
    pub supports: Option<NodeId>,
    /// The fence timeout announced by the node it last supported (zero: it never supported
    /// anyone since its state was created).
    pub fence: Duration,
}

/// A voter's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Voter {
    pub durable: Durable,
    /// When the primary was last heard (its poll reply received), on this node's clock.
    pub last_heard: Option<Duration>,
    /// Who was heard.
    pub leader: Option<NodeId>,
    /// When this voter started; stands for `last_heard` until the primary is heard.
    pub started: Duration,
    /// The stamp to echo in the next poll.
    pub echo: Option<Stamp>,
    /// Since when the primary heard has not held its lease (it restarted, or was replaced).
    pub unled_since: Option<Duration>,
    /// The node and lease incarnation of the last reply this voter counted.
    pub confirmed: Option<(NodeId, u64)>,
    /// When this voter was told its primary is down (its exit reported, or a switchover's
    /// check), until it hears a primary again.
    pub told_gone: Option<Duration>,
}

/// How long the worker of a primary whose postmaster died takes at most to tell every voter
/// (in parallel); a voter told sooner knows the others are being told meanwhile.
pub const EXIT_REPORT_WITHIN: Duration = Duration::from_secs(1);

/// What a poll reply meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// The primary is alive and this voter supports it. `persist`: the durable state changed
    /// and must reach disk before the stamp is echoed.
    Alive { persist: bool },
    /// The reply came from a primary of an older term, or one this voter does not support.
    Stale,
}

/// A candidate's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoteRequest {
    pub term: u64,
    pub candidate: NodeId,
    /// The candidate's received WAL position, its timeline (0: unknown) and where that
    /// timeline began.
    pub lsn: u64,
    pub timeline: u32,
    pub timeline_start: u64,
    /// The fence timeout the candidate will run with: its votes are confirmations for that long.
    pub fence: Duration,
    /// The membership version of the candidate's node list.
    pub version: u64,
    /// Where the quorum its catalog publishes was written (0: none).
    pub quorum_version: u64,
    /// Its usable copies of the primary's failover slots (PostgreSQL 17+; 0 before).
    pub failover_slots: u32,
}

/// What the voter knows about itself and the candidate when it decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterFacts {
    /// This node is running as a primary: primaries never vote.
    pub is_primary: bool,
    /// This voter's own received WAL position (standbys), its timeline (0: unknown) and where
    /// that timeline began.
    pub received_lsn: Option<u64>,
    pub timeline: u32,
    pub timeline_start: u64,
    /// This voter may be promoted itself (automatic failover, priority above 0, not paused).
    pub may_stand: bool,
    /// Its `repmgr.max_lag_on_failover`.
    pub max_lag: u64,
    /// Its usable copies of the primary's failover slots.
    pub failover_slots: u32,
    /// This voter is a member of the synchronous quorum published in its catalog: its WAL
    /// may hold acknowledged commits, so it grants no candidate behind it, whatever its
    /// tolerance (a candidate whose catalog lacks the publication would not know to ask).
    pub quorum_member: bool,
    /// Where the synchronous quorum its catalog publishes was written (0: none, or an
    /// asynchronous one): a candidate whose catalog's quorum is older lacks WAL this voter
    /// has, which may hold acknowledged commits.
    pub sync_quorum: u64,
    /// Why the candidate may not be promoted, if it may not (priority 0, manual, unknown).
    pub candidate_ineligible: Option<String>,
    /// The membership version of this voter's node list.
    pub version: u64,
}

impl VoterFacts {
    /// How far `req`'s candidate may trail this voter, as the election plan allows: its
    /// `repmgr.max_lag_on_failover` when it may not stand itself (priority 0, manual, paused)
    /// or when the candidate holds more usable copies of the failover slots (the plan ranks
    /// those before WAL); otherwise nothing, since it would be the better candidate. A member
    /// of the synchronous quorum tolerates nothing: its WAL may hold acknowledged commits.
    pub fn tolerance(&self, req: &VoteRequest) -> u64 {
        if self.quorum_member {
            0
        } else if !self.may_stand || req.failover_slots > self.failover_slots {
            self.max_lag
        } else {
            0
        }
    }
}

/// A voter's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteReply {
    pub term: u64,
    pub granted: bool,
    /// Why not, when refused.
    pub reason: String,
}

/// Why a voter's own catalog says `candidate` may not be promoted (its record `record`), if
/// it does. `lenient` checks only what the candidate is (a manual promotion, or a witness,
/// whose copy of the node list may be behind); a catalog older than the candidate's
/// (`behind`) is not trusted with more than that either: the candidate's newer list may have
/// registered it, reactivated it or changed its priority.
pub fn catalog_objection(
    candidate: NodeId,
    record: Option<&NodeRecord>,
    lenient: bool,
    behind: bool,
) -> Option<String> {
    match record {
        Some(n) if n.node_type == NodeType::Witness => {
            Some(format!("{} is the witness", n.describe()))
        }
        _ if lenient || behind => None,
        None => Some(format!("node {candidate} is not registered")),
        Some(n) if !n.active => Some(format!("{} is inactive", n.describe())),
        Some(n) => {
            election::ineligible(n.priority, true).map(|why| format!("{}: {why}", n.describe()))
        }
    }
}

impl Voter {
    pub fn new(durable: Durable, started: Duration) -> Voter {
        Voter {
            durable,
            last_heard: None,
            leader: None,
            started,
            echo: None,
            unled_since: None,
            confirmed: None,
            told_gone: None,
        }
    }

    /// How long since the primary was last heard (or since this voter started).
    pub fn silence(&self, now: Duration) -> Duration {
        now.saturating_sub(self.last_heard.unwrap_or(self.started).max(self.started))
    }

    /// How long this voter must hear nothing before it may vote: its own lease, or longer
    /// when the fence of the node it supported needs it.
    pub fn wait_needed(&self, timing: &Timing) -> Duration {
        timing.lease.max(lease_for(self.durable.fence))
    }

    /// Whether the lease has run out from this voter's point of view.
    pub fn lease_expired(&self, now: Duration, timing: &Timing) -> bool {
        self.silence(now) >= self.wait_needed(timing)
    }

    /// Whether to ask the other voters who leads: the lease expired, or the primary heard has
    /// been without its lease for a while (it may have been replaced unseen).
    pub fn should_look_around(&self, now: Duration, timing: &Timing) -> bool {
        self.lease_expired(now, timing)
            || self
                .unled_since
                .is_some_and(|t| now.saturating_sub(t) >= timing.lease / 2)
    }

    /// Applies a poll reply from `from`, received at `now`.
    ///
    /// A primary without its lease (it restarted, or lost its confirmations) is confirmed
    /// while it accepts confirmations, so that it can win them back, and not while it yields
    /// (see [`crate::lease::Lease::poll`]): it alternates on its own clock, so every voter
    /// confirms it at the same time. Confirming less is always safe.
    ///
    /// Support moves to another node only once what this voter confirmed for the previous one
    /// has run out ([`Voter::may_switch`]): otherwise a primary promoted without a majority
    /// (forced) could gather confirmations from voters the old primary still counts.
    pub fn heard(&mut self, now: Duration, from: NodeId, reply: &PollReply) -> Heard {
        let d = &mut self.durable;
        let stale = !reply.accepted
            || reply.term < d.term
            || (reply.term == d.term && d.supports.is_some_and(|s| s != from));
        let switching = d.supports != Some(from);
        if stale || (switching && !self.may_switch(now)) {
            self.echo = None;
            return Heard::Stale;
        }
        if reply.leading {
            self.unled_since = None;
        } else {
            self.unled_since.get_or_insert(now);
            if reply.yielding {
                // A primary without its lease that gives an election its chance.
                self.echo = None;
                return Heard::Stale;
            }
        }
        let d = &mut self.durable;
        let before = *d;
        // A new node supported brings its own fence; the same one can only lengthen it here,
        // since a stamp echoed under the longer fence may still be counted.
        let fence = if switching {
            reply.stamp.fence
        } else {
            d.fence.max(reply.stamp.fence)
        };
        *d = Durable {
            term: reply.term,
            supports: Some(from),
            fence,
        };
        let persist = *d != before;
        self.last_heard = Some(now);
        self.leader = Some(from);
        self.echo = Some(reply.stamp);
        self.confirmed = Some((from, reply.stamp.incarnation));
        self.told_gone = None;
        Heard::Alive { persist }
    }

    /// Whether this voter may support another node than the one it last supported: it never
    /// supported anyone, or its confirmations of that node (valid for the fence it
    /// announced, counted from when it was last heard) have run out.
    pub fn may_switch(&self, now: Duration) -> bool {
        self.durable.fence.is_zero() || self.silence(now) >= lease_for(self.durable.fence)
    }

    /// The primary `id` is known to be down and to have shut down cleanly (a switchover
    /// checked its control file): stop waiting for the lease to run out. Returns whether `id`
    /// is the primary this voter follows (otherwise nothing changes).
    pub fn primary_gone(&mut self, now: Duration, id: NodeId, timing: &Timing) -> bool {
        if self.leader != Some(id) && self.durable.supports != Some(id) {
            return false;
        }
        let expired = now.saturating_sub(self.wait_needed(timing));
        self.last_heard = Some(expired);
        self.started = self.started.min(expired);
        self.echo = None;
        self.told_gone = Some(now);
        true
    }

    /// The worker of primary `id` reported, as its last act, that its postmaster exited
    /// while it led in `term` under the lease `incarnation`. No process of that server can
    /// commit any more (both commit checks read the postmaster-death pipe), so what this
    /// voter confirmed protects nothing, and it stops waiting for it to run out. Only a
    /// report about the very lease this voter last confirmed, in the term it supports that
    /// node in, counts: a late one about an earlier life of the node (restarted, it leads
    /// under a new incarnation) or an earlier term changes nothing. Returns whether it
    /// counted.
    pub fn primary_exited(
        &mut self,
        now: Duration,
        id: NodeId,
        term: u64,
        incarnation: u64,
        timing: &Timing,
    ) -> bool {
        let d = &self.durable;
        if d.term != term || d.supports != Some(id) || self.confirmed != Some((id, incarnation)) {
            return false;
        }
        self.primary_gone(now, id, timing)
    }

    /// Moves to a newer term learnt from another voter while looking around (the primary this
    /// voter heard is gone or cannot lead): it supports nobody in it yet and stops confirming
    /// the old primary, which can only make it confirm less. The fence it must wait out stays.
    /// Returns whether the durable state changed (persist it).
    pub fn learn_term(&mut self, term: u64) -> bool {
        if term <= self.durable.term {
            return false;
        }
        self.durable = Durable {
            term,
            supports: None,
            fence: self.durable.fence,
        };
        self.echo = None;
        self.leader = None;
        true
    }

    /// Decides a vote request at `now`. On a grant the caller must persist
    /// [`Voter::durable`] before answering.
    pub fn decide(
        &mut self,
        now: Duration,
        req: &VoteRequest,
        facts: &VoterFacts,
        timing: &Timing,
    ) -> VoteReply {
        let term = self.durable.term;
        let refuse = |reason: String| VoteReply {
            term,
            granted: false,
            reason,
        };
        if facts.is_primary {
            return refuse("this node is the primary".into());
        }
        if req.term < term {
            return refuse(format!(
                "term {} is older than this voter's term {term}",
                req.term
            ));
        }
        if req.term == term && self.durable.supports.is_some_and(|s| s != req.candidate) {
            return refuse(format!(
                "already supports node {} in term {term}",
                self.durable.supports.unwrap_or(0)
            ));
        }
        if req.term == term
            && self.durable.supports == Some(req.candidate)
            && self.leader == Some(req.candidate)
        {
            // A repeated request (an answer was lost): same term, same candidate.
            return VoteReply {
                term,
                granted: true,
                reason: String::new(),
            };
        }
        if req.version < facts.version {
            return refuse(format!(
                "the candidate's node list (version {}) is older than this voter's (version {})",
                req.version, facts.version
            ));
        }
        let needed = self.wait_needed(timing);
        if self.silence(now) < needed {
            let why = if needed > timing.lease {
                format!(
                    "; it waits {} ms, what the fence of {} ms it last confirmed needs",
                    needed.as_millis(),
                    self.durable.fence.as_millis()
                )
            } else {
                String::new()
            };
            return refuse(format!(
                "heard from the primary {} ms ago; the lease is {} ms{why}",
                self.silence(now).as_millis(),
                timing.lease.as_millis()
            ));
        }
        if let Some(why) = &facts.candidate_ineligible {
            return refuse(why.clone());
        }
        if facts.sync_quorum > req.quorum_version {
            return refuse(format!(
                "this voter's catalog publishes a synchronous quorum written at {}, after the candidate's (at {}): the candidate lacks WAL that may hold acknowledged commits",
                Lsn(facts.sync_quorum),
                Lsn(req.quorum_version)
            ));
        }
        let tolerance = facts.tolerance(req);
        if let Some(mine) = facts.received_lsn {
            let candidate = Position {
                timeline: req.timeline,
                start: req.timeline_start,
                lsn: req.lsn,
            };
            let voter = Position {
                timeline: facts.timeline,
                start: facts.timeline_start,
                lsn: mine,
            };
            let short = candidate.lacks(voter);
            if short > tolerance {
                return refuse(
                    if req.timeline != facts.timeline && req.timeline < facts.timeline {
                        format!(
                            "the candidate is on timeline {}, older than this voter's timeline {}, which began at {}: it lacks {short} bytes of this voter's WAL",
                            req.timeline,
                            facts.timeline,
                            Lsn(facts.timeline_start)
                        )
                    } else if facts.quorum_member {
                        format!(
                            "the candidate has received less WAL ({}) than this voter ({mine}), a member of the synchronous quorum that may hold acknowledged commits the candidate lacks",
                            req.lsn
                        )
                    } else if tolerance == 0 {
                        format!(
                            "the candidate has received less WAL ({}) than this voter ({mine})",
                            req.lsn
                        )
                    } else {
                        format!(
                            "the candidate has received {short} bytes less WAL than this voter, more than repmgr.max_lag_on_failover ({tolerance})"
                        )
                    },
                );
            }
        }
        self.durable = Durable {
            term: req.term,
            supports: Some(req.candidate),
            fence: req.fence,
        };
        self.last_heard = Some(now);
        self.leader = Some(req.candidate);
        self.echo = None;
        VoteReply {
            term: req.term,
            granted: true,
            reason: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    const T: Timing = Timing {
        heartbeat: Duration::from_millis(250),
        fence: Duration::from_millis(1500),
        lease: Duration::from_millis(2500),
    };

    fn reply(term: u64, at: u64) -> PollReply {
        PollReply {
            term,
            accepted: true,
            leading: true,
            yielding: false,
            stamp: Stamp {
                incarnation: 1,
                at: ms(at),
                fence: ms(1500),
            },
            heartbeat: ms(250),
        }
    }

    fn facts() -> VoterFacts {
        VoterFacts {
            is_primary: false,
            received_lsn: Some(100),
            timeline: 1,
            timeline_start: 0,
            may_stand: true,
            max_lag: 0,
            failover_slots: 0,
            quorum_member: false,
            sync_quorum: 0,
            candidate_ineligible: None,
            version: 1,
        }
    }

    fn req(term: u64, candidate: NodeId, lsn: u64) -> VoteRequest {
        VoteRequest {
            term,
            candidate,
            lsn,
            timeline: 1,
            timeline_start: 0,
            fence: ms(1500),
            version: 1,
            quorum_version: 0,
            failover_slots: 0,
        }
    }

    /// A voter's saved state; one that supports nobody has never supported anyone.
    fn durable(term: u64, supports: Option<NodeId>) -> Durable {
        Durable {
            term,
            supports,
            fence: if supports.is_some() {
                ms(1500)
            } else {
                Duration::ZERO
            },
        }
    }

    #[test]
    fn hearing_the_primary_blocks_votes_for_the_lease() {
        let mut v = Voter::new(durable(1, None), ms(0));
        assert_eq!(
            v.heard(ms(3000), 1, &reply(1, 10)),
            Heard::Alive { persist: true }
        );
        assert_eq!(
            v.heard(ms(3250), 1, &reply(1, 20)),
            Heard::Alive { persist: false }
        );
        let r = v.decide(ms(5000), &req(2, 2, 100), &facts(), &T);
        assert!(
            !r.granted && r.reason.contains("heard from the primary 1750 ms ago"),
            "{r:?}"
        );
        let r = v.decide(ms(5750), &req(2, 2, 100), &facts(), &T);
        assert!(r.granted, "{r:?}");
        assert_eq!(v.durable, durable(2, Some(2)));
    }

    #[test]
    fn a_primary_with_a_longer_fence_is_waited_out_whatever_this_voter_says() {
        // The cluster: the primary at fence 5 s, this standby at lease 2.5 s.
        let mut v = Voter::new(durable(1, None), ms(0));
        let mut r = reply(1, 10);
        r.stamp.fence = ms(5000);
        assert_eq!(v.heard(ms(100), 1, &r), Heard::Alive { persist: true });
        assert_eq!(v.durable.fence, ms(5000));
        let no = v.decide(ms(2700), &req(2, 2, 100), &facts(), &T);
        assert!(
            !no.granted && no.reason.contains("it waits 5353 ms"),
            "{no:?}"
        );
        assert!(!v.decide(ms(5400), &req(2, 2, 100), &facts(), &T).granted);
        assert!(v.decide(ms(5500), &req(2, 2, 100), &facts(), &T).granted);
        // Voting adopts the candidate's fence.
        assert_eq!(v.durable.fence, ms(1500));
        // A shorter fence announced later by the same primary does not shorten the wait.
        let mut v = Voter::new(durable(1, None), ms(0));
        v.heard(ms(100), 1, &r);
        v.heard(ms(300), 1, &reply(1, 20));
        assert_eq!(v.durable.fence, ms(5000));
    }

    #[test]
    fn support_moves_to_another_node_only_once_the_old_confirmations_ran_out() {
        let mut v = Voter::new(durable(1, None), ms(0));
        v.heard(ms(100), 1, &reply(1, 10));
        // Node 2, forced into term 2, answers a poll 500 ms later: node 1 may still count
        // this voter's confirmation, so node 2 does not get it yet.
        assert_eq!(v.heard(ms(600), 2, &reply(2, 20)), Heard::Stale);
        assert_eq!(v.durable.supports, Some(1));
        // lease_for(1500 ms) = 1783 ms after node 1 was last heard, it may.
        assert_eq!(v.heard(ms(1800), 2, &reply(2, 30)), Heard::Stale);
        assert_eq!(
            v.heard(ms(1900), 2, &reply(2, 30)),
            Heard::Alive { persist: true }
        );
        // A voter that never supported anyone follows at once.
        let mut fresh = Voter::new(Durable::default(), ms(0));
        assert_eq!(
            fresh.heard(ms(1), 1, &reply(1, 0)),
            Heard::Alive { persist: true }
        );
    }

    #[test]
    fn a_restarted_voter_waits_a_whole_lease() {
        let mut v = Voter::new(durable(1, Some(1)), ms(10_000));
        assert!(!v.decide(ms(11_000), &req(2, 2, 100), &facts(), &T).granted);
        assert!(v.decide(ms(12_500), &req(2, 2, 100), &facts(), &T).granted);
    }

    #[test]
    fn one_vote_per_term() {
        let mut v = Voter::new(Durable::default(), ms(0));
        assert!(v.decide(ms(3000), &req(5, 2, 100), &facts(), &T).granted);
        assert!(
            v.decide(ms(3001), &req(5, 2, 100), &facts(), &T).granted,
            "the same candidate may ask again"
        );
        let r = v.decide(ms(9000), &req(5, 3, 200), &facts(), &T);
        assert_eq!(r.reason, "already supports node 2 in term 5");
        let r = v.decide(ms(9000), &req(4, 3, 200), &facts(), &T);
        assert_eq!(r.reason, "term 4 is older than this voter's term 5");
    }

    #[test]
    fn refusals() {
        let mut v = Voter::new(Durable::default(), ms(0));
        let primary = VoterFacts {
            is_primary: true,
            ..facts()
        };
        assert_eq!(
            v.decide(ms(9000), &req(1, 2, 100), &primary, &T).reason,
            "this node is the primary"
        );
        let r = v.decide(ms(9000), &req(1, 2, 99), &facts(), &T);
        assert!(r.reason.contains("received less WAL"), "{r:?}");
        let excluded = VoterFacts {
            candidate_ineligible: Some("node 2 has priority 0".into()),
            ..facts()
        };
        assert_eq!(
            v.decide(ms(9000), &req(1, 2, 100), &excluded, &T).reason,
            "node 2 has priority 0"
        );
        let newer = VoterFacts {
            version: 7,
            ..facts()
        };
        assert_eq!(
            v.decide(ms(9000), &req(1, 2, 100), &newer, &T).reason,
            "the candidate's node list (version 1) is older than this voter's (version 7)"
        );
        assert_eq!(v.durable, Durable::default(), "refusals change nothing");
    }

    #[test]
    fn a_primary_without_its_lease_is_confirmed_unless_it_yields() {
        let mut v = Voter::new(durable(2, Some(1)), ms(0));
        let unled = PollReply {
            leading: false,
            ..reply(2, 5)
        };
        assert_eq!(
            v.heard(ms(1000), 1, &unled),
            Heard::Alive { persist: false }
        );
        assert!(v.should_look_around(ms(2250), &T), "unled for half a lease");
        let yielding = PollReply {
            yielding: true,
            ..unled
        };
        assert_eq!(v.heard(ms(3000), 1, &yielding), Heard::Stale);
        assert_eq!(v.echo, None);
        assert_eq!(
            v.heard(ms(3750), 1, &reply(2, 6)),
            Heard::Alive { persist: false },
            "back once it leads again"
        );
        assert!(!v.should_look_around(ms(3800), &T));
    }

    #[test]
    fn a_newer_term_learnt_ends_support_for_the_old_primary() {
        let mut v = Voter::new(durable(1, Some(1)), ms(0));
        assert_eq!(
            v.heard(ms(100), 1, &reply(1, 5)),
            Heard::Alive { persist: false }
        );
        assert!(v.learn_term(3));
        assert!(!v.learn_term(2));
        assert_eq!(
            v.durable,
            Durable {
                fence: ms(1500),
                ..durable(3, None)
            },
            "the fence it confirmed stays to be waited out"
        );
        assert_eq!(v.heard(ms(200), 1, &reply(1, 6)), Heard::Stale);
    }

    #[test]
    fn replies_from_an_older_or_unsupported_primary_are_stale() {
        let mut v = Voter::new(durable(4, Some(2)), ms(0));
        assert_eq!(v.heard(ms(100), 1, &reply(3, 5)), Heard::Stale);
        assert_eq!(
            v.heard(ms(100), 1, &reply(4, 5)),
            Heard::Stale,
            "supports node 2 in term 4"
        );
        assert_eq!(
            v.heard(ms(100), 2, &reply(4, 5)),
            Heard::Alive { persist: false }
        );
        let refused = PollReply {
            accepted: false,
            ..reply(4, 5)
        };
        assert_eq!(v.heard(ms(200), 2, &refused), Heard::Stale);
        assert_eq!(v.echo, None);
    }

    #[test]
    fn only_the_exit_of_the_lease_last_confirmed_frees_the_vote() {
        let t = T;
        let mut v = Voter::new(durable(4, None), ms(0));
        assert_eq!(
            v.heard(ms(10_000), 1, &reply(4, 5)),
            Heard::Alive { persist: true }
        );
        let inc = reply(4, 5).stamp.incarnation;
        assert!(!v.lease_expired(ms(10_100), &t));
        for (id, term, incarnation, why) in [
            (2, 4, inc, "another node"),
            (1, 3, inc, "an earlier term"),
            (1, 4, inc + 1, "another life of the node"),
        ] {
            assert!(
                !v.primary_exited(ms(10_100), id, term, incarnation, &t),
                "{why}"
            );
            assert!(!v.lease_expired(ms(10_100), &t), "{why}");
        }
        assert!(v.primary_exited(ms(10_100), 1, 4, inc, &t));
        assert!(v.lease_expired(ms(10_100), &t));
        let granted = v.decide(ms(10_100), &req(5, 2, 100), &facts(), &t);
        assert!(granted.granted, "{granted:?}");
    }

    #[test]
    fn a_primary_known_gone_frees_the_vote_at_once() {
        let t = T;
        let mut v = Voter::new(durable(3, Some(1)), ms(0));
        v.last_heard = Some(ms(10_000));
        v.leader = Some(1);
        assert!(!v.lease_expired(ms(10_100), &t));
        assert!(
            !v.primary_gone(ms(10_100), 2, &t),
            "not the primary it follows"
        );
        assert!(!v.lease_expired(ms(10_100), &t));
        assert!(v.primary_gone(ms(10_100), 1, &t));
        assert!(v.lease_expired(ms(10_100), &t));
        let granted = v.decide(ms(10_100), &req(4, 2, 100), &facts(), &t);
        assert!(granted.granted, "{granted:?}");
    }
}
