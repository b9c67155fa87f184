//! Parsing of `key=value,key=value` option strings, as taken by `--cpus`, `--disk`, `--net` and
//! the other device flags.
//!
//! Syntax:
//! - items are separated by commas; empty items (`a=1,,b=2`, a trailing comma) are ignored;
//! - each item is `key=value`; the key is everything before the first `=` (surrounding blanks
//!   are dropped), the value everything after it;
//! - double quotes protect commas and `=` inside a value and are removed
//!   (`path="/a,b",access=rw` gives `path` = `/a,b`); there is no escape character;
//! - a value written as a bracketed list (`fd=[3,4]`) keeps its commas; the brackets stay in the
//!   value and [`Options::get_list`] splits it.
//!
//! Errors name the offending key and say what is wrong; the caller (for example
//! [`crate::VmConfig::from_params`]) adds the flag.

use std::fmt::Display;
use std::str::FromStr;

use thiserror::Error;

/// What is wrong with one option string.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum OptionError {
    /// A key the option does not know.
    #[error("{key}: unknown key (accepted keys: {accepted})")]
    UnknownKey {
        /// The key as written.
        key: String,
        /// The accepted keys, comma separated.
        accepted: String,
    },
    /// The same key given twice.
    #[error("{key}: given more than once (give each key once)")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
    /// An item without `=`.
    #[error("{item}: missing `=` (write key=value)")]
    MissingEquals {
        /// The item as written.
        item: String,
    },
    /// An item with nothing before its `=`.
    #[error("{item}: missing key before `=` (write key=value)")]
    EmptyKey {
        /// The item as written.
        item: String,
    },
    /// A double quote that is never closed.
    #[error("{key}: unterminated quote (add the closing `\"`)")]
    UnterminatedQuote {
        /// The key whose value holds the quote.
        key: String,
    },
    /// A `[` that is never closed, or a `]` that closes nothing.
    #[error("{key}: unbalanced brackets in list (write [a,b,...])")]
    UnbalancedBracket {
        /// The key whose value holds the bracket.
        key: String,
    },
    /// A key that must be given.
    #[error("{key}: required (add {key}=...)")]
    MissingKey {
        /// The missing key.
        key: String,
    },
    /// A value that cannot be used for its key.
    #[error("{key}={value}: {reason}")]
    InvalidValue {
        /// The key.
        key: String,
        /// The value as given (quotes removed).
        value: String,
        /// What is wrong, and what is accepted.
        reason: String,
    },
    /// Keys that cannot be used together, or an option string that is wrong as a whole.
    #[error("{0}")]
    Invalid(String),
}

impl OptionError {
    /// An [`OptionError::InvalidValue`] for `key=value`.
    pub fn invalid(key: &str, value: &str, reason: impl Display) -> Self {
        OptionError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// What is wrong with a single value, independent of its key.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ValueError {
    /// Not one of on, off, true, false.
    #[error("not a boolean (use on or off)")]
    NotABoolean,
    /// Not a decimal integer.
    #[error("not a number")]
    NotANumber,
    /// An integer outside the range of its type.
    #[error("out of range (must be between {min} and {max})")]
    OutOfRange {
        /// Smallest accepted value.
        min: i128,
        /// Largest accepted value.
        max: i128,
    },
    /// A size that is not digits with an optional K, M, G or T suffix.
    #[error("not a size (use bytes, or a number followed by K, M, G or T, e.g. 512M)")]
    NotASize,
    /// A size that does not fit in 64 bits.
    #[error("too large")]
    TooLarge,
    /// A value that must not be zero.
    #[error("must not be zero")]
    Zero,
    /// An empty value where one is needed.
    #[error("empty value")]
    Empty,
    /// A list not written as `[a,b,...]` or a single item.
    #[error("not a list (write [a,b,...])")]
    NotAList,
}

/// Parses `on`, `off`, `true` or `false`.
pub fn parse_bool(value: &str) -> Result<bool, ValueError> {
    match value {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(ValueError::NotABoolean),
    }
}

/// Integer types that [`parse_int`] can produce.
pub trait Integer: Copy + TryFrom<i128> {
    /// Smallest value of the type.
    const MIN_VALUE: i128;
    /// Largest value of the type.
    const MAX_VALUE: i128;
}

macro_rules! integer {
    ($($t:ty),*) => {$(
        impl Integer for $t {
            const MIN_VALUE: i128 = <$t>::MIN as i128;
            const MAX_VALUE: i128 = <$t>::MAX as i128;
        }
    )*};
}
integer!(u8, u16, u32, u64, usize, i8, i16, i32, i64);

/// Parses a decimal integer (an optional `-` then digits) that fits in `T`.
pub fn parse_int<T: Integer>(value: &str) -> Result<T, ValueError> {
    let digits = value.strip_prefix('-').unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueError::NotANumber);
    }
    let out_of_range = ValueError::OutOfRange {
        min: T::MIN_VALUE,
        max: T::MAX_VALUE,
    };
    let wide = i128::from_str(value).map_err(|_| out_of_range.clone())?;
    T::try_from(wide).map_err(|_| out_of_range)
}

