//! Scenario files: the election plan and the vote, case by case, as a specification to read.
//!
//! Each file in `core/testdata/` holds cases separated by blank lines. A case is a command
//! (`plan`, `vote` or `objection`), lines describing the situation, `----`, and what the
//! code decides. `REPMGR_REWRITE=1 cargo test -p repmgr-core --test scenarios` writes the
//! decisions the code makes now into the files, for review with `git diff`.
//!
//! Situations are written as `word key=value flag ...`; times are milliseconds, positions
//! bytes. See the comments at the top of each file for its words.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use repmgr_core::election::{self, Answer, Kind, Me, Peer, Plan, Rules};
use repmgr_core::lease::Timing;
use repmgr_core::node::{NodeRecord, NodeType};
use repmgr_core::quorum::Config;
use repmgr_core::vote::{Durable, VoteRequest, Voter, VoterFacts, catalog_objection};

/// One line's words: `key=value` pairs (a value may be double-quoted) and bare flags.
struct Words {
    kv: HashMap<String, String>,
    flags: Vec<String>,
}

impl Words {
    fn parse(line: &str) -> (String, Words) {
        let mut tokens = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        for c in line.chars() {
            match c {
                '"' => quoted = !quoted,
                ' ' if !quoted => {
                    if !cur.is_empty() {
                        tokens.push(std::mem::take(&mut cur));
                    }
                }
                _ => cur.push(c),
            }
        }
        if !cur.is_empty() {
            tokens.push(cur);
        }
        let head = tokens.first().cloned().unwrap_or_default();
        let mut kv = HashMap::new();
        let mut flags = Vec::new();
        for t in tokens.into_iter().skip(1) {
            match t.split_once('=') {
                Some((k, v)) => {
                    kv.insert(k.to_string(), v.to_string());
                }
                None => flags.push(t),
            }
        }
        (head, Words { kv, flags })
    }

