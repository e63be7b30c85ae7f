//! Kinds of values a setting takes: how one is parsed (within its bounds),
//! read from a config file, and written back, as a flag's argument or as
//! the config file writes it.
//!
//! A kind is small plain data (`Size { min, max }`), so one definition
//! carries its bounds to the parser, the error messages and the docs.

use crate::units::{
    format_duration_exact, format_size_exact, parse_duration_within, parse_size_within,
};
use clap::builder::{EnumValueParser, ValueParser};
use clap::{Arg, ArgAction, ValueEnum};
use std::fmt::Display;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// How the values of a setting are parsed and written.
pub trait Kind: Copy + Send + Sync + 'static {
    /// The parsed value.
    type Value: Clone + Send + Sync + 'static;

    /// What a value looks like in `--help`: `N`, `SIZE`, `DURATION`.
    fn value_name(&self) -> &'static str;

    /// What a value looks like in the config file, for its man page.
    fn form(&self) -> String {
        self.value_name().to_owned()
    }

    /// Parses a flag's argument, or a config file's string.
    fn parse(&self, text: &str) -> Result<Self::Value, String>;

    /// The value as the config file writes it.
    fn to_toml(&self, value: &Self::Value) -> toml::Value;

    /// Reads a value from the config file.
    fn read_toml(&self, value: &toml::Value) -> Result<Self::Value, String> {
        match value.as_str() {
            Some(text) => self.parse(text),
            None => Err(expected("a string", value)),
        }
    }

    /// The bounds, for the docs: `64KiB to 1GiB`.
    fn bounds(&self) -> Option<String> {
        None
    }

    /// Whether `--help` shows this default (an empty list or an unset
    /// switch says nothing).
    fn shows_default(&self, _value: &Self::Value) -> bool {
        true
    }

    /// The flag's argument: how clap reads it.
    fn arg(&self, arg: Arg) -> Arg {
        let kind = *self;
        arg.value_name(self.value_name())
            .action(ArgAction::Set)
            .value_parser(ValueParser::new(move |text: &str| kind.parse(text)))
    }

    /// The value from the config file's and the flags' (in the order
    /// given): the last flag wins, else the file.
    fn combine(&self, file: Option<&Self::Value>, flags: &[Self::Value]) -> Option<Self::Value> {
        flags.last().or(file).cloned()
    }
}

/// "expected an integer, not a string".
fn expected(what: &str, value: &toml::Value) -> String {
    format!("expected {what}, not {}", value.type_str())
}

/// A whole number of things, at least `min` (and, as before, at most
/// `u32::MAX`).
#[derive(Debug, Clone, Copy)]
pub struct Count {
    /// The least allowed.
    pub min: usize,
}

impl Kind for Count {
    type Value = usize;

    fn value_name(&self) -> &'static str {
        "N"
    }

    fn parse(&self, text: &str) -> Result<usize, String> {
        let n = text
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("{text:?} is not a whole number"))?;
        let n = usize::try_from(n).map_err(|_| format!("{n} is too large"))?;
        if n < self.min {
            return Err(format!("must be at least {}", self.min));
        }
        Ok(n)
    }

    fn to_toml(&self, value: &usize) -> toml::Value {
        toml::Value::Integer(i64::try_from(*value).unwrap_or(i64::MAX))
    }

    fn read_toml(&self, value: &toml::Value) -> Result<usize, String> {
        match value.as_integer() {
            Some(n) => self.parse(&n.to_string()),
            None => Err(expected("a whole number", value)),
        }
    }
}

/// A TCP or UDP port.
#[derive(Debug, Clone, Copy)]
pub struct Port;

impl Kind for Port {
    type Value = u16;

    fn value_name(&self) -> &'static str {
        "PORT"
    }

    fn parse(&self, text: &str) -> Result<u16, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a port (0 to 65535)"))
    }

    fn to_toml(&self, value: &u16) -> toml::Value {
        toml::Value::Integer(i64::from(*value))
    }

    fn read_toml(&self, value: &toml::Value) -> Result<u16, String> {
        match value.as_integer() {
            Some(n) => self.parse(&n.to_string()),
            None => Err(expected("a port number", value)),
        }
    }
}

