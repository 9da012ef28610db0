//! Benchmarks that print figures (run on demand through `cargo xtask bench`, never in tests).
//!
//! `overhead`: the monitoring worker's cost. On a primary with one streaming standby it
//! measures the worker's CPU time and memory while the cluster idles, then pgbench TPS on the
//! primary with repmgr preloaded (worker running on both nodes) and without it, alternating
//! runs on the same servers so that drift in the machine affects both sides alike.
//!
//! `failover`: automatic failover after `kill -9` of the primary of a fresh three-node
//! cluster (defaults), under a client committing a small insert every 10 ms through a
//! multi-host conninfo with `target_session_attrs=read-write`, as an application would. Per
//! run: time to a writable new primary, to the other standby streaming from it, the client's
//! write gap (last acknowledged commit before the crash to the first after), and acknowledged
//! commits missing on the new primary.
//!
//! `host-loss`: the same, but the primary's host drops off the network (its network namespace
//! cut from the switch) instead of crashing: nothing refuses, so the voters wait out the lease.
//!
//! `switchover`: `repmgr standby switchover --siblings-follow` on a fresh three-node cluster
//! built with the command line, under the same write load: the client's write gap, the
//! command's own duration, and acknowledged commits missing afterwards.
//!
//! In both, a second client writes through Debian's HAProxy running the README's
//! configuration (`repmgr_tests::haproxy`), as users would: its write gap includes HAProxy's
//! health checks.
//!
//! `false-failover`, `scale`, and the `repmgr5-*` forms that run the same scenarios against
//! Debian's repmgr 5.3.3 (`repmgr_tests::repmgr5`). Each benchmark adds its summary and
//! figures to `bench/results/<date>.json`, from which `<date>.md` and the chart
//! `<date>.png` are drawn again; `all` starts the day's files afresh, so that everything
//! compared in them comes from one run.

use std::collections::HashMap;
use std::fs;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use repmgr_tests::chart::{Bar, Panel};
use repmgr_tests::haproxy::Haproxy;
use repmgr_tests::load::{Load, longest_gap};
use repmgr_tests::{Cluster, NodeOptions, bindir, free_port, repmgr5};

/// Clock ticks per second for /proc CPU times (Linux's USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

fn usage() -> ExitCode {
    eprintln!(
        "usage: repmgr-bench overhead [--pairs N] [--seconds S] [--idle S]\n       repmgr-bench failover [--runs N]\n       repmgr-bench host-loss [--runs N]\n       repmgr-bench switchover [--runs N]\n       repmgr-bench false-failover [--runs N]\n       repmgr-bench scale [--runs N]\n       repmgr-bench repmgr5-failover [--runs N] [--defaults]\n       repmgr-bench repmgr5-switchover [--runs N] [--defaults]\n       repmgr-bench repmgr5-false-failover [--runs N] [--defaults]\n       repmgr-bench all [--quick]"
    );
    ExitCode::from(2)
}

/// CPU seconds (user + system) a process has used; with `reaped`, also those of its children
/// that have exited and been waited for (fields 14-17 of stat(5)).
fn cpu_seconds_of(pid: i32, reaped: bool) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // After the command name comes field 3 (state).
    let tick = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let own = tick(14) + tick(15);
    (if reaped {
        own + tick(16) + tick(17)
    } else {
        own
    }) / TICKS_PER_SECOND
}

fn cpu_seconds(pid: i32) -> f64 {
    cpu_seconds_of(pid, false)
}

/// CPU seconds used by both servers: each postmaster with its exited children, plus every
/// live process under it.
fn cluster_cpu(c: &Cluster) -> f64 {
    [1, 2]
        .iter()
        .filter_map(|id| c.node(*id).pid())
        .map(|pm| {
            let tree = repmgr_tests::process_tree(pm);
            cpu_seconds_of(pm, true) + tree.iter().skip(1).map(|p| cpu_seconds(*p)).sum::<f64>()
        })
        .sum()
}

/// CPU seconds per hour the whole cluster uses while idle for `secs`.
fn idle_cluster_cpu(c: &Cluster, secs: u64) -> f64 {
    std::thread::sleep(Duration::from_secs(3));
    let before = cluster_cpu(c);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    (cluster_cpu(c) - before) / t.elapsed().as_secs_f64() * 3600.0
}

