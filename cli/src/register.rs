//! `primary|standby|witness register|unregister`: the extension's registration functions,
//! called on the local node with the same checks and events, recording this repmgr.conf as the
//! node's `config_file` (so that other nodes' `repmgr` can find it for a switchover).

use repmgr_core::node::NodeType;

use crate::catalog;
use crate::conn::Session;
use crate::context::Ctx;
use crate::exit::{Failure, Result, SUCCESS};

/// A line for the operator, on stderr like repmgr's log lines.
pub fn notice(line: impl AsRef<str>) {
    eprintln!("NOTICE: {}", line.as_ref());
}

fn config_file(ctx: &Ctx) -> Option<String> {
    ctx.cfg.path.as_ref().map(|p| p.display().to_string())
}

fn dry_run_done(what: &str) -> Result<i32> {
    notice(format!("--dry-run: the checks passed; would {what}"));
    Ok(SUCCESS)
}

pub fn primary(ctx: &Ctx) -> Result<i32> {
    let (mut s, me) = ctx.local_node()?;
    if s.in_recovery()? {
        return Err(Failure::config(format!(
            "{} is a standby: it cannot be registered as the primary",
            s.label
        ))
        .hint("Run repmgr standby register on a standby."));
    }
    if ctx.g.dry_run {
        return dry_run_done(&format!("register node {} as the primary", me.node_id));
    }
    let force = ctx.g.force.to_string();
    let cf = config_file(ctx);
    let id = s.value(
        "SELECT repmgr.register_primary(force => $1::boolean, config_file => $2)",
        &[Some(&force), cf.as_deref()],
    )?;
    notice(format!(
        "primary node record (ID: {}) registered",
        id.unwrap_or_default()
    ));
    Ok(SUCCESS)
}

pub fn standby(ctx: &Ctx, upstream: Option<i32>) -> Result<i32> {
    let (mut s, me) = ctx.local_node()?;
    if !s.in_recovery()? {
        return Err(Failure::config(format!(
            "{} is not a standby: it is not in recovery",
            s.label
        ))
        .hint("Run repmgr primary register on the primary."));
    }
    if ctx.g.dry_run {
        return dry_run_done(&format!("register node {} as a standby", me.node_id));
    }
    let up = upstream.map(|u| u.to_string());
    let force = ctx.g.force.to_string();
    let cf = config_file(ctx);
    let id = s.value(
        "SELECT repmgr.register_standby(upstream_node_id => $1::int, force => $2::boolean, config_file => $3)",
        &[up.as_deref(), Some(&force), cf.as_deref()],
    )?;
    notice(format!(
        "standby node record (ID: {}) registered",
        id.unwrap_or_default()
    ));
    Ok(SUCCESS)
}

pub fn witness(ctx: &Ctx) -> Result<i32> {
    let t = ctx.target();
    if !t.is_given() {
        return Err(Failure::new(
            crate::exit::ERR_BAD_ARGUMENT,
            "witness register needs the primary's connection: -d CONNINFO, or -h/-p/-U",
        ));
    }
    let primary = t.conninfo()?;
    let local = ctx
        .cfg
        .conninfo
        .clone()
        .unwrap_or_else(|| "dbname=repmgr".to_string());
    let mut s = Session::connect(&local, "the local node (the witness)")?;
    let me = ctx.identity(&mut s)?;
    if ctx.g.dry_run {
        Session::connect(&primary, "the primary")?;
        return dry_run_done(&format!("register node {} as the witness", me.node_id));
    }
    let force = ctx.g.force.to_string();
    let cf = config_file(ctx);
    let id = s.value(
        "SELECT repmgr.register_witness($1, force => $2::boolean, config_file => $3)",
        &[Some(&primary), Some(&force), cf.as_deref()],
    )?;
    notice(format!(
        "witness registration complete (ID: {})",
        id.unwrap_or_default()
    ));
    Ok(SUCCESS)
}

/// `<kind> unregister [--node-id N]`: the node must be of that kind.
pub fn unregister(ctx: &Ctx, node_id: Option<i32>, kind: &str) -> Result<i32> {
    let (mut s, me) = ctx.local_node()?;
    let id = node_id.unwrap_or(me.node_id);
    let nodes = catalog::nodes(&mut s)?;
    let n = catalog::node(&nodes, id)?;
    let expected = NodeType::parse(kind).expect("a node kind");
    if n.node_type != expected {
        return Err(Failure::config(format!(
            "{} is a {}, not a {kind}",
            n.describe(),
            n.node_type
        ))
        .hint(format!("Use repmgr {} unregister.", n.node_type)));
    }
    if ctx.g.dry_run {
        return dry_run_done(&format!("unregister {}", n.describe()));
    }
    let ids = id.to_string();
    let force = ctx.g.force.to_string();
    s.query(
        "SELECT repmgr.unregister_node(node_id => $1::int, force => $2::boolean)",
        &[Some(&ids), Some(&force)],
    )?;
    notice(format!("{kind} node record (ID: {id}) unregistered"));
    Ok(SUCCESS)
}
