//! `standby clone` from Barman: the newest backup of a Barman server, copied onto the new
//! standby's data directory over ssh with rsync, as repmgr 5 does. The standby then needs WAL
//! from the start of that backup: from the upstream if it still has it, else from Barman's
//! archive through the `restore_command` of repmgr.conf (`barman-wal-restore`, from
//! barman-cli, fetches it over ssh).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use repmgr_core::template::shell_quote;

use crate::config::Config;
use crate::conn::debug;
use crate::exit::{ERR_BAD_RSYNC, ERR_BARMAN, Failure, Result};
use crate::{local, remote};

/// How long a Barman command (a listing) may take over ssh.
const LISTING: Duration = Duration::from_secs(60);

/// A Barman server, as repmgr.conf names it.
pub struct Barman<'a> {
    cfg: &'a Config,
    host: &'a str,
    server: &'a str,
}

/// The backup a clone copies.
pub struct Backup {
    pub id: String,
    /// Its data directory on the Barman host.
    pub data: String,
}

impl<'a> Barman<'a> {
    /// The Barman server of repmgr.conf, unless `without` (`--without-barman`) or unset.
    pub fn of(cfg: &'a Config, without: bool) -> Option<Barman<'a>> {
        match (&cfg.barman_host, &cfg.barman_server) {
            (Some(host), Some(server)) if !without => Some(Barman { cfg, host, server }),
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        format!("Barman server \"{}\" on {}", self.server, self.host)
    }

    /// Runs `barman [-c barman_config] <args>` on the Barman host; its output, or an error
    /// with exit code 19 (ERR_BARMAN) saying what Barman said.
    fn barman(&self, args: &[&str]) -> Result<String> {
        let mut line = vec!["barman".to_string()];
        if let Some(c) = &self.cfg.barman_config {
            line.extend(["-c".to_string(), shell_quote(c)]);
        }
        line.extend(args.iter().map(|a| shell_quote(a)));
        let what = format!("barman {}", args.join(" "));
        let ran = remote::ssh(self.cfg, self.host, &line.join(" "), LISTING, &what)?;
        if !ran.success {
            let said = if ran.stderr.trim().is_empty() {
                ran.stdout.trim()
            } else {
                ran.stderr.trim()
            };
            return Err(Failure::new(
                ERR_BARMAN,
                format!(
                    "{what} failed on the Barman host {} (exit {}): {said}",
                    self.host, ran.code
                ),
            )
            .hint("Check barman_server (and barman_config) in repmgr.conf against barman list-servers on that host."));
        }
        Ok(ran.stdout)
    }

    /// The newest backup of the server, and where its data directory is on the Barman host.
    pub fn newest_backup(&self) -> Result<Backup> {
        let listed = self.barman(&["list-backups", "--minimal", self.server])?;
        let Some(id) = listed.lines().map(str::trim).find(|l| !l.is_empty()) else {
            return Err(Failure::new(
                ERR_BARMAN,
                format!("{} has no backup to clone from", self.describe()),
            )
            .hint(format!(
                "Take one on the Barman host: barman backup {}",
                self.server
            )));
        };
        let shown = self.barman(&["show-servers", self.server])?;
        let base = shown
            .lines()
            .find_map(|l| l.trim().strip_prefix("basebackups_directory:"))
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .ok_or_else(|| {
                Failure::new(
                    ERR_BARMAN,
                    format!(
                        "barman show-servers {} on {} names no basebackups_directory",
                        self.server, self.host
                    ),
                )
            })?;
        Ok(Backup {
            id: id.to_string(),
            data: format!("{base}/{id}/data"),
        })
    }

    /// The rsync command line that copies `backup` into `dir`.
    pub fn rsync_args(&self, backup: &Backup, dir: &Path) -> Vec<String> {
        // Files belong to whoever runs rsync (the data directory's owner), not to Barman's user.
        let mut args: Vec<String> = ["-a", "--no-owner", "--no-group", "--delete"]
            .map(str::to_string)
            .to_vec();
        args.extend(["-e".to_string(), format!("ssh {}", self.cfg.ssh_options)]);
        if let Some(extra) = &self.cfg.rsync_options {
            args.extend(extra.split_whitespace().map(str::to_string));
        }
        args.push(format!("{}:{}/", self.host, backup.data));
        args.push(format!("{}/", dir.display()));
        args
    }

    /// Copies `backup` into `dir` with rsync, run as `owner` when given; exit code 2
    /// (ERR_BAD_RSYNC) when rsync fails.
    pub fn restore(&self, backup: &Backup, dir: &Path, owner: Option<&str>) -> Result<()> {
        let args = self.rsync_args(backup, dir);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = local::command_as(owner, Path::new("rsync"), &argv);
        debug(format!("running {c:?}"));
        let out = c.stdin(Stdio::null()).output().map_err(|e| {
            Failure::new(ERR_BAD_RSYNC, format!("could not run rsync: {e}"))
                .hint("Install rsync on this host (and on the Barman host).")
        })?;
        if !out.status.success() {
            return Err(Failure::new(
                ERR_BAD_RSYNC,
                format!(
                    "rsync of backup {} from {} failed ({}): {}",
                    backup.id,
                    self.describe(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            )
            .hint(format!(
                "The directory {} holds a partial copy; run the clone again with -F.",
                dir.display()
            )));
        }
        // The copy may hold the upstream's lock and marker files as they were.
        for leftover in ["postmaster.pid", "postmaster.opts", "recovery.signal"] {
            let _ = std::fs::remove_file(dir.join(leftover));
        }
        Ok(())
    }
}
