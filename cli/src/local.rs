//! Work on this machine's PostgreSQL: its programs, its data directory, its control file, its
//! replication settings and its service commands.
//!
//! Run as root, every program and command that touches a data directory runs as the
//! directory's owner (through `runuser`), because PostgreSQL refuses root and files must keep
//! their owner.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use repmgr_core::lsn::Lsn;

use crate::config::Config;
use crate::conn::debug;
use crate::exit::{ERR_LOCAL_COMMAND, Failure, Result};

/// The user owning `path`, when we run as root and it is someone else: commands for that
/// directory run as this user.
pub fn run_as(path: &Path) -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let uid = std::fs::metadata(path).ok()?.uid();
    if uid == 0 {
        return None;
    }
    let pw = unsafe { libc::getpwuid(uid) };
    if pw.is_null() {
        return None;
    }
    Some(
        unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// `program args…`, run as `owner` when given.
pub fn command_as(owner: Option<&str>, program: &Path, args: &[&str]) -> Command {
    match owner {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(program).args(args);
            c
        }
        None => {
            let mut c = Command::new(program);
            c.args(args);
            c
        }
    }
}

/// A shell command line, run with `/bin/sh -c` as `owner` when given.
pub fn shell_as(owner: Option<&str>, line: &str) -> Command {
    command_as(owner, Path::new("/bin/sh"), &["-c", line])
}

/// Runs `c`, capturing its output; a failure to start it is an error.
pub fn output(mut c: Command, what: &str) -> Result<Output> {
    debug(format!("running {what}: {c:?}"));
    c.stdin(Stdio::null())
        .output()
        .map_err(|e| Failure::new(ERR_LOCAL_COMMAND, format!("could not run {what}: {e}")))
}

