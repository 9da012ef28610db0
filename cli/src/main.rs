//! The `repmgr` command line: what must run outside a server, and views over the cluster.
//!
//! Commands follow repmgr 5.x: `repmgr [options] <object> <action>`, with the same names,
//! option letters, output and exit codes (see [`exit`]), so that a repmgr user's habits and
//! scripts keep working. Most actions are thin wrappers over the extension's SQL API; what
//! needs the server stopped or absent (clone, rejoin, the middle of a switchover) runs here.

mod barman;
mod basebackup;
mod catalog;
mod cluster;
mod config;
mod conn;
mod context;
mod discarded;
mod exit;
mod local;
mod node;
mod output;
mod register;
mod rejoin;
mod remote;
mod service;
mod standby;

use std::path::PathBuf;

use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::output::Format;

#[derive(Parser, Debug)]
#[command(
    name = "repmgr",
    version,
    about = "Replication manager for PostgreSQL clusters (repmgr 5.x commands, run against the repmgr extension)",
    disable_help_flag = true,
    after_help = exit::TABLE
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub object: Object,
}

/// Options every command takes.
#[derive(Args, Debug, Clone, Default)]
pub struct Global {
    /// Database name or connection string of the node to work on (for `standby clone`, `witness register` and `node rejoin`: of the upstream or primary)
    #[arg(short = 'd', long = "dbname", global = true)]
    pub dbname: Option<String>,
    /// Host of that node
    #[arg(short = 'h', long, global = true)]
    pub host: Option<String>,
    /// Port of that node
    #[arg(short = 'p', long, global = true)]
    pub port: Option<u16>,
    /// User to connect as
    #[arg(short = 'U', long = "username", global = true)]
    pub username: Option<String>,
    /// The repmgr.conf to read (default: ./repmgr.conf, /etc/repmgr.conf, /etc/repmgr/15/repmgr.conf)
    #[arg(short = 'f', long = "config-file", global = true)]
    pub config_file: Option<PathBuf>,
    /// The data directory of the local node (overrides data_directory in repmgr.conf)
    #[arg(short = 'D', long = "pgdata", global = true)]
    pub pgdata: Option<PathBuf>,
    /// Output format of read commands
    #[arg(long, value_enum, global = true, default_value = "text")]
    pub format: Format,
    /// Same as --format csv (repmgr's option)
    #[arg(long, global = true)]
    pub csv: bool,
    /// Check everything and change nothing
    #[arg(long = "dry-run", global = true)]
    pub dry_run: bool,
    /// Go ahead despite a failed check that allows it (each command says which)
    #[arg(short = 'F', long, global = true)]
    pub force: bool,
    /// Log which node and which SQL each step uses
    #[arg(short = 'v', long, global = true)]
    pub verbose: bool,
    /// Print help
    #[arg(short = '?', long, action = ArgAction::Help, global = true)]
    pub help: Option<bool>,
}

impl Global {
    pub fn format(&self) -> Format {
        if self.csv { Format::Csv } else { self.format }
    }
}