/// A byte count between `min` and `max`, written like `8MiB`.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// The least allowed.
    pub min: u64,
    /// The most allowed.
    pub max: u64,
}

impl Kind for Size {
    type Value = usize;

    fn value_name(&self) -> &'static str {
        "SIZE"
    }

    fn parse(&self, text: &str) -> Result<usize, String> {
        let n = parse_size_within(text, self.min, self.max)?;
        usize::try_from(n).map_err(|_| format!("{text} is too large for this machine"))
    }

    fn to_toml(&self, value: &usize) -> toml::Value {
        toml::Value::String(format_size_exact(*value as u64))
    }

    fn bounds(&self) -> Option<String> {
        Some(format!(
            "{} to {}",
            format_size_exact(self.min),
            format_size_exact(self.max)
        ))
    }
}

/// A duration between `min` and `max`, written like `90s`, `12h`.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    /// The shortest allowed.
    pub min: Duration,
    /// The longest allowed.
    pub max: Duration,
}

impl Span {
    /// Any duration.
    pub const ANY: Span = Span {
        min: Duration::ZERO,
        max: Duration::MAX,
    };
}

impl Kind for Span {
    type Value = Duration;

    fn value_name(&self) -> &'static str {
        "DURATION"
    }

    fn parse(&self, text: &str) -> Result<Duration, String> {
        parse_duration_within(text, self.min, self.max)
    }

    fn to_toml(&self, value: &Duration) -> toml::Value {
        toml::Value::String(format_duration_exact(*value))
    }

    fn bounds(&self) -> Option<String> {
        (self.min != Span::ANY.min || self.max != Span::ANY.max).then(|| {
            format!(
                "{} to {}",
                format_duration_exact(self.min),
                format_duration_exact(self.max)
            )
        })
    }
}

/// A value written as its own text (`FromStr` and `Display`): an address,
/// `host:port`.
pub struct Parsed<T> {
    value_name: &'static str,
    value: PhantomData<fn() -> T>,
}

impl<T> Parsed<T> {
    /// Values shown as `value_name` in `--help`.
    pub const fn new(value_name: &'static str) -> Parsed<T> {
        Parsed {
            value_name,
            value: PhantomData,
        }
    }
}

impl<T> Clone for Parsed<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Parsed<T> {}

impl<T> Kind for Parsed<T>
where
    T: FromStr + Display + Clone + Send + Sync + 'static,
    T::Err: Display,
{
    type Value = T;

    fn value_name(&self) -> &'static str {
        self.value_name
    }

    fn parse(&self, text: &str) -> Result<T, String> {
        text.parse().map_err(|e: T::Err| {
            let e = e.to_string();
            if e.contains(text) {
                e
            } else {
                format!("{text:?}: {e}")
            }
        })
    }

    fn to_toml(&self, value: &T) -> toml::Value {
        toml::Value::String(value.to_string())
    }
}

/// A file's path.
#[derive(Debug, Clone, Copy)]
pub struct FilePath {
    /// `PATH` or `FILE`.
    pub value_name: &'static str,
}

impl Kind for FilePath {
    type Value = PathBuf;

    fn value_name(&self) -> &'static str {
        self.value_name
    }

    fn parse(&self, text: &str) -> Result<PathBuf, String> {
        Ok(PathBuf::from(text))
    }

    fn to_toml(&self, value: &PathBuf) -> toml::Value {
        toml::Value::String(value.to_string_lossy().into_owned())
    }

    fn arg(&self, arg: Arg) -> Arg {
        // Any path the system allows, not only UTF-8 ones.
        arg.value_name(self.value_name)
            .action(ArgAction::Set)
            .value_parser(clap::value_parser!(PathBuf))
    }
}

