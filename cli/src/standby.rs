//! `standby clone|promote|follow|switchover`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use repmgr_core::conninfo;
use repmgr_core::event;
use repmgr_core::lsn::Lsn;
use repmgr_core::node::{NodeType, slot_name};

use crate::barman::Barman;
use crate::catalog::{self, Connect};
use crate::conn::{Session, debug};
use crate::context::Ctx;
use crate::exit::{
    ERR_BAD_ARGUMENT, ERR_BAD_CONFIG, ERR_FOLLOW_FAIL, ERR_PROMOTION_FAIL, ERR_SWITCHOVER_FAIL,
    ERR_SWITCHOVER_INCOMPLETE, Failure, Result, SUCCESS,
};
use crate::local;
use crate::node::record_event;
use crate::register::notice;
use crate::{basebackup, remote, service};
use repmgr_core::node::NodeRecord;

// ---------------------------------------------------------------------------------------
// standby clone

#[derive(clap::Args, Debug, Default)]
pub struct CloneArgs {
    /// The registered node to clone from and stream from (default: the node given with -d/-h)
    #[arg(long = "upstream-node-id")]
    pub upstream_node_id: Option<i32>,
    /// The user for replication connections (default: replication_user in repmgr.conf, else the -U user)
    #[arg(long = "replication-user")]
    pub replication_user: Option<String>,
    /// Ask the upstream for an immediate checkpoint instead of a spread one
    #[arg(short = 'c', long = "fast-checkpoint")]
    pub fast_checkpoint: bool,
    /// The new node's id (default: node_id in repmgr.conf)
    #[arg(long = "node-id")]
    pub node_id: Option<i32>,
    /// The new node's name (default: node_name in repmgr.conf)
    #[arg(long = "node-name")]
    pub node_name: Option<String>,
    /// Clone with pg_basebackup even though repmgr.conf names a Barman server
    #[arg(long = "without-barman")]
    pub without_barman: bool,
    /// From Barman only: never connect to the upstream (no checks, no slot made, no event
    /// recorded); the standby streams from the connection given with -h/-d
    #[arg(long = "no-upstream-connection")]
    pub no_upstream_connection: bool,
}

/// Who should own a new data directory: the owner of the directory or of its parent, and
/// `postgres` rather than root.
fn clone_owner(dir: &Path) -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let existing = if dir.exists() {
        Some(dir)
    } else {
        dir.parent()
    };
    existing
        .and_then(local::run_as)
        .or_else(|| Some("postgres".to_string()))
}

/// What the upstream must offer for a clone and a standby; every problem found, not just the
/// first.
fn upstream_problems(s: &mut Session, slots: bool) -> Result<(Vec<String>, Vec<String>)> {
    let r = s.query(
        "SELECT pg_catalog.current_setting('wal_level'), pg_catalog.current_setting('max_wal_senders')::int,
                (SELECT count(*) FROM pg_catalog.pg_stat_replication)::int,
                pg_catalog.current_setting('max_replication_slots')::int,
                (SELECT count(*) FROM pg_catalog.pg_replication_slots)::int,
                pg_catalog.current_setting('hot_standby'),
                pg_catalog.current_setting('wal_log_hints'),
                (SELECT data_page_checksum_version FROM pg_catalog.pg_control_init())",
        &[],
    )?;
    let v = |i: usize| r.get(0, i).unwrap_or("").to_string();
    let n = |i: usize| v(i).parse::<i64>().unwrap_or(0);
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    if v(0) == "minimal" {
        problems.push("wal_level is minimal; it must be replica or logical".to_string());
    }
    // pg_basebackup -X stream takes two WAL senders while it runs, the standby one.
    let free = n(1) - n(2);
    if free < 2 {
        problems.push(format!(
            "only {free} free WAL sender(s) (max_wal_senders = {}, {} in use); the clone needs 2",
            n(1),
            n(2)
        ));
    }
    if slots && n(3) - n(4) < 1 {
        problems.push(format!(
            "no free replication slot (max_replication_slots = {}, {} in use)",
            n(3),
            n(4)
        ));
    }
    if v(5) != "on" {
        warnings.push("hot_standby is off on the upstream (the standby inherits its postgresql.conf): it will not accept connections".to_string());
    }
    if v(6) != "on" && v(7) == "0" {
        warnings.push("neither wal_log_hints nor data checksums are enabled: pg_rewind (node rejoin --force-rewind) will not be possible".to_string());
    }
    Ok((problems, warnings))
}

