//! A Barman server on a host of its own: a network namespace where it streams the primary's
//! WAL (`streaming_archiver`, through a replication slot) and takes `backup_method = postgres`
//! backups. Debian 12's barman 3.4 for PostgreSQL 15 and 16; for 17 and 18, which 3.4 does not
//! archive, PyPI's (`cargo xtask setup` puts it in /opt/repmgr-barman), which that host then
//! has as its `barman` (see [`Barman::binds`]). It runs as root with a configuration and a home
//! in the test's directory; its WAL receiver is stopped on drop.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{Network, Node};

/// Debian's Barman, and the newer one `cargo xtask setup` installs (its NEW_BARMAN_DIR).
const DEBIAN_BARMAN: &str = "/usr/bin/barman";
const NEW_BARMAN: &str = "/opt/repmgr-barman/bin/barman";

pub struct Barman {
    /// The program: Debian's, or the newer one.
    pub program: PathBuf,
    pub conf: PathBuf,
    /// Where it runs: its namespace, and its address.
    pub namespace: String,
    pub address: String,
    /// The server's name in Barman.
    pub server: String,
    receiver: Option<Child>,
}

impl Barman {
    /// Configures Barman in `dir` for `primary` as server `server`, on `net`'s host `id`
    /// (made here), creates its slot and starts its WAL receiver.
    pub fn start(dir: &Path, net: &mut Network, id: i32, primary: &Node, server: &str) -> Barman {
        net.add_node(id);
        fs::create_dir_all(dir.join("home")).expect("create Barman's home");
        fs::create_dir_all(dir.join("conf.d")).expect("create Barman's conf.d");
        let conninfo = format!("host={} port={} user=postgres", primary.host, primary.port);
        let conf = dir.join("barman.conf");
        fs::write(
            &conf,
            format!(
                "[barman]\nbarman_user = root\nbarman_home = {home}\nlog_file = {log}\nlog_level = INFO\nconfiguration_files_directory = {confd}\n\n[{server}]\ndescription = \"the test's primary\"\nconninfo = {conninfo} dbname=postgres\nstreaming_conninfo = {conninfo}\nbackup_method = postgres\nstreaming_archiver = on\nslot_name = barman\npath_prefix = {bindir}\n",
                home = dir.join("home").display(),
                log = dir.join("barman.log").display(),
                confd = dir.join("conf.d").display(),
                bindir = primary.bindir.display(),
            ),
        )
        .expect("write barman.conf");
        let program = PathBuf::from(if crate::pg_major(&primary.bindir) >= 17 {
            NEW_BARMAN
        } else {
            DEBIAN_BARMAN
        });
        assert!(
            program.exists(),
            "{} is missing: run cargo xtask setup",
            program.display()
        );
        let mut b = Barman {
            program,
            conf,
            namespace: net.namespace(id),
            address: net.address(id),
            server: server.to_string(),
            receiver: None,
        };
        b.run(&["receive-wal", "--create-slot", server]);
        // In a process group of its own, with the pg_receivewal it starts, to stop both.
        let receiver = b
            .command(&["receive-wal", server])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start barman receive-wal");
        b.receiver = Some(receiver);
        b
    }

    /// What sshd on the Barman host bind-mounts so that `barman` there (run over ssh by the
    /// command line and by barman-wal-restore) is this Barman.
    pub fn binds(&self) -> Vec<(PathBuf, PathBuf)> {
        if self.program == Path::new(DEBIAN_BARMAN) {
            Vec::new()
        } else {
            vec![(self.program.clone(), PathBuf::from(DEBIAN_BARMAN))]
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespace])
            .arg(&self.program)
            .arg("-c")
            .arg(&self.conf)
            .args(args);
        c
    }

    /// Runs `barman <args>` on its host; panics with its output unless it succeeds.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("run barman");
        assert!(
            out.status.success(),
            "barman {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Takes a backup, once the WAL before it is archived; returns its id.
    pub fn backup(&self) -> String {
        self.run(&[
            "switch-wal",
            "--force",
            "--archive",
            "--archive-timeout",
            "60",
            &self.server,
        ]);
        self.run(&["backup", "--wait", "--wait-timeout", "120", &self.server]);
        self.run(&["list-backups", "--minimal", &self.server])
            .lines()
            .next()
            .expect("a backup")
            .trim()
            .to_string()
    }
}

impl Drop for Barman {
    fn drop(&mut self) {
        if let Some(c) = &mut self.receiver {
            unsafe { libc::kill(-(c.id() as i32), libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}
