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

/// No source file is longer than this: a file that grows past it holds more
/// than one concept, and is split by concept.
const MAX_LINES: usize = 600;

#[test]
fn no_source_file_is_over_600_lines() {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut bin = Vec::new();
    rust_files_all(&src_dir().join("bin"), &mut bin);
    files.extend(bin);
    let long: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let lines = fs::read_to_string(file).ok()?.lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", file.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines (split them by concept):\n{}",
        long.join("\n")
    );
}

/// Every `.rs` file under `dir`.
fn rust_files_all(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files_all(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `src/relay/accept.rs` is `relay::accept`,
/// `src/relay/durable/mod.rs` is `relay::durable`, `src/lib.rs` the root.
fn module_path(file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src_dir()).expect("a file under src/");
    let mut path: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = path.pop().unwrap_or_default();
    match last.strip_suffix(".rs") {
        Some("mod") | Some("lib") => {}
        Some(stem) => path.push(stem.to_owned()),
        None => path.push(last),
    }
    path
}

/// Every path written after `crate::` or `super::` (one or more) in
/// `text`, whole and with groups expanded: `super::{a, b::c}` gives
/// `(1, [a])` and `(1, [b, c])`; the number is how many `super`s (0 for
/// `crate::`).
fn written_paths(text: &str) -> Vec<(usize, Vec<String>)> {
    fn parse(rest: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
        let mut path = prefix.to_vec();
        let mut rest = rest.trim_start();
        loop {
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 0usize;
                let mut start = 0;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            parse(&group[start..i], &path, out);
                            return;
                        }
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            parse(&group[start..i], &path, out);
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                return;
            }
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if name.is_empty() {
                break;
            }
            rest = &rest[name.len()..];
            path.push(name);
            match rest.strip_prefix("::") {
                Some(more) => rest = more.trim_start(),
                None => break,
            }
        }
        if path.len() > prefix.len() {
            out.push(path);
        }
    }
    let mut found = Vec::new();
    for start in ["crate::", "super::"] {
        for (at, _) in text.match_indices(start) {
            let before = &text[..at];
            if before.chars().next_back().is_some_and(is_ident) || before.ends_with("::") {
                continue;
            }
            let mut rest = &text[at..];
            let mut supers = 0;
            if start == "crate::" {
                rest = &rest["crate::".len()..];
            } else {
                while let Some(more) = rest.strip_prefix("super::") {
                    supers += 1;
                    rest = more;
                }
            }
            let mut paths = Vec::new();
            parse(rest, &[], &mut paths);
            found.extend(paths.into_iter().map(|p| (supers, p)));
        }
    }
    found
}

/// Which modules name which of their siblings: for each file, each module
/// it names, as the pair of siblings (children of their nearest common
/// ancestor) the reference runs between. A child naming its parent, or a
/// parent its child, is no such pair.
fn sibling_edges(files: &[PathBuf]) -> Vec<(Vec<String>, Vec<String>)> {
    let modules: std::collections::BTreeSet<Vec<String>> =
        files.iter().map(|f| module_path(f)).collect();
    let mut edges = std::collections::BTreeSet::new();
    for file in files {
        let from = module_path(file);
        let text = fs::read_to_string(file).expect("a readable source file");
        // Code only, tests not: a doc comment may point anywhere, and a
        // module's tests may drive it through a sibling that uses it.
        if is_tests_file(file) {
            continue;
        }
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        let code: String = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for (supers, written) in written_paths(&code) {
            let base = if supers == 0 {
                Vec::new()
            } else if supers <= from.len() {
                from[..from.len() - supers].to_vec()
            } else {
                continue;
            };
            let full: Vec<String> = base.into_iter().chain(written).collect();
            // The module it names: the longest prefix that is one.
            let Some(to) = (0..=full.len())
                .rev()
                .map(|n| full[..n].to_vec())
                .find(|p| modules.contains(p))
            else {
                continue;
            };
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common < from.len() && common < to.len() {
                edges.insert((from[..=common].to_vec(), to[..=common].to_vec()));
            }
        }
    }
    edges.into_iter().collect()
}

/// A file of tests (`tests.rs`, `liveness_tests.rs`).
fn is_tests_file(file: &Path) -> bool {
    file.file_stem()
        .and_then(|stem| stem.to_str())
        .is_some_and(|stem| stem == "tests" || stem.ends_with("_tests"))
}

/// Circles known and not yet cut, each once (either way round).
/// `proto::replay` and `proto::replay_ring` share `fill` (the zero-copy read
/// into a replay buffer's spare room); it belongs in a module of its own.
const KNOWN_CIRCLES: &[(&str, &str)] = &[("proto::replay", "proto::replay_ring")];

#[test]
fn no_import_circle_between_sibling_modules() {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let edges = sibling_edges(&files);
    let mut circles = Vec::new();
    for (a, b) in &edges {
        // A circle through `a -> b` is a way back from `b` to `a`.
        let mut seen = vec![b.clone()];
        let mut stack = vec![(b.clone(), vec![a.clone(), b.clone()])];
        while let Some((at, trail)) = stack.pop() {
            for (x, y) in &edges {
                if *x != at {
                    continue;
                }
                if y == a {
                    let known = KNOWN_CIRCLES.iter().any(|&(p, q)| {
                        let (p, q) = (p.split("::"), q.split("::"));
                        let (p, q): (Vec<&str>, Vec<&str>) = (p.collect(), q.collect());
                        trail.len() == 2
                            && ((trail[0] == p && trail[1] == q)
                                || (trail[0] == q && trail[1] == p))
                    });
                    if known {
                        continue;
                    }
                    let names: Vec<String> = trail.iter().map(|m| m.join("::")).collect();
                    circles.push(format!("{} -> {}", names.join(" -> "), a.join("::")));
                } else if !seen.contains(y) {
                    seen.push(y.clone());
                    let mut longer = trail.clone();
                    longer.push(y.clone());
                    stack.push((y.clone(), longer));
                }
            }
        }
    }
    circles.sort();
    circles.dedup();
    assert!(
        circles.is_empty(),
        "modules that import each other (move what both need into one of them, or a sibling):\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_circle_checker_sees_what_it_must() {
    let text = "use super::{a, b::{c, d}};\nuse super::super::e::f;\n// [x](crate::g::h)\n";
    let found = written_paths(text);
    let as_strings: Vec<(usize, String)> = found.iter().map(|(n, p)| (*n, p.join("::"))).collect();
    assert_eq!(
        as_strings,
        [
            (0, "g::h".to_string()),
            (1, "a".to_string()),
            (1, "b::c".to_string()),
            (1, "b::d".to_string()),
            (2, "e::f".to_string()),
        ]
    );
}
