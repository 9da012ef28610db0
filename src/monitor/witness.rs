//! A witness's round: watch the primary (so the witness can vote on its fate) and keep a copy
//! of the primary's node list.

use std::time::Duration;

use pgrx::prelude::*;
use repmgr_core::event;
use repmgr_core::node::NodeType;

use super::standby::upstream_of;
use super::{Monitor, Snapshot, Stop, flush_to};
use crate::catalog::{self, NodeRecord};
use crate::db::Local;
use crate::db::in_transaction;
use crate::error::Result;
use crate::events::Event;

impl Monitor {
    pub(super) fn witness_round(
        &mut self,
        now: Duration,
        snap: &Snapshot,
        me: &NodeRecord,
    ) -> std::result::Result<Duration, Stop> {
        // The primary the failover protocol knows (a newer one after a failover), else the
        // registered upstream.
        let Some(primary) = self
            .failover
            .current_primary()
            .or_else(|| upstream_of(me, snap).cloned())
        else {
            let me = self.me();
            return Ok(self.wait_for(format!("witness {me} has no registered primary to monitor")));
        };
        let quiet = self.failover.timing().heartbeat * 2 + Duration::from_millis(200);
        let observed = self.failover.silence().map(|s| s < quiet);
        if self.watch_upstream(now, &primary, observed) {
            if me.upstream_node_id != Some(primary.node_id) {
                self.witness_follows(me, &primary);
            }
            if now >= self.next_witness_sync {
                if let Err(f) = self.copy_nodes(snap, &primary) {
                    self.peers.forget(primary.node_id);
                    log!(
                        "repmgr: witness could not copy the node list: {}",
                        crate::error::mask_text(&f.message)
                    );
                }
                self.next_witness_sync = now + self.settings.monitor.witness_sync_interval;
            }
            flush_to(&mut self.outbox, &self.settings, &mut self.peers, &primary);
        }
        self.degraded_check(now)?;
        Ok(self.until_next_check())
    }

    /// Copies the node list from the primary the failover protocol knows, for a witness whose
    /// own copy no longer lists it, every `repmgr.witness_sync_interval`.
    pub(super) fn resync_witness(&mut self, now: Duration, snap: &Snapshot) {
        if now < self.next_witness_sync {
            return;
        }
        self.next_witness_sync = now + self.settings.monitor.witness_sync_interval;
        let Some(primary) = self.failover.current_primary() else {
            return;
        };
        if let Err(f) = self.copy_nodes(snap, &primary) {
            self.peers.forget(primary.node_id);
            log!(
                "repmgr: witness could not copy the node list: {}",
                crate::error::mask_text(&f.message)
            );
        }
    }

    /// Records on the new primary that this witness now follows it.
    fn witness_follows(&mut self, me: &NodeRecord, primary: &NodeRecord) {
        let done = self.peers.get(primary, &self.settings).and_then(|p| {
            p.run(
                "UPDATE repmgr.nodes SET upstream_node_id = $2::int WHERE node_id = $1::int",
                &[
                    Some(&me.node_id.to_string()),
                    Some(&primary.node_id.to_string()),
                ],
            )
        });
        if done.is_ok() {
            let details = format!(
                "witness {} now follows primary {}",
                me.describe(),
                primary.describe()
            );
            log!("repmgr: {details}");
            self.queue(
                Event::new(me.node_id, event::REPMGRD_FAILOVER_FOLLOW, details).about(
                    primary.node_id,
                    &primary.node_name,
                    &primary.conninfo,
                ),
            );
            self.next_witness_sync = Duration::ZERO;
        }
    }

    /// Copies the node list from whichever registered node is running as primary (normally
    /// the one we watch), writing locally only when something changed.
    fn copy_nodes(&mut self, snap: &Snapshot, watched: &NodeRecord) -> Result<()> {
        let candidates = std::iter::once(watched).chain(snap.nodes.iter().filter(|n| {
            n.active && n.node_type != NodeType::Witness && n.node_id != watched.node_id
        }));
        for node in candidates {
            let Ok(peer) = self.peers.get(node, &self.settings) else {
                continue;
            };
            if catalog::server_facts(peer)?.in_recovery {
                continue;
            }
            let theirs = catalog::failover_catalog(peer)?;
            if theirs != snap.catalog {
                in_transaction(|| -> Result<()> {
                    catalog::replace_nodes(&mut Local, &theirs.nodes)?;
                    catalog::copy_membership(peer, &mut Local)
                })?;
                log!(
                    "repmgr: witness copied {} node records (node list version {}) from {}",
                    theirs.nodes.len(),
                    theirs.version,
                    node.describe()
                );
            }
            return Ok(());
        }
        Ok(())
    }
}
