//! The layer table of docs/ARCHITECTURE.md, checked against the code: every
//! `crate::X` path in `src/` names a layer that the file's layer may import
//! (the table's "may import" column, read from the document itself, so the
//! two cannot drift apart); `unsafe` appears only in `src/os/`; fuser is
//! imported only by the files the document lists; every source file is named
//! in the document; `src/lib.rs` declares and lists every layer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const DOC: &str = "docs/ARCHITECTURE.md";
const FUSER_LINE: &str = "Only these files import fuser:";

/// One row of the table: its layers, their paths, what they may import.
#[derive(Debug)]
struct Row {
    layers: Vec<String>,
    paths: Vec<String>,
    may_import: BTreeSet<String>,
    /// "everything above": any layer.
    any: bool,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn doc() -> String {
    std::fs::read_to_string(root().join(DOC)).expect("read docs/ARCHITECTURE.md")
}

/// The words in backticks in `s`.
fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, w)| w.to_string())
        .collect()
}

/// `s` without its parenthesized remarks (which may nest).
fn without_remarks(s: &str) -> String {
    let mut depth = 0usize;
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The rows of the layer table (the one whose header has "may import").
fn table(doc: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut inside = false;
    for line in doc.lines() {
        if line.starts_with("| layer |") && line.contains("may import") {
            inside = true;
            continue;
        }
        if !inside || line.starts_with("|---") {
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert_eq!(cells.len(), 4, "a row of the layer table: {line}");
        let layers = cells[0].split(',').map(|l| l.trim().to_string()).collect();
        let paths = backticked(cells[1]);
        let imports = without_remarks(cells[3]);
        let any = imports.contains("everything");
        let may_import = imports
            .split(',')
            .map(|w| w.trim().to_string())
            .filter(|w| !w.is_empty() && w != "—")
            .collect();
        rows.push(Row {
            layers,
            paths,
            may_import,
            any,
        });
    }
    assert!(rows.len() > 5, "no layer table found in {DOC}");
    rows
}

/// Every `.rs` file under `dir`, relative to the crate root.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(
                p.strip_prefix(root())
                    .expect("under the root")
                    .to_path_buf(),
            );
        }
    }
}

fn all_sources() -> Vec<PathBuf> {
    let mut v = Vec::new();
    sources(&root().join("src"), &mut v);
    v.sort();
    v
}

/// The layer a file belongs to: the row whose path is its longest prefix,
/// and the layer named after the file's first component below `src/`.
fn layer_of<'a>(rows: &'a [Row], file: &Path) -> Option<(&'a Row, String)> {
    let f = file.to_string_lossy();
    let row = rows
        .iter()
        .flat_map(|r| r.paths.iter().map(move |p| (r, p)))
        .filter(|(_, p)| f == p.as_str() || (p.ends_with('/') && f.starts_with(p.as_str())))
        .max_by_key(|(_, p)| p.len())?
        .0;
    let first = file
        .strip_prefix("src")
        .ok()?
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string();
    Some((row, first))
}

/// The code of a line: nothing of a line comment (doc comments included).
fn code(line: &str) -> &str {
    let t = line.trim_start();
    if t.starts_with("//") { "" } else { line }
}

/// The layers that `src` names as `crate::X` (in `use crate::X`,
/// `crate::X::...`, `use crate::{X, Y}`), with a line number each.
fn crate_paths(src: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut group = false;
    for (n, line) in src.lines().enumerate() {
        let line = code(line);
        if group {
            for w in line.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '}')) {
                let w = w.trim_end_matches('}');
                if !w.is_empty() && w.chars().next().is_some_and(|c| c.is_lowercase()) {
                    out.push((n + 1, w.to_string()));
                }
            }
            if line.contains("};") {
                group = false;
            }
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // `kmsfs_crate::` and the like
            }
            if let Some(inner) = rest.strip_prefix('{') {
                let end = inner.find('}');
                let list = &inner[..end.unwrap_or(inner.len())];
                for item in list.split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name.chars().next().is_some_and(|c| c.is_lowercase()) {
                        out.push((n + 1, name));
                    }
                }
                group = end.is_none();
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            // A lowercase first segment is a module; `crate::Foo` is an item
            // of lib.rs's flat list, which names no layer.
            if name.chars().next().is_some_and(|c| c.is_lowercase()) {
                out.push((n + 1, name));
            }
        }
    }
    out
}

