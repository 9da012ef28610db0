//! The previous release, for the upgrade tests: its source at its commit (`git archive`), its
//! extension built there, and installed into a copy of PostgreSQL 15's tree of its own
//! (Debian's PostgreSQL finds its library and share directories relative to its programs), so
//! that a test can run nodes on the previous release and move them to this one as a package
//! upgrade does. Built once per checkout under `target/previous/`; the tree is kept outside
//! the checkout (`/var/tmp/repmgr-previous/`, which `postgres` can read), one per commit.

use std::path::PathBuf;
use std::process::Command;

use super::{PG_CONFIG, Result, Task, target_dir};

/// The release before this one: its version and its commit.
const RELEASE: (&str, &str) = ("0.1.0", "eb0a4ebdfc82bee318484e2a9872c905e0209c3c");

/// The previous release's PostgreSQL 15 bindir, built if missing.
pub fn bindir(t: &Task) -> Result<PathBuf> {
    let (version, commit) = RELEASE;
    let dir = target_dir(t).join(format!("previous/{version}"));
    let tree = PathBuf::from(format!(
        "/var/tmp/repmgr-previous/{version}-{}",
        &commit[..12]
    ));
    let bin = tree.join("usr/lib/postgresql/15/bin");
    let done = tree.join("built");
    if done.exists() {
        t.step(&format!(
            "previous release {version}: present in {}",
            tree.display()
        ));
        return Ok(bin);
    }
    t.step(&format!(
        "previous release {version}: build it from commit {commit} (once per checkout)"
    ));
    let src = dir.join("src");
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&src).map_err(|e| format!("creating {}: {e}", src.display()))?;
    let mut archive = Command::new("sh");
    archive.args([
        "-c",
        "git -C \"$0\" archive --format=tar \"$1\" | tar -x -C \"$2\"",
    ]);
    archive.arg(&t.root).arg(commit).arg(&src);
    t.run(archive, "git archive of the previous release")?;
    // A target directory of its own: the two workspaces' libraries have the same file name.
    let stage = dir.join("stage");
    let mut c = t.cargo();
    c.current_dir(&src)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .args([
            "pgrx",
            "package",
            "--debug",
            "--pg-config",
            PG_CONFIG,
            "--out-dir",
        ])
        .arg(&stage);
    t.run(c, "cargo pgrx package of the previous release")?;
    // A copy of PostgreSQL 15's programs, libraries and share files, with the previous
    // release's files in place of any repmgr there.
    for (from, to) in [
        ("/usr/lib/postgresql/15", "usr/lib/postgresql"),
        ("/usr/share/postgresql/15", "usr/share/postgresql"),
    ] {
        let into = tree.join(to);
        std::fs::create_dir_all(&into).map_err(|e| format!("creating {}: {e}", into.display()))?;
        let mut cp = Command::new("cp");
        cp.args(["-a", from]).arg(&into);
        t.run(cp, "copy PostgreSQL 15's tree")?;
    }
    let mut rm = Command::new("sh");
    rm.args([
        "-c",
        "rm -f \"$0\"/usr/lib/postgresql/15/lib/repmgr.so \"$0\"/usr/share/postgresql/15/extension/repmgr.control \"$0\"/usr/share/postgresql/15/extension/repmgr--*.sql",
    ])
    .arg(&tree);
    t.run(rm, "remove this release's repmgr from the copy")?;
    let mut cp = Command::new("cp");
    cp.arg("-a").arg(stage.join("usr")).arg(&tree);
    t.run(cp, "install the previous release into the copy")?;
    // The servers run as postgres.
    let mut chmod = Command::new("chmod");
    chmod
        .arg("-R")
        .arg("a+rX")
        .arg(tree.parent().expect("a parent"));
    t.run(chmod, "make the copy readable")?;
    std::fs::write(&done, format!("{version} {commit}\n")).map_err(|e| e.to_string())?;
    Ok(bin)
}
