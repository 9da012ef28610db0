//! The Debian packages (`cargo xtask package`, found in `REPMGR_DEB_DIR`), installed with
//! dpkg where the PostgreSQL major under test expects them, `/usr/lib/postgresql/N/lib` and
//! `/usr/share/postgresql/N/extension`: a server of that major then preloads the library and
//! creates the extension, and removing the package while a server has it loaded says so and
//! what to do, which is what that server meets at its next start.
//!
//! Nothing is installed on this machine: the test runs in a mount namespace of its own where
//! `/usr`, dpkg's database, `/var/log`, `/var/cache` and the major's library and share directories are
//! overlays whose changes live in a tmpfs and vanish with it. Majors that this machine has
//! outside Debian's layout (16, 17 and 18 come from PyPI wheels and Debian 13's packages) are
//! bound at Debian's paths inside it, as a PGDG installation would have them.

use std::path::PathBuf;
use std::process::Command;

use repmgr_tests::{bindir, free_port, pg_config, pg_major};

/// The package files for `major`: the extension's and the command line's.
fn packages(major: u32) -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("REPMGR_DEB_DIR").map(PathBuf::from).unwrap_or_else(|| {
        panic!("REPMGR_DEB_DIR is not set: run this through cargo xtask test, which builds the packages")
    });
    let version = env!("CARGO_PKG_VERSION");
    let find = |prefix: &str| {
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("{prefix}_{version}_")) && n.ends_with(".deb")
                })
            })
            .unwrap_or_else(|| panic!("no {prefix} {version} package in {}", dir.display()))
    };
    (
        find(&format!("postgresql-{major}-repmgr-rs")),
        find("repmgr-rs"),
    )
}

/// Run by `sh` in the private mount namespace: `$0` the scratch directory, `$1` the major,
/// `$2` its library directory, `$3` its share directory, `$4` its bindir, `$5` a free port,
/// `$6` and `$7` the packages. Prints what it checks; the test reads that.
const SCRIPT: &str = r#"set -e
S=$0 MAJOR=$1 LIB=$2 SHARE=$3 BIN=$4 PORT=$5 EXT=$6 CLI=$7
mount -t tmpfs repmgr-package-test "$S"
overlay() {
  mkdir -p "$S/$2/upper" "$S/$2/work"
  mount -t overlay overlay -o "lowerdir=$1,upperdir=$S/$2/upper,workdir=$S/$2/work" "$1"
}
overlay /usr usr
overlay /var/lib/dpkg dpkg
overlay /var/log log
overlay /var/cache cache
as_pg() { runuser -u postgres -- "$@"; }
# Whatever happens, no server outlives the test.
trap 'as_pg "$BIN/pg_ctl" -D "$S/data" -m immediate stop >/dev/null 2>&1 || true' EXIT
if [ "$LIB" != "/usr/lib/postgresql/$MAJOR/lib" ]; then
  overlay "$LIB" lib
  overlay "$SHARE" share
  mkdir -p "/usr/lib/postgresql/$MAJOR/lib" "/usr/share/postgresql/$MAJOR"
  mount --bind "$LIB" "/usr/lib/postgresql/$MAJOR/lib"
  mount --bind "$SHARE" "/usr/share/postgresql/$MAJOR"
  # postgresql-$MAJOR is not a Debian package on this machine: its files are.
  FORCE=--force-depends
