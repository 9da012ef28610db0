//! `node status|check|service|rejoin`: the local node.

use std::path::Path;

use repmgr_core::node::NodeType;
use serde_json::json;

use crate::catalog::{self, Connect};
use crate::conn::Session;
use crate::context::Ctx;
use crate::exit::{ERR_NODE_STATUS, Failure, Result, SUCCESS};
use crate::local::{self, Service};
use crate::output::{Format, pretty};
use crate::register::notice;
use repmgr_core::node::NodeRecord;

/// Records an event on `s` (a primary), as the extension's own functions do.
pub fn record_event(s: &mut Session, node_id: i32, event: &str, ok: bool, details: &str) {
    let r = s.query(
        "INSERT INTO repmgr.events (node_id, event, successful, details) VALUES ($1::int, $2, $3::boolean, $4)",
        &[Some(&node_id.to_string()), Some(event), Some(&ok.to_string()), Some(details)],
    );
    if let Err(f) = r {
        eprintln!(
            "WARNING: could not record the event \"{event}\": {}",
            f.message
        );
    }
}

// ---------------------------------------------------------------------------------------
// node status

pub fn status(ctx: &Ctx, is_shutdown_cleanly: bool) -> Result<i32> {
    if is_shutdown_cleanly {
        return shutdown_state(ctx);
    }
    let (mut s, me) = ctx.local_node()?;
    let r = s.query(
        "SELECT pg_catalog.current_setting('server_version'),
                pg_catalog.pg_size_pretty(pg_catalog.sum(pg_catalog.pg_database_size(datname))::bigint),
                (SELECT system_identifier::text FROM pg_catalog.pg_control_system()),
                st.role, st.registered_type, st.timeline, st.upstream_node_name, st.wal_receiver_status,
                st.replication_lag_seconds, st.receive_lsn::text, st.replay_lsn::text, st.current_lsn::text,
                (SELECT count(*) FROM pg_catalog.pg_stat_replication),
                pg_catalog.current_setting('max_wal_senders'),
                st.active_slots, st.inactive_slots, pg_catalog.current_setting('archive_mode'),
                st.fenced, st.diverged, st.term, st.worker_pid
           FROM pg_catalog.pg_database, repmgr.node_status() st
          GROUP BY st.role, st.registered_type, st.timeline, st.upstream_node_name, st.wal_receiver_status,
                   st.replication_lag_seconds, st.receive_lsn, st.replay_lsn, st.current_lsn, st.active_slots,
                   st.inactive_slots, st.fenced, st.diverged, st.term, st.worker_pid",
        &[],
    )?;
    let v = |i: usize| r.get(0, i).unwrap_or("").to_string();
    let mut warnings = Vec::new();
    let role = v(3);
    let registered = v(4);
    if !registered.is_empty()
        && registered != role
        && !(registered == "witness" && role == "primary")
    {
        warnings.push(format!(
            "node is registered as {registered} but running as {role}"
        ));
    }
    if registered.is_empty() {
        warnings.push("node is not registered".to_string());
    }
    if v(17) == "t" {
        warnings
            .push("node is fenced: it lost its lease and refuses commits that write".to_string());
    }
    if v(18) == "t" {
        warnings.push(
            "node's timeline diverged from the primary's: it needs repmgr node rejoin".to_string(),
        );
    }
    if v(15) != "0" && !v(15).is_empty() {
        warnings.push(format!("{} inactive replication slot(s)", v(15)));
    }
    if v(20).is_empty() {
        warnings.push("the repmgr monitoring worker is not running".to_string());
    }
    let mut items: Vec<(&str, serde_json::Value, String)> = vec![
        (
            "postgresql_version",
            json!(v(0)),
            "PostgreSQL version".into(),
        ),
        ("total_data_size", json!(v(1)), "Total data size".into()),
        (
            "conninfo",
            json!(repmgr_core::conninfo::mask(&s.conninfo)),
            "Conninfo".into(),
        ),
        ("system_identifier", json!(v(2)), "System identifier".into()),
        ("role", json!(role), "Role".into()),
        ("timeline", json!(v(5)), "Timeline".into()),
        (
            "wal_archiving",
            json!(if v(16) == "off" { "off" } else { "enabled" }),
            "WAL archiving".into(),
        ),
        (
            "replication_connections",
            json!(format!("{} (of maximal {})", v(12), v(13))),
            "Replication connections".into(),
        ),
        (
            "replication_slots",
            json!(format!("{} active, {} inactive", v(14), v(15))),
            "Replication slots".into(),
        ),
        ("term", json!(v(19)), "Failover term".into()),
        ("fenced", json!(v(17) == "t"), "Fenced".into()),
    ];
    if role == "standby" {
        items.push(("upstream_node", json!(v(6)), "Upstream node".into()));
        items.push(("wal_receiver", json!(v(7)), "WAL receiver".into()));
        items.push(("replication_lag", json!(v(8)), "Replication lag".into()));
        items.push(("last_received_lsn", json!(v(9)), "Last received LSN".into()));
        items.push((
            "last_replayed_lsn",
            json!(v(10)),
            "Last replayed LSN".into(),
        ));
    } else {
        items.push(("current_lsn", json!(v(11)), "Current LSN".into()));
    }
    match ctx.format() {
        Format::Json => {
            let mut m = serde_json::Map::new();
            m.insert("node_id".into(), json!(me.node_id));
            m.insert("node_name".into(), json!(me.node_name));
            for (k, val, _) in &items {
                m.insert((*k).into(), val.clone());
            }
            m.insert("warnings".into(), json!(warnings));
            print!("{}", pretty(&serde_json::Value::Object(m)));
        }
        Format::Csv => {
            for (k, val, _) in &items {
                let text = val.as_str().map_or_else(|| val.to_string(), str::to_string);
                println!("\"{k}\",\"{}\"", text.replace('"', "\"\""));
            }
        }
        Format::Text => {
            println!("Node \"{}\":", me.node_name);
            for (_, val, label) in &items {
                let text = val.as_str().map_or_else(|| val.to_string(), str::to_string);
                let text = if label == "Replication lag" && !text.is_empty() {
                    format!("{text} seconds")
                } else {
                    text
                };
                println!("\t{label}: {}", if text.is_empty() { "n/a" } else { &text });
            }
            if !warnings.is_empty() {
                println!("\nWARNING: following issue(s) were detected:");
                warnings.iter().for_each(|w| println!("  - {w}"));
            }
        }
    }
    Ok(if warnings.is_empty() {
        SUCCESS
    } else {
        ERR_NODE_STATUS
    })
}

