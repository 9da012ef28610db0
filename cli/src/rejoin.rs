//! `node rejoin`: a stopped former primary or diverged standby comes back as a standby of the
//! primary. It follows without a rewind when its WAL allows it, else pg_rewind rewinds it
//! (`--force-rewind`), else, when asked (`--reclone`, which the automatic rejoin passes under
//! `repmgr.auto_reclone`), its data directory is replaced with a fresh copy of the primary's.
//! Whatever happens is recorded on the primary as `node_rejoin`.

use std::path::Path;
use std::time::{Duration, Instant};

use repmgr_core::event;
use repmgr_core::lsn::switchpoint;
use repmgr_core::node::NodeRecord;

use crate::basebackup;
use crate::catalog;
use crate::conn::Session;
use crate::context::Ctx;
use crate::discarded::{self, Keep, OwnWal};
use crate::exit::{ERR_NO_RESTART, ERR_REJOIN_FAIL, Failure, Result, SUCCESS};
use crate::local::{self, Service};
use crate::node::record_event;
use crate::register::notice;

/// What `node rejoin` was asked to do.
#[derive(Debug, Default)]
pub struct Options {
    /// Run pg_rewind when the timelines diverged.
    pub force_rewind: bool,
    /// Re-clone the node when pg_rewind cannot bring it back.
    pub reclone: bool,
    /// Keep the WAL files a rewind discards.
    pub keep: Option<Keep>,
}

/// This stopped node's id and name, from its postgresql.conf (`postgres -C`), checked against
/// repmgr.conf.
fn stopped_identity(ctx: &Ctx, dir: &Path) -> Result<(i32, Option<String>)> {
    let postgres = local::program(&ctx.cfg, Some(dir), "postgres");
    let owner = local::run_as(dir);
    let read = |name: &str| -> Option<String> {
        let c = local::command_as(
            owner.as_deref(),
            &postgres,
            &["-C", name, "-D", &dir.to_string_lossy()],
        );
        local::run(c, "postgres -C")
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let server_id: Option<i32> = read("repmgr.node_id")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0);
    let server_name = read("repmgr.node_name");
    if let (Some(a), Some(b)) = (ctx.cfg.node_id, server_id)
        && a != b
    {
        return Err(Failure::config(format!(
            "repmgr.conf says node_id = {a} but {} has repmgr.node_id = {b}",
            dir.display()
        )));
    }
    let id = server_id.or(ctx.cfg.node_id).ok_or_else(|| {
        Failure::config(format!(
            "no repmgr.node_id in the configuration of {}",
            dir.display()
        ))
        .hint("Set node_id in repmgr.conf (-f), or repmgr.node_id in the node's postgresql.conf.")
    })?;
    Ok((id, server_name.or_else(|| ctx.cfg.node_name.clone())))
}

/// Whether this stopped node must be rewound to follow the primary `p`, why, and where its
/// own WAL begins.
fn needs_rewind(p: &mut Session, cd: &local::ControlData) -> Result<(bool, String, OwnWal)> {
    let local_tli = cd.timeline().unwrap_or(1);
    let local_end = cd.checkpoint.max(cd.min_recovery_end).unwrap_or_default();
    let r = p.query(
        "SELECT (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()), pg_catalog.pg_current_wal_lsn()::text",
        &[],
    )?;
    let primary_tli: u32 = r.get(0, 0).and_then(|v| v.parse().ok()).unwrap_or(1);
    let primary_lsn = r
        .get(0, 1)
        .and_then(repmgr_core::lsn::Lsn::parse)
        .unwrap_or_default();
    if local_tli == primary_tli {
        let ahead = local_end > primary_lsn;
        return Ok((
            ahead,
            format!(
                "same timeline {local_tli}; this node ends at {local_end}, the primary is at {primary_lsn}"
            ),
            ahead.then_some((local_tli, primary_lsn)),
        ));
    }
    if local_tli > primary_tli {
        return Ok((
            true,
            format!("this node is on timeline {local_tli}, ahead of the primary's {primary_tli}"),
            None,
        ));
    }
    let file = format!("pg_wal/{primary_tli:08X}.history");
    let history = p
        .value("SELECT pg_catalog.pg_read_file($1)", &[Some(&file)])?
        .unwrap_or_default();
    match switchpoint(&history, local_tli) {
        Some(sw) => Ok((
            local_end >= sw,
            format!(
                "this node's timeline {local_tli} ends at {local_end}; the primary's timeline {primary_tli} left it at {sw}"
            ),
            Some((local_tli, sw)),
        )),
        None => Ok((
            true,
            format!("timeline {local_tli} is not in the primary's history"),
            None,
        )),
    }
}