pub fn clone(ctx: &Ctx, a: &CloneArgs) -> Result<i32> {
    let dir = ctx.require_data_directory("standby clone")?;
    if let Some(pid) = local::running_pid(&dir) {
        return Err(Failure::config(format!(
            "a server is running on {} (pid {pid})",
            dir.display()
        ))
        .hint("Clone into an empty directory, or stop that server first."));
    }
    if !local::is_empty_dir(&dir) && !ctx.g.force {
        return Err(Failure::config(format!(
            "the target directory {} is not empty",
            dir.display()
        ))
        .hint("Give an empty or missing directory, or -F/--force to delete its contents first."));
    }
    let t = ctx.target();
    if t.host.is_none() && t.dbname.is_none() {
        return Err(Failure::new(
            ERR_BAD_ARGUMENT,
            "standby clone needs the upstream: -h HOST [-p PORT -U USER -d DBNAME] or -d CONNINFO",
        ));
    }
    let given = t.conninfo()?;
    if a.no_upstream_connection {
        return clone_without_upstream(ctx, a, &dir, &given);
    }
    let mut up = Session::connect(&given, "the upstream")?;
    let nodes = catalog::nodes(&mut up)?;
    let upstream_id: Option<i32> = match a.upstream_node_id {
        Some(id) => Some(catalog::node(&nodes, id)?.node_id),
        None => up
            .value(
                "SELECT pg_catalog.current_setting('repmgr.node_id', true)",
                &[],
            )?
            .and_then(|v| v.parse().ok())
            .filter(|v| *v > 0),
    };
    let upstream = upstream_id
        .and_then(|id| nodes.iter().find(|n| n.node_id == id))
        .cloned();
    let node_id = a.node_id.or(ctx.cfg.node_id).ok_or_else(|| {
        Failure::config("the new standby needs a node id")
            .hint("Set node_id (and node_name, conninfo) in its repmgr.conf and give it with -f, or use --node-id.")
    })?;
    let node_name = a
        .node_name
        .clone()
        .or_else(|| ctx.cfg.node_name.clone())
        .unwrap_or_else(|| repmgr_core::node::default_name(node_id));
    repmgr_core::node::validate_name(&node_name)
        .map_err(|e| Failure::config(format!("node name \"{node_name}\": {e}")))?;
    // The same node again may be rebuilt with -F; any other match is a clash.
    if let Some(other) = nodes
        .iter()
        .find(|n| (n.node_id == node_id || n.node_name == node_name) && n.active)
        && (other.node_id != node_id || other.node_name != node_name || !ctx.g.force)
    {
        return Err(Failure::config(format!(
            "{} is already registered and active; the new standby would be node {node_id} (\"{node_name}\")",
            other.describe()
        ))
        .hint("Give the new standby an unused node_id and node_name, or -F to rebuild that very node."));
    }
    let use_slots = match ctx.cfg.use_replication_slots {
        Some(v) => v,
        None => up
            .value(
                "SELECT pg_catalog.current_setting('repmgr.use_replication_slots', true)",
                &[],
            )?
            .is_none_or(|v| v == "on"),
    };
    let (problems, warnings) = upstream_problems(&mut up, use_slots)?;
    for w in &warnings {
        eprintln!("WARNING: {w}");
    }
    let repl_user = a
        .replication_user
        .clone()
        .or_else(|| ctx.cfg.replication_user.clone())
        .or_else(|| {
            upstream
                .as_ref()
                .map(|u| u.repluser.clone())
                .filter(|u| !u.is_empty())
        })
        .or_else(|| conninfo::get(&given, "user"));
    let backup_conninfo = match &repl_user {
        Some(u) => conninfo::with(&given, "user", u),
        None => Ok(given.clone()),
    }
    .map_err(|e| Failure::config(format!("invalid upstream connection: {e}")))?;
    // The replication connection itself, as pg_basebackup and the standby will make it.
    let repl = conninfo::with(&backup_conninfo, "replication", "true").unwrap_or_default();
    Session::connect(&repl, "the upstream (replication connection)")
        .and_then(|mut c| {
            debug("on the upstream (replication connection): IDENTIFY_SYSTEM");
            c.identify_system()
        })
        .map_err(|f| {
            Failure::config(format!("a replication connection to the upstream failed: {}", f.message))
                .hint("Allow it in the upstream's pg_hba.conf (a \"replication\" line for the replication user).")
        })?;
    if !problems.is_empty() {
        return Err(Failure::config(format!("the upstream cannot serve a new standby: {}", problems.join("; ")))
            .hint("Change those settings on the upstream (max_wal_senders and max_replication_slots need a restart)."));
    }
    let slot = use_slots.then(|| slot_name(node_id));
    let barman = Barman::of(&ctx.cfg, a.without_barman);
    // The backup is chosen before anything changes: Barman's answer may be that there is none.
    let backup = barman.as_ref().map(Barman::newest_backup).transpose()?;
    let program = basebackup::program(ctx, None);
    let args = basebackup::arguments(
        ctx,
        &dir,
        &backup_conninfo,
        slot.as_deref(),
        a.fast_checkpoint,
    );
    let upstream_label = upstream
        .as_ref()
        .map_or_else(|| conninfo::mask(&given), NodeRecord::describe);
    if ctx.g.dry_run {
        notice(format!(
            "--dry-run: the checks passed; would clone {upstream_label} into {} as node {node_id} (\"{node_name}\"){}",
            dir.display(),
            slot.as_ref()
                .map_or(String::new(), |s| format!(" with replication slot {s}"))
        ));
        match (&barman, &backup) {
            (Some(b), Some(backup)) => notice(format!(
                "--dry-run: would copy backup {} of {} with: rsync {}",
                backup.id,
                b.describe(),
                b.rsync_args(backup, &dir).join(" ")
            )),
            _ => notice(format!(
                "--dry-run: would run: {}",
                basebackup::describe(&program, &args)
            )),
        }
        if let Some(r) = &ctx.cfg.restore_command {
            notice(format!("--dry-run: would set restore_command = '{r}'"));
        }
        return Ok(SUCCESS);
    }
    if !local::is_empty_dir(&dir) {
        local::empty_directory(&dir).map_err(|f| f.code(ERR_BAD_CONFIG))?;
    }
    if let Some(s) = &slot {
        basebackup::ensure_slot(&mut up, s)?;
    }
    let copied = match (&barman, &backup) {
        (Some(b), Some(backup)) => {
            notice(format!(
                "cloning backup {} of {} into {}",
                backup.id,
                b.describe(),
                dir.display()
            ));
            b.restore(backup, &dir, clone_owner(&dir).as_deref())
        }
        _ => {
            notice(format!(
                "cloning {upstream_label} into {} with pg_basebackup",
                dir.display()
            ));
            basebackup::run(&program, clone_owner(&dir).as_deref(), &args)
        }
    };
    if let Err(f) = copied {
        if let Some(s) = &slot {
            let _ = up.query("SELECT pg_catalog.pg_drop_replication_slot($1)", &[Some(s)]);
        }
        return Err(f.hint(format!(
            "The directory {} holds a partial copy; run the clone again with -F.",
            dir.display()
        )));
    }
    let stream_from = upstream
        .as_ref()
        .map_or(given.clone(), |u| u.conninfo.clone());
    let primary_conninfo =
        conninfo::replication(&stream_from, repl_user.as_deref().unwrap_or(""), &node_name)
            .map_err(|e| Failure::config(format!("invalid upstream connection: {e}")))?;
    write_standby_settings(
        ctx,
        &dir,
        &primary_conninfo,
        slot.as_deref(),
        node_id,
        &node_name,
    )?;
    let method = match (&barman, &backup) {
        (Some(b), Some(backup)) => format!("barman (backup {} of {})", backup.id, b.describe()),
        _ => "pg_basebackup".to_string(),
    };
    let details = format!(
        "cloned from {upstream_label} into {}; backup method: {method}; --force: {}",
        dir.display(),
        if ctx.g.force { "Y" } else { "N" }
    );
    if let Ok((_, mut p)) = catalog::connect_primary(&nodes) {
        record_event(&mut p, node_id, event::STANDBY_CLONE, true, &details);
    }
    notice(format!("standby clone ({details}) complete"));
    notice(format!(
        "start the server (repmgr -D {} node service --action=start), then register it: repmgr standby register",
        dir.display()
    ));
    Ok(SUCCESS)
}

