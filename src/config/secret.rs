//! [`Secret`], a password or token that never shows in logs, and how one is read from the
//! environment (`*_env` keys) or from the file.

use serde::Deserialize;

use super::ConfigError;

/// A password or token: deserialised like a string, never shown by `Debug`.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `given` is this secret, compared in constant time; hashing both first makes the
    /// time independent of the lengths too.
    pub fn matches(&self, given: &str) -> bool {
        use sha1::{Digest, Sha1};
        use subtle::ConstantTimeEq;
        let (a, b) = (Sha1::digest(given.as_bytes()), Sha1::digest(self.0.as_bytes()));
        a.as_slice().ct_eq(b.as_slice()).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// A secret comes from the file (`key`) or from the environment (`{key}_env`), never both.
pub(super) fn check_one_source(value: &Secret, env: &str, key: &str) -> Result<(), String> {
    if !value.is_empty() && !env.is_empty() {
        return Err(format!("expected either {key} or {key}_env, not both"));
    }
    Ok(())
}

/// The secret named by `env` (an environment variable) when set, else `value` when not empty.
/// `env_key` is the config key holding `env`, named in the error when the variable is missing.
pub fn resolve_secret(value: &Secret, env: &str, env_key: &str, what: &str) -> Result<Option<Secret>, ConfigError> {
    if !env.is_empty() {
        // An empty secret would let an empty password in: it is as good as none, and refused.
        return match std::env::var(env) {
            Ok(v) if !v.is_empty() => Ok(Some(Secret(v))),
            Ok(_) => Err(ConfigError::Invalid {
                path: "environment".into(),
                key: env_key.into(),
                expected: format!("expected the environment variable {env} to hold {what}, not an empty value"),
            }),
            Err(_) => Err(ConfigError::Invalid {
                path: "environment".into(),
                key: env_key.into(),
                expected: format!("expected the environment variable {env} to hold {what}"),
            }),
        };
    }
    Ok((!value.is_empty()).then(|| value.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_match_needs_the_whole_secret() {
        let token = Secret::new("s3cret");
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cre"));
        assert!(!token.matches("s3cret "));
        assert!(!token.matches(""));
    }
}
