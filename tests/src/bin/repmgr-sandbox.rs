//! The demo sandbox behind `cargo xtask demo`: a primary, two standbys and a witness on fixed
//! loopback ports, built with the product's own commands (`repmgr primary register`,
//! `repmgr standby clone`, `repmgr standby register`, `repmgr.register_witness()`); a crash of
//! the primary under a write load with a live timeline; the old primary started again, which
//! rejoins as a standby by itself (`repmgr.auto_rejoin`), with its own timeline. The cluster
//! stays up until `cargo xtask demo --stop`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use repmgr_tests::load::longest_gap;
use repmgr_tests::{Cluster, NodeOptions, cli, destroy};

const DIR: &str = "/var/tmp/repmgr-demo";
const FIRST_PORT: u16 = 55431;
const WAIT: Duration = Duration::from_secs(60);

/// Prints one progress line, stamped with the time since the start.
struct Clock(Instant);

impl Clock {
    fn say(&self, what: impl AsRef<str>) {
        println!(
            "[{:6.1}s] {}",
            self.0.elapsed().as_secs_f64(),
            what.as_ref()
        );
    }
}

fn repmgr(conf: &Path, args: &[&str]) -> std::process::Output {
    Command::new(cli())
        .arg("-f")
        .arg(conf)
        .args(args)
        .output()
        .expect("run repmgr")
}

fn show(conf: &Path) {
    let out = repmgr(conf, &["cluster", "show"]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("          {line}");
    }
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("          {line}");
    }
}

fn int(c: &Cluster, id: i32, sql: &str) -> Option<i64> {
    c.try_sql(id, sql)
        .ok()
        .and_then(|r| r.get(0, 0).and_then(|v| v.parse().ok()))
}