/// One of an enum's values, by name (`tcp`, `quic`, `auto`); `--help` lists
/// them with their docs.
pub struct Choice<E> {
    value_name: &'static str,
    value: PhantomData<fn() -> E>,
}

impl<E> Choice<E> {
    /// Values shown as `value_name` in `--help`.
    pub const fn new(value_name: &'static str) -> Choice<E> {
        Choice {
            value_name,
            value: PhantomData,
        }
    }
}

impl<E> Clone for Choice<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for Choice<E> {}

impl<E: ValueEnum + Clone + Send + Sync + 'static> Kind for Choice<E> {
    type Value = E;

    fn value_name(&self) -> &'static str {
        self.value_name
    }

    fn form(&self) -> String {
        names::<E>().join("|")
    }

    fn parse(&self, text: &str) -> Result<E, String> {
        E::from_str(text, false)
            .map_err(|_| format!("{text:?} is not one of {}", names::<E>().join(", ")))
    }

    fn to_toml(&self, value: &E) -> toml::Value {
        let name = value
            .to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default();
        toml::Value::String(name)
    }

    fn arg(&self, arg: Arg) -> Arg {
        arg.value_name(self.value_name)
            .action(ArgAction::Set)
            .value_parser(EnumValueParser::<E>::new())
    }
}

/// The names of an enum's values.
fn names<E: ValueEnum>() -> Vec<String> {
    E::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value())
        .map(|v| v.get_name().to_owned())
        .collect()
}

/// One of a few words (`info`, `debug`).
#[derive(Debug, Clone, Copy)]
pub struct Words {
    /// What a value looks like in the docs.
    pub value_name: &'static str,
    /// The words allowed.
    pub words: &'static [&'static str],
}

impl Kind for Words {
    type Value = String;

    fn value_name(&self) -> &'static str {
        self.value_name
    }

    fn form(&self) -> String {
        self.words.join("|")
    }

    fn parse(&self, text: &str) -> Result<String, String> {
        if self.words.contains(&text) {
            Ok(text.to_owned())
        } else {
            Err(format!("{text:?} is not one of {}", self.words.join(", ")))
        }
    }

    fn to_toml(&self, value: &String) -> toml::Value {
        toml::Value::String(value.clone())
    }
}

/// On or off: a flag without an argument, `true` or `false` in the file.
#[derive(Debug, Clone, Copy)]
pub struct Switch;

impl Kind for Switch {
    type Value = bool;

    fn value_name(&self) -> &'static str {
        "BOOL"
    }

    fn parse(&self, text: &str) -> Result<bool, String> {
        text.parse()
            .map_err(|_| format!("{text:?} is neither true nor false"))
    }

    fn to_toml(&self, value: &bool) -> toml::Value {
        toml::Value::Boolean(*value)
    }

    fn read_toml(&self, value: &toml::Value) -> Result<bool, String> {
        value
            .as_bool()
            .ok_or_else(|| expected("true or false", value))
    }

    fn shows_default(&self, _value: &bool) -> bool {
        false
    }

    fn arg(&self, arg: Arg) -> Arg {
        arg.action(ArgAction::SetTrue)
    }
}

/// A value of kind `K`, or none: written as the empty string (`""`), which
/// is also the default when the setting is off.
#[derive(Debug, Clone, Copy)]
pub struct Optional<K>(pub K);

impl<K: Kind> Kind for Optional<K> {
    type Value = Option<K::Value>;

    fn value_name(&self) -> &'static str {
        self.0.value_name()
    }

    fn form(&self) -> String {
        format!("{} or \"\"", self.0.form())
    }

    fn parse(&self, text: &str) -> Result<Option<K::Value>, String> {
        if text.trim().is_empty() {
            Ok(None)
        } else {
            self.0.parse(text).map(Some)
        }
    }

    fn to_toml(&self, value: &Option<K::Value>) -> toml::Value {
        match value {
            Some(value) => self.0.to_toml(value),
            None => toml::Value::String(String::new()),
        }
    }

    fn read_toml(&self, value: &toml::Value) -> Result<Option<K::Value>, String> {
        match value.as_str() {
            Some(text) if text.trim().is_empty() => Ok(None),
            _ => self.0.read_toml(value).map(Some),
        }
    }

    fn bounds(&self) -> Option<String> {
        self.0.bounds()
    }

    fn shows_default(&self, value: &Option<K::Value>) -> bool {
        value.is_some()
    }
}

