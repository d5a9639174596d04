//! [`Secret`]: a value that must never reach a log, a `Debug` print or `config print`.
//!
//! A leaf every floor may use (config reads secrets; `repo`, `postgres`, `metrics` and the
//! scheduler's reports hand them on); it knows nothing of where a secret came from.

use std::fmt;

use serde::Serialize;

/// A secret value: never printed by `Debug`, serialized as `<redacted>`
/// ([`crate::redact::REDACTED`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    /// The clear text, for the one place that must hand it on (initdb's pwfile, a client).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(crate::redact::REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(crate::redact::REDACTED)
    }
}
