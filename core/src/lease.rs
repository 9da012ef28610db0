//! The primary's lease: its right to commit, kept alive by confirmations from the voters.
//!
//! Every voter polls the primary every heartbeat interval. The primary answers with its term
//! and a *stamp* (its own clock reading); the voter echoes the stamp in its next poll, and only
//! then does the primary count the confirmation, dated by that stamp. So a confirmation the
//! primary counts is never later than the moment the voter learnt the primary was alive, even
//! when answers are lost or delayed. A voter only votes for a successor once it has heard
//! nothing from the primary for the lease period; the primary stops committing once its
//! newest sufficient set of confirmations is older than the fence timeout. With
//! `lease × (1 − drift) > fence × (1 + drift) + margin`, every vote for a successor is cast
//! after the old primary's last possible commit. See docs/failover.md for the whole argument.
//!
//! All times are durations on one node's monotonic clock (CLOCK_BOOTTIME, which keeps
//! counting through a suspend); clocks of different nodes are never compared.

use std::time::Duration;

/// A node id, as in `repmgr.nodes`.
pub type NodeId = i32;

/// Clocks of different nodes may tick at rates differing by up to this many parts per million.
pub const MAX_DRIFT_PPM: u32 = 10_000;

/// Time kept between the old primary's last possible commit and the first vote for a successor,
/// on top of the drift allowance: it covers the moment between a commit's fence check and its
/// commit record, and scheduling delays.
pub const SAFETY_MARGIN: Duration = Duration::from_millis(250);

/// The protocol's timing settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often each voter polls the primary.
    pub heartbeat: Duration,
    /// A primary whose confirmations are older than this refuses commits.
    pub fence: Duration,
    /// A voter that has heard nothing from the primary for this long may vote for a successor.
    pub lease: Duration,
}

fn scale(d: Duration, ppm_delta: i64) -> Duration {
    let micros = d.as_micros() as i64;
    Duration::from_micros((micros + micros * ppm_delta / 1_000_000).max(0) as u64)
}

impl Timing {
    /// Checks the rules that make the protocol safe and keep a healthy primary unfenced. The
    /// message names the rule and the values.
    pub fn validate(&self) -> Result<(), String> {
        let drift = i64::from(MAX_DRIFT_PPM);
        let fence_worst = scale(self.fence, drift) + SAFETY_MARGIN;
        let lease_worst = scale(self.lease, -drift);
        if fence_worst >= lease_worst {
            return Err(format!(
                "repmgr.fence_timeout ({} ms) plus the safety margin ({} ms) must stay below repmgr.lease_timeout ({} ms), allowing {}% clock drift: {} ms >= {} ms",
                self.fence.as_millis(),
                SAFETY_MARGIN.as_millis(),
                self.lease.as_millis(),
                MAX_DRIFT_PPM / 10_000,
                fence_worst.as_millis(),
                lease_worst.as_millis()
            ));
        }
        // A confirmation is counted one poll after it is earned, so a healthy primary's
        // newest confirmation can be two heartbeats old; leave room for one lost poll more.
        if self.fence < self.heartbeat * 4 {
            return Err(format!(
                "repmgr.fence_timeout ({} ms) must be at least 4 × repmgr.heartbeat_interval ({} ms), or a healthy primary would fence itself",
                self.fence.as_millis(),
                self.heartbeat.as_millis()
            ));
        }
        Ok(())
    }
}

/// How many votes (the candidate's own included) win an election among `voters`.
pub fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// How many other voters a primary needs recent confirmations from. A primary never votes for
/// a successor, so a successor needs a majority among the other voters; the primary is safe
/// once its confirmers meet every such majority, that is with `voters − majority` of them.
/// Two voters: none (no successor could ever be elected, so there is nothing to fence against).
pub fn confirmations_needed(voters: usize) -> usize {
    voters.saturating_sub(majority(voters))
}

/// The time since which the primary has held enough confirmations, given the confirmation
/// times of the other voters; `None` when it has too few. With none needed, `now`.
pub fn confirmed_since(
    now: Duration,
    confirmations: &[Duration],
    voters: usize,
) -> Option<Duration> {
    let needed = confirmations_needed(voters);
    if needed == 0 {
        return Some(now);
    }
    let mut newest: Vec<Duration> = confirmations.to_vec();
    newest.sort_unstable_by(|a, b| b.cmp(a));
    newest.get(needed - 1).copied()
}

