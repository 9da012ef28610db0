//! `cluster show|matrix|crosscheck|event|cleanup`: views over the whole cluster.

use std::collections::{BTreeMap, HashMap};

use repmgr_core::conninfo;
use repmgr_core::node::NodeType;
use serde_json::{Value, json};

use crate::catalog::{self, Connect};
use crate::conn::Session;
use crate::context::Ctx;
use crate::exit::{ERR_BAD_SSH, ERR_NODE_STATUS, Failure, Result, SUCCESS};
use crate::output::{Format, Table, csv_field, opt, pretty, text_table};
use crate::remote;
use repmgr_core::node::NodeRecord;

/// What connecting to a node found.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Unreachable,
    Up {
        in_recovery: bool,
        timeline: Option<i32>,
        /// application_name of every standby streaming from it.
        streaming: Vec<String>,
        /// Its automatic rejoin, while it needs one: state word and what it says.
        rejoin: Option<(String, String)>,
    },
}

/// What the status column adds for a node whose automatic rejoin is `state`.
fn rejoin_mark(state: &str) -> &'static str {
    match state {
        "waiting" => "rejoin pending",
        "rejoining" => "rejoining",
        "held" => "rejoin held",
        _ => "rejoin failed",
    }
}

/// repmgr's status column, and the problem it signals (if any).
pub fn status(node: &NodeRecord, seen: &Seen) -> (&'static str, Option<String>) {
    let who = format!("node \"{}\" (ID: {})", node.node_name, node.node_id);
    let recovery = match seen {
        Seen::Unreachable => None,
        Seen::Up { in_recovery, .. } => Some(*in_recovery),
    };
    match (node.node_type, node.active, recovery) {
        (_, true, None) => (
            "? unreachable",
            Some(format!(
                "{who} is registered as an active {} but is unreachable",
                node.node_type
            )),
        ),
        (_, false, None) => ("- failed", None),
        (NodeType::Primary, true, Some(false)) => ("* running", None),
        (NodeType::Primary, _, Some(true)) => (
            "! running as standby",
            Some(format!(
                "{who} is registered as primary but running as standby"
            )),
        ),
        (NodeType::Standby, true, Some(true)) => ("  running", None),
        (NodeType::Standby, _, Some(false)) => (
            "! running as primary",
            Some(format!(
                "{who} is registered as standby but running as primary"
            )),
        ),
        (NodeType::Witness, true, Some(_)) => ("* running", None),
        (_, false, Some(_)) => (
            "! running",
            Some(format!("{who} is registered as inactive but is running")),
        ),
    }
}

/// The upstream column: the name, `? name` when it cannot be verified, `! name` when the node
/// is not attached to it; and the problem, if any.
pub fn upstream(node: &NodeRecord, up: Option<(&NodeRecord, &Seen)>) -> (String, Option<String>) {
    let Some((u, seen)) = up else {
        return (String::new(), None);
    };
    if node.node_type != NodeType::Standby || !node.active {
        return (u.node_name.clone(), None);
    }
    match seen {
        Seen::Unreachable => (format!("? {}", u.node_name), None),
        Seen::Up { streaming, .. } if streaming.contains(&node.node_name) => {
            (u.node_name.clone(), None)
        }
        Seen::Up { .. } => (
            format!("! {}", u.node_name),
            Some(format!(
                "node \"{}\" (ID: {}) is not attached to its upstream node \"{}\" (ID: {})",
                node.node_name, node.node_id, u.node_name, u.node_id
            )),
        ),
    }
}

