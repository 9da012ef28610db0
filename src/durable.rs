//! Keeping this node's failover state on disk (format: `repmgr_core::durable`).
//!
//! One small file in the data directory, replaced atomically (written aside, fsynced, renamed,
//! directory fsynced) before the node acts on what it records: a vote is never given twice in
//! a term, even across a crash. A copy brought by pg_basebackup or pg_rewind names another
//! node and is ignored.

use std::fs::{self, File};
use std::io::Write;

use pgrx::prelude::*;
use repmgr_core::durable::Saved;
use repmgr_core::lease::NodeId;
use repmgr_core::state::Disk;

/// Relative to the data directory, the working directory of every server process.
const FILE: &str = "repmgr_failover.state";
const TEMP: &str = "repmgr_failover.state.tmp";

/// This node's saved state, if the file exists and is this node's.
pub fn load(node_id: NodeId) -> Option<Saved> {
    let saved = Saved::decode(&fs::read_to_string(FILE).ok()?)?;
    if saved.node_id != node_id {
        log!(
            "repmgr: the failover state file {FILE} names node {} (a copy pg_basebackup or pg_rewind brought from it); node {node_id} starts with no saved term or vote",
            saved.node_id
        );
        return None;
    }
    Some(saved)
}

/// Saves durably. The caller must not act on the state until this returns `Ok`.
pub fn save(saved: &Saved) -> std::io::Result<()> {
    let mut f = File::create(TEMP)?;
    f.write_all(saved.encode().as_bytes())?;
    f.sync_all()?;
    drop(f);
    fs::rename(TEMP, FILE)?;
    File::open(".")?.sync_all()
}

/// The state file as the failover state machine's [`Disk`]: a failed save is logged (the
/// state machine then puts the change back and does not act on it).
pub struct StateFile;

impl Disk for StateFile {
    fn save(&mut self, saved: &Saved) -> bool {
        match save(saved) {
            Ok(()) => true,
            Err(e) => {
                warning!("repmgr: could not save the failover state in the data directory: {e}");
                false
            }
        }
    }
}