/// Makes a copied data directory a standby: its replication settings, its `repmgr.*` identity
/// and `restore_command` in `postgresql.auto.conf`, and `standby.signal`.
fn write_standby_settings(
    ctx: &Ctx,
    dir: &Path,
    primary_conninfo: &str,
    slot: Option<&str>,
    node_id: i32,
    node_name: &str,
) -> Result<()> {
    let id_text = node_id.to_string();
    let mut settings: Vec<(&str, Option<&str>)> = vec![
        ("primary_conninfo", Some(primary_conninfo)),
        ("primary_slot_name", slot),
        ("repmgr.node_id", Some(&id_text)),
        ("repmgr.node_name", Some(node_name)),
        // A copied fence marking or pause belongs to the upstream, not to this node.
        ("default_transaction_read_only", None),
    ];
    if let Some(c) = &ctx.cfg.conninfo {
        settings.push(("repmgr.conninfo", Some(c)));
    }
    if let Some(r) = &ctx.cfg.restore_command {
        settings.push(("restore_command", Some(r)));
    }
    local::set_auto_conf(dir, &settings)?;
    local::write_owned(&dir.join("standby.signal"), "", dir)
}

/// `standby clone --no-upstream-connection`: from Barman, without a word to the upstream. The
/// standby streams from `given` (with the replication user of the options or repmgr.conf); a
/// slot is named only when repmgr.conf says `use_replication_slots = on`, and must exist on
/// the upstream before the standby starts; nothing is recorded in the catalog.
fn clone_without_upstream(ctx: &Ctx, a: &CloneArgs, dir: &Path, given: &str) -> Result<i32> {
    let Some(barman) = Barman::of(&ctx.cfg, a.without_barman) else {
        return Err(Failure::new(
            ERR_BAD_ARGUMENT,
            "--no-upstream-connection clones from Barman only: set barman_host and barman_server in repmgr.conf (and do not pass --without-barman)",
        ));
    };
    let node_id = a.node_id.or(ctx.cfg.node_id).ok_or_else(|| {
        Failure::config("the new standby needs a node id")
            .hint("Set node_id (and node_name, conninfo) in its repmgr.conf and give it with -f, or use --node-id.")
    })?;
    let node_name = a
        .node_name
        .clone()
        .or_else(|| ctx.cfg.node_name.clone())
        .unwrap_or_else(|| repmgr_core::node::default_name(node_id));
    repmgr_core::node::validate_name(&node_name)
        .map_err(|e| Failure::config(format!("node name \"{node_name}\": {e}")))?;
    let repl_user = a
        .replication_user
        .clone()
        .or_else(|| ctx.cfg.replication_user.clone())
        .or_else(|| conninfo::get(given, "user"));
    let primary_conninfo =
        conninfo::replication(given, repl_user.as_deref().unwrap_or(""), &node_name)
            .map_err(|e| Failure::config(format!("invalid upstream connection: {e}")))?;
    let slot = (ctx.cfg.use_replication_slots == Some(true)).then(|| slot_name(node_id));
    let backup = barman.newest_backup()?;
    if ctx.g.dry_run {
        notice(format!(
            "--dry-run: would copy backup {} of {} into {} as node {node_id} (\"{node_name}\"), streaming from {} without connecting to it now, with: rsync {}",
            backup.id,
            barman.describe(),
            dir.display(),
            conninfo::mask(given),
            barman.rsync_args(&backup, dir).join(" ")
        ));
        return Ok(SUCCESS);
    }
    if !local::is_empty_dir(dir) {
        local::empty_directory(dir).map_err(|f| f.code(ERR_BAD_CONFIG))?;
    }
    notice(format!(
        "cloning backup {} of {} into {} (no upstream connection)",
        backup.id,
        barman.describe(),
        dir.display()
    ));
    barman.restore(&backup, dir, clone_owner(dir).as_deref())?;
    write_standby_settings(
        ctx,
        dir,
        &primary_conninfo,
        slot.as_deref(),
        node_id,
        &node_name,
    )?;
    if let Some(s) = &slot {
        eprintln!(
            "WARNING: the standby streams through slot {s}, which this clone did not create: create it on the upstream before starting the standby (SELECT pg_create_physical_replication_slot('{s}'))"
        );
    }
    notice(format!(
        "standby clone of backup {} complete; no standby_clone event was recorded (no upstream connection)",
        backup.id
    ));
    notice(format!(
        "start the server (repmgr -D {} node service --action=start), then register it: repmgr standby register",
        dir.display()
    ));
    Ok(SUCCESS)
}

