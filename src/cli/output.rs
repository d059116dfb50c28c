//! Printing results: JSON with the AWS API field names (timestamps as RFC 3339,
//! secrets through zeroized buffers) and the text layouts of key metadata.

use std::sync::OnceLock;

use serde_json::Value;
use zeroize::Zeroizing;

use super::{CliError, ErrorClass, OutputFormat};

use crate::kms::{KeyMetadata, clock};

pub(crate) use crate::kms::wire::{SYMMETRIC_DEFAULT, metadata_json};

/// Response fields that AWS CLI v2 prints as ISO 8601 timestamps.
const TIMESTAMP_FIELDS: [&str; 8] = [
    "CreationDate",
    "LastUpdatedDate",
    "DeletionDate",
    "ValidTo",
    "ParametersValidTo",
    "RotationDate",
    "NextRotationDate",
    "OnDemandRotationStartDate",
];

/// Turns epoch-second timestamps (the service's representation) into RFC 3339
/// strings wherever a timestamp field appears, as AWS CLI v2 prints them.
fn timestamps_as_rfc3339(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                match x.as_i64() {
                    Some(t) if TIMESTAMP_FIELDS.contains(&k.as_str()) => {
                        *x = Value::String(clock::format_rfc3339(t));
                    }
                    _ => timestamps_as_rfc3339(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(timestamps_as_rfc3339),
        _ => {}
    }
}

/// How results printed through `print_json` are rendered: the output
/// format and the `--query` expression, set once per command.
struct Render {
    format: OutputFormat,
    query: Option<String>,
}

static RENDER: OnceLock<Render> = OnceLock::new();

/// `--output text` was given explicitly: key commands print the AWS CLI's
/// text shape instead of kmsfs's readable layouts.
static AWS_TEXT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--output table` was given: key commands draw boxes.
static TABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--output yaml` was given: results printed through `print_json` are YAML.
static YAML: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records whether `--output` was given explicitly, and its value as given
/// (table and yaml are drawn here, from the JSON result).
pub(crate) fn set_aws_text(explicit: bool, given: Option<&str>) {
    AWS_TEXT.store(explicit, std::sync::atomic::Ordering::Relaxed);
    TABLE.store(given == Some("table"), std::sync::atomic::Ordering::Relaxed);
    YAML.store(given == Some("yaml"), std::sync::atomic::Ordering::Relaxed);
}

/// True when key commands print the AWS CLI's text shape.
pub(crate) fn aws_text_requested() -> bool {
    AWS_TEXT.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sets the rendering of this command's results; a `--query` that does not
/// compile is a usage error before anything runs.
pub(crate) fn set_render(format: OutputFormat, query: Option<String>) -> Result<(), CliError> {
    if let Some(q) = &query {
        jmespath::compile(&aws_jmespath(q))
            .map_err(|e| CliError::new(ErrorClass::Usage, format!("invalid --query {q:?}: {e}")))?;
    }
    let _ = RENDER.set(Render { format, query });
    Ok(())
}

/// Applies `--query` to `v`.
fn query(v: Value, q: &str) -> Value {
    let Ok(expr) = jmespath::compile(&aws_jmespath(q)) else {
        return Value::Null;
    };
    match expr.search(v) {
        Ok(r) => serde_json::to_value(&*r).unwrap_or(Value::Null),
        Err(e) => {
            log::warn!("--query: {e}");
            Value::Null
        }
    }
}

/// A `--query` as the aws CLI reads it: a backtick literal that is not JSON
/// (`` `alias/app` ``) is the string it spells, as jmespath.py takes it
/// (deprecated there, common in scripts), so it is rewritten to the JSON
/// string literal. Raw strings and quoted identifiers are copied as they are;
/// a literal that is neither stays, for the parser to report.
fn aws_jmespath(q: &str) -> String {
    let mut out = String::with_capacity(q.len() + 8);
    let mut chars = q.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                while let Some(d) = chars.next() {
                    out.push(d);
                    if d == '\\' {
                        if let Some(e) = chars.next() {
                            out.push(e);
                        }
                    } else if d == c {
                        break;
                    }
                }
            }
            '`' => {
                let mut lit = String::new();
                let mut closed = false;
                while let Some(d) = chars.next() {
                    if d == '\\' && chars.peek() == Some(&'`') {
                        chars.next();
                        lit.push('`');
                    } else if d == '`' {
                        closed = true;
                        break;
                    } else {
                        lit.push(d);
                    }
                }
                if !closed {
                    // Unterminated: the parser says so about the original.
                    return q.to_string();
                }
                let json = if serde_json::from_str::<Value>(&lit).is_ok() {
                    lit
                } else {
                    match serde_json::from_str::<String>(&format!("\"{}\"", lit.trim_start())) {
                        Ok(s) => Value::String(s).to_string(),
                        Err(_) => lit,
                    }
                };
                out.push('`');
                out.push_str(&json.replace('`', "\\`"));
                out.push('`');
            }
            _ => out.push(c),
        }
    }
    out
}

