//! The installed library itself: what it puts into every server process that preloads it.

use std::process::Command;

use repmgr_tests::bindir;

fn output(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    String::from_utf8_lossy(&repmgr_tests::run_checked(cmd, &what).stdout).into_owned()
}

/// A libpq linked into the preloaded library would be found first by the server's own WAL
/// receiver (it is loaded `RTLD_GLOBAL`): the extension opens libpq privately instead.
#[test]
fn the_extension_neither_links_libpq_nor_needs_its_symbols() {
    let lib = repmgr_tests::pg_config(&bindir(), "--pkglibdir").expect("pg_config --pkglibdir");
    let so = format!("{}/repmgr.so", lib.trim());
    let dynamic = output(Command::new("readelf").args(["-d", &so]));
    assert!(
        dynamic.contains("(NEEDED)"),
        "readelf printed no dependencies of {so}:\n{dynamic}"
    );
    assert!(
        !dynamic.contains("libpq"),
        "{so} depends on a libpq:\n{dynamic}"
    );
    let symbols = output(Command::new("readelf").args(["--dyn-syms", "-W", &so]));
    let pq: Vec<&str> = symbols
        .lines()
        .filter(|l| {
            l.contains(" UND ")
                && l.split_whitespace()
                    .last()
                    .is_some_and(|s| s.starts_with("PQ"))
        })
        .collect();
    assert!(pq.is_empty(), "{so} imports libpq symbols: {pq:?}");
}
