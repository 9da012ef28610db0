//! A voter's side of the protocol: hearing the primary, and answering vote requests.
//!
//! Every active node except the primary votes: standbys and the witness. A voter remembers
//! durably the highest term it knows and whom it supported in it (a vote, or accepting a
//! primary's poll reply in that term); it never supports two nodes in one term, even across a
//! restart. It grants a vote only when it too has heard nothing from the primary for the
//! lease period, counted from its own start when it does not know (a voter that restarts may
//! have confirmed the primary just before).

use std::time::Duration;

use crate::lease::{NodeId, PollReply, Stamp, Timing};

/// What a voter keeps on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Durable {
    pub term: u64,
    /// Whom this voter supports in `term`.
    pub supports: Option<NodeId>,
}

impl Durable {
    /// The file format: `term supports` (supports is 0 for nobody).
    pub fn encode(&self) -> String {
        format!("{} {}\n", self.term, self.supports.unwrap_or(0))
    }

    pub fn decode(text: &str) -> Option<Durable> {
        let mut it = text.split_whitespace();
        let term = it.next()?.parse().ok()?;
        let supports: NodeId = it.next()?.parse().ok()?;
        Some(Durable {
            term,
            supports: (supports != 0).then_some(supports),
        })
    }
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
}

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
    /// The candidate's received WAL position.
    pub lsn: u64,
}

/// What the voter knows about itself and the candidate when it decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterFacts {
    /// This node is running as a primary: primaries never vote.
    pub is_primary: bool,
    /// This voter's own received WAL position (standbys).
    pub received_lsn: Option<u64>,
    /// Why the candidate may not be promoted, if it may not (priority 0, manual, unknown).
    pub candidate_ineligible: Option<String>,
}

