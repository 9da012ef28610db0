//! `repmgr.conf`: the command line's settings, in repmgr's file format.
//!
//! The format is PostgreSQL's: `name = value` (the `=` may be left out), `#` comments, values
//! bare or single-quoted with `''` or `\'` for a quote, and `include`, `include_if_exists` and
//! `include_dir`. Only what the command line needs is read; repmgrd's settings, which live in
//! postgresql.conf as `repmgr.*` with this extension, are recognised and reported as such, and
//! anything else is reported as unknown. Both are warnings, as in repmgr; malformed lines and
//! bad values are errors that name the file and line.

use std::path::{Path, PathBuf};

use crate::exit::{Failure, Result};

/// Where the file is looked for when `-f` is not given, in order.
pub const SEARCH_PATH: &[&str] = &[
    "./repmgr.conf",
    "/etc/repmgr.conf",
    "/etc/repmgr/15/repmgr.conf",
];

/// Settings of repmgr's file that this extension takes from postgresql.conf instead.
const SERVER_SIDE: &[&str] = &[
    "failover",
    "priority",
    "location",
    "promote_command",
    "follow_command",
    "monitor_interval_secs",
    "connection_check_type",
    "reconnect_attempts",
    "reconnect_interval",
    "degraded_monitoring_timeout",
    "monitoring_history",
    "primary_visibility_consensus",
    "standby_disconnect_on_failover",
    "failover_validation_command",
    "election_rerun_interval",
    "child_nodes_check_interval",
    "child_nodes_connected_min_count",
    "child_nodes_disconnect_min_count",
    "child_nodes_connected_include_witness",
    "child_nodes_disconnect_timeout",
    "child_nodes_disconnect_command",
    "witness_sync_interval",
    "log_status_interval",
    "event_notification_command",
    "event_notifications",
    "repmgrd_service_start_command",
    "repmgrd_service_stop_command",
];

/// Settings of repmgr's file that have no use here (Barman, logging to files, old names).
const IGNORED: &[&str] = &[
    "log_facility",
    "log_file",
    "replication_type",
    "config_directory",
    "archive_cleanup_command",
    "recovery_min_apply_delay",
    "use_primary_conninfo_password",
    "passfile",
    "pg_ctl_options",
    "async_query_timeout",
    "primary_notification_timeout",
    "repmgrd_standby_startup_timeout",
    "repmgrd_pid_file",
    "standby_follow_restart",
    "promote_check_interval",
    "primary_follow_timeout",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file read, absolute; `None` when there was none.
    pub path: Option<PathBuf>,
    pub node_id: Option<i32>,
    pub node_name: Option<String>,
    pub conninfo: Option<String>,
    pub data_directory: Option<PathBuf>,
    pub pg_bindir: Option<PathBuf>,
    /// Where `repmgr` is on the other nodes' machines (commands run there over ssh).
    pub repmgr_bindir: Option<PathBuf>,
    pub replication_user: Option<String>,
    pub use_replication_slots: Option<bool>,
    pub service_start_command: Option<String>,
    pub service_stop_command: Option<String>,
    pub service_restart_command: Option<String>,
    pub service_reload_command: Option<String>,
    pub service_promote_command: Option<String>,
    pub ssh_options: String,
    /// Barman clone mode: the Barman host (reached over ssh), the server's name there, and
    /// Barman's configuration file there when not its default.
    pub barman_host: Option<String>,
    pub barman_server: Option<String>,
    pub barman_config: Option<String>,
    /// Extra `rsync` options for a clone from Barman.
    pub rsync_options: Option<String>,
    /// A standby's `restore_command`, written by `standby clone`.
    pub restore_command: Option<String>,
    pub pg_basebackup_options: Option<String>,
    pub log_level: String,
    pub replication_lag_warning: i64,
    pub replication_lag_critical: i64,
    pub archive_ready_warning: i64,
    pub archive_ready_critical: i64,
    pub shutdown_check_timeout: i64,
    pub wal_receive_check_timeout: i64,
    pub standby_reconnect_timeout: i64,
    pub node_rejoin_timeout: i64,
    /// Where `node rejoin` keeps the WAL a rewind discards, and the most it holds (MB).
    pub rejoin_keep_wal_directory: Option<PathBuf>,
    pub rejoin_keep_wal_max_size: u64,
    pub promote_check_timeout: i64,
    pub standby_follow_timeout: i64,
    /// Unknown or unused settings, to print as warnings.
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            path: None,
            node_id: None,
            node_name: None,
            conninfo: None,
            data_directory: None,
            pg_bindir: None,
            repmgr_bindir: None,
            replication_user: None,
            use_replication_slots: None,
            service_start_command: None,
            service_stop_command: None,
            service_restart_command: None,
            service_reload_command: None,
            service_promote_command: None,
            ssh_options: "-q -o ConnectTimeout=10".into(),
            barman_host: None,
            barman_server: None,
            barman_config: None,
            rsync_options: None,
            restore_command: None,
            pg_basebackup_options: None,
            log_level: "INFO".into(),
            replication_lag_warning: 300,
            replication_lag_critical: 600,
            archive_ready_warning: 16,
            archive_ready_critical: 128,
            shutdown_check_timeout: 60,
            wal_receive_check_timeout: 30,
            standby_reconnect_timeout: 60,
            node_rejoin_timeout: 60,
            rejoin_keep_wal_directory: None,
            rejoin_keep_wal_max_size: 1024,
            promote_check_timeout: 60,
            standby_follow_timeout: 30,
            warnings: Vec::new(),
        }
    }
}

