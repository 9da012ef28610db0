//! `repmgr cluster show`: every registered node, checked live, in repmgr's layout.

use repmgr_core::conninfo;
use repmgr_core::node::NodeType;

use crate::conn::{self, Target};
use crate::exit;

/// A registered node as read from the catalog.
#[derive(Debug, Clone)]
pub struct Registered {
    pub id: i32,
    pub name: String,
    pub node_type: NodeType,
    pub active: bool,
    pub upstream_name: Option<String>,
    pub location: String,
    pub priority: i32,
    pub conninfo: String,
}

/// What connecting to the node found.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Unreachable,
    Up {
        in_recovery: bool,
        timeline: Option<i32>,
    },
}

/// repmgr's status column, and the problem it signals (if any).
pub fn status(node: &Registered, seen: &Seen) -> (&'static str, Option<String>) {
    let who = format!("node \"{}\" (ID: {})", node.name, node.id);
    match (node.node_type, node.active, seen) {
        (_, true, Seen::Unreachable) => (
            "? unreachable",
            Some(format!(
                "{who} is registered as an active {} but is unreachable",
                node.node_type
            )),
        ),
        (_, false, Seen::Unreachable) => ("- failed", None),
        (
            NodeType::Primary,
            true,
            Seen::Up {
                in_recovery: false, ..
            },
        ) => ("* running", None),
        (
            NodeType::Primary,
            _,
            Seen::Up {
                in_recovery: true, ..
            },
        ) => (
            "! running as standby",
            Some(format!(
                "{who} is registered as primary but running as standby"
            )),
        ),
        (
            NodeType::Standby,
            true,
            Seen::Up {
                in_recovery: true, ..
            },
        ) => ("  running", None),
        (
            NodeType::Standby,
            _,
            Seen::Up {
                in_recovery: false, ..
            },
        ) => (
            "! running as primary",
            Some(format!(
                "{who} is registered as standby but running as primary"
            )),
        ),
        (NodeType::Witness, true, Seen::Up { .. }) => ("* running", None),
        (_, false, Seen::Up { .. }) => (
            "! running",
            Some(format!("{who} is registered as inactive but is running")),
        ),
    }
}

fn read_nodes(target: &Target) -> Result<Vec<Registered>, (i32, String)> {
    let info = target.conninfo().map_err(|e| (exit::ERR_BAD_CONFIG, e))?;
    let mut c = conn::connect(&info).map_err(|e| {
        (
            exit::ERR_DB_CONN,
            format!("could not connect to {}: {e}", conninfo::mask(&info)),
        )
    })?;
    let rows = conn::query(
        &mut c,
        "SELECT n.node_id, n.node_name, n.type, n.active, un.node_name, n.location, n.priority, n.conninfo
           FROM repmgr.nodes n LEFT JOIN repmgr.nodes un ON un.node_id = n.upstream_node_id
          ORDER BY n.node_id",
    )
    .map_err(|e| (exit::ERR_BAD_CONFIG, format!("could not read the repmgr catalog: {e}")))?;
    Ok(rows
        .rows
        .iter()
        .filter_map(|r| {
            let col = |i: usize| r.get(i).and_then(|v| v.clone());
            Some(Registered {
                id: col(0)?.parse().ok()?,
                name: col(1)?,
                node_type: NodeType::parse(&col(2)?)?,
                active: col(3).as_deref() == Some("t"),
                upstream_name: col(4),
                location: col(5).unwrap_or_default(),
                priority: col(6).and_then(|p| p.parse().ok()).unwrap_or(0),
                conninfo: col(7).unwrap_or_default(),
            })
        })
        .collect())
}

fn look(node: &Registered) -> Seen {
    let Ok(mut c) = conn::connect(&node.conninfo) else {
        return Seen::Unreachable;
    };
    match conn::query(
        &mut c,
        "SELECT in_recovery, timeline FROM repmgr.node_status()",
    ) {
        Ok(rows) => Seen::Up {
            in_recovery: rows.get(0, 0) == Some("t"),
            timeline: rows.get(0, 1).and_then(|t| t.parse().ok()),
        },
        Err(_) => match conn::query(&mut c, "SELECT pg_catalog.pg_is_in_recovery()") {
            Ok(rows) => Seen::Up {
                in_recovery: rows.get(0, 0) == Some("t"),
                timeline: None,
            },
            Err(_) => Seen::Unreachable,
        },
    }
}

