//! What the HTTP health endpoints answer and what the metrics say, decided from the view of
//! the node that its monitoring worker last published.
//!
//! Load balancers (HAProxy's `option httpchk`) ask `/primary`, `/replica`, `/read-only` and
//! `/health`; people and scripts ask `/status`; Prometheus scrapes `/metrics`. The listener in
//! the extension only moves bytes: it hands each request's head to [`parse`], the parsed
//! request and the latest [`View`] to [`respond`], and writes what [`Response::encode`]
//! returns. No sockets, threads or clocks here: the caller passes the time, so every answer is
//! a plain function of its inputs and is tested as one.

use std::fmt::Write as _;
use std::time::Duration;

use crate::lease::Lease;
use crate::lsn::Lsn;
use crate::rejoin::Status;

/// The longest request head accepted (request line and headers); longer ones get 431.
pub const MAX_HEAD: usize = 8192;

/// This node's role as the worker last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Standby,
    Witness,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Witness => "witness",
        }
    }
}

/// One standby attached to this primary.
#[derive(Debug, Clone, PartialEq)]
pub struct StandbyLag {
    pub node_id: Option<i32>,
    pub node_name: String,
    /// `pg_stat_replication.state` (`streaming`, `catchup`, ...).
    pub state: String,
    /// WAL the primary wrote that the standby has not flushed.
    pub lag_bytes: Option<i64>,
    pub lag_seconds: Option<f64>,
    /// A member of the synchronous quorum now (`sync_state` `sync` or `quorum`).
    pub synchronous: bool,
}

/// A logical replication slot and what a failover does to it: on a primary `failover` (its
/// standbys keep copies, PostgreSQL 17+) or `lost`; on a standby, its copy `ready`,
/// `not_yet_usable` or `invalidated`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalSlot {
    pub slot: String,
    pub state: &'static str,
}