/// Connects to `node` and reads what `cluster show` needs.
fn look(node: &NodeRecord) -> Seen {
    let Ok(mut s) = node.connect() else {
        return Seen::Unreachable;
    };
    let r = s.query(
        "SELECT pg_catalog.pg_is_in_recovery(),
                CASE WHEN pg_catalog.pg_is_in_recovery()
                     THEN (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())
                     -- Just after a promotion the last checkpoint is still on the old timeline.
                     ELSE ('x' || pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int
                END,
                (SELECT pg_catalog.string_agg(application_name, E'\\n') FROM pg_catalog.pg_stat_replication WHERE state = 'streaming')",
        &[],
    );
    match r {
        Ok(r) => {
            let recovery = r.get(0, 0) == Some("t");
            // A standby's checkpoint lags its timeline; ask what it receives.
            let timeline = if recovery {
                s.value(
                    "SELECT received_tli FROM pg_catalog.pg_stat_wal_receiver",
                    &[],
                )
                .ok()
                .flatten()
                .or_else(|| r.get(0, 1).map(str::to_string))
            } else {
                r.get(0, 1).map(str::to_string)
            };
            // Its own query: a node whose extension predates these columns still shows.
            let rejoin = s
                .query(
                    "SELECT rejoin_state, rejoin_detail FROM repmgr.node_status() WHERE rejoin_state IS NOT NULL",
                    &[],
                )
                .ok()
                .and_then(|r| Some((r.get(0, 0)?.to_string(), r.get(0, 1)?.to_string())));
            Seen::Up {
                in_recovery: recovery,
                timeline: timeline.and_then(|t| t.parse().ok()),
                streaming: r
                    .get(0, 2)
                    .map(|v| v.lines().map(str::to_string).collect())
                    .unwrap_or_default(),
                rejoin,
            }
        }
        Err(_) => Seen::Unreachable,
    }
}

/// Reads the catalog through the local node (or `-d`).
fn catalog_nodes(ctx: &Ctx) -> Result<Vec<NodeRecord>> {
    let mut s = ctx.connect_local()?;
    let nodes = catalog::nodes(&mut s)?;
    if nodes.is_empty() {
        return Err(Failure::config("no nodes are registered")
            .hint("Register the primary first: repmgr primary register (or SELECT repmgr.register_primary())."));
    }
    Ok(nodes)
}

/// `cluster show` for `nodes` as `seen`: what goes to stdout, and the problems found.
pub fn render_show(
    nodes: &[NodeRecord],
    seen: &HashMap<i32, Seen>,
    compact: bool,
    format: Format,
) -> (String, Vec<String>) {
    let mut warnings = Vec::new();
    let mut table = Table::new(&[
        ("id", "ID"),
        ("name", "Name"),
        ("role", "Role"),
        ("status", "Status"),
        ("upstream", "Upstream"),
        ("location", "Location"),
        ("priority", "Priority"),
        ("timeline", "Timeline"),
        ("conninfo", "Connection string"),
    ]);
    let mut csv = String::new();
    let mut json_nodes = Vec::new();
    for n in nodes {
        let s = seen.get(&n.node_id).unwrap_or(&Seen::Unreachable);
        let (st, w) = status(n, s);
        warnings.extend(w);
        let rejoin = match s {
            Seen::Up {
                rejoin: Some(r), ..
            } => Some(r),
            _ => None,
        };
        let st = match rejoin {
            Some((state, detail)) => {
                warnings.push(format!(
                    "node \"{}\" (ID: {}) needs a rejoin ({detail})",
                    n.node_name, n.node_id
                ));
                format!("{st}, {}", rejoin_mark(state))
            }
            None => st.to_string(),
        };
        let up = n
            .upstream_node_id
            .and_then(|u| nodes.iter().find(|x| x.node_id == u))
            .map(|u| (u, seen.get(&u.node_id).unwrap_or(&Seen::Unreachable)));
        let (up_text, w) = upstream(n, up);
        warnings.extend(w);
        let (reachable, recovery, timeline) = match s {
            Seen::Unreachable => (false, None, None),
            Seen::Up {
                in_recovery,
                timeline,
                ..
            } => (true, Some(*in_recovery), *timeline),
        };
        csv.push_str(&format!(
            "{},{},{}\n",
            n.node_id,
            if reachable { 0 } else { -1 },
            recovery.map_or(-1, i32::from)
        ));
        let tl = if n.node_type == NodeType::Witness {
            json!("n/a")
        } else {
            timeline.map_or(json!("?"), |t| json!(t))
        };
        table.push(vec![
            json!(n.node_id),
            json!(n.node_name),
            json!(n.node_type.to_string()),
            json!(st),
            json!(up_text),
            json!(n.location),
            json!(n.priority),
            tl,
            json!(conninfo::mask(&n.conninfo)),
        ]);
        json_nodes.push(json!({
            "id": n.node_id,
            "name": n.node_name,
            "role": n.node_type.to_string(),
            "active": n.active,
            "status": st.trim(),
            "reachable": reachable,
            "in_recovery": opt(recovery),
            "upstream_id": opt(n.upstream_node_id),
            "upstream_name": opt(catalog::upstream_name(nodes, n)),
            "location": n.location,
            "priority": n.priority,
            "timeline": opt(timeline),
            "conninfo": conninfo::mask(&n.conninfo),
            "rejoin_state": opt(rejoin.map(|r| r.0.as_str())),
            "rejoin_detail": opt(rejoin.map(|r| r.1.as_str())),
        }));
    }
    if compact {
        table.columns.pop();
        table.rows.iter_mut().for_each(|r| {
            r.pop();
        });
    }
    let out = match format {
        Format::Text => table.text(),
        // repmgr's CSV: node_id, availability (0 up, -1 down), recovery (0/1, -1 unknown).
        Format::Csv => csv,
        Format::Json => pretty(&json!({"nodes": json_nodes, "warnings": warnings})),
    };
    (out, warnings)
}

pub fn show(ctx: &Ctx, compact: bool) -> Result<i32> {
    let nodes = catalog_nodes(ctx)?;
    let seen: HashMap<i32, Seen> = nodes.iter().map(|n| (n.node_id, look(n))).collect();
    let (out, warnings) = render_show(&nodes, &seen, compact, ctx.format());
    print!("{out}");
    if ctx.format() == Format::Text && !warnings.is_empty() {
        eprintln!("\nWARNING: following issues were detected");
        warnings.iter().for_each(|w| eprintln!("  - {w}"));
    }
    Ok(if warnings.is_empty() {
        SUCCESS
    } else {
        ERR_NODE_STATUS
    })
}

/// The matrix as `source_node_id, target_node_id, reachable` rows from one node's server.
fn matrix_from(s: &mut Session) -> Result<Vec<(i32, i32, Option<bool>)>> {
    let r = s.query(
        "SELECT source_node_id, target_node_id, reachable FROM repmgr.cluster_matrix()",
        &[],
    )?;
    Ok((0..r.rows.len())
        .filter_map(|i| {
            Some((
                r.get(i, 0)?.parse().ok()?,
                r.get(i, 1)?.parse().ok()?,
                r.get(i, 2).map(|v| v == "t"),
            ))
        })
        .collect())
}

/// Prints a matrix: rows are sources, columns targets; `*` reachable, `x` not, `?` unknown.
fn print_matrix(
    ctx: &Ctx,
    nodes: &[NodeRecord],
    cells: &BTreeMap<(i32, i32), Option<bool>>,
) -> i32 {
    let mark = |v: Option<&Option<bool>>| match v {
        Some(Some(true)) => "*",
        Some(Some(false)) => "x",
        _ => "?",
    };
    let problems = nodes
        .iter()
        .flat_map(|a| nodes.iter().map(move |b| (a.node_id, b.node_id)))
        .any(|k| cells.get(&k) != Some(&Some(true)));
    match ctx.format() {
        Format::Json => {
            let rows: Vec<Value> = cells
                .iter()
                .map(
                    |((a, b), v)| json!({"source_node_id": a, "target_node_id": b, "reachable": v}),
                )
                .collect();
            print!("{}", pretty(&Value::Array(rows)));
        }
        Format::Csv => {
            for ((a, b), v) in cells {
                let code = match v {
                    Some(true) => 0,
                    Some(false) => -1,
                    None => -2,
                };
                println!("{a},{b},{code}");
            }
        }
        Format::Text => {
            let ids: Vec<String> = nodes.iter().map(|n| n.node_id.to_string()).collect();
            let mut header = vec!["Name", "ID"];
            header.extend(ids.iter().map(String::as_str));
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|a| {
                    let mut r = vec![a.node_name.clone(), a.node_id.to_string()];
                    r.extend(
                        nodes
                            .iter()
                            .map(|b| mark(cells.get(&(a.node_id, b.node_id))).to_string()),
                    );
                    r
                })
                .collect();
            print!("{}", text_table(&header, &rows));
        }
    }
    if problems { ERR_NODE_STATUS } else { SUCCESS }
}