/// `--is-shutdown-cleanly`, as the switchover asks it of the old primary.
fn shutdown_state(ctx: &Ctx) -> Result<i32> {
    let dir = ctx.require_data_directory("node status --is-shutdown-cleanly")?;
    if local::running_pid(&dir).is_some() {
        println!("--state=UP");
        return Ok(SUCCESS);
    }
    let cd = local::control_data(&ctx.cfg, &dir)?;
    match cd.state.as_str() {
        "shut down" | "shut down in recovery" => println!(
            "--state=SHUTDOWN --last-checkpoint-lsn={}",
            cd.checkpoint.map_or("0/0".to_string(), |l| l.to_string())
        ),
        "shutting down" => println!("--state=SHUTTING_DOWN"),
        _ => println!("--state=UNCLEAN_SHUTDOWN"),
    }
    Ok(SUCCESS)
}

// ---------------------------------------------------------------------------------------
// node check

#[derive(clap::Args, Debug, Default)]
pub struct CheckArgs {
    /// Registered role against the running role
    #[arg(long)]
    pub role: bool,
    /// Replication lag in seconds (replication_lag_warning / _critical)
    #[arg(long = "replication-lag")]
    pub replication_lag: bool,
    /// WAL files waiting to be archived (archive_ready_warning / _critical)
    #[arg(long = "archive-ready")]
    pub archive_ready: bool,
    /// This standby streams from its registered upstream
    #[arg(long)]
    pub upstream: bool,
    /// Every node registered to stream from this one does
    #[arg(long)]
    pub downstream: bool,
    /// No inactive replication slot
    #[arg(long)]
    pub slots: bool,
    /// Every downstream node's slot exists
    #[arg(long = "missing-slots")]
    pub missing_slots: bool,
    /// The server's data_directory is the configured one
    #[arg(long = "data-directory-config")]
    pub data_directory_config: bool,
    /// The monitoring worker runs and is not paused
    #[arg(long)]
    pub repmgrd: bool,
    /// Nagios output (one check only)
    #[arg(long)]
    pub nagios: bool,
}

