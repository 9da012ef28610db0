//! The README's examples, run so that they cannot drift from the product.
//!
//! `tutorial_runs_as_written`: every code block of the README whose info string says
//! `tutorial on=<hosts>` runs, in the README's order, on the hosts it names. The hosts are
//! three network namespaces at the tutorial's own addresses (10.0.0.1 to 10.0.0.3, on a
//! bridge of the test's own that reaches nothing else), named by their own UTS namespace
//! (`pg1` to `pg3`), each in a private mount namespace where
//! Debian's directories (`/etc/postgresql`, `/var/lib/postgresql`, `/run/postgresql`,
//! `/var/log/postgresql`), `/etc/hosts` and `/usr/local/bin` (holding the `repmgr` under
//! test) are the host's own. So the commands run verbatim: `pg_ctlcluster`, `sudo -u postgres psql`, the
//! `repmgr` command line, port 5432 on every host. Each host starts as Debian leaves it after
//! `apt-get install postgresql-15 openssh-server`: cluster 15/main created and running, sshd
//! on port 22 (Debian's configuration; the hosts share this machine's host keys). `sh` blocks run
//! with `sh -e` as root; `sql` blocks through `sudo -u postgres psql` with ON_ERROR_STOP.
//!
//! Blocks tagged `check` (settings, SQL) are applied to a server. The other tests hold the
//! reference sections to the product: every `repmgr.*` setting
//! with its default and when it takes effect, every SQL function, every command, every event.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use repmgr_tests::{Cluster, Network, NodeOptions, cli};

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");

/// A fenced code block of the README.
struct Block {
    line: usize,
    lang: String,
    /// Words of the info string after the language.
    attrs: Vec<String>,
    text: String,
}

fn blocks() -> Vec<Block> {
    let text = fs::read_to_string(README).expect("read README.md");
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                let mut words = info.split_whitespace().map(str::to_string);
                open = Some(Block {
                    line: i + 1,
                    lang: words.next().unwrap_or_default(),
                    attrs: words.collect(),
                    text: String::new(),
                });
            }
            (Some(_), Some(_)) => out.extend(open.take()),
            (Some(b), None) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

/// The host numbers a tutorial block runs on (`on=pg1,pg2`, `on=all`), or None.
fn tutorial_hosts(b: &Block) -> Option<Vec<i32>> {
    if !b.attrs.iter().any(|a| a == "tutorial") {
        return None;
    }
    let on = b.attrs.iter().find_map(|a| a.strip_prefix("on="))?;
    if on == "all" {
        return Some(vec![1, 2, 3]);
    }
    Some(
        on.split(',')
            .map(|h| {
                h.strip_prefix("pg")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("README: unknown host {h} in on={on}"))
            })
            .collect(),
    )
}

/// Debian's directories that each host has to itself.
const PRIVATE: [(&str, &str); 4] = [
    ("etc", "/etc/postgresql"),
    ("lib", "/var/lib/postgresql"),
    ("run", "/run/postgresql"),
    ("log", "/var/log/postgresql"),
];

/// What a package installation writes, which each host keeps to itself as an overlay of this
/// machine's own (its changes live in the host's directory).
const INSTALLED: [(&str, &str); 5] = [
    ("usr", "/usr"),
    ("dpkg", "/var/lib/dpkg"),
    ("apt", "/var/lib/apt"),
    ("cache", "/var/cache"),
    ("varlog", "/var/log"),
];

/// The three hosts of the tutorial.
struct Hosts {
    dir: PathBuf,
    net: Network,
    /// Each host's sshd, as Debian's openssh-server runs it.
    sshd: Vec<Child>,
}

