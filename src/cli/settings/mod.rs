//! Every setting of both programs, defined once.
//!
//! A setting is one [`Setting`]: its config-file key (its flag is the same
//! with `-` for `_`: `max_sessions`, `--max-sessions`), what it does, its
//! default, and its [`Kind`] — how a value is parsed, within its bounds,
//! and written back. Everything else comes from that one definition: the
//! flag with its `--help` text (and so the man pages, which clap renders),
//! the key in the config file and its page `resumeproxy.toml(5)`, the
//! default, and the line `resumeproxyd check-config` prints. The relay's
//! settings are in [`relay`], the client's in [`client`], in the order
//! `--help` lists them; as in ripgrep's `flags/defs.rs`, adding a setting
//! is adding one definition there and reading it where it is used.
//!
//! What the command line and a config file give is held, typed, in a
//! [`Given`]; a [`Resolver`] takes for each setting the flag's value, else
//! the file's, else the default: flags win.

pub mod client;
pub mod kinds;
#[cfg(target_os = "linux")]
pub mod relay;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches};
use kinds::Kind;
use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// One setting: a flag, a config-file key, a default and its docs.
pub struct Setting<K: Kind> {
    /// The config file's key.
    pub key: &'static str,
    /// Its flag: the key with `-` for `_` (a test checks), or none.
    pub flag: Flag,
    /// How its values are parsed and written.
    pub kind: K,
    /// What it does: for `--help`, the man pages and `docs/options.md`.
    pub doc: &'static str,
    /// Its value when neither a flag nor the file gives one.
    pub default: Fallback<K::Value>,
    /// Whether a running relay applies a new value on SIGHUP.
    pub reload: bool,
}

/// A setting's flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// `--max-sessions`: the long name, without its dashes.
    Long(&'static str),
    /// `--quiet` and `-q`.
    LongAndShort(&'static str, char),
    /// None: only in the config file (the command line has another way).
    FileOnly,
}

impl Flag {
    /// The long name, without its dashes.
    fn long(self) -> Option<&'static str> {
        match self {
            Flag::Long(long) | Flag::LongAndShort(long, _) => Some(long),
            Flag::FileOnly => None,
        }
    }
}

/// A setting's default.
pub enum Fallback<T> {
    /// This value.
    Is(fn() -> T),
    /// A value that depends on where the program runs, described for the
    /// docs.
    Computed(&'static str, fn() -> T),
}

impl<K: Kind> Setting<K> {
    /// The default value.
    pub fn default_value(&self) -> K::Value {
        match self.default {
            Fallback::Is(value) | Fallback::Computed(_, value) => value(),
        }
    }
}

/// What is held for one setting: a `Vec<K::Value>`, in the order given.
type Stored = Arc<dyn Any + Send + Sync>;

/// A setting of any kind, for what goes through all of them: the command
/// line, the config file, the docs.
pub trait AnySetting: Sync {
    /// The config file's key.
    fn key(&self) -> &'static str;
    /// The long flag, `--max-sessions`, unless the setting is file-only.
    fn flag(&self) -> Option<String>;
    /// What it does.
    fn doc(&self) -> &'static str;
    /// Whether a running relay applies it on SIGHUP.
    fn reloads(&self) -> bool;
    /// What a value looks like in the config file: `DURATION`, `[HOST:PORT, …]`.
    fn form(&self) -> String;
    /// Its bounds, if it has any: `64KiB to 1GiB`.
    fn bounds(&self) -> Option<String>;
    /// The default as `--help` and `docs/options.md` show it (`8MiB`), if they show one.
    fn default_text(&self) -> Option<String>;
    /// The default as the config file writes it (`"8MiB"`), or the
    /// description of a computed one.
    fn default_toml(&self) -> String;
    /// Whether the default is computed where the program runs.
    fn computed_default(&self) -> bool;
    /// The flag's `--help`: the doc, the bounds and the default.
    fn help(&self) -> String;
    /// The flag, for clap.
    fn arg(&self) -> Option<Arg>;
    /// The values given on the command line.
    fn read_matches(&self, matches: &ArgMatches) -> Option<Stored>;
    /// The value given in a config file.
    fn read_toml(&self, value: &toml::Value) -> Result<Stored, String>;
    /// The values given, as flags again (for a command line passed on).
    fn to_args(&self, stored: &Stored) -> Vec<String>;
}

impl<K: Kind> AnySetting for Setting<K> {
    fn key(&self) -> &'static str {
        self.key
    }

    fn flag(&self) -> Option<String> {
        self.flag.long().map(|long| format!("--{long}"))
    }