pub fn matrix(ctx: &Ctx) -> Result<i32> {
    let mut s = ctx.connect_local()?;
    let nodes = catalog::nodes(&mut s)?;
    let cells: BTreeMap<(i32, i32), Option<bool>> = matrix_from(&mut s)?
        .into_iter()
        .map(|(a, b, v)| ((a, b), v))
        .collect();
    Ok(print_matrix(ctx, &nodes, &cells))
}

/// Every node's matrix as that node sees it, merged: a pair is reachable if any view says so,
/// unreachable if a view says so and none says otherwise, unknown if no view could tell. As
/// repmgr does, each view is asked on the node's own machine: over ssh (`repmgr cluster matrix
/// --csv` there, with `ssh_options`, bounded) for a node on another host, of its server
/// directly for one on this machine. A view that cannot be had is named on stderr and left
/// to the others; ssh failing exits 12 (ERR_BAD_SSH), unless a pair is not reachable (25).
pub fn crosscheck(ctx: &Ctx) -> Result<i32> {
    let nodes = catalog_nodes(ctx)?;
    let mut cells: BTreeMap<(i32, i32), Option<bool>> = BTreeMap::new();
    let mut ssh_failed = false;
    for n in &nodes {
        let view = if remote::is_local_host(&remote::host_of(n)) {
            n.connect().and_then(|mut s| matrix_from(&mut s))
        } else {
            matrix_over_ssh(ctx, n)
        };
        let view = match view {
            Ok(v) => v,
            Err(f) => {
                ssh_failed |= f.code == ERR_BAD_SSH;
                f.warn(&format!("the view of {} is left out", n.describe()));
                continue;
            }
        };
        for (a, b, v) in view {
            let e = cells.entry((a, b)).or_insert(None);
            *e = match (*e, v) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), _) | (_, Some(false)) => Some(false),
                _ => None,
            };
        }
    }
    let code = print_matrix(ctx, &nodes, &cells);
    Ok(if code == SUCCESS && ssh_failed {
        ERR_BAD_SSH
    } else {
        code
    })
}

