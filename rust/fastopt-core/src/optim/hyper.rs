//! Typed hyperparameters: each optimizer declares its struct once with [`hyper!`], which
//! gives the field names and a strict constructor from `(name, value)` pairs (an unknown or
//! missing name is an [`Error::Type`], reported when the configuration is built, not when it
//! steps).

use crate::Error;

/// A hyperparameter's type: numbers as given, flags as `value != 0`.
pub trait HyperValue: Sized {
    fn from_number(v: f64) -> Self;
}

impl HyperValue for f64 {
    fn from_number(v: f64) -> f64 {
        v
    }
}

impl HyperValue for bool {
    fn from_number(v: f64) -> bool {
        v != 0.0
    }
}

/// Rejects a name that `names` does not have, or one given twice.
pub fn check_names(opt: &str, pairs: &[(&str, f64)], names: &[&str]) -> Result<(), Error> {
    for (i, (k, _)) in pairs.iter().enumerate() {
        if !names.contains(k) {
            return Err(Error::type_error(format!("{opt}: unexpected hyperparameter {k:?} (it takes {names:?})")));
        }
        if pairs[..i].iter().any(|(j, _)| j == k) {
            return Err(Error::type_error(format!("{opt}: hyperparameter {k:?} given twice")));
        }
    }
    Ok(())
}

/// The value of `name`, which must be given.
pub fn take<V: HyperValue>(opt: &str, pairs: &[(&str, f64)], name: &str) -> Result<V, Error> {
    pairs
        .iter()
        .find(|(k, _)| *k == name)
        .map(|&(_, v)| V::from_number(v))
        .ok_or_else(|| Error::type_error(format!("{opt}: missing hyperparameter {name:?}")))
}

/// Declares optimizers' hyperparameters: for each, a `Copy` struct with public fields, `NAMES`,
/// and `from_pairs`, which takes every field by name and nothing else.
macro_rules! hyper {
    ($($(#[$doc:meta])* $name:ident for $opt:literal { $($field:ident : $ty:ty),* $(,)? })*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq)]
        pub struct $name {
            $(pub $field: $ty),*
        }

        impl $name {
            pub const NAMES: &'static [&'static str] = &[$(stringify!($field)),*];

            pub fn from_pairs(pairs: &[(&str, f64)]) -> Result<Self, $crate::Error> {
                $crate::optim::hyper::check_names($opt, pairs, Self::NAMES)?;
                Ok($name { $($field: $crate::optim::hyper::take($opt, pairs, stringify!($field))?),* })
            }

            /// From the values alone, in the order of `NAMES` (no names to look up: a rule
            /// renewed with a step's new numbers).
            pub fn from_ordered(values: &[f64]) -> Result<Self, $crate::Error> {
                if values.len() != Self::NAMES.len() {
                    return Err($crate::Error::type_error(format!("{}: {} values for {:?}", $opt, values.len(), Self::NAMES)));
                }
                let mut at = values.iter().copied();
                // (fields are initialized in the order written, which is the order of NAMES)
                Ok($name { $($field: $crate::optim::hyper::HyperValue::from_number(at.next().unwrap_or(f64::NAN))),* })
            }
        }
    )*};
}

pub(crate) use hyper;