    fn doc(&self) -> &'static str {
        self.doc
    }

    fn reloads(&self) -> bool {
        self.reload
    }

    fn form(&self) -> String {
        self.kind.form()
    }

    fn bounds(&self) -> Option<String> {
        self.kind.bounds()
    }

    fn default_text(&self) -> Option<String> {
        match self.default {
            Fallback::Computed(described, _) => Some(described.to_owned()),
            Fallback::Is(value) => {
                let value = value();
                self.kind
                    .shows_default(&value)
                    .then(|| plain(&self.kind.to_toml(&value)))
            }
        }
    }

    fn default_toml(&self) -> String {
        match self.default {
            Fallback::Computed(described, _) => described.to_owned(),
            Fallback::Is(value) => self.kind.to_toml(&value()).to_string(),
        }
    }

    fn computed_default(&self) -> bool {
        matches!(self.default, Fallback::Computed(..))
    }

    fn help(&self) -> String {
        let mut help = self.doc.to_owned();
        if let Some(bounds) = self.bounds() {
            help.push_str(&format!(" ({bounds})"));
        }
        if let Some(default) = self.default_text() {
            help.push_str(&format!(" [default: {default}]"));
        }
        help
    }

    fn arg(&self) -> Option<Arg> {
        let mut arg = Arg::new(self.key).long(self.flag.long()?).help(self.help());
        if let Flag::LongAndShort(_, short) = self.flag {
            arg = arg.short(short);
        }
        Some(self.kind.arg(arg))
    }

    fn read_matches(&self, matches: &ArgMatches) -> Option<Stored> {
        // A file-only setting has no flag to ask about.
        self.flag.long()?;
        // Only what the user typed: clap's own defaults (a switch's
        // `false`) are not a value given.
        if matches.value_source(self.key) != Some(ValueSource::CommandLine) {
            return None;
        }
        let values: Vec<K::Value> = matches.get_many(self.key)?.cloned().collect();
        Some(Arc::new(values))
    }

    fn read_toml(&self, value: &toml::Value) -> Result<Stored, String> {
        Ok(Arc::new(vec![self.kind.read_toml(value)?]))
    }

    fn to_args(&self, stored: &Stored) -> Vec<String> {
        let (Some(flag), Some(values)) = (self.flag(), stored.downcast_ref::<Vec<K::Value>>())
        else {
            return Vec::new();
        };
        let mut args = Vec::new();
        for value in values {
            match self.kind.to_toml(value) {
                toml::Value::Boolean(true) => args.push(flag.clone()),
                toml::Value::Boolean(false) => {}
                toml::Value::Array(items) => {
                    for item in items {
                        args.extend([flag.clone(), plain(&item)]);
                    }
                }
                single => args.extend([flag.clone(), plain(&single)]),
            }
        }
        args
    }
}

/// A TOML value as a person types it on a command line: strings without
/// their quotes.
fn plain(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The settings of one program, as a type: what [`Given`] is for.
pub trait Table: 'static {
    /// Every setting, in the order `--help`, the man pages and
    /// `check-config` list them.
    fn all() -> &'static [&'static dyn AnySetting];
}

/// Values given for the settings of table `T`, typed: by flags (clap reads
/// them into it) or by a config file.
pub struct Given<T> {
    values: BTreeMap<&'static str, Stored>,
    table: PhantomData<fn() -> T>,
}

impl<T> Default for Given<T> {
    fn default() -> Self {
        Given {
            values: BTreeMap::new(),
            table: PhantomData,
        }
    }
}

impl<T> Clone for Given<T> {
    fn clone(&self) -> Self {
        Given {
            values: self.values.clone(),
            table: PhantomData,
        }
    }
}

impl<T: Table> fmt::Debug for Given<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.to_args()).finish()
    }
}

impl<T: Table> Given<T> {
    /// The values given for `setting`, in order.
    fn values<K: Kind>(&self, setting: &Setting<K>) -> &[K::Value] {
        self.values
            .get(setting.key)
            .and_then(|stored| stored.downcast_ref::<Vec<K::Value>>())
            .map_or(&[], Vec::as_slice)
    }

    /// The value given for `setting` (the last one; a list, all together).
    pub fn get<K: Kind>(&self, setting: &Setting<K>) -> Option<K::Value> {
        setting.kind.combine(None, self.values(setting))
    }

    /// Gives `value` for `setting`, as one more flag would.
    pub fn set<K: Kind>(&mut self, setting: &Setting<K>, value: K::Value) {
        let mut values = self.values(setting).to_vec();
        values.push(value);
        self.values.insert(setting.key, Arc::new(values));
    }

    /// The values given, as flags again, in the table's order.
    pub fn to_args(&self) -> Vec<String> {
        T::all()
            .iter()
            .filter_map(|setting| Some(setting.to_args(self.values.get(setting.key())?)))
            .flatten()
            .collect()
    }