// ---------------------------------------------------------------------------------------
// standby promote / follow

#[derive(clap::Args, Debug, Default)]
pub struct PromoteArgs {
    /// With a synchronous quorum: promote even if this standby may lack acknowledged commits
    #[arg(long = "allow-data-loss")]
    pub allow_data_loss: bool,
    /// From PostgreSQL 17: promote even if this standby's copies of the failover slots are not usable (their consumers start over)
    #[arg(long = "allow-slot-loss")]
    pub allow_slot_loss: bool,
}

pub fn promote(ctx: &Ctx, a: &PromoteArgs) -> Result<i32> {
    let (mut s, _) = ctx.local_node()?;
    // Only the arguments given: a catalog before 0.3.0 has no allow_slot_loss.
    let mut args = vec!["force => $1::boolean"];
    if a.allow_data_loss {
        args.push("allow_data_loss => true");
    }
    if a.allow_slot_loss {
        args.push("allow_slot_loss => true");
    }
    let call = format!("repmgr.promote({})", args.join(", "));
    if ctx.g.dry_run {
        if !s.in_recovery()? {
            return Err(Failure::new(
                ERR_PROMOTION_FAIL,
                format!("{} is not a standby", s.label),
            ));
        }
        notice(format!("--dry-run: would call {call} on this standby"));
        return Ok(SUCCESS);
    }
    let force = ctx.g.force.to_string();
    let done = s
        .query_for(
            &format!("SELECT {call}"),
            &[Some(&force)],
            Duration::from_secs(120),
        )
        .map_err(|f| f.code(ERR_PROMOTION_FAIL))?;
    notice(done.get(0, 0).unwrap_or("promoted"));
    Ok(SUCCESS)
}

