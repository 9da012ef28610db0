//! `cargo xtask package`: Debian packages of the extension, one per PostgreSQL major, in the
//! layout Debian's and PGDG's PostgreSQL packages use (`/usr/lib/postgresql/N/lib`,
//! `/usr/share/postgresql/N/extension`), and one of the command line (`/usr/bin/repmgr`, with a
//! manual page made by help2man from its `--help`). Staged trees are built with the field's
//! tools: `cargo pgrx package` stages the extension, `dpkg-shlibdeps` computes the library
//! dependencies, `dpkg-deb` builds the archives and `lintian` checks them. The control files,
//! maintainer scripts, copyright and changelog are templates in `packaging/debian/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Result, Task, majors, pg_config_of, pg_config_says, target_dir};

/// Where the packages are written: `target/debian/`.
pub fn out_dir(t: &Task) -> PathBuf {
    target_dir(t).join("debian")
}

/// The version every package carries: the extension crate's, which the changelog's newest
/// entry must name.
fn version(t: &Task) -> Result<String> {
    let manifest = std::fs::read_to_string(t.root.join("Cargo.toml"))
        .map_err(|e| format!("reading Cargo.toml: {e}"))?;
    let cargo = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .ok_or("Cargo.toml names no version")?
        .to_string();
    let changelog = read(t, "changelog")?;
    let newest = changelog
        .lines()
        .next()
        .and_then(|l| l.split(['(', ')']).nth(1))
        .unwrap_or_default();
    if newest != cargo {
        return Err(format!(
            "packaging/debian/changelog's newest entry is {newest:?} but Cargo.toml says {cargo}: add an entry for {cargo}"
        ));
    }
    Ok(cargo)
}

/// A file of `packaging/debian/`.
fn read(t: &Task, name: &str) -> Result<String> {
    let p = t.root.join("packaging/debian").join(name);
    std::fs::read_to_string(&p).map_err(|e| format!("reading {}: {e}", p.display()))
}

/// The output of a command that must succeed.
fn output(mut c: Command, what: &str) -> Result<String> {
    let out = c
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn architecture() -> Result<String> {
    let mut c = Command::new("dpkg");
    c.arg("--print-architecture");
    Ok(output(c, "dpkg --print-architecture")?.trim().to_string())
}

/// The maintainer named by the changelog's newest entry.
fn maintainer(t: &Task) -> Result<String> {
    read(t, "changelog")?
        .lines()
        .find_map(|l| l.strip_prefix(" -- "))
        .and_then(|l| l.split("  ").next())
        .map(str::to_string)
        .ok_or_else(|| "packaging/debian/changelog has no maintainer line".to_string())
}

/// The shared libraries `binary` links, as a Depends list (dpkg-shlibdeps, which wants a
/// debian/control to stand in).
fn shlibs(binary: &Path, scratch: &Path) -> Result<String> {
    std::fs::create_dir_all(scratch.join("debian")).map_err(|e| e.to_string())?;
    std::fs::write(
        scratch.join("debian/control"),
        "Source: repmgr-rs\n\nPackage: repmgr-rs\nArchitecture: any\n",
    )
    .map_err(|e| e.to_string())?;
    let mut c = Command::new("dpkg-shlibdeps");
    c.current_dir(scratch).arg("-O").arg("-e").arg(binary);
    let out = output(c, "dpkg-shlibdeps")?;
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .ok_or_else(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {out}"))
}

/// Copies `from` to `to` (creating its directory) with `mode`.
fn put(from: &Path, to: &Path, mode: u32) -> Result {
    use std::os::unix::fs::PermissionsExt;
    if let Some(d) = to.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    std::fs::copy(from, to)
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", to.display()))
}

/// Writes `text` to `to` (creating its directory) with `mode`.
fn write(to: &Path, text: &str, mode: u32) -> Result {
    use std::os::unix::fs::PermissionsExt;
    if let Some(d) = to.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    std::fs::write(to, text).map_err(|e| format!("writing {}: {e}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", to.display()))
}

/// Strips debugging symbols as Debian's dh_strip does for a shared object or a program.
fn strip(file: &Path) -> Result {
    let mut c = Command::new("strip");
    c.args([
        "--remove-section=.comment",
        "--remove-section=.note",
        "--strip-unneeded",
    ])
    .arg(file);
    output(c, "strip").map(|_| ())
}

/// gzip -9n, as Debian compresses documentation and manual pages.
fn gzip(file: &Path) -> Result {
    let mut c = Command::new("gzip");
    c.args(["-9nf"]).arg(file);
    output(c, "gzip").map(|_| ())
}

/// What every package holds besides its payload: copyright, changelog, lintian overrides.
fn documents(t: &Task, root: &Path, package: &str) -> Result {
    let doc = root.join("usr/share/doc").join(package);
    write(&doc.join("copyright"), &read(t, "copyright")?, 0o644)?;
    // A native package's changelog is changelog.gz.
    write(&doc.join("changelog"), &read(t, "changelog")?, 0o644)?;
    gzip(&doc.join("changelog"))
}

/// Fills a template's placeholders.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values.iter().fold(template.to_string(), |s, (k, v)| {
        s.replace(&format!("@{k}@"), v)
    })
}