/// A memory figure in kB from /proc/<pid>/status or smaps_rollup.
fn memory_kb(pid: i32, file: &str, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn worker_pid(c: &Cluster, id: i32) -> i32 {
    c.value(id, "SELECT repmgr.get_repmgrd_pid()")
        .and_then(|p| p.parse().ok())
        .unwrap_or(-1)
}

fn pgbench(c: &Cluster, args: &[&str]) -> String {
    let node = c.node(1);
    let socket = node.local_conninfo("bench");
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"])
        .arg(bindir().join("pgbench"))
        .args(args)
        .arg(socket);
    let out = cmd.output().expect("run pgbench");
    assert!(
        out.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tps(report: &str) -> f64 {
    report
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| {
            l.trim_start_matches("tps = ")
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("pgbench printed tps")
}

/// Restarts both nodes with or without repmgr in shared_preload_libraries.
fn preload(c: &Cluster, on: bool) {
    for id in [1, 2] {
        if on {
            c.set(id, "shared_preload_libraries", "repmgr");
        } else {
            c.reset(id, "shared_preload_libraries");
        }
    }
    for id in [2, 1] {
        c.stop(id);
    }
    for id in [1, 2] {
        c.start(id);
    }
    if on {
        c.wait_for("both workers", Duration::from_secs(30), || {
            (worker_pid(c, 1) > 0 && worker_pid(c, 2) > 0).then_some(())
        });
    }
}

fn overhead(pairs: usize, seconds: u64, idle: u64) {
    let mut report = Report::new(
        "overhead",
        format!(
            "the worker's cost: idle {idle} s on a primary + 1 streaming standby (monitor_interval 1 s), then pgbench scale 10, 4 clients, {pairs} pairs of {seconds} s runs with and without repmgr preloaded, ABBA order"
        ),
    );
    let mut c = Cluster::new("bench-overhead");
    // Preloading is switched in postgresql.auto.conf, so the base configuration has none.
    let opts = || NodeOptions {
        preload: false,
        ..Default::default()
    };
    c.init_primary(1, opts());
    c.sql(1, "SELECT repmgr.register_primary()");
    c.clone_standby(2, 1, opts());
    c.sql(2, "SELECT repmgr.register_standby()");
    c.sql(1, "CREATE DATABASE bench");
    preload(&c, true);

    std::thread::sleep(Duration::from_secs(3));
    for (id, role) in [(1, "primary"), (2, "standby")] {
        let pid = worker_pid(&c, id);
        let before = cpu_seconds(pid);
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(idle));
        let used = cpu_seconds(pid) - before;
        let per_hour = used / t.elapsed().as_secs_f64() * 3600.0;
        report.line(format!(
            "{role} worker: {used:.2} CPU s in {idle} s = {per_hour:.1} CPU s/hour ({:.3}% of one core); RSS {} kB, PSS {} kB (shared buffers it touched included in RSS)",
            per_hour / 36.0,
            memory_kb(pid, "status", "VmRSS:"),
            memory_kb(pid, "smaps_rollup", "Pss:"),
        ));
    }
    let history = c.value(1, "SELECT count(*) || ' rows, ' || pg_total_relation_size('repmgr.monitoring_history') || ' bytes' FROM repmgr.monitoring_history");
    report.line(format!(
        "monitoring_history after the idle period: {}",
        history.unwrap_or_default()
    ));
    let with = idle_cluster_cpu(&c, idle);
    preload(&c, false);
    let without = idle_cluster_cpu(&c, idle);
    report.line(format!(
        "whole cluster (both servers, all processes) idle: {with:.1} CPU s/hour with repmgr, {without:.1} without: repmgr adds {:.1} CPU s/hour",
        with - without
    ));
    let node = c.node(1).clone();
    let init = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bindir().join("pgbench"))
        .args(["-i", "-q", "-s", "10"])
        .arg(node.local_conninfo("bench"))
        .output()
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let secs = seconds.to_string();
    let mut with = Vec::new();
    let mut without = Vec::new();
    for pair in 1..=pairs {
        // ABBA order, so that a drift in the machine over the run favours neither side.
        let order = if pair % 2 == 1 {
            [true, false]
        } else {
            [false, true]
        };
        for on in order {
            preload(&c, on);
            c.sql(1, "CHECKPOINT");
            // pgbench vacuums its tables first, so every run starts from the same state.
            let t = tps(&pgbench(&c, &["-c", "4", "-j", "2", "-T", &secs]));
            println!(
                "pair {pair}: {:<22} {t:>9.1} tps",
                if on {
                    "with repmgr worker"
                } else {
                    "without repmgr"
                }
            );
            if on { with.push(t) } else { without.push(t) }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (a, b) = (mean(&with), mean(&without));
    let spread = |v: &[f64]| {
        (
            v.iter().cloned().fold(f64::MAX, f64::min),
            v.iter().cloned().fold(f64::MIN, f64::max),
        )
    };
    report.line(format!(
        "pgbench: mean with repmgr {a:.1} tps (min {:.1}, max {:.1}); without {b:.1} tps (min {:.1}, max {:.1}); difference {:+.2}%",
        spread(&with).0,
        spread(&with).1,
        spread(&without).0,
        spread(&without).1,
        (a - b) / b * 100.0
    ));
    report.save();
}

/// One failover run's figures.
struct Run {
    writable: Duration,
    following: Duration,
    gap: Duration,
    acked: usize,
    lost: usize,
    /// The same for a second client writing through HAProxy, when one ran.
    proxy: Option<Proxied>,
}

/// What a client writing through HAProxy (the README's configuration) saw.
struct Proxied {
    gap: Duration,
    acked: usize,
    lost: usize,
}

/// HAProxy with the README's configuration in front of nodes 1 to 3 of `c`, whose endpoints
/// listen on `http`, and a client committing every 10 ms through it.
fn through_haproxy(c: &Cluster, http: &HashMap<i32, u16>) -> (Haproxy, Load) {
    for port in http.values() {
        c.wait_for("the endpoints", Duration::from_secs(30), || {
            (repmgr_tests::http::status(*port, "/health") == 200).then_some(())
        });
    }
    let h = Haproxy::start(c, http);
    let load = Load::through_proxy(
        &h.write_conninfo(),
        "through_haproxy",
        Duration::from_millis(10),
    );
    // Writing steadily before anything happens: HAProxy marks the primary up after its
    // first checks.
    c.wait_for("writes through HAProxy", Duration::from_secs(30), || {
        (load.acks().len() >= 50).then_some(())
    });
    (h, load)
}

/// Whether `load` has had a write acknowledged by node `id` (one acknowledged by the old
/// primary in the instant of its crash does not end a failover).
fn written_on(load: &Load, id: i32) -> bool {
    load.origins().iter().any(|(_, node, _)| *node == Some(id))
}

/// The proxied client's figures from `from` on, its writes checked on `primary`.
fn proxied(c: &Cluster, load: Load, from: Instant, primary: i32) -> Proxied {
    let acks = load.stop();
    Proxied {
        gap: longest_gap(&acks, from).map_or(Duration::ZERO, |(g, _)| g),
        acked: acks.len(),
        lost: c.missing_acks(primary, "through_haproxy", &acks).len(),
    }
}

/// Endpoint ports for nodes 1 to 3.
fn http_ports() -> HashMap<i32, u16> {
    (1..=3).map(|id| (id, free_port())).collect()
}

/// `opts`, serving the endpoints on `port`.
fn with_http(opts: NodeOptions, port: u16) -> NodeOptions {
    opts.conf("repmgr.http_listen_address = '127.0.0.1'")
        .conf(format!("repmgr.http_port = {port}"))
}

/// A commit every 10 ms on whichever of `ids` is writable, going for 2 s already.
fn write_load(c: &Cluster, ids: &[i32]) -> Load {
    let load = c.write_load(ids);
    std::thread::sleep(Duration::from_secs(2));
    load
}

/// The system under test.
#[derive(Debug, Clone, Copy, PartialEq)]
enum System {
    Ours,
    /// Debian's repmgr 5.3.3 with repmgrd (see `repmgr_tests::repmgr5`).
    Repmgr5(repmgr5::Settings),
}

/// How the primary is lost.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// `kill -9` of its postmaster.
    Crash,
    /// Its host vanishes from the network: its namespace's port on the switch goes down, and
    /// nothing answers (the client still reaches it through its Unix socket, as one on the
    /// far side of the cut would).
    HostLoss,
}

/// Nodes that run as a primary (whatever the system: nothing of ours is asked).
fn primaries(c: &Cluster, ids: &[i32]) -> Vec<i32> {
    ids.iter()
        .copied()
        .filter(|id| {
            c.try_sql(*id, "SELECT (NOT pg_is_in_recovery())::text")
                .ok()
                .is_some_and(|r| r.get(0, 0) == Some("true"))
        })
        .collect()
}

fn failover_run(
    run: usize,
    standbys: &[i32],
    opts: impl Fn(i32) -> NodeOptions,
    system: System,
    fault: Fault,
) -> Run {
    let mut c = match fault {
        Fault::Crash => Cluster::new(&format!("bench-failover-{run}")),
        Fault::HostLoss => Cluster::with_network(&format!("bench-hostloss-{run}")),
    };
    // Ours, on three nodes, is also measured through HAProxy (on loopback: not across a cut).
    let http =
        (system == System::Ours && standbys == [2, 3] && fault == Fault::Crash).then(http_ports);
    let (wait, mut daemons) = match system {
        System::Ours => {
            c.populate(standbys, |id| match &http {
                Some(h) => with_http(opts(id), h[&id]),
                None => opts(id),
            });
            c.settled(1, standbys, Duration::from_secs(60));
            (Duration::from_secs(60), Vec::new())
        }
        System::Repmgr5(settings) => {
            let tree = repmgr5::Repmgr5::prepare();
            let daemons = tree.populate(&mut c, standbys, settings);
            // repmgrd connects and starts monitoring within a few seconds.
            std::thread::sleep(Duration::from_secs(5));
            (Duration::from_secs(300), daemons)
        }
    };
    let everyone: Vec<i32> = std::iter::once(1).chain(standbys.iter().copied()).collect();
    let proxy = http.as_ref().map(|h| through_haproxy(&c, h));
    let load = write_load(&c, &everyone);
    let crash = Instant::now();
    match fault {
        Fault::Crash => c.kill9(1),
        Fault::HostLoss => c.network().isolate(1),
    }
    // Polled every 20 ms rather than through wait_for's 100 ms, for resolution.
    let poll = |what: &str, mut done: Box<dyn FnMut() -> Option<i32> + '_>| -> (i32, Duration) {
        loop {
            if let Some(v) = done() {
                return (v, crash.elapsed());
            }
            assert!(
                crash.elapsed() < wait,
                "run {run}: no {what} within {wait:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (new, writable) = poll(
        "new primary",
        Box::new(|| {
            let w = primaries(&c, standbys);
            (w.len() == 1).then(|| w[0])
        }),
    );
    let (_, following) = poll(
        "every other standby streaming",
        Box::new(|| {
            standbys
                .iter()
                .filter(|s| **s != new)
                .all(|s| c.streams_from(new, *s))
                .then_some(0)
        }),
    );
    c.wait_for("writes on the new primary", wait, || {
        let after = |l: &Load| l.acks().last().is_some_and(|(_, t)| *t > crash);
        (after(&load) && proxy.as_ref().is_none_or(|(_, p)| written_on(p, new))).then_some(())
    });
    std::thread::sleep(Duration::from_millis(200));
    let proxy = proxy.map(|(_h, l)| proxied(&c, l, crash, new));
    let acks = load.stop();
    // The longest pause in acknowledgements ending after the crash: the kill takes a few
    // milliseconds, during which the old primary may still acknowledge a commit or two.
    let gap = longest_gap(&acks, crash).map_or(Duration::ZERO, |(g, _)| g);
    let lost = c.missing_acks(new, "acked", &acks).len();
    repmgr5::stop_daemons(&mut daemons);
    Run {
        writable,
        following,
        gap,
        acked: acks.len(),
        lost,
        proxy,
    }
}

/// Median, 90th percentile, worst and best of a series, in seconds.
#[derive(Debug, Clone, Copy)]
struct Spread {
    median: f64,
    p90: f64,
    worst: f64,
    best: f64,
}

impl Spread {
    fn of(v: &mut [Duration]) -> Spread {
        v.sort();
        let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64();
        Spread {
            median: at(0.5),
            p90: at(0.9),
            worst: at(1.0),
            best: at(0.0),
        }
    }

    fn from_json(v: &serde_json::Value) -> Option<Spread> {
        Some(Spread {
            median: v["median"].as_f64()?,
            p90: v["p90"].as_f64()?,
            worst: v["worst"].as_f64()?,
            best: v["best"].as_f64()?,
        })
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {:.2} s, p90 {:.2} s, worst {:.2} s, best {:.2} s",
            self.median, self.p90, self.worst, self.best
        )
    }
}

/// Summary lines: printed, and kept in the results file under the benchmark's name.
struct Report {
    name: String,
    started: Instant,
    title: String,
    lines: Vec<String>,
    /// Figures other tools read (the chart), by name.
    figures: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// A report; on a major other than Debian's 15, which the comparisons with repmgr 5 use,
    /// its name carries the major, so that one day's results keep each version's figures.
    fn new(name: impl Into<String>, title: String) -> Report {
        let major = repmgr_tests::pg_major(&bindir());
        let title = format!("{title} ({})", postgresql());
        let name = name.into();
        println!("== {title}");
        Report {
            name: if major == 15 {
                name
            } else {
                format!("{name}-pg{major}")
            },
            started: Instant::now(),
            title,
            lines: Vec::new(),
            figures: serde_json::Map::new(),
        }
    }

    /// A summary line for a series, its figures kept under `key`.
    fn series(&mut self, key: &str, what: &str, s: Spread) {
        self.line(format!("{what}: {s}"));
        self.figures.insert(
            key.to_string(),
            serde_json::json!({"median": s.median, "p90": s.p90, "worst": s.worst, "best": s.best}),
        );
    }

    fn line(&mut self, l: String) {
        println!("{l}");
        self.lines.push(l);
    }

    /// Writes the report into `bench/results/<date>.json` (one entry per benchmark, the
    /// newest replacing an older one of the same date) and regenerates `<date>.md` from it.
    fn save(self) {
        println!("total {:.0} s", self.started.elapsed().as_secs_f64());
        let date = today();
        let dir = std::path::Path::new("bench/results");
        if fs::create_dir_all(dir).is_err() {
            return;
        }
        let json_path = dir.join(format!("{date}.json"));
        let mut all: serde_json::Map<String, serde_json::Value> = fs::read_to_string(&json_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        all.insert(
            self.name,
            serde_json::json!({
                "title": self.title,
                "summary": self.lines,
                "figures": self.figures,
                "machine": machine(),
                "postgresql": postgresql(),
                "seconds": self.started.elapsed().as_secs(),
            }),
        );
        let text = serde_json::to_string_pretty(&all).unwrap_or_default();
        let _ = fs::write(&json_path, text + "\n");
        let mut md = format!(
            "# Benchmark results, {date}\n\nMeasured by `cargo xtask bench` on this machine: {}.\n",
            machine()
        );
        for (name, v) in &all {
            md.push_str(&format!(
                "\n## {name}\n\n{}\n\n",
                v["title"].as_str().unwrap_or_default()
            ));
            for l in v["summary"].as_array().into_iter().flatten() {
                md.push_str(&format!("- {}\n", l.as_str().unwrap_or_default()));
            }
        }
        let png = dir.join(format!("{date}.png"));
        match chart(&all, &png, &date) {
            Ok(true) => {
                md.push_str(&format!("\n![client write gap by system]({date}.png)\n"));
                println!("chart: {}", png.display());
            }
            Ok(false) => {}
            Err(e) => println!("{e}"),
        }
        let _ = fs::write(dir.join(format!("{date}.md")), md);
        println!("results: {} and {date}.md", json_path.display());
    }
}

/// Draws the write gaps of every system in `results` into `png`; false when there is
/// nothing to draw.
fn chart(
    results: &serde_json::Map<String, serde_json::Value>,
    png: &std::path::Path,
    date: &str,
) -> Result<bool, String> {
    // Ours is saved under the scenario's own name, repmgr's under Settings::describe's.
    // (repmgr's settings, the figure, the label); ours is also measured through HAProxy.
    let systems = [
        (None, "write_gap", "this extension"),
        (None, "write_gap_haproxy", "this extension\nthrough HAProxy"),
        (
            Some(repmgr5::Settings::LikeOurs),
            "write_gap",
            "repmgr 5.3.3\nsettings like ours",
        ),
        (
            Some(repmgr5::Settings::Defaults),
            "write_gap",
            "repmgr 5.3.3\nits defaults",
        ),
    ];
    let mut panels = Vec::new();
    for (scenario, title) in [
        ("failover", "failover after kill -9 of the primary"),
        ("switchover", "switchover"),
    ] {
        let bars: Vec<Bar> = systems
            .iter()
            .filter_map(|(settings, figure, label)| {
                let key = settings.map_or_else(|| scenario.to_string(), |s| s.describe(scenario).0);
                let s = Spread::from_json(&results.get(&key)?["figures"][*figure])?;
                Some(Bar {
                    label: label.to_string(),
                    median: s.median,
                    best: s.best,
                    worst: s.worst,
                })
            })
            .collect();
        if !bars.is_empty() {
            panels.push(Panel {
                title: title.to_string(),
                bars,
            });
        }
    }
    if panels.is_empty() {
        return Ok(false);
    }
    repmgr_tests::chart::draw(
        png,
        &format!("Client write gap, {date} (bar: median; line: best to worst run)"),
        &machine(),
        &panels,
    )?;
    Ok(true)
}

/// Today's date, naming the results files.
fn today() -> String {
    Command::new("date")
        .arg("+%F")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "undated".into())
}

/// The machine the figures come from.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!(
        "{cores} cores, {:.0} GiB, loopback",
        mem as f64 / 1024.0 / 1024.0
    )
}

/// The PostgreSQL measured, as its `pg_config --version` names it.
fn postgresql() -> String {
    repmgr_tests::pg_config(&bindir(), "--version")
        .unwrap_or_else(|| format!("PostgreSQL in {}", bindir().display()))
}

/// `runs` failovers by kill -9 of the primary, each on a fresh cluster of primary 1 and
/// `standbys`.
fn failover_series(
    report: &mut Report,
    runs: usize,
    standbys: &[i32],
    opts: impl Fn(i32) -> NodeOptions + Copy,
    system: System,
    fault: Fault,
) {
    let mut all = Vec::new();
    for run in 1..=runs {
        let r = failover_run(run, standbys, opts, system, fault);
        println!(
            "run {run:2}: writable new primary after {:.2} s, every other standby streaming after {:.2} s (+{:.2} s), write gap {:.2} s, {} of {} acknowledged commits missing{}",
            r.writable.as_secs_f64(),
            r.following.as_secs_f64(),
            (r.following.saturating_sub(r.writable)).as_secs_f64(),
            r.gap.as_secs_f64(),
            r.lost,
            r.acked,
            r.proxy.as_ref().map_or(String::new(), |p| format!(
                "; through HAProxy: write gap {:.2} s, {} of {} missing",
                p.gap.as_secs_f64(),
                p.lost,
                p.acked
            ))
        );
        all.push(r);
    }
    let pick = |f: fn(&Run) -> Duration| Spread::of(&mut all.iter().map(f).collect::<Vec<_>>());
    report.series(
        "writable",
        "writable new primary after the primary was lost",
        pick(|r| r.writable),
    );
    report.series(
        "following",
        "every other standby streaming, after the promotion",
        pick(|r| r.following.saturating_sub(r.writable)),
    );
    report.series("write_gap", "client write gap", pick(|r| r.gap));
    report.line(format!(
        "acknowledged commits missing on the new primary: {} of {} in all runs",
        all.iter().map(|r| r.lost).sum::<usize>(),
        all.iter().map(|r| r.acked).sum::<usize>()
    ));
    proxy_series(report, all.iter().map(|r| r.proxy.as_ref()).collect());
}

/// The figures of the client that wrote through HAProxy, when every run had one.
fn proxy_series(report: &mut Report, runs: Vec<Option<&Proxied>>) {
    let Some(runs) = runs.into_iter().collect::<Option<Vec<&Proxied>>>() else {
        return;
    };
    if runs.is_empty() {
        return;
    }
    report.series(
        "write_gap_haproxy",
        "client write gap through HAProxy (the README's configuration)",
        Spread::of(&mut runs.iter().map(|p| p.gap).collect::<Vec<_>>()),
    );
    report.line(format!(
        "through HAProxy, acknowledged commits missing on the new primary: {} of {} in all runs",
        runs.iter().map(|p| p.lost).sum::<usize>(),
        runs.iter().map(|p| p.acked).sum::<usize>()
    ));
}

fn failover(runs: usize) {
    ours_losing_the_primary(
        "failover",
        format!(
            "failover after kill -9 of the primary: 3 nodes (primary + 2 standbys), default settings, a commit every 10 ms, {runs} runs"
        ),
        runs,
        Fault::Crash,
    );
}

/// Failover when the primary's host drops off the network: no refusal tells the voters, so
/// the lease decides (see docs/failover.md, "Host loss").
fn host_loss(runs: usize) {
    ours_losing_the_primary(
        "host-loss",
        format!(
            "failover when the primary's host drops off the network (its namespace cut from the switch): 3 nodes, default settings, a commit every 10 ms, {runs} runs; asynchronous, so commits the old primary acknowledged before its fence may be missing"
        ),
        runs,
        Fault::HostLoss,
    );
}

/// This extension's failover after `fault`, on 3 nodes at default settings, as report `name`.
fn ours_losing_the_primary(name: &str, title: String, runs: usize, fault: Fault) {
    let mut report = Report::new(name, title);
    failover_series(
        &mut report,
        runs,
        &[2, 3],
        |_| NodeOptions::default(),
        System::Ours,
        fault,
    );
    report.save();
}

/// A scenario (`bench`, described as `scenario`) against Debian's repmgr 5.3.3 and repmgrd
/// at `settings`: `series` runs it into the report.
fn repmgr5_scenario(
    bench: &str,
    scenario: &str,
    settings: repmgr5::Settings,
    series: impl FnOnce(&mut Report, &repmgr5::Repmgr5),
) {
    let tree = repmgr5::Repmgr5::prepare();
    let _in_use = tree.use_tree();
    let (name, what) = settings.describe(bench);
    let mut report = Report::new(
        name,
        format!("repmgr 5.3.3 + repmgrd (Debian), {what}: {scenario}"),
    );
    series(&mut report, &tree);
    report.save();
}

/// The failover scenario against repmgr 5.3.3.
fn repmgr5_failover(runs: usize, settings: repmgr5::Settings) {
    repmgr5_scenario(
        "failover",
        &format!(
            "failover after kill -9 of the primary, 3 nodes, a commit every 10 ms, {runs} runs"
        ),
        settings,
        |report, _| {
            failover_series(
                report,
                runs,
                &[2, 3],
                |_| repmgr5::Repmgr5::node_options(),
                System::Repmgr5(settings),
                Fault::Crash,
            )
        },
    );
}

/// The stalls of [`false_failover`] against repmgr 5.3.3: promotions, and whether two
/// primaries ran at once afterwards (it has no fencing).
fn repmgr5_false_failover(runs: usize, settings: repmgr5::Settings) {
    repmgr5_scenario(
        "false-failover",
        &format!("primary frozen for 0.5, 1 and 2 s, {runs} times each, 3 nodes"),
        settings,
        |report, tree| repmgr5_stalls(report, tree, runs, settings),
    );
}

fn repmgr5_stalls(
    report: &mut Report,
    tree: &repmgr5::Repmgr5,
    runs: usize,
    settings: repmgr5::Settings,
) {
    let wait = Duration::from_secs(60);
    let mut c = Cluster::new("bench-repmgr5-false-failover");
    let mut daemons = tree.populate(&mut c, &[2, 3], settings);
    std::thread::sleep(Duration::from_secs(5));
    'stalls: for stall in [500u64, 1000, 2000] {
        for _ in 0..runs {
            let primary = c.wait_for("one primary", wait, || {
                let p = primaries(&c, &[1, 2, 3]);
                (p.len() == 1).then(|| p[0])
            });
            c.freeze(primary);
            std::thread::sleep(Duration::from_millis(stall));
            c.thaw(primary);
            std::thread::sleep(Duration::from_secs(4));
            let now = primaries(&c, &[1, 2, 3]);
            if now != [primary] {
                report.line(format!(
                    "{:.1} s stall: a promotion; running as primary now: nodes {now:?}{}; the series stops here",
                    stall as f64 / 1000.0,
                    if now.len() > 1 { " (two primaries)" } else { "" }
                ));
                break 'stalls;
            }
        }
        report.line(format!(
            "{:.1} s stall, {runs} times: no promotion",
            stall as f64 / 1000.0
        ));
    }
    repmgr5::stop_daemons(&mut daemons);
}