pub fn follow(ctx: &Ctx, upstream: Option<i32>) -> Result<i32> {
    let (mut s, me) = ctx.local_node()?;
    let nodes = catalog::nodes(&mut s)?;
    let target = match upstream {
        Some(id) => catalog::node(&nodes, id)?.clone(),
        None => catalog::registered_primary(&nodes)?.clone(),
    };
    if target.node_id == me.node_id {
        return Err(Failure::new(
            ERR_FOLLOW_FAIL,
            format!("{} cannot follow itself", target.describe()),
        ));
    }
    if ctx.g.dry_run {
        target.connect().map_err(|f| f.code(ERR_FOLLOW_FAIL))?;
        notice(format!(
            "--dry-run: would make node {} follow {}",
            me.node_id,
            target.describe()
        ));
        return Ok(SUCCESS);
    }
    let id = target.node_id.to_string();
    let done = s
        .query_for(
            "SELECT repmgr.follow($1::int)",
            &[Some(&id)],
            Duration::from_secs(120),
        )
        .map_err(|f| f.code(ERR_FOLLOW_FAIL))?;
    notice(done.get(0, 0).unwrap_or("following"));
    Ok(SUCCESS)
}

// ---------------------------------------------------------------------------------------
// standby switchover

#[derive(clap::Args, Debug, Default)]
pub struct SwitchoverArgs {
    /// Make the other standbys follow the new primary too
    #[arg(long = "siblings-follow")]
    pub siblings_follow: bool,
    /// Let the old primary rejoin with pg_rewind if it must
    #[arg(long = "force-rewind")]
    pub force_rewind: bool,
    /// Promote even if this standby did not receive the old primary's shutdown checkpoint
    #[arg(long = "always-promote")]
    pub always_promote: bool,
}

/// How often a switchover looks again at what it waits for.
const POLL: Duration = Duration::from_millis(200);

/// What the switchover learnt before it changed anything.
struct Plan {
    me: NodeRecord,
    primary: NodeRecord,
    /// The old primary's data directory (on its machine).
    primary_dir: PathBuf,
    siblings: Vec<NodeRecord>,
    nodes: Vec<NodeRecord>,
    /// `--force` past copies of failover slots that are not usable.
    allow_slot_loss: bool,
}

