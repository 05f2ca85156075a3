//! The file as serde reads it: every table refuses keys it does not know
//! (a misspelt `rate_limt` silently ignored would leave a channel unlimited),
//! and values stay close to their text so that [`super::values`] can say
//! exactly what is wrong with one, under its key.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Doc {
    #[serde(default)]
    pub defaults: Option<Defaults>,
    #[serde(default)]
    pub channels: BTreeMap<String, Channel>,
}

/// `[defaults]`: any channel key except what names a receiver.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Defaults {
    pub send_timeout: Option<String>,
    pub retry_schedule: Option<String>,
    pub rate_limit: Option<TextOr<RateTable>>,
    pub max_in_flight: Option<i64>,
    pub breaker: Option<TextOr<BreakerTable>>,
}

/// `[channels.<name>]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Channel {
    /// A string rather than an enum, so an unknown transport gets our own
    /// message (with the choices) instead of serde's variant list.
    pub transport: Option<String>,
    pub url: Option<String>,
    pub path: Option<String>,
    pub secrets: Option<Vec<String>>,
    pub send_timeout: Option<String>,
    pub retry_schedule: Option<String>,
    pub rate_limit: Option<TextOr<RateTable>>,
    pub max_in_flight: Option<i64>,
    pub breaker: Option<TextOr<BreakerTable>>,
}

// By hand: the secrets and the URL (which may carry a password) stay out.
impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("transport", &self.transport)
            .field("secrets", &self.secrets.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

/// `rate_limit = { rate = "100/s", burst = 20 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RateTable {
    pub rate: String,
    pub burst: Option<i64>,
}

/// `breaker = { failures = 5, cool_down = "30s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BreakerTable {
    pub failures: i64,
    pub cool_down: String,
}

/// A key that takes either a short string (`"100/s"`, `"off"`) or a table.
/// Written by hand because serde's untagged enums only say "did not match
/// any variant", hiding which key of the table was wrong.
#[derive(Debug)]
pub(super) enum TextOr<T> {
    Text(String),
    Table(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for TextOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = TextOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a table")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TextOr::Text(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(TextOr::Table)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}