/// The control file, md5sums and maintainer scripts, then `dpkg-deb --build`. Returns the
/// package file.
fn build(
    root: &Path,
    control: &str,
    scripts: &[(&str, String)],
    out: &Path,
    name: &str,
) -> Result<PathBuf> {
    let size = output(
        {
            let mut c = Command::new("du");
            c.args(["-sk", "--exclude=DEBIAN"]).arg(root);
            c
        },
        "du",
    )?;
    let size = size.split_whitespace().next().unwrap_or("0").to_string();
    write(
        &root.join("DEBIAN/control"),
        &control.replace("@SIZE@", &size),
        0o644,
    )?;
    for (script, text) in scripts {
        write(&root.join("DEBIAN").join(script), text, 0o755)?;
    }
    let mut md5 = Command::new("sh");
    md5.current_dir(root).args([
        "-c",
        "find usr -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum",
    ]);
    write(&root.join("DEBIAN/md5sums"), &output(md5, "md5sum")?, 0o644)?;
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let file = out.join(name);
    let mut c = Command::new("dpkg-deb");
    c.args(["--root-owner-group", "-Zxz", "--build"])
        .arg(root)
        .arg(&file);
    output(c, "dpkg-deb --build")?;
    Ok(file)
}

/// A fresh staging directory under `target/debian/stage`.
fn stage(t: &Task, name: &str) -> Result<PathBuf> {
    let d = out_dir(t).join("stage").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    Ok(d)
}

/// The extension's package for `major`.
fn extension(t: &Task, major: u32, version: &str, arch: &str) -> Result<PathBuf> {
    let package = format!("postgresql-{major}-repmgr-rs");
    t.step(&format!("package {package} {version}"));
    let pg_config = pg_config_of(major)?;
    let built = stage(t, &format!("pgrx-pg{major}"))?;
    let mut c = t.cargo();
    c.args(["pgrx", "package", "--pg-config", &pg_config, "--out-dir"])
        .arg(&built);
    t.run(c, "cargo pgrx package")?;
    // pgrx stages the files where this machine's PostgreSQL keeps them; the package puts them
    // where Debian's (and PGDG's) PostgreSQL of that major does.
    let says = |flag: &str| {
        pg_config_says(&pg_config, flag).ok_or_else(|| format!("{pg_config} {flag} failed"))
    };
    let lib = built.join(says("--pkglibdir")?.trim_start_matches('/'));
    let ext = built.join(format!(
        "{}/extension",
        says("--sharedir")?.trim_start_matches('/')
    ));
    let root = stage(t, &package)?;
    let so = root.join(format!("usr/lib/postgresql/{major}/lib/repmgr.so"));
    put(&lib.join("repmgr.so"), &so, 0o644)?;
    strip(&so)?;
    let extension_dir = root.join(format!("usr/share/postgresql/{major}/extension"));
    for e in std::fs::read_dir(&ext).map_err(|e| format!("reading {}: {e}", ext.display()))? {
        let p = e.map_err(|e| e.to_string())?.path();
        put(
            &p,
            &extension_dir.join(p.file_name().expect("a file")),
            0o644,
        )?;
    }
    documents(t, &root, &package)?;
    let overrides = read(t, "extension.lintian-overrides")?;
    let values = [
        ("MAJOR", major.to_string()),
        ("VERSION", version.to_string()),
        ("ARCH", arch.to_string()),
        ("MAINTAINER", maintainer(t)?),
        ("SHLIBS", shlibs(&so, &stage(t, "shlibs")?)?),
    ];
    let values: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    write(
        &root.join("usr/share/lintian/overrides").join(&package),
        &fill(&overrides, &values),
        0o644,
    )?;
    build(
        &root,
        &fill(&read(t, "extension.control")?, &values),
        &[
            ("prerm", fill(&read(t, "extension.prerm")?, &values)),
            ("postinst", fill(&read(t, "extension.postinst")?, &values)),
        ],
        &out_dir(t),
        &format!("{package}_{version}_{arch}.deb"),
    )
}

