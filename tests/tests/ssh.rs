//! The command line's paths that run `repmgr` on another host, over real ssh: each node in a
//! network namespace of its own with Debian's sshd on its address, and the command line run
//! on another node's host (its namespace), where the old primary's address is not local. A
//! switchover stops the old primary, checks its shutdown and rejoins it (`node rejoin`) there
//! over ssh; `cluster crosscheck` gets the other nodes' views by running `cluster matrix` there;
//! a refused or silent sshd is reported within a bounded time, before anything changed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use repmgr_tests::ssh::Sshd;
use repmgr_tests::{Cluster, NodeOptions, cli};

const WAIT: Duration = Duration::from_secs(60);

/// `repmgr -v <args>` run as root in node `id`'s namespace (its host): exit code, standard
/// output and error, and how long it took.
fn repmgr_on(c: &Cluster, id: i32, args: &[&str]) -> (i32, String, String, Duration) {
    let ns = c.node(id).netns.clone().expect("a namespaced node");
    let t0 = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(cli())
        .arg("-v")
        .args(args)
        .output()
        .expect("run repmgr in a namespace");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t0.elapsed(),
    )
}

fn crosscheck_from(c: &Cluster, id: i32, conf: &Path) -> (i32, String, String, Duration) {
    repmgr_on(
        c,
        id,
        &["-f", &conf.to_string_lossy(), "cluster", "crosscheck"],
    )
}

fn switchover_from(c: &Cluster, id: i32, conf: &Path) -> (i32, String, String, Duration) {
    repmgr_on(
        c,
        id,
        &[
            "-f",
            &conf.to_string_lossy(),
            "standby",
            "switchover",
            "--siblings-follow",
        ],
    )
}

#[test]
fn a_switchover_and_a_crosscheck_run_over_ssh_and_a_broken_ssh_changes_nothing() {
    let mut c = Cluster::with_network("ssh");
    c.populate(&[2, 3], |_| NodeOptions::default());
    c.settled(1, &[2, 3], WAIT);
    let mut sshd = Sshd::new(&c.dir.join("ssh"));
    for id in [1, 2, 3] {
        sshd.start(c.network(), id);
    }
    // Each node's repmgr.conf, registered as its configuration file: what a remote run reads.
    let bindir = cli().parent().expect("the CLI's directory").to_path_buf();
    let options = format!("ssh_options = '{}'", sshd.options(3));
    let remote_bin = format!("repmgr_bindir = '{}'", bindir.display());
    let confs: Vec<PathBuf> = [1, 2, 3]
        .iter()
        .map(|id| {
            let n = c.node(*id).clone();
            c.repmgr_conf(&n, &[&options, &remote_bin])
        })
        .collect();
    for (id, conf) in [1, 2, 3].iter().zip(&confs) {
        c.sql(
            1,
            &format!(
                "UPDATE repmgr.nodes SET config_file = '{}' WHERE node_id = {id}",
                conf.display()
            ),
        );
    }
    c.settled(1, &[2, 3], WAIT);

    // From node 2's host: node 1 is stopped, checked and rejoined over ssh.
    let (code, out, err, _) = switchover_from(&c, 2, &confs[1]);
    assert_eq!(code, 0, "switchover from node 2's host: {out}{err}");
    let ssh_to_1 = format!("\"{}\"", c.network().address(1));
    assert!(
        err.contains("\"ssh\"") && err.contains(&ssh_to_1),
        "the old primary's steps did not go through ssh:\n{err}"
    );
    assert_eq!(c.one_writable(&[1, 2, 3], WAIT), 2);
    c.wait_for("nodes 1 and 3 streaming from node 2", WAIT, || {
        (c.streams_from(2, 1) && c.streams_from(2, 3)).then_some(())
    });

    // cluster crosscheck from node 3's host: nodes 1 and 2 give their views over ssh (their
    // own `cluster matrix`), node 3 its own; every pair is reachable.
    let (code, out, err, _) = crosscheck_from(&c, 3, &confs[2]);
    assert_eq!(code, 0, "crosscheck from node 3's host: {out}{err}");
    for id in [1, 2] {
        let to = format!("\"{}\"", c.network().address(id));
        assert!(
            err.contains("\"ssh\"")
                && err.contains(&to)
                && err.contains("cluster")
                && err.contains("matrix"),
            "node {id}'s view did not come over ssh:\n{err}"
        );
    }
    let rows: Vec<&str> = out.lines().filter(|l| l.contains(" | ")).skip(1).collect();
    assert_eq!(rows.len(), 3, "crosscheck rows:\n{out}");
    for r in &rows {
        assert_eq!(r.matches('*').count(), 3, "crosscheck row {r:?}:\n{out}");
    }

    // A refused ssh (no sshd on node 2's host): the switchover from node 1's host stops at
    // its checks, names the host, and leaves the cluster as it was.
    sshd.stop(2);
    let (code, _, err, took) = switchover_from(&c, 1, &confs[0]);
    assert_eq!(code, 18, "refused ssh: {err}");
    let host2 = c.network().address(2);
    assert!(
        err.contains("switchover not carried out (nothing changed)")
            && err.contains(&format!("ssh to {host2} for repmgr --version for node 2"))
            && err.contains("did not answer within ConnectTimeout")
            && err.contains("See why with: ssh -i "),
        "refused ssh: {err}"
    );
    assert!(took < Duration::from_secs(15), "refused ssh took {took:?}");
    assert_eq!(c.writable(&[1, 2, 3]), [2]);
    // crosscheck leaves node 2's view out, says so, and exits 12 (every pair is still known
    // reachable from the other two views).
    let (code, out, err, took) = crosscheck_from(&c, 1, &confs[0]);
    assert_eq!(code, 12, "crosscheck, refused ssh: {out}{err}");
    assert!(
        err.contains("WARNING: the view of node 2")
            && err.contains(&format!(
                "ssh to {host2} for repmgr cluster matrix --csv for node 2"
            )),
        "crosscheck, refused ssh: {err}"
    );
    assert!(
        took < Duration::from_secs(15),
        "crosscheck, refused ssh took {took:?}"
    );

    // A silent one (sshd frozen: TCP connects, no greeting): ssh's ConnectTimeout (3 s here)
    // bounds it.
    sshd.start(c.network(), 2);
    let frozen = sshd.pid(2);
    unsafe { libc::kill(frozen, libc::SIGSTOP) };
    let (code, _, err, took) = switchover_from(&c, 1, &confs[0]);
    let (x_code, _, x_err, x_took) = crosscheck_from(&c, 1, &confs[0]);
    unsafe { libc::kill(frozen, libc::SIGCONT) };
    assert_eq!(x_code, 12, "crosscheck, silent ssh: {x_err}");
    assert!(
        x_took >= Duration::from_secs(3) && x_took < Duration::from_secs(15),
        "crosscheck, silent ssh took {x_took:?}"
    );
    assert_eq!(code, 18, "silent ssh: {err}");
    assert!(
        err.contains(&format!("ssh to {host2}")),
        "silent ssh: {err}"
    );
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(15),
        "silent ssh took {took:?}"
    );
    assert_eq!(c.writable(&[1, 2, 3]), [2]);
    // Nothing was paused: automatic failover is still on everywhere.
    for id in [1, 2, 3] {
        assert_eq!(
            c.value(id, "SELECT repmgr.repmgrd_is_paused()::text")
                .as_deref(),
            Some("false"),
            "node {id}"
        );
    }
}