fn checks(ctx: &Ctx, a: &SwitchoverArgs, local: &mut Session, my_id: i32) -> Result<Plan> {
    let refuse = |m: String| Failure::new(ERR_SWITCHOVER_FAIL, m);
    if !local.in_recovery()? {
        return Err(refuse(format!(
            "{} is not a standby: run the switchover on the standby to promote",
            local.label
        )));
    }
    let nodes = catalog::nodes(local)?;
    let me = catalog::node(&nodes, my_id)?.clone();
    let (primary, mut p) =
        catalog::connect_primary(&nodes).map_err(|f| f.code(ERR_SWITCHOVER_FAIL))?;
    if me.upstream_node_id != Some(primary.node_id) {
        return Err(refuse(format!(
            "{} does not stream from the primary {} (its upstream is {})",
            me.describe(),
            primary.describe(),
            catalog::upstream_name(&nodes, &me).unwrap_or_else(|| "none".into())
        ))
        .hint(format!(
            "Make it follow the primary first: repmgr standby follow --upstream-node-id {}",
            primary.node_id
        )));
    }
    let streaming = p.value(
        "SELECT state FROM pg_catalog.pg_stat_replication WHERE application_name = $1",
        &[Some(&me.node_name)],
    )?;
    if streaming.as_deref() != Some("streaming") {
        return Err(refuse(format!(
            "{} is not streaming from {}",
            me.describe(),
            primary.describe()
        )));
    }
    let lag = local.value(
        "SELECT CASE WHEN pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn() THEN 0
                     ELSE EXTRACT(epoch FROM pg_catalog.clock_timestamp() - pg_catalog.pg_last_xact_replay_timestamp())::bigint END",
        &[],
    )?;
    let lag: i64 = lag.and_then(|v| v.parse().ok()).unwrap_or(i64::MAX);
    if lag >= ctx.cfg.replication_lag_critical && !ctx.g.force {
        return Err(refuse(format!(
            "{} is {} behind the primary (replication_lag_critical is {} s)",
            me.describe(),
            if lag == i64::MAX {
                "an unknown time".to_string()
            } else {
                format!("{lag} s")
            },
            ctx.cfg.replication_lag_critical
        ))
        .hint("Wait for it to catch up, or -F to switch over anyway."));
    }
    let paused: Vec<String> = nodes
        .iter()
        .filter(|n| n.active)
        .filter_map(|n| {
            let mut s = n.connect().ok()?;
            (s.value("SELECT repmgr.repmgrd_is_paused()", &[])
                .ok()??
                .as_str()
                == "t")
                .then(|| n.describe())
        })
        .collect();
    if !paused.is_empty() {
        return Err(refuse(format!(
            "automatic actions are paused on {}: another switchover may be running",
            paused.join(", ")
        ))
        .hint("If none is, resume them with repmgr service unpause and try again."));
    }
    let primary_dir = p
        .value("SELECT pg_catalog.current_setting('data_directory')", &[])
        .map_err(|f| refuse(format!("could not read the primary's data_directory (it needs a superuser or pg_read_all_settings): {}", f.message)))?
        .unwrap_or_default();
    if a.force_rewind {
        let r = p.query(
            "SELECT pg_catalog.current_setting('wal_log_hints'), (SELECT data_page_checksum_version FROM pg_catalog.pg_control_init())",
            &[],
        )?;
        if r.get(0, 0) != Some("on") && r.get(0, 1) == Some("0") {
            return Err(refuse(format!(
                "--force-rewind: {} has neither wal_log_hints nor data checksums, so pg_rewind cannot run on it",
                primary.describe()
            )));
        }
    }
    let siblings: Vec<NodeRecord> = nodes
        .iter()
        .filter(|n| {
            n.active
                && n.node_type == NodeType::Standby
                && n.node_id != me.node_id
                && n.node_id != primary.node_id
        })
        .cloned()
        .collect();
    let senders = local.query(
        "SELECT pg_catalog.current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_catalog.pg_stat_replication)::int",
        &[],
    )?;
    let free: i64 = senders.get(0, 0).and_then(|v| v.parse().ok()).unwrap_or(0);
    let needed = 1 + if a.siblings_follow {
        siblings.len() as i64
    } else {
        0
    };
    if free < needed {
        return Err(refuse(format!(
            "{} has {free} free WAL sender(s) and needs {needed} (the old primary{})",
            me.describe(),
            if a.siblings_follow {
                " and the siblings"
            } else {
                ""
            }
        ))
        .hint("Raise max_wal_senders on it (needs a restart)."));
    }
    // From PostgreSQL 17, consumers of the failover slots go on from this node's copies.
    let unusable = unusable_slot_copies(local)?;
    if let Some(unusable) = unusable.as_deref()
        && !ctx.g.force
    {
        return Err(refuse(format!(
            "{}'s copies of the failover slots are not all usable: {unusable}; their consumers could not go on from it",
            me.describe()
        ))
        .hint("Wait until SELECT * FROM repmgr.node_check() on it shows them ready (a copy becomes usable once its slot's consumer confirms newer changes), or pass --force to switch over anyway."));
    }
    // The old primary's machine must run repmgr for us (ssh, or here).
    let v = remote::repmgr(
        &ctx.cfg,
        &primary,
        &["--version".to_string()],
        remote::QUICK,
    )
    .map_err(|f| {
        let message = format!(
            "switchover not carried out (nothing changed): repmgr cannot be run for {}: {}",
            primary.describe(),
            f.message
        );
        Failure { message, ..f }.code(ERR_SWITCHOVER_FAIL)
    })?;
    if !v.success {
        return Err(refuse(format!(
            "repmgr does not run for {}: {}",
            primary.describe(),
            v.stderr.trim()
        )));
    }
    Ok(Plan {
        me,
        primary,
        primary_dir: PathBuf::from(primary_dir),
        siblings,
        nodes,
        allow_slot_loss: unusable.is_some(),
    })
}

/// This standby's copies of failover slots that a consumer could not go on from after its
/// promotion, in words; `None` when all are usable, or before PostgreSQL 17.
fn unusable_slot_copies(local: &mut Session) -> Result<Option<String>> {
    let has_failover_slots = local.value(
        "SELECT (pg_catalog.current_setting('server_version_num')::int >= 170000)::text",
        &[],
    )?;
    if has_failover_slots.as_deref() != Some("true") {
        return Ok(None);
    }
    local.value(
        "SELECT pg_catalog.string_agg(slot_name || CASE WHEN invalidation_reason IS NOT NULL
                  THEN ' invalidated (' || invalidation_reason || ')' ELSE ' not yet usable' END, '; ' ORDER BY slot_name)
           FROM pg_catalog.pg_replication_slots
          WHERE slot_type = 'logical' AND synced AND (temporary OR invalidation_reason IS NOT NULL)",
        &[],
    )
}

/// Runs `repmgr <args>` for the old primary, with its data directory, for at most `within`.
fn on_old_primary(ctx: &Ctx, plan: &Plan, args: &[&str], within: Duration) -> Result<remote::Ran> {
    let mut full = vec![
        "-D".to_string(),
        plan.primary_dir.to_string_lossy().into_owned(),
    ];
    full.extend(args.iter().map(|a| a.to_string()));
    remote::repmgr(&ctx.cfg, &plan.primary, &full, within)
}

