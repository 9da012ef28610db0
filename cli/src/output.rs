//! Output: repmgr's text tables, CSV, and JSON with stable keys for scripts.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
    Csv,
}

/// A table: each column has a JSON key and a text header.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub columns: Vec<(&'static str, &'static str)>,
    pub rows: Vec<Vec<Value>>,
}

/// A cell's text: strings as they are, NULL as empty.
fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

/// A CSV field, quoted when it needs to be.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Renders rows as repmgr's ` a | b ` table with a dashed rule under the header.
pub fn text_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let width = |s: &str| s.chars().count();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| width(&r[i]))
                .chain([width(header[i])])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!(" {c}{} ", " ".repeat(widths[i] - width(c))))
            .collect::<Vec<_>>()
            .join("|")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.to_vec())];
    out.push(
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+"),
    );
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n") + "\n"
}

impl Table {
    pub fn new(columns: &[(&'static str, &'static str)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }

    pub fn text(&self) -> String {
        let header: Vec<&str> = self.columns.iter().map(|(_, h)| *h).collect();
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(cell_text).collect())
            .collect();
        text_table(&header, &rows)
    }

    pub fn csv(&self) -> String {
        let mut out = String::new();
        let header: Vec<String> = self.columns.iter().map(|(k, _)| csv_field(k)).collect();
        out.push_str(&header.join(","));
        out.push('\n');
        for r in &self.rows {
            let fields: Vec<String> = r.iter().map(|v| csv_field(&cell_text(v))).collect();
            out.push_str(&fields.join(","));
            out.push('\n');
        }
        out
    }

    /// An array of objects, one per row, keyed by the columns' keys.
    pub fn json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    let mut m = Map::new();
                    for ((k, _), v) in self.columns.iter().zip(r) {
                        m.insert((*k).to_string(), v.clone());
                    }
                    Value::Object(m)
                })
                .collect(),
        )
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.text(),
            Format::Csv => self.csv(),
            Format::Json => pretty(&self.json()),
        }
    }
}

/// JSON, indented, with a final newline.
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// An optional value as JSON (NULL when absent).
pub fn opt<T: Into<Value>>(v: Option<T>) -> Value {
    v.map_or(Value::Null, Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Table {
        let mut t = Table::new(&[("id", "ID"), ("name", "Name"), ("details", "Details")]);
        t.push(vec![json!(1), json!("node1"), json!("ok")]);
        t.push(vec![
            json!(10),
            json!("n"),
            json!("has, a comma and \"quotes\""),
        ]);
        t.push(vec![json!(11), json!("ß"), Value::Null]);
        t
    }

    #[test]
    fn text_layout_matches_repmgr() {
        assert_eq!(
            sample().text(),
            " ID | Name  | Details\n\
             ----+-------+---------------------------\n \
             1  | node1 | ok\n \
             10 | n     | has, a comma and \"quotes\"\n \
             11 | ß     |\n"
        );
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        assert_eq!(
            sample().csv(),
            "id,name,details\n1,node1,ok\n10,n,\"has, a comma and \"\"quotes\"\"\"\n11,ß,\n"
        );
    }

    #[test]
    fn json_is_an_array_of_objects_with_stable_keys() {
        assert_eq!(
            sample().json(),
            json!([
                {"id": 1, "name": "node1", "details": "ok"},
                {"id": 10, "name": "n", "details": "has, a comma and \"quotes\""},
                {"id": 11, "name": "ß", "details": null}
            ])
        );
    }
}