#[test]
fn every_crate_path_follows_the_layer_table() {
    let rows = table(&doc());
    let layers: BTreeSet<&str> = rows
        .iter()
        .flat_map(|r| r.layers.iter().map(String::as_str))
        .collect();
    let mut wrong = Vec::new();
    for file in all_sources() {
        let name = file.to_string_lossy();
        if name == "src/lib.rs" || name == "src/main.rs" {
            continue;
        }
        let Some((row, own)) = layer_of(&rows, &file) else {
            wrong.push(format!("{name}: in no layer of the table"));
            continue;
        };
        let text = std::fs::read_to_string(root().join(&file)).expect("read source");
        for (line, used) in crate_paths(&text) {
            if used == own || row.layers.contains(&used) || row.any {
                continue;
            }
            if !layers.contains(used.as_str()) {
                wrong.push(format!(
                    "{name}:{line}: crate::{used} is not a layer of the table"
                ));
            } else if !row.may_import.contains(&used) {
                wrong.push(format!(
                    "{name}:{line}: layer {own} imports {used}, which its row's \"may import\" \
                     does not list"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{DOC} and the code disagree:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn unsafe_code_is_only_in_os() {
    let mut found = Vec::new();
    for file in all_sources() {
        if file.starts_with("src/os") {
            continue;
        }
        let text = std::fs::read_to_string(root().join(&file)).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let l = code(line);
            let words: Vec<&str> = l
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .collect();
            if words.contains(&"unsafe") {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "unsafe outside src/os:\n{}",
        found.join("\n")
    );
}

#[test]
fn fuser_is_imported_only_by_the_files_the_document_lists() {
    let doc = doc();
    let line = doc
        .lines()
        .find(|l| l.starts_with(FUSER_LINE))
        .unwrap_or_else(|| panic!("{DOC} has no line starting {FUSER_LINE:?}"));
    let allowed: BTreeSet<String> = backticked(line).into_iter().collect();
    assert!(!allowed.is_empty(), "{line}");
    let mut found = BTreeSet::new();
    for file in all_sources() {
        let text = std::fs::read_to_string(root().join(&file)).expect("read source");
        if text
            .lines()
            .map(code)
            .any(|l| l.contains("fuser::") || l.contains("use fuser"))
        {
            found.insert(file.to_string_lossy().into_owned());
        }
    }
    let stray: Vec<&String> = found.difference(&allowed).collect();
    assert!(
        stray.is_empty(),
        "fuser imported outside {allowed:?}: {stray:?}"
    );
    for f in &allowed {
        assert!(
            found.contains(f),
            "{DOC} lists {f} as importing fuser; it does not"
        );
    }
}

#[test]
fn the_document_names_every_source_file() {
    let doc = doc();
    let named: BTreeSet<String> = backticked(&doc).into_iter().collect();
    let is_named = |file: &Path| {
        let f = file.to_string_lossy();
        let rel = f.trim_start_matches("src/");
        // `src/fs/budget.rs`, `fs/budget.rs` or `budget.rs`.
        named.iter().any(|n| {
            n == f.as_ref() || n == rel || (!n.contains(' ') && rel.ends_with(&format!("/{n}")))
        })
    };
    let mut missing = Vec::new();
    for file in all_sources() {
        let f = file.to_string_lossy();
        let rel = f.trim_start_matches("src/");
        let parts: Vec<&str> = rel.split('/').collect();
        let ok = match parts.as_slice() {
            // lib.rs, main.rs, and a layer that is one file.
            [_] => is_named(&file) || f == "src/lib.rs" || f == "src/main.rs",
            // A layer's mod.rs is its directory, named in the table.
            [dir, "mod.rs"] => named.contains(&format!("src/{dir}/")),
            [_, _] => is_named(&file),
            // Deeper: the file, or its directory (`model/`) is named.
            [.., dir, _] => {
                is_named(&file)
                    || named.iter().any(|n| n == &format!("{dir}/"))
                    || named.iter().any(|n| n.ends_with(&format!("/{dir}/")))
            }
            [] => true,
        };
        if !ok {
            missing.push(f.into_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "{DOC} does not name:\n{}",
        missing.join("\n")
    );
}

#[test]
fn lib_rs_declares_and_lists_every_layer() {
    let rows = table(&doc());
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).expect("read lib.rs");
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("mod "))
                .map(|m| m.trim_end_matches(';').to_string())
        })
        .collect();
    let header: String = lib
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    let listed: BTreeSet<String> = backticked(&header).into_iter().collect();
    let mut by_row: BTreeMap<String, ()> = BTreeMap::new();
    for r in &rows {
        for l in &r.layers {
            by_row.insert(l.clone(), ());
            assert!(
                declared.contains(l),
                "src/lib.rs does not declare the layer {l}"
            );
            assert!(
                listed.contains(l),
                "src/lib.rs's opening does not list the layer {l}"
            );
        }
    }
    for m in &declared {
        assert!(
            by_row.contains_key(m),
            "src/lib.rs declares {m}, which the table of {DOC} does not have"
        );
    }
}