    fn num(&self, k: &str, default: u64) -> u64 {
        self.kv.get(k).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{k}={v} is not a number"))
        })
    }

    fn int(&self, k: &str, default: i32) -> i32 {
        self.num(k, default as u64) as i32
    }

    fn ms(&self, k: &str, default: u64) -> Duration {
        Duration::from_millis(self.num(k, default))
    }

    fn text(&self, k: &str, default: &str) -> String {
        self.kv
            .get(k)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

fn kind(s: &str) -> Kind {
    match s {
        "primary" => Kind::Primary,
        "witness" => Kind::Witness,
        _ => Kind::Standby,
    }
}

/// `quorum=K:ID,ID` (or `none`).
fn quorum(s: &str) -> Config {
    match s.split_once(':') {
        Some((k, ids)) => Config::new(
            k.parse().expect("k"),
            ids.split(',').map(|i| i.parse().expect("id")),
        ),
        None => Config::none(),
    }
}

fn plan_case(lines: &[&str]) -> String {
    let mut me = None;
    let mut peers = Vec::new();
    let mut rules = Rules {
        max_lag: 16 << 20,
        visibility_consensus: true,
        primary_location: None,
        quorum: Config::none(),
        passed_over: Vec::new(),
    };
    for line in lines {
        let (head, w) = Words::parse(line);
        match head.as_str() {
            "me" => {
                me = Some(Me {
                    node_id: w.int("id", 2),
                    term: w.num("term", 4),
                    lsn: w.num("lsn", 1000),
                    timeline: w.int("timeline", 1) as u32,
                    timeline_start: w.num("start", 0),
                    silence: w.ms("silence", 3000),
                    lost: !w.has("hearing"),
                    location: w.text("location", "dc1"),
                    priority: w.int("priority", 100),
                    failover_slots: w.int("slots", 0) as u32,
                    automatic: !w.has("manual"),
                    paused: w.has("paused"),
                    diverged: w.has("diverged"),
                    replayed_all: !w.has("replaying"),
                    version: w.num("version", 1),
                    quorum_version: w.num("published", 0),
                })
            }
            "peer" => {
                let k = kind(&w.text("kind", "standby"));
                let answer = (!w.has("silent")).then(|| Answer {
                    term: w.num("term", 4),
                    leading: w.has("leading"),
                    in_recovery: k == Kind::Standby && !w.has("promoted"),
                    silence: w.ms("silence", 3000),
                    lost: !w.has("hearing"),
                    lsn: (k == Kind::Standby).then(|| w.num("lsn", 1000)),
                    timeline: w.int("timeline", 1) as u32,
                    timeline_start: w.num("start", 0),
                    unavailable: w.has("unavailable"),
                    diverged: w.has("diverged"),
                    priority: w.int("priority", 100),
                    failover_slots: w.int("slots", 0) as u32,
                    version: w.num("version", 1),
                    sync_quorum: w.num("published", 0),
                });
                peers.push(Peer {
                    node_id: w.int("id", 0),
                    kind: k,
                    location: w.text("location", "dc1"),
                    answer,
                });
            }
            "rules" => {
                rules.max_lag = w.num("max_lag", rules.max_lag);
                rules.visibility_consensus = !w.has("no_consensus");
                rules.primary_location = w.kv.get("primary_location").cloned();
                rules.quorum = quorum(&w.text("quorum", "none"));
                rules.passed_over = w
                    .text("passed_over", "")
                    .split(',')
                    .filter(|v| !v.is_empty())
                    .map(|v| v.parse().expect("a node id"))
                    .collect();
            }
            other => panic!("unknown word {other:?} in a plan case"),
        }
    }
    match election::plan(&me.expect("a `me` line"), &peers, &rules) {
        Plan::Stand { term } => format!("stand term={term}"),
        Plan::Defer { to } => format!("defer to={to}"),
        Plan::Wait { reason, lasting } => {
            format!("wait{}: {reason}", if lasting { " (lasting)" } else { "" })
        }
    }
}

fn vote_case(lines: &[&str]) -> String {
    let mut timing = Timing {
        heartbeat: Duration::from_millis(250),
        fence: Duration::from_millis(1500),
        lease: Duration::from_millis(2500),
    };
    let mut voter = Voter::new(Durable::default(), Duration::ZERO);
    let mut facts = VoterFacts {
        is_primary: false,
        received_lsn: Some(1000),
        timeline: 1,
        timeline_start: 0,
        may_stand: true,
        max_lag: 0,
        failover_slots: 0,
        quorum_member: false,
        sync_quorum: 0,
        candidate_ineligible: None,
        version: 1,
    };
    let mut out = String::new();
    for line in lines {
        let (head, w) = Words::parse(line);
        match head.as_str() {
            "timing" => timing.lease = w.ms("lease", 2500),
            "voter" => {
                let supports = w.int("supports", 0);
                voter = Voter::new(
                    Durable {
                        term: w.num("term", 1),
                        supports: (supports != 0).then_some(supports),
                        fence: w.ms("fence", 1500),
                    },
                    w.ms("started", 0),
                );
                if let Some(h) = w.kv.get("heard") {
                    voter.last_heard = Some(Duration::from_millis(h.parse().expect("ms")));
                    voter.leader = voter.durable.supports;
                }
            }
            "facts" => {
                facts = VoterFacts {
                    is_primary: w.has("primary"),
                    received_lsn: (!w.has("no_lsn")).then(|| w.num("lsn", 1000)),
                    timeline: w.int("timeline", 1) as u32,
                    timeline_start: w.num("start", 0),
                    may_stand: !w.has("cannot_stand"),
                    max_lag: w.num("max_lag", 0),
                    failover_slots: w.int("slots", 0) as u32,
                    quorum_member: w.has("member"),
                    sync_quorum: w.num("published", 0),
                    candidate_ineligible: w.kv.get("ineligible").cloned(),
                    version: w.num("version", 1),
                }
            }
            "request" => {
                let req = VoteRequest {
                    term: w.num("term", 2),
                    candidate: w.int("candidate", 2),
                    lsn: w.num("lsn", 1000),
                    timeline: w.int("timeline", 1) as u32,
                    timeline_start: w.num("start", 0),
                    fence: w.ms("fence", 1500),
                    version: w.num("version", 1),
                    quorum_version: w.num("published", 0),
                    failover_slots: w.int("slots", 0) as u32,
                };
                let r = voter.decide(w.ms("at", 5000), &req, &facts, &timing);
                let d = voter.durable;
                let _ = writeln!(
                    out,
                    "{} term={}{}\ndurable term={} supports={} fence={}",
                    if r.granted { "granted" } else { "refused" },
                    r.term,
                    if r.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", r.reason)
                    },
                    d.term,
                    d.supports.unwrap_or(0),
                    d.fence.as_millis()
                );
            }
            other => panic!("unknown word {other:?} in a vote case"),
        }
    }
    out.trim_end().to_string()
}