/// How long starting or stopping the old primary may take on its machine.
fn service_bound(ctx: &Ctx) -> Duration {
    Duration::from_secs(ctx.cfg.shutdown_check_timeout.max(0) as u64) + remote::QUICK
}

/// Starts the old primary again after an abandoned switchover, and says what state is left.
fn back_out(ctx: &Ctx, plan: &Plan, paused: &[NodeRecord], why: String) -> Failure {
    let restarted = on_old_primary(
        ctx,
        plan,
        &["node", "service", "--action=start"],
        service_bound(ctx),
    )
    .is_ok_and(|r| r.success);
    let unpaused = service::unpause(paused);
    let state = if restarted {
        format!(
            "{} was started again and is the primary",
            plan.primary.describe()
        )
    } else {
        format!(
            "{} is STOPPED and could not be started again: start it on its machine (repmgr -D {} node service --action=start)",
            plan.primary.describe(),
            plan.primary_dir.display()
        )
    };
    Failure::new(
        ERR_SWITCHOVER_FAIL,
        format!("switchover abandoned: {why}; {state}"),
    )
    .hint(if unpaused {
        "Nothing else changed; fix the cause and run the switchover again.".to_string()
    } else {
        "Some nodes are still paused: run repmgr service unpause.".to_string()
    })
}