/// Node `n`'s matrix, from `repmgr cluster matrix --csv` run on its machine over ssh.
fn matrix_over_ssh(ctx: &Ctx, n: &NodeRecord) -> Result<Vec<(i32, i32, Option<bool>)>> {
    let args = ["cluster", "matrix", "--csv"].map(String::from);
    let ran = remote::repmgr(&ctx.cfg, n, &args, remote::QUICK)?;
    // Exit 25 is a matrix with a pair not reachable: still the node's view.
    if ran.code != SUCCESS && ran.code != ERR_NODE_STATUS {
        return Err(Failure::new(
            ERR_NODE_STATUS,
            format!(
                "repmgr cluster matrix on its machine exited {}: {}",
                ran.code,
                ran.stderr.trim()
            ),
        )
        .hint("Run repmgr cluster matrix on that node to see why."));
    }
    Ok(parse_matrix_csv(&ran.stdout))
}

/// `source,target,code` rows as `cluster matrix --csv` prints them (0 reachable, -1 not,
/// -2 unknown); other lines are skipped.
fn parse_matrix_csv(text: &str) -> Vec<(i32, i32, Option<bool>)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<i32> = l
                .split(',')
                .map(|x| x.trim().parse().ok())
                .collect::<Option<_>>()?;
            match f[..] {
                [a, b, 0] => Some((a, b, Some(true))),
                [a, b, -1] => Some((a, b, Some(false))),
                [a, b, _] => Some((a, b, None)),
                _ => None,
            }
        })
        .collect()
}

