//! Which messages are in which format: a source's inputs, each a Kafka
//! topic or a RabbitMQ routing-key pattern with its decoder (tidewatch's
//! own messages, or a [`Mapping`] of a gateway's access log) and its
//! limits. A message no input names is a tidewatch message.

use super::mapping::{Mapping, Skipped};
use super::{decode_at, At, Limits, Origin, Rejection, Signal};

/// How an input's messages become signals.
#[derive(Debug, Clone)]
pub enum Decoder {
    Tidewatch,
    Mapped(Box<Mapping>),
}

/// Where an input's messages come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Matcher {
    /// A Kafka topic, exactly.
    Topic(String),
    /// A RabbitMQ routing-key pattern: words split by '.', `*` one word,
    /// `#` none or more (a topic exchange's rules).
    Binding(String),
}

impl Matcher {
    fn matches(&self, source: &str, origin: &Origin) -> bool {
        match self {
            Matcher::Topic(t) => source == "kafka" && origin.topic == *t,
            Matcher::Binding(pattern) => {
                source == "amqp"
                    && origin
                        .key
                        .as_deref()
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .is_some_and(|key| binding_matches(pattern, key))
            }
        }
    }
}

/// A topic exchange's match of `key` against `pattern`.
pub fn binding_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    };
    go(&p, &k)
}

/// One input of a source.
#[derive(Debug, Clone)]
pub struct Input {
    /// The topic or pattern, for metrics and logs.
    pub name: String,
    pub matcher: Matcher,
    pub decoder: Decoder,
    pub limits: Limits,
    /// Unmatched records are dead-lettered instead of dropped.
    pub deadletter_unmatched: bool,
}

/// What one record of a message became.
#[derive(Debug)]
pub enum Decoded {
    Signal(Signal),
    /// Not for this scaler (no target, filtered): counted, not an error.
    Skipped(Skipped),
    Rejected(Rejection),
}

impl Input {
    /// Decodes one message of this input.
    pub fn decode(&self, bytes: &[u8], at: At) -> Vec<Decoded> {
        match &self.decoder {
            Decoder::Tidewatch => decode_tidewatch(bytes, at, &self.limits),
            Decoder::Mapped(m) => m
                .decode(bytes, at, &self.limits)
                .into_iter()
                .map(|r| match r {
                    Ok(Ok(s)) => Decoded::Signal(s),
                    Ok(Err(skip)) => Decoded::Skipped(skip),
                    Err(e) => Decoded::Rejected(e),
                })
                .collect(),
        }
    }

    /// Whether its signals come from a gateway's log rather than from a
    /// producer that names tidewatch targets: a target it names that is
    /// not configured is then unmatched, not unknown.
    pub fn is_mapped(&self) -> bool {
        matches!(self.decoder, Decoder::Mapped(_))
    }
}

/// tidewatch's own messages, as [`Decoded`] records.
pub fn decode_tidewatch(bytes: &[u8], at: At, limits: &Limits) -> Vec<Decoded> {
    decode_at(bytes, at, limits)
        .into_iter()
        .map(|r| match r {
            Ok(s) => Decoded::Signal(s),
            Err(e) => Decoded::Rejected(e),
        })
        .collect()
}

/// A source's inputs.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    list: Vec<Input>,
}

impl Inputs {
    pub fn new(list: Vec<Input>) -> Self {
        Self { list }
    }

    /// The input a message from `source` ("kafka", "amqp") belongs to;
    /// `None`: a tidewatch message under the engine's limits.
    pub fn find(&self, source: &str, origin: &Origin) -> Option<&Input> {
        self.list.iter().find(|i| i.matcher.matches(source, origin))
    }

    pub fn get(&self, i: usize) -> Option<&Input> {
        self.list.get(i)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_match_as_a_topic_exchange_does() {
        for (p, k, want) in [
            ("kong.#", "kong", true),
            ("kong.#", "kong.eu.checkout", true),
            ("kong.*", "kong.eu", true),
            ("kong.*", "kong.eu.checkout", false),
            ("kong.*", "kong", false),
            ("*.access", "nginx.access", true),
            ("#.access", "a.b.access", true),
            ("#", "", true),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
            ("nginx", "nginx.access", false),
        ] {
            assert_eq!(binding_matches(p, k), want, "{p} ~ {k}");
        }
    }
}