/// Runs `c` and requires success; the error carries its stderr.
pub fn run(c: Command, what: &str) -> Result<String> {
    let out = output(c, what)?;
    if !out.status.success() {
        return Err(Failure::new(
            ERR_LOCAL_COMMAND,
            format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where PostgreSQL's programs are: `pg_bindir` from repmgr.conf, else the Debian directory of
/// the data directory's major version, else `pg_config --bindir`, else the PATH.
pub fn bindir(cfg: &Config, datadir: Option<&Path>) -> Option<PathBuf> {
    if let Some(d) = &cfg.pg_bindir {
        return Some(d.clone());
    }
    if let Some(version) = datadir.and_then(|d| std::fs::read_to_string(d.join("PG_VERSION")).ok())
    {
        let d = PathBuf::from(format!("/usr/lib/postgresql/{}/bin", version.trim()));
        if d.join("pg_ctl").exists() {
            return Some(d);
        }
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    d.join("pg_ctl").exists().then_some(d)
}

/// The path of a PostgreSQL program.
pub fn program(cfg: &Config, datadir: Option<&Path>, name: &str) -> PathBuf {
    bindir(cfg, datadir).map_or_else(|| PathBuf::from(name), |d| d.join(name))
}

/// Finishes the crash recovery of a stopped server in single-user mode, as pg_rewind does
/// before rewinding, for a data directory without its postgresql.conf (Debian keeps it in
/// /etc/postgresql), where pg_rewind's own attempt fails. Recovery needs none of its settings
/// but `wal_log_hints`, which the checkpoint ending it records for pg_rewind to check: the
/// caller has checked that the node ran with it (or with checksums).
pub fn finish_crash_recovery(cfg: &Config, datadir: &Path) -> Result<()> {
    if datadir.join("postgresql.conf").exists() {
        return Ok(());
    }
    let dir = datadir.to_string_lossy();
    let c = command_as(
        run_as(datadir).as_deref(),
        &program(cfg, Some(datadir), "postgres"),
        &[
            "--single",
            "-F",
            "-D",
            &dir,
            "-c",
            "config_file=/dev/null",
            "-c",
            "wal_log_hints=on",
            "template1",
        ],
    );
    run(c, "crash recovery in single-user mode (postgres --single)").map(|_| ())
}

/// What `pg_controldata` says about a data directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ControlData {
    /// "shut down", "shut down in recovery", "in production", "in archive recovery", …
    pub state: String,
    pub system_identifier: String,
    pub checkpoint: Option<Lsn>,
    pub checkpoint_timeline: Option<u32>,
    pub min_recovery_end: Option<Lsn>,
    pub min_recovery_timeline: Option<u32>,
    pub checksums: bool,
    pub wal_log_hints: bool,
}

impl ControlData {
    pub fn parse(text: &str) -> ControlData {
        let mut c = ControlData::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "Database cluster state" => c.state = v.to_string(),
                "Database system identifier" => c.system_identifier = v.to_string(),
                "Latest checkpoint location" => c.checkpoint = Lsn::parse(v),
                "Latest checkpoint's TimeLineID" => c.checkpoint_timeline = v.parse().ok(),
                "Minimum recovery ending location" => {
                    c.min_recovery_end = Lsn::parse(v).filter(|l| l.0 != 0)
                }
                "Min recovery ending loc's timeline" => {
                    c.min_recovery_timeline = v.parse().ok().filter(|t| *t != 0)
                }
                "Data page checksum version" => c.checksums = v != "0",
                "wal_log_hints setting" => c.wal_log_hints = v == "on",
                _ => {}
            }
        }
        c
    }

    /// Shut down cleanly (as a primary or as a standby).
    pub fn shut_down(&self) -> bool {
        self.state == "shut down" || self.state == "shut down in recovery"
    }

    /// The timeline the directory's WAL ends on.
    pub fn timeline(&self) -> Option<u32> {
        self.min_recovery_timeline.or(self.checkpoint_timeline)
    }
}

/// Reads the control file of `datadir`.
pub fn control_data(cfg: &Config, datadir: &Path) -> Result<ControlData> {
    let mut c = command_as(
        run_as(datadir).as_deref(),
        &program(cfg, Some(datadir), "pg_controldata"),
        &["-D", &datadir.to_string_lossy()],
    );
    c.env("LC_ALL", "C");
    let text = run(c, "pg_controldata")?;
    let data = ControlData::parse(&text);
    if data.state.is_empty() {
        return Err(Failure::new(
            ERR_LOCAL_COMMAND,
            format!(
                "pg_controldata printed no cluster state for {}",
                datadir.display()
            ),
        ));
    }
    Ok(data)
}

/// The postmaster's pid if a server runs on `datadir`. A postmaster killed a moment ago may
/// not be reaped yet (a zombie, where the init of a container reaps late): it runs nothing,
/// but PostgreSQL takes its lock file for a running server's, so it is waited for, up to 5 s.
pub fn running_pid(datadir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(datadir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
            return None;
        }
        if !zombie(pid) || std::time::Instant::now() >= deadline {
            return Some(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Whether process `pid` has exited and waits to be reaped.
fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Whether `dir` is absent or an empty directory.
pub fn is_empty_dir(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut it) => it.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Quotes a value for postgresql.conf.
pub fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// Sets (`Some`) or removes (`None`) settings in `postgresql.auto.conf` of a stopped server,
/// keeping the file's owner.
pub fn set_auto_conf(datadir: &Path, settings: &[(&str, Option<&str>)]) -> Result<()> {
    let path = datadir.join("postgresql.auto.conf");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut lines: Vec<String> = old
        .lines()
        .filter(|l| {
            let name = l
                .split(['=', ' ', '\t'])
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            !settings.iter().any(|(k, _)| k.eq_ignore_ascii_case(&name))
        })
        .map(str::to_string)
        .collect();
    if lines.is_empty() {
        lines.push("# Do not edit this file manually!".into());
        lines.push("# It will be overwritten by the ALTER SYSTEM command.".into());
    }
    for (k, v) in settings {
        if let Some(v) = v {
            lines.push(format!("{k} = {}", conf_quote(v)));
        }
    }
    write_owned(&path, &(lines.join("\n") + "\n"), datadir)
}

/// This node's own files in its data directory, which a copy from another node (pg_rewind,
/// a re-clone) must not replace: the configuration (its identity, port and access rules), and
/// the failover state (term, whom it supports), whose copy would name the source, be ignored,
/// and leave this node with no memory of its votes.
pub const OWN_FILES: &[&str] = &[
    "postgresql.conf",
    "postgresql.auto.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    "repmgr_failover.state",
    // The automatic rejoin's attempt counter (the extension's src/rejoin.rs).
    "repmgr_rejoin.attempts",
];

/// The [`OWN_FILES`] present in `datadir`, with their contents.
pub fn own_files(datadir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    OWN_FILES
        .iter()
        .map(|f| datadir.join(f))
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect()
}

/// Puts back what [`own_files`] read, with the owner of `datadir`.
pub fn restore_own_files(datadir: &Path, own: &[(PathBuf, Vec<u8>)]) -> Result<()> {
    for (p, bytes) in own {
        write_owned(p, &String::from_utf8_lossy(bytes), datadir)?;
    }
    Ok(())
}

/// Removes everything inside `dir`; the directory itself stays, with its owner and mode.
pub fn empty_directory(dir: &Path) -> Result<()> {
    std::fs::read_dir(dir)
        .and_then(|it| {
            it.filter_map(|e| e.ok()).try_for_each(|e| {
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    std::fs::remove_dir_all(p)
                } else {
                    std::fs::remove_file(p)
                }
            })
        })
        .map_err(|e| {
            Failure::new(
                ERR_LOCAL_COMMAND,
                format!("could not empty {}: {e}", dir.display()),
            )
        })
}

/// Writes `path` with the owner of `datadir`.
pub fn write_owned(path: &Path, text: &str, datadir: &Path) -> Result<()> {
    std::fs::write(path, text).map_err(|e| {
        Failure::new(
            ERR_LOCAL_COMMAND,
            format!("could not write {}: {e}", path.display()),
        )
    })?;
    if let Ok(meta) = std::fs::metadata(datadir) {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap_or_default();
        unsafe { libc::chown(c.as_ptr(), meta.uid(), meta.gid()) };
    }
    Ok(())
}

/// What a service command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Start,
    Stop,
    Restart,
    Reload,
    Promote,
}

/// The command line for `action`: the service command from repmgr.conf, else pg_ctl's.
pub fn service_command(cfg: &Config, datadir: &Path, action: Service) -> String {
    let configured = match action {
        Service::Start => &cfg.service_start_command,
        Service::Stop => &cfg.service_stop_command,
        Service::Restart => &cfg.service_restart_command,
        Service::Reload => &cfg.service_reload_command,
        Service::Promote => &cfg.service_promote_command,
    };
    if let Some(c) = configured {
        return c.clone();
    }
    let pg_ctl = program(cfg, Some(datadir), "pg_ctl");
    let d = repmgr_core::template::shell_quote(&datadir.to_string_lossy());
    let p = repmgr_core::template::shell_quote(&pg_ctl.to_string_lossy());
    match action {
        // The server's output goes where its logging settings send it; without a log file
        // configured, to a file in the data directory rather than to this terminal.
        Service::Start => format!("{p} -w -D {d} -l {d}/repmgr-start.log start"),
        // Without -w: pg_ctl looks for the end every 100 ms, which a switchover's clients
        // would wait for; `service` looks every 10 ms instead.
        Service::Stop => format!("{p} -D {d} -W -m fast stop"),
        Service::Restart => format!("{p} -w -D {d} -m fast -l {d}/repmgr-start.log restart"),
        Service::Reload => format!("{p} -w -D {d} reload"),
        Service::Promote => format!("{p} -w -D {d} promote"),
    }
}

/// Runs the service command for `action` on the local data directory.
pub fn service(cfg: &Config, datadir: &Path, action: Service) -> Result<()> {
    let line = service_command(cfg, datadir, action);
    let out = output(
        shell_as(run_as(datadir).as_deref(), &line),
        "the service command",
    )?;
    if !out.status.success() {
        return Err(Failure::new(
            ERR_LOCAL_COMMAND,
            format!(
                "the {:?} command \"{line}\" failed ({}): {}",
                action,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
        .hint("Check the server log, and service_*_command in repmgr.conf."));
    }
    if action == Service::Stop && cfg.service_stop_command.is_none() {
        wait_for_stop(datadir, STOP_TIMEOUT)?;
    }
    Ok(())
}

/// How long a stop may take, as for `pg_ctl -w`.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until the postmaster of `datadir` has exited: it removes `postmaster.pid` last.
fn wait_for_stop(datadir: &Path, timeout: Duration) -> Result<()> {
    let pid_file = datadir.join("postmaster.pid");
    wait_until(timeout, Duration::from_millis(10), || {
        (!pid_file.exists()).then_some(())
    })
    .ok_or_else(|| {
        Failure::new(
            ERR_LOCAL_COMMAND,
            format!(
                "the server in {} did not stop within {} s",
                datadir.display(),
                timeout.as_secs()
            ),
        )
        .hint("Check the server log; a long shutdown checkpoint or a client that does not disconnect can hold it.")
    })
}

/// Calls `check` every `every` until it returns `Some`, for at most `timeout`.
pub fn wait_until<T>(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTROLDATA: &str = "pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7312345678901234567
Database cluster state:               shut down in recovery
pg_control last modified:             Wed 25 Nov 2026 10:00:00 PM UTC
Latest checkpoint location:           0/3000060
Latest checkpoint's REDO location:    0/3000028
Latest checkpoint's TimeLineID:       1
Minimum recovery ending location:     0/3000110
Min recovery ending loc's timeline:   2
wal_log_hints setting:                on
Data page checksum version:           0
";

    #[test]
    fn reads_pg_controldata() {
        let c = ControlData::parse(CONTROLDATA);
        assert_eq!(c.state, "shut down in recovery");
        assert!(c.shut_down());
        assert_eq!(c.system_identifier, "7312345678901234567");
        assert_eq!(c.checkpoint, Lsn::parse("0/3000060"));
        assert_eq!(c.checkpoint_timeline, Some(1));
        assert_eq!(c.min_recovery_end, Lsn::parse("0/3000110"));
        assert_eq!(c.timeline(), Some(2));
        assert!(c.wal_log_hints);
        assert!(!c.checksums);
    }

    #[test]
    fn default_service_commands_quote_the_directory() {
        let cfg = Config {
            pg_bindir: Some("/opt/pg/bin".into()),
            ..Config::default()
        };
        let d = Path::new("/data/it's here");
        assert_eq!(
            service_command(&cfg, d, Service::Stop),
            "'/opt/pg/bin/pg_ctl' -D '/data/it'\\''s here' -W -m fast stop"
        );
        let cfg = Config {
            service_start_command: Some("systemctl start postgresql@15-main".into()),
            ..cfg
        };
        assert_eq!(
            service_command(&cfg, d, Service::Start),
            "systemctl start postgresql@15-main"
        );
    }

    #[test]
    fn auto_conf_settings_are_replaced() {
        let d = std::env::temp_dir().join(format!("repmgr-cli-autoconf-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("postgresql.auto.conf"),
            "# Do not edit this file manually!\nprimary_conninfo = 'host=old'\nwork_mem = '4MB'\n",
        )
        .unwrap();
        set_auto_conf(
            &d,
            &[
                ("primary_conninfo", Some("host=new user='a b'")),
                ("primary_slot_name", None),
            ],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("postgresql.auto.conf")).unwrap(),
            "# Do not edit this file manually!\nwork_mem = '4MB'\nprimary_conninfo = 'host=new user=''a b'''\n"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