/// Parses a size in bytes: digits with an optional suffix `K`, `M`, `G` or `T` (binary
/// multiples: `1K` = 1024; lower case accepted too). Zero is accepted; see
/// [`parse_nonzero_size`].
pub fn parse_size(value: &str) -> Result<u64, ValueError> {
    let (digits, shift) = match value.as_bytes().last() {
        Some(b'K' | b'k') => (&value[..value.len() - 1], 10),
        Some(b'M' | b'm') => (&value[..value.len() - 1], 20),
        Some(b'G' | b'g') => (&value[..value.len() - 1], 30),
        Some(b'T' | b't') => (&value[..value.len() - 1], 40),
        Some(_) => (value, 0),
        None => return Err(ValueError::Empty),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueError::NotASize);
    }
    let number = u64::from_str(digits).map_err(|_| ValueError::TooLarge)?;
    number
        .checked_mul(1u64 << shift)
        .ok_or(ValueError::TooLarge)
}

/// [`parse_size`] that also rejects zero.
pub fn parse_nonzero_size(value: &str) -> Result<u64, ValueError> {
    match parse_size(value)? {
        0 => Err(ValueError::Zero),
        size => Ok(size),
    }
}

/// Splits a list value: `[a,b,c]` or a single item `a`. Blanks around items are dropped; an
/// empty list `[]` gives no items.
pub fn split_list(value: &str) -> Result<Vec<&str>, ValueError> {
    let inner = match value.strip_prefix('[') {
        Some(rest) => rest.strip_suffix(']').ok_or(ValueError::NotAList)?,
        None => value,
    };
    if inner.contains(['[', ']']) {
        return Err(ValueError::NotAList);
    }
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    Ok(inner.split(',').map(str::trim).collect())
}

/// A parser for one kind of option string: it knows which keys are accepted.
#[derive(Clone, Copy, Debug)]
pub struct OptionParser {
    accepted: &'static [&'static str],
}

impl OptionParser {
    /// A parser that accepts exactly the keys in `accepted`.
    pub const fn new(accepted: &'static [&'static str]) -> Self {
        OptionParser { accepted }
    }

    /// The accepted keys.
    pub fn accepted(&self) -> &'static [&'static str] {
        self.accepted
    }

    /// Splits `input` into its `key=value` pairs, checking that each key is accepted and given
    /// once.
    pub fn parse(&self, input: &str) -> Result<Options, OptionError> {
        let mut entries: Vec<(String, String)> = Vec::new();
        for (key, value) in split_items(input)? {
            if !self.accepted.contains(&key.as_str()) {
                return Err(OptionError::UnknownKey {
                    key,
                    accepted: self.accepted.join(", "),
                });
            }
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(OptionError::DuplicateKey { key });
            }
            entries.push((key, value));
        }
        Ok(Options { entries })
    }
}

