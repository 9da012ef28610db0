//! The cluster's node records, as the command line reads them, and the primary.

use repmgr_core::node::{NODE_COLUMNS, NodeRecord, NodeType};

use crate::conn::Session;
use crate::exit::{ERR_DB_CONN, Failure, Result};

/// Connecting to a registered node, as the command line does.
pub trait Connect {
    fn connect(&self) -> Result<Session>;
}

impl Connect for NodeRecord {
    fn connect(&self) -> Result<Session> {
        Session::connect(&self.conninfo, &self.describe())
    }
}

/// Every registered node, by id.
pub fn nodes(s: &mut Session) -> Result<Vec<NodeRecord>> {
    let rows = s
        .query(
            &format!("SELECT {NODE_COLUMNS} FROM repmgr.nodes ORDER BY node_id"),
            &[],
        )
        .map_err(|f| {
            Failure::config(format!("could not read the repmgr catalog: {}", f.message))
                .hint("Is the extension created in this database (CREATE EXTENSION repmgr), and may this user read it?")
        })?;
    Ok(rows
        .rows
        .iter()
        .filter_map(|r| NodeRecord::from_text(|i| r.get(i).and_then(|v| v.clone())))
        .collect())
}

/// The name of `node`'s upstream, when it has a registered one.
pub fn upstream_name(nodes: &[NodeRecord], node: &NodeRecord) -> Option<String> {
    let up = node.upstream_node_id?;
    nodes
        .iter()
        .find(|n| n.node_id == up)
        .map(|n| n.node_name.clone())
}

/// The registered node `id`.
pub fn node(nodes: &[NodeRecord], id: i32) -> Result<&NodeRecord> {
    nodes.iter().find(|n| n.node_id == id).ok_or_else(|| {
        Failure::config(format!("node {id} is not registered"))
            .hint("See the registered nodes with: repmgr cluster show")
    })
}

/// The registered active primary.
pub fn registered_primary(nodes: &[NodeRecord]) -> Result<&NodeRecord> {
    nodes
        .iter()
        .find(|n| n.node_type == NodeType::Primary && n.active)
        .ok_or_else(|| {
            Failure::config("no active primary is registered")
                .hint("Register the primary first: repmgr primary register (or SELECT repmgr.register_primary()).")
        })
}

/// Connects to the registered primary and checks it runs as one.
pub fn connect_primary(nodes: &[NodeRecord]) -> Result<(NodeRecord, Session)> {
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
