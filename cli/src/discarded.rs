//! What a rewind throws away: this node's WAL that the primary's history does not continue.
//! Before pg_rewind runs, `node rejoin` reads it with pg_waldump, to name it in its output and
//! its `node_rejoin` event, and when asked (`--keep-wal-directory`) copies its segment files
//! into a directory of their own, so that a DBA can read them later with pg_waldump. That
//! directory is bounded (`--keep-wal-max-size`): the oldest copies go first.

use std::path::{Path, PathBuf};

use repmgr_core::lsn::{Lsn, segment_file};

use crate::context::Ctx;
use crate::local;

/// Where this node's own WAL begins, the part the primary's history does not continue: on
/// timeline `.0`, from `.1`. `None` when it has none, or when it cannot be told (its
/// timeline is ahead of the primary's).
pub type OwnWal = Option<(u32, Lsn)>;

/// Where to keep the discarded WAL, and the most that directory may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keep {
    pub directory: PathBuf,
    pub max_bytes: u64,
}

/// What pg_waldump read of the discarded WAL: its last record, how many records and commits.
struct Read {
    last: Lsn,
    records: usize,
    commits: usize,
}

/// What pg_waldump reads of this node's WAL on timeline `tli` from `from`. `None` when there
/// is none or it cannot be read (the rejoin goes on; this is for the operator).
fn read(ctx: &Ctx, dir: &Path, tli: u32, from: Lsn) -> Option<Read> {
    let wal = dir.join("pg_wal");
    let c = local::command_as(
        local::run_as(dir).as_deref(),
        &local::program(&ctx.cfg, Some(dir), "pg_waldump"),
        &[
            "--path",
            &wal.to_string_lossy(),
            "--timeline",
            &tli.to_string(),
            "--start",
            &from.to_string(),
        ],
    );
    // pg_waldump exits non-zero at the end of the WAL it finds: the records are on stdout.
    let out = local::output(c, "pg_waldump").ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut last = None;
    let (mut records, mut commits) = (0, 0);
    for line in text.lines() {
        let Some(lsn) = line
            .split("lsn: ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|l| Lsn::parse(l.trim()))
        else {
            continue;
        };
        records += 1;
        if line.contains("desc: COMMIT") {
            commits += 1;
        }
        last = Some(lsn);
    }
    last.map(|last| Read {
        last,
        records,
        commits,
    })
}

/// Says what a rewind throws away, and keeps its files when asked: the words go into the
/// command's output and the `node_rejoin` event.
pub fn describe_and_keep(
    ctx: &Ctx,
    dir: &Path,
    node_id: i32,
    own: OwnWal,
    keep: Option<&Keep>,
) -> String {
    let Some((tli, from)) = own else {
        return String::new();
    };
    let read = read(ctx, dir, tli, from);
    let mut words = match &read {
        Some(r) => format!(
            "; it discarded this node's WAL on timeline {tli} from {from} to its last record at {} ({} records, {} of them commits)",
            r.last, r.records, r.commits
        ),
        None => format!(
            "; it discarded this node's WAL on timeline {tli} from {from} (pg_waldump read no record there)"
        ),
    };
    if let Some(k) = keep {
        let until = read.as_ref().map(|r| r.last);
        words.push_str(&match keep_files(dir, node_id, tli, from, until, k) {
            Ok(kept) => kept,
            Err(why) => format!("; its WAL files were not kept: {why}"),
        });
    }
    words
}

/// The size of the WAL segments in `pg_wal` (the largest file named like one).
fn segment_size(wal: &Path) -> Option<u64> {
    std::fs::read_dir(wal)
        .ok()?
        .flatten()
        .filter(|e| is_segment_name(&e.file_name().to_string_lossy()))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .max()
        .filter(|s| s.is_power_of_two())
}

fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Total size of the files under `dir`, one level deep (a kept copy holds only files).
fn size_of(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Copies the segment files of timeline `tli` from `from` to `until` (or to the last one in
/// `pg_wal`) into a new directory under `k.directory`, removing the oldest earlier copies so
/// that everything there stays within `k.max_bytes`.
fn keep_files(
    dir: &Path,
    node_id: i32,
    tli: u32,
    from: Lsn,
    until: Option<Lsn>,
    k: &Keep,
) -> Result<String, String> {
    if !k.directory.is_absolute() {
        return Err(format!("{} is not an absolute path", k.directory.display()));
    }
    let data = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let base = k
        .directory
        .canonicalize()
        .unwrap_or_else(|_| k.directory.clone());
    if base.starts_with(&data) {
        return Err(format!(
            "{} is inside the data directory, which pg_rewind rewrites",
            k.directory.display()
        ));
    }
    let wal = dir.join("pg_wal");
    let seg_size = segment_size(&wal).ok_or("no WAL segment file in pg_wal")?;
    let first = from.segment(seg_size);
    let last = until.map(|l| l.segment(seg_size));
    let mut files: Vec<(String, u64)> = std::fs::read_dir(&wal)
        .map_err(|e| format!("cannot read {}: {e}", wal.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let len = e.metadata().ok()?.len();
            Some((name, len))
        })
        .filter(|(name, _)| {
            is_segment_name(name)
                && name.as_str() >= segment_file(tli, first, seg_size).as_str()
                && last.is_none_or(|l| name.as_str() <= segment_file(tli, l, seg_size).as_str())
                && name.starts_with(&format!("{tli:08X}"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!(
            "no segment of timeline {tli} from {from} is left in pg_wal"
        ));
    }
    // What fits, from the start of the discarded range (where it parts from the primary's).
    let mut fitting = 0;
    let mut total = 0;
    for (_, len) in &files {
        if total + len > k.max_bytes {
            break;
        }
        total += len;
        fitting += 1;
    }
    if fitting == 0 {
        return Err(format!(
            "one segment ({} MB) is more than the {} MB allowed (--keep-wal-max-size, repmgr.rejoin_keep_wal_max_size)",
            seg_size >> 20,
            k.max_bytes >> 20
        ));
    }
    std::fs::create_dir_all(&k.directory)
        .map_err(|e| format!("cannot create {}: {e}", k.directory.display()))?;
    // Earlier copies, oldest first, go until the new one fits.
    let mut earlier: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&k.directory)
        .map_err(|e| format!("cannot read {}: {e}", k.directory.display()))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("node"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .filter(|(_, p)| p.is_dir())
        .collect();
    earlier.sort();
    let mut held: u64 = earlier.iter().map(|(_, p)| size_of(p)).sum();
    let mut removed = 0;
    for (_, p) in &earlier {
        if held + total <= k.max_bytes {
            break;
        }
        held = held.saturating_sub(size_of(p));
        std::fs::remove_dir_all(p).map_err(|e| format!("cannot remove {}: {e}", p.display()))?;
        removed += 1;
    }
    let stamp = utc_stamp();
    let target = k
        .directory
        .join(format!("node{node_id}-{stamp}-timeline{tli}"));
    std::fs::create_dir(&target).map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    for (name, _) in &files[..fitting] {
        std::fs::copy(wal.join(name), target.join(name))
            .map_err(|e| format!("cannot copy {name} to {}: {e}", target.display()))?;
    }
    let mut note = format!(
        "WAL of node {node_id} that a rewind discarded: timeline {tli}, from {from}{}.\nRead it with: pg_waldump --path {} --timeline {tli} --start {from}\n",
        until.map_or(String::new(), |u| format!(" to its last record at {u}")),
        target.display()
    );
    if fitting < files.len() {
        note.push_str(&format!(
            "Only the first {fitting} of its {} segments are here: the directory is limited to {} MB.\n",
            files.len(),
            k.max_bytes >> 20
        ));
    }
    std::fs::write(target.join("README"), note)
        .map_err(|e| format!("cannot write in {}: {e}", target.display()))?;
    let owner_of = |p: &Path| -> Option<(u32, u32)> {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(p).ok().map(|m| (m.uid(), m.gid()))
    };
    // The copies belong to whoever owns the data directory, as the originals did.
    if let Some((uid, gid)) = owner_of(dir) {
        for p in std::iter::once(target.clone()).chain(
            std::fs::read_dir(&target)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path()),
        ) {
            let _ = std::os::unix::fs::chown(&p, Some(uid), Some(gid));
        }
    }
    let mut words = format!(
        "; its WAL files are kept in {} ({fitting} segment{}",
        target.display(),
        if fitting == 1 { "" } else { "s" }
    );
    if fitting < files.len() {
        words.push_str(&format!(
            " of {}, the rest over the size limit",
            files.len()
        ));
    }
    if removed > 0 {
        words.push_str(&format!(
            ", {removed} older cop{} removed to make room",
            if removed == 1 { "y" } else { "ies" }
        ));
    }
    words.push(')');
    Ok(words)
}

/// Now as `YYYYMMDDTHHMMSSZ` (UTC), for directory names that sort by time.
fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::gmtime_r(&secs, &mut tm) };
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    /// A data directory whose pg_wal holds segments 1 to 3 of timeline 2 (1 MB each) and one
    /// of timeline 1.
    fn data_dir(root: &Path) -> PathBuf {
        let dir = root.join("data");
        std::fs::create_dir_all(dir.join("pg_wal")).unwrap();
        for name in [
            "000000010000000000000001",
            "000000020000000000000001",
            "000000020000000000000002",
            "000000020000000000000003",
        ] {
            std::fs::write(dir.join("pg_wal").join(name), vec![0u8; MB as usize]).unwrap();
        }
        std::fs::write(dir.join("pg_wal/00000002.history"), "1\t0/1000000\n").unwrap();
        dir
    }

    fn scratch(name: &str) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("repmgr-discarded-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    fn copies(keep: &Path) -> Vec<Vec<String>> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(keep)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        dirs.sort();
        dirs.iter()
            .map(|d| {
                let mut f: Vec<String> = std::fs::read_dir(d)
                    .unwrap()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                f.sort();
                f
            })
            .collect()
    }

    #[test]
    fn keeps_the_discarded_segments_within_the_limit() {
        let root = scratch("limit");
        let dir = data_dir(&root);
        let k = Keep {
            directory: root.join("kept"),
            max_bytes: 2 * MB + 4096,
        };
        // From 0/100100 (segment 1) to 0/200200 (segment 2): two segments of timeline 2.
        let from = Lsn::parse("0/100100").unwrap();
        let words = keep_files(&dir, 1, 2, from, Lsn::parse("0/200200"), &k).unwrap();
        assert!(words.contains("(2 segments)"), "{words}");
        assert_eq!(
            copies(&k.directory),
            [[
                "000000020000000000000001",
                "000000020000000000000002",
                "README"
            ]]
        );
        let copy = std::fs::read_dir(&k.directory)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let readme = std::fs::read_to_string(copy.join("README")).unwrap();
        assert!(
            readme.contains(&format!(
                "pg_waldump --path {} --timeline 2 --start 0/100100",
                copy.display()
            )),
            "{readme}"
        );
        // To the end of pg_wal (no last record known): three segments, only two fit, and the
        // earlier copy goes to make room.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let words = keep_files(&dir, 1, 2, from, None, &k).unwrap();
        assert!(
            words.contains(
                "(2 segments of 3, the rest over the size limit, 1 older copy removed to make room)"
            ),
            "{words}"
        );
        let now = copies(&k.directory);
        assert_eq!(now.len(), 1);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn refuses_a_directory_it_cannot_use() {
        let root = scratch("refuse");
        let dir = data_dir(&root);
        let from = Lsn::parse("0/100100").unwrap();
        let inside = Keep {
            directory: dir.join("kept"),
            max_bytes: 1 << 30,
        };
        let e = keep_files(&dir, 1, 2, from, None, &inside).unwrap_err();
        assert!(e.contains("inside the data directory"), "{e}");
        let relative = Keep {
            directory: PathBuf::from("kept"),
            max_bytes: 1 << 30,
        };
        assert!(
            keep_files(&dir, 1, 2, from, None, &relative)
                .unwrap_err()
                .contains("not an absolute path")
        );
        let tiny = Keep {
            directory: root.join("kept"),
            max_bytes: 16 * 1024,
        };
        let e = keep_files(&dir, 1, 2, from, None, &tiny).unwrap_err();
        assert!(e.contains("is more than the"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