pub fn event(
    ctx: &Ctx,
    limit: i64,
    event: Option<&str>,
    node_id: Option<i32>,
    all: bool,
) -> Result<i32> {
    if limit < 1 {
        return Err(Failure::new(
            crate::exit::ERR_BAD_ARGUMENT,
            "--limit must be 1 or greater",
        ));
    }
    let mut s = ctx.connect_local()?;
    let node = node_id.map(|n| n.to_string());
    let lim = (!all).then(|| limit.to_string());
    let r = s.query(
        "SELECT e.node_id, n.node_name, e.event, e.successful,
                pg_catalog.to_char(e.event_timestamp, 'YYYY-MM-DD HH24:MI:SS'), e.details
           FROM repmgr.events e LEFT JOIN repmgr.nodes n ON n.node_id = e.node_id
          WHERE ($1::text IS NULL OR e.event = $1) AND ($2::int IS NULL OR e.node_id = $2)
          ORDER BY e.event_timestamp DESC
          LIMIT $3::bigint",
        &[event, node.as_deref(), lim.as_deref()],
    )?;
    let mut t = Table::new(&[
        ("node_id", "Node ID"),
        ("name", "Name"),
        ("event", "Event"),
        ("successful", "OK"),
        ("timestamp", "Timestamp"),
        ("details", "Details"),
    ]);
    for row in &r.rows {
        let text = |i: usize| row.get(i).cloned().flatten();
        let ok = text(3).as_deref() == Some("t");
        t.push(vec![
            opt(text(0).and_then(|v| v.parse::<i64>().ok())),
            opt(text(1)),
            opt(text(2)),
            if ctx.format() == Format::Json {
                json!(ok)
            } else {
                json!(if ok { "t" } else { "f" })
            },
            opt(text(4)),
            opt(text(5).map(|d| conninfo::mask_in_text(&d))),
        ]);
    }
    if t.rows.is_empty() && ctx.format() == Format::Text {
        println!("no matching events found");
        return Ok(SUCCESS);
    }
    if ctx.format() == Format::Csv {
        // repmgr's CSV has no header and no details.
        for r in &t.rows {
            let f: Vec<String> = r[..5]
                .iter()
                .map(|v| csv_field(&v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                .collect();
            println!("{}", f.join(","));
        }
        return Ok(SUCCESS);
    }
    print!("{}", t.render(ctx.format()));
    Ok(SUCCESS)
}

pub fn cleanup(ctx: &Ctx, keep_days: i64, node_id: Option<i32>) -> Result<i32> {
    if keep_days < 0 {
        return Err(Failure::new(
            crate::exit::ERR_BAD_ARGUMENT,
            "--keep-history must be 0 or greater",
        ));
    }
    let mut local = ctx.connect_local()?;
    let nodes = catalog::nodes(&mut local)?;
    let (primary, mut s) = catalog::connect_primary(&nodes)?;
    let node = node_id.map(|n| n.to_string());
    let days = keep_days.to_string();
    let deleted = s.value(
        "WITH gone AS (DELETE FROM repmgr.monitoring_history
                        WHERE pg_catalog.age(pg_catalog.now(), last_monitor_time) >= $1::int * interval '1 day'
                          AND ($2::int IS NULL OR standby_node_id = $2) RETURNING 1)
         SELECT count(*) FROM gone",
        &[Some(&days), node.as_deref()],
    )?;
    s.query("VACUUM repmgr.monitoring_history", &[])?;
    let details = format!(
        "monitoring history older than {keep_days} day(s) deleted{}: {} row(s)",
        node_id.map_or(String::new(), |n| format!(" for node {n}")),
        deleted.unwrap_or_default()
    );
    crate::node::record_event(
        &mut s,
        primary.node_id,
        repmgr_core::event::CLUSTER_CLEANUP,
        true,
        &details,
    );
    crate::register::notice(details);
    Ok(SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: i32, name: &str, t: NodeType, active: bool, upstream: Option<i32>) -> NodeRecord {
        NodeRecord {
            node_id: id,
            node_name: name.into(),
            node_type: t,
            active,
            upstream_node_id: upstream,
            location: "default".into(),
            priority: 100,
            conninfo: "host=a password=x".into(),
            repluser: "repmgr".into(),
            slot_name: None,
            config_file: String::new(),
        }
    }

    fn up(recovery: bool, streaming: &[&str]) -> Seen {
        Seen::Up {
            in_recovery: recovery,
            timeline: Some(1),
            streaming: streaming.iter().map(|s| s.to_string()).collect(),
            rejoin: None,
        }
    }

    #[test]
    fn a_remote_matrix_is_read_from_its_csv() {
        let text = "1,1,0\n1,2,-1\n2,1,-2\nWARNING: something\n3,x,0\n";
        assert_eq!(
            parse_matrix_csv(text),
            vec![(1, 1, Some(true)), (1, 2, Some(false)), (2, 1, None)]
        );
    }

    #[test]
    fn status_strings_follow_repmgr() {
        let p = node(1, "a", NodeType::Primary, true, None);
        assert_eq!(status(&p, &up(false, &[])), ("* running", None));
        assert_eq!(
            status(
                &node(2, "b", NodeType::Standby, true, Some(1)),
                &up(true, &[])
            ),
            ("  running", None)
        );
        assert_eq!(
            status(
                &node(3, "w", NodeType::Witness, true, Some(1)),
                &up(false, &[])
            ),
            ("* running", None)
        );
        assert_eq!(
            status(
                &node(1, "a", NodeType::Primary, false, None),
                &Seen::Unreachable
            ),
            ("- failed", None)
        );
        let (s, w) = status(&p, &Seen::Unreachable);
        assert_eq!(s, "? unreachable");
        assert_eq!(
            w.unwrap(),
            "node \"a\" (ID: 1) is registered as an active primary but is unreachable"
        );
        assert_eq!(
            status(
                &node(2, "b", NodeType::Standby, true, Some(1)),
                &up(false, &[])
            )
            .0,
            "! running as primary"
        );
        assert_eq!(status(&p, &up(true, &[])).0, "! running as standby");
        assert_eq!(
            status(
                &node(2, "b", NodeType::Standby, false, Some(1)),
                &up(true, &[])
            )
            .0,
            "! running"
        );
    }

    #[test]
    fn upstream_column_marks_what_it_cannot_verify() {
        let p = node(1, "node1", NodeType::Primary, true, None);
        let s = node(2, "node2", NodeType::Standby, true, Some(1));
        assert_eq!(
            upstream(&s, Some((&p, &up(false, &["node2"])))),
            ("node1".into(), None)
        );
        assert_eq!(upstream(&s, Some((&p, &Seen::Unreachable))).0, "? node1");
        let (text, w) = upstream(&s, Some((&p, &up(false, &["node3"]))));
        assert_eq!(text, "! node1");
        assert!(w.unwrap().contains("is not attached to its upstream"));
        assert_eq!(upstream(&p, None), (String::new(), None));
    }

    /// A cluster in every state `cluster show` distinguishes.
    fn sample() -> (Vec<NodeRecord>, HashMap<i32, Seen>) {
        let mut p = node(1, "node1", NodeType::Primary, true, None);
        p.conninfo = "host=10.0.0.1 dbname=repmgr user=repmgr password=hunter2".into();
        let mut s2 = node(2, "node2", NodeType::Standby, true, Some(1));
        s2.conninfo = "host=10.0.0.2 dbname=repmgr user=repmgr".into();
        s2.location = "dc2".into();
        let mut s3 = node(3, "node3", NodeType::Standby, true, Some(2));
        s3.conninfo = "host=10.0.0.3 dbname=repmgr user=repmgr".into();
        s3.priority = 0;
        let mut w = node(4, "witness", NodeType::Witness, true, Some(1));
        w.conninfo = "postgresql://repmgr:secret@10.0.0.4/repmgr".into();
        let mut old = node(5, "node5", NodeType::Primary, false, None);
        old.conninfo = "host=10.0.0.5 dbname=repmgr".into();
        // A replaced primary, fenced, about to rejoin by itself.
        let mut replaced = node(6, "node6", NodeType::Primary, false, None);
        replaced.conninfo = "host=10.0.0.6 dbname=repmgr".into();
        let mut waiting = up(false, &[]);
        if let Seen::Up { rejoin, .. } = &mut waiting {
            *rejoin = Some((
                "waiting".into(),
                "waiting: it was replaced as primary: its voters are in term 3; it rejoins the current primary in 4 s".into(),
            ));
        }
        let seen = HashMap::from([
            (1, up(false, &["node2"])),
            (2, up(true, &[])),
            (3, up(true, &[])),
            (4, up(false, &[])),
            (5, Seen::Unreachable),
            (6, waiting),
        ]);
        (vec![p, s2, s3, w, old, replaced], seen)
    }

    /// Compares with `testdata/<name>`; `REPMGR_BLESS=1` rewrites the file instead.
    fn golden(name: &str, got: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name);
        if std::env::var_os("REPMGR_BLESS").is_some() {
            std::fs::write(&path, got).unwrap();
        }
        let want =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(got, want, "output differs from {}", path.display());
    }

    #[test]
    fn cluster_show_output_matches_the_golden_files() {
        let (nodes, seen) = sample();
        let (text, warnings) = render_show(&nodes, &seen, false, Format::Text);
        golden("cluster_show.txt", &text);
        assert_eq!(
            warnings,
            [
                "node \"node3\" (ID: 3) is not attached to its upstream node \"node2\" (ID: 2)",
                "node \"node6\" (ID: 6) is registered as inactive but is running",
                "node \"node6\" (ID: 6) needs a rejoin (waiting: it was replaced as primary: its voters are in term 3; it rejoins the current primary in 4 s)"
            ]
        );
        golden(
            "cluster_show_compact.txt",
            &render_show(&nodes, &seen, true, Format::Text).0,
        );
        golden(
            "cluster_show.csv",
            &render_show(&nodes, &seen, false, Format::Csv).0,
        );
        golden(
            "cluster_show.json",
            &render_show(&nodes, &seen, false, Format::Json).0,
        );
        for f in [Format::Text, Format::Csv, Format::Json] {
            let out = render_show(&nodes, &seen, false, f).0;
            assert!(!out.contains("hunter2") && !out.contains("secret"), "{out}");
        }
    }
}
