//! libpq connection strings: reading them, rewriting single keys, and hiding passwords.
//!
//! Both libpq forms are understood: `key=value` lists (values optionally single-quoted, with
//! backslash escapes) and `postgresql://` URIs. The authoritative validity check is libpq's own
//! parser (see the `repmgr-pq` crate); this module exists so that masking works everywhere,
//! including on strings libpq would reject, because a password must never leak through an
//! error message that quotes a malformed connection string.

use std::fmt;

/// Keys whose values are secrets.
const SECRET_KEYS: [&str; 2] = ["password", "sslpassword"];

/// What replaces a secret in any string shown to a human.
pub const MASK: &str = "********";

fn is_secret(key: &str) -> bool {
    SECRET_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key))
}

fn is_uri(s: &str) -> bool {
    let t = s.trim_start();
    t.starts_with("postgresql://") || t.starts_with("postgres://")
}

/// A parse failure, positioned in the input. Its text never contains the input itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub offset: usize,
    pub reason: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at character {}", self.reason, self.offset + 1)
    }
}

impl std::error::Error for ParseError {}

/// One `key=value` item as it appears in the source text.
struct Item {
    key: String,
    value: String,
    /// Byte range of the raw value (including quotes) in the source.
    value_span: (usize, usize),
}

/// Splits a `key=value` string. With `strict`, malformed input is an error; otherwise the
/// scanner recovers (an unterminated quote runs to the end) so masking never gives up.
fn scan_pairs(s: &str, strict: bool) -> Result<Vec<Item>, ParseError> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut items = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            return Ok(items);
        }
        let key_start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = s[key_start..i].to_string();
        skip_ws(&mut i);
        if i >= b.len() || b[i] != b'=' {
            if strict {
                return Err(ParseError {
                    offset: key_start,
                    reason: "missing \"=\" after a key",
                });
            }
            continue;
        }
        i += 1;
        skip_ws(&mut i);
        let value_start = i;
        let mut value = String::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            let mut closed = false;
            while i < b.len() {
                match b[i] {
                    b'\\' if i + 1 < b.len() => {
                        value.push(s[i + 1..].chars().next().unwrap_or_default());
                        i += 1 + s[i + 1..].chars().next().map_or(1, char::len_utf8);
                    }
                    b'\'' => {
                        i += 1;
                        closed = true;
                        break;
                    }
                    _ => {
                        let c = s[i..].chars().next().unwrap_or_default();
                        value.push(c);
                        i += c.len_utf8();
                    }
                }
            }
            if !closed && strict {
                return Err(ParseError {
                    offset: value_start,
                    reason: "unterminated quoted string",
                });
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                let c = s[i..].chars().next().unwrap_or_default();
                value.push(c);
                i += c.len_utf8();
            }
        }
        if key.is_empty() && strict {
            return Err(ParseError {
                offset: key_start,
                reason: "empty key",
            });
        }
        items.push(Item {
            key,
            value,
            value_span: (value_start, i),
        });
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 3 <= b.len()
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The parts of a URI that matter for masking and for key lookup.
struct UriParts<'a> {
    /// `user[:password]` text, with its byte offset.
    userinfo: Option<(&'a str, usize)>,
    hosts: &'a str,
    dbname: Option<&'a str>,
    /// Query text and its byte offset.
    query: Option<(&'a str, usize)>,
}

fn split_uri(s: &str) -> UriParts<'_> {
    let scheme_end = s.find("://").map_or(0, |p| p + 3);
    let rest = &s[scheme_end..];
    let auth_len = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..auth_len];
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (Some((&authority[..at], scheme_end)), &authority[at + 1..]),
        None => (None, authority),
    };
    let after = &rest[auth_len..];
    let (path, query) = match after.find('?') {
        Some(q) => (
            &after[..q],
            Some((&after[q + 1..], scheme_end + auth_len + q + 1)),
        ),
        None => (after, None),
    };
    let dbname = path.strip_prefix('/').filter(|d| !d.is_empty());
    UriParts {
        userinfo,
        hosts,
        dbname,
        query,
    }
}