fn objection_case(lines: &[&str]) -> String {
    let mut record = None;
    let mut out = String::new();
    for line in lines {
        let (head, w) = Words::parse(line);
        match head.as_str() {
            "record" => {
                record = Some(NodeRecord {
                    node_id: w.int("id", 2),
                    upstream_node_id: None,
                    active: !w.has("inactive"),
                    node_name: w.text("name", "node2"),
                    node_type: NodeType::parse(&w.text("type", "standby")).expect("type"),
                    location: "dc1".into(),
                    priority: w.int("priority", 100),
                    conninfo: String::new(),
                    repluser: String::new(),
                    slot_name: None,
                    config_file: String::new(),
                })
            }
            "unregistered" => record = None,
            "ask" => {
                let o = catalog_objection(
                    w.int("candidate", 2),
                    record.as_ref(),
                    w.has("lenient"),
                    w.has("behind"),
                );
                let _ = writeln!(out, "{}", o.as_deref().unwrap_or("no objection"));
            }
            other => panic!("unknown word {other:?} in an objection case"),
        }
    }
    out.trim_end().to_string()
}

fn run_file(path: &Path, rewrite: bool) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("read the scenario file");
    let mut failures = Vec::new();
    let mut rewritten = String::new();
    for block in text.split("\n\n") {
        let lines: Vec<&str> = block.lines().collect();
        let comments: Vec<&str> = lines
            .iter()
            .copied()
            .take_while(|l| l.starts_with('#') || l.trim().is_empty())
            .collect();
        let body = &lines[comments.len()..];
        if body.is_empty() {
            rewritten.push_str(block);
            rewritten.push_str("\n\n");
            continue;
        }
        let sep = body
            .iter()
            .position(|l| *l == "----")
            .unwrap_or_else(|| panic!("{}: a case without ----:\n{block}", path.display()));
        let (command, situation) = (body[0], &body[1..sep]);
        let expected = body[sep + 1..].join("\n");
        let got = match command {
            "plan" => plan_case(situation),
            "vote" => vote_case(situation),
            "objection" => objection_case(situation),
            other => panic!("{}: unknown command {other:?}", path.display()),
        };
        if got != expected {
            failures.push(format!(
                "{}:\n{}\nexpected:\n{expected}\ngot:\n{got}",
                path.display(),
                body[..=sep].join("\n")
            ));
        }
        for l in comments.iter().chain(body[..=sep].iter()) {
            rewritten.push_str(l);
            rewritten.push('\n');
        }
        rewritten.push_str(&got);
        rewritten.push_str("\n\n");
    }
    if rewrite {
        std::fs::write(path, rewritten.trim_end().to_string() + "\n").expect("rewrite");
    }
    failures
}

#[test]
fn scenario_files_describe_what_the_code_decides() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let rewrite = std::env::var_os("REPMGR_REWRITE").is_some();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("core/testdata")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scenario files in {}", dir.display());
    let failures: Vec<String> = files.iter().flat_map(|f| run_file(f, rewrite)).collect();
    assert!(
        failures.is_empty(),
        "{} case(s) differ (REPMGR_REWRITE=1 writes what the code decides):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