/// A check's outcome, ordered by severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl Level {
    pub fn word(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
            Level::Unknown => "UNKNOWN",
        }
    }

    /// The Nagios exit code.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub level: Level,
    pub details: String,
    /// Nagios performance data, after the `|`.
    pub perf: Option<String>,
}

fn outcome(level: Level, details: impl Into<String>) -> Outcome {
    Outcome {
        level,
        details: details.into(),
        perf: None,
    }
}

/// The checks: option name, label, Nagios name.
const CHECKS: &[(&str, &str, &str)] = &[
    ("role", "Server role", "REPMGR_SERVER_ROLE"),
    (
        "replication-lag",
        "Replication lag",
        "REPMGR_REPLICATION_LAG",
    ),
    ("archive-ready", "WAL archiving", "REPMGR_ARCHIVE_READY"),
    ("upstream", "Upstream connection", "REPMGR_UPSTREAM_SERVER"),
    (
        "downstream",
        "Downstream servers",
        "REPMGR_DOWNSTREAM_SERVERS",
    ),
    ("slots", "Replication slots", "REPMGR_INACTIVE_SLOTS"),
    (
        "missing-slots",
        "Missing physical replication slots",
        "REPMGR_MISSING_SLOTS",
    ),
    (
        "data-directory-config",
        "Configured data directory",
        "REPMGR_DATA_DIRECTORY",
    ),
    ("repmgrd", "repmgrd", "REPMGRD"),
];

/// Grades a measure against warning and critical thresholds (critical when at or above).
pub fn grade(value: i64, warning: i64, critical: i64) -> Level {
    if value >= critical {
        Level::Critical
    } else if value > warning {
        Level::Warning
    } else {
        Level::Ok
    }
}

/// The Nagios line for a check.
pub fn nagios_line(name: &str, o: &Outcome) -> String {
    let mut line = format!("{name} {}: {}", o.level.word(), o.details);
    if let Some(p) = &o.perf {
        line.push_str(&format!(" | {p}"));
    }
    line
}

struct Checker<'a> {
    ctx: &'a Ctx,
    s: Session,
    me: NodeRecord,
    nodes: Vec<NodeRecord>,
    in_recovery: bool,
}