/// Renders rows as repmgr's ` a | b ` table with a dashed rule under the header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!(" {c:<w$} ", w = widths[i]))
            .collect::<Vec<_>>()
            .join("|")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.to_vec())];
    out.push(
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+"),
    );
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n") + "\n"
}

/// Runs `cluster show`; returns the exit code.
pub fn show(target: &Target, csv: bool) -> i32 {
    let nodes = match read_nodes(target) {
        Ok(n) if n.is_empty() => {
            eprintln!(
                "ERROR: no nodes are registered; run SELECT repmgr.register_primary() on the primary first"
            );
            return exit::ERR_BAD_CONFIG;
        }
        Ok(n) => n,
        Err((code, msg)) => {
            eprintln!("ERROR: {msg}");
            return code;
        }
    };
    let mut warnings = Vec::new();
    let mut rows = Vec::new();
    for n in &nodes {
        let seen = look(n);
        let (st, warning) = status(n, &seen);
        warnings.extend(warning);
        if csv {
            let (availability, recovery) = match seen {
                Seen::Unreachable => (-1, -1),
                Seen::Up { in_recovery, .. } => (0, i32::from(in_recovery)),
            };
            rows.push(vec![
                n.id.to_string(),
                availability.to_string(),
                recovery.to_string(),
            ]);
            continue;
        }
        let timeline = match (&seen, n.node_type) {
            (_, NodeType::Witness) => "n/a".to_string(),
            (
                Seen::Up {
                    timeline: Some(t), ..
                },
                _,
            ) => t.to_string(),
            _ => "?".to_string(),
        };
        rows.push(vec![
            n.id.to_string(),
            n.name.clone(),
            n.node_type.to_string(),
            st.to_string(),
            n.upstream_name.clone().unwrap_or_default(),
            n.location.clone(),
            n.priority.to_string(),
            timeline,
            conninfo::mask(&n.conninfo),
        ]);
    }
    if csv {
        rows.iter().for_each(|r| println!("{}", r.join(",")));
    } else {
        let header = [
            "ID",
            "Name",
            "Role",
            "Status",
            "Upstream",
            "Location",
            "Priority",
            "Timeline",
            "Connection string",
        ];
        print!("{}", table(&header, &rows));
        if !warnings.is_empty() {
            eprintln!("\nWARNING: following issues were detected");
            warnings.iter().for_each(|w| eprintln!("  - {w}"));
        }
    }
    if warnings.is_empty() {
        exit::SUCCESS
    } else {
        exit::ERR_NODE_STATUS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(t: NodeType, active: bool) -> Registered {
        Registered {
            id: 1,
            name: "a".into(),
            node_type: t,
            active,
            upstream_name: None,
            location: "default".into(),
            priority: 100,
            conninfo: "host=a password=x".into(),
        }
    }

    #[test]
    fn status_strings_follow_repmgr() {
        let up = |r| Seen::Up {
            in_recovery: r,
            timeline: Some(1),
        };
        assert_eq!(
            status(&node(NodeType::Primary, true), &up(false)),
            ("* running", None)
        );
        assert_eq!(
            status(&node(NodeType::Standby, true), &up(true)),
            ("  running", None)
        );
        assert_eq!(
            status(&node(NodeType::Witness, true), &up(false)),
            ("* running", None)
        );
        assert_eq!(
            status(&node(NodeType::Primary, false), &Seen::Unreachable),
            ("- failed", None)
        );
        let (s, w) = status(&node(NodeType::Primary, true), &Seen::Unreachable);
        assert_eq!(s, "? unreachable");
        assert_eq!(
            w.unwrap(),
            "node \"a\" (ID: 1) is registered as an active primary but is unreachable"
        );
        assert_eq!(
            status(&node(NodeType::Standby, true), &up(false)).0,
            "! running as primary"
        );
        assert_eq!(
            status(&node(NodeType::Primary, true), &up(true)).0,
            "! running as standby"
        );
        assert_eq!(
            status(&node(NodeType::Standby, false), &up(true)).0,
            "! running"
        );
    }

    #[test]
    fn table_layout() {
        let t = table(
            &["ID", "Name"],
            &[
                vec!["1".into(), "node1".into()],
                vec!["10".into(), "n".into()],
            ],
        );
        assert_eq!(t, " ID | Name\n----+-------\n 1  | node1\n 10 | n\n");
    }
}
