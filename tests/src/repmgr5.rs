//! The system we replace, for side-by-side benchmarks: repmgr 5.3.3 and its repmgrd from
//! Debian's packages, in a relocated copy of the PostgreSQL 15 tree.
//!
//! Both extensions are called `repmgr`, so Debian's is not installed over ours: the package
//! is downloaded (`apt-get download`), and unpacked over a copy of `/usr/lib/postgresql/15`
//! and `/usr/share/postgresql/15` under the benchmark's own directory. PostgreSQL finds its
//! `share` and `lib` directories relative to its binaries, so a server started from the copy
//! loads Debian's repmgr. Point the harness at it with [`Repmgr5::use_tree`] before creating
//! clusters.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use crate::{Cluster, NodeOptions, connect, query, run_checked};

/// Where the relocated tree lives.
pub const TREE: &str = "/var/tmp/repmgr5-tree";

/// Stands in for `ssh` on repmgr's `PATH`. repmgr 5 runs its commands on another node's
/// machine (a switchover's stop, status checks and rejoin of the old primary) over ssh, and
/// this machine runs no sshd; every benchmark node is local, so the command runs here, through
/// a shell, as ssh would hand it to the remote one. It spares repmgr ssh's own connection time
/// (tens of milliseconds per call on loopback).
const SSH_SHIM: &str = r#"#!/bin/sh
# ssh [options] host command...
while [ $# -gt 0 ]; do
  case "$1" in
    -[BbcDEeFIiJLlmOoPpQRSWw]) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
shift
exec /bin/sh -c "$*"
"#;

/// The relocated tree: built once, reused while it has Debian's repmgr.
pub struct Repmgr5 {
    pub bindir: PathBuf,
    /// The directory holding the `ssh` stand-in, first on repmgr's `PATH`.
    shim: PathBuf,
}

/// While alive, clusters are made from the relocated tree.
pub struct TreeInUse;

impl Drop for TreeInUse {
    fn drop(&mut self) {
        unsafe { std::env::remove_var("REPMGR_PG_BINDIR") };
    }
}

/// Monitoring settings for repmgrd: its defaults, or the same as ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settings {
    /// monitor_interval_secs 2, reconnect_attempts 6, reconnect_interval 10.
    Defaults,
    /// monitor_interval_secs 1, reconnect_attempts 3, reconnect_interval 1.
    LikeOurs,
}

impl Settings {
    /// The results-file name for `bench` at these settings, and what they are.
    pub fn describe(self, bench: &str) -> (String, &'static str) {
        match self {
            Settings::Defaults => (
                format!("repmgr5-{bench}-defaults"),
                "its defaults: monitor every 2 s, 6 reconnect attempts 10 s apart",
            ),
            Settings::LikeOurs => (
                format!("repmgr5-{bench}-like-ours"),
                "settings like ours: monitor every 1 s, 3 reconnect attempts 1 s apart",
            ),
        }
    }
}