impl Checker<'_> {
    fn run(&mut self, which: &str) -> Outcome {
        let r = match which {
            "role" => self.role(),
            "replication-lag" => self.lag(),
            "archive-ready" => self.archive_ready(),
            "upstream" => self.upstream(),
            "downstream" => self.downstream(),
            "slots" => self.slots(),
            "missing-slots" => self.missing_slots(),
            "data-directory-config" => self.data_directory(),
            _ => self.worker(),
        };
        r.unwrap_or_else(|f| outcome(Level::Unknown, f.message))
    }

    fn role(&mut self) -> Result<Outcome> {
        let running = if !self.in_recovery {
            if self.me.node_type == NodeType::Witness {
                "witness"
            } else {
                "primary"
            }
        } else {
            "standby"
        };
        let registered = self.me.node_type.to_string();
        Ok(if running == registered {
            outcome(Level::Ok, format!("node is {running}"))
        } else {
            outcome(
                Level::Critical,
                format!("node is registered as {registered} but running as {running}"),
            )
        })
    }

    fn lag(&mut self) -> Result<Outcome> {
        let (w, c) = (
            self.ctx.cfg.replication_lag_warning,
            self.ctx.cfg.replication_lag_critical,
        );
        if !self.in_recovery {
            return Ok(outcome(
                Level::Ok,
                format!("N/A - node is {}", self.me.node_type),
            ));
        }
        let lag = self.s.value(
            "SELECT CASE WHEN pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn() THEN 0
                         ELSE EXTRACT(epoch FROM pg_catalog.clock_timestamp() - pg_catalog.pg_last_xact_replay_timestamp())::bigint END",
            &[],
        )?;
        let Some(secs) = lag.and_then(|v| v.parse::<i64>().ok()) else {
            return Ok(outcome(
                Level::Unknown,
                "unable to measure the replication lag (nothing replayed yet)",
            ));
        };
        let mut o = outcome(grade(secs, w, c), format!("{secs} seconds"));
        o.perf = Some(format!("lag={secs};{w};{c}"));
        Ok(o)
    }

    fn archive_ready(&mut self) -> Result<Outcome> {
        let (w, c) = (
            self.ctx.cfg.archive_ready_warning,
            self.ctx.cfg.archive_ready_critical,
        );
        let n: i64 = self
            .s
            .value("SELECT count(*) FROM pg_catalog.pg_ls_archive_statusdir() WHERE name LIKE '%.ready'", &[])?
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1);
        if n < 0 {
            return Ok(outcome(
                Level::Unknown,
                "unable to count the files waiting for archiving",
            ));
        }
        let mut o = outcome(grade(n, w, c), format!("{n} pending archive ready files"));
        o.perf = Some(format!("files={n};{w};{c}"));
        Ok(o)
    }

    fn upstream(&mut self) -> Result<Outcome> {
        if !self.in_recovery {
            return Ok(outcome(
                Level::Ok,
                format!("N/A - node is {}", self.me.node_type),
            ));
        }
        let Some(up) = self
            .me
            .upstream_node_id
            .and_then(|u| self.nodes.iter().find(|n| n.node_id == u))
            .cloned()
        else {
            return Ok(outcome(Level::Critical, "node has no registered upstream"));
        };
        let mut us = match up.connect() {
            Ok(s) => s,
            Err(_) => {
                return Ok(outcome(
                    Level::Critical,
                    format!("upstream {} is unreachable", up.describe()),
                ));
            }
        };
        let attached = us.value(
            "SELECT state FROM pg_catalog.pg_stat_replication WHERE application_name = $1",
            &[Some(&self.me.node_name)],
        )?;
        Ok(match attached.as_deref() {
            Some("streaming") => outcome(
                Level::Ok,
                format!("node is attached to its upstream {}", up.describe()),
            ),
            Some(state) => outcome(
                Level::Critical,
                format!(
                    "node is {state}, not streaming, from its upstream {}",
                    up.describe()
                ),
            ),
            None => outcome(
                Level::Critical,
                format!("node is not attached to its upstream {}", up.describe()),
            ),
        })
    }

    fn downstream(&mut self) -> Result<Outcome> {
        let expected: Vec<&NodeRecord> = self
            .nodes
            .iter()
            .filter(|n| {
                n.upstream_node_id == Some(self.me.node_id)
                    && n.active
                    && n.node_type == NodeType::Standby
            })
            .collect();
        let r = self.s.query(
            "SELECT application_name FROM pg_catalog.pg_stat_replication WHERE state = 'streaming'",
            &[],
        )?;
        let streaming: Vec<String> = r.rows.iter().filter_map(|x| x[0].clone()).collect();
        let missing: Vec<String> = expected
            .iter()
            .filter(|n| !streaming.contains(&n.node_name))
            .map(|n| n.describe())
            .collect();
        let attached = expected.len() - missing.len();
        let mut o = if expected.is_empty() {
            outcome(Level::Ok, "this node has no downstream nodes")
        } else if missing.is_empty() {
            outcome(
                Level::Ok,
                format!("{attached} of {} downstream nodes attached", expected.len()),
            )
        } else {
            outcome(
                Level::Critical,
                format!(
                    "{} of {} downstream nodes not attached: {}",
                    missing.len(),
                    expected.len(),
                    missing.join(", ")
                ),
            )
        };
        o.perf = Some(format!("attached={attached}, missing={}", missing.len()));
        Ok(o)
    }

    fn slots(&mut self) -> Result<Outcome> {
        let r = self.s.query(
            "SELECT slot_name FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical' AND NOT active ORDER BY 1",
            &[],
        )?;
        let inactive: Vec<String> = r.rows.iter().filter_map(|x| x[0].clone()).collect();
        let total: i64 = self
            .s
            .value(
                "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical'",
                &[],
            )?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut o = if inactive.is_empty() {
            outcome(
                Level::Ok,
                format!("node has {total} physical replication slot(s), none inactive"),
            )
        } else {
            outcome(
                Level::Critical,
                format!(
                    "{} of {total} physical replication slots are inactive: {}",
                    inactive.len(),
                    inactive.join(", ")
                ),
            )
        };
        o.perf = Some(format!("slots={total};{}", inactive.len()));
        Ok(o)
    }

    fn missing_slots(&mut self) -> Result<Outcome> {
        let r = self
            .s
            .query("SELECT slot_name FROM pg_catalog.pg_replication_slots", &[])?;
        let present: Vec<String> = r.rows.iter().filter_map(|x| x[0].clone()).collect();
        let missing: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| {
                n.upstream_node_id == Some(self.me.node_id)
                    && n.active
                    && n.node_type == NodeType::Standby
            })
            .filter_map(|n| n.slot_name.clone())
            .filter(|s| !present.contains(s))
            .collect();
        let mut o = if missing.is_empty() {
            outcome(Level::Ok, "node has no missing physical replication slots")
        } else {
            outcome(
                Level::Critical,
                format!(
                    "{} physical replication slot(s) missing: {}",
                    missing.len(),
                    missing.join(", ")
                ),
            )
        };
        o.perf = Some(format!("missing_slots={}", missing.len()));
        Ok(o)
    }

    fn data_directory(&mut self) -> Result<Outcome> {
        let actual = self
            .s
            .value("SELECT pg_catalog.current_setting('data_directory')", &[])?
            .unwrap_or_default();
        let Some(configured) = self.ctx.data_directory() else {
            return Ok(outcome(
                Level::Unknown,
                "no data directory configured (data_directory in repmgr.conf, or -D)",
            ));
        };
        let same = |a: &Path, b: &Path| {
            std::fs::canonicalize(a)
                .ok()
                .zip(std::fs::canonicalize(b).ok())
                .is_some_and(|(x, y)| x == y)
                || a == b
        };
        Ok(if !same(&configured, Path::new(&actual)) {
            outcome(
                Level::Critical,
                format!(
                    "configured data directory \"{}\" is not the server's \"{actual}\"",
                    configured.display()
                ),
            )
        } else if !configured.join("PG_VERSION").exists() {
            outcome(
                Level::Critical,
                format!(
                    "\"{}\" is not a PostgreSQL data directory (or is not readable here)",
                    configured.display()
                ),
            )
        } else {
            outcome(
                Level::Ok,
                format!("configured data directory \"{actual}\" is the server's"),
            )
        })
    }

    fn worker(&mut self) -> Result<Outcome> {
        let r = self.s.query(
            "SELECT repmgr.repmgrd_is_running(), repmgr.repmgrd_is_paused()",
            &[],
        )?;
        Ok(match (r.get(0, 0), r.get(0, 1)) {
            (Some("t"), Some("t")) => outcome(Level::Warning, "repmgrd running but paused"),
            (Some("t"), _) => outcome(Level::Ok, "repmgrd running"),
            _ => outcome(Level::Critical, "repmgrd not running"),
        })
    }
}