/// A voter's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteReply {
    pub term: u64,
    pub granted: bool,
    /// Why not, when refused.
    pub reason: String,
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
        }
    }

    /// How long since the primary was last heard (or since this voter started).
    pub fn silence(&self, now: Duration) -> Duration {
        now.saturating_sub(self.last_heard.unwrap_or(self.started).max(self.started))
    }

    /// Whether the lease has run out from this voter's point of view.
    pub fn lease_expired(&self, now: Duration, timing: &Timing) -> bool {
        self.silence(now) >= timing.lease
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
    /// A primary without its lease (it restarted, or lost its confirmations) is confirmed for
    /// one lease period so that it can win them back, then not for one lease period (long
    /// enough for an election, should one be possible), and so on. So a primary unable to
    /// gather its voters cannot block an election forever, and one that needs only this voter
    /// still gets back. Confirming less is always safe.
    pub fn heard(
        &mut self,
        now: Duration,
        from: NodeId,
        reply: &PollReply,
        timing: &Timing,
    ) -> Heard {
        let d = &mut self.durable;
        let stale = !reply.accepted
            || reply.term < d.term
            || (reply.term == d.term && d.supports.is_some_and(|s| s != from));
        if stale {
            self.echo = None;
            return Heard::Stale;
        }
        if reply.leading {
            self.unled_since = None;
        } else {
            let since = *self.unled_since.get_or_insert(now);
            let periods = now.saturating_sub(since).as_micros() / timing.lease.as_micros().max(1);
            if periods % 2 == 1 {
                self.echo = None;
                return Heard::Stale;
            }
        }
        let persist = reply.term > d.term || d.supports.is_none();
        d.term = reply.term;
        d.supports = Some(from);
        self.last_heard = Some(now);
        self.leader = Some(from);
        self.echo = Some(reply.stamp);
        Heard::Alive { persist }
    }

    /// The primary `id` is known to be down and to have shut down cleanly (a switchover
    /// checked its control file): stop waiting for the lease to run out. Returns whether `id`
    /// is the primary this voter follows (otherwise nothing changes).
    pub fn primary_gone(&mut self, now: Duration, id: NodeId, timing: &Timing) -> bool {
        if self.leader != Some(id) && self.durable.supports != Some(id) {
            return false;
        }
        let expired = now.saturating_sub(timing.lease);
        self.last_heard = Some(expired);
        self.started = self.started.min(expired);
        self.echo = None;
        true
    }

    /// Moves to a newer term learnt from another voter while looking around (the primary this
    /// voter heard is gone or cannot lead): it supports nobody in it yet and stops confirming
    /// the old primary, which can only make it confirm less. Returns whether the durable state
    /// changed (persist it).
    pub fn learn_term(&mut self, term: u64) -> bool {
        if term <= self.durable.term {
            return false;
        }
        self.durable = Durable {
            term,
            supports: None,
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
        if !self.lease_expired(now, timing) {
            return refuse(format!(
                "heard from the primary {} ms ago; the lease is {} ms",
                self.silence(now).as_millis(),
                timing.lease.as_millis()
            ));
        }
        if let Some(why) = &facts.candidate_ineligible {
            return refuse(why.clone());
        }
        if let Some(mine) = facts.received_lsn.filter(|mine| *mine > req.lsn) {
            return refuse(format!(
                "the candidate has received less WAL ({}) than this voter ({mine})",
                req.lsn
            ));
        }
        self.durable = Durable {
            term: req.term,
            supports: Some(req.candidate),
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
            stamp: Stamp {
                incarnation: 1,
                at: ms(at),
            },
        }
    }

    fn facts() -> VoterFacts {
        VoterFacts {
            is_primary: false,
            received_lsn: Some(100),
            candidate_ineligible: None,
        }
    }

    fn req(term: u64, candidate: NodeId, lsn: u64) -> VoteRequest {
        VoteRequest {
            term,
            candidate,
            lsn,
        }
    }

    #[test]
    fn durable_state_round_trips() {
        let d = Durable {
            term: 7,
            supports: Some(3),
        };
        assert_eq!(Durable::decode(&d.encode()), Some(d));
        assert_eq!(
            Durable::decode("4 0\n"),
            Some(Durable {
                term: 4,
                supports: None
            })
        );
        assert_eq!(Durable::decode("junk"), None);
    }

    #[test]
    fn hearing_the_primary_blocks_votes_for_the_lease() {
        let mut v = Voter::new(
            Durable {
                term: 1,
                supports: None,
            },
            ms(0),
        );
        assert_eq!(
            v.heard(ms(3000), 1, &reply(1, 10), &T),
            Heard::Alive { persist: true }
        );
        assert_eq!(
            v.heard(ms(3250), 1, &reply(1, 20), &T),
            Heard::Alive { persist: false }
        );
        let r = v.decide(ms(5000), &req(2, 2, 100), &facts(), &T);
        assert!(
            !r.granted && r.reason.contains("heard from the primary 1750 ms ago"),
            "{r:?}"
        );
        let r = v.decide(ms(5750), &req(2, 2, 100), &facts(), &T);
        assert!(r.granted, "{r:?}");
        assert_eq!(
            v.durable,
            Durable {
                term: 2,
                supports: Some(2)
            }
        );
    }

    #[test]
    fn a_restarted_voter_waits_a_whole_lease() {
        let mut v = Voter::new(
            Durable {
                term: 1,
                supports: Some(1),
            },
            ms(10_000),
        );
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
        assert_eq!(v.durable, Durable::default(), "refusals change nothing");
    }

    #[test]
    fn a_primary_without_its_lease_is_confirmed_for_one_lease_only() {
        let mut v = Voter::new(
            Durable {
                term: 2,
                supports: Some(1),
            },
            ms(0),
        );
        let unled = PollReply {
            leading: false,
            ..reply(2, 5)
        };
        assert_eq!(
            v.heard(ms(1000), 1, &unled, &T),
            Heard::Alive { persist: false }
        );
        assert_eq!(
            v.heard(ms(3000), 1, &unled, &T),
            Heard::Alive { persist: false }
        );
        assert!(v.should_look_around(ms(3000), &T));
        assert_eq!(
            v.heard(ms(3500), 1, &unled, &T),
            Heard::Stale,
            "given up after a lease"
        );
        assert_eq!(v.echo, None);
        assert_eq!(
            v.heard(ms(6000), 1, &unled, &T),
            Heard::Alive { persist: false },
            "and tried again after another"
        );
        assert_eq!(
            v.heard(ms(3750), 1, &reply(2, 6), &T),
            Heard::Alive { persist: false },
            "back once it leads again"
        );
    }

    #[test]
    fn a_newer_term_learnt_ends_support_for_the_old_primary() {
        let mut v = Voter::new(
            Durable {
                term: 1,
                supports: Some(1),
            },
            ms(0),
        );
        assert_eq!(
            v.heard(ms(100), 1, &reply(1, 5), &T),
            Heard::Alive { persist: false }
        );
        assert!(v.learn_term(3));
        assert!(!v.learn_term(2));
        assert_eq!(
            v.durable,
            Durable {
                term: 3,
                supports: None
            }
        );
        assert_eq!(v.heard(ms(200), 1, &reply(1, 6), &T), Heard::Stale);
    }

    #[test]
    fn replies_from_an_older_or_unsupported_primary_are_stale() {
        let mut v = Voter::new(
            Durable {
                term: 4,
                supports: Some(2),
            },
            ms(0),
        );
        assert_eq!(v.heard(ms(100), 1, &reply(3, 5), &T), Heard::Stale);
        assert_eq!(
            v.heard(ms(100), 1, &reply(4, 5), &T),
            Heard::Stale,
            "supports node 2 in term 4"
        );
        assert_eq!(
            v.heard(ms(100), 2, &reply(4, 5), &T),
            Heard::Alive { persist: false }
        );
        let refused = PollReply {
            accepted: false,
            ..reply(4, 5)
        };
        assert_eq!(v.heard(ms(200), 2, &refused, &T), Heard::Stale);
        assert_eq!(v.echo, None);
    }

    #[test]
    fn a_primary_known_gone_frees_the_vote_at_once() {
        let t = T;
        let mut v = Voter::new(
            Durable {
                term: 3,
                supports: Some(1),
            },
            ms(0),
        );
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
        let granted = v.decide(
            ms(10_100),
            &VoteRequest {
                term: 4,
                candidate: 2,
                lsn: 100,
            },
            &facts(),
            &t,
        );
        assert!(granted.granted, "{granted:?}");
    }
}
