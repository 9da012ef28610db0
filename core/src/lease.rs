//! The primary's lease: its right to commit, kept alive by confirmations from the voters.
//!
//! Every voter polls the primary every heartbeat interval. The primary answers with its term
//! and a *stamp* (its own clock reading, and the fence timeout it runs with); the voter echoes
//! the stamp in its next poll, and only then does the primary count the confirmation, dated by
//! that stamp and valid for the fence the stamp announced (or the primary's current fence, if
//! shorter). So a confirmation the primary counts is never later than the moment the voter
//! learnt the primary was alive, nor longer than the voter knows. A voter only votes for a
//! successor once it has heard nothing from the primary for long enough to cover that fence
//! ([`lease_for`]), whatever its own settings say: the timing rule holds across nodes with
//! different postgresql.conf files. See docs/failover.md for the whole argument.
//!
//! Which voters count is the primary's *membership view* (the active nodes of its catalog),
//! and, while a change of it has not reached enough voters, the view before it as well
//! ([`Lease::change_view`]): a candidate counting votes in an older view must be blocked too.
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

/// The longest `repmgr.fence_timeout` a node accepts. A voter that cannot know the fence of
/// the primary it may have confirmed (its saved state predates announced fences) assumes this.
pub const MAX_FENCE: Duration = Duration::from_secs(600);

/// The protocol's timing settings of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often this node, as a voter, polls the primary.
    pub heartbeat: Duration,
    /// This node, as a primary, refuses commits once its confirmations are older than this.
    pub fence: Duration,
    /// This node, as a voter, waits at least this long without hearing the primary before it
    /// votes for a successor (longer when the primary's fence needs it, see [`lease_for`]).
    pub lease: Duration,
}

fn scale(d: Duration, ppm_delta: i64) -> Duration {
    let micros = d.as_micros() as i64;
    Duration::from_micros((micros + micros * ppm_delta / 1_000_000).max(0) as u64)
}

/// The shortest silence, on a voter's clock, after which a primary whose confirmations are
/// valid for `fence` on its own clock can no longer commit, drift and margin included:
/// `lease × (1 − drift) > fence × (1 + drift) + margin`.
pub fn lease_for(fence: Duration) -> Duration {
    let drift = u128::from(MAX_DRIFT_PPM);
    let worst = scale(fence, i64::from(MAX_DRIFT_PPM)) + SAFETY_MARGIN;
    // Smallest l with l × (1 − drift) > worst, rounded up to whole microseconds.
    let micros = worst.as_micros() * 1_000_000 / (1_000_000 - drift) + 1;
    Duration::from_micros(micros as u64)
}

impl Timing {
    /// Checks the rules that make this node's own settings consistent and keep a healthy
    /// primary unfenced. The message names the rule and the values. (Safety across nodes
    /// does not depend on this: voters wait out the fence the primary announces.)
    pub fn validate(&self) -> Result<(), String> {
        if self.fence > MAX_FENCE {
            return Err(format!(
                "repmgr.fence_timeout ({} ms) is above the longest allowed ({} ms)",
                self.fence.as_millis(),
                MAX_FENCE.as_millis()
            ));
        }
        let needed = lease_for(self.fence);
        if self.lease < needed {
            return Err(format!(
                "repmgr.fence_timeout ({} ms) plus the safety margin ({} ms) must stay below repmgr.lease_timeout ({} ms), allowing {}% clock drift: the lease must be at least {} ms",
                self.fence.as_millis(),
                SAFETY_MARGIN.as_millis(),
                self.lease.as_millis(),
                MAX_DRIFT_PPM / 10_000,
                needed.as_micros().div_ceil(1000)
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

/// How many of `others` voters a primary needs recent confirmations from, in a view of
/// `others` voters plus the primary itself when `with_self`. A primary never votes for a
/// successor, so a successor needs a majority of the view without it; the primary is safe
/// once its confirmers meet every such majority. Two voters with the primary: none (no
/// successor could ever be elected, so there is nothing to fence against).
pub fn confirmations_needed_in(others: usize, with_self: bool) -> usize {
    let size = others + usize::from(with_self);
    (others + 1).saturating_sub(majority(size))
}

/// [`confirmations_needed_in`] for a view of `voters` that includes the primary.
pub fn confirmations_needed(voters: usize) -> usize {
    confirmations_needed_in(voters.saturating_sub(1), true)
}

/// What the primary hands out with each poll reply: its clock reading, tied to this run of
/// the server so that a stamp from before a restart is never counted, and the fence timeout
/// it counts the confirmation for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub incarnation: u64,
    pub at: Duration,
    pub fence: Duration,
}

/// A voter's poll of the primary: who, in which term, the stamp it echoes, its membership
/// version and how long it waits before voting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poll {
    pub voter: NodeId,
    pub term: u64,
    pub echo: Option<Stamp>,
    pub version: u64,
    pub wait: Duration,
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
    /// A primary without its lease that does not take confirmations now, so that the voters'
    /// silence can grow and an election happen if one can.
    pub yielding: bool,
    pub stamp: Stamp,
    /// The primary's `repmgr.heartbeat_interval`: its fence is at least four of them, so its
    /// voters poll at least that often, whatever their own setting.
    pub heartbeat: Duration,
}

/// Most voters a lease tracks (the catalog may hold more nodes; the rest are not counted).
pub const MAX_VOTERS: usize = 32;

/// Most membership views a lease counts at once: the current one and the older ones whose
/// change has not reached enough of their voters yet.
pub const MAX_VIEWS: usize = 4;

/// A voter's confirmation: when it was earned (the stamp's time) and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Confirmation {
    at: Duration,
    fence: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    id: NodeId,
    confirmed: Option<Confirmation>,
    /// The newest membership version this voter reported in a poll.
    version: u64,
    /// How long it waits without hearing the primary before it votes, as it last reported.
    wait: Duration,
}

const EMPTY_SLOT: Slot = Slot {
    id: 0,
    confirmed: None,
    version: 0,
    wait: Duration::ZERO,
};

/// A set of voters by slot, with whether the primary belongs to it, and its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct View {
    mask: u32,
    with_self: bool,
    version: u64,
}

/// A membership view: the active voters of a catalog, and the version of that list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Membership {
    pub version: u64,
    /// Every voter of the view, sorted.
    pub voters: Vec<NodeId>,
}

