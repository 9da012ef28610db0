//! Exit codes, numbered as repmgr numbers them so that scripts keep working, and the failure
//! every command returns: what went wrong, on which node, and what to do next.

use std::fmt;

/// Success.
pub const SUCCESS: i32 = 0;
/// Bad configuration, metadata or precondition (most refusals).
pub const ERR_BAD_CONFIG: i32 = 1;
/// rsync failed (a clone from Barman).
pub const ERR_BAD_RSYNC: i32 = 2;
/// A bad argument on the command line (clap's own errors use this code too).
pub const ERR_BAD_ARGUMENT: i32 = 3;
/// PostgreSQL could not be started or restarted.
pub const ERR_NO_RESTART: i32 = 4;
/// A local command (service command, pg_ctl, pg_controldata) failed.
pub const ERR_LOCAL_COMMAND: i32 = 5;
/// A database connection could not be made.
pub const ERR_DB_CONN: i32 = 6;
/// A statement failed on a node that answered.
pub const ERR_DB_QUERY: i32 = 7;
/// A promotion was refused or failed.
pub const ERR_PROMOTION_FAIL: i32 = 8;
/// ssh to another node failed.
pub const ERR_BAD_SSH: i32 = 12;
/// pg_basebackup failed.
pub const ERR_BAD_BASEBACKUP: i32 = 14;
/// A switchover was not carried out; the cluster is as it was.
pub const ERR_SWITCHOVER_FAIL: i32 = 18;
/// Barman failed or has nothing to clone from.
pub const ERR_BARMAN: i32 = 19;
/// A switchover promoted the standby, but the old primary did not rejoin.
pub const ERR_SWITCHOVER_INCOMPLETE: i32 = 22;
/// A follow failed.
pub const ERR_FOLLOW_FAIL: i32 = 23;
/// A rejoin failed.
pub const ERR_REJOIN_FAIL: i32 = 24;
/// The command ran and found problems (warnings in `cluster show`, `node status`, `node check`).
pub const ERR_NODE_STATUS: i32 = 25;
/// Pausing or unpausing failed on at least one node.
pub const ERR_REPMGRD_PAUSE: i32 = 26;

/// The documented table, printed by `--help`.
pub const TABLE: &str = "Exit codes:
   0  success
   1  bad configuration, catalog or precondition
   2  rsync failed (standby clone from Barman)
   3  bad argument
   4  PostgreSQL could not be started
   5  a local command failed
   6  could not connect to a node
   7  a statement failed on a node
   8  promotion refused or failed
  12  ssh to another node failed
  14  pg_basebackup failed
  18  switchover not carried out (the cluster is unchanged)
  19  Barman failed, or has no backup to clone from
  22  switchover incomplete (promoted, the old primary did not rejoin)
  23  follow failed
  24  rejoin failed
  25  problems found (cluster show, node status, node check)
  26  pause/unpause failed on a node
  node check with a single check option exits 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.";

/// A command's failure.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: i32,
    pub message: String,
    pub hint: Option<String>,
}

pub type Result<T> = std::result::Result<T, Failure>;

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            hint: None,
        }
    }

    /// A refusal or bad configuration (exit 1).
    pub fn config(message: impl Into<String>) -> Failure {
        Failure::new(ERR_BAD_CONFIG, message)
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }

    /// The same failure with another exit code.
    pub fn code(mut self, code: i32) -> Failure {
        self.code = code;
        self
    }

    /// Prints the failure to stderr as `ERROR:` and `HINT:` lines.
    pub fn report(&self) {
        self.print("ERROR: ");
    }

    /// Prints the failure to stderr as a `WARNING:` introduced by `context`, and its `HINT:`,
    /// for a command that goes on without what failed.
    pub fn warn(&self, context: &str) {
        self.print(&format!("WARNING: {context}: "));
    }

    fn print(&self, lead: &str) {
        eprintln!(
            "{lead}{}",
            repmgr_core::conninfo::mask_in_text(&self.message)
        );
        if let Some(h) = &self.hint {
            eprintln!("HINT: {}", repmgr_core::conninfo::mask_in_text(h));
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    /// The README's table is the one `--help` prints, line for line.
    #[test]
    fn the_readme_documents_these_codes() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("### Exit codes")
            .expect("README has an Exit codes section");
        let section = &readme[start..];
        for line in super::TABLE.lines().skip(1) {
            assert!(
                section.lines().any(|l| l == line),
                "README's exit code table lacks: {line:?}"
            );
        }
    }
}