/// Splits an option string into `(key, value)` pairs, removing quotes from values.
fn split_items(input: &str) -> Result<Vec<(String, String)>, OptionError> {
    let mut items = Vec::new();
    let mut chars = input.chars().peekable();
    while chars.peek().is_some() {
        // One item: up to a comma outside quotes and brackets.
        let mut raw = String::new();
        let mut key: Option<String> = None;
        let mut value = String::new();
        let mut in_quote = false;
        let mut depth: u32 = 0;
        let mut balanced = true;
        for c in chars.by_ref() {
            if c == ',' && !in_quote && depth == 0 {
                break;
            }
            raw.push(c);
            match key {
                None => {
                    if c == '=' {
                        key = Some(raw[..raw.len() - 1].trim().to_string());
                    }
                }
                Some(_) => match c {
                    '"' => in_quote = !in_quote,
                    '[' if !in_quote => {
                        depth += 1;
                        value.push(c);
                    }
                    ']' if !in_quote => {
                        if depth == 0 {
                            balanced = false;
                        } else {
                            depth -= 1;
                        }
                        value.push(c);
                    }
                    _ => value.push(c),
                },
            }
        }
        if raw.trim().is_empty() {
            continue;
        }
        let Some(key) = key else {
            return Err(OptionError::MissingEquals {
                item: raw.trim().to_string(),
            });
        };
        if key.is_empty() {
            return Err(OptionError::EmptyKey {
                item: raw.trim().to_string(),
            });
        }
        if in_quote {
            return Err(OptionError::UnterminatedQuote { key });
        }
        if depth != 0 || !balanced {
            return Err(OptionError::UnbalancedBracket { key });
        }
        items.push((key, value));
    }
    Ok(items)
}

/// The pairs of one parsed option string, with typed getters. Every getter returns `Ok(None)`
/// for a key that was not given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    entries: Vec<(String, String)>,
}