fi
rm -f "$LIB/repmgr.so" "$SHARE"/extension/repmgr*
echo "== install"
dpkg ${FORCE:-} -i "$EXT" "$CLI" 2>&1
echo "== files"
dpkg -L "postgresql-$MAJOR-repmgr-rs" | grep -E 'repmgr(\.so|\.control|--.*\.sql)$'
ls "$LIB/repmgr.so" "$SHARE/extension/repmgr.control"
/usr/bin/repmgr --version
echo "== server"
mkdir "$S/data" "$S/run"
chown postgres: "$S/data" "$S/run"
as_pg "$BIN/initdb" -D "$S/data" -A trust -U postgres --no-sync >/dev/null
printf "shared_preload_libraries = 'repmgr'\nport = $PORT\nlisten_addresses = ''\nunix_socket_directories = '$S/run'\n" >> "$S/data/postgresql.conf"
as_pg "$BIN/pg_ctl" -D "$S/data" -l "$S/run/log" -w start >/dev/null
psql() { as_pg "$BIN/psql" -X -At -h "$S/run" -p "$PORT" -U postgres "$@"; }
psql -d postgres -c "CREATE DATABASE repmgr" >/dev/null
psql -d repmgr -c "CREATE EXTENSION repmgr" >/dev/null
echo "version $(psql -d repmgr -c "SELECT extversion || ' ' || repmgr.library_version() FROM pg_extension WHERE extname = 'repmgr'")"
echo "== remove"
dpkg -r "postgresql-$MAJOR-repmgr-rs" 2>&1
echo "== restart"
as_pg "$BIN/pg_ctl" -D "$S/data" -w -m fast stop >/dev/null
if as_pg "$BIN/pg_ctl" -D "$S/data" -l "$S/run/log" -w -t 10 start >/dev/null 2>&1; then
  echo "started again"
  as_pg "$BIN/pg_ctl" -D "$S/data" -w -m fast stop >/dev/null
else
  grep FATAL "$S/run/log" || true
fi
"#;

#[test]
fn the_packages_install_where_this_major_expects_them_and_removal_warns() {
    let bin = bindir();
    let major = pg_major(&bin);
    let (ext, cli) = packages(major);
    let lib = pg_config(&bin, "--pkglibdir").expect("pg_config --pkglibdir");
    let share = pg_config(&bin, "--sharedir").expect("pg_config --sharedir");
    let scratch = PathBuf::from(format!(
        "/var/tmp/repmgr-tests/package-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&scratch).expect("create the scratch directory");
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            SCRIPT,
        ])
        .arg(&scratch)
        .arg(major.to_string())
        .args([&lib, &share])
        .arg(&bin)
        .arg(free_port().to_string())
        .args([&ext, &cli])
        .env("LC_ALL", "C")
        .output()
        .expect("run unshare");
    let _ = std::fs::remove_dir_all(&scratch);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "{text}");
    let section = |name: &str| -> String {
        text.split(&format!("== {name}\n"))
            .nth(1)
            .and_then(|r| r.split("\n== ").next())
            .unwrap_or_else(|| panic!("no section {name} in\n{text}"))
            .to_string()
    };
    let version = env!("CARGO_PKG_VERSION");
    // Debian's paths for this major, and this major's own tree sees them.
    let files = section("files");
    // Every upgrade script of the repository, so that any earlier catalog can be updated.
    let scripts = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../sql"))
        .expect("read sql/")
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with("repmgr--") && n.ends_with(".sql"))
        .map(|n| format!("/usr/share/postgresql/{major}/extension/{n}"));
    for f in [
        format!("/usr/lib/postgresql/{major}/lib/repmgr.so"),
        format!("/usr/share/postgresql/{major}/extension/repmgr.control"),
        format!("/usr/share/postgresql/{major}/extension/repmgr--{version}.sql"),
    ]
    .into_iter()
    .chain(scripts)
    {
        assert!(files.lines().any(|l| l == f), "{f} not in\n{files}");
    }
    assert!(files.contains(&format!("repmgr {version}")), "{files}");
    assert!(
        section("server").contains(&format!("version {version} {version}")),
        "{text}"
    );
    // The removal names the running server and what to do; without the library it does not
    // start again, as the warning said.
    let removal = section("remove");
    assert!(
        removal.contains("has repmgr loaded")
            && removal.contains("remove repmgr from shared_preload_libraries"),
        "{removal}"
    );
    let restart = section("restart");
    assert!(
        restart.contains("could not access file \"repmgr\""),
        "{restart}"
    );
}
