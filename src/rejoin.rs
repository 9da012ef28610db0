//! The automatic rejoin: a replaced primary, or a standby whose timeline diverged, becomes a
//! standby of the current primary with no command typed (`repmgr.auto_rejoin`).
//!
//! The decision is the failover state machine's ([`repmgr_core::driver::Action::Rejoin`]);
//! this module carries it out. The server must stop for pg_rewind, and the worker stops with
//! it, so the work runs in a helper process of its own (its own process group, which the
//! postmaster's shutdown does not signal): the command line's `node service --action=stop`,
//! then `node rejoin --force-rewind` against the writable primary (with `--reclone` under
//! `repmgr.auto_reclone`: a fresh copy of the primary's data directory when pg_rewind cannot
//! bring it back), with the node's repmgr.conf when it has one (its service commands), else
//! what the server knows (its data directory, and its bindir first in `PATH`). The command
//! line records the outcome (`node_rejoin`) on the primary.
//!
//! Before starting it, the worker checks what it can: that pg_rewind can work here
//! (`wal_log_hints` or data checksums) unless a re-clone may replace it, that another node
//! answers as a writable primary, and that fewer than [`MAX_ATTEMPTS`] earlier attempts failed
//! to bring the node back (counted in a file of the data directory, which a rejoin keeps and a
//! streaming standby removes).

use std::fs;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pgrx::prelude::*;

use crate::catalog;
use crate::config::{Settings, server_setting};
use crate::db::{Local, in_transaction};
use crate::peer::PeerCache;

/// Attempts that may fail in a row before the node waits for an operator.
pub const MAX_ATTEMPTS: u32 = 3;

/// The attempt counter, relative to the data directory (the command line's rejoin keeps it
/// through pg_rewind).
pub const ATTEMPTS_FILE: &str = "repmgr_rejoin.attempts";

/// What the helper runs: `$1` the command line, `$2` the data directory, `$3` the writable
/// node's conninfo, `$4` repmgr.conf or empty, `$5` where to keep the WAL a rewind discards
/// or empty, `$6` the most that directory holds (MB), `$7` `on` to re-clone when pg_rewind
/// cannot. Values are positional parameters, never pasted into the script.
const SCRIPT: &str = r#"cli=$1 dir=$2 target=$3 conf=$4 keep=$5 keep_max=$6 reclone=$7
set --
if [ -n "$conf" ]; then set -- -f "$conf"; fi
echo "$(date -u '+%Y-%m-%d %H:%M:%S') UTC repmgr rejoin: stopping the server on $dir"
"$cli" "$@" -D "$dir" node service --action=stop || exit 1
set -- "$@" -D "$dir" -d "$target" node rejoin --force-rewind
if [ -n "$keep" ]; then set -- "$@" --keep-wal-directory "$keep" --keep-wal-max-size "$keep_max"; fi
if [ "$reclone" = on ]; then set -- "$@" --reclone; fi
echo "$(date -u '+%Y-%m-%d %H:%M:%S') UTC repmgr rejoin: repmgr node rejoin --force-rewind${keep:+ --keep-wal-directory $keep}${reclone:+ --reclone}"
exec "$cli" "$@"
"#;

fn data_directory() -> PathBuf {
    PathBuf::from(server_setting(c"data_directory").unwrap_or_default())
}

/// The directory of this server's programs (pg_ctl, pg_rewind).
fn bindir() -> Option<PathBuf> {
    let exe = unsafe { std::ffi::CStr::from_ptr((&raw const pg_sys::my_exec_path).cast()) };
    Path::new(&*exe.to_string_lossy())
        .parent()
        .map(Path::to_path_buf)
}

