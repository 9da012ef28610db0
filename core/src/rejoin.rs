//! When a node that was replaced as primary, or whose timeline diverged, rejoins the current
//! primary by itself (`repmgr.auto_rejoin`), and what it says about it meanwhile.
//!
//! The driver tells [`Rejoin::want`] at every tick whether (and why) the node needs a rejoin;
//! this decides when an attempt starts: after a grace (a primary that lost an election it
//! started wins its role back in that time), then with back-off while the worker reports it
//! cannot start yet, and never again once it reports it never can (until a reload). Its
//! [`Status`] is what `node_status()`, `/status`, the metrics and `cluster show` show.

use std::time::Duration;

/// `repmgr.auto_rejoin`: whether a node that finds it was replaced (or diverged) rejoins the
/// current primary by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoRejoin {
    On,
    Off,
    /// Held: it says it needs a rejoin, and waits.
    Pause,
}

/// How long a node must have needed a rejoin before it starts one.
pub const GRACE: Duration = Duration::from_secs(5);
/// The first wait after a refused rejoin, doubled each time up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_secs(5);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// One node's automatic rejoin.
#[derive(Debug, Clone)]
pub struct Rejoin {
    /// Since when, and why, this node has needed a rejoin.
    needed: Option<(Duration, String)>,
    /// No attempt before this.
    at: Duration,
    backoff: Duration,
    /// Why it will not try again until a reload.
    blocked: Option<String>,
    /// An attempt was started and not refused (the server is stopping for it).
    started: bool,
    /// The last refusal that may clear by itself.
    not_yet: Option<String>,
}

/// Where a node's rejoin stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// It needs one and starts it in `after` (the grace, or the back-off after `not_yet`).
    Waiting {
        why: String,
        after: Duration,
        not_yet: Option<String>,
    },
    /// The helper was started: the server stops, is rewound and starts as a standby.
    Rejoining { why: String },
    /// It needs one and waits for an operator: `repmgr.auto_rejoin` is off or pause, or
    /// repmgr is paused.
    Held { why: String, by: Hold },
    /// It will not try again until a reload: `failure` says why and what to do.
    Failed { why: String, failure: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Off,
    Pause,
    Paused,
}

impl Status {
    /// One word for the state, the metrics' label.
    pub fn state(&self) -> &'static str {
        match self {
            Status::Waiting { .. } => "waiting",
            Status::Rejoining { .. } => "rejoining",
            Status::Held { .. } => "held",
            Status::Failed { .. } => "failed",
        }
    }

    /// Every state, for metrics that show all of them.
    pub const STATES: [&'static str; 4] = ["waiting", "rejoining", "held", "failed"];

    /// What an operator reads: the state, why the node needs a rejoin, and what happens next
    /// or what to do.
    pub fn describe(&self) -> String {
        match self {
            Status::Waiting {
                why,
                after,
                not_yet,
            } => {
                let secs = after.as_secs_f64().ceil() as u64;
                match not_yet {
                    Some(n) => format!(
                        "waiting: {why}; it could not rejoin yet ({n}) and tries again in {secs} s"
                    ),
                    None => {
                        format!("waiting: {why}; it rejoins the current primary in {secs} s")
                    }
                }
            }
            Status::Rejoining { why } => format!(
                "rejoining: {why}; the server stops, is rewound onto the current primary and starts as its standby"
            ),
            Status::Held { why, by } => {
                let next = match by {
                    Hold::Off => "repmgr.auto_rejoin is off: run repmgr node rejoin --force-rewind",
                    Hold::Pause => {
                        "repmgr.auto_rejoin is pause: set it to on, or run repmgr node rejoin --force-rewind"
                    }
                    Hold::Paused => "repmgr is paused on this node (repmgr service unpause)",
                };
                format!("held: {why}; {next}")
            }
            Status::Failed { why, failure } => format!(
                "failed: {why}, but it does not rejoin automatically: {failure}; then reload the configuration to let it try again, or run repmgr node rejoin --force-rewind"
            ),
        }
    }
}

impl Default for Rejoin {
    fn default() -> Self {
        Rejoin {
            needed: None,
            at: Duration::ZERO,
            backoff: BACKOFF_FIRST,
            blocked: None,
            started: false,
            not_yet: None,
        }
    }
}

impl Rejoin {
    /// At every tick: whether the node needs a rejoin (`why`), and whether it may start one
    /// (`mode` on, not `paused`). Returns true when an attempt should start now.
    pub fn want(
        &mut self,
        now: Duration,
        why: Option<&str>,
        mode: AutoRejoin,
        paused: bool,
    ) -> bool {
        let Some(why) = why else {
            self.needed = None;
            self.backoff = BACKOFF_FIRST;
            self.started = false;
            self.not_yet = None;
            return false;
        };
        match &mut self.needed {
            Some((_, w)) if w != why => *w = why.to_string(),
            Some(_) => {}
            None => self.needed = Some((now, why.to_string())),
        }
        let since = self.needed.as_ref().map_or(now, |(s, _)| *s);
        if mode != AutoRejoin::On
            || paused
            || self.blocked.is_some()
            || now < since + GRACE
            || now < self.at
        {
            return false;
        }
        // Until the worker says otherwise, the attempt is under way: the server stops.
        self.at = now + self.backoff;
        self.started = true;
        true
    }

    /// The worker could not start the attempt: it may work later (`retry`), after the
    /// back-off returned, or never until a reload.
    pub fn refused(&mut self, now: Duration, why: String, retry: bool) -> Duration {
        self.started = false;
        let wait = self.backoff;
        if retry {
            self.at = now + wait;
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            self.not_yet = Some(why);
        } else {
            self.blocked = Some(why);
        }
        wait
    }

    /// A reload may have fixed what stood in the way.
    pub fn reloaded(&mut self) {
        self.blocked = None;
        self.backoff = BACKOFF_FIRST;
    }

    /// Where it stands at `now`, if the node needs a rejoin.
    pub fn status(&self, now: Duration, mode: AutoRejoin, paused: bool) -> Option<Status> {
        let (since, why) = self.needed.as_ref()?;
        let why = why.clone();
        if let Some(failure) = &self.blocked {
            return Some(Status::Failed {
                why,
                failure: failure.clone(),
            });
        }
        let by = match (mode, paused) {
            (AutoRejoin::Off, _) => Some(Hold::Off),
            (AutoRejoin::Pause, _) => Some(Hold::Pause),
            (AutoRejoin::On, true) => Some(Hold::Paused),
            (AutoRejoin::On, false) => None,
        };
        if let Some(by) = by {
            return Some(Status::Held { why, by });
        }
        if self.started {
            return Some(Status::Rejoining { why });
        }
        Some(Status::Waiting {
            why,
            after: (*since + GRACE).max(self.at).saturating_sub(now),
            not_yet: self.not_yet.clone(),
        })
    }
}
