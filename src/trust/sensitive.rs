//! A wrapper for values that must never be printed: service-account tokens, CA keys, and
//! manifests that carry either.

use std::fmt;

/// Holds a secret value. `Debug` and `Display` print `<redacted>`; the only way to the
/// contents is [`Sensitive::expose`], so every place that reads a secret is greppable.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Sensitive<T>(T);

impl<T> Sensitive<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Returns the secret. Call it only where the value goes to a child's stdin, to stdout
    /// on the user's request, or into another `Sensitive`.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> fmt::Display for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A secret read from a tool's JSON output stays wrapped from the moment it is parsed.
impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Sensitive<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Sensitive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_never_shows_the_value() {
        let token = Sensitive::new("eyJhbGciOi.secret".to_string());
        assert_eq!(format!("{token}"), "<redacted>");
        assert_eq!(format!("{token:?}"), "<redacted>");
        assert_eq!(token.expose(), "eyJhbGciOi.secret");
    }

    #[test]
    fn parsed_secrets_are_wrapped() {
        let data: std::collections::BTreeMap<String, Sensitive<String>> =
            serde_json::from_str(r#"{"token": "c2VjcmV0"}"#).unwrap();
        assert_eq!(format!("{data:?}"), r#"{"token": <redacted>}"#);
        assert_eq!(data["token"].expose(), "c2VjcmV0");
    }
}
