//! The cluster's node records, as the command line reads them, and the primary.

use repmgr_core::node::NodeType;

use crate::conn::Session;
use crate::exit::{ERR_DB_CONN, Failure, Result};

/// A row of `repmgr.nodes`, with the upstream's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub id: i32,
    pub name: String,
    pub node_type: NodeType,
    pub active: bool,
    pub upstream_id: Option<i32>,
    pub upstream_name: Option<String>,
    pub location: String,
    pub priority: i32,
    pub conninfo: String,
    pub repluser: String,
    pub slot_name: Option<String>,
    pub config_file: String,
}

impl NodeRow {
    /// `node 2 ("b")`, as messages name nodes.
    pub fn describe(&self) -> String {
        format!("node {} (\"{}\")", self.id, self.name)
    }

    pub fn connect(&self) -> Result<Session> {
        Session::connect(&self.conninfo, &self.describe())
    }
}

/// Every registered node, by id.
pub fn nodes(s: &mut Session) -> Result<Vec<NodeRow>> {
    let rows = s
        .query(
            "SELECT n.node_id, n.node_name, n.type, n.active, n.upstream_node_id, un.node_name, n.location,
                    n.priority, n.conninfo, n.repluser, n.slot_name, n.config_file
               FROM repmgr.nodes n LEFT JOIN repmgr.nodes un ON un.node_id = n.upstream_node_id
              ORDER BY n.node_id",
            &[],
        )
        .map_err(|f| {
            Failure::config(format!("could not read the repmgr catalog: {}", f.message))
                .hint("Is the extension created in this database (CREATE EXTENSION repmgr), and may this user read it?")
        })?;
    Ok(rows
        .rows
        .iter()
        .filter_map(|r| {
            let col = |i: usize| r.get(i).and_then(|v| v.clone());
            Some(NodeRow {
                id: col(0)?.parse().ok()?,
                name: col(1)?,
                node_type: NodeType::parse(&col(2)?)?,
                active: col(3).as_deref() == Some("t"),
                upstream_id: col(4).and_then(|v| v.parse().ok()),
                upstream_name: col(5),
                location: col(6).unwrap_or_default(),
                priority: col(7).and_then(|p| p.parse().ok()).unwrap_or(0),
                conninfo: col(8).unwrap_or_default(),
                repluser: col(9).unwrap_or_default(),
                slot_name: col(10),
                config_file: col(11).unwrap_or_default(),
            })
        })
        .collect())
}

/// The registered node `id`.
pub fn node(nodes: &[NodeRow], id: i32) -> Result<&NodeRow> {
    nodes.iter().find(|n| n.id == id).ok_or_else(|| {
        Failure::config(format!("node {id} is not registered"))
            .hint("See the registered nodes with: repmgr cluster show")
    })
}

/// The registered active primary.
pub fn registered_primary(nodes: &[NodeRow]) -> Result<&NodeRow> {
    nodes
        .iter()
        .find(|n| n.node_type == NodeType::Primary && n.active)
        .ok_or_else(|| {
            Failure::config("no active primary is registered")
                .hint("Register the primary first: repmgr primary register (or SELECT repmgr.register_primary()).")
        })
}

/// Connects to the registered primary and checks it runs as one.
pub fn connect_primary(nodes: &[NodeRow]) -> Result<(NodeRow, Session)> {
    let p = registered_primary(nodes)?.clone();
    let mut s = p.connect().map_err(|f| {
        f.hint("It is the primary the catalog read here names. Just after a failover the catalog can still name the old primary for a moment: try again in a few seconds. Otherwise check that it runs and accepts connections from here.")
    })?;
    if s.in_recovery()? {
        return Err(Failure::new(
            ERR_DB_CONN,
            format!("{} is registered as the primary but runs as a standby", p.describe()),
        )
        .hint("The catalog copy read here may be stale: run the command against the current primary with -d."));
    }
    Ok((p, s))
}