fn rewind(ctx: &Ctx, dir: &Path, primary: &NodeRecord) -> Result<()> {
    let cd = local::control_data(&ctx.cfg, dir)?;
    if !cd.wal_log_hints && !cd.checksums {
        return Err(Failure::new(
            ERR_REJOIN_FAIL,
            format!("pg_rewind cannot run on {}: it needs wal_log_hints = on or data checksums, and this node has neither", dir.display()),
        )
        .hint("Set wal_log_hints = on (it takes effect at the next start), or rebuild this node: repmgr node rejoin --force-rewind --reclone."));
    }
    if !cd.shut_down() {
        local::finish_crash_recovery(&ctx.cfg, dir)?;
    }
    let own = local::own_files(dir);
    // The node's own conninfo, database included: pg_hba.conf often lets the repmgr role
    // into its database only.
    let source = &primary.conninfo;
    notice(format!("running pg_rewind against {}", primary.describe()));
    let c = local::command_as(
        local::run_as(dir).as_deref(),
        &local::program(&ctx.cfg, Some(dir), "pg_rewind"),
        &[
            "-D",
            &dir.to_string_lossy(),
            &format!("--source-server={source}"),
        ],
    );
    let out = local::output(c, "pg_rewind")?;
    // This node keeps its own configuration (its identity, port and access rules) and its
    // failover state.
    local::restore_own_files(dir, &own)?;
    if !out.status.success() {
        return Err(Failure::new(
            ERR_REJOIN_FAIL,
            format!(
                "pg_rewind failed: {}",
                rewind_error(&String::from_utf8_lossy(&out.stderr))
            ),
        ));
    }
    Ok(())
}

/// What pg_rewind said went wrong: its error lines, without its progress messages.
fn rewind_error(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("error:") || l.contains("fatal:"))
        .collect();
    match (errors.is_empty(), lines.last()) {
        (false, _) => errors.join("; "),
        (true, Some(last)) => last.to_string(),
        (true, None) => "it printed nothing".into(),
    }
}

/// The primary's conninfo for a copy of its data directory, as its replication user.
fn copy_conninfo(primary: &NodeRecord) -> Result<String> {
    let c = if primary.repluser.is_empty() {
        Ok(primary.conninfo.clone())
    } else {
        repmgr_core::conninfo::with(&primary.conninfo, "user", &primary.repluser)
    };
    c.map_err(|e| {
        Failure::config(format!(
            "the conninfo of {} is not valid: {e}",
            primary.describe()
        ))
    })
}

/// How the node got onto the primary's history, for the event.
enum Way {
    /// Its WAL allowed it to follow as it was.
    Follow,
    /// pg_rewind; the words say what it discarded.
    Rewound(String),
    /// pg_rewind could not (`why`); a fresh copy of the primary's data directory.
    Recloned { why: String, discarded: String },
}