#[derive(Subcommand, Debug)]
pub enum Object {
    /// Register or unregister the primary
    #[command(alias = "master")]
    Primary {
        #[command(subcommand)]
        action: PrimaryAction,
    },
    /// Clone, register, promote, follow and switch over standbys
    Standby {
        #[command(subcommand)]
        action: StandbyAction,
    },
    /// Register or unregister the witness
    Witness {
        #[command(subcommand)]
        action: WitnessAction,
    },
    /// The local node: status, checks, rejoin, service control
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// Views over the whole cluster
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// The monitoring workers of every node: status, pause, unpause
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum PrimaryAction {
    /// Register this server as the primary (SELECT repmgr.register_primary())
    Register,
    /// Remove a primary's record
    Unregister {
        /// The node to unregister (default: this node)
        #[arg(long = "node-id")]
        node_id: Option<i32>,
    },
}

#[derive(Subcommand, Debug)]
pub enum WitnessAction {
    /// Register this server as the witness of the primary given with -d/-h/-p/-U
    Register,
    /// Remove a witness's record
    Unregister {
        /// The node to unregister (default: this node)
        #[arg(long = "node-id")]
        node_id: Option<i32>,
    },
}

#[derive(Subcommand, Debug)]
pub enum StandbyAction {
    /// Make a new standby from a running upstream with pg_basebackup (server stays stopped)
    Clone(standby::CloneArgs),
    /// Register this standby (SELECT repmgr.register_standby())
    Register {
        /// The node this standby streams from (default: the primary)
        #[arg(long = "upstream-node-id")]
        upstream_node_id: Option<i32>,
    },
    /// Remove a standby's record
    Unregister {
        /// The node to unregister (default: this node)
        #[arg(long = "node-id")]
        node_id: Option<i32>,
    },
    /// Promote this standby (refused while a primary runs; -F promotes without a majority of voters)
    Promote(standby::PromoteArgs),
    /// Stream from another node (default: the primary) and wait until it does
    Follow {
        /// The node to follow
        #[arg(long = "upstream-node-id")]
        upstream_node_id: Option<i32>,
    },
    /// Swap roles with the primary: stop it cleanly, promote this standby, rejoin the old primary
    Switchover(standby::SwitchoverArgs),
}

#[derive(Subcommand, Debug)]
pub enum NodeAction {
    /// This node's state, and what is wrong with it (exit 25 when anything is)
    Status {
        /// For switchover: print --state=... and, when shut down, --last-checkpoint-lsn=...
        #[arg(long = "is-shutdown-cleanly", hide = true)]
        is_shutdown_cleanly: bool,
    },
    /// Health checks; with one check option, a single line and Nagios exit codes
    Check(node::CheckArgs),
    /// Bring a stopped former primary or a diverged standby back as a standby
    Rejoin {
        /// Run pg_rewind when the timelines diverged
        #[arg(long = "force-rewind")]
        force_rewind: bool,
        /// Keep copies of the WAL files a rewind discards in a directory of their own under
        /// DIR (absolute, outside the data directory); repmgr.conf: rejoin_keep_wal_directory
        #[arg(long = "keep-wal-directory", value_name = "DIR")]
        keep_wal_directory: Option<PathBuf>,
        /// The most DIR may hold, in MB; the oldest copies go first (default 1024);
        /// repmgr.conf: rejoin_keep_wal_max_size
        #[arg(long = "keep-wal-max-size", value_name = "MB")]
        keep_wal_max_size: Option<u64>,
        /// When pg_rewind cannot bring the node back (no wal_log_hints, missing WAL, a failed
        /// rewind), replace its data directory with a fresh copy of the primary's
        /// (pg_basebackup), keeping its configuration files; the automatic rejoin passes it
        /// when repmgr.auto_reclone is on
        #[arg(long)]
        reclone: bool,
    },
    /// Start, stop, restart, reload or promote the local server with its service commands
    Service {
        /// What to do
        #[arg(long, value_enum)]
        action: node::ServiceAction,
        /// Run CHECKPOINT before stopping or restarting
        #[arg(long)]
        checkpoint: bool,
        /// Only print the command
        #[arg(long = "list-actions")]
        list_actions: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterAction {
    /// Every registered node, checked live
    Show {
        /// Leave out the connection string
        #[arg(long)]
        compact: bool,
    },
    /// Which node can reach which, as seen from each node's server
    Matrix,
    /// The matrix as every node sees it, merged
    Crosscheck,
    /// The newest events
    Event {
        /// How many (default 20)
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Only events of this name
        #[arg(long)]
        event: Option<String>,
        /// Only events of this node
        #[arg(long = "node-id")]
        node_id: Option<i32>,
        /// Every matching event, not just the newest
        #[arg(long)]
        all: bool,
    },
    /// Delete old monitoring history on the primary
    Cleanup {
        /// Keep this many days (default 0: delete all)
        #[arg(short = 'k', long = "keep-history", default_value_t = 0)]
        keep_history: i64,
        /// Only this standby's history
        #[arg(long = "node-id")]
        node_id: Option<i32>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ServiceAction {
    /// Every node's monitoring worker: running, paused, upstream last seen
    Status,
    /// Stop automatic actions (failover, following) on every node
    Pause,
    /// Resume automatic actions on every node
    Unpause,
}

/// The command definition, with clap's `-h` help flag removed everywhere: `-h` is the host,
/// as in repmgr and psql; help is `-?` / `--help`.
fn command() -> clap::Command {
    fn strip(c: clap::Command) -> clap::Command {
        c.disable_help_flag(true)
            .disable_help_subcommand(true)
            .mut_subcommands(strip)
    }
    strip(Cli::command())
}

fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut matches = command().try_get_matches_from(args)?;
    Cli::from_arg_matches_mut(&mut matches)
}

fn main() {
    let cli = match parse_from(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    exit::SUCCESS
                }
                _ => exit::ERR_BAD_ARGUMENT,
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    conn::set_verbose(cli.global.verbose);
    let code =
        match context::Ctx::new(cli.global.clone()).and_then(|ctx| dispatch(&ctx, &cli.object)) {
            Ok(code) => code,
            Err(f) => {
                f.report();
                f.code
            }
        };
    std::process::exit(code);
}

/// Runs the command; `Ok` carries the exit code of a command that ran (0, or 25 for problems
/// found, or a Nagios code).
fn dispatch(ctx: &context::Ctx, object: &Object) -> exit::Result<i32> {
    match object {
        Object::Primary { action } => match action {
            PrimaryAction::Register => register::primary(ctx),
            PrimaryAction::Unregister { node_id } => register::unregister(ctx, *node_id, "primary"),
        },
        Object::Witness { action } => match action {
            WitnessAction::Register => register::witness(ctx),
            WitnessAction::Unregister { node_id } => register::unregister(ctx, *node_id, "witness"),
        },
        Object::Standby { action } => match action {
            StandbyAction::Clone(args) => standby::clone(ctx, args),
            StandbyAction::Register { upstream_node_id } => {
                register::standby(ctx, *upstream_node_id)
            }
            StandbyAction::Unregister { node_id } => register::unregister(ctx, *node_id, "standby"),
            StandbyAction::Promote(a) => standby::promote(ctx, a),
            StandbyAction::Follow { upstream_node_id } => standby::follow(ctx, *upstream_node_id),
            StandbyAction::Switchover(args) => standby::switchover(ctx, args),
        },
        Object::Node { action } => match action {
            NodeAction::Status {
                is_shutdown_cleanly,
            } => node::status(ctx, *is_shutdown_cleanly),
            NodeAction::Check(args) => node::check(ctx, args),
            NodeAction::Rejoin {
                force_rewind,
                keep_wal_directory,
                keep_wal_max_size,
                reclone,
            } => {
                let keep = keep_wal_directory
                    .clone()
                    .or_else(|| ctx.cfg.rejoin_keep_wal_directory.clone())
                    .map(|directory| discarded::Keep {
                        directory,
                        max_bytes: keep_wal_max_size
                            .unwrap_or(ctx.cfg.rejoin_keep_wal_max_size)
                            .saturating_mul(1 << 20),
                    });
                rejoin::rejoin(
                    ctx,
                    &rejoin::Options {
                        force_rewind: *force_rewind,
                        reclone: *reclone,
                        keep,
                    },
                )
            }
            NodeAction::Service {
                action,
                checkpoint,
                list_actions,
            } => node::service(ctx, *action, *checkpoint, *list_actions),
        },
        Object::Cluster { action } => match action {
            ClusterAction::Show { compact } => cluster::show(ctx, *compact),
            ClusterAction::Matrix => cluster::matrix(ctx),
            ClusterAction::Crosscheck => cluster::crosscheck(ctx),
            ClusterAction::Event {
                limit,
                event,
                node_id,
                all,
            } => cluster::event(ctx, *limit, event.as_deref(), *node_id, *all),
            ClusterAction::Cleanup {
                keep_history,
                node_id,
            } => cluster::cleanup(ctx, *keep_history, *node_id),
        },
        Object::Service { action } => match action {
            ServiceAction::Status => service::status(ctx),
            ServiceAction::Pause => service::pause(ctx, true),
            ServiceAction::Unpause => service::pause(ctx, false),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        parse_from(std::iter::once("repmgr").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn repmgr_style_command_lines_parse() {
        let c = parse(&[
            "-f",
            "/etc/repmgr.conf",
            "standby",
            "clone",
            "-h",
            "db1",
            "-p",
            "5433",
            "-U",
            "repmgr",
            "-d",
            "repmgr",
            "-D",
            "/data",
            "--upstream-node-id",
            "1",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(c.global.host.as_deref(), Some("db1"));
        assert_eq!(c.global.port, Some(5433));
        assert_eq!(c.global.pgdata, Some(PathBuf::from("/data")));
        assert!(c.global.dry_run);
        match c.object {
            Object::Standby {
                action: StandbyAction::Clone(a),
            } => assert_eq!(a.upstream_node_id, Some(1)),
            other => panic!("{other:?}"),
        }
        // Global options before or after the command.
        let c = parse(&["cluster", "show", "--csv", "-d", "host=x"]).unwrap();
        assert_eq!(c.global.format(), Format::Csv);
        let c = parse(&["--format", "json", "node", "check", "--role", "--nagios"]).unwrap();
        assert_eq!(c.global.format(), Format::Json);
        match c.object {
            Object::Node {
                action: NodeAction::Check(a),
            } => assert!(a.role && a.nagios),
            other => panic!("{other:?}"),
        }
        let c = parse(&["master", "register", "-F"]).unwrap();
        assert!(c.global.force);
        assert!(matches!(
            c.object,
            Object::Primary {
                action: PrimaryAction::Register
            }
        ));
        let c = parse(&[
            "standby",
            "switchover",
            "--siblings-follow",
            "--force-rewind",
            "--always-promote",
        ])
        .unwrap();
        match c.object {
            Object::Standby {
                action: StandbyAction::Switchover(a),
            } => {
                assert!(a.siblings_follow && a.force_rewind && a.always_promote)
            }
            other => panic!("{other:?}"),
        }
        let c = parse(&["standby", "promote", "--allow-slot-loss"]).unwrap();
        match c.object {
            Object::Standby {
                action: StandbyAction::Promote(a),
            } => assert!(a.allow_slot_loss && !a.allow_data_loss),
            other => panic!("{other:?}"),
        }
        let c = parse(&["node", "service", "--action", "stop", "--checkpoint"]).unwrap();
        assert!(matches!(
            c.object,
            Object::Node {
                action: NodeAction::Service {
                    action: node::ServiceAction::Stop,
                    checkpoint: true,
                    ..
                }
            }
        ));
        let c = parse(&[
            "cluster",
            "event",
            "--limit",
            "5",
            "--event",
            "standby_promote",
        ])
        .unwrap();
        assert!(matches!(
            c.object,
            Object::Cluster {
                action: ClusterAction::Event { limit: 5, .. }
            }
        ));
    }

    #[test]
    fn bad_command_lines_are_refused() {
        for args in [
            &["cluster"][..],
            &["cluster", "explode"],
            &["node", "service"],
            &["node", "service", "--action", "dance"],
            &["-p", "notaport", "cluster", "show"],
            &["--format", "yaml", "cluster", "show"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }
}