/// YAML as AWS CLI v2 prints it: block style, two spaces per level, a
/// list's items at their key's indentation; strings plain when YAML reads
/// them back as the same string, else double-quoted (JSON escapes are YAML's).
pub(crate) fn aws_yaml(v: &Value) -> String {
    fn plain(s: &str) -> bool {
        let Some(first) = s.chars().next() else {
            return false;
        };
        let words = [
            "y", "n", "yes", "no", "true", "false", "on", "off", "null", "~",
        ];
        (first.is_ascii_alphabetic() || first == '/' || first == '_')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./:@+=-".contains(c))
            && !s.ends_with(':')
            && !words.contains(&s.to_ascii_lowercase().as_str())
    }
    fn scalar(v: &Value) -> String {
        match v {
            Value::String(s) if plain(s) => s.clone(),
            Value::Array(_) => "[]".into(),
            Value::Object(_) => "{}".into(),
            other => other.to_string(),
        }
    }
    fn nonempty(v: &Value) -> bool {
        match v {
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => false,
        }
    }
    /// The lines of a non-empty list or object at `indent`.
    fn block(v: &Value, indent: usize, out: &mut String) {
        let pad = " ".repeat(indent);
        match v {
            Value::Object(o) => {
                for (k, x) in o {
                    out.push_str(&pad);
                    out.push_str(&scalar(&Value::String(k.clone())));
                    out.push(':');
                    match x {
                        Value::Object(_) if nonempty(x) => {
                            out.push('\n');
                            block(x, indent + 2, out);
                        }
                        Value::Array(_) if nonempty(x) => {
                            out.push('\n');
                            block(x, indent, out);
                        }
                        _ => {
                            out.push(' ');
                            out.push_str(&scalar(x));
                            out.push('\n');
                        }
                    }
                }
            }
            Value::Array(a) => {
                for x in a {
                    out.push_str(&pad);
                    out.push_str("- ");
                    if nonempty(x) {
                        // The item's first line goes after the dash.
                        let mut item = String::new();
                        block(x, indent + 2, &mut item);
                        out.push_str(&item[indent + 2..]);
                    } else {
                        out.push_str(&scalar(x));
                        out.push('\n');
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = String::new();
    if nonempty(v) {
        block(v, 0, &mut out);
    } else {
        out.push_str(&scalar(v));
        out.push('\n');
    }
    out
}

/// The AWS CLI's text output: scalars of an object on one line, tab
/// separated, in key order; nested lists and objects on lines of their own
/// starting with their key in capitals; a list of scalars on one line.
pub(crate) fn aws_text(v: &Value) -> String {
    fn scalar(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Null => "None".into(),
            Value::Bool(true) => "True".into(),
            Value::Bool(false) => "False".into(),
            other => other.to_string(),
        }
    }
    fn is_scalar(v: &Value) -> bool {
        !matches!(v, Value::Array(_) | Value::Object(_))
    }
    fn line(out: &mut String, prefix: Option<&str>, fields: Vec<String>) {
        let mut parts: Vec<String> = prefix.map(|p| vec![p.to_string()]).unwrap_or_default();
        parts.extend(fields);
        out.push_str(&parts.join("\t"));
        out.push('\n');
    }
    fn walk(v: &Value, prefix: Option<&str>, out: &mut String) {
        match v {
            Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                let scalars: Vec<String> = keys
                    .iter()
                    .filter(|k| is_scalar(&o[k.as_str()]))
                    .map(|k| scalar(&o[k.as_str()]))
                    .collect();
                if !scalars.is_empty() {
                    line(out, prefix, scalars);
                }
                for k in keys.iter().filter(|k| !is_scalar(&o[k.as_str()])) {
                    walk(&o[k.as_str()], Some(&k.to_uppercase()), out);
                }
            }
            Value::Array(a) if a.iter().all(is_scalar) => {
                if !a.is_empty() {
                    line(out, prefix, a.iter().map(scalar).collect());
                }
            }
            Value::Array(a) => a.iter().for_each(|e| walk(e, prefix, out)),
            s => line(out, prefix, vec![scalar(s)]),
        }
    }
    let mut out = String::new();
    walk(v, None, &mut out);
    out
}

/// The AWS CLI's table output, simplified: a box per object, one row per
/// scalar field (key | value), a nested list of objects as a table with a
/// column per field.
pub(crate) fn aws_table(v: &Value) -> String {
    let mut out = String::new();
    walk_table("kmsfs", v, &mut out);
    out
}

/// One value as a table cell (strings bare, null as "None").
fn table_cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "None".into(),
        other => other.to_string(),
    }
}

/// Appends a boxed table titled `title`: the header row (if any), then `rows`,
/// columns as wide as their widest cell.
fn push_table(title: &str, header: &[String], rows: &[Vec<String>], out: &mut String) {
    let cols = header.len().max(rows.first().map_or(0, Vec::len));
    let mut w = vec![0usize; cols];
    for r in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let inner: usize = w.iter().map(|x| x + 3).sum::<usize>().max(title.len() + 4) - 1;
    out.push_str(&format!("{}\n", "-".repeat(inner + 2)));
    out.push_str(&format!("|{:^inner$}|\n", title));
    let sep: String = w
        .iter()
        .map(|x| format!("+{}", "-".repeat(x + 2)))
        .collect::<String>()
        + "+";
    out.push_str(&format!("{sep}\n"));
    let fmt_row = |r: &[String]| {
        let mut s = String::new();
        for (i, c) in r.iter().enumerate() {
            s.push_str(&format!("| {:<width$} ", c, width = w[i]));
        }
        s.push_str("|\n");
        s
    };
    if !header.is_empty() {
        out.push_str(&fmt_row(header));
        out.push_str(&format!("{sep}\n"));
    }
    for r in rows {
        out.push_str(&fmt_row(r));
    }
    out.push_str(&format!("{sep}\n"));
}

/// Appends the tables of `v`: scalar fields of an object in one, then each
/// nested list or object in its own.
fn walk_table(title: &str, v: &Value, out: &mut String) {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let rows: Vec<Vec<String>> = keys
                .iter()
                .filter(|k| !matches!(o[k.as_str()], Value::Array(_) | Value::Object(_)))
                .map(|k| vec![k.to_string(), table_cell(&o[k.as_str()])])
                .collect();
            if !rows.is_empty() {
                push_table(title, &[], &rows, out);
            }
            for k in keys
                .iter()
                .filter(|k| matches!(o[k.as_str()], Value::Array(_) | Value::Object(_)))
            {
                walk_table(k, &o[k.as_str()], out);
            }
        }
        Value::Array(a) if a.iter().all(|e| e.is_object()) && !a.is_empty() => {
            let mut header: Vec<String> = Vec::new();
            for e in a {
                for k in e.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !header.contains(k) {
                        header.push(k.clone());
                    }
                }
            }
            let rows: Vec<Vec<String>> = a
                .iter()
                .map(|e| {
                    header
                        .iter()
                        .map(|h| e.get(h).map(table_cell).unwrap_or_default())
                        .collect()
                })
                .collect();
            push_table(title, &header, &rows, out);
        }
        Value::Array(a) => {
            let rows: Vec<Vec<String>> = a.iter().map(|e| vec![table_cell(e)]).collect();
            push_table(title, &[], &rows, out);
        }
        s => push_table(title, &[], &[vec![table_cell(s)]], out),
    }
}