/// Whether the primary may commit at `now`.
pub fn may_commit(
    now: Duration,
    confirmations: &[Duration],
    voters: usize,
    fence: Duration,
) -> bool {
    confirmed_since(now, confirmations, voters).is_some_and(|t| now.saturating_sub(t) < fence)
}

/// What the primary hands out with each poll reply: its clock reading, tied to this run of
/// the server so that a stamp from before a restart is never counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub incarnation: u64,
    pub at: Duration,
}

/// The primary's answer to a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollReply {
    pub term: u64,
    /// False when the voter's term is newer than the primary's: the voter has moved on.
    pub accepted: bool,
    /// Whether the primary holds its lease (it may commit). A primary that restarted, or was
    /// replaced, does not: voters that keep hearing only such a primary look for the leader.
    pub leading: bool,
    pub stamp: Stamp,
}

/// Most voters a lease tracks (the catalog may hold more nodes; the rest are not counted).
pub const MAX_VOTERS: usize = 32;

/// The primary's side of the lease. Fixed-size and `Copy`, so that it can live in shared
/// memory, where every backend checks it at commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub term: u64,
    pub incarnation: u64,
    /// The other voters and when each last confirmed (on this node's clock).
    confirmations: [(NodeId, Option<Duration>); MAX_VOTERS],
    others: usize,
    /// The highest term a voter reported, when above ours.
    pub newer_term: Option<u64>,
}

impl Lease {
    /// A lease for term `term`, with the other voters' ids. `granted` is when the votes that
    /// elected this node were requested: votes are confirmations.
    pub fn new(
        term: u64,
        incarnation: u64,
        others: &[NodeId],
        granted: Option<(Duration, &[NodeId])>,
    ) -> Lease {
        let mut lease = Lease {
            term,
            incarnation,
            confirmations: [(0, None); MAX_VOTERS],
            others: 0,
            newer_term: None,
        };
        lease.set_voters(others);
        if let Some((at, by)) = granted {
            for (id, t) in lease.confirmations[..lease.others].iter_mut() {
                if by.contains(id) {
                    *t = Some(at);
                }
            }
        }
        lease
    }

    /// Replaces the voter list (the catalog changed), keeping what is known of each voter.
    pub fn set_voters(&mut self, others: &[NodeId]) {
        let mut next = [(0, None); MAX_VOTERS];
        for (slot, id) in next.iter_mut().zip(others.iter()) {
            *slot = (
                *id,
                self.confirmations[..self.others]
                    .iter()
                    .find(|(v, _)| v == id)
                    .and_then(|(_, t)| *t),
            );
        }
        self.confirmations = next;
        self.others = others.len().min(MAX_VOTERS);
    }

    /// The other voters' ids.
    pub fn others(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.confirmations[..self.others].iter().map(|(id, _)| *id)
    }

    /// Answers a poll from `voter` and counts the confirmation it echoes.
    pub fn poll(
        &mut self,
        now: Duration,
        voter: NodeId,
        voter_term: u64,
        echo: Option<Stamp>,
        fence: Duration,
    ) -> PollReply {
        let accepted = voter_term <= self.term;
        if accepted {
            if let Some(stamp) = echo.filter(|s| s.incarnation == self.incarnation && s.at <= now)
                && let Some((_, t)) = self.confirmations[..self.others]
                    .iter_mut()
                    .find(|(v, _)| *v == voter)
            {
                *t = Some(t.map_or(stamp.at, |old| old.max(stamp.at)));
            }
        } else {
            self.newer_term = Some(self.newer_term.map_or(voter_term, |t| t.max(voter_term)));
        }
        PollReply {
            term: self.term,
            accepted,
            leading: self.may_commit(now, fence),
            stamp: Stamp {
                incarnation: self.incarnation,
                at: now,
            },
        }
    }

    /// When a voter reported a newer term (a failed election raised it) while this primary
    /// still holds its lease, moves to a term above it and returns it (persist it before the
    /// next reply). Voters that raised their term can then confirm this primary again. Safe
    /// because holding the lease means nobody can have won a newer term, and a voter supports
    /// one node per term.
    pub fn overtake(&mut self, now: Duration, fence: Duration) -> Option<u64> {
        let newer = self.newer_term.filter(|t| *t >= self.term)?;
        if !self.may_commit(now, fence) {
            return None;
        }
        self.term = newer + 1;
        self.newer_term = None;
        Some(self.term)
    }