/// The postgres user's uid and gid.
fn postgres_ids() -> (u32, u32) {
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    assert!(!pw.is_null(), "no postgres user");
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// A command that runs as `postgres` (its own process, so it can be killed by pid).
fn as_postgres(program: &Path) -> Command {
    let (uid, gid) = postgres_ids();
    let mut c = Command::new(program);
    c.uid(uid).gid(gid).env("HOME", "/var/lib/postgresql");
    c
}

impl Repmgr5 {
    /// Builds the tree if needed (downloads the two packages; about 50 MB on disk).
    pub fn prepare() -> Repmgr5 {
        let root = Path::new(TREE).join("root");
        let bindir = root.join("usr/lib/postgresql/15/bin");
        if !bindir.join("repmgrd").exists() {
            let _ = fs::remove_dir_all(TREE);
            fs::create_dir_all(root.join("usr/lib/postgresql")).expect("create the tree");
            fs::create_dir_all(root.join("usr/share/postgresql")).expect("create the tree");
            for (from, into) in [
                ("/usr/lib/postgresql/15", "usr/lib/postgresql"),
                ("/usr/share/postgresql/15", "usr/share/postgresql"),
            ] {
                run_checked(
                    Command::new("cp").args(["-a", from]).arg(root.join(into)),
                    "cp",
                );
            }
            let debs = Path::new(TREE).join("debs");
            fs::create_dir_all(&debs).expect("create the download directory");
            run_checked(
                Command::new("apt-get").current_dir(&debs).args([
                    "download",
                    "postgresql-15-repmgr",
                    "repmgr-common",
                ]),
                "apt-get download postgresql-15-repmgr repmgr-common",
            );
            for deb in fs::read_dir(&debs).expect("downloads").flatten() {
                run_checked(
                    Command::new("dpkg-deb")
                        .arg("-x")
                        .arg(deb.path())
                        .arg(&root),
                    "dpkg-deb -x",
                );
            }
            run_checked(Command::new("chmod").args(["-R", "a+rX", TREE]), "chmod");
        }
        let version = run_checked(
            Command::new(bindir.join("repmgr")).arg("--version"),
            "repmgr --version",
        );
        assert!(
            String::from_utf8_lossy(&version.stdout).contains("repmgr 5."),
            "the relocated tree has no repmgr 5"
        );
        let shim = Path::new(TREE).join("shim");
        fs::create_dir_all(&shim).expect("create the shim directory");
        fs::write(shim.join("ssh"), SSH_SHIM).expect("write the ssh stand-in");
        run_checked(
            Command::new("chmod").args(["-R", "a+rx"]).arg(&shim),
            "chmod",
        );
        Repmgr5 { bindir, shim }
    }

    /// Makes the harness start servers from this tree (its `bindir()` reads the variable)
    /// until the returned guard is dropped.
    pub fn use_tree(&self) -> TreeInUse {
        // Set and removed while no other thread of the benchmark runs.
        unsafe { std::env::set_var("REPMGR_PG_BINDIR", &self.bindir) };
        TreeInUse
    }

    /// Node options for a server of this tree: Debian's repmgr preloaded, none of ours.
    pub fn node_options() -> NodeOptions {
        NodeOptions {
            preload: true,
            identity: false,
            create_extension: false,
            ..NodeOptions::default()
        }
        .conf("wal_log_hints = on")
    }

    /// Where node `id`'s repmgr.conf is.
    pub fn conf_path(c: &Cluster, id: i32) -> PathBuf {
        c.dir.join(format!("node{id}.repmgr5.conf"))
    }

    /// Writes node `id`'s repmgr.conf and returns its path.
    pub fn conf(&self, c: &Cluster, id: i32, settings: Settings) -> PathBuf {
        let n = c.node(id);
        let path = Repmgr5::conf_path(c, id);
        let bin = self.bindir.display();
        let conf = path.display();
        let data = n.data.display();
        let (interval, attempts, retry) = match settings {
            Settings::Defaults => (2, 6, 10),
            Settings::LikeOurs => (1, 3, 1),
        };
        let text = format!(
            "node_id={id}
node_name='{name}'
conninfo='{conninfo}'
data_directory='{data}'
pg_bindir='{bin}'
use_replication_slots=no
failover=automatic
promote_command='{bin}/repmgr standby promote -f {conf} --log-to-file'
follow_command='{bin}/repmgr standby follow -f {conf} --log-to-file --upstream-node-id=%n'
monitor_interval_secs={interval}
reconnect_attempts={attempts}
reconnect_interval={retry}
log_file='{dir}/node{id}.repmgrd.log'
repmgrd_pid_file='{dir}/node{id}.repmgrd.pid'
service_start_command='{bin}/pg_ctl -D {data} -l {log} -w start'
service_stop_command='{bin}/pg_ctl -D {data} -w -m fast stop'
service_restart_command='{bin}/pg_ctl -D {data} -l {log} -w restart'
service_promote_command='{bin}/pg_ctl -D {data} -w promote'
",
            name = n.name,
            conninfo = n.conninfo(),
            dir = c.dir.display(),
            log = n.log.display(),
        );
        fs::write(&path, text).expect("write repmgr.conf");
        path
    }

    /// Debian's `repmgr -f conf <args>`, to run as postgres, with the `ssh` stand-in.
    pub fn command(&self, conf: &Path, args: &[&str]) -> Command {
        let mut c = as_postgres(&self.bindir.join("repmgr"));
        c.arg("-f")
            .arg(conf)
            .args(args)
            .env("PATH", format!("{}:/usr/bin:/bin", self.shim.display()));
        c
    }

    /// Runs Debian's `repmgr -f conf <args>` as postgres; it must succeed.
    pub fn repmgr(&self, conf: &Path, args: &[&str]) -> Output {
        run_checked(
            &mut self.command(conf, args),
            &format!("repmgr {}", args.join(" ")),
        )
    }

    /// Starts repmgrd for a node, in the foreground of a child process the caller stops.
    pub fn repmgrd(&self, conf: &Path) -> Child {
        as_postgres(&self.bindir.join("repmgrd"))
            .arg("-f")
            .arg(conf)
            .arg("--daemonize=false")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start repmgrd")
    }

    /// Primary 1 and `standbys`, registered with Debian's repmgr, repmgrd running on each.
    /// Returns the repmgrd processes (stop them with [`stop_daemons`]).
    pub fn populate(&self, c: &mut Cluster, standbys: &[i32], settings: Settings) -> Vec<Child> {
        c.init_primary(1, Repmgr5::node_options());
        let mut db = connect(&c.node(1).local_conninfo("postgres"));
        query(&mut db, "CREATE DATABASE repmgr");
        drop(db);
        let mut confs = vec![self.conf(c, 1, settings)];
        self.repmgr(&confs[0], &["primary", "register"]);
        for id in standbys {
            c.clone_standby(*id, 1, Repmgr5::node_options());
            let conf = self.conf(c, *id, settings);
            self.repmgr(&conf, &["standby", "register"]);
            confs.push(conf);
        }
        confs.iter().map(|conf| self.repmgrd(conf)).collect()
    }
}

/// Stops the repmgrd processes started by [`Repmgr5::populate`].
pub fn stop_daemons(daemons: &mut [Child]) {
    for d in daemons.iter_mut() {
        let _ = d.kill();
        let _ = d.wait();
    }
}
