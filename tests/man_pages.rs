//! The man pages in `man/` are generated from the same definitions as
//! `--help` (the clap command lines, whose settings come from
//! `src/cli/settings/`); this test fails when they are out of date.
//! Regenerate with `UPDATE_MAN=1 cargo test --test man_pages`.
//!
//! The option tables of `docs/options.md` and the commented default config
//! in `packaging/` are written by hand: the tests below check that they name
//! every setting with its flag and its default.

use clap::CommandFactory;
use resumeproxy::cli::settings::client::ClientTable;
use resumeproxy::cli::settings::relay::RelayTable;
use resumeproxy::cli::settings::{AnySetting, Table};
use resumeproxy::cli::{ClientCli, RelayCli};
use std::path::Path;

fn render(cmd: clap::Command, section: &str) -> String {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .section(section)
        .render(&mut out)
        .expect("rendering to memory cannot fail");
    String::from_utf8(out).expect("man page is UTF-8")
}

fn check(file: &str, expected: String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man").join(file);
    if std::env::var_os("UPDATE_MAN").is_some() {
        std::fs::write(&path, &expected).expect("writing man page");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == expected,
        "{} is out of date: run `UPDATE_MAN=1 cargo test --test man_pages` and commit it",
        path.display()
    );
}

/// Every subcommand of `parent` gets its own page, `<parent>-<sub>`.
fn check_subcommands(parent: clap::Command, section: &str) {
    let name = parent.get_name().to_owned();
    for sub in parent.get_subcommands() {
        let page = format!("{name}-{}", sub.get_name());
        check(
            &format!("{page}.{section}"),
            render(
                sub.clone()
                    .name(clap::builder::Str::from(page.clone().leak() as &str)),
                section,
            ),
        );
    }
}

#[test]
fn man_pages_match_the_command_line_definitions() {
    check("resumeproxy.1", render(ClientCli::command(), "1"));
    check("resumeproxyd.8", render(RelayCli::command(), "8"));
    check_subcommands(ClientCli::command(), "1");
    check_subcommands(RelayCli::command(), "8");
    check("resumeproxy.toml.5", resumeproxy::cli::config::man_page());
}

fn read(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether `line` names `flag` itself (`--max-sessions`, not
/// `--max-sessions-per-source`).
fn names_flag(line: &str, flag: &str) -> bool {
    line.match_indices(flag).any(|(at, _)| {
        !line[at + flag.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
    })
}

fn every_setting() -> impl Iterator<Item = &'static dyn AnySetting> {
    ClientTable::all().iter().chain(RelayTable::all()).copied()
}

#[test]
fn the_options_tables_give_every_flag_with_its_default() {
    let options = read("docs/options.md");
    let rows: Vec<&str> = options.lines().filter(|l| l.starts_with('|')).collect();
    for setting in every_setting() {
        let Some(flag) = setting.flag() else { continue };
        let named: Vec<&str> = rows
            .iter()
            .copied()
            .filter(|row| names_flag(row, &flag))
            .collect();
        assert!(!named.is_empty(), "docs/options.md's tables lack {flag}");
        if setting.computed_default() {
            continue;
        }
        if let Some(default) = setting.default_text() {
            // "8 MiB" in a table is "8MiB".
            let bare = |text: &str| text.split_whitespace().collect::<String>();
            assert!(
                named.iter().any(|row| bare(row).contains(&bare(&default))),
                "docs/options.md gives {flag} no row with its default {default}: {named:?}"
            );
        }
    }
}

#[test]
fn the_packaged_config_shows_every_relay_key_with_its_default() {
    let config = read("packaging/resumeproxyd.toml");
    for setting in RelayTable::all() {
        let prefix = format!("# {} = ", setting.key());
        let line = config
            .lines()
            .find(|line| line.starts_with(&prefix))
            .unwrap_or_else(|| panic!("packaging/resumeproxyd.toml lacks {prefix:?}"));
        if !setting.computed_default() {
            let value = line[prefix.len()..].split(" #").next().unwrap_or("").trim();
            assert_eq!(value, setting.default_toml(), "{line}");
        }
    }
}
