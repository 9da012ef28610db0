//! What users wire around the extension, checked by the tools they use: Prometheus's
//! `promtool` accepts the `/metrics` of a primary, a standby and a witness, checks the alerting
//! rules and runs their unit tests; every expression of the alerting rules and of the Grafana
//! dashboard names only metrics the extension exports. Files: `observability/`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use repmgr_tests::http::{self, status};
use repmgr_tests::{Cluster, NodeOptions, free_port};

const WAIT: Duration = Duration::from_secs(30);

fn observability(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../observability")
        .join(file)
}

/// Runs promtool with `args` (and `stdin`): its exit status and everything it printed.
fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian's prometheus package; cargo xtask setup installs it)");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write to promtool");
    }
    drop(input);
    let out = child.wait_with_output().expect("promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The `repmgr_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("repmgr_") {
        let before = rest[..i].chars().last();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Every `expr` string anywhere in a JSON document.
fn json_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => json_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| json_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn promtool_accepts_every_role_and_dashboards_and_alerts_name_exported_metrics() {
    // A primary, a standby and a witness, each serving /metrics.
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let with_http = |port: u16| {
        NodeOptions::default()
            .conf("repmgr.http_listen_address = '127.0.0.1'")
            .conf(format!("repmgr.http_port = {port}"))
    };
    let mut c = Cluster::new("observability");
    c.populate(&[2], |id| with_http(ports[id as usize - 1]));
    c.add_witness(3, with_http(ports[2]));
    c.settled(1, &[2, 3], WAIT);
    let mut exported = BTreeSet::new();
    for (port, role) in ports.iter().zip(["primary", "standby", "witness"]) {
        let body = c.wait_for(&format!("the {role}'s metrics"), WAIT, || {
            let body = http::get(*port, "/metrics")?.body;
            body.contains(&format!("repmgr_role{{role=\"{role}\"}} 1"))
                .then_some(body)
        });
        let (ok, said) = promtool(&["check", "metrics"], Some(&body));
        assert!(
            ok && said.trim().is_empty(),
            "promtool check metrics, {role}:\n{said}\n{body}"
        );
        for line in body.lines() {
            let name = match line.strip_prefix("# TYPE ") {
                Some(rest) => rest.split(' ').next(),
                None if !line.starts_with('#') => line.split(['{', ' ']).next(),
                None => None,
            };
            exported.extend(name.map(str::to_string));
        }
        assert_eq!(status(*port, "/health"), 200);
    }
    println!("exported: {exported:?}");

    let rules = std::fs::read_to_string(observability("prometheus/repmgr.rules.yml"))
        .expect("the alerting rules");
    let mut exprs: Vec<(String, String)> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .map(|e| ("prometheus/repmgr.rules.yml".to_string(), e.to_string()))
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(observability("grafana/repmgr.json")).expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut dash = Vec::new();
    json_exprs(&dashboard, &mut dash);
    assert!(dash.len() >= 10, "{dash:?}");
    exprs.extend(
        dash.into_iter()
            .map(|e| ("grafana/repmgr.json".to_string(), e)),
    );
    let mut used = BTreeSet::new();
    for (file, e) in &exprs {
        for name in metric_names(e) {
            assert!(
                exported.contains(&name),
                "{file}: {e}\nnames {name}, which no node exports"
            );
            used.insert(name);
        }
    }
    // The dashboard shows what it is for: roles and timeline, lag per standby, failovers and
    // fencings, the worker's loop time.
    for needed in [
        "repmgr_role",
        "repmgr_timeline",
        "repmgr_standby_lag_bytes",
        "repmgr_failovers_total",
        "repmgr_fencings_total",
        "repmgr_worker_loop_duration_seconds_bucket",
    ] {
        assert!(used.contains(needed), "nothing uses {needed}");
    }
    println!(
        "{} expressions name {} exported metrics",
        exprs.len(),
        used.len()
    );
}

#[test]
fn the_alerting_rules_pass_promtool_and_their_unit_tests() {
    let rules = observability("prometheus/repmgr.rules.yml");
    let (ok, said) = promtool(&["check", "rules", &rules.to_string_lossy()], None);
    assert!(ok, "{said}");
    let tests = observability("prometheus/repmgr.rules.test.yml");
    let (ok, said) = promtool(&["test", "rules", &tests.to_string_lossy()], None);
    assert!(ok && said.contains("SUCCESS"), "{said}");
}
