//! What every command starts from: the options, repmgr.conf, and the local node.
//!
//! The local node is reached through `-d/-h/-p/-U` when given, else the `conninfo` of
//! repmgr.conf. Its identity (node id and name) is what its server's `repmgr.*` settings say;
//! when repmgr.conf says something else, that is an error naming both values, since acting as
//! the wrong node is how clusters get broken.

use std::path::PathBuf;

use crate::Global;
use crate::config::Config;
use crate::conn::{Session, Target};
use crate::exit::{Failure, Result};
use crate::output::Format;

pub struct Ctx {
    pub g: Global,
    pub cfg: Config,
}

/// Who the local node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub node_id: i32,
    pub node_name: String,
}

impl Ctx {
    pub fn new(g: Global) -> Result<Ctx> {
        let cfg = Config::load(g.config_file.as_deref())?;
        for w in &cfg.warnings {
            eprintln!("WARNING: {w}");
        }
        if cfg.log_level == "DEBUG" {
            crate::conn::set_verbose(true);
        }
        Ok(Ctx { g, cfg })
    }

    pub fn format(&self) -> Format {
        self.g.format()
    }

    /// `-d/-h/-p/-U`.
    pub fn target(&self) -> Target {
        Target {
            dbname: self.g.dbname.clone(),
            host: self.g.host.clone(),
            port: self.g.port,
            user: self.g.username.clone(),
        }
    }

    /// The local node's connection string.
    pub fn local_conninfo(&self) -> Result<String> {
        let t = self.target();
        if t.is_given() {
            return t.conninfo();
        }
        match &self.cfg.conninfo {
            Some(c) => Ok(c.clone()),
            None => t.conninfo(),
        }
    }

    pub fn connect_local(&self) -> Result<Session> {
        Session::connect(&self.local_conninfo()?, "the local node")
    }

    /// Connects to the local node and reads who it is.
    pub fn local_node(&self) -> Result<(Session, Identity)> {
        let mut s = self.connect_local()?;
        let id = self.identity(&mut s)?;
        s.label = format!("node {} (\"{}\")", id.node_id, id.node_name);
        Ok((s, id))
    }

    /// The node's identity from its server's settings, checked against repmgr.conf.
    pub fn identity(&self, s: &mut Session) -> Result<Identity> {
        let r = s.query(
            "SELECT pg_catalog.current_setting('repmgr.node_id', true), pg_catalog.current_setting('repmgr.node_name', true)",
            &[],
        )?;
        let server_id: Option<i32> = r.get(0, 0).and_then(|v| v.parse().ok()).filter(|v| *v > 0);
        let server_name = r.get(0, 1).map(str::to_string).filter(|v| !v.is_empty());
        let file = self
            .cfg
            .path
            .as_ref()
            .map_or("repmgr.conf".to_string(), |p| p.display().to_string());
        if let (Some(a), Some(b)) = (self.cfg.node_id, server_id)
            && a != b
        {
            return Err(Failure::config(format!(
                "{file} says node_id = {a} but the server at {} has repmgr.node_id = {b}",
                repmgr_core::conninfo::mask(&s.conninfo)
            ))
            .hint("Point -f at this node's repmgr.conf, or -d/-h/-p at this node's server."));
        }
        if let (Some(a), Some(b)) = (&self.cfg.node_name, &server_name)
            && a != b
        {
            return Err(Failure::config(format!(
                "{file} says node_name = '{a}' but the server at {} has repmgr.node_name = '{b}'",
                repmgr_core::conninfo::mask(&s.conninfo)
            ))
            .hint(
                "Make them agree: the server's settings are what the cluster knows this node by.",
            ));
        }
        let Some(node_id) = server_id.or(self.cfg.node_id) else {
            return Err(Failure::config(format!(
                "the server at {} has no repmgr.node_id",
                repmgr_core::conninfo::mask(&s.conninfo)
            ))
            .hint("Set repmgr.node_id (and shared_preload_libraries = 'repmgr') in its postgresql.conf and restart it."));
        };
        Ok(Identity {
            node_id,
            node_name: server_name
                .or_else(|| self.cfg.node_name.clone())
                .unwrap_or_else(|| format!("node{node_id}")),
        })
    }

    /// The local data directory: `-D`, else data_directory in repmgr.conf.
    pub fn data_directory(&self) -> Option<PathBuf> {
        self.g
            .pgdata
            .clone()
            .or_else(|| self.cfg.data_directory.clone())
    }

    /// [`Ctx::data_directory`], or a failure saying how to give it.
    pub fn require_data_directory(&self, what: &str) -> Result<PathBuf> {
        self.data_directory().ok_or_else(|| {
            Failure::config(format!("{what} needs the local data directory"))
                .hint("Give it with -D/--pgdata, or data_directory in repmgr.conf.")
        })
    }
}