pub fn rejoin(ctx: &Ctx, o: &Options) -> Result<i32> {
    let dir = ctx.require_data_directory("node rejoin")?;
    let fail = |m: String| Failure::new(ERR_REJOIN_FAIL, m);
    if let Some(pid) = local::running_pid(&dir) {
        return Err(fail(format!(
            "the server on {} is running (pid {pid}); node rejoin works on a stopped server",
            dir.display()
        ))
        .hint("Stop it first: repmgr node service --action=stop"));
    }
    // A re-clone that failed leaves the node's own files and no cluster: only a re-clone can
    // go on from there.
    let empty = o.reclone && !dir.join("PG_VERSION").exists();
    let cd = if empty {
        None
    } else {
        Some(local::control_data(&ctx.cfg, &dir)?)
    };
    if let Some(cd) = &cd {
        if cd.state == "shutting down" {
            return Err(fail(format!(
                "the server on {} is still shutting down",
                dir.display()
            ))
            .hint("Wait for it to stop, then try again."));
        }
        if !cd.shut_down() && !o.force_rewind {
            return Err(fail(format!("{} was not shut down cleanly (state: {})", dir.display(), cd.state))
                .hint("Run again with --force-rewind: pg_rewind recovers it and rewinds it onto the primary's timeline."));
        }
    }
    let (my_id, _) = stopped_identity(ctx, &dir)?;
    let t = ctx.target();
    if !t.is_given() {
        return Err(Failure::new(
            crate::exit::ERR_BAD_ARGUMENT,
            "node rejoin needs -d with the connection string of a running node (usually the primary)",
        ));
    }
    let mut entry = Session::connect(&t.conninfo()?, "the node given with -d")?;
    let nodes = catalog::nodes(&mut entry)?;
    let (primary, mut p) = catalog::connect_primary(&nodes)?;
    let me = catalog::node(&nodes, my_id)?.clone();
    if me.node_id == primary.node_id {
        return Err(fail(format!(
            "{} is the registered primary; it cannot rejoin itself",
            me.describe()
        )));
    }
    let Some(cd) = cd else {
        if ctx.g.dry_run {
            notice(format!(
                "--dry-run: {} holds no data directory, only this node's own files; it would be re-cloned from {}",
                dir.display(),
                primary.describe()
            ));
            return Ok(SUCCESS);
        }
        let why = format!(
            "{} held no data directory (an earlier re-clone did not finish)",
            dir.display()
        );
        reclone(ctx, &dir, &me, &primary, &mut p, &why)?;
        let way = Way::Recloned {
            why,
            discarded: String::new(),
        };
        return start_as_standby(ctx, &dir, &me, &primary, &mut p, way);
    };
    let sysid = p
        .value(
            "SELECT system_identifier::text FROM pg_catalog.pg_control_system()",
            &[],
        )?
        .unwrap_or_default();
    if sysid != cd.system_identifier {
        return Err(fail(format!(
            "{} belongs to another cluster: its system identifier is {}, the primary's is {sysid}",
            dir.display(),
            cd.system_identifier
        )));
    }
    // The primary's control file names its timeline only after a checkpoint.
    let _ = p.query("CHECKPOINT", &[]);
    let (rewind_needed, why, own) = needs_rewind(&mut p, &cd)?;
    let rewind_now = (rewind_needed || !cd.shut_down()) && o.force_rewind;
    if rewind_needed && !o.force_rewind {
        return Err(fail(format!("{} cannot follow {}: {why}", me.describe(), primary.describe()))
            .hint("Run again with --force-rewind to rewind it with pg_rewind (what only this node wrote is discarded)."));
    }
    if ctx.g.dry_run {
        notice(format!(
            "--dry-run: {} can rejoin {} ({why}){}",
            me.describe(),
            primary.describe(),
            match (rewind_now, o.reclone) {
                (true, true) =>
                    "; pg_rewind would run first, and a re-clone if pg_rewind cannot bring it back",
                (true, false) => "; pg_rewind would run first",
                _ => "",
            }
        ));
        return Ok(SUCCESS);
    }
    if !rewind_now {
        return start_as_standby(ctx, &dir, &me, &primary, &mut p, Way::Follow);
    }
    // Read before pg_rewind replaces the WAL.
    let discarded = discarded::describe_and_keep(ctx, &dir, me.node_id, own, o.keep.as_ref());
    if !discarded.is_empty() {
        notice(format!("pg_rewind runs{discarded}"));
    }
    let way = match rewind(ctx, &dir, &primary) {
        Ok(()) => Way::Rewound(discarded),
        Err(f) if o.reclone => {
            notice(format!(
                "{}; re-cloning {} from {} instead (--reclone)",
                f.message,
                me.describe(),
                primary.describe()
            ));
            reclone(ctx, &dir, &me, &primary, &mut p, &f.message)?;
            Way::Recloned {
                why: f.message,
                discarded,
            }
        }
        Err(f) => {
            let details = format!(
                "{} could not be rewound onto {}: {}; the server stays stopped: rebuild it from the primary with repmgr node rejoin --force-rewind --reclone (it keeps its configuration files), or set repmgr.auto_reclone = on and start it",
                me.describe(),
                primary.describe(),
                f.message
            );
            record_event(&mut p, me.node_id, event::NODE_REJOIN, false, &details);
            let hint = f.hint.clone().unwrap_or_else(|| {
                format!(
                    "On this machine: repmgr -D {} -d '<the primary>' node rejoin --force-rewind --reclone",
                    dir.display()
                )
            });
            return Err(Failure::new(ERR_REJOIN_FAIL, details).hint(hint));
        }
    };
    start_as_standby(ctx, &dir, &me, &primary, &mut p, way)
}