    /// The values of a config file; an unknown key or a bad value is an
    /// error that names the key: `(key, what is wrong)`.
    pub fn from_toml(file: toml::Table) -> Result<Given<T>, (String, String)> {
        let mut given = Given::default();
        for (key, value) in file {
            let Some(setting) = T::all().iter().find(|setting| setting.key() == key) else {
                let keys: Vec<&str> = T::all().iter().map(|s| s.key()).collect();
                let why = format!("unknown key {key:?} (the keys are {})", keys.join(", "));
                return Err((key, why));
            };
            match setting.read_toml(&value) {
                Ok(stored) => given.values.insert(setting.key(), stored),
                Err(e) => {
                    let why = format!("{key}: {e}");
                    return Err((key, why));
                }
            };
        }
        Ok(given)
    }
}

impl<T: Table> clap::FromArgMatches for Given<T> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = Given::default();
        for setting in T::all() {
            if let Some(stored) = setting.read_matches(matches) {
                given.values.insert(setting.key(), stored);
            }
        }
        Ok(given)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for setting in T::all() {
            if let Some(stored) = setting.read_matches(matches) {
                self.values.insert(setting.key(), stored);
            }
        }
        Ok(())
    }
}

impl<T: Table> clap::Args for Given<T> {
    fn augment_args(command: clap::Command) -> clap::Command {
        T::all()
            .iter()
            .filter_map(|setting| setting.arg())
            .fold(command, clap::Command::arg)
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

/// Picks each setting's value: the flags', else the file's, else the
/// default; and keeps what it picked, as the config file would write it.
pub struct Resolver<'a, T> {
    flags: &'a Given<T>,
    file: Given<T>,
    picked: BTreeMap<&'static str, String>,
}

impl<'a, T: Table> Resolver<'a, T> {
    /// Flags over `file` over the defaults.
    pub fn new(flags: &'a Given<T>, file: Given<T>) -> Resolver<'a, T> {
        Resolver {
            flags,
            file,
            picked: BTreeMap::new(),
        }
    }

    /// The value of `setting`.
    pub fn get<K: Kind>(&mut self, setting: &Setting<K>) -> K::Value {
        self.get_or(setting, None)
    }

    /// The value of `setting`, unless the command line says otherwise in
    /// another way (`-v` for `log_level`): `over` wins.
    pub fn get_or<K: Kind>(&mut self, setting: &Setting<K>, over: Option<K::Value>) -> K::Value {
        let value = over
            .or_else(|| {
                let file = self.file.values(setting).last();
                setting.kind.combine(file, self.flags.values(setting))
            })
            .unwrap_or_else(|| setting.default_value());
        let written = setting.kind.to_toml(&value).to_string();
        self.picked.insert(setting.key, written);
        value
    }

    /// `key = value` lines of what was picked, in the table's order: a
    /// config file that gives the same settings.
    pub fn picked(&self) -> Vec<(&'static str, String)> {
        T::all()
            .iter()
            .filter_map(|s| Some((s.key(), self.picked.get(s.key())?.clone())))
            .collect()
    }
}

// The tests check the relay's side too, which is built on Linux only.
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::client::ClientTable;
    use super::relay::RelayTable;
    use super::*;

    fn every_setting() -> impl Iterator<Item = &'static dyn AnySetting> {
        RelayTable::all().iter().chain(ClientTable::all()).copied()
    }

    #[test]
    fn each_flag_is_its_key_with_dashes() {
        for setting in every_setting() {
            if let Some(flag) = setting.flag() {
                assert_eq!(flag, format!("--{}", setting.key().replace('_', "-")));
            }
        }
    }

    #[test]
    fn each_default_reads_back_as_itself() {
        for setting in every_setting().filter(|s| !s.computed_default()) {
            let text = format!("{} = {}", setting.key(), setting.default_toml());
            let file: toml::Table = toml::from_str(&text).unwrap();
            let value = &file[setting.key()];
            assert!(setting.read_toml(value).is_ok(), "{text}");
            assert!(setting.help().contains(setting.doc()), "{}", setting.key());
        }
    }

    #[test]
    fn given_values_go_back_to_flags() {
        let mut given = Given::<ClientTable>::default();
        given.set(&client::DEAD_AFTER, std::time::Duration::from_millis(1500));
        given.set(&client::QUIET, true);
        assert_eq!(given.to_args(), ["--dead-after", "1500ms", "--quiet"]);
        let mut serve = Given::<RelayTable>::default();
        serve.set(&relay::ALLOW, vec!["a:1".parse().unwrap()]);
        serve.set(&relay::ALLOW, vec!["b:2".parse().unwrap()]);
        assert_eq!(serve.to_args(), ["--allow", "a:1", "--allow", "b:2"]);
        assert_eq!(serve.get(&relay::ALLOW).map(|a| a.len()), Some(2));
    }
}
