//! The source tree is the design's layers, and imports point only downwards
//! (`src/lib.rs`; `DESIGN.md`, "Layers"): a module may name its own layer's
//! modules and those of the layers below it, never one above. The client
//! and the relay, the two programs' cores, do not name each other; what
//! they share lives in `link/` or below.
//!
//! This test reads every file under `src/` (the binaries in `src/bin/` are
//! front ends and use the library by its name) and checks each path that
//! starts with `crate::`, in code and in doc links alike.

use std::fs;
use std::path::{Path, PathBuf};

/// The layer of each top-level module, lowest first. `units`, `paths` and
/// `locks` are helpers every layer may use; they use no other module.
const LAYERS: &[(&str, u8)] = &[
    ("units", 0),
    ("paths", 0),
    ("locks", 0),
    ("proto", 1),
    ("transport", 2),
    ("link", 3),
    ("client", 4),
    ("relay", 4),
    ("cli", 5),
    ("demo", 5),
];

/// The layer the front ends are in: its modules may name each other.
const FRONT_END: u8 = 5;

fn layer(module: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, layer)| *layer)
}

/// Whether a module of `from` may name `to`.
fn allowed(from: &str, to: &str) -> bool {
    match (layer(from), layer(to)) {
        (Some(a), Some(b)) => from == to || b < a || (a == FRONT_END && b == FRONT_END),
        _ => false,
    }
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, but not under `src/bin`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if path != src_dir().join("bin") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `src/proto/wire/mod.rs` is in
/// `proto`, `src/units.rs` in `units`; `src/lib.rs` is the crate root.
fn top_module(file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src_dir()).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first.strip_suffix(".rs") {
        Some("lib") => None,
        Some(stem) => Some(stem.to_owned()),
        None => Some(first.to_owned()),
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The modules named right after each `crate::` in `text`, with the byte
/// offset of each: `crate::proto::wire` names `proto`, and
/// `crate::{proto::wire, units}` names `proto` and `units`.
fn named_modules(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        // `crate::` inside a longer word (`mycrate::`) is not the crate root.
        if text[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = text[at + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && is_ident(c) => {
                        let name: String =
                            group[i..].chars().take_while(|&c| is_ident(c)).collect();
                        found.push((at, name));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                found.push((at, name));
            }
        }
    }
    found
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset].matches('\n').count() + 1
}

#[test]
fn every_top_level_module_has_a_layer() {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let unplaced: Vec<String> = files
        .iter()
        .filter_map(|file| top_module(file))
        .filter(|module| layer(module).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "top-level modules with no layer (place them in a layer's folder, or add them to LAYERS in tests/layers.rs): {unplaced:?}"
    );
}

#[test]
fn imports_point_only_downwards() {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    assert!(
        files.len() > 20,
        "found only {} files under src/",
        files.len()
    );
    let mut offences = Vec::new();
    for file in &files {
        let Some(from) = top_module(file) else {
            continue;
        };
        let text = fs::read_to_string(file).expect("a readable source file");
        for (offset, to) in named_modules(&text) {
            if layer(&to).is_none() {
                // Not a top-level module (a macro, a crate-level item): no layer to check.
                continue;
            }
            if !allowed(&from, &to) {
                let line = line_of(&text, offset);
                let source = text.lines().nth(line - 1).unwrap_or("").trim();
                offences.push(format!(
                    "{}:{line}: `{from}` names `crate::{to}`, which is not below it: {source}",
                    file.strip_prefix(env!("CARGO_MANIFEST_DIR"))
                        .unwrap_or(file)
                        .display(),
                ));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "imports that point up or sideways (layers, lowest first: {LAYERS:?}):\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_checker_sees_what_it_must() {
    let text = "use crate::client::run;\nuse crate::{proto::wire, units};\n// mycrate::relay\n";
    let named: Vec<String> = named_modules(text).into_iter().map(|(_, m)| m).collect();
    assert_eq!(named, ["client", "proto", "units"]);
    assert_eq!(line_of(text, text.find("crate::{").unwrap()), 2);
    assert!(allowed("client", "link") && allowed("cli", "demo") && allowed("proto", "units"));
    assert!(!allowed("proto", "transport") && !allowed("client", "relay"));
    assert!(!allowed("units", "paths") && !allowed("transport", "cli"));
}