impl Membership {
    pub fn new(version: u64, voters: impl IntoIterator<Item = NodeId>) -> Membership {
        let mut voters: Vec<NodeId> = voters.into_iter().collect();
        voters.sort_unstable();
        voters.dedup();
        Membership { version, voters }
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// The voters other than `me`.
    pub fn others(&self, me: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().copied().filter(move |v| *v != me)
    }
}

/// The primary's side of the lease. Fixed-size and `Copy`, so that it can live in shared
/// memory, where every backend checks it at commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub term: u64,
    pub incarnation: u64,
    /// This node's id: it is never one of its own voters.
    me: NodeId,
    slots: [Slot; MAX_VOTERS],
    /// `views[0]` is the current view, the rest older views still counted.
    views: [View; MAX_VIEWS],
    nviews: usize,
    /// A view did not fit (more voters or views than tracked): the lease cannot know it is
    /// safe, so it refuses commits until it is built afresh.
    overflow: bool,
    /// The highest term a voter reported, when above ours.
    pub newer_term: Option<u64>,
    /// Won by a majority of votes, or confirmed by a majority since. Until then the lease
    /// counts a majority of confirmations, not just enough to meet every successor majority:
    /// a primary promoted without a majority (forced, or started without its saved lease)
    /// may run next to an old primary whose confirmers its own must then meet.
    established: bool,
    /// The view it was created in (the election's): what "a majority" means for
    /// [`Lease::established`], whatever the catalog says later.
    origin: View,
    /// Since when it has not held its lease (its own clock), while it does not.
    unled_since: Option<Duration>,
    /// The lapses backends saw while answering polls. A primary frozen past its fence and
    /// then thawed gets its lease back from the first polls it answers, often before its
    /// worker looks: the worker learns of the lapse from here.
    lapses: Lapses,
}

/// How often the lease lapsed, and the last lapse: from its end to its renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lapses {
    pub count: u32,
    pub from: Duration,
    pub to: Option<Duration>,
}

/// Time an election needs once the voters' silence has grown long enough.
const ELECTION_TIME: Duration = Duration::from_secs(1);

impl Lease {
    /// A lease for term `term` over `views`: the current view first, then older views whose
    /// change may not have reached their voters yet. `granted` is when the votes that elected
    /// this node were requested, with the fence they were granted for, and by whom: votes are
    /// confirmations.
    pub fn new(
        term: u64,
        incarnation: u64,
        me: NodeId,
        views: &[Membership],
        granted: Option<(Duration, Duration, &[NodeId])>,
    ) -> Lease {
        let mut lease = Lease {
            term,
            incarnation,
            me,
            slots: [EMPTY_SLOT; MAX_VOTERS],
            views: [View {
                mask: 0,
                with_self: false,
                version: 0,
            }; MAX_VIEWS],
            nviews: 0,
            overflow: views.is_empty(),
            newer_term: None,
            established: false,
            origin: View {
                mask: 0,
                with_self: true,
                version: 0,
            },
            unled_since: None,
            lapses: Lapses::default(),
        };
        for v in views.iter().rev() {
            if lease.nviews == 0 || lease.views[0].version != v.version {
                lease.push_view(v);
            }
        }
        lease.origin = lease.views[0];
        let mut at = Duration::ZERO;
        if let Some((when, fence, by)) = granted {
            for s in lease.slots.iter_mut().filter(|s| by.contains(&s.id)) {
                s.confirmed = Some(Confirmation { at: when, fence });
            }
            at = when;
        }
        lease.establish(at);
        lease.retire();
        lease
    }

