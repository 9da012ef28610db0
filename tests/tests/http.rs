//! The health endpoints and metrics on real clusters: answers by role, through a failover,
//! and under clients that misbehave. Every wait has a deadline; clusters are torn down.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use repmgr_tests::http::{self, parse_metrics, status, value};
use repmgr_tests::{Cluster, NodeOptions, free_port};

const WAIT: Duration = Duration::from_secs(30);

/// A registered cluster, primary 1 and standbys 2 and 3, each serving HTTP on its own port.
fn cluster(name: &str) -> (Cluster, HashMap<i32, u16>) {
    let ports: HashMap<i32, u16> = (1..=3).map(|id| (id, free_port())).collect();
    let mut c = Cluster::new(name);
    c.populate(&[2, 3], |id| {
        NodeOptions::default()
            .conf("repmgr.http_listen_address = '127.0.0.1'")
            .conf(format!("repmgr.http_port = {}", ports[&id]))
    });
    c.settled(1, &[2, 3], WAIT);
    for id in 1..=3 {
        c.wait_for("the endpoints to answer", WAIT, || {
            (status(ports[&id], "/health") == 200).then_some(())
        });
    }
    (c, ports)
}

fn json(port: u16, path: &str) -> serde_json::Value {
    let a = http::get(port, path).expect("an answer");
    assert_eq!(
        a.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{e}: {}", a.body))
}

#[test]
fn endpoints_answer_by_role_and_follow_a_failover() {
    let (c, ports) = cluster("http-roles");
    let (p1, p2) = (ports[&1], ports[&2]);
    c.wait_for("both standbys in the primary's view", WAIT, || {
        (json(p1, "/status")["standbys"].as_array()?.len() == 2).then_some(())
    });

    // The primary.
    assert_eq!(status(p1, "/primary"), 200);
    assert_eq!(status(p1, "/read-only"), 200);
    assert_eq!(status(p1, "/health"), 200);
    assert_eq!(status(p1, "/replica"), 503);
    let s = json(p1, "/status");
    assert_eq!(s["role"], "primary");
    assert_eq!(s["node_id"], 1);
    assert_eq!(s["fenced"], false);
    assert_eq!(s["paused"], false);
    assert!(s["term"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["current_lsn"].is_string(), "{s}");
    // HEAD: the same status and headers, no body.
    let head = http::request(p1, "HEAD", "/primary").unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(head.headers["content-length"].parse::<usize>().unwrap() > 0);
    assert_eq!(http::request(p1, "POST", "/primary").unwrap().status, 405);
    assert_eq!(status(p1, "/nothing-here"), 404);

    // A standby, with lag limits in bytes and time.
    c.caught_up(1, &[2, 3], WAIT);
    assert_eq!(status(p2, "/primary"), 503);
    assert_eq!(status(p2, "/read-only"), 200);
    c.wait_for("the standby's view to catch up", WAIT, || {
        (status(p2, "/replica?lag=16MB") == 200 && status(p2, "/replica?lag=10s") == 200)
            .then_some(())
    });
    assert_eq!(status(p2, "/replica?lag=sideways"), 400);
    let s = json(p2, "/status");
    assert_eq!(s["role"], "standby");
    assert_eq!(s["upstream_node_id"], 1);
    assert_eq!(s["wal_receiver"], "streaming");

    // Metrics, checked by a parser.
    let m = parse_metrics(&http::get(p1, "/metrics").unwrap().body).unwrap();
    assert_eq!(value(&m, "repmgr_role", &[("role", "primary")]), Some(1.0));
    assert_eq!(value(&m, "repmgr_fenced", &[]), Some(0.0));
    assert_eq!(value(&m, "repmgr_failovers_total", &[]), Some(0.0));
    for standby in ["node2", "node3"] {
        assert_eq!(
            value(&m, "repmgr_standby_streaming", &[("node_name", standby)]),
            Some(1.0),
            "{standby}"
        );
        assert!(value(&m, "repmgr_standby_lag_bytes", &[("node_name", standby)]).is_some());
    }
    assert!(value(&m, "repmgr_worker_loop_duration_seconds_count", &[]).unwrap() > 0.0);
    let m2 = parse_metrics(&http::get(p2, "/metrics").unwrap().body).unwrap();
    assert_eq!(value(&m2, "repmgr_role", &[("role", "standby")]), Some(1.0));
    assert!(value(&m2, "repmgr_replay_lsn_bytes", &[]).unwrap() > 0.0);
    assert!(value(&m2, "repmgr_upstream_last_seen_seconds", &[]).is_some());

    // Through a failover, no two nodes ever answer /primary with 200.
    let crash = Instant::now();
    c.kill9(1);
    let mut new = None;
    let mut samples = 0;
    while Instant::now() < crash + WAIT {
        let primaries: Vec<i32> = [2, 3]
            .into_iter()
            .filter(|id| status(ports[id], "/primary") == 200)
            .collect();
        assert!(
            primaries.len() <= 1,
            "two nodes answer /primary: {primaries:?}"
        );
        samples += 1;
        if let [id] = primaries[..] {
            new = Some(id);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let new = new.expect("a new primary answers /primary");
    println!(
        "/primary answered 200 on node {new} {:?} after the crash ({samples} samples)",
        crash.elapsed()
    );
    assert_eq!(c.writable(&[2, 3]), vec![new]);
    let other = if new == 2 { 3 } else { 2 };
    c.wait_for(
        "the other standby to report streaming from the new primary",
        WAIT,
        || {
            let s = json(ports[&other], "/status");
            (status(ports[&other], "/replica") == 200 && s["upstream_node_id"] == new).then_some(())
        },
    );
    assert_eq!(status(ports[&other], "/primary"), 503);
    let m = parse_metrics(&http::get(ports[&new], "/metrics").unwrap().body).unwrap();
    assert_eq!(value(&m, "repmgr_failovers_total", &[]), Some(1.0));
    assert_eq!(value(&m, "repmgr_role", &[("role", "primary")]), Some(1.0));
    // The old primary is gone: nothing answers there.
    assert_eq!(status(ports[&1], "/health"), 0);
}

/// What a misbehaving client got: an HTTP status, or nothing before the server closed.
fn outcome(mut s: TcpStream) -> Option<u16> {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

fn raise_fd_limit(n: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = n.min(r.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

#[test]
fn misbehaving_clients_never_stall_monitoring_or_failover() {
    let (c, ports) = cluster("http-abuse");
    let term_before = c.int(1, "SELECT term FROM repmgr.node_status()");
    let workers: Vec<i64> = (1..=3)
        .map(|id| c.int(id, "SELECT worker_pid FROM repmgr.node_status()"))
        .collect();
    let rounds_sql =
        "SELECT (extract(epoch FROM worker_last_round) * 1000)::bigint FROM repmgr.node_status()";
    raise_fd_limit(4096);
    let targets = [ports[&1], ports[&2]];
    let attack = Instant::now();
    let attackers: Vec<std::thread::JoinHandle<Vec<Option<u16>>>> = vec![
        // 1000 connections at once that never send anything.
        std::thread::spawn(move || {
            let held: Vec<TcpStream> = (0..1000)
                .filter_map(|i| TcpStream::connect(("127.0.0.1", targets[i % 2])).ok())
                .collect();
            std::thread::sleep(Duration::from_secs(3));
            held.into_iter().map(outcome).collect()
        }),
        // Slowloris: a header byte every 300 ms, for as long as the server lets it.
        std::thread::spawn(move || {
            let conns: Vec<TcpStream> = (0..40)
                .filter_map(|i| TcpStream::connect(("127.0.0.1", targets[i % 2])).ok())
                .collect();
            let mut open = conns;
            for _ in 0..20 {
                open.retain_mut(|s| s.write_all(b"X").is_ok());
                std::thread::sleep(Duration::from_millis(300));
            }
            open.into_iter().map(outcome).collect()
        }),
        // Huge headers and garbage, over and over.
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let junk: Vec<u8> = (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
                .collect();
            let huge = format!(
                "GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                "a".repeat(1 << 20)
            );
            for i in 0..60 {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", targets[i % 2])) else {
                    continue;
                };
                let _ = s.set_write_timeout(Some(Duration::from_secs(3)));
                let _ = if i % 2 == 0 {
                    s.write_all(huge.as_bytes())
                } else {
                    s.write_all(&junk)
                };
                got.push(outcome(s));
            }
            got
        }),
    ];
    // Meanwhile every worker keeps its rounds and the failover protocol its lease.
    let mut rounds: Vec<Vec<i64>> = vec![Vec::new(); 3];
    while attack.elapsed() < Duration::from_secs(6) {
        for id in 1..=3 {
            let r = c.int(id, rounds_sql);
            if rounds[id as usize - 1].last() != Some(&r) {
                rounds[id as usize - 1].push(r);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let outcomes: Vec<Vec<Option<u16>>> = attackers
        .into_iter()
        .map(|t| t.join().expect("attacker thread"))
        .collect();
    for (id, seen) in rounds.iter().enumerate() {
        assert!(
            seen.len() >= 4,
            "node {}'s worker finished only {} rounds in 6 s under attack",
            id + 1,
            seen.len()
        );
        let gap = seen.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        assert!(gap < 3000, "node {}: {gap} ms between two rounds", id + 1);
    }
    // The hostile requests got a refusal or a closed connection (beyond the connection cap,
    // or after the deadline), never a 200.
    let flat: Vec<Option<u16>> = outcomes.concat();
    let count = |o: Option<u16>| flat.iter().filter(|x| **x == o).count();
    let summary = format!(
        "{} hostile connections: 408 x{}, 431 x{}, 400 x{}, closed without an answer x{}",
        flat.len(),
        count(Some(408)),
        count(Some(431)),
        count(Some(400)),
        count(None)
    );
    println!("under attack: {summary}");
    assert!(flat.iter().all(|o| o.is_none_or(|s| s >= 400)), "{summary}");
    // Nothing was elected, nothing fenced, no process restarted.
    assert_eq!(
        c.int(1, "SELECT term FROM repmgr.node_status()"),
        term_before
    );
    assert_eq!(c.writable(&[1, 2, 3]), vec![1]);
    assert_eq!(
        c.int(
            1,
            "SELECT count(*) FROM repmgr.events WHERE event = 'repmgrd_primary_fenced'"
        ),
        0
    );
    for id in 1..=3 {
        assert_eq!(
            c.int(id, "SELECT worker_pid FROM repmgr.node_status()"),
            workers[id as usize - 1],
            "node {id}'s worker restarted"
        );
    }
    // One at a time, each kind of bad request gets its own refusal.
    let p = ports[&1];
    let send = |bytes: &[u8]| {
        let mut s = TcpStream::connect(("127.0.0.1", p)).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = s.write_all(bytes);
        outcome(s)
    };
    let huge = format!(
        "GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    assert_eq!(send(huge.as_bytes()), Some(431));
    assert_eq!(
        send(b"\x16\x03\x01\x00\xa5\x01\x00\x00\r\n\xff\xfe"),
        Some(400)
    );
    let t = Instant::now();
    assert_eq!(send(b"GET /health HTTP/1.1\r\nHost: slow"), Some(408));
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // And the endpoints answer promptly again.
    for id in 1..=2 {
        let t = Instant::now();
        c.wait_for("the endpoints after the attack", WAIT, || {
            (status(ports[&id], "/health") == 200).then_some(())
        });
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "node {id}: {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn the_listener_follows_reloads_and_reports_a_port_in_use() {
    let mut c = Cluster::new("http-reload");
    let port = free_port();
    c.init_primary(1, NodeOptions::default());
    c.sql(1, "SELECT repmgr.register_primary()");
    assert_eq!(status(port, "/health"), 0, "off by default");
    c.set(1, "repmgr.http_listen_address", "127.0.0.1");
    c.set(1, "repmgr.http_port", &port.to_string());
    c.wait_for("the endpoints after a reload", WAIT, || {
        (status(port, "/health") == 200).then_some(())
    });
    // A port someone else holds: the worker says so in the log and keeps monitoring.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    c.set(1, "repmgr.http_port", &busy.to_string());
    c.wait_for("the log to name the port in use", WAIT, || {
        c.log(1)
            .contains(&format!(
                "health endpoints not started: cannot listen on 127.0.0.1:{busy}"
            ))
            .then_some(())
    });
    assert_eq!(status(port, "/health"), 0, "the old port is closed");
    c.reset(1, "repmgr.http_listen_address");
    drop(taken);
    assert!(c.log(1).contains("stopped the health endpoints"));
}