/// Re-clones this node from the primary, recording a failure on the primary.
fn reclone(
    ctx: &Ctx,
    dir: &Path,
    me: &NodeRecord,
    primary: &NodeRecord,
    p: &mut Session,
    why: &str,
) -> Result<()> {
    let done = copy_conninfo(primary).and_then(|conninfo| {
        if let Some(slot) = &me.slot_name {
            basebackup::ensure_slot(p, slot)?;
        }
        notice(format!(
            "re-cloning {} from {} into {} with pg_basebackup",
            me.describe(),
            primary.describe(),
            dir.display()
        ));
        basebackup::reclone(ctx, dir, &conninfo, me.slot_name.as_deref())
    });
    done.map_err(|mut f| {
        f.message = format!(
            "{} could not be re-cloned from {} ({why}): {}; the server stays stopped",
            me.describe(),
            primary.describe(),
            f.message
        );
        record_event(p, me.node_id, event::NODE_REJOIN, false, &f.message);
        f
    })
}

/// Points the stopped node at the primary, starts it, waits until it streams, marks it an
/// active standby of the primary and records the rejoin.
fn start_as_standby(
    ctx: &Ctx,
    dir: &Path,
    me: &NodeRecord,
    primary: &NodeRecord,
    p: &mut Session,
    way: Way,
) -> Result<i32> {
    let fail = |m: String| Failure::new(ERR_REJOIN_FAIL, m);
    let conninfo =
        repmgr_core::conninfo::replication(&primary.conninfo, &primary.repluser, &me.node_name)
            .map_err(|e| {
                Failure::config(format!(
                    "the conninfo of {} is not valid: {e}",
                    primary.describe()
                ))
            })?;
    if let Some(slot) = &me.slot_name {
        basebackup::ensure_slot(p, slot)?;
    }
    local::set_auto_conf(
        dir,
        &[
            ("primary_conninfo", Some(&conninfo)),
            ("primary_slot_name", me.slot_name.as_deref()),
        ],
    )?;
    local::write_owned(&dir.join("standby.signal"), "", dir)?;
    if let Err(f) = local::service(&ctx.cfg, dir, Service::Start) {
        record_event(
            p,
            me.node_id,
            event::NODE_REJOIN,
            false,
            &format!("{} could not be started: {}", me.describe(), f.message),
        );
        return Err(f.code(ERR_NO_RESTART));
    }
    let deadline = Instant::now() + Duration::from_secs(ctx.cfg.node_rejoin_timeout as u64);
    loop {
        let streaming = p
            .value(
                "SELECT 1 FROM pg_catalog.pg_stat_replication WHERE application_name = $1 AND state = 'streaming'",
                &[Some(&me.node_name)],
            )?
            .is_some();
        if streaming {
            break;
        }
        if Instant::now() > deadline {
            let details = format!(
                "{} started but is not streaming from {} after {} s",
                me.describe(),
                primary.describe(),
                ctx.cfg.node_rejoin_timeout
            );
            record_event(p, me.node_id, event::NODE_REJOIN, false, &details);
            return Err(fail(details).hint("Check this node's server log (a timeline that forked before this node's end needs --force-rewind)."));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    p.query(
        "UPDATE repmgr.nodes SET active = true, type = 'standby', upstream_node_id = $2::int WHERE node_id = $1::int",
        &[Some(&me.node_id.to_string()), Some(&primary.node_id.to_string())],
    )?;
    let how = match way {
        Way::Follow => String::new(),
        Way::Rewound(discarded) => format!(" (rewound with pg_rewind{discarded})"),
        Way::Recloned { why, discarded } => format!(
            " (re-cloned with pg_basebackup, its earlier data directory discarded, because {why}{discarded})"
        ),
    };
    let details = format!(
        "{} is now a standby of {}{how}",
        me.describe(),
        primary.describe()
    );
    record_event(p, me.node_id, event::NODE_REJOIN, true, &details);
    notice(&details);
    Ok(SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_rewinds_error_lines_are_kept_and_its_progress_dropped() {
        let stderr = "pg_rewind: servers diverged at WAL location 0/5000108 on timeline 1\n\
pg_rewind: error: could not open file \"/data/pg_wal/000000010000000000000004\": No such file or directory\n\
pg_rewind: error: could not find previous WAL record at 0/5000108\n";
        assert_eq!(
            rewind_error(stderr),
            "pg_rewind: error: could not open file \"/data/pg_wal/000000010000000000000004\": No such file or directory; pg_rewind: error: could not find previous WAL record at 0/5000108"
        );
        assert_eq!(rewind_error("something odd\nlast words\n"), "last words");
        assert_eq!(rewind_error(""), "it printed nothing");
    }
}
