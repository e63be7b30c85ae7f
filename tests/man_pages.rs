//! The man pages in `man/` are generated from the same clap definitions as
//! `--help`; this test fails when they are out of date.
//! Regenerate with `UPDATE_MAN=1 cargo test --test man_pages`.

use clap::CommandFactory;
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
