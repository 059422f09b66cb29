//! How config values are spelled on a command line: the serde names with `-` for `_`
//! (`swiglu`, `token-choice`, `wide-embedding`), and `name:value` for the variants that carry a
//! value (`same:1`, `schedule:0,2`, `block:0`, `aux-free:0.001`, `input-dependent:120`). Every
//! config enum a command line sets implements `FromStr` and `Display` with these spellings, so a
//! value prints the way it parses.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A unit variant of `T` from its kebab-case name; `what` names the setting in the error.
///
/// # Errors
/// [`Error::Config`] naming the value and listing the valid ones.
pub(crate) fn parse_unit<T: DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.replace('-', "_"))).map_err(|e| {
        let message = e.to_string().replace('_', "-").replace("variant", "value");
        Error::Config(format!("{what}: {message}"))
    })
}

/// The kebab-case name of a unit variant.
pub(crate) fn show_unit<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s.replace('_', "-"),
        _ => String::from("?"),
    }
}

/// A number, naming `what` and the text in the error.
///
/// # Errors
/// [`Error::Config`] for text that is not a number of type `T`.
pub(crate) fn parse_number<T: std::str::FromStr>(what: &str, s: &str) -> Result<T> {
    s.trim().parse().map_err(|_| Error::Config(format!("{what}: '{s}' is not a number")))
}

/// A comma-separated list of block indices (`0,2`).
///
/// # Errors
/// [`Error::Config`] naming the entry that is not an index.
pub(crate) fn parse_list(what: &str, s: &str) -> Result<Vec<usize>> {
    s.split(',').map(|i| parse_number(what, i)).collect()
}

/// `value` or `none` (`None`).
///
/// # Errors
/// [`Error::Config`] for text that is neither a number nor `none`.
pub(crate) fn parse_optional<T: std::str::FromStr>(what: &str, s: &str) -> Result<Option<T>> {
    match s {
        "none" => Ok(None),
        _ => parse_number(what, s).map(Some),
    }
}

/// `value` or `none`.
pub(crate) fn show_optional<T: std::fmt::Display>(value: &Option<T>) -> String {
    value.as_ref().map_or_else(|| "none".to_string(), ToString::to_string)
}

/// `FromStr` and `Display` for a config enum of unit variants, spelled as its kebab-case serde
/// names (`kebab_case_names!(Activation, "activation")`).
macro_rules! kebab_case_names {
    ($type:ty, $what:literal) => {
        impl std::str::FromStr for $type {
            type Err = crate::error::Error;

            fn from_str(s: &str) -> crate::error::Result<Self> {
                crate::names::parse_unit($what, s)
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&crate::names::show_unit(self))
            }
        }
    };
}
pub(crate) use kebab_case_names;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Activation;

    #[test]
    fn names_parse_as_they_print_and_errors_list_the_valid_ones() {
        let err = parse_unit::<Activation>("activation", "tanh").unwrap_err().to_string();
        assert!(err.contains("unknown value `tanh`, expected one of `gelu`, `relu`, `swiglu`"), "{err}");
        assert_eq!(show_unit(&Activation::SwiGlu), "swiglu");
        assert_eq!(parse_list("schedule", "0, 2").unwrap(), vec![0, 2]);
        assert!(parse_list("schedule", "0,x").unwrap_err().to_string().contains("'x' is not a number"));
        assert_eq!(parse_optional::<f64>("capacity factor", "none").unwrap(), None);
        assert_eq!(show_optional(&Some(1.5)), "1.5");
    }
}
