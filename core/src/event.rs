//! The events written to `repmgr.events`: every name, who records it and what it means.
//!
//! The extension and the command line name events only through these constants, and the
//! README's events table is checked against [`ALL`], so the three cannot disagree. The names
//! are repmgr 5.x's where it has the same event, so that existing alerting keeps working.

pub const PRIMARY_REGISTER: &str = "primary_register";
pub const PRIMARY_UNREGISTER: &str = "primary_unregister";
pub const STANDBY_REGISTER: &str = "standby_register";
pub const STANDBY_UNREGISTER: &str = "standby_unregister";
pub const WITNESS_REGISTER: &str = "witness_register";
pub const WITNESS_UNREGISTER: &str = "witness_unregister";
pub const STANDBY_CLONE: &str = "standby_clone";
pub const STANDBY_PROMOTE: &str = "standby_promote";
pub const STANDBY_FOLLOW: &str = "standby_follow";
pub const STANDBY_SWITCHOVER: &str = "standby_switchover";
pub const NODE_REJOIN: &str = "node_rejoin";
pub const CLUSTER_CLEANUP: &str = "cluster_cleanup";
pub const REPMGRD_START: &str = "repmgrd_start";
pub const REPMGRD_RELOAD: &str = "repmgrd_reload";
pub const REPMGRD_SHUTDOWN: &str = "repmgrd_shutdown";
pub const REPMGRD_UPSTREAM_DISCONNECT: &str = "repmgrd_upstream_disconnect";
pub const REPMGRD_UPSTREAM_RECONNECT: &str = "repmgrd_upstream_reconnect";
pub const REPMGRD_FAILOVER_PROMOTE: &str = "repmgrd_failover_promote";
pub const REPMGRD_FAILOVER_FOLLOW: &str = "repmgrd_failover_follow";
pub const REPMGRD_FAILOVER_ABORT: &str = "repmgrd_failover_abort";
pub const REPMGRD_PROMOTE_ERROR: &str = "repmgrd_promote_error";
pub const REPMGRD_PRIMARY_FENCED: &str = "repmgrd_primary_fenced";
pub const REPMGRD_PRIMARY_UNFENCED: &str = "repmgrd_primary_unfenced";
pub const STANDBY_DISCONNECT_MANUAL: &str = "standby_disconnect_manual";
pub const CHILD_NODE_DISCONNECT: &str = "child_node_disconnect";
pub const CHILD_NODE_RECONNECT: &str = "child_node_reconnect";
pub const CHILD_NODE_NEW_CONNECT: &str = "child_node_new_connect";
pub const CHILD_NODES_DISCONNECT_COMMAND: &str = "child_nodes_disconnect_command";
pub const SYNCHRONOUS_STANDBYS_CHANGED: &str = "synchronous_standbys_changed";
pub const LOGICAL_SLOTS_AT_RISK: &str = "logical_slots_at_risk";

/// Every event: name, what records it, and when.
pub const ALL: &[(&str, &str, &str)] = &[
    (PRIMARY_REGISTER, "SQL, CLI", "a primary was registered"),
    (
        PRIMARY_UNREGISTER,
        "SQL, CLI",
        "a primary's record was removed",
    ),
    (
        STANDBY_REGISTER,
        "SQL, CLI",
        "a standby was registered (or re-registered with force)",
    ),
    (
        STANDBY_UNREGISTER,
        "SQL, CLI",
        "a standby's record was removed",
    ),
    (WITNESS_REGISTER, "SQL, CLI", "a witness was registered"),
    (
        WITNESS_UNREGISTER,
        "SQL, CLI",
        "a witness's record was removed",
    ),
    (
        STANDBY_CLONE,
        "CLI",
        "`standby clone` copied a data directory from its upstream",
    ),
    (
        STANDBY_PROMOTE,
        "worker",
        "a manual promotion (`repmgr.promote()`, `standby promote`, a switchover) succeeded or failed",
    ),
    (
        STANDBY_FOLLOW,
        "worker",
        "a standby now streams from another node: manual follow or a primary's notification",
    ),
    (
        STANDBY_SWITCHOVER,
        "CLI",
        "a switchover finished: roles swapped",
    ),
    (
        NODE_REJOIN,
        "CLI",
        "a stopped or diverged node rejoined as a standby (rewound or not), or failed to",
    ),
    (
        CLUSTER_CLEANUP,
        "CLI",
        "`cluster cleanup` deleted old monitoring history",
    ),
    (
        REPMGRD_START,
        "worker",
        "the monitoring worker started on a registered node",
    ),
    (
        REPMGRD_RELOAD,
        "worker",
        "the worker reloaded its settings (SIGHUP), listing what changed; also when it takes up a new role",
    ),
    (
        REPMGRD_SHUTDOWN,
        "worker",
        "the worker stopped (server shutdown, `repmgr.degraded_monitoring_timeout`)",
    ),
    (
        REPMGRD_UPSTREAM_DISCONNECT,
        "worker",
        "a standby declared its upstream down after its reconnect attempts, or stopped streaming from a primary that was replaced",
    ),
    (
        REPMGRD_UPSTREAM_RECONNECT,
        "worker",
        "a standby's upstream answers again",
    ),
    (
        REPMGRD_FAILOVER_PROMOTE,
        "worker",
        "a standby won an election and was promoted",
    ),
    (
        REPMGRD_FAILOVER_FOLLOW,
        "worker",
        "after a failover, a standby (or the witness) follows the new primary",
    ),
    (
        REPMGRD_FAILOVER_ABORT,
        "worker",
        "a standby that had lost the primary hears it again before anyone was promoted: no failover",
    ),
    (
        REPMGRD_PROMOTE_ERROR,
        "worker",
        "an election winner could not promote (pg_promote() or the synchronous quorum failed)",
    ),
    (
        REPMGRD_PRIMARY_FENCED,
        "worker",
        "a primary lost its lease and refuses commits",
    ),
    (
        REPMGRD_PRIMARY_UNFENCED,
        "worker",
        "a fenced primary got its lease back (it was never replaced)",
    ),
    (
        STANDBY_DISCONNECT_MANUAL,
        "worker",
        "a standby lost the primary and does not stand for election: `repmgr.failover` is manual",
    ),
    (
        CHILD_NODE_DISCONNECT,
        "worker",
        "a registered child of the primary stopped streaming",
    ),
    (CHILD_NODE_RECONNECT, "worker", "a child streams again"),
    (
        CHILD_NODE_NEW_CONNECT,
        "worker",
        "a child streams for the first time",
    ),
    (
        CHILD_NODES_DISCONNECT_COMMAND,
        "worker",
        "`repmgr.child_nodes_disconnect_command` ran, with its outcome",
    ),
    (
        SYNCHRONOUS_STANDBYS_CHANGED,
        "worker",
        "the primary changed `synchronous_standby_names` and the published quorum",
    ),
    (
        LOGICAL_SLOTS_AT_RISK,
        "worker",
        "before PostgreSQL 17: the primary has logical replication slots, which a failover loses (names them)",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut names: Vec<&str> = ALL.iter().map(|e| e.0).collect();
        assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "an event is listed twice");
    }
}