pub fn switchover(ctx: &Ctx, a: &SwitchoverArgs) -> Result<i32> {
    let started = Instant::now();
    let (mut local, me) = ctx.local_node()?;
    let plan = checks(ctx, a, &mut local, me.node_id)?;
    let stop_cmd = on_old_primary(
        ctx,
        &plan,
        &["node", "service", "--action=stop", "--list-actions"],
        remote::QUICK,
    )?;
    if ctx.g.dry_run {
        notice(format!(
            "--dry-run: the checks passed; would pause every node, stop {} with \"{}\", promote {}, rejoin {} as its standby{}",
            plan.primary.describe(),
            stop_cmd.stdout.trim(),
            plan.me.describe(),
            plan.primary.describe(),
            if a.siblings_follow {
                ", and make the siblings follow"
            } else {
                ""
            }
        ));
        return Ok(SUCCESS);
    }
    let paused = service::pause_all(&plan.nodes, ctx.g.force).map_err(|f| {
        Failure::new(ERR_SWITCHOVER_FAIL, format!("could not pause automatic failover on every node: {}", f.message))
            .hint("Every active node must be reachable (or use -F to go on without the unreachable ones).")
    })?;
    notice(format!(
        "automatic actions paused on {} node(s)",
        paused.len()
    ));
    // A checkpoint first makes the shutdown checkpoint quick.
    if let Ok(mut p) = plan.primary.connect() {
        let _ = p.query("CHECKPOINT", &[]);
    }
    notice(format!("stopping {}", plan.primary.describe()));
    // A failed ssh leaves nothing stopped for sure: back out (unpause) as for a failed stop.
    let stopped = match on_old_primary(
        ctx,
        &plan,
        &["node", "service", "--action=stop"],
        service_bound(ctx),
    ) {
        Ok(r) => r,
        Err(f) => return Err(back_out(ctx, &plan, &paused, f.message)),
    };
    if !stopped.success {
        return Err(back_out(
            ctx,
            &plan,
            &paused,
            format!(
                "stopping {} failed: {}",
                plan.primary.describe(),
                stopped.stderr.trim()
            ),
        ));
    }
    let timeout = Duration::from_secs(ctx.cfg.shutdown_check_timeout as u64);
    let state = local::wait_until(timeout, POLL, || {
        let r = on_old_primary(
            ctx,
            &plan,
            &["node", "status", "--is-shutdown-cleanly"],
            remote::QUICK,
        )
        .ok()?;
        let line = r.stdout.trim().to_string();
        (!line.contains("--state=UP") && !line.contains("SHUTTING_DOWN")).then_some(line)
    });
    let checkpoint = match state.as_deref() {
        Some(line) if line.starts_with("--state=SHUTDOWN") => line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("--last-checkpoint-lsn="))
            .and_then(Lsn::parse),
        Some(line) => {
            return Err(back_out(
                ctx,
                &plan,
                &paused,
                format!(
                    "{} did not shut down cleanly ({line})",
                    plan.primary.describe()
                ),
            ));
        }
        None => {
            return Err(back_out(
                ctx,
                &plan,
                &paused,
                format!(
                    "the shutdown of {} could not be confirmed within {} s",
                    plan.primary.describe(),
                    timeout.as_secs()
                ),
            ));
        }
    };
    let Some(checkpoint) = checkpoint else {
        return Err(back_out(
            ctx,
            &plan,
            &paused,
            "the old primary's shutdown checkpoint location is unknown".into(),
        ));
    };
    // Everything the old primary wrote, its shutdown checkpoint included, must be here.
    let receive_timeout = Duration::from_secs(ctx.cfg.wal_receive_check_timeout as u64);
    let received = local::wait_until(receive_timeout, POLL, || {
        let lsn = local
            .value("SELECT pg_catalog.pg_last_wal_receive_lsn()::text", &[])
            .ok()??;
        Lsn::parse(&lsn).filter(|l| *l > checkpoint)
    });
    if received.is_none() && !a.always_promote {
        return Err(back_out(
            ctx,
            &plan,
            &paused,
            format!(
                "{} did not receive the old primary's shutdown checkpoint ({checkpoint}) within {} s",
                plan.me.describe(),
                receive_timeout.as_secs()
            ),
        ));
    }
    // The old primary is down and wrote nothing after its checkpoint: the voters need not
    // wait for its lease to run out. Told all at once: writes wait for this.
    let old = plan.primary.node_id.to_string();
    std::thread::scope(|scope| {
        for n in plan
            .nodes
            .iter()
            .filter(|n| n.active && n.node_id != plan.primary.node_id)
        {
            let old = &old;
            scope.spawn(move || {
                if let Ok(mut s) = n.connect() {
                    let _ = s.query("SELECT repmgr.primary_stopped($1::int)", &[Some(old)]);
                }
            });
        }
    });
    notice(format!("promoting {}", plan.me.describe()));
    let promote = if plan.allow_slot_loss {
        "SELECT repmgr.promote(allow_slot_loss => true)"
    } else {
        "SELECT repmgr.promote()"
    };
    let promoted = local.query_for(promote, &[], Duration::from_secs(120));
    if let Err(f) = promoted {
        return Err(back_out(
            ctx,
            &plan,
            &paused,
            format!("the promotion failed: {}", f.message),
        ));
    }
    notice(format!(
        "{} is the primary; {} rejoins as its standby",
        plan.me.describe(),
        plan.primary.describe()
    ));
    let mut rejoin: Vec<&str> = vec!["-d", &plan.me.conninfo, "node", "rejoin"];
    if a.force_rewind {
        rejoin.push("--force-rewind");
    }
    // A rejoin may rewind, start, and wait for the node to stream.
    let rejoin_bound = Duration::from_secs(
        (ctx.cfg.node_rejoin_timeout.max(0) + ctx.cfg.standby_reconnect_timeout.max(0)) as u64,
    ) + service_bound(ctx)
        + Duration::from_secs(300);
    let rejoined = on_old_primary(ctx, &plan, &rejoin, rejoin_bound);
    let mut incomplete = Vec::new();
    match &rejoined {
        Ok(r) if r.success => {}
        Ok(r) => incomplete.push(format!(
            "{} did not rejoin: {}",
            plan.primary.describe(),
            r.stderr.trim()
        )),
        Err(f) => incomplete.push(format!(
            "{} did not rejoin: {}",
            plan.primary.describe(),
            f.message
        )),
    }
    if a.siblings_follow {
        let id = plan.me.node_id.to_string();
        for s in &plan.siblings {
            let r = s.connect().and_then(|mut c| {
                c.query_for(
                    "SELECT repmgr.follow($1::int)",
                    &[Some(&id)],
                    Duration::from_secs(90),
                )
            });
            match r {
                Ok(_) => notice(format!("{} follows {}", s.describe(), plan.me.describe())),
                Err(f) => {
                    incomplete.push(format!("{} could not follow: {}", s.describe(), f.message))
                }
            }
        }
    }
    let unpaused = service::unpause(&paused);
    let details = format!(
        "{} promoted to primary, {} demoted to standby",
        plan.me.describe(),
        plan.primary.describe()
    );
    let mut p = Session::connect(&plan.me.conninfo, &plan.me.describe())?;
    record_event(
        &mut p,
        plan.me.node_id,
        event::STANDBY_SWITCHOVER,
        incomplete.is_empty(),
        &if incomplete.is_empty() {
            details.clone()
        } else {
            format!("{details}; incomplete: {}", incomplete.join("; "))
        },
    );
    if !unpaused {
        eprintln!("WARNING: some nodes are still paused; run repmgr service unpause");
    }
    if !incomplete.is_empty() {
        return Err(Failure::new(ERR_SWITCHOVER_INCOMPLETE, format!("switchover incomplete: {details}, but {}", incomplete.join("; ")))
            .hint(format!(
                "{} is the only primary. On the old primary's machine: repmgr -D {} -d '{}' node rejoin --force-rewind",
                plan.me.describe(),
                plan.primary_dir.display(),
                conninfo::mask(&plan.me.conninfo)
            )));
    }
    notice(format!(
        "switchover complete in {:.1} s: {details}",
        started.elapsed().as_secs_f64()
    ));
    Ok(SUCCESS)
}