    /// Counts the lease as established when, at `at`, a majority of the view it was created
    /// in had confirmed it (this node's own included when it belongs to that view).
    fn establish(&mut self, at: Duration) {
        if self.established || self.overflow {
            return;
        }
        let v = self.origin;
        let size = v.mask.count_ones() as usize + usize::from(v.with_self);
        let valid = self.count(v.mask, |s| {
            s.confirmed
                .is_some_and(|c| at >= c.at && at < c.at + c.fence)
        });
        // A view without voters elects nobody.
        self.established = size == 0 || valid + usize::from(v.with_self) >= majority(size);
    }

    /// Whether the lease was won by, or has since been confirmed by, a majority.
    pub fn established(&self) -> bool {
        self.established
    }

    /// How many other voters of `v` must have confirmed.
    fn needed(&self, v: &View) -> usize {
        let others = v.mask.count_ones() as usize;
        if self.established {
            confirmations_needed_in(others, v.with_self)
        } else {
            majority(others + usize::from(v.with_self)).saturating_sub(usize::from(v.with_self))
        }
    }

    fn slot_of(&mut self, id: NodeId) -> Option<usize> {
        if let Some(i) = self.slots.iter().position(|s| s.id == id) {
            return Some(i);
        }
        let free = self.slots.iter().position(|s| s.id == 0)?;
        self.slots[free] = Slot { id, ..EMPTY_SLOT };
        Some(free)
    }

    /// Makes `view` the current view, keeping the ones before it counted.
    fn push_view(&mut self, view: &Membership) {
        let mut mask = 0u32;
        for id in view.others(self.me) {
            match self.slot_of(id) {
                Some(i) => mask |= 1 << i,
                None => self.overflow = true,
            }
        }
        if self.nviews == MAX_VIEWS {
            self.overflow = true;
            return;
        }
        self.views.copy_within(0..self.nviews, 1);
        self.views[0] = View {
            mask,
            with_self: view.contains(self.me),
            version: view.version,
        };
        self.nviews += 1;
    }

    /// The membership changed to `view`: from now on it is counted too, and the views before
    /// it until enough of their voters have seen the change. Returns false when an earlier
    /// change is still counted (the caller may refuse the change, or wait).
    pub fn change_view(&mut self, view: &Membership) -> bool {
        let settled = self.nviews <= 1;
        if self.nviews > 0 && self.views[0].version == view.version {
            return settled;
        }
        self.push_view(view);
        self.retire();
        settled
    }

    /// The membership changed to `view` and the operator vouches that the voters it removed
    /// are gone for good (`unregister_node(..., force => true)` of nodes that cannot be
    /// reached): the older views are not counted any more. If such a voter is in fact running
    /// behind a partition, this is the one operator action that can leave two primaries.
    pub fn replace_views(&mut self, view: &Membership) {
        self.nviews = 0;
        self.push_view(view);
        self.free_slots();
    }

    /// Undoes [`Lease::change_view`] to the view of `version` (its transaction rolled back).
    pub fn undo_view(&mut self, version: u64) {
        if self.nviews > 1 && self.views[0].version == version {
            self.views.copy_within(1..self.nviews, 0);
            self.nviews -= 1;
            self.free_slots();
        }
    }

    /// Notes membership versions known otherwise than from polls (the pre-vote answers of an
    /// election; the node that wrote the change, which has seen it), and retires what they
    /// allow.
    pub fn note_versions(&mut self, versions: &[(NodeId, u64)]) {
        for (id, v) in versions {
            if let Some(s) = self.slots.iter_mut().find(|s| s.id == *id && s.id != 0) {
                s.version = s.version.max(*v);
            }
        }
        self.retire();
    }

    /// Whether an earlier membership change is still counted.
    pub fn changing(&self) -> bool {
        self.nviews > 1
    }

    /// The membership version of the current view.
    pub fn version(&self) -> u64 {
        self.views[0].version
    }

    /// Drops older views whose voters have seen enough of the change: a candidate counting
    /// votes in such a view can no longer win, because enough of its voters refuse a
    /// candidate whose view is older than theirs.
    ///
    /// Only once the lease is established: a primary promoted without a majority may run next
    /// to one that never lost its lease, so no change of the catalog may relax what it needs.
    fn retire(&mut self) {
        if !self.established {
            return;
        }
        let mut i = 1;
        while i < self.nviews {
            let newer = self.views[i - 1].version;
            let v = self.views[i];
            let seen = self.count(v.mask, |s| s.version >= newer);
            if seen >= confirmations_needed_in(v.mask.count_ones() as usize, v.with_self) {
                self.views.copy_within(i + 1..self.nviews, i);
                self.nviews -= 1;
            } else {
                i += 1;
            }
        }
        self.free_slots();
    }

