//! A primary's view of the nodes that replicate from it, and when to run
//! `child_nodes_disconnect_command`.
//!
//! Each check the caller reports which registered children are attached. The tracker compares
//! with the previous check and returns the events to record (disconnect, reconnect, new
//! connection), following repmgr: a child not attached when monitoring starts is "unknown"
//! rather than disconnected, and only children that detached while we watched can trigger the
//! disconnect command.

use std::collections::BTreeMap;
use std::time::Duration;

/// One registered child as seen in one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub node_id: i32,
    pub name: String,
    /// `standby` or `witness`, for messages.
    pub kind: String,
    pub attached: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attach {
    Attached,
    Detached { since: Duration },
    Unknown,
}

/// An event about a child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildEvent {
    Disconnect {
        node_id: i32,
        details: String,
    },
    Reconnect {
        node_id: i32,
        details: String,
        after: Duration,
    },
    NewConnect {
        node_id: i32,
        details: String,
    },
}

/// Thresholds for `child_nodes_disconnect_command`, as repmgr defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisconnectPolicy {
    /// Run when fewer than this many children are attached (-1: not used).
    pub connected_min_count: i32,
    /// Run when at least this many children are detached (-1: not used).
    pub disconnect_min_count: i32,
    /// Count an attached witness among the connected children.
    pub include_witness: bool,
    /// How long the most recent detach must be past before running.
    pub timeout: Duration,
}

/// The children and their history.
#[derive(Debug, Default)]
pub struct Children {
    known: BTreeMap<i32, (Child, Attach)>,
    started: bool,
    command_ran: bool,
}

impl Children {
    pub fn new() -> Children {
        Children::default()
    }

    /// Records a check made at `now` and returns the events it implies.
    pub fn observe(&mut self, now: Duration, children: &[Child]) -> Vec<ChildEvent> {
        let first = !self.started;
        self.started = true;
        let mut events = Vec::new();
        let mut next = BTreeMap::new();
        for c in children {
            let who = format!("{} node \"{}\" (ID: {})", c.kind, c.name, c.node_id);
            let before = self.known.get(&c.node_id).map(|(_, a)| *a);
            let after = match (before, c.attached) {
                (Some(Attach::Attached), true) => Attach::Attached,
                (Some(Attach::Attached), false) => {
                    events.push(ChildEvent::Disconnect {
                        node_id: c.node_id,
                        details: format!("{who} has disconnected"),
                    });
                    Attach::Detached { since: now }
                }
                (Some(Attach::Detached { since }), true) => {
                    let after = now.saturating_sub(since);
                    events.push(ChildEvent::Reconnect {
                        node_id: c.node_id,
                        details: format!("{who} has reconnected after {} seconds", after.as_secs()),
                        after,
                    });
                    Attach::Attached
                }
                (Some(d @ Attach::Detached { .. }), false) => d,
                (Some(Attach::Unknown), true) | (None, true) if !first => {
                    events.push(ChildEvent::NewConnect {
                        node_id: c.node_id,
                        details: format!(
                            "new {} \"{}\" (ID: {}) has connected",
                            c.kind, c.name, c.node_id
                        ),
                    });
                    Attach::Attached
                }
                (_, true) => Attach::Attached,
                (_, false) => Attach::Unknown,
            };
            next.insert(c.node_id, (c.clone(), after));
        }
        self.known = next;
        events
    }

    /// Whether the disconnect command should run now (at most once until the count is
    /// satisfied again). Returns the reason when it should.
    pub fn disconnect_command_due(
        &mut self,
        now: Duration,
        policy: &DisconnectPolicy,
    ) -> Option<String> {
        let counted = |(c, _): &&(Child, Attach)| policy.include_witness || c.kind != "witness";
        let total = self
            .known
            .values()
            .filter(|(c, _)| c.kind != "witness")
            .count() as i32
            + i32::from(
                policy.include_witness && self.known.values().any(|(c, _)| c.kind == "witness"),
            );
        let connected = self
            .known
            .values()
            .filter(counted)
            .filter(|(_, a)| *a == Attach::Attached)
            .count() as i32;
        let required = if policy.connected_min_count > 0 {
            policy.connected_min_count
        } else if policy.disconnect_min_count > 0 {
            total - policy.disconnect_min_count + 1
        } else {
            1
        };
        if connected >= required {
            self.command_ran = false;
            return None;
        }
        let last_detach = self
            .known
            .values()
            .filter_map(|(_, a)| match a {
                Attach::Detached { since } => Some(*since),
                _ => None,
            })
            .max()?;
        if self.command_ran || now.saturating_sub(last_detach) < policy.timeout {
            return None;
        }
        self.command_ran = true;
        Some(format!(
            "{connected} of {total} child nodes attached (required: {required})"
        ))
    }