fn attempts(dir: &Path) -> u32 {
    fs::read_to_string(dir.join(ATTEMPTS_FILE))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Once this node streams as a standby, earlier attempts no longer count.
pub fn note_streaming() {
    if !crate::follow::receiver_streams() {
        return;
    }
    let f = data_directory().join(ATTEMPTS_FILE);
    if f.exists() && fs::remove_file(&f).is_ok() {
        log!(
            "repmgr: this node streams as a standby again; its automatic rejoin attempts are reset"
        );
    }
}

/// The helper's `PATH`: the server's bindir, then the server's own `PATH`, then the system's
/// directories it lacks. A server started by `pg_ctlcluster` or a service manager can have a
/// `PATH` without `/usr/bin`, where the service commands (`pg_ctlcluster`, `systemctl`) and
/// `date` live: seen on Debian, every attempt failed with "pg_ctlcluster: not found".
fn helper_path(bindir: Option<PathBuf>, server: Option<std::ffi::OsString>) -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = bindir.into_iter().collect();
    for d in server
        .iter()
        .flat_map(std::env::split_paths)
        .chain(SYSTEM_PATH.iter().map(PathBuf::from))
    {
        if !d.as_os_str().is_empty() && !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

const SYSTEM_PATH: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The command line to run.
fn cli(settings: &Settings) -> Option<PathBuf> {
    if let Some(p) = &settings.failover.cli_path {
        return Some(PathBuf::from(p));
    }
    bindir()
        .into_iter()
        .chain(["/usr/bin".into(), "/usr/local/bin".into()])
        .map(|d| d.join("repmgr"))
        .find(|p| p.is_file())
}

/// Where the helper writes what it does: beside the data directory when that is writable
/// (pg_rewind would remove a file inside it), else the temporary directory.
fn log_file(dir: &Path, node_id: i32) -> (PathBuf, fs::File) {
    let name = format!("repmgr-rejoin-node{node_id}.log");
    let beside = dir.parent().map(|p| p.join(&name));
    for p in beside.into_iter().chain([std::env::temp_dir().join(&name)]) {
        if let Ok(f) = fs::OpenOptions::new().create(true).append(true).open(&p) {
            return (p, f);
        }
    }
    (
        PathBuf::from("/dev/null"),
        fs::File::create("/dev/null").expect("/dev/null"),
    )
}

/// Starts the rejoin helper, or says why not and whether a later try may work.
pub fn start(settings: &Settings, why: &str) -> Result<(), (String, bool)> {
    let me = settings.describe();
    let on = |name| server_setting(name).as_deref() == Some("on");
    let reclone = settings.failover.auto_reclone;
    if !on(c"wal_log_hints") && !on(c"data_checksums") && !reclone {
        return Err((
            "pg_rewind needs wal_log_hints = on or data checksums, and this node has neither; set wal_log_hints = on (from the next start), or repmgr.auto_reclone = on to let it be re-cloned from the primary".into(),
            false,
        ));
    }
    let dir = data_directory();
    let (log_path, log) = log_file(&dir, settings.node_id);
    let tried = attempts(&dir);
    if tried >= MAX_ATTEMPTS {
        return Err((
            format!(
                "{tried} automatic rejoins did not bring it back as a streaming standby (see {})",
                log_path.display()
            ),
            false,
        ));
    }
    let Some(cli) = cli(settings) else {
        return Err((
            "the repmgr command line was not found in the server's bindir, /usr/bin or /usr/local/bin; set repmgr.cli_path".into(),
            false,
        ));
    };
    let nodes = in_transaction(|| catalog::nodes(&mut Local)).unwrap_or_default();
    let writable = PeerCache::default()
        .writable_primary(settings, &nodes)
        .map(|n| (n.conninfo.clone(), n.describe()));
    let Some((target, target_name)) = writable else {
        return Err((
            "no other node answers as a writable primary yet".into(),
            true,
        ));
    };
    if let Err(e) = fs::write(dir.join(ATTEMPTS_FILE), format!("{}\n", tried + 1)) {
        return Err((
            format!("could not count the attempt in {ATTEMPTS_FILE}: {e}"),
            false,
        ));
    }
    // The repmgr.conf the node was registered with (its service commands), if any: a
    // registration through SQL records postgresql.conf instead.
    let conf = nodes
        .iter()
        .find(|n| n.node_id == settings.node_id)
        .map(|n| n.config_file.as_str())
        .filter(|f| *f != settings.config_file && Path::new(f).is_file())
        .unwrap_or("");
    let path = helper_path(bindir(), std::env::var_os("PATH"));
    let mut err = log.try_clone().map_err(|e| (e.to_string(), false))?;
    let _ = writeln!(
        err,
        "repmgr rejoin: {me}: {why}; rejoining {target_name} (attempt {} of {MAX_ATTEMPTS})",
        tried + 1
    );
    let spawned = Command::new("/bin/sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("repmgr-rejoin")
        .arg(&cli)
        .arg(&dir)
        .arg(&target)
        .arg(conf)
        .arg(
            settings
                .failover
                .keep_wal_directory
                .as_deref()
                .unwrap_or(""),
        )
        .arg(settings.failover.keep_wal_max_mb.to_string())
        .arg(if reclone { "on" } else { "" })
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        // Its own process group: the postmaster signals its children's groups as it stops.
        .process_group(0)
        .spawn();
    match spawned {
        Ok(child) => {
            log!(
                "repmgr: {me} starts its rejoin of {target_name} in process {} (attempt {} of {MAX_ATTEMPTS}); the server stops now, and {} says what happens",
                child.id(),
                tried + 1,
                log_path.display()
            );
            Ok(())
        }
        Err(e) => Err((format!("could not start /bin/sh for the rejoin: {e}"), true)),
    }
}