/// The command line's package.
fn cli(t: &Task, version: &str, arch: &str) -> Result<PathBuf> {
    let package = "repmgr-rs";
    t.step(&format!("package {package} {version}"));
    let mut c = t.cargo();
    c.args(["build", "--release", "-p", "repmgr-cli"]);
    t.run(c, "cargo build --release -p repmgr-cli")?;
    let root = stage(t, package)?;
    let bin = root.join("usr/bin/repmgr");
    put(&target_dir(t).join("release/repmgr"), &bin, 0o755)?;
    strip(&bin)?;
    // The manual page is the command's own --help, through help2man.
    let man = root.join("usr/share/man/man1/repmgr.1");
    std::fs::create_dir_all(man.parent().expect("a directory")).map_err(|e| e.to_string())?;
    let mut h = Command::new("help2man");
    h.args([
        "--no-info",
        "--section=1",
        "--name=replication manager for PostgreSQL (repmgr 5 commands for the repmgr extension)",
        "--version-string",
        version,
        "--output",
    ])
    .arg(&man)
    .arg(&bin);
    output(h, "help2man")?;
    gzip(&man)?;
    documents(t, &root, package)?;
    let values = [
        ("VERSION", version.to_string()),
        ("ARCH", arch.to_string()),
        ("MAINTAINER", maintainer(t)?),
        ("SHLIBS", shlibs(&bin, &stage(t, "shlibs")?)?),
    ];
    let values: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    write(
        &root.join("usr/share/lintian/overrides").join(package),
        &fill(&read(t, "cli.lintian-overrides")?, &values),
        0o644,
    )?;
    build(
        &root,
        &fill(&read(t, "cli.control")?, &values),
        &[],
        &out_dir(t),
        &format!("{package}_{version}_{arch}.deb"),
    )
}

/// lintian on every package: every error or warning it reports is fixed or overridden with the
/// reason in the package's overrides file; anything else fails the build.
fn lint(t: &Task, files: &[PathBuf]) -> Result {
    t.step("lintian");
    // The overridden tags with their reasons, for the log (lintian's exit status with
    // --show-overrides does not tell), then the verdict.
    let mut show = Command::new("lintian");
    show.args(["--display-info", "--show-overrides"])
        .args(files);
    let _ = show.status();
    // Errors and warnings fail; information tags are shown above but do not: an override of
    // a tag that depends on the compiled bytes (spelling-error-in-binary) matches in some
    // builds and not in others, where lintian reports it as unused (an information tag).
    let mut c = Command::new("lintian");
    c.args(["--fail-on", "error,warning"]).args(files);
    t.run(
        c,
        "lintian (every tag must be fixed or explained in packaging/debian/*.lintian-overrides)",
    )
}

/// Builds the packages of `only` (else every major) and the command line's, and lints them.
/// Returns the package files.
pub fn package(t: &Task, only: Option<u32>) -> Result<Vec<PathBuf>> {
    let version = version(t)?;
    let arch = architecture()?;
    let chosen: Vec<u32> = match only {
        Some(m) => {
            pg_config_of(m)?;
            vec![m]
        }
        None => majors().iter().map(|(m, _)| *m).collect(),
    };
    let mut files = Vec::new();
    for major in chosen {
        files.push(extension(t, major, &version, &arch)?);
    }
    files.push(cli(t, &version, &arch)?);
    lint(t, &files)?;
    for f in &files {
        println!("          {}", f.display());
    }
    Ok(files)
}