/// One `name = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    name: String,
    value: String,
    file: PathBuf,
    line: usize,
}

fn error(file: &Path, line: usize, what: impl std::fmt::Display) -> Failure {
    Failure::config(format!("{}, line {line}: {what}", file.display()))
        .hint("Fix the line; the format is name = 'value', as in postgresql.conf.")
}

/// Splits one line into name and value; `None` for a blank or comment line.
fn parse_line(text: &str, file: &Path, line: usize) -> Result<Option<(String, String)>> {
    let s = text.trim_start();
    if s.is_empty() || s.starts_with('#') {
        return Ok(None);
    }
    let name_len = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'))
        .unwrap_or(s.len());
    if name_len == 0 {
        return Err(error(
            file,
            line,
            format!("expected a setting name, found \"{}\"", text.trim()),
        ));
    }
    let name = s[..name_len].to_ascii_lowercase();
    let mut rest = s[name_len..].trim_start();
    if let Some(r) = rest.strip_prefix('=') {
        rest = r.trim_start();
    }
    let (value, after) = if let Some(quoted) = rest.strip_prefix('\'') {
        let mut value = String::new();
        let mut chars = quoted.char_indices().peekable();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, other)) => value.push(other),
                    None => break,
                },
                '\'' if chars.peek().map(|(_, c)| *c) == Some('\'') => {
                    chars.next();
                    value.push('\'');
                }
                '\'' => {
                    end = Some(i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        let Some(end) = end else {
            return Err(error(
                file,
                line,
                format!("unterminated quoted value for \"{name}\""),
            ));
        };
        (value, &quoted[end..])
    } else {
        let len = rest
            .find(|c: char| c.is_whitespace() || c == '#')
            .unwrap_or(rest.len());
        if len == 0 {
            return Err(error(file, line, format!("\"{name}\" has no value")));
        }
        (rest[..len].to_string(), &rest[len..])
    };
    let after = after.trim_start();
    if !(after.is_empty() || after.starts_with('#')) {
        return Err(error(
            file,
            line,
            format!(
                "unexpected \"{}\" after the value of \"{name}\" (quote values that contain spaces)",
                after.trim_end()
            ),
        ));
    }
    Ok(Some((name, value)))
}