    /// Frees the slots of voters in no view, unless their confirmation may still count when
    /// they return (a confirmation is a promise not to vote, whatever the catalog says).
    fn free_slots(&mut self) {
        let used = self.views[..self.nviews]
            .iter()
            .fold(0u32, |m, v| m | v.mask);
        for (i, s) in self.slots.iter_mut().enumerate() {
            if used & (1 << i) == 0 && s.confirmed.is_none() {
                *s = EMPTY_SLOT;
            }
        }
    }

    fn count(&self, mask: u32, f: impl Fn(&Slot) -> bool) -> usize {
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, s)| mask & (1 << i) != 0 && f(s))
            .count()
    }

    /// The current view's voters other than this node.
    pub fn others(&self) -> impl Iterator<Item = NodeId> + '_ {
        let mask = self.views[0].mask;
        self.slots
            .iter()
            .enumerate()
            .filter(move |(i, _)| mask & (1 << i) != 0)
            .map(|(_, s)| s.id)
    }

    /// Every counted view, current first: what a restarted primary must wait for.
    pub fn views(&self) -> Vec<Membership> {
        self.views[..self.nviews]
            .iter()
            .map(|v| {
                let others = self
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| v.mask & (1 << i) != 0)
                    .map(|(_, s)| s.id);
                let me = v.with_self.then_some(self.me);
                Membership::new(v.version, others.chain(me))
            })
            .collect()
    }

    /// Answers a poll from `voter`, counts the confirmation it echoes and notes the
    /// membership version and wait it reports. `fence` is this node's fence timeout now.
    ///
    /// Without its lease, the primary alternates on its own clock: it takes confirmations for
    /// one fence's worth of waiting, so that it can win its lease back, then yields for as
    /// long as its slowest voter waits before voting and an election takes, so that it never
    /// blocks an election that can succeed without it. Every voter sees the same phase.
    pub fn poll(&mut self, now: Duration, p: &Poll, timing: &Timing) -> PollReply {
        let fence = timing.fence;
        let (voter, voter_term, echo) = (p.voter, p.term, p.echo);
        let accepted = voter_term <= self.term;
        let yielding = self.yielding(now, fence);
        if accepted {
            let incarnation = self.incarnation;
            if let Some(i) = self.slots.iter().position(|s| s.id == voter && s.id != 0) {
                // Until a majority has confirmed it, confirmations stand in for the votes
                // this primary lacks (a forced promotion): like a vote, a confirmation does
                // not count from a voter that knows a newer node list than this primary's.
                // Under that list a majority may hold up another primary this one's view
                // does not meet.
                let outdated = !self.established && p.version > self.views[0].version;
                let s = &mut self.slots[i];
                s.version = s.version.max(p.version);
                s.wait = p.wait;
                if outdated {
                    s.confirmed = None;
                } else if let Some(stamp) = echo
                    .filter(|s| s.incarnation == incarnation && s.at <= now)
                    .filter(|_| !yielding)
                {
                    let c = Confirmation {
                        at: stamp.at,
                        fence: stamp.fence.min(fence),
                    };
                    s.confirmed = Some(match s.confirmed {
                        Some(old) if old.at >= c.at => old,
                        _ => c,
                    });
                }
                self.establish(now);
                self.retire();
            }
        } else {
            self.newer_term = Some(self.newer_term.map_or(voter_term, |t| t.max(voter_term)));
        }
        let leading = self.may_commit(now, fence);
        if leading && self.unled_since.take().is_some() {
            self.lapses.to = Some(now);
        }
        PollReply {
            term: self.term,
            accepted,
            leading,
            yielding: !leading && yielding,
            stamp: Stamp {
                incarnation: self.incarnation,
                at: now,
                fence,
            },
            heartbeat: timing.heartbeat,
        }
    }

    /// Whether, without its lease at `now`, the primary is in a yielding phase.
    fn yielding(&mut self, now: Duration, fence: Duration) -> bool {
        if self.may_commit(now, fence) {
            if self.unled_since.take().is_some() {
                self.lapses.to = Some(now);
            }
            return false;
        }
        let since = match self.unled_since {
            Some(since) => since,
            None => {
                let ended = self.valid_until(fence).flatten().filter(|t| *t <= now);
                self.lapses = Lapses {
                    count: self.lapses.count.wrapping_add(1),
                    from: ended.unwrap_or(now),
                    to: None,
                };
                // Counting just enough confirmations to meet every rival's majority is safe
                // only while the lease runs without a gap: during one, a rival (a forced
                // promotion) may gather a majority and count the same way. The lease is won
                // back by a majority again (simulator seed 4281: an old primary, thawed, held
                // its lease again in term 3 with 3 confirmations of 6 while the primary
                // forced in term 2 held its own with the other 3).
                if ended.is_some() {
                    self.established = false;
                }
                *self.unled_since.insert(now)
            }
        };
        let take = lease_for(fence);
        let slowest = self
            .slots
            .iter()
            .filter(|s| s.id != 0)
            .map(|s| s.wait)
            .max()
            .unwrap_or(Duration::ZERO)
            .max(take);
        let cycle = take + slowest + ELECTION_TIME;
        let into = now.saturating_sub(since).as_micros() % cycle.as_micros().max(1);
        into >= take.as_micros()
    }

    /// A voter asked directly (this primary looked around while fenced) is in `term`: as if it
    /// had said so in a poll.
    pub fn note_newer_term(&mut self, term: u64) {
        if term > self.term {
            self.newer_term = Some(self.newer_term.map_or(term, |t| t.max(term)));
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

    /// Until when this primary may commit with the confirmations it holds, `fence` being its
    /// fence timeout now (a stamp counts for the shorter of the fence it announced and this);
    /// `None` when it has never had enough. A view that needs no confirmation does not limit it.
    pub fn valid_until(&self, fence: Duration) -> Option<Option<Duration>> {
        if self.overflow {
            return None;
        }
        let mut until: Option<Duration> = None;
        for v in &self.views[..self.nviews] {
            let needed = self.needed(v);
            if needed == 0 {
                continue;
            }
            let mut ends: Vec<Duration> = self
                .slots
                .iter()
                .enumerate()
                .filter(|(i, _)| v.mask & (1 << i) != 0)
                .filter_map(|(_, s)| s.confirmed.map(|c| c.at + c.fence.min(fence)))
                .collect();
            ends.sort_unstable_by(|a, b| b.cmp(a));
            let end = *ends.get(needed - 1)?;
            until = Some(until.map_or(end, |u| u.min(end)));
        }
        Some(until)
    }

    /// The lapses backends saw while answering polls.
    pub fn lapses(&self) -> Lapses {
        self.lapses
    }

    /// Whether the primary may commit at `now`, `fence` being its fence timeout now.
    pub fn may_commit(&self, now: Duration, fence: Duration) -> bool {
        match self.valid_until(fence) {
            None => false,
            Some(None) => true,
            Some(Some(t)) => now < t,
        }
    }

    /// In the current view: the other voters whose confirmation still counts at `now` (`fence`
    /// being this primary's fence timeout), and how many voters it has, this node included.
    /// What a failover would have to work with if this primary died now.
    pub fn confirming(&self, now: Duration, fence: Duration) -> (usize, usize) {
        let v = self.views[0];
        let fresh = self.count(v.mask, |s| {
            s.confirmed
                .is_some_and(|c| now >= c.at && now < c.at + c.fence.min(fence))
        });
        (
            fresh,
            v.mask.count_ones() as usize + usize::from(v.with_self),
        )
    }

    /// How many confirmations the current view needs, and of how many voters.
    pub fn needs(&self) -> (usize, usize) {
        let v = self.views[0];
        (self.needed(&v), v.mask.count_ones() as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    const F: Duration = Duration::from_millis(1500);
    const W: Duration = Duration::from_millis(2000);
    const TF: Timing = Timing {
        heartbeat: Duration::from_millis(250),
        fence: F,
        lease: Duration::from_millis(2500),
    };

    fn view(version: u64, ids: &[NodeId]) -> Membership {
        Membership::new(version, ids.iter().copied())
    }

    impl Lease {
        /// As if a majority had confirmed it once.
        fn establish_for_test(&mut self) {
            self.established = true;
        }
    }

    fn pl(voter: NodeId, term: u64, echo: Option<Stamp>, version: u64, wait: Duration) -> Poll {
        Poll {
            voter,
            term,
            echo,
            version,
            wait,
        }
    }

    fn stamp(r: &PollReply) -> Option<Stamp> {
        Some(r.stamp)
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
    fn the_lease_a_fence_needs_allows_for_drift_and_margin() {
        // 1500 × 1.01 + 250 = 1765 ms; / 0.99 = 1782.8 ms.
        let l = lease_for(ms(1500));
        assert!(
            l > Duration::from_micros(1_782_828) && l < ms(1783),
            "{l:?}"
        );
        assert!(scale(l, -i64::from(MAX_DRIFT_PPM)) > scale(ms(1500), 10_000) + SAFETY_MARGIN);
        // The primary: fence 5 s needs 5354 ms of silence on the voters.
        assert_eq!(lease_for(ms(5000)).as_millis(), 5353);
    }

    #[test]
    fn confirmations_needed_follow_the_successor_majority() {
        assert_eq!(
            [1, 2, 3, 4, 5, 6, 7].map(confirmations_needed),
            [0, 0, 1, 1, 2, 2, 3]
        );
        // A view without the primary: its own majority can elect, so it must be met.
        assert_eq!(confirmations_needed_in(0, false), 0);
        assert_eq!(confirmations_needed_in(1, false), 1);
        assert_eq!(confirmations_needed_in(3, false), 2);
    }

    #[test]
    fn a_confirmation_counts_only_when_echoed_and_for_its_fence() {
        let mut l = Lease::new(3, 77, 1, &[view(1, &[1, 2, 3])], None);
        assert!(!l.may_commit(ms(0), F), "no confirmation yet");
        let r = l.poll(ms(100), &pl(2, 3, None, 1, W), &TF);
        assert!(r.accepted);
        assert_eq!(r.stamp.fence, F);
        assert!(
            !l.may_commit(ms(100), F),
            "a poll without echo confirms nothing"
        );
        l.poll(ms(350), &pl(2, 3, stamp(&r), 1, W), &TF);
        assert!(l.may_commit(ms(350), F));
        assert!(l.may_commit(ms(1599), F), "dated by the stamp (100 ms)");
        assert!(!l.may_commit(ms(1600), F));
        // A longer fence after a reload does not stretch a stamp issued under a shorter one.
        assert!(!l.may_commit(ms(1600), ms(5000)));
        // A shorter one shortens it.
        assert!(!l.may_commit(ms(1000), ms(800)));
        // A stamp from an earlier run of the server is ignored.
        let old = Stamp {
            incarnation: 76,
            at: ms(1900),
            fence: F,
        };
        l.poll(ms(2000), &pl(3, 3, Some(old), 1, W), &TF);
        assert!(!l.may_commit(ms(2000), F));
    }

    #[test]
    fn confirming_counts_the_voters_whose_confirmation_still_counts() {
        let mut l = Lease::new(3, 77, 1, &[view(1, &[1, 2, 3])], None);
        assert_eq!(l.confirming(ms(0), F), (0, 3));
        let r = l.poll(ms(100), &pl(2, 3, None, 1, W), &TF);
        l.poll(ms(350), &pl(2, 3, stamp(&r), 1, W), &TF);
        assert_eq!(l.confirming(ms(350), F), (1, 3));
        // Dated by the stamp (100 ms), for the fence.
        assert_eq!(l.confirming(ms(1599), F), (1, 3));
        assert_eq!(l.confirming(ms(1600), F), (0, 3));
    }

    #[test]
    fn a_lapse_seen_while_answering_polls_is_recorded_with_its_length() {
        let v = view(1, &[1, 2, 3]);
        let mut l = Lease::new(3, 1, 1, std::slice::from_ref(&v), Some((ms(0), F, &[2, 3])));
        let r = l.poll(ms(100), &pl(2, 3, None, 1, W), &TF);
        l.poll(ms(200), &pl(2, 3, stamp(&r), 1, W), &TF);
        assert!(l.may_commit(ms(200), F));
        let before = l.lapses();
        // Frozen from 200 ms to 2000 ms: confirmed until 100 + 1500 = 1600 ms.
        let r = l.poll(ms(2000), &pl(2, 3, None, 1, W), &TF);
        assert!(!r.leading);
        let during = l.lapses();
        assert_eq!(during.count, before.count + 1);
        assert_eq!((during.from, during.to), (ms(1600), None));
        l.poll(ms(2010), &pl(2, 3, stamp(&r), 1, W), &TF);
        assert!(l.may_commit(ms(2010), F), "won back at the first echo");
        let after = l.lapses();
        assert_eq!(after.count, during.count, "one lapse, however many polls");
        assert_eq!((after.from, after.to), (ms(1600), Some(ms(2010))));
    }

    #[test]
    fn a_forced_primary_counts_no_confirmation_from_a_voter_with_a_newer_node_list() {
        // Promoted by force with the five-node list of version 1, while the old primary
        // removed node 3 (version 9) and, with four voters, holds its lease on one.
        let mut l = Lease::new(2, 1, 2, &[view(1, &[1, 2, 3, 4, 5])], None);
        assert!(!l.established());
        for voter in [3, 5] {
            let r = l.poll(ms(100), &pl(voter, 2, None, 9, W), &TF);
            l.poll(ms(200), &pl(voter, 2, stamp(&r), 9, W), &TF);
        }
        assert!(
            !l.may_commit(ms(200), F),
            "voters that know version 9 do not stand in for votes under version 1"
        );
        // The same confirmations from voters on its own list count.
        let mut l = Lease::new(2, 1, 2, &[view(1, &[1, 2, 3, 4, 5])], None);
        for voter in [3, 5] {
            let r = l.poll(ms(100), &pl(voter, 2, None, 1, W), &TF);
            l.poll(ms(200), &pl(voter, 2, stamp(&r), 1, W), &TF);
        }
        assert!(l.may_commit(ms(200), F));
        assert!(l.established());
    }

    #[test]
    fn a_voter_with_a_newer_term_confirms_nothing() {
        let mut l = Lease::new(3, 1, 1, &[view(1, &[1, 2, 3])], None);
        let r = l.poll(ms(10), &pl(2, 3, None, 1, W), &TF);
        let r2 = l.poll(ms(20), &pl(2, 4, stamp(&r), 1, W), &TF);
        assert!(!r2.accepted);
        assert_eq!(l.newer_term, Some(4));
        assert!(!l.may_commit(ms(20), F));
    }

    #[test]
    fn a_leading_primary_overtakes_a_failed_election() {
        let v = view(1, &[1, 2, 3]);
        let mut l = Lease::new(3, 1, 1, std::slice::from_ref(&v), Some((ms(0), F, &[2, 3])));
        l.poll(ms(10), &pl(3, 5, None, 1, W), &TF);
        assert_eq!(l.overtake(ms(20), F), Some(6));
        assert_eq!(l.term, 6);
        let mut fenced = Lease::new(3, 1, 1, std::slice::from_ref(&v), None);
        fenced.poll(ms(10), &pl(3, 5, None, 1, W), &TF);
        assert_eq!(
            fenced.overtake(ms(20), F),
            None,
            "a primary without its lease may have been replaced"
        );
    }

    #[test]
    fn a_lease_won_back_after_a_lapse_needs_a_majority_again() {
        // Six voters: an established lease counts 2 confirmations of 5 (meeting any majority
        // of 4), one that lapsed needs 3 again: meanwhile a forced rival may have gathered a
        // majority and count 2 of its own.
        let v = view(1, &[1, 2, 3, 4, 5, 6]);
        let mut l = Lease::new(
            3,
            1,
            1,
            std::slice::from_ref(&v),
            Some((ms(0), F, &[2, 3, 4])),
        );
        assert!(l.established() && l.may_commit(ms(10), F));
        let confirm = |l: &mut Lease, at: u64, voters: &[NodeId]| {
            for voter in voters {
                let r = l.poll(ms(at), &pl(*voter, 3, None, 1, W), &TF);
                l.poll(ms(at + 1), &pl(*voter, 3, stamp(&r), 1, W), &TF);
            }
        };
        // Without a gap, two confirmations keep it.
        confirm(&mut l, 1000, &[2, 6]);
        assert!(l.may_commit(ms(2000), F));
        // After one (nothing for longer than the fence), two do not win it back; three do.
        confirm(&mut l, 5000, &[2, 6]);
        assert!(!l.may_commit(ms(5010), F), "won back by 2 of 5");
        confirm(&mut l, 5020, &[3]);
        assert!(l.may_commit(ms(5030), F));
        assert!(l.established());
    }

    #[test]
    fn votes_are_confirmations() {
        let l = Lease::new(5, 1, 2, &[view(1, &[1, 2, 3])], Some((ms(40), F, &[3])));
        assert!(l.may_commit(ms(100), F));
        assert!(!l.may_commit(ms(1540), F));
    }

    #[test]
    fn a_new_view_is_counted_with_the_old_one_until_its_voters_have_seen_it() {
        // Four voters {1, 2, 3, 4}: the primary needs one confirmation. Node 5 registers.
        let old = view(10, &[1, 2, 3, 4]);
        let mut l = Lease::new(1, 1, 1, std::slice::from_ref(&old), None);
        l.establish_for_test();
        let r = l.poll(ms(0), &pl(5, 1, None, 20, W), &TF);
        assert!(l.change_view(&view(20, &[1, 2, 3, 4, 5])));
        // Node 5 confirms: the new view (4 others) needs two.
        l.poll(ms(10), &pl(5, 1, stamp(&r), 20, W), &TF);
        assert!(!l.may_commit(ms(20), F));
        let r2 = l.poll(ms(20), &pl(4, 1, None, 10, W), &TF);
        l.poll(ms(30), &pl(4, 1, stamp(&r2), 10, W), &TF);
        // 4 and 5 confirm: the new view is met, and the old one through node 4.
        assert!(l.may_commit(ms(40), F));
        assert!(l.changing(), "only node 5 has seen version 20");
        // Confirmations from 2 and 5 meet both views too.
        let mut only5 = Lease::new(1, 1, 1, std::slice::from_ref(&old), None);
        only5.establish_for_test();
        only5.change_view(&view(20, &[1, 2, 3, 4, 5]));
        let r = only5.poll(ms(0), &pl(5, 1, None, 20, W), &TF);
        only5.poll(ms(5), &pl(5, 1, stamp(&r), 20, W), &TF);
        let r = only5.poll(ms(6), &pl(2, 1, None, 10, W), &TF);
        only5.poll(ms(7), &pl(2, 1, stamp(&r), 10, W), &TF);
        assert!(only5.may_commit(ms(8), F), "2 and 5 meet both views");
        let mut one = Lease::new(1, 1, 1, std::slice::from_ref(&old), None);
        one.establish_for_test();
        one.change_view(&view(20, &[1, 2, 3, 4, 5]));
        let r = one.poll(ms(0), &pl(5, 1, None, 20, W), &TF);
        one.poll(ms(5), &pl(5, 1, stamp(&r), 20, W), &TF);
        let r = one.poll(ms(6), &pl(4, 1, None, 10, W), &TF);
        one.poll(ms(7), &pl(4, 1, stamp(&r), 20, W), &TF);
        assert!(one.may_commit(ms(8), F));
        // Once one voter of the old view has seen version 20, the old view cannot elect.
        assert!(!one.changing(), "node 4 reported version 20");
    }

    #[test]
    fn a_change_waits_for_the_one_before_and_can_be_undone() {
        let mut l = Lease::new(1, 1, 1, &[view(10, &[1, 2, 3])], None);
        assert!(l.change_view(&view(20, &[1, 2, 3, 4])));
        assert!(l.changing());
        assert!(
            !l.change_view(&view(30, &[1, 2, 3, 4, 5])),
            "20 not settled"
        );
        l.undo_view(30);
        assert_eq!(l.version(), 20);
        l.undo_view(20);
        assert_eq!(l.version(), 10);
        assert!(!l.changing());
        // A view that loses the primary itself (its record was removed) still blocks its own
        // majorities: {2, 3} alone need one confirmation.
        let mut gone = Lease::new(1, 1, 1, &[view(10, &[1, 2, 3])], None);
        gone.establish_for_test();
        gone.change_view(&view(20, &[2, 3]));
        assert_eq!(gone.needs(), (1, 2));
    }

    #[test]
    fn a_lease_not_won_by_a_majority_needs_a_majority_of_confirmations() {
        // Four voters: a forced promotion (no vote) needs two of the three others, as a
        // majority, not the one an elected primary needs; then one suffices.
        let v = view(1, &[1, 2, 3, 4]);
        let mut l = Lease::new(5, 1, 1, std::slice::from_ref(&v), None);
        assert!(!l.established());
        assert_eq!(l.needs(), (2, 3));
        let r = l.poll(ms(0), &pl(2, 5, None, 1, W), &TF);
        l.poll(ms(10), &pl(2, 5, stamp(&r), 1, W), &TF);
        assert!(
            !l.may_commit(ms(20), F),
            "one confirmation is not a majority"
        );
        let r = l.poll(ms(20), &pl(3, 5, None, 1, W), &TF);
        l.poll(ms(30), &pl(3, 5, stamp(&r), 1, W), &TF);
        assert!(l.may_commit(ms(40), F));
        assert!(l.established());
        assert_eq!(l.needs(), (1, 3));
        // Elected by a majority: established at once; alone, too.
        let e = Lease::new(5, 1, 1, &[v], Some((ms(0), F, &[2, 3])));
        assert!(e.established());
        assert!(Lease::new(1, 1, 1, &[view(1, &[1])], None).established());
    }

    #[test]
    fn a_fenced_primary_takes_confirmations_then_yields_on_its_own_clock() {
        let v = view(1, &[1, 2, 3]);
        let mut l = Lease::new(3, 1, 1, &[v], None);
        // Voters wait 3 s; its fence 1.5 s needs 1783 ms: take 1783 ms, yield 4 s.
        let r = l.poll(ms(0), &pl(2, 3, None, 1, ms(3000)), &TF);
        assert!(!r.leading && !r.yielding);
        let r = l.poll(ms(1800), &pl(2, 3, None, 1, ms(3000)), &TF);
        assert!(r.yielding);
        // An echo while it yields is not counted.
        l.poll(ms(1900), &pl(2, 3, stamp(&r), 1, ms(3000)), &TF);
        assert!(!l.may_commit(ms(1900), F));
        let r = l.poll(ms(5800), &pl(2, 3, None, 1, ms(3000)), &TF);
        assert!(
            !r.yielding,
            "takes confirmations again after 1783 + 3000 + 1000 ms"
        );
        l.poll(ms(5810), &pl(2, 3, stamp(&r), 1, ms(3000)), &TF);
        assert!(l.may_commit(ms(5820), F));
    }

    #[test]
    fn more_views_than_tracked_refuse_commits() {
        // Nobody reports a version, so no view is retired.
        let mut l = Lease::new(1, 1, 1, &[view(1, &[1, 2, 3])], Some((ms(0), F, &[2, 3])));
        for v in 2..=4 {
            l.change_view(&view(v, &(1..=v as NodeId + 2).collect::<Vec<_>>()));
        }
        assert!(l.may_commit(ms(1), F) || l.changing());
        l.change_view(&view(5, &[1, 2, 3, 4, 5, 6, 7]));
        assert!(!l.may_commit(ms(1), F), "a fifth view does not fit");
    }
}