pub(crate) fn print_json(v: &Value) {
    let mut v = v.clone();
    timestamps_as_rfc3339(&mut v);
    print_rendered(v);
}

/// Prints a report of kmsfs's own (status, inspect, fsck, access keys) as
/// `--output` and `--query` ask, its fields as they are (times stay what
/// the report says they are).
pub(crate) fn print_report(v: &Value) {
    print_rendered(v.clone());
}

fn print_rendered(mut v: Value) {
    let (format, q) = match RENDER.get() {
        Some(r) => (r.format, r.query.as_deref()),
        None => (OutputFormat::Json, None),
    };
    if let Some(q) = q {
        v = query(v, q);
    }
    match format {
        OutputFormat::Json if YAML.load(std::sync::atomic::Ordering::Relaxed) => {
            print!("{}", aws_yaml(&v))
        }
        // serde_json cannot fail on a Value.
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        OutputFormat::Text if TABLE.load(std::sync::atomic::Ordering::Relaxed) => {
            print!("{}", aws_table(&v))
        }
        OutputFormat::Text => print!("{}", aws_text(&v)),
    }
}

/// Prints a JSON object whose values may be secret (base64 plaintext), through
/// a zeroized buffer.
pub(crate) fn print_json_secret(fields: &[(&str, &str)]) {
    if RENDER
        .get()
        .is_some_and(|r| r.format != OutputFormat::Json || r.query.is_some())
        || YAML.load(std::sync::atomic::Ordering::Relaxed)
    {
        // Rendered through a Value: the copies it makes are not zeroized.
        let v = Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect(),
        );
        print_json(&v);
        return;
    }
    let mut out = Zeroizing::new(String::with_capacity(
        fields
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum::<usize>()
            + 4,
    ));
    out.push_str("{\n");
    for (i, (k, v)) in fields.iter().enumerate() {
        // Keys and values are base64, ARNs or fixed names: nothing to escape.
        for part in ["  \"", k, "\": \"", v, "\""] {
            out.push_str(part);
        }
        out.push_str(if i + 1 < fields.len() { ",\n" } else { "\n" });
    }
    out.push('}');
    println!("{}", *out);
}