/// Checks the values libpq only checks when it connects (its parser takes anything): whole
/// numbers where it wants them, ports in range, and its keyword choices. Returns what is
/// wrong, naming the keyword.
pub fn check_values(s: &str) -> Result<(), String> {
    let pairs = parse(s).map_err(|e| e.to_string())?;
    for (k, v) in &pairs {
        let choices: &[&str] = match k.as_str() {
            "sslmode" => &[
                "disable",
                "allow",
                "prefer",
                "require",
                "verify-ca",
                "verify-full",
            ],
            "gssencmode" | "channel_binding" => &["disable", "prefer", "require"],
            "target_session_attrs" => &[
                "any",
                "read-write",
                "read-only",
                "primary",
                "standby",
                "prefer-standby",
            ],
            "load_balance_hosts" => &["disable", "random"],
            _ => &[],
        };
        if !choices.is_empty() && !choices.contains(&v.as_str()) {
            return Err(format!(
                "invalid value \"{v}\" for {k}: it must be one of {}",
                choices.join(", ")
            ));
        }
        let integer = matches!(
            k.as_str(),
            "connect_timeout"
                | "keepalives"
                | "keepalives_idle"
                | "keepalives_interval"
                | "keepalives_count"
                | "tcp_user_timeout"
        );
        if integer && v.trim().parse::<i64>().is_err() {
            return Err(format!(
                "invalid value \"{v}\" for {k}: it must be a whole number"
            ));
        }
        if k == "port" {
            for p in v.split(',') {
                if !p.trim().is_empty() && !p.trim().parse::<u16>().is_ok_and(|p| p > 0) {
                    return Err(format!(
                        "invalid port \"{p}\": it must be a number from 1 to 65535"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Parses a connection string into ordered `(key, value)` pairs, in either form.
pub fn parse(s: &str) -> Result<Vec<(String, String)>, ParseError> {
    if !is_uri(s) {
        return Ok(scan_pairs(s, true)?
            .into_iter()
            .map(|it| (it.key, it.value))
            .collect());
    }
    let p = split_uri(s.trim());
    let mut out = Vec::new();
    if let Some((ui, _)) = p.userinfo {
        let (user, pass) = match ui.split_once(':') {
            Some((u, pw)) => (u, Some(pw)),
            None => (ui, None),
        };
        if !user.is_empty() {
            out.push(("user".into(), percent_decode(user)));
        }
        if let Some(pw) = pass {
            out.push(("password".into(), percent_decode(pw)));
        }
    }
    if !p.hosts.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for h in p.hosts.split(',') {
            // `[v6]:port` or `host:port`
            let (host, port) = if let Some(end) = h.strip_prefix('[').and_then(|r| r.find(']')) {
                (&h[1..end + 1], h[end + 2..].strip_prefix(':').unwrap_or(""))
            } else {
                match h.rsplit_once(':') {
                    Some((hh, pp)) => (hh, pp),
                    None => (h, ""),
                }
            };
            hosts.push(percent_decode(host));
            ports.push(port.to_string());
        }
        out.push(("host".into(), hosts.join(",")));
        if ports.iter().any(|p| !p.is_empty()) {
            out.push(("port".into(), ports.join(",")));
        }
    }
    if let Some(db) = p.dbname {
        out.push(("dbname".into(), percent_decode(db)));
    }
    if let Some((q, off)) = p.query {
        for kv in q.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some((k, v)) => out.push((percent_decode(k), percent_decode(v))),
                None => {
                    return Err(ParseError {
                        offset: off,
                        reason: "URI parameter without \"=\"",
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The value of `key` (last occurrence wins, as in libpq), if present and parseable.
pub fn get(s: &str, key: &str) -> Option<String> {
    parse(s)
        .ok()?
        .into_iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// Quotes a value for a `key=value` string when it needs it.
pub fn quote_value(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Renders pairs as a `key=value` string.
pub fn render(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", quote_value(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Returns `s` (in `key=value` form) with `key` set to `value`, replacing earlier occurrences.
pub fn with(s: &str, key: &str, value: &str) -> Result<String, ParseError> {
    let mut pairs: Vec<(String, String)> =
        parse(s)?.into_iter().filter(|(k, _)| k != key).collect();
    pairs.push((key.to_string(), value.to_string()));
    Ok(render(&pairs))
}

/// Returns `s` without the given keys, in `key=value` form.
pub fn without(s: &str, keys: &[&str]) -> Result<String, ParseError> {
    let pairs: Vec<(String, String)> = parse(s)?
        .into_iter()
        .filter(|(k, _)| !keys.contains(&k.as_str()))
        .collect();
    Ok(render(&pairs))
}

/// The `primary_conninfo` a standby named `application_name` uses to stream from the node
/// reachable through `upstream` as `user`: no database, no options, the standby's name.
pub fn replication(
    upstream: &str,
    user: &str,
    application_name: &str,
) -> Result<String, ParseError> {
    let base = without(
        upstream,
        &[
            "dbname",
            "replication",
            "application_name",
            "fallback_application_name",
            "options",
        ],
    )?;
    let base = if user.is_empty() {
        base
    } else {
        with(&base, "user", user)?
    };
    with(&base, "application_name", application_name)
}

/// Replaces every password in `s` with [`MASK`], keeping everything else as written.
///
/// Never fails: malformed input is masked as well as it can be scanned, and an unterminated
/// quoted password hides the rest of the string.
pub fn mask(s: &str) -> String {
    if is_uri(s) {
        mask_uri(s)
    } else {
        mask_pairs(s)
    }
}

/// Masks passwords wherever they appear in free text, such as a message quoting a connection
/// string or a URI among other words.
pub fn mask_in_text(text: &str) -> String {
    let masked = mask_pairs(text);
    let mut out = String::with_capacity(masked.len());
    let mut rest = masked.as_str();
    while let Some(p) = rest.find("://") {
        let start = rest[..p]
            .rfind(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .map_or(0, |i| i + 1);
        let end = rest[p..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .map_or(rest.len(), |i| p + i);
        out.push_str(&rest[..start]);
        out.push_str(&mask_uri(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn mask_pairs(s: &str) -> String {
    let items = scan_pairs(s, false).unwrap_or_default();
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    for it in items.iter().filter(|it| is_secret(&it.key)) {
        out.push_str(&s[pos..it.value_span.0]);
        out.push_str(MASK);
        pos = it.value_span.1;
    }
    out.push_str(&s[pos..]);
    out
}

fn mask_uri(s: &str) -> String {
    let p = split_uri(s);
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    if let Some((ui, off)) = p.userinfo
        && let Some(colon) = ui.find(':')
    {
        cuts.push((off + colon + 1, off + ui.len()));
    }
    if let Some((q, off)) = p.query {
        let mut start = off;
        for kv in q.split('&') {
            if let Some((k, _)) = kv.split_once('=')
                && is_secret(&percent_decode(k))
            {
                cuts.push((start + k.len() + 1, start + kv.len()));
            }
            start += kv.len() + 1;
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    for (a, b) in cuts {
        out.push_str(&s[pos..a]);
        out.push_str(MASK);
        pos = b;
    }
    out.push_str(&s[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_libpq_only_checks_at_connect_time_are_checked() {
        assert!(check_values("host=a port=5432,5433 connect_timeout=2 sslmode=require").is_ok());
        assert_eq!(
            check_values("host=a connect_timeout=x").unwrap_err(),
            "invalid value \"x\" for connect_timeout: it must be a whole number"
        );
        assert!(
            check_values("host=a port=70000")
                .unwrap_err()
                .contains("invalid port")
        );
        assert!(
            check_values("host=a sslmode=yes")
                .unwrap_err()
                .contains("sslmode")
        );
        assert!(check_values("postgresql://h:5432/db?connect_timeout=3").is_ok());
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn parses_key_value_with_quotes_and_escapes() {
        let got = parse(r"host=db1  port = 5432 password='a b\'c' user=x\ y dbname=''").unwrap();
        assert_eq!(
            got,
            pairs(&[
                ("host", "db1"),
                ("port", "5432"),
                ("password", "a b'c"),
                ("user", "x y"),
                ("dbname", "")
            ])
        );
    }

    #[test]
    fn rejects_malformed_key_value() {
        assert_eq!(
            parse("host").unwrap_err().reason,
            "missing \"=\" after a key"
        );
        assert_eq!(
            parse("host='db").unwrap_err().reason,
            "unterminated quoted string"
        );
        assert!(
            parse("host = ").is_ok(),
            "an empty value at the end is allowed by libpq"
        );
    }

    #[test]
    fn parses_uris() {
        let got =
            parse("postgresql://u%40x:p%3Aw@h1:5432,h2/db?sslmode=require&password=zz").unwrap();
        assert_eq!(
            got,
            pairs(&[
                ("user", "u@x"),
                ("password", "p:w"),
                ("host", "h1,h2"),
                ("port", "5432,"),
                ("dbname", "db"),
                ("sslmode", "require"),
                ("password", "zz"),
            ])
        );
        assert_eq!(
            get("postgres://[::1]:6000/x", "host").as_deref(),
            Some("::1")
        );
        assert_eq!(
            get("postgres://[::1]:6000/x", "port").as_deref(),
            Some("6000")
        );
    }

    #[test]
    fn masks_every_password_form() {
        assert_eq!(
            mask("host=a password=secret user=u"),
            "host=a password=******** user=u"
        );
        assert_eq!(
            mask("password = 'se cret' host=a"),
            "password = ******** host=a"
        );
        assert_eq!(
            mask("PASSWORD=x sslpassword=y"),
            "PASSWORD=******** sslpassword=********"
        );
        assert_eq!(
            mask("host=a password='unterminated secret"),
            "host=a password=********"
        );
        assert_eq!(
            mask("postgresql://u:secret@h/db"),
            "postgresql://u:********@h/db"
        );
        assert_eq!(
            mask("postgresql://u@h/db?a=1&password=s&b=2"),
            "postgresql://u@h/db?a=1&password=********&b=2"
        );
        assert_eq!(mask("host=a user=b"), "host=a user=b");
        for s in [
            "password=s3cr3t",
            "x password=s3cr3t",
            "postgres://a:s3cr3t@b",
            "password='s3cr3t",
        ] {
            assert!(!mask(s).contains("s3cr3t"), "{s}");
        }
    }

    #[test]
    fn masks_inside_free_text() {
        assert_eq!(
            mask_in_text(
                "could not reach \"host=a password=s3 x\" via postgres://u:s3@h/db, giving up"
            ),
            "could not reach \"host=a password=******** x\" via postgres://u:********@h/db, giving up"
        );
        assert_eq!(mask_in_text("nothing secret here"), "nothing secret here");
    }

    #[test]
    fn rewrites_keys_and_quotes_values() {
        assert_eq!(with("host=a port=1", "port", "2").unwrap(), "host=a port=2");
        assert_eq!(
            with("host=a", "application_name", "my node").unwrap(),
            "host=a application_name='my node'"
        );
        assert_eq!(
            without("host=a replication=1 dbname=x", &["replication", "dbname"]).unwrap(),
            "host=a"
        );
        assert_eq!(quote_value(r"it's\"), r"'it\'s\\'");
        let round = render(&pairs(&[("password", r"a 'b' \c"), ("host", "")]));
        assert_eq!(
            parse(&round).unwrap(),
            pairs(&[("password", r"a 'b' \c"), ("host", "")])
        );
    }

    #[test]
    fn replication_conninfo_for_a_standby() {
        assert_eq!(
            replication(
                "host=db1 port=5432 dbname=repmgr user=repmgr application_name=x options='-c a=b'",
                "repl",
                "node2"
            )
            .unwrap(),
            "host=db1 port=5432 user=repl application_name=node2"
        );
        assert_eq!(
            replication("postgresql://u@h:5/db", "", "n").unwrap(),
            "user=u host=h port=5 application_name=n"
        );
    }
}