fn start() {
    let clock = Clock(Instant::now());
    // Running it again starts over from a clean sandbox.
    let mut c = Cluster::at(Path::new(DIR), Some(FIRST_PORT));
    let opts = || {
        NodeOptions::default()
            .conf("wal_log_hints = on")
            .conf("repmgr.auto_rejoin = on")
    };
    clock.say("create node1 (primary), clone node2 and node3 with `repmgr standby clone`, register each with the repmgr command line");
    let confs: Vec<PathBuf> = c.populate_with_cli(&[2, 3], opts);
    c.add_witness(4, NodeOptions::default());
    c.keep();
    clock.say("node4 registered as witness with SELECT repmgr.register_witness(...)");
    c.settled(1, &[2, 3, 4], WAIT);
    clock.say("every voter confirms node1's lease: repmgr cluster show");
    show(&confs[1]);

    let load = c.write_load(&[1, 2, 3]);
    std::thread::sleep(Duration::from_secs(2));
    c.caught_up(1, &[2, 3], WAIT);
    clock.say(format!(
        "a client inserts a row every 10 ms through a multi-host connection string ({} acknowledged so far)",
        load.acks().len()
    ));
    let lease = int(&c, 2, "SELECT current_setting('repmgr.lease_timeout')::int").unwrap_or(2100);
    let term = int(&c, 2, "SELECT term FROM repmgr.vote_info()").unwrap_or(0);
    c.crash(1);
    let crash = Instant::now();
    clock.say("kill -9 of node1 and all its processes");

    // The timeline, polled every 50 ms.
    let (mut detected, mut elected, mut promoted, mut following) = (None, None, None, None);
    let mut new = 0;
    while crash.elapsed() < WAIT && following.is_none() {
        let t = crash.elapsed();
        let silent = [2, 3].into_iter().any(|id| {
            int(&c, id, "SELECT silence_ms FROM repmgr.vote_info()").is_some_and(|s| s >= lease)
        });
        if detected.is_none() && silent {
            detected = Some(t);
            clock.say(format!(
                "  +{:.2} s  detected: a standby heard nothing from node1 for repmgr.lease_timeout ({lease} ms)",
                t.as_secs_f64()
            ));
        }
        if elected.is_none()
            && [2, 3].into_iter().any(|id| {
                int(&c, id, "SELECT term FROM repmgr.vote_info()").is_some_and(|v| v > term)
            })
        {
            elected = Some(t);
            clock.say(format!(
                "  +{:.2} s  election: a standby asked for votes in a new term",
                t.as_secs_f64()
            ));
        }
        if promoted.is_none()
            && let [id] = c.writable(&[2, 3])[..]
        {
            new = id;
            promoted = Some(t);
            clock.say(format!(
                "  +{:.2} s  promoted: node{id} is a writable primary",
                t.as_secs_f64()
            ));
        }
        if promoted.is_some() {
            let other = if new == 2 { 3 } else { 2 };
            if c.streams_from(new, other) {
                following = Some(t);
                clock.say(format!(
                    "  +{:.2} s  following: node{other} streams from node{new}",
                    t.as_secs_f64()
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if following.is_none() {
        clock.say("no failover within 60 s: see the logs in /var/tmp/repmgr-demo");
        return;
    }
    c.wait_for("writes on the new primary", WAIT, || {
        load.acks()
            .last()
            .is_some_and(|(_, a)| *a > crash)
            .then_some(())
    });
    let acks = load.stop();
    let gap = longest_gap(&acks, crash).map_or(Duration::ZERO, |(g, _)| g);
    let lost = c.missing_acks(new, "acked", &acks).len();
    clock.say(format!(
        "  the client saw no commit for {:.2} s; {lost} of {} acknowledged rows missing on node{new}",
        gap.as_secs_f64(),
        acks.len()
    ));
    clock.say("repmgr cluster show");
    show(&confs[new as usize]);

    // The old primary comes back, as after a reboot: it finds it was replaced and rejoins.
    c.start(1);
    let back = Instant::now();
    clock.say(format!(
        "node1 started again: it was replaced, so it rejoins node{new} by itself (repmgr.auto_rejoin)"
    ));
    let mut said = String::new();
    while back.elapsed() < WAIT && !c.streams_from(new, 1) {
        let state = c
            .try_sql(1, "SELECT coalesce(rejoin_state, CASE WHEN fenced THEN 'fenced' END) FROM repmgr.node_status()")
            .ok()
            .and_then(|r| r.get(0, 0).map(str::to_string))
            .unwrap_or_else(|| "stopped for its rewind".into());
        if state != said {
            clock.say(format!(
                "  +{:.2} s  node1: {state}",
                back.elapsed().as_secs_f64()
            ));
            said = state;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if c.streams_from(new, 1) {
        clock.say(format!(
            "  +{:.2} s  node1 streams from node{new}: full redundancy again, no command typed",
            back.elapsed().as_secs_f64()
        ));
    } else {
        clock.say(format!(
            "node1 did not rejoin within 60 s: see {DIR}/repmgr-rejoin-node1.log and the server logs"
        ));
        return;
    }
    // The command line records it once the node streams.
    let rejoin = c.wait_for("the node_rejoin event", WAIT, || {
        c.try_sql(new, "SELECT details FROM repmgr.events WHERE node_id = 1 AND event = 'node_rejoin' ORDER BY event_timestamp DESC LIMIT 1")
            .ok()
            .and_then(|r| r.get(0, 0).map(str::to_string))
    });
    clock.say(format!("  node_rejoin: {rejoin}"));
    clock.say("final state: repmgr cluster show");
    show(&confs[new as usize]);
    let port = c.node(new).port;
    println!(
        "\nThe sandbox is running (data, logs and repmgr.conf files in {DIR}). Connect with:\n  psql -h 127.0.0.1 -p {port} -U postgres repmgr        # the primary, node{new}\n  psql 'host=127.0.0.1,127.0.0.1,127.0.0.1 port={},{},{} user=postgres dbname=repmgr target_session_attrs=read-write'\n  repmgr -f {} cluster show\nStop it and remove everything with: cargo xtask demo --stop",
        FIRST_PORT,
        FIRST_PORT + 1,
        FIRST_PORT + 2,
        confs[new as usize].display()
    );
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("start") => start(),
        Some("stop") => destroy(Path::new(DIR)),
        _ => {
            eprintln!("usage: repmgr-sandbox start|stop");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