/// Any number of values of kind `K`: a repeatable flag, an array in the
/// file. The flags add to the file's list.
#[derive(Debug, Clone, Copy)]
pub struct List<K>(pub K);

impl<K: Kind> Kind for List<K> {
    type Value = Vec<K::Value>;

    fn value_name(&self) -> &'static str {
        self.0.value_name()
    }

    fn form(&self) -> String {
        format!("[{}, …]", self.0.form())
    }

    fn parse(&self, text: &str) -> Result<Vec<K::Value>, String> {
        Ok(vec![self.0.parse(text)?])
    }

    fn to_toml(&self, value: &Vec<K::Value>) -> toml::Value {
        toml::Value::Array(value.iter().map(|v| self.0.to_toml(v)).collect())
    }

    fn read_toml(&self, value: &toml::Value) -> Result<Vec<K::Value>, String> {
        match value.as_array() {
            Some(items) => items.iter().map(|item| self.0.read_toml(item)).collect(),
            None => Err(expected("a list", value)),
        }
    }

    fn bounds(&self) -> Option<String> {
        self.0.bounds()
    }

    fn shows_default(&self, value: &Vec<K::Value>) -> bool {
        !value.is_empty()
    }

    fn arg(&self, arg: Arg) -> Arg {
        let kind = *self;
        arg.value_name(self.value_name())
            .action(ArgAction::Append)
            .value_parser(ValueParser::new(move |text: &str| kind.parse(text)))
    }

    fn combine(
        &self,
        file: Option<&Vec<K::Value>>,
        flags: &[Vec<K::Value>],
    ) -> Option<Vec<K::Value>> {
        if file.is_none() && flags.is_empty() {
            return None;
        }
        Some(file.into_iter().chain(flags).flatten().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_and_shown() {
        let size = Size {
            min: 64 << 10,
            max: 1 << 30,
        };
        assert_eq!(size.parse("8MiB"), Ok(8 << 20));
        assert!(size.parse("1K").is_err());
        assert_eq!(size.bounds().as_deref(), Some("64KiB to 1GiB"));
        assert_eq!(size.to_toml(&(8 << 20)).to_string(), "\"8MiB\"");
        assert_eq!(Span::ANY.bounds(), None);
        let count = Count { min: 1 };
        assert_eq!(count.parse("0"), Err("must be at least 1".into()));
        assert_eq!(count.read_toml(&toml::Value::Integer(3)), Ok(3));
        assert!(count.read_toml(&toml::Value::String("3".into())).is_err());
        assert!(count.read_toml(&toml::Value::Integer(-1)).is_err());
    }

    #[test]
    fn lists_add_the_flags_to_the_file() {
        let list = List(Port);
        let file = vec![1];
        assert_eq!(
            list.combine(Some(&file), &[vec![2], vec![3]]),
            Some(vec![1, 2, 3])
        );
        assert_eq!(list.combine(None, &[]), None);
        assert_eq!(Port.combine(Some(&1), &[2, 3]), Some(3));
        assert_eq!(list.to_toml(&vec![]).to_string(), "[]");
    }

    #[test]
    fn optional_values_are_empty_when_off() {
        let optional = Optional(Port);
        assert_eq!(optional.parse(""), Ok(None));
        assert_eq!(optional.parse("7"), Ok(Some(7)));
        assert_eq!(optional.to_toml(&None).to_string(), "\"\"");
        assert_eq!(optional.read_toml(&toml::Value::Integer(7)), Ok(Some(7)));
        assert_eq!(
            optional.read_toml(&toml::Value::String(String::new())),
            Ok(None)
        );
        assert!(!optional.shows_default(&None));
    }
}
