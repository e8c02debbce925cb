//! A secret in configuration (a password, a URL with credentials, a
//! token): given as a literal (`url`), by the name of an environment
//! variable (`url_env`) or by a file (`url_file`, read when it is used and
//! trimmed of its final newline, as Kubernetes mounts secrets). One type,
//! [`Secret`], flattened into every configuration struct that holds one;
//! its key names come from a marker type ([`Url`], [`SaslPassword`],
//! [`Token`], [`ManagementUrl`]), so the TOML keys stay what they were.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::path::PathBuf;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::settings::{problem, Problem};

/// Where a secret comes from; empty when not set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecretRef {
    pub literal: Option<String>,
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

/// Why a secret could not be read; `key` is the configuration key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("`{key}_env` names the environment variable {var}, which is not set")]
    EnvUnset { key: String, var: String },
    #[error("`{key}_file` {path}: {cause}")]
    File {
        key: String,
        path: String,
        cause: String,
    },
}

impl SecretRef {
    pub fn is_set(&self) -> bool {
        self.literal.is_some() || self.env.is_some() || self.file.is_some()
    }

    /// A problem when more than one form is given; a warning when the
    /// secret cannot be read here (it may be set only where tidewatch runs).
    pub fn check(&self, key: &str, out: &mut Vec<Problem>) {
        let n = [
            self.literal.is_some(),
            self.env.is_some(),
            self.file.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n > 1 {
            out.push(problem(
                key,
                format!("give only one of `{key}`, `{key}_env` and `{key}_file`"),
            ));
        } else if let Err(e) = self.resolve(key) {
            out.push(problem(key, e.to_string()).warning());
        }
    }

    /// The secret's value; `Ok(None)` when not set.
    pub fn resolve(&self, key: &str) -> Result<Option<String>, SecretError> {
        if let Some(v) = &self.literal {
            return Ok(Some(v.clone()));
        }
        if let Some(var) = &self.env {
            return std::env::var(var)
                .map(Some)
                .map_err(|_| SecretError::EnvUnset {
                    key: key.to_owned(),
                    var: var.clone(),
                });
        }
        if let Some(path) = &self.file {
            return std::fs::read_to_string(path)
                .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_owned()))
                .map_err(|e| SecretError::File {
                    key: key.to_owned(),
                    path: path.display().to_string(),
                    cause: e.to_string(),
                });
        }
        Ok(None)
    }
}

/// The three key names of one secret: the literal, `_env` and `_file`.
pub trait SecretKey {
    const FIELDS: &'static [&'static str];
}

macro_rules! secret_keys {
    ($($(#[$doc:meta])* $name:ident = $key:literal;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name;
        impl SecretKey for $name {
            const FIELDS: &'static [&'static str] =
                &[$key, concat!($key, "_env"), concat!($key, "_file")];
        }
    )*};
}

secret_keys! {
    /// `url`, `url_env`, `url_file`.
    Url = "url";
    /// `sasl_password`, `sasl_password_env`, `sasl_password_file`.
    SaslPassword = "sasl_password";
    /// `token`, `token_env`, `token_file`.
    Token = "token";
    /// `management_url`, `management_url_env`, `management_url_file`.
    ManagementUrl = "management_url";
}

/// A secret reference whose keys `K` names; put it in a configuration
/// struct with `#[serde(flatten)]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Secret<K> {
    reference: SecretRef,
    key: PhantomData<K>,
}

impl<K> Default for Secret<K> {
    fn default() -> Self {
        SecretRef::default().into()
    }
}

impl<K> From<SecretRef> for Secret<K> {
    fn from(reference: SecretRef) -> Self {
        Self {
            reference,
            key: PhantomData,
        }
    }
}

impl<K> Secret<K> {
    pub fn reference(&self) -> &SecretRef {
        &self.reference
    }
}

impl<K> Deref for Secret<K> {
    type Target = SecretRef;
    fn deref(&self) -> &SecretRef {
        &self.reference
    }
}

impl<'de, K: SecretKey> Deserialize<'de> for Secret<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<K>(PhantomData<K>);
        impl<'de, K: SecretKey> Visitor<'de> for Fields<K> {
            type Value = Secret<K>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "one of {:?}", K::FIELDS)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Secret<K>, A::Error> {
                let mut r = SecretRef::default();
                while let Some(key) = map.next_key::<String>()? {
                    match K::FIELDS.iter().position(|f| *f == key) {
                        Some(0) => r.literal = map.next_value()?,
                        Some(1) => r.env = map.next_value()?,
                        Some(2) => r.file = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(r.into())
            }
        }
        d.deserialize_struct("Secret", K::FIELDS, Fields(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Holder {
        name: String,
        #[serde(flatten)]
        url: Secret<Url>,
        #[serde(flatten)]
        token: Secret<Token>,
    }

    fn parse(toml: &str) -> Result<Holder, config::ConfigError> {
        config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()?
            .try_deserialize()
    }

    #[test]
    fn flattened_keys_keep_their_names() {
        let h = parse("name = \"a\"\nurl = \"amqp://x\"\ntoken_env = \"T\"").unwrap();
        assert_eq!(h.name, "a");
        assert_eq!(h.url.literal.as_deref(), Some("amqp://x"));
        assert_eq!(h.token.env.as_deref(), Some("T"));
        assert!(h.token.literal.is_none());
        let h = parse("name = \"a\"\nurl_file = \"/run/secret\"").unwrap();
        assert_eq!(h.url.file, Some(PathBuf::from("/run/secret")));
        assert!(!h.token.is_set());
    }

    #[test]
    fn unknown_keys_are_still_refused_beside_a_flattened_secret() {
        let e = parse("name = \"a\"\nurl = \"amqp://x\"\nurl_envv = \"T\"").unwrap_err();
        assert!(e.to_string().contains("url_envv"), "{e}");
    }

    #[test]
    fn an_unset_variable_or_missing_file_names_the_key() {
        let s = SecretRef {
            env: Some("TIDEWATCH_TEST_SURELY_UNSET".into()),
            ..SecretRef::default()
        };
        let e = s.resolve("source.amqp.url").unwrap_err();
        assert!(e.to_string().contains("source.amqp.url_env"), "{e}");
        let f = SecretRef {
            file: Some("/nonexistent/secret".into()),
            ..SecretRef::default()
        };
        let e = f.resolve("http.token").unwrap_err();
        assert!(
            e.to_string()
                .contains("http.token_file` /nonexistent/secret"),
            "{e}"
        );
    }
}
