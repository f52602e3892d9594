//! ARCHITECTURE.md stays true as the code moves:
//!
//! - every `path::name` in its invariant table resolves: the path names a
//!   file (`node/primary.rs`, `store/writer.rs`, or a module path such as
//!   `store` or `orchestrator`), and each name after it is defined in that
//!   file (`fn name`, a type, a constant, or a variant of the enum before
//!   it). Renaming a function the table names fails this test until the
//!   table follows;
//! - every other file path in the table exists;
//! - every source file under `src/` is in the code map, and everything the
//!   code map names exists.
//!
//! Pure file reading: no process, no build of anything but this test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn architecture() -> String {
    std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md is readable")
}

/// The text under `## {heading}`, up to the next `## ` heading.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let marker = format!("\n## {heading}\n");
    let start = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no section '## {heading}'"))
        + marker.len();
    let rest = &doc[start..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// The body rows of the first markdown table in `text`, split into cells.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    let rows: Vec<Vec<String>> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    assert!(rows.len() > 2, "no table rows found");
    // Skip the header and the `|---|---|` line.
    rows.into_iter().skip(2).collect()
}

/// The `code spans` of a cell.
fn code_spans(text: &str) -> Vec<String> {
    text.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// A file path as the docs write it: relative to the repository root when
/// it starts with a top-level folder, else relative to `src/`.
fn repo_path(path: &str) -> PathBuf {
    const TOP: &[&str] = &["src/", "tests/", "vendor/", "docs/", "ipc-schema/"];
    if TOP.iter().any(|t| path.starts_with(t)) {
        root().join(path)
    } else {
        root().join("src").join(path)
    }
}

/// The file that a module path (`store`, `node::primary`) names.
fn module_file(segments: &[&str]) -> Option<PathBuf> {
    let joined = segments.join("/");
    [
        root().join("src").join(format!("{joined}.rs")),
        root().join("src").join(&joined).join("mod.rs"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `source` (comment lines left out) contains `{keyword} {name}` as
/// whole words, e.g. `fn promote` in `pub fn promote(`.
fn has_item(source: &str, keyword: &str, name: &str) -> bool {
    let needle = format!("{keyword} {name}");
    source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .any(|line| {
            line.match_indices(&needle).any(|(at, _)| {
                let before = line[..at].chars().next_back();
                let after = line[at + needle.len()..].chars().next();
                !before.is_some_and(is_ident_char) && !after.is_some_and(is_ident_char)
            })
        })
}

fn defines_type(source: &str, name: &str) -> bool {
    ["struct", "enum", "trait", "type", "impl"]
        .iter()
        .any(|k| has_item(source, k, name))
        || source.lines().any(|l| {
            // `impl<T> Name`, `impl Trait for Name`
            let l = l.trim_start();
            l.starts_with("impl") && l.split_whitespace().any(|w| w == name)
        })
}

/// A variant line of an enum: `Name {`, `Name(`, `Name,` or `Name` alone.
fn has_variant(source: &str, name: &str) -> bool {
    source.lines().any(|l| {
        let l = l.trim_start();
        l.strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '{', '(', ',']))
    })
}

fn defines_last(source: &str, previous: Option<&str>, name: &str) -> bool {
    ["fn", "const", "static", "mod", "macro_rules!"]
        .iter()
        .any(|k| has_item(source, k, name))
        || defines_type(source, name)
        || previous.is_some_and(|enum_name| {
            has_item(source, "enum", enum_name) && has_variant(source, name)
        })
}

/// Checks one `path::name` reference; the error says what is missing.
fn check_reference(reference: &str) -> Result<(), String> {
    let segments: Vec<&str> = reference.split("::").collect();
    let (file, items) = if segments[0].ends_with(".rs") {
        (repo_path(segments[0]), &segments[1..])
    } else {
        let found = (1..segments.len())
            .rev()
            .find_map(|k| module_file(&segments[..k]).map(|f| (f, k)));
        match found {
            Some((f, k)) => (f, &segments[k..]),
            None => return Err(format!("`{reference}`: no module file for its path")),
        }
    };
    let source = std::fs::read_to_string(&file)
        .map_err(|e| format!("`{reference}`: cannot read {}: {e}", file.display()))?;
    let Some((last, types)) = items.split_last() else {
        return Err(format!("`{reference}` names a file but no item in it"));
    };
    for ty in types {
        if !defines_type(&source, ty) {
            return Err(format!(
                "`{reference}`: no type or impl `{ty}` in {}",
                file.display()
            ));
        }
    }
    if !defines_last(&source, types.last().copied(), last) {
        return Err(format!(
            "`{reference}`: no `fn {last}` (nor type, constant or variant) in {}",
            file.display()
        ));
    }
    Ok(())
}

fn looks_like_path(span: &str) -> bool {
    !span.contains(char::is_whitespace) && (span.ends_with(".rs") || span.ends_with('/'))
}

#[test]
fn every_name_in_the_invariant_table_exists() {
    let doc = architecture();
    let rows = table_rows(section(&doc, "Invariants and where they are enforced"));
    let mut problems = Vec::new();
    let mut checked = 0;
    for row in &rows {
        let Some(enforced) = row.get(1) else {
            problems.push(format!("row without an 'enforced in' cell: {row:?}"));
            continue;
        };
        for span in code_spans(enforced) {
            if span.contains("::") {
                checked += 1;
                if let Err(e) = check_reference(&span) {
                    problems.push(e);
                }
            } else if looks_like_path(&span) && !repo_path(&span).exists() {
                problems.push(format!("`{span}`: no such file or folder"));
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} references found: is the table still parsed?"
    );
    assert!(
        problems.is_empty(),
        "ARCHITECTURE.md's invariant table names what does not exist:\n{}",
        problems.join("\n")
    );
}

fn source_files(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root()).expect("under the root");
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

#[test]
fn every_source_file_is_in_the_code_map() {
    let doc = architecture();
    let rows = table_rows(section(&doc, "Code map"));
    let mut missing = Vec::new();
    let mut named = BTreeSet::new();
    let mut files = Vec::new();
    source_files(&root().join("src"), &mut files);
    for file in &files {
        let covered = rows.iter().any(|row| {
            let first = code_spans(&row[0]);
            let all: Vec<String> = row.iter().flat_map(|c| code_spans(c)).collect();
            first.iter().any(|p| p == file)
                || first.iter().any(|dir| {
                    dir.ends_with('/')
                        && file
                            .strip_prefix(dir.as_str())
                            .is_some_and(|rel| all.iter().any(|s| s == rel))
                })
        });
        if !covered {
            missing.push(file.clone());
        }
    }
    for row in &rows {
        for span in code_spans(&row[0]) {
            if !repo_path(&span).exists() {
                named.insert(span);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "source files missing from ARCHITECTURE.md's code map (name each, in its folder's row by \
         its path inside that folder, e.g. `crash_guard.rs` in the `src/store/` row):\n{}",
        missing.join("\n")
    );
    assert!(
        named.is_empty(),
        "the code map names paths that do not exist: {named:?}"
    );
}

#[test]
fn a_renamed_function_is_caught() {
    // The checker itself: a name that is not defined must be reported,
    // whatever form the reference takes.
    assert!(check_reference("store/writer.rs::promote").is_ok());
    assert!(check_reference("store/writer.rs::promote_renamed").is_err());
    assert!(check_reference("store::open_read_write").is_ok());
    assert!(check_reference("store::no_such_function").is_err());
    assert!(check_reference("node/primary.rs::Ended::Rebind").is_ok());
    assert!(check_reference("node/primary.rs::Ended::Renamed").is_err());
    assert!(check_reference("no_such_module::f").is_err());
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn comments_point_at_sections_of_the_design() {
    let design = std::fs::read_to_string(root().join("docs/design.md")).expect("docs/design.md");
    let headings: BTreeSet<&str> = design
        .lines()
        .filter_map(|l| l.strip_prefix("### ").or_else(|| l.strip_prefix("## ")))
        .collect();
    // Built from pieces so that this file does not match itself.
    let pointer = concat!("docs/design.md", ", ");
    let old_citation = format!("DESIGN {}", '\u{a7}');
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("tests"), &mut files);
    let mut problems = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        for (n, line) in text.lines().enumerate() {
            let at = format!("{}:{}", file.display(), n + 1);
            if line.contains(&old_citation) {
                problems.push(format!(
                    "{at}: cites {old_citation}n, a file outside the repository"
                ));
            }
            for (i, _) in line.match_indices(pointer) {
                let rest = &line[i + pointer.len()..];
                let end = rest.find([')', '.', ',', ';', ':']).unwrap_or(rest.len());
                let name = rest[..end].trim();
                if !headings.contains(name) {
                    problems.push(format!("{at}: no section '{name}' in docs/design.md"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The layers as ARCHITECTURE.md states them (its `| layer | modules |`
/// table is the one place they are written): module → layer number.
fn layers() -> Vec<(String, u8)> {
    let doc = architecture();
    let start = doc
        .find("| layer | modules |")
        .expect("ARCHITECTURE.md has a `| layer | modules |` table");
    let table = &doc[start..];
    let table = &table[..table.find("\n\n").unwrap_or(table.len())];
    let mut out = Vec::new();
    for row in table_rows(table) {
        let number: u8 = row[0]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("layer row without a number: {row:?}"));
        for module in code_spans(&row[1]) {
            out.push((module, number));
        }
    }
    out
}

/// Edges inside a module that once made a cycle: (file, or folder ending
/// in `/`, and the forbidden path, as `super::` or `crate::store::` names it).
const FORBIDDEN_INSIDE: &[(&str, &str)] = &[
    ("src/store/tasks/", "writer::"),
    ("src/store/txn.rs", "writer::"),
    ("src/store/txn.rs", "tasks::"),
];

fn layer_in(layers: &[(String, u8)], module: &str) -> Option<u8> {
    layers.iter().find(|(m, _)| m == module).map(|(_, l)| *l)
}

/// `crate::name` references in `source`, comments left out.
fn crate_references(source: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after.chars().take_while(|c| is_ident_char(*c)).collect();
            if !name.is_empty() {
                out.insert(name);
            }
            rest = after;
        }
    }
    out
}

#[test]
fn imports_point_down_the_layers() {
    let layers = layers();
    let layer = |m: &str| layer_in(&layers, m);
    let mut files = Vec::new();
    source_files(&root().join("src"), &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.trim_start_matches("src/");
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs");
        if matches!(top, "lib" | "main") {
            continue;
        }
        let Some(own) = layer(top) else {
            wrong.push(format!(
                "{file}: module `{top}` has no layer in ARCHITECTURE.md's layer table"
            ));
            continue;
        };
        let source = std::fs::read_to_string(root().join(file)).unwrap();
        for used in crate_references(&source) {
            if used == top {
                continue;
            }
            match layer(&used) {
                Some(l) if l < own => {}
                Some(l) => wrong.push(format!(
                    "{file}: `{top}` (layer {own}) uses `{used}` (layer {l})"
                )),
                None => wrong.push(format!("{file}: uses `{used}`, which has no layer")),
            }
        }
        for (forbidden_file, path) in FORBIDDEN_INSIDE {
            let inside = file == forbidden_file
                || (forbidden_file.ends_with('/') && file.starts_with(forbidden_file));
            let named = [format!("super::{path}"), format!("crate::store::{path}")];
            if inside && named.iter().any(|n| source.contains(n.as_str())) {
                wrong.push(format!(
                    "{file}: uses super::{path} (a cycle inside the module)"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_layer_check_sees_a_wrong_import() {
    let layers = layers();
    let layer = |m: &str| layer_in(&layers, m);
    let refs = crate_references("use crate::client::Client; // crate::cli is a comment");
    assert_eq!(refs.into_iter().collect::<Vec<_>>(), vec!["client"]);
    assert!(layer("orchestrator") <= layer("client").map(|l| l + 1));
    assert!(layer("client") < layer("orchestrator"));
}
