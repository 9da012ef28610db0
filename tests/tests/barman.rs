//! `standby clone` from Barman on real hosts: Barman (Debian's 3.4 on PostgreSQL 15 and 16,
//! PyPI's on 17 and 18) on a host (network namespace) of its own, streaming the primary's WAL and taking `backup_method = postgres`
//! backups, with sshd there; the new standby's host copies the newest backup over ssh with
//! rsync, and, its primary having recycled the WAL from the start of that backup, catches up
//! through `restore_command` (`barman-wal-restore`, from barman-cli) from Barman's archive,
//! then streams from the primary. Another is cloned with `--no-upstream-connection` while it
//! cannot reach the primary at all.

use std::process::Command;
use std::time::Duration;

use repmgr_tests::barman::Barman;
use repmgr_tests::ssh::Sshd;
use repmgr_tests::{Cluster, NodeOptions, cli};

const WAIT: Duration = Duration::from_secs(60);

/// `repmgr <args>` as root on the host (namespace) `ns`: exit code and all it printed.
fn repmgr_in(ns: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(cli())
        .args(args)
        .output()
        .expect("run repmgr in a namespace");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The clone command for `conf`, from the primary (node 1) of `c`.
fn clone_args(c: &Cluster, conf: &str, extra: &[&str]) -> Vec<String> {
    let p = c.node(1);
    let mut args: Vec<String> = ["-f", conf, "standby", "clone", "-h", &p.host, "-p"]
        .map(str::to_string)
        .to_vec();
    args.extend([
        p.port.to_string(),
        "-U".into(),
        "postgres".into(),
        "-d".into(),
        "repmgr".into(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn a_standby_cloned_from_barman_catches_up_from_its_archive_then_streams() {
    let mut c = Cluster::with_network("barman");
    c.init_primary(1, NodeOptions::default());
    c.sql(1, "SELECT repmgr.register_primary()");
    let primary = c.node(1).clone();
    let mut sshd = Sshd::new(&c.dir.join("ssh"));
    sshd.configure_clients(c.network());
    let barman = Barman::start(&c.dir.join("barman"), c.network_mut(), 9, &primary, "pg1");
    sshd.start_with(c.network(), 9, &barman.binds());
    let id = barman.backup();
    let begin_wal = barman
        .run(&["show-backup", "pg1", &id])
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Begin WAL")
                .map(|v| v.trim_start_matches([' ', ':']).trim().to_string())
        })
        .expect("the backup's first WAL file");

    // Changes after the backup, and the primary recycles the WAL from the backup's start: the
    // standby can get it only from Barman's archive.
    c.sql(1, "CREATE TABLE after_backup (x int)");
    for round in 0..4 {
        c.sql(
            1,
            &format!(
                "INSERT INTO after_backup SELECT g FROM generate_series({}, {}) g",
                round * 1000 + 1,
                round * 1000 + 1000
            ),
        );
        c.sql(1, "SELECT pg_switch_wal()");
        c.sql(1, "CHECKPOINT");
    }
    c.wait_for(
        "the primary to recycle the backup's first WAL file",
        WAIT,
        || {
            c.sql(1, "SELECT pg_switch_wal()");
            c.sql(1, "CHECKPOINT");
            (c.int(
                1,
                &format!("SELECT count(*) FROM pg_ls_waldir() WHERE name = '{begin_wal}'"),
            ) == 0)
                .then_some(())
        },
    );

    let opts = NodeOptions::default();
    let n2 = c.reserve(2, &opts);
    let ns2 = n2.netns.clone().expect("a namespaced node");
    let barman_conf = barman.conf.display().to_string();
    let lines = [
        format!("ssh_options = '{}'", sshd.options(3)),
        format!("barman_host = '{}'", barman.address),
        "barman_server = 'pg1'".to_string(),
        format!("barman_config = '{barman_conf}'"),
        format!(
            "restore_command = 'barman-wal-restore -U root -c {barman_conf} {} pg1 %f %p'",
            barman.address
        ),
    ];
    let extra: Vec<&str> = lines.iter().map(String::as_str).collect();
    let conf2 = c.repmgr_conf(&n2, &extra);
    let conf2 = conf2.to_string_lossy().into_owned();

    // --dry-run names the backup and the copy, and changes nothing.
    let (code, said) = repmgr_in(&ns2, &as_strs(&clone_args(&c, &conf2, &["--dry-run"])));
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains(&format!(
            "would copy backup {id} of Barman server \"pg1\" on {}",
            barman.address
        )) && said.contains("rsync -a --no-owner --no-group --delete")
            && said.contains("would set restore_command = 'barman-wal-restore"),
        "{said}"
    );
    assert!(!n2.data.join("PG_VERSION").exists());

    let (code, said) = repmgr_in(&ns2, &as_strs(&clone_args(&c, &conf2, &[])));
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains(&format!("cloning backup {id} of Barman server \"pg1\"")),
        "{said}"
    );
    assert!(
        n2.data.join("backup_label").exists(),
        "Barman's copy keeps its backup_label"
    );
    let auto = std::fs::read_to_string(n2.data.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains("restore_command = 'barman-wal-restore"),
        "{auto}"
    );
    c.adopt(n2, &opts);
    c.start(2);
    c.wait_for(
        "node 2 to replay the changes made after the backup",
        WAIT,
        || {
            c.try_sql(2, "SELECT count(*) FROM after_backup")
                .ok()
                .and_then(|r| r.get(0, 0).map(str::to_string))
                .filter(|n| n == "4000")
                .map(|_| ())
        },
    );
    assert!(
        c.log(2)
            .contains(&format!("restored log file \"{begin_wal}\" from archive")),
        "node 2 did not restore {begin_wal} from Barman:\n{}",
        c.log(2)
    );
    c.wait_for("node 2 to stream from the primary", WAIT, || {
        c.streams_from(1, 2).then_some(())
    });
    c.sql(2, "SELECT repmgr.register_standby()");
    assert!(
        c.value(
            1,
            "SELECT details FROM repmgr.events WHERE node_id = 2 AND event = 'standby_clone'"
        )
        .is_some_and(|d| d.contains(&format!("backup method: barman (backup {id}"))),
        "the standby_clone event names the backup"
    );

    // A server Barman does not know: exit 19, Barman's own words, nothing changed.
    let n3 = c.reserve(3, &opts);
    let ns3 = n3.netns.clone().expect("a namespaced node");
    let mut wrong: Vec<String> = lines.to_vec();
    wrong[2] = "barman_server = 'nosuch'".into();
    let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
    let conf3 = c.repmgr_conf(&n3, &wrong).to_string_lossy().into_owned();
    let (code, said) = repmgr_in(&ns3, &as_strs(&clone_args(&c, &conf3, &[])));
    assert_eq!(code, 19, "{said}");
    assert!(
        said.contains("barman list-backups --minimal nosuch failed on the Barman host")
            && said.contains("Unknown server 'nosuch'"),
        "{said}"
    );
    assert!(!n3.data.join("PG_VERSION").exists());
    // barman_host without barman_server is refused when repmgr.conf is read.
    let half: Vec<&str> = vec![wrong[0], wrong[1]];
    let conf3 = c.repmgr_conf(&n3, &half).to_string_lossy().into_owned();
    let (code, said) = repmgr_in(&ns3, &as_strs(&clone_args(&c, &conf3, &["--dry-run"])));
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("barman_host and barman_server go together"),
        "{said}"
    );

    // --no-upstream-connection: node 3 cannot even reach the primary while it clones.
    let good: Vec<&str> = lines.iter().map(String::as_str).collect();
    let conf3 = c.repmgr_conf(&n3, &good).to_string_lossy().into_owned();
    // Without Barman there is nothing to clone without the upstream.
    let (code, said) = repmgr_in(
        &ns3,
        &as_strs(&clone_args(
            &c,
            &conf3,
            &["--no-upstream-connection", "--without-barman", "--dry-run"],
        )),
    );
    assert_eq!(code, 3, "{said}");
    assert!(
        said.contains("--no-upstream-connection clones from Barman only"),
        "{said}"
    );
    c.network().cut(1, 3);
    let (code, said) = repmgr_in(
        &ns3,
        &as_strs(&clone_args(&c, &conf3, &["--no-upstream-connection"])),
    );
    c.network().mend(1, 3);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains("(no upstream connection)")
            && said.contains("no standby_clone event was recorded"),
        "{said}"
    );
    c.adopt(n3, &opts);
    c.start(3);
    c.wait_for("node 3 to stream from the primary", WAIT, || {
        c.streams_from(1, 3).then_some(())
    });
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
