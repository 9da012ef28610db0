//! Copying another node's data directory with pg_basebackup: a new standby's clone, and the
//! re-clone of a node that pg_rewind cannot bring back (`node rejoin --reclone`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use repmgr_core::conninfo;

use crate::conn::{Session, debug};
use crate::context::Ctx;
use crate::exit::{ERR_BAD_BASEBACKUP, Failure, Result};
use crate::local;

/// pg_basebackup's arguments: a copy of the server at `conninfo` into `dir`, its WAL streamed
/// alongside, through replication slot `slot` when given (it must exist), plus repmgr.conf's
/// `pg_basebackup_options`.
pub fn arguments(
    ctx: &Ctx,
    dir: &Path,
    conninfo: &str,
    slot: Option<&str>,
    fast_checkpoint: bool,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-l".into(),
        "repmgr base backup".into(),
        "-D".into(),
        dir.to_string_lossy().into_owned(),
        "-d".into(),
        conninfo.to_string(),
        "-X".into(),
        "stream".into(),
        "-P".into(),
    ];
    if fast_checkpoint {
        args.push("--checkpoint=fast".into());
    }
    if let Some(s) = slot {
        args.extend(["-S".into(), s.to_string()]);
    }
    if let Some(extra) = &ctx.cfg.pg_basebackup_options {
        args.extend(extra.split_whitespace().map(str::to_string));
    }
    args
}

/// The program that takes the copy, for data directory `dir` (which may not exist yet).
pub fn program(ctx: &Ctx, dir: Option<&Path>) -> PathBuf {
    local::program(&ctx.cfg, dir, "pg_basebackup")
}

/// The command for `--dry-run` to show (passwords masked).
pub fn describe(program: &Path, args: &[String]) -> String {
    format!(
        "{} {}",
        program.display(),
        args.iter()
            .map(|a| conninfo::mask(a))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Runs pg_basebackup (`program`) with `args` as `owner`, its progress on this command's
/// output.
pub fn run(program: &Path, owner: Option<&str>, args: &[String]) -> Result<()> {
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = local::command_as(owner, program, &argv);
    debug(format!("running {c:?}"));
    let status = c
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| {
            Failure::new(
                ERR_BAD_BASEBACKUP,
                format!("could not run pg_basebackup: {e}"),
            )
        })?;
    if !status.success() {
        return Err(Failure::new(
            ERR_BAD_BASEBACKUP,
            format!("pg_basebackup failed ({status})"),
        ));
    }
    Ok(())
}

/// Creates physical replication slot `slot` on `s` unless it exists, holding WAL from now.
pub fn ensure_slot(s: &mut Session, slot: &str) -> Result<()> {
    s.query(
        "SELECT pg_catalog.pg_create_physical_replication_slot($1, true)
          WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)",
        &[Some(slot)],
    )?;
    Ok(())
}

/// Replaces the stopped node's data directory `dir` with a fresh copy of the primary's (at
/// `conninfo`, streaming through `slot` when given): what is left when pg_rewind cannot bring
/// it back. The node keeps its own files ([`local::OWN_FILES`]: its configuration, its failover
/// state, its rejoin attempts); everything else of its data is gone.
pub fn reclone(ctx: &Ctx, dir: &Path, conninfo: &str, slot: Option<&str>) -> Result<()> {
    // pg_basebackup writes a tablespace to the path the primary has it at, which is this
    // node's own copy of it: the directory would have to be emptied too, outside the data
    // directory, which is more than a rejoin should delete on its own.
    let tablespaces = std::fs::read_dir(dir.join("pg_tblspc"))
        .map(|it| it.count())
        .unwrap_or(0);
    if tablespaces > 0 {
        return Err(Failure::new(
            ERR_BAD_BASEBACKUP,
            format!(
                "{} has {tablespaces} tablespace(s) outside the data directory, which a re-clone would have to empty",
                dir.display()
            ),
        )
        .hint("Rebuild it by hand: empty its tablespace directories, then repmgr standby clone -F (pg_basebackup_options may map them with --tablespace-mapping)."));
    }
    let program = program(ctx, Some(dir));
    let owner = local::run_as(dir);
    let own = local::own_files(dir);
    local::empty_directory(dir)?;
    let args = arguments(ctx, dir, conninfo, slot, true);
    let copied = run(&program, owner.as_deref(), &args);
    if copied.is_err() {
        // pg_basebackup removes what it wrote, unless told not to (--no-clean).
        local::empty_directory(dir)?;
    }
    // Its own files go back, also after a failure: the next try needs its identity.
    let restored = local::restore_own_files(dir, &own);
    copied.map_err(|f| {
        f.hint(format!(
            "{} holds no copy now, only this node's own files; once the cause is fixed, run repmgr node rejoin --force-rewind --reclone again",
            dir.display()
        ))
    })?;
    restored
}