    /// The voters' confirmation times, for [`may_commit`].
    pub fn confirmations(&self) -> Vec<Duration> {
        self.confirmations[..self.others]
            .iter()
            .filter_map(|(_, t)| *t)
            .collect()
    }

    /// How many voters there are, this node included.
    pub fn voters(&self) -> usize {
        self.others + 1
    }

    pub fn may_commit(&self, now: Duration, fence: Duration) -> bool {
        may_commit(now, &self.confirmations(), self.voters(), fence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn timing_rules_name_themselves() {
        let ok = Timing {
            heartbeat: ms(250),
            fence: ms(1500),
            lease: ms(2500),
        };
        assert_eq!(ok.validate(), Ok(()));
        let e = Timing {
            lease: ms(1700),
            ..ok
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("repmgr.fence_timeout (1500 ms) plus the safety margin (250 ms) must stay below repmgr.lease_timeout (1700 ms)"), "{e}");
        let e = Timing {
            heartbeat: ms(500),
            ..ok
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("at least 4 × repmgr.heartbeat_interval"), "{e}");
    }

    #[test]
    fn confirmations_needed_follow_the_successor_majority() {
        assert_eq!(
            [1, 2, 3, 4, 5, 6, 7].map(confirmations_needed),
            [0, 0, 1, 1, 2, 2, 3]
        );
        assert_eq!(confirmed_since(ms(9), &[], 2), Some(ms(9)));
        assert_eq!(confirmed_since(ms(9), &[ms(3), ms(5)], 5), Some(ms(3)));
        assert_eq!(confirmed_since(ms(9), &[ms(5)], 5), None);
    }

    #[test]
    fn a_confirmation_counts_only_when_echoed() {
        let mut l = Lease::new(3, 77, &[2, 3], None);
        assert!(!l.may_commit(ms(0), ms(1500)), "no confirmation yet");
        let r = l.poll(ms(100), 2, 3, None, ms(1500));
        assert!(r.accepted);
        assert!(
            !l.may_commit(ms(100), ms(1500)),
            "a poll without echo confirms nothing"
        );
        l.poll(ms(350), 2, 3, Some(r.stamp), ms(1500));
        assert!(l.may_commit(ms(350), ms(1500)));
        assert!(
            l.may_commit(ms(1599), ms(1500)),
            "dated by the stamp (100 ms)"
        );
        assert!(!l.may_commit(ms(1600), ms(1500)));
        // A stamp from an earlier run of the server is ignored.
        l.poll(
            ms(2000),
            3,
            3,
            Some(Stamp {
                incarnation: 76,
                at: ms(1900),
            }),
            ms(1500),
        );
        assert!(!l.may_commit(ms(2000), ms(1500)));
    }

    #[test]
    fn a_voter_with_a_newer_term_confirms_nothing() {
        let mut l = Lease::new(3, 1, &[2, 3], None);
        let r = l.poll(ms(10), 2, 3, None, ms(1500));
        let r2 = l.poll(ms(20), 2, 4, Some(r.stamp), ms(1500));
        assert!(!r2.accepted);
        assert_eq!(l.newer_term, Some(4));
        assert!(!l.may_commit(ms(20), ms(1500)));
    }

    #[test]
    fn a_leading_primary_overtakes_a_failed_election() {
        let mut l = Lease::new(3, 1, &[2, 3], Some((ms(0), &[2, 3])));
        l.poll(ms(10), 3, 5, None, ms(1500));
        assert_eq!(l.overtake(ms(20), ms(1500)), Some(6));
        assert_eq!(l.term, 6);
        let mut fenced = Lease::new(3, 1, &[2, 3], None);
        fenced.poll(ms(10), 3, 5, None, ms(1500));
        assert_eq!(
            fenced.overtake(ms(20), ms(1500)),
            None,
            "a primary without its lease may have been replaced"
        );
    }

    #[test]
    fn votes_are_confirmations_and_voters_can_change() {
        let mut l = Lease::new(5, 1, &[1, 3], Some((ms(40), &[3])));
        assert!(l.may_commit(ms(100), ms(1500)));
        l.set_voters(&[1, 3, 4, 5]);
        assert_eq!(l.voters(), 5);
        assert!(
            !l.may_commit(ms(100), ms(1500)),
            "five voters need two confirmations"
        );
    }
}