/// Reads `file` and what it includes, depth-first, in order.
fn read_items(file: &Path, depth: usize, out: &mut Vec<Item>) -> Result<()> {
    if depth > 10 {
        return Err(Failure::config(format!(
            "{}: includes nested more than 10 deep (an include loop?)",
            file.display()
        )));
    }
    let text = std::fs::read_to_string(file).map_err(|e| {
        Failure::config(format!(
            "could not read the configuration file {}: {e}",
            file.display()
        ))
    })?;
    let dir = file.parent().unwrap_or(Path::new("/"));
    for (i, raw) in text.lines().enumerate() {
        let Some((name, value)) = parse_line(raw, file, i + 1)? else {
            continue;
        };
        let relative = |v: &str| {
            let p = Path::new(v);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        };
        match name.as_str() {
            "include" => read_items(&relative(&value), depth + 1, out)?,
            "include_if_exists" => {
                let p = relative(&value);
                if p.exists() {
                    read_items(&p, depth + 1, out)?;
                }
            }
            "include_dir" => {
                let d = relative(&value);
                let mut files: Vec<PathBuf> = std::fs::read_dir(&d)
                    .map_err(|e| {
                        error(
                            file,
                            i + 1,
                            format!("cannot read directory {}: {e}", d.display()),
                        )
                    })?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                    .collect();
                files.sort();
                for f in files {
                    read_items(&f, depth + 1, out)?;
                }
            }
            _ => out.push(Item {
                name,
                value,
                file: file.to_path_buf(),
                line: i + 1,
            }),
        }
    }
    Ok(())
}

fn boolean(it: &Item) -> Result<bool> {
    match it.value.to_ascii_lowercase().as_str() {
        "1" | "on" | "true" | "yes" => Ok(true),
        "0" | "off" | "false" | "no" => Ok(false),
        _ => Err(error(
            &it.file,
            it.line,
            format!(
                "\"{}\" must be a boolean (on/off, true/false, yes/no, 1/0), not \"{}\"",
                it.name, it.value
            ),
        )),
    }
}

fn integer(it: &Item, min: i64) -> Result<i64> {
    let v: i64 = it.value.parse().map_err(|_| {
        error(
            &it.file,
            it.line,
            format!(
                "\"{}\" must be a whole number, not \"{}\"",
                it.name, it.value
            ),
        )
    })?;
    if v < min {
        return Err(error(
            &it.file,
            it.line,
            format!("\"{}\" must be {min} or greater, not {v}", it.name),
        ));
    }
    Ok(v)
}

impl Config {
    /// Parses `file`.
    pub fn read(file: &Path) -> Result<Config> {
        let path = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        let mut items = Vec::new();
        read_items(&path, 0, &mut items)?;
        let mut c = Config {
            path: Some(path),
            ..Config::default()
        };
        for it in &items {
            c.apply(it)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// `-f` when given (it must exist), else the first file of [`SEARCH_PATH`], else defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        match explicit {
            Some(f) if !f.exists() => Err(Failure::config(format!(
                "the configuration file {} does not exist",
                f.display()
            ))
            .hint("Give the path of an existing repmgr.conf with -f, or leave -f out.")),
            Some(f) => Config::read(f),
            None => match SEARCH_PATH.iter().map(Path::new).find(|p| p.exists()) {
                Some(f) => Config::read(f),
                None => Ok(Config::default()),
            },
        }
    }