/// Buckets of the worker loop duration histogram, in seconds.
pub const LOOP_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// How long each pass of the worker's loop took (the work, not the wait).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket of [`LOOP_BUCKETS`], not cumulative; the last counts the rest.
    pub counts: [u64; LOOP_BUCKETS.len() + 1],
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LOOP_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LOOP_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += s;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What the monitoring worker publishes for the endpoints. The database facts (role, LSNs,
/// lag) are refreshed every monitoring round; the failover facts (term, lease, pause) at every
/// pass of the worker's loop.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub node_id: i32,
    pub node_name: String,
    pub role: Role,
    pub timeline: Option<i32>,
    pub current_lsn: Option<Lsn>,
    pub receive_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub upstream_node_id: Option<i32>,
    pub upstream_node_name: Option<String>,
    /// The WAL receiver's status (`streaming`, ...), on a standby.
    pub wal_receiver: Option<String>,
    /// What a standby has not yet replayed of what its upstream has sent, in bytes.
    pub lag_bytes: Option<i64>,
    /// How far a standby's replay is behind, in seconds (0 when caught up).
    pub lag_seconds: Option<f64>,
    /// Seconds since this standby or witness last reached its upstream.
    pub upstream_last_seen: Option<i64>,
    /// On a primary: its attached standbys.
    pub standbys: Vec<StandbyLag>,
    /// On a primary: `repmgr.synchronous_standbys`, the standbys each commit waits for.
    pub synchronous_standbys: u32,
    /// Its logical slots (a primary), or its copies of the primary's failover slots (a
    /// standby).
    pub logical_slots: Vec<LogicalSlot>,
    pub term: u64,
    pub paused: bool,
    /// The primary's lease as the fence sees it, to decide "fenced" at the time of a request.
    pub lease: Option<Lease>,
    pub armed: bool,
    pub fence: Duration,
    pub failovers_total: u64,
    pub fencings_total: u64,
    /// Where the automatic rejoin stands, when this node needs one: its state word
    /// (`rejoin::Status::STATES`) and what it says.
    pub rejoin: Option<(&'static str, String)>,
    pub loop_duration: Histogram,
    /// When the worker published this view (the caller's clock).
    pub published_at: Duration,
    /// Older than this, the view says nothing about the node: the worker is stuck or gone.
    pub stale_after: Duration,
}

impl View {
    /// Whether the primary refuses commits at `now`: the same rule the fence applies.
    pub fn fenced(&self, now: Duration) -> bool {
        self.armed && self.lease.is_some_and(|l| !l.may_commit(now, self.fence))
    }

    pub fn age(&self, now: Duration) -> Duration {
        now.saturating_sub(self.published_at)
    }

    pub fn fresh(&self, now: Duration) -> bool {
        self.age(now) <= self.stale_after
    }

    fn streaming(&self) -> bool {
        self.role == Role::Standby && self.wal_receiver.as_deref() == Some("streaming")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub path: String,
    /// Query parameters, percent-decoded, in order.
    pub query: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The head has not ended yet: read more (within [`MAX_HEAD`]).
    Incomplete,
    Complete(Request),
    /// Not a request we answer; reply with this status and close.
    Invalid(u16, &'static str),
}

/// Parses the head of an HTTP/1.x request from the bytes read so far.
pub fn parse(buf: &[u8]) -> Parsed {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"));
    let Some(end) = end else {
        if buf.len() >= MAX_HEAD {
            return Parsed::Invalid(431, "the request head is longer than 8192 bytes");
        }
        // A request line that is already wrong need not be waited for.
        if let Some(line_end) = buf.iter().position(|b| *b == b'\n')
            && let Err(why) = request_line(&buf[..line_end])
        {
            return Parsed::Invalid(400, why);
        }
        return Parsed::Incomplete;
    };
    if end > MAX_HEAD {
        return Parsed::Invalid(431, "the request head is longer than 8192 bytes");
    }
    let line_end = buf.iter().position(|b| *b == b'\n').unwrap_or(end);
    match request_line(&buf[..line_end]) {
        Ok(req) => Parsed::Complete(req),
        Err(why) => Parsed::Invalid(400, why),
    }
}

fn request_line(line: &[u8]) -> Result<Request, &'static str> {
    let line = std::str::from_utf8(line).map_err(|_| "the request line is not text")?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the request line is not \"METHOD /path HTTP/1.1\"");
    };
    if !version.starts_with("HTTP/1.") {
        return Err("only HTTP/1.x is served");
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("the method is not a token");
    }
    if !target.starts_with('/') {
        return Err("the target is not a path");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Ok(Request {
        method: match method {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            other => Method::Other(other.to_string()),
        },
        path: percent_decode(path),
        query,
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `?lag=` limit: bytes (`16MB`, `1024`, PostgreSQL's units, 1024-based) or time (`10s`,
/// `500ms`, `2min`, `1h`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LagLimit {
    Bytes(u64),
    Seconds(f64),
}

pub fn parse_lag(s: &str) -> Result<LagLimit, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("lag \"{s}\" does not start with a number"))?;
    let bytes = |m: f64| Ok(LagLimit::Bytes((n * m) as u64));
    match unit.trim() {
        "" | "B" => bytes(1.0),
        "kB" | "KB" => bytes(1024.0),
        "MB" => bytes(1024.0 * 1024.0),
        "GB" => bytes(1024.0 * 1024.0 * 1024.0),
        "TB" => bytes(1024.0 * 1024.0 * 1024.0 * 1024.0),
        "ms" => Ok(LagLimit::Seconds(n / 1000.0)),
        "s" => Ok(LagLimit::Seconds(n)),
        "min" => Ok(LagLimit::Seconds(n * 60.0)),
        "h" => Ok(LagLimit::Seconds(n * 3600.0)),
        other => Err(format!(
            "lag unit \"{other}\" is not one of B, kB, MB, GB, TB, ms, s, min, h"
        )),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    fn json(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// The bytes to send; a HEAD request gets the same head without the body.
    pub fn encode(&self, head_only: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            _ => "Service Unavailable",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// A refusal of a request that could not be parsed or took too long.
pub fn error(status: u16, why: &str) -> Response {
    Response::json(status, format!("{{\"error\":{}}}\n", json_str(why)))
}

/// The answer to `req`, given the latest published view (if any) and the time now.
pub fn respond(req: &Request, view: Option<&View>, now: Duration) -> Response {
    if let Method::Other(m) = &req.method {
        return error(405, &format!("method {m} is not served; use GET or HEAD"));
    }
    let path = req.path.trim_end_matches('/');
    let known = [
        "/primary",
        "/replica",
        "/read-only",
        "/health",
        "/status",
        "/metrics",
    ];
    if !known.contains(&path) {
        return error(
            404,
            &format!("no endpoint {}; try {}", req.path, known.join(", ")),
        );
    }
    let Some(v) = view else {
        return error(
            503,
            "the monitoring worker has not published this node's state yet",
        );
    };
    if path == "/metrics" {
        return Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics(v, now),
        };
    }
    let fresh = v.fresh(now);
    let ok = match path {
        "/status" => true,
        "/health" => fresh,
        "/primary" => fresh && v.role == Role::Primary && !v.fenced(now),
        "/read-only" => fresh && v.role != Role::Witness,
        _ => {
            let limit = match req.query.iter().find(|(k, _)| k == "lag") {
                None => None,
                Some((_, s)) => match parse_lag(s) {
                    Ok(l) => Some(l),
                    Err(why) => return error(400, &why),
                },
            };
            fresh && v.streaming() && within(v, limit)
        }
    };
    Response::json(if ok { 200 } else { 503 }, status_json(v, now))
}

fn within(v: &View, limit: Option<LagLimit>) -> bool {
    match limit {
        None => true,
        Some(LagLimit::Bytes(max)) => v.lag_bytes.is_some_and(|b| b.max(0) as u64 <= max),
        Some(LagLimit::Seconds(max)) => v.lag_seconds.is_some_and(|s| s <= max),
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("null".to_string(), |x| x.to_string())
}

fn json_opt_str(v: Option<&str>) -> String {
    v.map_or("null".to_string(), json_str)
}

fn json_lsn(v: Option<Lsn>) -> String {
    v.map_or("null".to_string(), |l| json_str(&l.to_string()))
}

/// `/status` (and the body of every health answer): the node as its worker sees it.
pub fn status_json(v: &View, now: Duration) -> String {
    let standbys: Vec<String> = v
        .standbys
        .iter()
        .map(|s| {
            format!(
                "{{\"node_id\":{},\"node_name\":{},\"state\":{},\"lag_bytes\":{},\"lag_seconds\":{}}}",
                json_opt(s.node_id),
                json_str(&s.node_name),
                json_str(&s.state),
                json_opt(s.lag_bytes),
                json_opt(s.lag_seconds)
            )
        })
        .collect();
    let slots: Vec<String> = v
        .logical_slots
        .iter()
        .map(|s| {
            format!(
                "{{\"slot\":{},\"state\":{}}}",
                json_str(&s.slot),
                json_str(s.state)
            )
        })
        .collect();
    format!(
        "{{\"node_id\":{},\"node_name\":{},\"role\":{},\"fenced\":{},\"paused\":{},\"term\":{},\"timeline\":{},\
\"current_lsn\":{},\"receive_lsn\":{},\"replay_lsn\":{},\"upstream_node_id\":{},\"upstream_node_name\":{},\
\"wal_receiver\":{},\"lag_bytes\":{},\"lag_seconds\":{},\"upstream_last_seen\":{},\"standbys\":[{}],\
\"logical_slots\":[{}],\"rejoin_state\":{},\"rejoin_detail\":{},\"state_age_seconds\":{:.3},\"stale\":{}}}\n",
        v.node_id,
        json_str(&v.node_name),
        json_str(v.role.as_str()),
        v.fenced(now),
        v.paused,
        v.term,
        json_opt(v.timeline),
        json_lsn(v.current_lsn),
        json_lsn(v.receive_lsn),
        json_lsn(v.replay_lsn),
        json_opt(v.upstream_node_id),
        json_opt_str(v.upstream_node_name.as_deref()),
        json_opt_str(v.wal_receiver.as_deref()),
        json_opt(v.lag_bytes),
        json_opt(v.lag_seconds),
        json_opt(v.upstream_last_seen),
        standbys.join(","),
        slots.join(","),
        json_opt_str(v.rejoin.as_ref().map(|r| r.0)),
        json_opt_str(v.rejoin.as_ref().map(|r| r.1.as_str())),
        v.age(now).as_secs_f64(),
        !v.fresh(now),
    )
}

/// Prometheus label values escape backslash, quote and newline.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One per-standby metric: its value for a standby, if known.
type PerStandby = dyn Fn(&StandbyLag) -> Option<f64>;

struct Metrics(String);

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, "gauge", help);
        self.sample(name, "", value);
    }
}

fn flag(b: bool) -> u8 {
    u8::from(b)
}

/// `/metrics`, in the Prometheus text exposition format (version 0.0.4).
pub fn metrics(v: &View, now: Duration) -> String {
    let mut m = Metrics(String::new());
    m.family(
        "repmgr_node_info",
        "gauge",
        "This node's identity (always 1).",
    );
    m.sample(
        "repmgr_node_info",
        &format!(
            "node_id=\"{}\",node_name=\"{}\"",
            v.node_id,
            label(&v.node_name)
        ),
        1,
    );
    m.family(
        "repmgr_role",
        "gauge",
        "1 for the role this node runs in, 0 for the others.",
    );
    for r in [Role::Primary, Role::Standby, Role::Witness] {
        m.sample(
            "repmgr_role",
            &format!("role=\"{}\"", r.as_str()),
            flag(v.role == r),
        );
    }
    m.gauge(
        "repmgr_fenced",
        "1 while this primary refuses commits for lack of its lease.",
        flag(v.fenced(now)),
    );
    m.family(
        "repmgr_rejoin",
        "gauge",
        "1 for the state of this node's automatic rejoin while it needs one (waiting, rejoining, held by a setting or a pause, failed until a reload), 0 for the others.",
    );
    for s in Status::STATES {
        m.sample(
            "repmgr_rejoin",
            &format!("state=\"{s}\""),
            flag(v.rejoin.as_ref().is_some_and(|r| r.0 == s)),
        );
    }
    m.gauge(
        "repmgr_paused",
        "1 while automatic actions are paused on this node.",
        flag(v.paused),
    );
    m.gauge("repmgr_term", "The failover term this node is in.", v.term);
    if let Some(t) = v.timeline {
        m.gauge("repmgr_timeline", "The timeline this node is on.", t);
    }
    let lsns = [
        (
            "repmgr_current_lsn_bytes",
            "The primary's current WAL position, in bytes.",
            v.current_lsn,
        ),
        (
            "repmgr_receive_lsn_bytes",
            "The last WAL position this standby received, in bytes.",
            v.receive_lsn,
        ),
        (
            "repmgr_replay_lsn_bytes",
            "The last WAL position this standby replayed, in bytes.",
            v.replay_lsn,
        ),
    ];
    for (name, help, lsn) in lsns {
        if let Some(l) = lsn {
            m.gauge(name, help, l.0);
        }
    }
    if v.role == Role::Standby {
        m.gauge(
            "repmgr_streaming",
            "1 while this standby's WAL receiver streams.",
            flag(v.streaming()),
        );
        if let Some(b) = v.lag_bytes {
            m.gauge(
                "repmgr_replication_lag_bytes",
                "WAL this standby has not replayed of what its upstream sent, in bytes.",
                b,
            );
        }
        if let Some(s) = v.lag_seconds {
            m.gauge(
                "repmgr_replication_lag_seconds",
                "How far this standby's replay is behind, in seconds.",
                s,
            );
        }
    }
    if let Some(s) = v.upstream_last_seen {
        m.gauge(
            "repmgr_upstream_last_seen_seconds",
            "Seconds since this node last reached its upstream.",
            s,
        );
    }
    if v.role == Role::Primary {
        let per = |s: &StandbyLag| {
            format!(
                "node_id=\"{}\",node_name=\"{}\"",
                s.node_id.map_or(String::new(), |i| i.to_string()),
                label(&s.node_name)
            )
        };
        let families: [(&str, &str, &PerStandby); 3] = [
            (
                "repmgr_standby_streaming",
                "1 for each standby attached to this primary that streams.",
                &|s| Some(f64::from(flag(s.state == "streaming"))),
            ),
            (
                "repmgr_standby_lag_bytes",
                "WAL written on this primary that the standby has not flushed, in bytes.",
                &|s| s.lag_bytes.map(|b| b as f64),
            ),
            (
                "repmgr_standby_lag_seconds",
                "The standby's replay lag as the primary measures it, in seconds.",
                &|s| s.lag_seconds,
            ),
        ];
        for (name, help, value) in families {
            m.family(name, "gauge", help);
            for s in &v.standbys {
                if let Some(x) = value(s) {
                    m.sample(name, &per(s), x);
                }
            }
        }
        m.gauge(
            "repmgr_synchronous_standbys",
            "repmgr.synchronous_standbys: standbys that must flush each commit before it is acknowledged (0: asynchronous).",
            v.synchronous_standbys,
        );
        m.gauge(
            "repmgr_synchronous_standbys_streaming",
            "Standbys that stream as members of the synchronous quorum now.",
            v.standbys
                .iter()
                .filter(|s| s.synchronous && s.state == "streaming")
                .count(),
        );
        if let Some(l) = &v.lease {
            let (confirming, voters) = l.confirming(now, v.fence);
            m.gauge(
                "repmgr_voters",
                "Voters in this primary's node list, itself included: an election needs a majority of them.",
                voters,
            );
            m.gauge(
                "repmgr_voters_confirming",
                "Other voters whose confirmation of this primary's lease still counts: those a failover could count on if this primary died now.",
                confirming,
            );
        }
    }
    m.family(
        "repmgr_logical_slot",
        "gauge",
        "1 for each logical slot of this primary, with what a failover does to it (failover: the standbys keep copies; lost), or each copy of a failover slot on this standby (ready, not_yet_usable, invalidated).",
    );
    for s in &v.logical_slots {
        m.sample(
            "repmgr_logical_slot",
            &format!("slot=\"{}\",state=\"{}\"", label(&s.slot), s.state),
            1,
        );
    }
    m.family(
        "repmgr_failovers_total",
        "counter",
        "Promotions of this node (automatic failover or repmgr.promote()) since the server started.",
    );
    m.sample("repmgr_failovers_total", "", v.failovers_total);
    m.family(
        "repmgr_fencings_total",
        "counter",
        "Times this primary was fenced since the server started.",
    );
    m.sample("repmgr_fencings_total", "", v.fencings_total);
    m.gauge(
        "repmgr_state_age_seconds",
        "Age of the state the monitoring worker last published.",
        format!("{:.3}", v.age(now).as_secs_f64()),
    );
    let h = "repmgr_worker_loop_duration_seconds";
    m.family(
        h,
        "histogram",
        "Time each pass of the monitoring worker's loop spent working (waits excluded).",
    );
    let mut cumulative = 0;
    for (i, b) in LOOP_BUCKETS.iter().enumerate() {
        cumulative += v.loop_duration.counts[i];
        m.sample(&format!("{h}_bucket"), &format!("le=\"{b}\""), cumulative);
    }
    m.sample(
        &format!("{h}_bucket"),
        "le=\"+Inf\"",
        v.loop_duration.count(),
    );
    m.sample(
        &format!("{h}_sum"),
        "",
        format!("{:.6}", v.loop_duration.sum),
    );
    m.sample(&format!("{h}_count"), "", v.loop_duration.count());
    m.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn view(role: Role) -> View {
        View {
            node_id: 2,
            node_name: "node \"two\"".into(),
            role,
            timeline: Some(3),
            current_lsn: None,
            receive_lsn: Some(Lsn(0x3000060)),
            replay_lsn: Some(Lsn(0x3000000)),
            upstream_node_id: Some(1),
            upstream_node_name: Some("node1".into()),
            wal_receiver: Some("streaming".into()),
            lag_bytes: Some(96),
            lag_seconds: Some(0.5),
            upstream_last_seen: Some(0),
            standbys: Vec::new(),
            synchronous_standbys: 1,
            logical_slots: vec![LogicalSlot {
                slot: "cdc".into(),
                state: "failover",
            }],
            term: 7,
            paused: false,
            lease: None,
            armed: false,
            fence: Duration::from_millis(1600),
            failovers_total: 1,
            fencings_total: 0,
            rejoin: None,
            loop_duration: Histogram::default(),
            published_at: 100 * SEC,
            stale_after: 5 * SEC,
        }
    }

    fn get(target: &str) -> Request {
        match parse(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()) {
            Parsed::Complete(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn status(target: &str, v: &View, now: Duration) -> u16 {
        respond(&get(target), Some(v), now).status
    }

    #[test]
    fn requests_parse_and_bad_ones_are_refused_early() {
        let r = get("/replica?lag=16MB&x=a%20b");
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/replica");
        assert_eq!(
            r.query,
            vec![("lag".into(), "16MB".into()), ("x".into(), "a b".into())]
        );
        assert_eq!(parse(b"GET /health HTTP/1.1\r\nHost:"), Parsed::Incomplete);
        assert_eq!(
            parse(b"HEAD /health HTTP/1.0\n\n"),
            Parsed::Complete(Request {
                method: Method::Head,
                path: "/health".into(),
                query: vec![]
            })
        );
        // Garbage is refused as soon as its first line ends, without waiting for more.
        assert!(matches!(
            parse(b"\x16\x03\x01\x02\x00\n"),
            Parsed::Invalid(400, _)
        ));
        assert!(matches!(
            parse(b"GET /x SPDY/3\r\n"),
            Parsed::Invalid(400, _)
        ));
        assert!(matches!(
            parse(b"get / HTTP/1.1\r\n\r\n"),
            Parsed::Invalid(400, _)
        ));
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert!(matches!(parse(huge.as_bytes()), Parsed::Invalid(431, _)));
        assert!(matches!(parse(b"%"), Parsed::Incomplete));
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%41%zz"), "A%zz");
    }

    #[test]
    fn lag_limits_take_postgres_units() {
        assert_eq!(parse_lag("16MB"), Ok(LagLimit::Bytes(16 << 20)));
        assert_eq!(parse_lag("1024"), Ok(LagLimit::Bytes(1024)));
        assert_eq!(parse_lag("10s"), Ok(LagLimit::Seconds(10.0)));
        assert_eq!(parse_lag("250ms"), Ok(LagLimit::Seconds(0.25)));
        assert_eq!(parse_lag("2min"), Ok(LagLimit::Seconds(120.0)));
        assert!(parse_lag("fast").unwrap_err().contains("number"));
        assert!(parse_lag("3 parsecs").unwrap_err().contains("not one of"));
    }

    #[test]
    fn a_streaming_standby_answers_replica_within_its_lag() {
        let v = view(Role::Standby);
        let now = 101 * SEC;
        assert_eq!(status("/replica", &v, now), 200);
        assert_eq!(status("/replica?lag=1kB", &v, now), 200);
        assert_eq!(status("/replica?lag=10", &v, now), 503);
        assert_eq!(status("/replica?lag=1s", &v, now), 200);
        assert_eq!(status("/replica?lag=100ms", &v, now), 503);
        assert_eq!(status("/replica?lag=soon", &v, now), 400);
        assert_eq!(status("/read-only", &v, now), 200);
        assert_eq!(status("/primary", &v, now), 503);
        assert_eq!(status("/health", &v, now), 200);
        let mut stopped = v.clone();
        stopped.wal_receiver = None;
        assert_eq!(status("/replica", &stopped, now), 503);
        assert_eq!(status("/read-only", &stopped, now), 200);
    }

    #[test]
    fn only_an_unfenced_primary_answers_primary() {
        let mut v = view(Role::Primary);
        v.wal_receiver = None;
        // Confirmed by both other voters when it was elected, at 100 s.
        let voters = crate::lease::Membership::new(1, [1, 2, 3]);
        v.lease = Some(Lease::new(
            2,
            1,
            2,
            &[voters],
            Some((100 * SEC, v.fence, &[1, 3])),
        ));
        v.armed = true;
        assert!(!v.fenced(101 * SEC));
        assert_eq!(status("/primary", &v, 101 * SEC), 200);
        // No confirmation for longer than repmgr.fence_timeout: fenced, still serving reads.
        v.published_at = 102 * SEC;
        assert!(v.fenced(102 * SEC));
        assert_eq!(status("/primary", &v, 102 * SEC), 503);
        assert_eq!(status("/read-only", &v, 102 * SEC), 200);
        // Without failover armed the fence never applies.
        v.armed = false;
        assert_eq!(status("/primary", &v, 102 * SEC), 200);
        assert_eq!(status("/replica", &v, 101 * SEC), 503);
        // A witness serves no reads.
        let w = view(Role::Witness);
        assert_eq!(status("/read-only", &w, 101 * SEC), 503);
        assert_eq!(status("/health", &w, 101 * SEC), 200);
    }

    #[test]
    fn a_stale_view_fails_every_check_but_status_says_why() {
        let v = view(Role::Standby);
        let late = 106 * SEC;
        for path in ["/replica", "/read-only", "/health"] {
            assert_eq!(status(path, &v, late), 503, "{path}");
        }
        let r = respond(&get("/status"), Some(&v), late);
        assert_eq!(r.status, 200);
        assert!(r.body.contains("\"stale\":true"), "{}", r.body);
        let none = respond(&get("/health"), None, late);
        assert_eq!(none.status, 503);
        assert!(none.body.contains("not published"), "{}", none.body);
    }

    #[test]
    fn methods_paths_and_head() {
        let v = view(Role::Standby);
        let now = 101 * SEC;
        let post = Request {
            method: Method::Other("POST".into()),
            path: "/primary".into(),
            query: vec![],
        };
        let r = respond(&post, Some(&v), now);
        assert_eq!(r.status, 405);
        let bytes = String::from_utf8(r.encode(false)).unwrap();
        assert!(bytes.contains("Allow: GET, HEAD\r\n"), "{bytes}");
        assert_eq!(status("/nope", &v, now), 404);
        assert_eq!(status("/health/", &v, now), 200);
        let r = respond(&get("/health"), Some(&v), now);
        let head = String::from_utf8(r.encode(true)).unwrap();
        let full = String::from_utf8(r.encode(false)).unwrap();
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        assert_eq!(full, format!("{head}{}", r.body));
        assert!(head.contains(&format!("Content-Length: {}\r\n", r.body.len())));
    }

    #[test]
    fn status_is_json_with_every_field() {
        let mut v = view(Role::Primary);
        v.standbys.push(StandbyLag {
            node_id: Some(3),
            node_name: "node3".into(),
            state: "streaming".into(),
            lag_bytes: Some(0),
            lag_seconds: None,
            synchronous: false,
        });
        let body = status_json(&v, 101 * SEC);
        for field in [
            "\"node_id\":2",
            "\"node_name\":\"node \\\"two\\\"\"",
            "\"role\":\"primary\"",
            "\"fenced\":false",
            "\"term\":7",
            "\"receive_lsn\":\"0/3000060\"",
            "\"current_lsn\":null",
            "\"standbys\":[{\"node_id\":3,\"node_name\":\"node3\",\"state\":\"streaming\",\"lag_bytes\":0,\"lag_seconds\":null}]",
            "\"logical_slots\":[{\"slot\":\"cdc\",\"state\":\"failover\"}]",
            "\"rejoin_state\":null",
            "\"stale\":false",
        ] {
            assert!(body.contains(field), "{field} in {body}");
        }
        v.rejoin = Some(("failed", "failed: \"why\"".into()));
        let body = status_json(&v, 101 * SEC);
        assert!(
            body.contains("\"rejoin_state\":\"failed\",\"rejoin_detail\":\"failed: \\\"why\\\"\""),
            "{body}"
        );
    }

    #[test]
    fn metrics_have_help_type_and_a_cumulative_histogram() {
        let mut v = view(Role::Primary);
        v.standbys.push(StandbyLag {
            node_id: Some(3),
            node_name: "node3".into(),
            state: "streaming".into(),
            lag_bytes: Some(128),
            lag_seconds: Some(0.25),
            synchronous: true,
        });
        v.loop_duration.observe(Duration::from_micros(300));
        v.loop_duration.observe(Duration::from_millis(30));
        v.loop_duration.observe(Duration::from_secs(9));
        let text = metrics(&v, 101 * SEC);
        for line in [
            "# TYPE repmgr_role gauge",
            "repmgr_role{role=\"primary\"} 1",
            "repmgr_role{role=\"standby\"} 0",
            "repmgr_node_info{node_id=\"2\",node_name=\"node \\\"two\\\"\"} 1",
            "repmgr_term 7",
            "repmgr_standby_lag_bytes{node_id=\"3\",node_name=\"node3\"} 128",
            "# TYPE repmgr_failovers_total counter",
            "repmgr_failovers_total 1",
            "repmgr_worker_loop_duration_seconds_bucket{le=\"0.001\"} 1",
            "repmgr_worker_loop_duration_seconds_bucket{le=\"0.05\"} 2",
            "repmgr_worker_loop_duration_seconds_bucket{le=\"5\"} 2",
            "repmgr_worker_loop_duration_seconds_bucket{le=\"+Inf\"} 3",
            "repmgr_worker_loop_duration_seconds_count 3",
            "repmgr_rejoin{state=\"waiting\"} 0",
            "repmgr_rejoin{state=\"failed\"} 0",
            "repmgr_synchronous_standbys 1",
            "repmgr_synchronous_standbys_streaming 1",
            "# TYPE repmgr_logical_slot gauge",
            "repmgr_logical_slot{slot=\"cdc\",state=\"failover\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // What a failover could count on: the voters confirming the lease now.
        assert!(!text.contains("repmgr_voters"), "no lease, no voter counts");
        v.lease = Some(crate::lease::Lease::new(
            7,
            1,
            2,
            &[crate::lease::Membership::new(1, [1, 2, 3])],
            Some((100 * SEC, v.fence, &[1])),
        ));
        let text = metrics(&v, 101 * SEC);
        assert!(text.lines().any(|l| l == "repmgr_voters 3"), "{text}");
        assert!(
            text.lines().any(|l| l == "repmgr_voters_confirming 1"),
            "{text}"
        );
        let text = metrics(&v, 102 * SEC);
        assert!(
            text.lines().any(|l| l == "repmgr_voters_confirming 0"),
            "{text}"
        );
        v.rejoin = Some(("rejoining", "rejoining: ...".into()));
        let text = metrics(&v, 101 * SEC);
        assert!(
            text.lines()
                .any(|l| l == "repmgr_rejoin{state=\"rejoining\"} 1")
        );
        assert!(text.lines().any(|l| l == "repmgr_rejoin{state=\"held\"} 0"));
        // Every sample belongs to a family declared with HELP and TYPE before it.
        let mut declared = Vec::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(
                    declared.iter().any(|d| name == d
                        || name
                            .strip_prefix(d.as_str())
                            .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))),
                    "{name} undeclared"
                );
            }
        }
    }
}