pub(crate) fn print_metadata(m: &KeyMetadata, aliases: &[String]) {
    println!("KeyId:              {}", m.key_id);
    println!("Arn:                {}", m.arn);
    println!("KeyState:           {}", m.key_state.as_str());
    println!("Description:        {}", m.description);
    println!(
        "CreationDate:       {}",
        clock::format_rfc3339(m.creation_date)
    );
    if let Some(d) = m.deletion_date {
        println!("DeletionDate:       {}", clock::format_rfc3339(d));
    }
    println!(
        "Origin:             {}",
        serde_json::to_value(m.origin)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    );
    if let Some(t) = m.valid_to {
        println!("ValidTo:            {}", clock::format_rfc3339(t));
    }
    println!("KeyMaterialVersion: {}", m.current_key_material_version);
    if !aliases.is_empty() {
        println!("Aliases:            {}", aliases.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backtick_strings_become_json_literals_and_the_rest_is_kept() {
        assert_eq!(aws_jmespath("a[?b==`x/y`]"), "a[?b==`\"x/y\"`]");
        assert_eq!(aws_jmespath("a[?b==`  x`]"), "a[?b==`\"x\"`]");
        assert_eq!(aws_jmespath("a[?b==`1`]"), "a[?b==`1`]");
        assert_eq!(aws_jmespath("a[?b==`\"q\"`]"), "a[?b==`\"q\"`]");
        // Inside raw strings and quoted identifiers a backtick is text.
        assert_eq!(aws_jmespath("a[?b=='`x`']"), "a[?b=='`x`']");
        assert_eq!(aws_jmespath("\"`k\\\"`\""), "\"`k\\\"`\"");
        // An escaped backtick stays one; unterminated stays as given.
        assert_eq!(aws_jmespath("a[?b==`x\\`y`]"), "a[?b==`\"x\\`y\"`]");
        assert_eq!(aws_jmespath("a[?b==`x"), "a[?b==`x");
    }

    #[test]
    fn yaml_quotes_what_would_read_as_another_type() {
        let v = serde_json::json!({
            "A": ["x", "1abc", "yes", "", "a b", "arn:k/1="],
            "B": {"C": 1, "D": null, "E": [], "F": {}},
            "G": [{"H": true, "I": [[1]]}],
        });
        assert_eq!(
            aws_yaml(&v),
            "A:\n- x\n- \"1abc\"\n- \"yes\"\n- \"\"\n- \"a b\"\n- arn:k/1=\nB:\n  C: 1\n  \
             D: null\n  E: []\n  F: {}\nG:\n- H: true\n  I:\n  - - 1\n"
        );
        assert_eq!(aws_yaml(&serde_json::json!("k")), "k\n");
    }
}