impl Hosts {
    fn new() -> Hosts {
        let dir =
            PathBuf::from("/var/tmp/repmgr-tests").join(format!("readme-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("debs")).expect("create the test directory");
        fs::create_dir_all(dir.join("empty")).expect("create the test directory");
        for d in ["/var/tmp/repmgr-tests", dir.to_str().unwrap_or_default()] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        // The packages under test, where the tutorial's install step finds them.
        for deb in packages() {
            fs::copy(
                &deb,
                dir.join("debs").join(deb.file_name().expect("a file")),
            )
            .expect("copy a package");
        }
        let mut net = Network::with_subnet(Some("10.0.0"));
        for n in 1..=3 {
            net.add_node(n);
            let host = dir.join(format!("pg{n}"));
            for (sub, target) in PRIVATE {
                fs::create_dir_all(host.join(sub)).expect("create a host directory");
                if target == "/run/postgresql" && !Path::new(target).exists() {
                    // Made at boot on a machine with PostgreSQL; a fresh container may lack it.
                    fs::create_dir_all(target).expect("create /run/postgresql");
                }
                assert!(
                    Path::new(target).is_dir(),
                    "{target} is missing: install postgresql-15"
                );
            }
            // Each host knows the others by name, as real ones would (sudo looks its own up).
            fs::write(
                host.join("hosts"),
                "127.0.0.1 localhost\n10.0.0.1 pg1\n10.0.0.2 pg2\n10.0.0.3 pg3\n",
            )
            .expect("write the host's /etc/hosts");
            repmgr_tests::run_checked(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&host),
                "chown",
            );
            for (sub, _) in INSTALLED {
                for part in ["upper", "work"] {
                    fs::create_dir_all(host.join(format!("overlay/{sub}/{part}")))
                        .expect("create an overlay directory");
                }
            }
        }
        let mut hosts = Hosts {
            dir,
            net,
            sshd: Vec::new(),
        };
        hosts.make_namespaces();
        // As Debian leaves a host after apt-get install postgresql-15 openssh-server.
        for n in 1..=3 {
            hosts.expect_ok(
                n,
                "sh",
                "pg_createcluster 15 main >/dev/null\nsudo -u postgres pg_ctlcluster 15 main start\n",
                "setup",
            );
            hosts.start_sshd(n);
        }
        hosts
    }

    /// Starts sshd on host `n` with Debian's configuration (a pid file of its own, as three
    /// share this machine's /run), and waits until it answers on port 22.
    fn start_sshd(&mut self, n: i32) {
        // The privilege separation directory Debian's service creates at start.
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let pid_file = self.dir.join(format!("pg{n}/sshd.pid"));
        let log = fs::File::create(self.dir.join(format!("pg{n}/sshd.log"))).expect("sshd log");
        let child = Command::new("nsenter")
            .args(self.enter(n))
            .args(["/usr/sbin/sshd", "-D", "-e", "-o"])
            .arg(format!("PidFile={}", pid_file.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        self.sshd.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let probe = format!("ssh-keyscan -T 1 10.0.0.{n}");
        while self.run(n, "sh", &probe).stdout.is_empty() {
            assert!(
                Instant::now() < deadline,
                "sshd on pg{n} did not answer within 10 s: {}",
                fs::read_to_string(self.dir.join(format!("pg{n}/sshd.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// nsenter's options that put a command on host `n`.
    fn enter(&self, n: i32) -> Vec<String> {
        vec![
            format!("--net=/run/netns/{}", self.net.namespace(n)),
            format!("--mount={}", self.namespace(n, "mnt").display()),
            format!("--uts={}", self.namespace(n, "uts").display()),
        ]
    }

    /// Where host `n`'s mount and UTS namespaces are kept (bind mounts of their files), so
    /// that every command and every server of the host share one view: its own Debian
    /// directories, `/etc/hosts` and hostname, and its own installed packages.
    fn namespace(&self, n: i32, kind: &str) -> PathBuf {
        self.dir.join(format!("ns/pg{n}-{kind}"))
    }

    fn make_namespaces(&self) {
        let ns = self.dir.join("ns");
        fs::create_dir_all(&ns).expect("create the namespace directory");
        // Namespace files can be kept only under a private mount.
        let mut script = format!(
            "set -e\nmount --bind {0} {0}\nmount --make-private {0}\n",
            ns.display()
        );
        for n in 1..=3 {
            let host = self.dir.join(format!("pg{n}"));
            let (mnt, uts) = (self.namespace(n, "mnt"), self.namespace(n, "uts"));
            let mut inside = format!("set -e\nhostname pg{n}\n");
            for (sub, target) in INSTALLED {
                inside.push_str(&format!(
                    "mount -t overlay overlay -o lowerdir={target},upperdir={0}/overlay/{sub}/upper,workdir={0}/overlay/{sub}/work {target}\n",
                    host.display()
                ));
            }
            for (sub, target) in PRIVATE {
                inside.push_str(&format!("mount --bind {}/{sub} {target}\n", host.display()));
            }
            inside.push_str(&format!(
                "mount --bind {}/hosts /etc/hosts\n",
                host.display()
            ));
            // Only what the tutorial installs: nothing this machine has in /usr/local/bin.
            inside.push_str(&format!(
                "mount --bind {}/empty /usr/local/bin\n",
                self.dir.display()
            ));
            script.push_str(&format!(
                "touch {m} {u}\nunshare --mount={m} --uts={u} --propagation private sh -c '{inside}'\n",
                m = mnt.display(),
                u = uts.display(),
            ));
        }
        repmgr_tests::run_checked(
            Command::new("sh").args(["-c", &script]),
            "make the hosts' namespaces",
        );
    }

    /// Runs `text` on host `n` (`sh` as root, `sql` through psql as postgres), in the
    /// directory holding the packages.
    fn run(&self, n: i32, lang: &str, text: &str) -> Output {
        let script = match lang {
            "sql" => "printf '%s' \"$1\" | sudo -u postgres psql -X -q -v ON_ERROR_STOP=1\n",
            _ => "exec sh -ec \"$1\"\n",
        };
        // nsenter rather than ip netns exec, whose own new mount namespace would not hold
        // the kept namespace files (the kernel copies no mount namespace file into another).
        Command::new("nsenter")
            .args(self.enter(n))
            .arg(format!("--wd={}", self.dir.join("debs").display()))
            .args(["sh", "-c", script, "sh", text])
            .output()
            .expect("run nsenter")
    }

    fn expect_ok(&self, n: i32, lang: &str, text: &str, what: &str) -> String {
        let out = self.run(n, lang, text);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{what} on pg{n} failed ({}):\n{text}\n--- stdout\n{stdout}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// One value from `sql` on host `n`.
    fn value(&self, n: i32, sql: &str) -> String {
        let out = self.run(
            n,
            "sh",
            &format!("sudo -u postgres psql -X -At -d repmgr -c \"{sql}\""),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// The packages the tutorial installs: `cargo xtask test` builds them (`REPMGR_DEB_DIR`).
fn packages() -> Vec<PathBuf> {
    let dir = std::env::var_os("REPMGR_DEB_DIR").map(PathBuf::from).unwrap_or_else(|| {
        panic!("REPMGR_DEB_DIR is not set: run this through cargo xtask test, which builds the packages the tutorial installs")
    });
    let version = env!("CARGO_PKG_VERSION");
    let debs: Vec<PathBuf> = ["postgresql-15-repmgr-rs", "repmgr-rs"]
        .iter()
        .map(|p| {
            fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .flatten()
                .map(|e| e.path())
                .find(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{p}_{version}_")))
                })
                .unwrap_or_else(|| panic!("no {p} {version} package in {}", dir.display()))
        })
        .collect();
    debs
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for c in &mut self.sshd {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in 1..=3 {
            repmgr_tests::stop_servers(&self.dir.join(format!("pg{n}/lib/15")));
        }
        // The namespaces go with their last process and their kept files.
        let mut script = String::new();
        for n in 1..=3 {
            for kind in ["mnt", "uts"] {
                script.push_str(&format!(
                    "umount {} 2>/dev/null\n",
                    self.namespace(n, kind).display()
                ));
            }
        }
        script.push_str(&format!(
            "umount {} 2>/dev/null\n",
            self.dir.join("ns").display()
        ));
        let _ = Command::new("sh").args(["-c", &script]).status();
        if std::env::var_os("REPMGR_TEST_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn tutorial_runs_as_written() {
    let steps: Vec<(Block, Vec<i32>)> = blocks()
        .into_iter()
        .filter_map(|b| tutorial_hosts(&b).map(|h| (b, h)))
        .collect();
    assert!(
        steps.len() >= 5,
        "README.md: the tutorial's blocks (info string `tutorial on=...`) are missing"
    );
    let hosts = Hosts::new();
    for (b, on) in &steps {
        for n in on {
            let started = Instant::now();
            let out = hosts.expect_ok(
                *n,
                &b.lang,
                &b.text,
                &format!("README.md line {} ({})", b.line, b.lang),
            );
            println!(
                "pg{n}, README.md line {} ({:.1} s):\n{out}",
                b.line,
                started.elapsed().as_secs_f64()
            );
        }
    }
    // Where the tutorial ends: pg1 crashed, one of pg2 and pg3 took over, pg1 rejoined, and
    // the switchover made pg1 the primary again, with pg2 and pg3 its standbys.
    let recovery: Vec<String> = (1..=3)
        .map(|n| hosts.value(n, "SELECT pg_is_in_recovery()"))
        .collect();
    assert_eq!(
        recovery,
        ["f", "t", "t"],
        "after the tutorial, pg_is_in_recovery() on pg1..pg3: expected pg1 alone as primary"
    );
    let primary = 1;
    let nodes = hosts.value(
        primary,
        "SELECT string_agg(node_id || ':' || type || ':' || coalesce(upstream_node_id::text, '-') || ':' || active, ' ' ORDER BY node_id) FROM repmgr.nodes",
    );
    assert_eq!(
        nodes,
        (1..=3)
            .map(|n| format!("{n}:{}", role(n, primary)))
            .collect::<Vec<_>>()
            .join(" "),
        "the catalog after the tutorial"
    );
    // Every event the tutorial caused is a documented one.
    let recorded = hosts.value(
        primary,
        "SELECT string_agg(DISTINCT event, ' ') FROM repmgr.events",
    );
    for name in recorded.split_whitespace() {
        assert!(
            repmgr_core::event::ALL.iter().any(|e| e.0 == name),
            "the tutorial recorded the event {name}, which repmgr_core::event::ALL does not list"
        );
    }
    for n in [2, 3] {
        assert_eq!(
            hosts.value(n, "SELECT status FROM pg_stat_wal_receiver"),
            "streaming",
            "pg{n} streams from pg1"
        );
    }
}

/// Blocks tagged `check`: each `conf` block is appended to a server's postgresql.conf and
/// must parse and apply without an error (`pg_file_settings`); each `sql` block runs on the
/// primary, in order, after the roles it names are created.
#[test]
fn checked_snippets_are_valid() {
    let snippets: Vec<Block> = blocks()
        .into_iter()
        .filter(|b| b.attrs.iter().any(|a| a == "check"))
        .collect();
    assert!(
        snippets.iter().any(|b| b.lang == "conf") && snippets.iter().any(|b| b.lang == "sql"),
        "README.md: the blocks tagged `check` are missing"
    );
    let mut c = Cluster::new("readme-snippets");
    c.init_primary(1, NodeOptions::default());
    c.sql(1, "CREATE ROLE repmgr_admin");
    c.sql(1, "CREATE ROLE repmgr_monitor");
    let conf = c.node(1).data.join("postgresql.conf");
    for b in &snippets {
        match b.lang.as_str() {
            "conf" => {
                let mut text = fs::read_to_string(&conf).expect("read postgresql.conf");
                text.push_str(&b.text);
                fs::write(&conf, text).expect("write postgresql.conf");
                let errors = rows(
                    &c,
                    "SELECT coalesce(name, '') || ': ' || error FROM pg_catalog.pg_file_settings WHERE error IS NOT NULL",
                );
                assert!(
                    errors.is_empty(),
                    "README.md line {}: the settings do not apply: {errors:?}",
                    b.line
                );
            }
            "sql" => {
                let mut conn = repmgr_tests::connect(&c.node(1).local_conninfo("repmgr"));
                let r = conn.query_simple(
                    &b.text,
                    Instant::now() + Duration::from_secs(30),
                    &mut repmgr_pq::PollWaiter,
                );
                assert!(r.is_ok(), "README.md line {}: {:?}", b.line, r.err());
            }
            other => panic!("README.md line {}: cannot check a {other} block", b.line),
        }
    }
}

/// The README section under `heading` (`## …` or `### …`), up to the next heading of the
/// same level or above.
fn section(heading: &str) -> String {
    let text = fs::read_to_string(README).expect("read README.md");
    let level = heading.split(' ').next().unwrap_or("##").len();
    let mut lines = text.lines().skip_while(|l| *l != heading);
    assert!(lines.next().is_some(), "README.md has no section {heading}");
    lines
        .take_while(|l| {
            let hashes = l.bytes().take_while(|b| *b == b'#').count();
            !(2..=level).contains(&hashes) || !l[hashes..].starts_with(' ')
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn events_table_lists_every_event() {
    let documented: BTreeSet<String> = section("### Events")
        .lines()
        .filter_map(|l| {
            l.strip_prefix("| `")?
                .split_once('`')
                .map(|(n, _)| n.to_string())
        })
        .collect();
    let known: BTreeSet<String> = repmgr_core::event::ALL
        .iter()
        .map(|e| e.0.to_string())
        .collect();
    assert_eq!(
        documented, known,
        "README.md's events table and repmgr_core::event::ALL differ"
    );
}

/// How node `id` appears in `repmgr.nodes` when `primary` is the primary.
fn role(id: i32, primary: i32) -> String {
    if id == primary {
        "primary:-:true".into()
    } else {
        format!("standby:{primary}:true")
    }
}

/// Every row of `sql` on node 1, NULL as an empty string.
fn rows(c: &Cluster, sql: &str) -> Vec<Vec<String>> {
    c.try_sql(1, sql)
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .rows
        .into_iter()
        .map(|r| r.into_iter().map(Option::unwrap_or_default).collect())
        .collect()
}

/// The README's rows of the table whose first cell starts with `` `prefix``, as cells.
fn table_rows(prefix: &str) -> Vec<Vec<String>> {
    let text = fs::read_to_string(README).expect("read README.md");
    text.lines()
        .filter(|l| l.starts_with(&format!("| `{prefix}")))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// A value as the README writes it (`2s`, `16MB`, `7d`, `200ms`, `on`, 100) in the unit
/// pg_settings gives (`ms`, `s`, `kB`, `B` or none), for comparison with `boot_val`.
fn in_unit(value: &str, unit: &str) -> Option<String> {
    let value = value.trim_matches('`');
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '-' || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(split);
    let Ok(n) = number.parse::<f64>() else {
        return Some(value.to_string());
    };
    let ms = |s: f64| match unit {
        "ms" => Some(s * 1000.0),
        "s" => Some(s),
        _ => None,
    };
    let bytes = |b: f64| match unit {
        "B" => Some(b),
        "kB" => Some(b / 1024.0),
        "MB" => Some(b / 1024.0 / 1024.0),
        _ => None,
    };
    let v = match suffix {
        "" => Some(n),
        "ms" => ms(n / 1000.0),
        "s" => ms(n),
        "min" => ms(n * 60.0),
        "h" => ms(n * 3600.0),
        "d" => ms(n * 86400.0),
        "kB" => bytes(n * 1024.0),
        "MB" => bytes(n * 1024.0 * 1024.0),
        "GB" => bytes(n * 1024.0 * 1024.0 * 1024.0),
        _ => None,
    }?;
    Some(format!("{v}"))
}

#[test]
fn configuration_reference_matches_the_server() {
    let mut c = Cluster::new("readme-settings");
    c.init_primary(1, NodeOptions::default());
    let rows = rows(
        &c,
        "SELECT name, boot_val, coalesce(unit, ''), context FROM pg_catalog.pg_settings WHERE name LIKE 'repmgr.%' ORDER BY name",
    );
    let documented = table_rows("repmgr.");
    let names: BTreeSet<String> = documented
        .iter()
        .map(|r| r[0].trim_matches('`').to_string())
        .collect();
    let served: BTreeSet<String> = rows.iter().map(|r| r[0].clone()).collect();
    assert_eq!(
        names, served,
        "README's configuration reference and the server's repmgr.* settings differ"
    );
    for row in &documented {
        let name = row[0].trim_matches('`');
        let server = rows.iter().find(|r| r[0] == name).expect("checked above");
        let (boot, unit, context) = (&server[1], &server[2], &server[3]);
        // "`2s`", "100", "0 (unset)", "-1 (off)": the leading value, when there is one.
        let first = row[1].split_whitespace().next().unwrap_or_default();
        let comparable =
            first.starts_with('`') || first.starts_with(|c: char| c.is_ascii_digit() || c == '-');
        if comparable && !first.contains(',') {
            let readme = in_unit(first, unit).unwrap_or_else(|| {
                panic!("{name}: cannot read the default {first} in unit {unit}")
            });
            let boot_n = boot.parse::<f64>().map(|v| format!("{v}"));
            assert_eq!(
                readme,
                boot_n.unwrap_or_else(|_| boot.clone()),
                "{name}: README says the default is {first}, the server's is {boot} {unit}"
            );
        }
        let takes = row[3].as_str();
        let restart = context == "postmaster";
        assert_eq!(
            takes == "restart",
            restart,
            "{name}: README says it takes effect at \"{takes}\", the server's context is {context}"
        );
    }
}

#[test]
fn sql_reference_names_every_function() {
    let mut c = Cluster::new("readme-sql");
    c.init_primary(1, NodeOptions::default());
    let readme = fs::read_to_string(README).expect("read README.md");
    let functions = rows(
        &c,
        "SELECT DISTINCT proname FROM pg_catalog.pg_proc WHERE pronamespace = 'repmgr'::regnamespace ORDER BY 1",
    );
    let missing: Vec<&str> = functions
        .iter()
        .map(|r| r[0].as_str())
        .filter(|f| {
            !readme.contains(&format!("`{f}(")) && !readme.contains(&format!("repmgr.{f}("))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "README.md does not describe {missing:?}"
    );
}

#[test]
fn command_reference_names_real_commands() {
    let commands: Vec<String> = table_rows("")
        .into_iter()
        .filter_map(|r| {
            let words: Vec<&str> = r[0]
                .split_whitespace()
                .take(2)
                .map(|w| w.trim_matches('`'))
                .collect();
            let objects = [
                "primary", "standby", "witness", "node", "cluster", "service",
            ];
            (words.len() == 2 && objects.contains(&words[0])).then(|| words.join(" "))
        })
        .collect();
    assert!(
        commands.len() >= 10,
        "README.md: the command table was not found"
    );
    for c in &commands {
        let out = Command::new(cli())
            .args(c.split(' '))
            .arg("--help")
            .output()
            .expect("run repmgr");
        assert!(
            out.status.success(),
            "README.md names `repmgr {c}`, which the command line does not know: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
