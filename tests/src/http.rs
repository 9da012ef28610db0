//! A minimal HTTP/1.1 client for the health endpoints, and a checker of the Prometheus text
//! exposition format that parses `/metrics` the way a scraper would.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An answer: status code, headers (lower-cased names) and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// Sends `method path` to `127.0.0.1:port` and reads the whole answer (the server closes).
/// `None` when nothing answers within two seconds.
pub fn request(port: u16, method: &str, path: &str) -> Option<Answer> {
    let timeout = Duration::from_secs(2);
    let addr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: repmgr-tests\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    parse_answer(&raw)
}

pub fn get(port: u16, path: &str) -> Option<Answer> {
    request(port, "GET", path)
}

/// The status of `GET path`, 0 when nothing answered.
pub fn status(port: u16, path: &str) -> u16 {
    get(port, path).map_or(0, |a| a.status)
}

fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Answer {
        status,
        headers,
        body: body.to_string(),
    })
}

/// One sample of a scrape: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("label without =\" in {{{s}}}"))?;
        if !valid_name(name) || name.starts_with("__") {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated label value in {{{s}}}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?} in {{{s}}}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        out.push((name.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(out)
}

/// Parses and checks a scrape: every sample's family is declared by `# HELP` and `# TYPE`
/// lines first (each once), names and labels are well formed, values are numbers, histogram
/// buckets are cumulative and end with `+Inf` equal to `_count`, counters end in `_total`.
pub fn parse_metrics(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default().to_string();
            if helps.contains(&name) {
                return Err(at("second HELP".into()));
            }
            helps.push(name);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| at("TYPE without a type".into()))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at(format!("unknown type {kind}")));
            }
            if !helps.iter().any(|h| h == name) {
                return Err(at("TYPE before HELP".into()));
            }
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(at("second TYPE".into()));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(at("a counter's name must end in _total".into()));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value".into()))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .map_err(|_| at(format!("value {v:?} is not a number")))?,
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .ok_or_else(|| at("unclosed labels".into()))?;
                (name, parse_labels(inner).map_err(at)?)
            }
            None => (series, Vec::new()),
        };
        if !valid_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(at(format!("{name} has no TYPE line before it")));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let buckets: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
            .collect();
        let mut last = 0.0;
        for b in &buckets {
            if b.value < last {
                return Err(format!("{family}: buckets are not cumulative"));
            }
            last = b.value;
        }
        let inf = buckets
            .last()
            .filter(|b| b.label("le") == Some("+Inf"))
            .ok_or_else(|| format!("{family}: no +Inf bucket last"))?;
        let count = samples
            .iter()
            .find(|s| s.name == format!("{family}_count"))
            .ok_or_else(|| format!("{family}: no _count"))?;
        if inf.value != count.value {
            return Err(format!(
                "{family}: +Inf bucket {} != count {}",
                inf.value, count.value
            ));
        }
    }
    Ok(samples)
}

/// The value of the sample `name` whose labels include `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_accepts_good_scrapes_and_names_what_is_wrong() {
        let good = "# HELP a_total Things.\n# TYPE a_total counter\na_total 3\n\
                    # HELP g A gauge.\n# TYPE g gauge\ng{x=\"q\\\"uote\",y=\"2\"} 1.5\n\
                    # HELP h Times.\n# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n";
        let s = parse_metrics(good).unwrap();
        assert_eq!(value(&s, "g", &[("x", "q\"uote")]), Some(1.5));
        assert_eq!(value(&s, "a_total", &[]), Some(3.0));
        for (bad, why) in [
            ("g 1\n", "no TYPE"),
            ("# TYPE g gauge\ng 1\n", "TYPE before HELP"),
            ("# HELP c C.\n# TYPE c counter\nc 1\n", "_total"),
            ("# HELP g G.\n# TYPE g gauge\ng one\n", "not a number"),
            ("# HELP g G.\n# TYPE g gauge\ng{x=\"1} 1\n", "unterminated"),
            (
                "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
                "cumulative",
            ),
            (
                "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 1\n",
                "!= count",
            ),
        ] {
            let e = parse_metrics(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn answers_parse() {
        let a = parse_answer(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap();
        assert_eq!(a.status, 503);
        assert_eq!(a.headers["content-length"], "2");
        assert_eq!(a.body, "{}");
    }
}
