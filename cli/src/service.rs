//! `service status|pause|unpause`: every node's monitoring worker.

use serde_json::json;

use crate::catalog::{self, Connect};
use crate::context::Ctx;
use crate::exit::{ERR_REPMGRD_PAUSE, Failure, Result, SUCCESS};
use crate::output::{Format, Table, opt};
use crate::register::notice;
use repmgr_core::node::NodeRecord;

pub fn status(ctx: &Ctx) -> Result<i32> {
    let mut s = ctx.connect_local()?;
    let r = s.query(
        "SELECT d.node_id, d.node_name, n.type, d.role, d.reachable, d.worker_running, d.worker_pid, d.paused,
                d.upstream_last_seen, un.node_name, d.priority, d.location
           FROM repmgr.daemon_status() d
           JOIN repmgr.nodes n ON n.node_id = d.node_id
           LEFT JOIN repmgr.nodes un ON un.node_id = n.upstream_node_id
          ORDER BY d.node_id",
        &[],
    )?;
    let mut t = Table::new(&[
        ("id", "ID"),
        ("name", "Name"),
        ("role", "Role"),
        ("status", "Status"),
        ("upstream", "Upstream"),
        ("worker", "repmgrd"),
        ("pid", "PID"),
        ("paused", "Paused?"),
        ("upstream_last_seen", "Upstream last seen"),
        ("priority", "Priority"),
        ("location", "Location"),
    ]);
    let json = ctx.format() == Format::Json;
    let mut problems = false;
    for row in &r.rows {
        let text = |i: usize| row.get(i).cloned().flatten();
        let flag = |i: usize| text(i).map(|v| v == "t");
        let reachable = flag(4) == Some(true);
        let running = flag(5);
        let role = text(2).unwrap_or_default();
        problems |= !reachable || running != Some(true);
        let seen = text(8).and_then(|v| v.parse::<i64>().ok());
        t.push(vec![
            json!(text(0).and_then(|v| v.parse::<i64>().ok())),
            opt(text(1)),
            json!(role),
            json!(if reachable { "running" } else { "unreachable" }),
            opt(text(9)),
            if json {
                opt(running)
            } else {
                json!(match running {
                    Some(true) => "running",
                    Some(false) => "not running",
                    None => "n/a",
                })
            },
            opt(text(6)
                .and_then(|v| v.parse::<i64>().ok())
                .filter(|p| *p > 0)),
            if json {
                opt(flag(7))
            } else {
                json!(match flag(7) {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "n/a",
                })
            },
            match (seen, json) {
                (Some(s), true) if s >= 0 => json!(s),
                (Some(s), false) if s >= 0 => json!(format!("{s} second(s) ago")),
                (_, true) => json!(null),
                _ => json!("n/a"),
            },
            opt(text(10).and_then(|v| v.parse::<i64>().ok())),
            opt(text(11)),
        ]);
    }
    print!("{}", t.render(ctx.format()));
    Ok(if problems {
        crate::exit::ERR_NODE_STATUS
    } else {
        SUCCESS
    })
}

/// Sets the pause flag on one node.
fn set_paused(n: &NodeRecord, on: bool, dry_run: bool) -> Result<()> {
    let mut s = n.connect()?;
    if !dry_run {
        s.query(
            "SELECT repmgr.repmgrd_pause($1::boolean)",
            &[Some(&on.to_string())],
        )?;
    }
    Ok(())
}

/// Pauses or unpauses every node's automatic actions; each node's answer is reported.
pub fn pause(ctx: &Ctx, on: bool) -> Result<i32> {
    let mut s = ctx.connect_local()?;
    let nodes = catalog::nodes(&mut s)?;
    let word = if on { "paused" } else { "unpaused" };
    let mut failed = Vec::new();
    for n in &nodes {
        match set_paused(n, on, ctx.g.dry_run) {
            Ok(()) if ctx.g.dry_run => {
                notice(format!("{} is reachable and would be {word}", n.describe()))
            }
            Ok(()) => notice(format!("{} {word}", n.describe())),
            Err(f) => {
                eprintln!(
                    "WARNING: {} could not be {word}: {}",
                    n.describe(),
                    f.message
                );
                failed.push(n.describe());
            }
        }
    }
    if failed.is_empty() {
        Ok(SUCCESS)
    } else {
        Err(Failure::new(
            ERR_REPMGRD_PAUSE,
            format!(
                "{} on {} of {} nodes: {}",
                if on { "pause failed" } else { "unpause failed" },
                failed.len(),
                nodes.len(),
                failed.join(", ")
            ),
        )
        .hint(format!(
            "Run repmgr service {} again once those nodes are reachable.",
            if on { "pause" } else { "unpause" }
        )))
    }
}

/// Pauses every reachable node and returns those that were not paused before, to unpause
/// later; an unreachable active node is an error unless `force`.
pub fn pause_all(nodes: &[NodeRecord], force: bool) -> Result<Vec<NodeRecord>> {
    let mut changed = Vec::new();
    for n in nodes {
        let state = n.connect().and_then(|mut s| {
            let was = s.value("SELECT repmgr.repmgrd_is_paused()", &[])?;
            s.query("SELECT repmgr.repmgrd_pause(true)", &[])?;
            Ok(was)
        });
        match state {
            Ok(was) => {
                if was.as_deref() != Some("t") {
                    changed.push(n.clone());
                }
            }
            Err(f) if n.active && !force => {
                unpause(&changed);
                return Err(f);
            }
            Err(f) => eprintln!("WARNING: could not pause {}: {}", n.describe(), f.message),
        }
    }
    Ok(changed)
}

/// Unpauses `nodes`, warning about any that cannot be reached.
pub fn unpause(nodes: &[NodeRecord]) -> bool {
    let mut all = true;
    for n in nodes {
        if let Err(f) = set_paused(n, false, false) {
            eprintln!("WARNING: could not unpause {}: {}", n.describe(), f.message);
            all = false;
        }
    }
    all
}