/// Stalls (SIGSTOP of the whole primary) shorter and longer than the fence and the lease:
/// how many elections (term changes) and fencings each causes.
fn false_failover(runs: usize) {
    let mut report = Report::new(
        "false-failover",
        format!(
            "primary frozen (SIGSTOP of every process) for 0.5, 1 and 2 s, {runs} times each, 3 nodes, default settings (fence 1.6 s, lease 2.1 s)"
        ),
    );
    let wait = Duration::from_secs(60);
    let mut c = Cluster::new("bench-false-failover");
    c.populate(&[2, 3], |_| NodeOptions::default());
    c.settled(1, &[2, 3], wait);
    let count = |c: &Cluster, id: i32, sql: &str| -> i64 {
        c.value(id, sql).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    for stall in [500u64, 1000, 2000] {
        let (mut elections, mut fencings, mut promotions) = (0, 0, 0);
        for _ in 0..runs {
            let primary = c.one_writable(&[1, 2, 3], wait);
            let term = count(&c, primary, "SELECT term FROM repmgr.vote_info()");
            let fenced = count(
                &c,
                primary,
                "SELECT count(*) FROM repmgr.events WHERE event = 'repmgrd_primary_fenced'",
            );
            c.freeze(primary);
            std::thread::sleep(Duration::from_millis(stall));
            c.thaw(primary);
            // Past the lease and the elections it could start, then settled again.
            std::thread::sleep(Duration::from_secs(4));
            let now = c.one_writable(&[1, 2, 3], wait);
            elections += count(&c, now, "SELECT term FROM repmgr.vote_info()") - term;
            fencings += count(
                &c,
                now,
                "SELECT count(*) FROM repmgr.events WHERE event = 'repmgrd_primary_fenced'",
            ) - fenced;
            if now != primary {
                promotions += 1;
                // The old primary was replaced: bring the cluster back to three nodes.
                c.stop(primary);
                let others: Vec<i32> = [1, 2, 3].into_iter().filter(|id| *id != primary).collect();
                c.settled(now, &others, wait);
            }
        }
        report.line(format!(
            "{:.1} s stall, {runs} times: {elections} elections, {promotions} promotions, {fencings} fencings",
            stall as f64 / 1000.0
        ));
    }
    report.save();
}

/// Seven nodes: the failover gap and the idle worker's CPU with six standbys.
fn scale(runs: usize) {
    let standbys = [2, 3, 4, 5, 6, 7];
    let small = |_| {
        NodeOptions::default()
            .conf("shared_buffers = 16MB")
            .conf("max_connections = 40")
    };
    let mut report = Report::new(
        "scale",
        format!(
            "1 primary + 6 standbys (shared_buffers 16MB): failover after kill -9 ({runs} runs) and the idle worker's CPU"
        ),
    );
    let wait = Duration::from_secs(60);
    {
        let mut c = Cluster::new("bench-scale-idle");
        c.populate(&standbys, small);
        c.settled(1, &standbys, wait);
        let ids: Vec<i32> = std::iter::once(1).chain(standbys).collect();
        let pids: Vec<i32> = ids.iter().map(|id| worker_pid(&c, *id)).collect();
        let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
        let idle = Duration::from_secs(30);
        std::thread::sleep(idle);
        let per_hour: Vec<f64> = pids
            .iter()
            .zip(&before)
            .map(|(p, b)| (cpu_seconds(*p) - b) * 3600.0 / idle.as_secs_f64())
            .collect();
        report.line(format!(
            "idle worker CPU over 30 s: primary {:.1} CPU s/hour, standbys {:.1} to {:.1} CPU s/hour",
            per_hour[0],
            per_hour[1..].iter().cloned().fold(f64::MAX, f64::min),
            per_hour[1..].iter().cloned().fold(0.0, f64::max)
        ));
    }
    failover_series(
        &mut report,
        runs,
        &standbys,
        small,
        System::Ours,
        Fault::Crash,
    );
    report.save();
}

/// `runs` switchovers from primary 1 to standby 2, each on a fresh three-node cluster, under
/// a write load: the client's write gap, the command's duration, acknowledged commits lost.
fn switchover_series(report: &mut Report, runs: usize, system: System) {
    let (mut gaps, mut took) = (Vec::new(), Vec::new());
    let (mut lost, mut acked) = (0, 0);
    let mut through = Vec::new();
    for run in 1..=runs {
        let wait = Duration::from_secs(60);
        let mut c = Cluster::new(&format!("bench-switchover-{run}"));
        let (mut command, mut daemons) = match system {
            System::Ours => {
                let confs = c.populate_with_cli(&[2, 3], NodeOptions::default);
                c.settled(1, &[2, 3], wait);
                let mut command = Command::new(repmgr_tests::cli());
                command.arg("-f").arg(&confs[2]).args([
                    "standby",
                    "switchover",
                    "--siblings-follow",
                ]);
                (command, Vec::new())
            }
            System::Repmgr5(settings) => {
                let tree = repmgr5::Repmgr5::prepare();
                let daemons = tree.populate(&mut c, &[2, 3], settings);
                std::thread::sleep(Duration::from_secs(5));
                let conf = repmgr5::Repmgr5::conf_path(&c, 2);
                let command = tree.command(&conf, &["standby", "switchover", "--siblings-follow"]);
                (command, daemons)
            }
        };
        // Ours is also measured through HAProxy.
        let proxy = (system == System::Ours).then(|| {
            let http = http_ports();
            for (id, port) in &http {
                c.set(*id, "repmgr.http_listen_address", "127.0.0.1");
                c.set(*id, "repmgr.http_port", &port.to_string());
            }
            through_haproxy(&c, &http)
        });
        let load = write_load(&c, &[1, 2, 3]);
        let t = Instant::now();
        let out = command.output().expect("run repmgr");
        let duration = t.elapsed();
        assert!(
            out.status.success(),
            "run {run}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        c.wait_for("writes on the new primary", wait, || {
            let after = |l: &Load| l.acks().last().is_some_and(|(_, a)| *a > t + duration);
            (primaries(&c, &[1, 2, 3]) == [2]
                && after(&load)
                && proxy.as_ref().is_none_or(|(_, p)| written_on(p, 2)))
            .then_some(())
        });
        std::thread::sleep(Duration::from_millis(300));
        let proxy = proxy.map(|(_h, l)| proxied(&c, l, t, 2));
        let acks = load.stop();
        let gap = longest_gap(&acks, t).map_or(Duration::ZERO, |(g, _)| g);
        let m = c.missing_acks(2, "acked", &acks).len();
        repmgr5::stop_daemons(&mut daemons);
        println!(
            "run {run}: write gap {:.3} s, command took {:.2} s, {m} of {} acknowledged commits missing{}",
            gap.as_secs_f64(),
            duration.as_secs_f64(),
            acks.len(),
            proxy.as_ref().map_or(String::new(), |p| format!(
                "; through HAProxy: write gap {:.3} s, {} of {} missing",
                p.gap.as_secs_f64(),
                p.lost,
                p.acked
            ))
        );
        through.push(proxy);
        gaps.push(gap);
        took.push(duration);
        lost += m;
        acked += acks.len();
    }
    report.series("write_gap", "client write gap", Spread::of(&mut gaps));
    report.series(
        "duration",
        "switchover command duration",
        Spread::of(&mut took),
    );
    report.line(format!(
        "acknowledged commits missing on the new primary: {lost} of {acked} in all runs"
    ));
    proxy_series(report, through.iter().map(Option::as_ref).collect());
}