    /// (attached, registered) counts for status lines.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.known
                .values()
                .filter(|(_, a)| *a == Attach::Attached)
                .count(),
            self.known.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn child(id: i32, attached: bool) -> Child {
        Child {
            node_id: id,
            name: format!("node{id}"),
            kind: "standby".into(),
            attached,
        }
    }

    #[test]
    fn disconnect_reconnect_and_new_connections() {
        let mut c = Children::new();
        assert_eq!(
            c.observe(S, &[child(2, true), child(3, false)]),
            vec![],
            "startup reports nothing"
        );
        assert_eq!(
            c.observe(2 * S, &[child(2, false), child(3, true)]),
            vec![
                ChildEvent::Disconnect {
                    node_id: 2,
                    details: "standby node \"node2\" (ID: 2) has disconnected".into()
                },
                ChildEvent::NewConnect {
                    node_id: 3,
                    details: "new standby \"node3\" (ID: 3) has connected".into()
                },
            ]
        );
        assert_eq!(c.observe(3 * S, &[child(2, false), child(3, true)]), vec![]);
        assert_eq!(
            c.observe(9 * S, &[child(2, true), child(3, true), child(4, true)]),
            vec![
                ChildEvent::Reconnect {
                    node_id: 2,
                    details: "standby node \"node2\" (ID: 2) has reconnected after 7 seconds"
                        .into(),
                    after: 7 * S
                },
                ChildEvent::NewConnect {
                    node_id: 4,
                    details: "new standby \"node4\" (ID: 4) has connected".into()
                },
            ]
        );
        assert_eq!(c.counts(), (3, 3));
        assert_eq!(
            c.observe(10 * S, &[child(2, true)]),
            vec![],
            "unregistered children are forgotten"
        );
        assert_eq!(c.counts(), (1, 1));
    }

    #[test]
    fn disconnect_command_waits_for_the_timeout_and_runs_once() {
        let policy = DisconnectPolicy {
            connected_min_count: -1,
            disconnect_min_count: -1,
            include_witness: false,
            timeout: 30 * S,
        };
        let mut c = Children::new();
        c.observe(S, &[child(2, true), child(3, true)]);
        c.observe(2 * S, &[child(2, false), child(3, true)]);
        assert_eq!(
            c.disconnect_command_due(40 * S, &policy),
            None,
            "one child is still attached"
        );
        c.observe(10 * S, &[child(2, false), child(3, false)]);
        assert_eq!(
            c.disconnect_command_due(20 * S, &policy),
            None,
            "the last detach is only 10 s old"
        );
        assert_eq!(
            c.disconnect_command_due(41 * S, &policy).as_deref(),
            Some("0 of 2 child nodes attached (required: 1)")
        );
        assert_eq!(c.disconnect_command_due(50 * S, &policy), None, "runs once");
        c.observe(51 * S, &[child(2, true), child(3, false)]);
        assert_eq!(c.disconnect_command_due(52 * S, &policy), None);
        c.observe(53 * S, &[child(2, false), child(3, false)]);
        assert!(
            c.disconnect_command_due(90 * S, &policy).is_some(),
            "armed again after recovery"
        );
    }

    #[test]
    fn children_never_seen_attached_do_not_trigger_the_command() {
        let policy = DisconnectPolicy {
            connected_min_count: -1,
            disconnect_min_count: -1,
            include_witness: false,
            timeout: S,
        };
        let mut c = Children::new();
        c.observe(S, &[child(2, false)]);
        assert_eq!(c.disconnect_command_due(100 * S, &policy), None);
    }

    #[test]
    fn thresholds() {
        let mut c = Children::new();
        c.observe(S, &[child(2, true), child(3, true), child(4, true)]);
        c.observe(2 * S, &[child(2, false), child(3, true), child(4, true)]);
        let min_connected = DisconnectPolicy {
            connected_min_count: 3,
            disconnect_min_count: -1,
            include_witness: false,
            timeout: S,
        };
        assert!(c.disconnect_command_due(10 * S, &min_connected).is_some());
        let mut c = Children::new();
        c.observe(S, &[child(2, true), child(3, true), child(4, true)]);
        c.observe(2 * S, &[child(2, false), child(3, true), child(4, true)]);
        let min_disconnected = DisconnectPolicy {
            connected_min_count: -1,
            disconnect_min_count: 2,
            include_witness: false,
            timeout: S,
        };
        assert_eq!(
            c.disconnect_command_due(10 * S, &min_disconnected),
            None,
            "one detached, two required"
        );
        c.observe(3 * S, &[child(2, false), child(3, false), child(4, true)]);
        assert!(
            c.disconnect_command_due(10 * S, &min_disconnected)
                .is_some()
        );
    }
}
