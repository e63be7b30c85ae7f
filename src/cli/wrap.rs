//! `resumeproxy wrap -- COMMAND …`: one run of ssh, scp, sftp, rsync or git
//! through resumeproxy, without touching ssh_config. Pure: builds the
//! command; the binary runs it.
//!
//! * ssh, scp, sftp: `-o ProxyCommand=…` goes first (a command-line `-o` wins
//!   over ssh_config).
//! * rsync: its remote shell (`-e`/`--rsh`, else `$RSYNC_RSH`, else `ssh`)
//!   gets the `-o`.
//! * git: `GIT_SSH_COMMAND` (or `ssh`) gets the `-o`.

use std::path::Path;

/// A command ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped {
    /// Program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables to set.
    pub env: Vec<(String, String)>,
}

/// Quotes `word` for a POSIX shell if it needs it.
fn sh_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The `ProxyCommand` running `exe` with `link_args`, with `%` escaped for
/// ssh's own expansion and each word quoted for the shell ssh runs it in.
pub fn proxy_command(exe: &str, link_args: &[String]) -> String {
    let mut words: Vec<String> = std::iter::once(exe)
        .chain(link_args.iter().map(String::as_str))
        .map(|w| sh_quote(&w.replace('%', "%%")))
        .collect();
    words.push("%h".into());
    words.push("%p".into());
    words.join(" ")
}

/// Builds the wrapped form of `command` (program first). `env` looks up the
/// caller's environment (`RSYNC_RSH`, `GIT_SSH_COMMAND`).
pub fn wrap(
    exe: &str,
    link_args: &[String],
    command: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Wrapped, String> {
    let (program, rest) = command
        .split_first()
        .ok_or("wrap: no command given (resumeproxy wrap -- ssh HOST …)")?;
    let proxy = proxy_command(exe, link_args);
    let option = format!("ProxyCommand={proxy}");
    let name = Path::new(program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(program);
    let mut wrapped = Wrapped {
        program: program.clone(),
        args: Vec::new(),
        env: Vec::new(),
    };
    match name {
        "ssh" | "scp" | "sftp" | "slogin" => {
            wrapped.args = vec!["-o".into(), option];
            wrapped.args.extend(rest.iter().cloned());
        }
        "rsync" => {
            if option.contains(['"', '\\']) {
                return Err("wrap: the ProxyCommand would contain a quote or backslash, which rsync -e cannot carry".into());
            }
            let with_proxy = |rsh: &str| format!("{rsh} -o \"{option}\"");
            let mut args = Vec::new();
            let mut found = false;
            let mut iter = rest.iter();
            while let Some(arg) = iter.next() {
                if let Some(rsh) = arg.strip_prefix("--rsh=") {
                    args.push(format!("--rsh={}", with_proxy(rsh)));
                    found = true;
                } else if arg == "-e" || arg == "--rsh" {
                    args.push(arg.clone());
                    let rsh = iter.next().ok_or("wrap: rsync's -e needs a value")?;
                    args.push(with_proxy(rsh));
                    found = true;
                } else if let Some(rsh) = arg.strip_prefix("-e").filter(|r| !r.is_empty() && !arg.starts_with("--")) {
                    args.push(format!("-e{}", with_proxy(rsh)));
                    found = true;
                } else {
                    args.push(arg.clone());
                }
            }
            if !found {
                let rsh = env("RSYNC_RSH").unwrap_or_else(|| "ssh".into());
                args.insert(0, with_proxy(&rsh));
                args.insert(0, "-e".into());
            }
            wrapped.args = args;
        }
        "git" => {
            let ssh = env("GIT_SSH_COMMAND").unwrap_or_else(|| "ssh".into());
            wrapped
                .env
                .push(("GIT_SSH_COMMAND".into(), format!("{ssh} -o {}", sh_quote(&option))));
            wrapped.args = rest.to_vec();
        }
        other => {
            return Err(format!(
                "wrap: runs ssh, scp, sftp, rsync or git, not {other:?}; for anything else, set ProxyCommand in ssh_config"
            ))
        }
    }
    Ok(wrapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    const EXE: &str = "/usr/bin/resumeproxy";

    #[test]
    fn ssh_scp_and_sftp_get_an_option_first() {
        let w = wrap(
            EXE,
            &strings(&["--dead-after", "2000ms"]),
            &strings(&["scp", "-r", "a", "h:b"]),
            |_| None,
        )
        .unwrap();
        assert_eq!(w.program, "scp");
        assert_eq!(
            w.args,
            strings(&[
                "-o",
                "ProxyCommand=/usr/bin/resumeproxy --dead-after 2000ms %h %p",
                "-r",
                "a",
                "h:b"
            ])
        );
    }

    #[test]
    fn rsync_gets_it_in_its_remote_shell() {
        let plain = wrap(
            EXE,
            &[],
            &strings(&["rsync", "-a", "src/", "h:dst/"]),
            |_| None,
        )
        .unwrap();
        assert_eq!(
            plain.args,
            strings(&[
                "-e",
                "ssh -o \"ProxyCommand=/usr/bin/resumeproxy %h %p\"",
                "-a",
                "src/",
                "h:dst/"
            ])
        );
        let given = wrap(
            EXE,
            &[],
            &strings(&["rsync", "--rsh=ssh -p 2222", "a", "h:b"]),
            |_| None,
        )
        .unwrap();
        assert_eq!(
            given.args[0],
            "--rsh=ssh -p 2222 -o \"ProxyCommand=/usr/bin/resumeproxy %h %p\""
        );
        let env = wrap(EXE, &[], &strings(&["rsync", "a", "h:b"]), |k| {
            (k == "RSYNC_RSH").then(|| "ssh -C".into())
        })
        .unwrap();
        assert!(env.args[1].starts_with("ssh -C -o "), "{:?}", env.args);
    }

    #[test]
    fn git_gets_it_in_git_ssh_command_and_odd_words_are_quoted() {
        let w = wrap(
            "/opt/my tools/resumeproxy",
            &strings(&["--known-relays", "/tmp/k%1"]),
            &strings(&["git", "fetch"]),
            |_| None,
        )
        .unwrap();
        assert_eq!(w.args, strings(&["fetch"]));
        assert_eq!(w.env.len(), 1);
        assert_eq!(
            w.env[0].1,
            "ssh -o 'ProxyCommand='\\''/opt/my tools/resumeproxy'\\'' --known-relays /tmp/k%%1 %h %p'"
        );
        assert!(wrap(EXE, &[], &strings(&["curl", "x"]), |_| None).is_err());
        assert!(wrap(EXE, &[], &[], |_| None).is_err());
    }
}