pub fn check(ctx: &Ctx, a: &CheckArgs) -> Result<i32> {
    let chosen: Vec<&str> = [
        (a.role, "role"),
        (a.replication_lag, "replication-lag"),
        (a.archive_ready, "archive-ready"),
        (a.upstream, "upstream"),
        (a.downstream, "downstream"),
        (a.slots, "slots"),
        (a.missing_slots, "missing-slots"),
        (a.data_directory_config, "data-directory-config"),
        (a.repmgrd, "repmgrd"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect();
    if chosen.len() > 1 {
        return Err(Failure::new(
            crate::exit::ERR_BAD_ARGUMENT,
            "give one check option, or none for all checks",
        ));
    }
    if a.nagios && chosen.is_empty() {
        return Err(Failure::config(
            "--nagios needs a single check option (for example --role)",
        ));
    }
    let single = chosen.first().copied();
    let (mut s, me) = match ctx.local_node() {
        Ok(v) => v,
        Err(f) if single.is_some() => {
            // A monitoring system needs an answer, not a crash.
            let name = CHECKS
                .iter()
                .find(|c| Some(c.0) == single)
                .map_or("REPMGR", |c| c.2);
            let o = outcome(Level::Unknown, f.message.clone());
            if a.nagios {
                println!("{}", nagios_line(name, &o))
            } else {
                println!("UNKNOWN ({})", o.details)
            }
            return Ok(Level::Unknown.code());
        }
        Err(f) => return Err(f),
    };
    let nodes = catalog::nodes(&mut s)?;
    let me_row = catalog::node(&nodes, me.node_id)?.clone();
    let in_recovery = s.in_recovery()?;
    let mut c = Checker {
        ctx,
        s,
        me: me_row,
        nodes,
        in_recovery,
    };
    if let Some(which) = single {
        let (_, label, name) = CHECKS.iter().find(|x| x.0 == which).expect("a known check");
        let o = c.run(which);
        match (a.nagios, ctx.format()) {
            (true, _) => println!("{}", nagios_line(name, &o)),
            (false, Format::Json) => print!(
                "{}",
                pretty(
                    &json!({"node_id": me.node_id, "node_name": me.node_name, "checks": [{"check": which, "status": o.level.word(), "details": o.details}]})
                )
            ),
            (false, Format::Csv) => println!(
                "\"{label}\",\"{}\",\"{}\"",
                o.level.word(),
                o.details.replace('"', "\"\"")
            ),
            (false, Format::Text) => println!("{} ({})", o.level.word(), o.details),
        }
        return Ok(o.level.code());
    }
    let results: Vec<(&str, &str, Outcome)> = CHECKS[..8]
        .iter()
        .map(|(opt, label, _)| (*opt, *label, c.run(opt)))
        .collect();
    match ctx.format() {
        Format::Json => {
            let checks: Vec<_> = results
                .iter()
                .map(
                    |(k, _, o)| json!({"check": k, "status": o.level.word(), "details": o.details}),
                )
                .collect();
            print!(
                "{}",
                pretty(
                    &json!({"node_id": me.node_id, "node_name": me.node_name, "checks": checks})
                )
            );
        }
        Format::Csv => {
            println!("\"Node name\",\"{}\"", me.node_name);
            println!("\"Node ID\",\"{}\"", me.node_id);
            for (_, label, o) in &results {
                println!(
                    "\"{label}\",\"{}\",\"{}\"",
                    o.level.word(),
                    o.details.replace('"', "\"\"")
                );
            }
        }
        Format::Text => {
            println!("Node \"{}\":", me.node_name);
            for (_, label, o) in &results {
                println!("\t{label}: {} ({})", o.level.word(), o.details);
            }
        }
    }
    Ok(if results.iter().all(|(_, _, o)| o.level == Level::Ok) {
        SUCCESS
    } else {
        ERR_NODE_STATUS
    })
}

// ---------------------------------------------------------------------------------------
// node service

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
    Reload,
    Promote,
}

impl ServiceAction {
    fn service(self) -> Service {
        match self {
            ServiceAction::Start => Service::Start,
            ServiceAction::Stop => Service::Stop,
            ServiceAction::Restart => Service::Restart,
            ServiceAction::Reload => Service::Reload,
            ServiceAction::Promote => Service::Promote,
        }
    }
}

pub fn service(ctx: &Ctx, action: ServiceAction, checkpoint: bool, list: bool) -> Result<i32> {
    let dir = ctx.require_data_directory("node service")?;
    let line = local::service_command(&ctx.cfg, &dir, action.service());
    if list || ctx.g.dry_run {
        println!("{line}");
        return Ok(SUCCESS);
    }
    if checkpoint && matches!(action, ServiceAction::Stop | ServiceAction::Restart) {
        match ctx
            .connect_local()
            .and_then(|mut s| s.query("CHECKPOINT", &[]))
        {
            Ok(_) => notice("CHECKPOINT done"),
            Err(f) => eprintln!(
                "WARNING: could not run CHECKPOINT before stopping: {}",
                f.message
            ),
        }
    }
    local::service(&ctx.cfg, &dir, action.service())?;
    Ok(SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grades_and_nagios_lines() {
        assert_eq!(grade(0, 300, 600), Level::Ok);
        assert_eq!(grade(300, 300, 600), Level::Ok);
        assert_eq!(grade(301, 300, 600), Level::Warning);
        assert_eq!(grade(600, 300, 600), Level::Critical);
        let mut o = outcome(Level::Warning, "400 seconds");
        o.perf = Some("lag=400;300;600".into());
        assert_eq!(
            nagios_line("REPMGR_REPLICATION_LAG", &o),
            "REPMGR_REPLICATION_LAG WARNING: 400 seconds | lag=400;300;600"
        );
        assert_eq!(Level::Unknown.code(), 3);
        assert_eq!(Level::Critical.code(), 2);
    }
}