impl Options {
    /// The raw value of `key` (quotes removed).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `key` was given.
    pub fn is_set(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Whether no key at all was given.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys given, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// The value of `key`, which must not be empty when given.
    pub fn get_nonempty(&self, key: &str) -> Result<Option<&str>, OptionError> {
        match self.get(key) {
            Some("") => Err(OptionError::invalid(key, "", ValueError::Empty)),
            other => Ok(other),
        }
    }

    /// The value of `key`, treating an empty value as not given.
    pub fn get_or_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// The value of a key that must be given and not be empty.
    pub fn require(&self, key: &str) -> Result<&str, OptionError> {
        self.get_nonempty(key)?
            .ok_or_else(|| OptionError::MissingKey {
                key: key.to_string(),
            })
    }

    /// `key` as a boolean (`on`/`off`/`true`/`false`).
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, OptionError> {
        self.convert(key, parse_bool)
    }

    /// `key` as an integer of type `T`.
    pub fn get_int<T: Integer>(&self, key: &str) -> Result<Option<T>, OptionError> {
        self.convert(key, parse_int::<T>)
    }

    /// `key` as a size in bytes (see [`parse_size`]).
    pub fn get_size(&self, key: &str) -> Result<Option<u64>, OptionError> {
        self.convert(key, parse_size)
    }

    /// `key` as a list of integers: `[a,b,...]` or a single `a`; an empty list is an error.
    pub fn get_list<T: Integer>(&self, key: &str) -> Result<Option<Vec<T>>, OptionError> {
        self.convert(key, |value| {
            let items = split_list(value)?;
            if items.is_empty() {
                return Err(ValueError::Empty);
            }
            items.into_iter().map(parse_int::<T>).collect()
        })
    }

    /// `key` converted by `f`, whose error becomes [`OptionError::InvalidValue`].
    pub fn convert<T, E: Display>(
        &self,
        key: &str,
        f: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, OptionError> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => f(value)
                .map(Some)
                .map_err(|e| OptionError::invalid(key, value, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: OptionParser = OptionParser::new(&["path", "access", "fd", "n", "size"]);

    #[test]
    fn splits_plain_pairs() {
        let o = P.parse("path=/a,access=rw").unwrap();
        assert_eq!(o.get("path"), Some("/a"));
        assert_eq!(o.get("access"), Some("rw"));
        assert_eq!(o.get("fd"), None);
        assert_eq!(o.keys().collect::<Vec<_>>(), ["path", "access"]);
    }

    #[test]
    fn empty_input_and_empty_items() {
        assert!(P.parse("").unwrap().is_empty());
        let o = P.parse("path=/a,,access=r,").unwrap();
        assert_eq!(o.get("access"), Some("r"));
        assert!(P.parse(" , ").unwrap().is_empty());
    }

    #[test]
    fn blanks_around_keys_are_dropped() {
        let o = P.parse("path=/a, access=r").unwrap();
        assert_eq!(o.get("access"), Some("r"));
    }

    #[test]
    fn quoted_values_keep_commas_and_equals() {
        let o = P.parse("path=\"/a,b=c\",access=rw").unwrap();
        assert_eq!(o.get("path"), Some("/a,b=c"));
        assert_eq!(o.get("access"), Some("rw"));
        let o = P.parse("path=/x\"y,z\"w").unwrap();
        assert_eq!(o.get("path"), Some("/xy,zw"));
        let o = P.parse("path=\"\"").unwrap();
        assert_eq!(o.get("path"), Some(""));
    }

    #[test]
    fn value_may_contain_equals_unquoted() {
        let o = P.parse("path=a=b").unwrap();
        assert_eq!(o.get("path"), Some("a=b"));
    }

    #[test]
    fn bracketed_lists_keep_commas() {
        let o = P.parse("fd=[3,4],n=2").unwrap();
        assert_eq!(o.get("fd"), Some("[3,4]"));
        assert_eq!(o.get_list::<i32>("fd").unwrap(), Some(vec![3, 4]));
        assert_eq!(o.get_int::<u8>("n").unwrap(), Some(2));
        let o = P.parse("fd=5").unwrap();
        assert_eq!(o.get_list::<i32>("fd").unwrap(), Some(vec![5]));
        let o = P.parse("fd=[ 7 , 8 ]").unwrap();
        assert_eq!(o.get_list::<i32>("fd").unwrap(), Some(vec![7, 8]));
    }

    #[test]
    fn bad_lists() {
        let o = P.parse("fd=[]").unwrap();
        assert_eq!(
            o.get_list::<i32>("fd").unwrap_err().to_string(),
            "fd=[]: empty value"
        );
        let o = P.parse("fd=[3,x]").unwrap();
        assert_eq!(
            o.get_list::<i32>("fd").unwrap_err().to_string(),
            "fd=[3,x]: not a number"
        );
        let o = P.parse("fd=[[3]]").unwrap();
        assert!(o.get_list::<i32>("fd").is_err());
        let o = P.parse("fd=[3]x").unwrap();
        assert!(o.get_list::<i32>("fd").is_err());
    }

    #[test]
    fn unbalanced_brackets() {
        assert_eq!(
            P.parse("fd=[3,4").unwrap_err(),
            OptionError::UnbalancedBracket { key: "fd".into() }
        );
        assert_eq!(
            P.parse("fd=3],n=1").unwrap_err(),
            OptionError::UnbalancedBracket { key: "fd".into() }
        );
        // Brackets inside quotes are plain characters.
        let o = P.parse("path=\"[a\"").unwrap();
        assert_eq!(o.get("path"), Some("[a"));
    }

    #[test]
    fn unknown_key_lists_accepted_keys() {
        let err = P.parse("path=/a,bogus=1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "bogus: unknown key (accepted keys: path, access, fd, n, size)"
        );
    }

    #[test]
    fn duplicate_key() {
        let err = P.parse("n=1,path=/a,n=2").unwrap_err();
        assert_eq!(err, OptionError::DuplicateKey { key: "n".into() });
        assert!(err.to_string().starts_with("n: given more than once"));
    }

    #[test]
    fn missing_equals() {
        let err = P.parse("path=/a,access").unwrap_err();
        assert_eq!(err.to_string(), "access: missing `=` (write key=value)");
    }

    #[test]
    fn empty_key() {
        let err = P.parse("=3").unwrap_err();
        assert_eq!(err, OptionError::EmptyKey { item: "=3".into() });
    }

    #[test]
    fn unterminated_quote_names_key() {
        let err = P.parse("access=r,path=\"/a,b").unwrap_err();
        assert_eq!(err, OptionError::UnterminatedQuote { key: "path".into() });
        assert!(err.to_string().contains("path: unterminated quote"));
    }

    #[test]
    fn booleans() {
        for (s, b) in [
            ("on", true),
            ("true", true),
            ("off", false),
            ("false", false),
        ] {
            assert_eq!(parse_bool(s), Ok(b));
        }
        for s in ["", "yes", "ON", "1"] {
            assert_eq!(parse_bool(s), Err(ValueError::NotABoolean));
        }
        let o = P.parse("n=maybe").unwrap();
        assert_eq!(
            o.get_bool("n").unwrap_err().to_string(),
            "n=maybe: not a boolean (use on or off)"
        );
    }

    #[test]
    fn integers() {
        assert_eq!(parse_int::<u8>("0"), Ok(0));
        assert_eq!(parse_int::<u8>("255"), Ok(255));
        assert_eq!(parse_int::<i32>("-3"), Ok(-3));
        assert_eq!(
            parse_int::<u8>("256"),
            Err(ValueError::OutOfRange { min: 0, max: 255 })
        );
        assert_eq!(
            parse_int::<u8>("-1"),
            Err(ValueError::OutOfRange { min: 0, max: 255 })
        );
        for s in ["", "-", "abc", "1.5", "+1", " 1", "0x10"] {
            assert_eq!(parse_int::<u32>(s), Err(ValueError::NotANumber), "{s}");
        }
        assert!(matches!(
            parse_int::<u64>("99999999999999999999999999999999999999999999"),
            Err(ValueError::OutOfRange { .. })
        ));
        let o = P.parse("n=abc").unwrap();
        assert_eq!(
            o.get_int::<u8>("n").unwrap_err().to_string(),
            "n=abc: not a number"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("16777215T"), Ok(16777215 << 40));
        assert_eq!(parse_size("16777216T"), Err(ValueError::TooLarge));
        assert_eq!(
            parse_size("99999999999999999999"),
            Err(ValueError::TooLarge)
        );
        for s in ["M", "1.5G", "1GB", "1 G", "-1", "abc", "1KM"] {
            assert_eq!(parse_size(s), Err(ValueError::NotASize), "{s}");
        }
        assert_eq!(parse_size(""), Err(ValueError::Empty));
        assert_eq!(parse_nonzero_size("0M"), Err(ValueError::Zero));
        assert_eq!(parse_nonzero_size("1M"), Ok(1 << 20));
        let o = P.parse("size=lots").unwrap();
        assert!(o
            .get_size("size")
            .unwrap_err()
            .to_string()
            .starts_with("size=lots: not a size"));
    }

    #[test]
    fn require_and_nonempty() {
        let o = P.parse("path=,access=r").unwrap();
        assert_eq!(
            o.require("path").unwrap_err().to_string(),
            "path=: empty value"
        );
        assert_eq!(
            o.require("fd").unwrap_err().to_string(),
            "fd: required (add fd=...)"
        );
        assert_eq!(o.require("access"), Ok("r"));
        assert_eq!(o.get_or_empty("path"), None);
        assert_eq!(o.get_or_empty("access"), Some("r"));
        assert!(o.is_set("path"));
    }

    #[test]
    fn split_list_forms() {
        assert_eq!(split_list("[1,2]"), Ok(vec!["1", "2"]));
        assert_eq!(split_list("1"), Ok(vec!["1"]));
        assert_eq!(split_list("[]"), Ok(vec![]));
        assert_eq!(split_list("[1"), Err(ValueError::NotAList));
    }
}
