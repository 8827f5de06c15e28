//! What a command prints: aligned tables and `key value` views for people,
//! the admin API's JSON for scripts.
//!
//! Text that comes from the server is printed with control characters
//! replaced, so a bot id or key description cannot rewrite the terminal.

use serde_json::Value;

/// What a command produced: `stdout` (the result) and `stderr` lines (notes
/// and warnings, so `stdout` stays parseable).
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: String,
    pub notes: Vec<String>,
}

impl Output {
    /// The API's JSON, pretty-printed, as the whole of stdout.
    pub fn json(value: &Value) -> Self {
        let mut stdout = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
        stdout.push('\n');
        Self {
            stdout,
            notes: Vec::new(),
        }
    }

    pub fn text(stdout: String) -> Self {
        Self {
            stdout,
            notes: Vec::new(),
        }
    }

    pub fn note(mut self, line: impl Into<String>) -> Self {
        self.notes.push(line.into());
        self
    }
}

/// Server text made safe for a terminal: control characters as `?`.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A JSON value as a table cell: strings as is, `null` and `[]` as `-`,
/// arrays joined with `,`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => clean(s),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => clean(&other.to_string()),
    }
}

/// `v[field]` as a cell (`-` when absent).
pub fn field(v: &Value, name: &str) -> String {
    cell(v.get(name).unwrap_or(&Value::Null))
}

/// Rows under upper-case headers, columns padded to their widest cell and
/// separated by two spaces (like `kubectl get`): easy to read, `grep` and
/// `awk`. Widths count characters.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(c);
            if i + 1 < row.len() {
                line.extend(std::iter::repeat_n(' ', w - c.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// An object as `key  value` lines, nested objects flattened with dotted
/// keys (`handler.url`), so the names are the API's. Top-level fields named in
/// `order` come first, in that order; the rest follow by name.
pub fn key_values(v: &Value, order: &[&str]) -> String {
    let mut pairs = Vec::new();
    if let Value::Object(map) = v {
        let rank = |k: &str| order.iter().position(|o| *o == k).unwrap_or(order.len());
        let mut fields: Vec<(&String, &Value)> = map.iter().collect();
        fields.sort_by(|a, b| rank(a.0).cmp(&rank(b.0)).then_with(|| a.0.cmp(b.0)));
        for (k, v) in fields {
            flatten(&clean(k), v, &mut pairs);
        }
    } else {
        flatten("", v, &mut pairs);
    }
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(format!("{k:<width$}  {v}").trim_end());
        out.push('\n');
    }
    out
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    clean(k)
                } else {
                    format!("{prefix}.{}", clean(k))
                };
                flatten(&key, v, out);
            }
        }
        other => out.push((prefix.to_string(), cell(other))),
    }
}

/// A cursor quoted for a shell command line when it needs quoting.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/=+@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", clean(s).replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_trim() {
        let t = table(
            &["ID", "APP ID", "X"],
            &[
                vec!["a".into(), "long-app-id".into(), "-".into()],
                vec!["longer-id".into(), "b".into(), "é".into()],
            ],
        );
        assert_eq!(
            t,
            "ID         APP ID       X\n\
             a          long-app-id  -\n\
             longer-id  b            é\n"
        );
    }

    #[test]
    fn cells_and_key_values() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!(["a", "b"])), "a,b");
        assert_eq!(cell(&json!("evil\u{1b}[2Jtext\n")), "evil?[2Jtext?");
        assert_eq!(
            key_values(
                &json!({"id": "a", "handler": {"kind": "webhook", "url": "https://x"}, "tenant_id": null, "b": []}),
                &["id", "tenant_id"]
            ),
            "id            a\ntenant_id     -\nb             -\nhandler.kind  webhook\nhandler.url   https://x\n"
        );
        assert_eq!(shell_quote("1767-0"), "1767-0");
        assert_eq!(shell_quote("a b'c"), r"'a b'\''c'");
    }
}
