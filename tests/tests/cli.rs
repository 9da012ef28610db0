//! The `repmgr` command line against real servers.

use std::process::Command;

use repmgr_tests::{Cluster, NodeOptions, cli};

fn repmgr(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(cli())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", cli().display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cluster_show_reports_live_status() {
    let mut c = Cluster::new("cli-show");
    c.init_primary(
        1,
        NodeOptions {
            conninfo_extra: "password=hunter2".into(),
            ..Default::default()
        },
    );
    let port = c.node(1).port.to_string();
    c.sql(1, "SELECT repmgr.register_primary()");
    c.clone_standby(2, 1, NodeOptions::default());
    c.sql(2, "SELECT repmgr.register_standby()");

    let (code, out, err) = repmgr(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "postgres",
        "cluster",
        "show",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with(" ID | Name  | Role    | Status    | Upstream | Location | Priority | Timeline | Connection string"), "{out}");
    assert!(
        lines[2].starts_with(
            " 1  | node1 | primary | * running |          | default  | 100      | 1        |"
        ),
        "{out}"
    );
    assert!(
        lines[3].starts_with(
            " 2  | node2 | standby |   running | node1    | default  | 100      | 1        |"
        ),
        "{out}"
    );
    assert!(
        out.contains("password=********") && !out.contains("hunter2"),
        "{out}"
    );

    let (code, out, _) = repmgr(&["-d", &c.node(1).conninfo(), "--csv", "cluster", "show"]);
    assert_eq!((code, out.as_str()), (0, "1,0,0\n2,0,1\n"));

    c.stop(2);
    let (code, out, err) = repmgr(&["-d", &c.node(1).conninfo(), "cluster", "show"]);
    assert_eq!(code, 25, "{out}{err}");
    assert!(out.contains("? unreachable"), "{out}");
    assert!(
        err.contains(
            "node \"node2\" (ID: 2) is registered as an active standby but is unreachable"
        ),
        "{err}"
    );

    let (code, _, err) = repmgr(&["-h", "127.0.0.1", "-p", "1", "cluster", "show"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("could not connect"), "{err}");
}
