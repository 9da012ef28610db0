//! The `repmgr` command line: what must run outside a server, and views over the cluster.
//!
//! Commands follow repmgr 5.x: `repmgr [options] <object> <action>`, with the same option
//! letters and exit codes (see [`exit`]).

mod cluster;
mod conn;
mod exit;

use clap::{ArgAction, Parser};

#[derive(Parser, Debug)]
#[command(
    name = "repmgr",
    version,
    about = "Replication manager for PostgreSQL clusters",
    disable_help_flag = true,
    after_help = "Commands:\n  cluster show    list registered nodes with their live status\n\nExit codes: 0 success, 1 bad configuration or request, 6 connection failure, 25 problems found."
)]
struct Cli {
    /// Database name or connection string of a node to start from (default database: repmgr)
    #[arg(short = 'd', long = "dbname")]
    dbname: Option<String>,
    /// Host of the node to connect to
    #[arg(short = 'h', long)]
    host: Option<String>,
    /// Port of the node to connect to
    #[arg(short = 'p', long)]
    port: Option<u16>,
    /// User to connect as
    #[arg(short = 'U', long = "username")]
    username: Option<String>,
    /// Machine-readable CSV output
    #[arg(long)]
    csv: bool,
    /// Print help
    #[arg(short = '?', long, action = ArgAction::Help)]
    help: Option<bool>,
    /// Object: cluster
    object: String,
    /// Action: show
    action: String,
}

fn main() {
    let cli = Cli::parse();
    let target = conn::Target {
        dbname: cli.dbname,
        host: cli.host,
        port: cli.port,
        user: cli.username,
    };
    let code = match (cli.object.as_str(), cli.action.as_str()) {
        ("cluster", "show") => cluster::show(&target, cli.csv),
        (object, action) => {
            eprintln!(
                "ERROR: unknown command \"{object} {action}\"; this version knows: cluster show"
            );
            exit::ERR_BAD_CONFIG
        }
    };
    std::process::exit(code);
}