    fn apply(&mut self, it: &Item) -> Result<()> {
        let text = || Some(it.value.clone()).filter(|v| !v.is_empty());
        let path = || text().map(PathBuf::from);
        match it.name.as_str() {
            "node_id" => self.node_id = Some(integer(it, 1)? as i32),
            "node_name" => {
                if it.value.len() > 63 {
                    return Err(error(&it.file, it.line, "node_name is longer than 63 characters"));
                }
                self.node_name = text();
            }
            "conninfo" => {
                repmgr_core::conninfo::parse(&it.value).map_err(|e| {
                    error(&it.file, it.line, format!("conninfo is not a valid connection string: {e}"))
                })?;
                self.conninfo = text();
            }
            "data_directory" => self.data_directory = path(),
            "pg_bindir" => self.pg_bindir = path(),
            "repmgr_bindir" => self.repmgr_bindir = path(),
            "replication_user" => self.replication_user = text(),
            "use_replication_slots" => self.use_replication_slots = Some(boolean(it)?),
            "service_start_command" => self.service_start_command = text(),
            "service_stop_command" => self.service_stop_command = text(),
            "service_restart_command" => self.service_restart_command = text(),
            "service_reload_command" => self.service_reload_command = text(),
            "service_promote_command" => self.service_promote_command = text(),
            "ssh_options" => self.ssh_options = it.value.clone(),
            "barman_host" => self.barman_host = text(),
            "barman_server" => self.barman_server = text(),
            "barman_config" => self.barman_config = text(),
            "rsync_options" => self.rsync_options = text(),
            "restore_command" => self.restore_command = text(),
            "pg_basebackup_options" => self.pg_basebackup_options = text(),
            "log_level" => {
                let level = it.value.to_ascii_uppercase();
                let known = ["DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "ALERT", "CRIT", "EMERG"];
                if !known.contains(&level.as_str()) {
                    return Err(error(&it.file, it.line, format!("log_level must be one of {}, not \"{}\"", known.join(", "), it.value)));
                }
                self.log_level = level;
            }
            "replication_lag_warning" => self.replication_lag_warning = integer(it, 1)?,
            "replication_lag_critical" => self.replication_lag_critical = integer(it, 1)?,
            "archive_ready_warning" => self.archive_ready_warning = integer(it, 1)?,
            "archive_ready_critical" => self.archive_ready_critical = integer(it, 1)?,
            "shutdown_check_timeout" => self.shutdown_check_timeout = integer(it, 1)?,
            "wal_receive_check_timeout" => self.wal_receive_check_timeout = integer(it, 1)?,
            "standby_reconnect_timeout" => self.standby_reconnect_timeout = integer(it, 1)?,
            "node_rejoin_timeout" => self.node_rejoin_timeout = integer(it, 1)?,
            "rejoin_keep_wal_directory" => self.rejoin_keep_wal_directory = path(),
            "rejoin_keep_wal_max_size" => {
                self.rejoin_keep_wal_max_size = integer(it, 16)? as u64;
            }
            "promote_check_timeout" => self.promote_check_timeout = integer(it, 1)?,
            "standby_follow_timeout" => self.standby_follow_timeout = integer(it, 1)?,
            name if SERVER_SIDE.contains(&name) => self.warnings.push(format!(
                "{}, line {}: \"{name}\" is a repmgrd setting; with this extension it is repmgr.{} in postgresql.conf (ignored here)",
                it.file.display(),
                it.line,
                match name {
                    "monitor_interval_secs" => "monitor_interval",
                    other => other,
                }
            )),
            name if IGNORED.contains(&name) => self.warnings.push(format!(
                "{}, line {}: \"{name}\" is not used by this version (ignored)",
                it.file.display(),
                it.line
            )),
            name => self.warnings.push(format!(
                "{}, line {}: {name}='{}': unknown name/value pair provided; ignoring",
                it.file.display(),
                it.line,
                it.value
            )),
        }
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        let file = self.path.as_deref().unwrap_or(Path::new("repmgr.conf"));
        if self.replication_lag_warning >= self.replication_lag_critical {
            return Err(Failure::config(format!(
                "{}: replication_lag_warning ({}) must be below replication_lag_critical ({})",
                file.display(),
                self.replication_lag_warning,
                self.replication_lag_critical
            )));
        }
        if self.barman_host.is_some() != self.barman_server.is_some() {
            return Err(Failure::config(format!(
                "{}: barman_host and barman_server go together (one is set, the other is not)",
                file.display()
            ))
            .hint("Set both to clone from Barman, or neither."));
        }
        if self.archive_ready_warning >= self.archive_ready_critical {
            return Err(Failure::config(format!(
                "{}: archive_ready_warning ({}) must be below archive_ready_critical ({})",
                file.display(),
                self.archive_ready_warning,
                self.archive_ready_critical
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A temporary directory removed when the test ends, pass or fail.
    struct Scratch(PathBuf);

    impl std::ops::Deref for Scratch {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        let d =
            std::env::temp_dir().join(format!("repmgr-cli-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    #[test]
    fn reads_repmgr_style_files() {
        let d = scratch("ok");
        write(&d, "extra.conf", "ssh_options = '-q -p 2222'\n");
        let f = write(
            &d,
            "repmgr.conf",
            "# a comment\n\
             node_id=2\n\
             node_name = 'node2'   # trailing comment\n\
             conninfo = 'host=10.0.0.2 dbname=repmgr user=repmgr password=it''s'\n\
             data_directory '/var/lib/postgresql/15/main'\n\
             use_replication_slots = yes\n\
             service_start_command = 'sudo systemctl start postgresql@15-main'\n\
             replication_lag_warning = 10\n\
             include 'extra.conf'\n\
             include_if_exists 'missing.conf'\n",
        );
        let c = Config::read(&f).unwrap();
        assert_eq!(c.node_id, Some(2));
        assert_eq!(c.node_name.as_deref(), Some("node2"));
        assert_eq!(
            c.conninfo.as_deref(),
            Some("host=10.0.0.2 dbname=repmgr user=repmgr password=it's")
        );
        assert_eq!(
            c.data_directory,
            Some(PathBuf::from("/var/lib/postgresql/15/main"))
        );
        assert_eq!(c.use_replication_slots, Some(true));
        assert_eq!(
            c.service_start_command.as_deref(),
            Some("sudo systemctl start postgresql@15-main")
        );
        assert_eq!(c.replication_lag_warning, 10);
        assert_eq!(c.ssh_options, "-q -p 2222");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.path, Some(f));
    }

    #[test]
    fn unknown_and_server_side_keys_are_warnings() {
        let d = scratch("warn");
        let f = write(
            &d,
            "r.conf",
            "node_id = 1\nfailover = automatic\nbogus_key = 3\nlog_file = '/tmp/x'\n",
        );
        let c = Config::read(&f).unwrap();
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("line 2: \"failover\" is a repmgrd setting; with this extension it is repmgr.failover in postgresql.conf"));
        assert!(
            c.warnings[1]
                .ends_with("line 3: bogus_key='3': unknown name/value pair provided; ignoring")
        );
        assert!(c.warnings[2].contains("\"log_file\" is not used"));
    }

    #[test]
    fn bad_lines_and_values_name_the_line() {
        let d = scratch("bad");
        for (text, says) in [
            (
                "node_id = 'x'\n",
                "line 1: \"node_id\" must be a whole number, not \"x\"",
            ),
            (
                "\nnode_id = 0\n",
                "line 2: \"node_id\" must be 1 or greater, not 0",
            ),
            (
                "node_name = 'unterminated\n",
                "line 1: unterminated quoted value for \"node_name\"",
            ),
            (
                "conninfo = host=a port=1\n",
                "line 1: unexpected \"port=1\" after the value of \"conninfo\"",
            ),
            (
                "use_replication_slots = maybe\n",
                "line 1: \"use_replication_slots\" must be a boolean",
            ),
            ("= 3\n", "line 1: expected a setting name"),
            ("node_name =\n", "line 1: \"node_name\" has no value"),
            (
                "conninfo = 'host=''x'\n",
                "line 1: conninfo is not a valid connection string",
            ),
            ("log_level = chatty\n", "line 1: log_level must be one of"),
            (
                "replication_lag_warning = 700\n",
                "replication_lag_warning (700) must be below replication_lag_critical (600)",
            ),
            (
                "include 'nowhere.conf'\n",
                "could not read the configuration file",
            ),
        ] {
            let f = write(&d, "r.conf", text);
            let e = Config::read(&f).expect_err(text);
            assert_eq!(e.code, crate::exit::ERR_BAD_CONFIG);
            assert!(e.message.contains(says), "{text:?}: {}", e.message);
        }
    }

    #[test]
    fn an_explicit_file_must_exist() {
        let e = Config::load(Some(Path::new("/nonexistent/repmgr.conf"))).unwrap_err();
        assert!(e.message.contains("does not exist"));
        assert!(e.hint.is_some());
    }
}
