//! A primary's round: watch the nodes replicating from it, run the disconnect command when
//! too few remain, and keep `repmgr.monitoring_history` to its configured age.

use std::time::Duration;

use pgrx::prelude::*;
use repmgr_core::children::Child;
use repmgr_core::event;
use repmgr_core::node::NodeType;
use repmgr_core::template;

use super::{Monitor, Snapshot, flush, flush_to};
use crate::catalog::NodeRecord;
use crate::db::write_transaction;
use crate::db::{Db, Local};
use crate::events::Event;
use crate::shmem;

/// How often old monitoring history is trimmed, and how much per statement, so that the
/// deletes stay small.
const TRIM_EVERY: Duration = Duration::from_secs(60);
/// How often a fenced primary with events to record looks for the primary that replaced it.
const FENCED_OUTBOX_EVERY: Duration = Duration::from_secs(5);
const TRIM_BATCH: i64 = 1000;
const TRIM_BATCHES: usize = 10;

/// How long the worker waits for child_nodes_disconnect_command before moving on.
const DISCONNECT_COMMAND_WAIT: Duration = Duration::from_secs(10);

impl Monitor {
    pub(super) fn primary_round(
        &mut self,
        now: Duration,
        snap: &Snapshot,
        me: &NodeRecord,
    ) -> Duration {
        if now >= self.next_child_check {
            self.check_children(now, snap, me);
            self.next_child_check = now + self.settings.monitor.child_check_interval;
        }
        if now >= self.next_housekeeping {
            self.trim_history();
            self.next_housekeeping = now + TRIM_EVERY;
        }
        if let Some(ev) = self.quorum.round(now, &self.settings, me, &snap.nodes) {
            self.queue(ev);
        }
        if let Some(ev) = self
            .slots
            .primary_round(now, &self.settings, me, &snap.nodes)
        {
            self.queue(ev);
        }
        // A fenced primary cannot write its own catalog: its events go to the primary that
        // replaced it, if one answers, or wait.
        if crate::fence::refusal().is_none() {
            flush(&mut self.outbox, &self.settings, &mut Local);
        } else if !self.outbox.is_empty() && now >= self.next_outbox_try {
            self.next_outbox_try = now + FENCED_OUTBOX_EVERY;
            if let Some(p) = self.peers.writable_primary(&self.settings, &snap.nodes) {
                flush_to(
                    &mut self.outbox,
                    &self.settings,
                    &mut self.peers,
                    &p.clone(),
                );
            }
        }
        self.settings.monitor.retry.monitor_interval
    }

    /// Whether a witness follows this primary: it is reachable and its worker's upstream is us.
    fn witness_attached(&mut self, witness: &NodeRecord, me: &NodeRecord) -> bool {
        let answer = self
            .peers
            .get(witness, &self.settings)
            .and_then(|p| p.run("SELECT repmgr.get_upstream_node_id()", &[]));
        match answer {
            Ok(rows) => rows.get(0, 0) == Some(me.node_id.to_string().as_str()),
            Err(_) => {
                self.peers.forget(witness.node_id);
                false
            }
        }
    }

    fn check_children(&mut self, now: Duration, snap: &Snapshot, me: &NodeRecord) {
        let registered: Vec<NodeRecord> = snap
            .nodes
            .iter()
            .filter(|n| n.upstream_node_id == Some(me.node_id) && n.node_id != me.node_id)
            .cloned()
            .collect();
        let children: Vec<Child> = registered
            .iter()
            .map(|n| Child {
                node_id: n.node_id,
                name: n.node_name.clone(),
                kind: n.node_type.to_string(),
                attached: match n.node_type {
                    NodeType::Standby => snap.streaming.contains(&n.node_name),
                    NodeType::Witness => self.witness_attached(n, me),
                    NodeType::Primary => false,
                },
            })
            .collect();
        for ev in self.children.observe(now, &children) {
            let (name, details) = match ev {
                repmgr_core::children::ChildEvent::Disconnect { details, .. } => {
                    (event::CHILD_NODE_DISCONNECT, details)
                }
                repmgr_core::children::ChildEvent::Reconnect { details, .. } => {
                    (event::CHILD_NODE_RECONNECT, details)
                }
                repmgr_core::children::ChildEvent::NewConnect { details, .. } => {
                    (event::CHILD_NODE_NEW_CONNECT, details)
                }
            };
            log!("repmgr: {details}");
            self.queue(Event::new(me.node_id, name, details));
        }
        let paused = shmem::read().is_some_and(|s| s.paused);
        let Some(command) = self.settings.monitor.disconnect_command.clone() else {
            return;
        };
        let Some(reason) = self
            .children
            .disconnect_command_due(now, &self.settings.monitor.disconnect)
        else {
            return;
        };
        if paused {
            log!(
                "repmgr: {reason}, but this node is paused: child_nodes_disconnect_command not run"
            );
            return;
        }
        let line = template::render(&command, &[('p', &me.node_id.to_string())]);
        warning!("repmgr: {reason}; running child_nodes_disconnect_command");
        let status = crate::command::run(
            event::CHILD_NODES_DISCONNECT_COMMAND,
            &line,
            DISCONNECT_COMMAND_WAIT,
        );
        let mut ev = Event::new(
            me.node_id,
            event::CHILD_NODES_DISCONNECT_COMMAND,
            match status {
                Some(s) => format!("{reason}; child_nodes_disconnect_command ran ({s})"),
                None => format!(
                    "{reason}; child_nodes_disconnect_command still running after {} s",
                    DISCONNECT_COMMAND_WAIT.as_secs()
                ),
            },
        );
        ev.successful = status.is_some_and(|s| s.success());
        self.queue(ev);
    }

    /// Deletes monitoring history older than `repmgr.monitoring_history_keep`, a batch at a time.
    fn trim_history(&mut self) {
        let Some(keep) = self.settings.monitor.history_keep else {
            return;
        };
        let keep = keep.as_secs().to_string();
        for _ in 0..TRIM_BATCHES {
            let deleted = write_transaction(|| {
                Local.write(
                    "WITH gone AS (
                       DELETE FROM repmgr.monitoring_history WHERE ctid IN (
                         SELECT ctid FROM repmgr.monitoring_history
                          WHERE last_monitor_time < pg_catalog.now() - $1::bigint * interval '1 second' LIMIT $2::int)
                       RETURNING 1)
                     SELECT count(*) FROM gone",
                    &[Some(&keep), Some(&TRIM_BATCH.to_string())],
                )
            });
            let n: i64 = deleted
                .ok()
                .and_then(|r| r.get(0, 0).and_then(|v| v.parse().ok()))
                .unwrap_or(0);
            if n < TRIM_BATCH {
                break;
            }
        }
    }
}