fn switchover(runs: usize) {
    let mut report = Report::new(
        "switchover",
        format!(
            "repmgr standby switchover --siblings-follow: 3 nodes, default settings, a commit every 10 ms, {runs} runs"
        ),
    );
    switchover_series(&mut report, runs, System::Ours);
    report.save();
}

/// The switchover scenario against repmgr 5.3.3 (`ssh` replaced by a local stand-in, see
/// `repmgr_tests::repmgr5`).
fn repmgr5_switchover(runs: usize, settings: repmgr5::Settings) {
    repmgr5_scenario(
        "switchover",
        &format!(
            "repmgr standby switchover --siblings-follow, 3 nodes, a commit every 10 ms, {runs} runs"
        ),
        settings,
        |report, _| switchover_series(report, runs, System::Repmgr5(settings)),
    );
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first() else {
        return usage();
    };
    let opt = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let settings = if args.iter().any(|a| a == "--defaults") {
        repmgr5::Settings::Defaults
    } else {
        repmgr5::Settings::LikeOurs
    };
    match mode.as_str() {
        // Everything, in one run, so that the figures compared come from the same machine
        // state; --quick for a first look (fewer runs, shorter phases).
        "all" => {
            let quick = args.iter().any(|a| a == "--quick");
            // Every figure of the day's results then comes from this one run.
            for ext in ["json", "md", "png"] {
                let _ = fs::remove_file(format!("bench/results/{}.{ext}", today()));
            }
            let n = |full: usize, short: usize| if quick { short } else { full };
            failover(n(20, 3));
            host_loss(n(20, 2));
            switchover(n(5, 2));
            false_failover(n(5, 1));
            repmgr5_failover(n(20, 2), repmgr5::Settings::LikeOurs);
            repmgr5_failover(n(10, 1), repmgr5::Settings::Defaults);
            repmgr5_switchover(n(5, 1), repmgr5::Settings::LikeOurs);
            repmgr5_switchover(n(5, 1), repmgr5::Settings::Defaults);
            repmgr5_false_failover(n(5, 1), repmgr5::Settings::LikeOurs);
            repmgr5_false_failover(n(5, 1), repmgr5::Settings::Defaults);
            scale(n(3, 1));
            overhead(n(3, 1), n(30, 10) as u64, n(60, 20) as u64);
        }
        "overhead" => overhead(
            opt("--pairs", 3) as usize,
            opt("--seconds", 30),
            opt("--idle", 60),
        ),
        "failover" => failover(opt("--runs", 10) as usize),
        "host-loss" => host_loss(opt("--runs", 10) as usize),
        "switchover" => switchover(opt("--runs", 5) as usize),
        "false-failover" => false_failover(opt("--runs", 5) as usize),
        "scale" => scale(opt("--runs", 3) as usize),
        "repmgr5-false-failover" => repmgr5_false_failover(opt("--runs", 5) as usize, settings),
        "repmgr5-failover" => repmgr5_failover(opt("--runs", 10) as usize, settings),
        "repmgr5-switchover" => repmgr5_switchover(opt("--runs", 5) as usize, settings),
        _ => return usage(),
    }
    ExitCode::SUCCESS
}
