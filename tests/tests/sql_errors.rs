//! NULL where a SQL function needs a value: a clear SQLSTATE 22004 naming the parameter,
//! and never a Rust backtrace or a build path, even on a server started with
//! `RUST_BACKTRACE=1` (the only test in this binary, since it sets the variable for the
//! servers it starts).

use std::time::Duration;

use repmgr_tests::{Cluster, NodeOptions};

#[test]
fn null_arguments_name_the_parameter_and_never_show_a_backtrace() {
    // SAFETY: the only test of this binary sets it before any server or thread starts.
    unsafe { std::env::set_var("RUST_BACKTRACE", "1") };
    let mut c = Cluster::new("null-args");
    c.populate(&[2], |_| NodeOptions::default());
    c.settled(1, &[2], Duration::from_secs(30));
    let cases = [
        (1, "SELECT repmgr.register_primary(NULL)", "force"),
        (2, "SELECT repmgr.register_standby(NULL, NULL)", "force"),
        (
            1,
            "SELECT repmgr.register_witness(NULL)",
            "primary_conninfo",
        ),
        (1, "SELECT repmgr.unregister_node(1, NULL)", "force"),
        (
            1,
            "SELECT * FROM repmgr.lease_poll(NULL, 1, NULL, NULL)",
            "voter_id",
        ),
        (
            1,
            "SELECT * FROM repmgr.lease_poll(2, NULL, NULL, NULL)",
            "voter_term",
        ),
        (2, "SELECT * FROM repmgr.request_vote(NULL, 1, 1)", "term"),
        (
            2,
            "SELECT * FROM repmgr.request_vote(2, NULL, 1)",
            "candidate",
        ),
        (2, "SELECT * FROM repmgr.request_vote(2, 1, NULL)", "lsn"),
        (2, "SELECT repmgr.promote(NULL)", "force"),
        (2, "SELECT repmgr.promote(false, NULL)", "allow_data_loss"),
        (2, "SELECT repmgr.follow(NULL)", "node_id"),
        (1, "SELECT repmgr.pause(NULL)", "pause"),
    ];
    for (node, sql, parameter) in cases {
        let e = c.try_sql(node, sql).expect_err(sql);
        assert_eq!(e.sqlstate.as_deref(), Some("22004"), "{sql}: {e:?}");
        assert!(
            e.message.contains(&format!("{parameter} must not be NULL")),
            "{sql}: {}",
            e.message
        );
        let all = format!("{} {:?} {:?}", e.message, e.detail, e.hint);
        for leak in ["backtrace", ".rs:", "/rustc/", "cargo/registry"] {
            assert!(!all.contains(leak), "{sql} shows {leak:?}: {all}");
        }
    }
    // Functions that are STRICT, as repmgr's are, return NULL.
    for sql in [
        "SELECT repmgr.notify_follow_primary(NULL)",
        "SELECT repmgr.mask_conninfo(NULL)",
        "SELECT repmgr.primary_stopped(NULL)",
        "SELECT repmgr.set_upstream_node_id(NULL)",
    ] {
        c.sql(1, sql);
    }
    assert!(
        !c.log(1).contains("stack backtrace"),
        "the server log shows no Rust backtrace"
    );
}
