//! Watching one upstream node: when to check it next, and what a check result means.
//!
//! A standby (or witness) checks its upstream every monitoring interval. After a failed check
//! it retries `attempts` times, `interval` apart, before declaring the upstream down, as
//! repmgr does. This module is the bookkeeping only: the caller performs the checks and passes
//! in the time (elapsed on a monotonic clock) and the result, and gets back the transition to
//! report. Nothing here reads a clock or touches the network.

use std::time::Duration;

/// How a failed upstream is retried before it is declared down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Pause between rounds while everything is well.
    pub monitor_interval: Duration,
    /// Extra checks after the first failure.
    pub attempts: u32,
    /// Pause between those checks.
    pub retry_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Up,
    /// Failing since `since`, with `failures` failed checks so far.
    Retrying {
        since: Duration,
        failures: u32,
    },
    Down {
        since: Duration,
    },
}

/// A transition worth an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The first failed check after being up.
    Disconnected,
    /// Every retry failed: the upstream is considered down.
    Down { after: Duration },
    /// A check succeeded after failures.
    Reconnected { after: Duration },
}

/// The state of one upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    policy: RetryPolicy,
    state: State,
    last_check: Option<Duration>,
}

impl Upstream {
    pub fn new(policy: RetryPolicy) -> Upstream {
        Upstream {
            policy,
            state: State::Up,
            last_check: None,
        }
    }

    /// Applies new settings (after a reload) without forgetting the current state.
    pub fn set_policy(&mut self, policy: RetryPolicy) {
        self.policy = policy;
    }

    /// When the next check is due.
    pub fn next_check(&self) -> Duration {
        let Some(last) = self.last_check else {
            return Duration::ZERO;
        };
        last + match self.state {
            State::Retrying { .. } => self.policy.retry_interval,
            State::Up | State::Down { .. } => self.policy.monitor_interval,
        }
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// Since when the upstream has been declared down, if it has.
    pub fn down_since(&self) -> Option<Duration> {
        match self.state {
            State::Down { since } => Some(since),
            _ => None,
        }
    }

    /// Records the result of a check made at `now`.
    pub fn observe(&mut self, now: Duration, ok: bool) -> Option<Transition> {
        self.last_check = Some(now);
        let (next, transition) = match (self.state, ok) {
            (State::Up, true) => (State::Up, None),
            (State::Up, false) if self.policy.attempts == 0 => {
                (State::Down { since: now }, Some(Transition::Disconnected))
            }
            (State::Up, false) => (
                State::Retrying {
                    since: now,
                    failures: 1,
                },
                Some(Transition::Disconnected),
            ),
            (State::Retrying { since, .. } | State::Down { since }, true) => (
                State::Up,
                Some(Transition::Reconnected {
                    after: now.saturating_sub(since),
                }),
            ),
            (State::Retrying { since, failures }, false) if failures >= self.policy.attempts => (
                State::Down { since },
                Some(Transition::Down {
                    after: now.saturating_sub(since),
                }),
            ),
            (State::Retrying { since, failures }, false) => (
                State::Retrying {
                    since,
                    failures: failures + 1,
                },
                None,
            ),
            (State::Down { since }, false) => (State::Down { since }, None),
        };
        self.state = next;
        transition
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn policy(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            monitor_interval: S,
            attempts,
            retry_interval: S / 2,
        }
    }

    #[test]
    fn a_failure_is_retried_then_declared_down() {
        let mut u = Upstream::new(policy(3));
        assert_eq!(u.next_check(), Duration::ZERO);
        assert_eq!(u.observe(S, true), None);
        assert_eq!(u.next_check(), 2 * S);
        assert_eq!(u.observe(2 * S, false), Some(Transition::Disconnected));
        assert_eq!(
            u.next_check(),
            2 * S + S / 2,
            "retries come at the retry interval"
        );
        assert_eq!(u.observe(2 * S + S / 2, false), None);
        assert_eq!(u.observe(3 * S, false), None);
        assert!(!u.is_up());
        assert_eq!(
            u.observe(3 * S + S / 2, false),
            Some(Transition::Down { after: 3 * S / 2 })
        );
        assert_eq!(u.down_since(), Some(2 * S));
        assert_eq!(
            u.next_check(),
            4 * S + S / 2,
            "down: back to the monitoring interval"
        );
        assert_eq!(u.observe(4 * S + S / 2, false), None);
        assert_eq!(
            u.observe(10 * S, true),
            Some(Transition::Reconnected { after: 8 * S })
        );
        assert!(u.is_up());
    }

    #[test]
    fn recovery_during_retries_is_a_reconnect() {
        let mut u = Upstream::new(policy(3));
        u.observe(S, false);
        assert_eq!(
            u.observe(S + S / 2, true),
            Some(Transition::Reconnected { after: S / 2 })
        );
        assert_eq!(u.down_since(), None);
    }

    #[test]
    fn zero_attempts_means_down_at_once() {
        let mut u = Upstream::new(policy(0));
        assert_eq!(u.observe(S, false), Some(Transition::Disconnected));
        assert_eq!(u.down_since(), Some(S));
    }
}
