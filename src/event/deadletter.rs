//! Where a message came from, and the dead-letter record of a message
//! (or batch elements) that could not be used.

use serde::Serialize;

use super::Rejection;
use crate::clock::{rfc3339, Millis};

/// Where a message came from.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub topic: String,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub key: Option<Vec<u8>>,
    /// The broker's (or producer's) timestamp, the receive time of a
    /// message re-read after a rebalance.
    pub timestamp: Option<Millis>,
    /// Re-read to rebuild windows: applied, never evaluated on, never
    /// dead-lettered again (its previous owner did that).
    pub replay: bool,
}

/// A dead-letter record (JSON): the original bytes and why they were refused.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct DeadLetter {
    pub version: u32,
    /// The first rejection's reason code.
    pub reason: String,
    pub detail: String,
    /// Every rejection, with the index of its element in a batch.
    pub rejections: Vec<RejectionRecord>,
    pub source: String,
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The original bytes, when they are UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The original bytes in base64, when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// When only the first [`MAX_PAYLOAD_COPY`] bytes are copied: the
    /// original's length (it stays at `topic`/`partition`/`offset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_truncated_from: Option<usize>,
    /// When only the first [`MAX_REJECTIONS`] rejections are listed: how
    /// many there were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejections_total: Option<usize>,
    pub received_at: String,
}

/// The most of the original bytes a dead letter copies: with JSON
/// escaping, a dead letter stays far under a broker's message limit
/// (Kafka's default is 1 MB) and a RabbitMQ frame.
pub const MAX_PAYLOAD_COPY: usize = 64 << 10;
/// The most rejections a dead letter lists, each detail cut to
/// [`MAX_DETAIL`] characters (a batch of 1,000 bad elements made a
/// RabbitMQ header larger than the frame).
pub const MAX_REJECTIONS: usize = 20;
pub const MAX_DETAIL: usize = 300;

fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RejectionRecord {
    pub index: usize,
    pub reason: String,
    pub detail: String,
}

impl DeadLetter {
    /// The record for a message with rejections that go to the dead-letter
    /// destination, or `None` when nothing in it needs to.
    pub fn of(
        source: &str,
        origin: &Origin,
        bytes: &[u8],
        rejected: &[(usize, Rejection)],
        now: Millis,
    ) -> Option<DeadLetter> {
        let rejections: Vec<RejectionRecord> = rejected
            .iter()
            .filter(|(_, r)| r.reason.dead_letter())
            .map(|(i, r)| RejectionRecord {
                index: *i,
                reason: r.reason.code().to_owned(),
                detail: cut(&r.detail, MAX_DETAIL),
            })
            .collect();
        if rejections.is_empty() {
            return None;
        }
        Some(Self::with(source, origin, bytes, rejections, now))
    }

    /// The record for a message refused for one reason.
    pub fn single(
        source: &str,
        origin: &Origin,
        bytes: &[u8],
        reason: &str,
        detail: &str,
        now: Millis,
    ) -> DeadLetter {
        let r = RejectionRecord {
            index: 0,
            reason: reason.to_owned(),
            detail: cut(detail, MAX_DETAIL),
        };
        Self::with(source, origin, bytes, vec![r], now)
    }

    fn with(
        source: &str,
        origin: &Origin,
        bytes: &[u8],
        mut rejections: Vec<RejectionRecord>,
        now: Millis,
    ) -> DeadLetter {
        let first = rejections[0].clone();
        let rejections_total = (rejections.len() > MAX_REJECTIONS).then_some(rejections.len());
        rejections.truncate(MAX_REJECTIONS);
        let payload_truncated_from = (bytes.len() > MAX_PAYLOAD_COPY).then_some(bytes.len());
        let mut copy = &bytes[..bytes.len().min(MAX_PAYLOAD_COPY)];
        if payload_truncated_from.is_some() {
            // Cut at a character boundary when the bytes are text.
            if let Err(e) = std::str::from_utf8(copy) {
                if e.error_len().is_none() {
                    copy = &copy[..e.valid_up_to()];
                }
            }
        }
        let (payload, payload_base64) = match std::str::from_utf8(copy) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => {
                use base64::Engine as _;
                (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(copy)),
                )
            }
        };
        DeadLetter {
            version: 1,
            reason: first.reason,
            detail: first.detail,
            rejections,
            source: source.to_owned(),
            topic: origin.topic.clone(),
            partition: origin.partition,
            offset: origin.offset,
            key: origin
                .key
                .as_ref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            payload,
            payload_base64,
            payload_truncated_from,
            rejections_total,
            received_at: rfc3339(now),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a dead letter always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Reason;

    fn rej(reason: Reason) -> Rejection {
        Rejection {
            reason,
            detail: "d".into(),
            kind: "queue_depth",
        }
    }

    #[test]
    fn dead_letters_keep_bytes_and_reasons() {
        let origin = Origin {
            topic: "t".into(),
            partition: Some(2),
            offset: Some(41),
            key: Some(b"web".to_vec()),
            ..Origin::default()
        };
        let rejected = vec![(1, rej(Reason::Negative)), (2, rej(Reason::UnknownTarget))];
        let dl = DeadLetter::of("kafka", &origin, b"[...]", &rejected, 0).unwrap();
        assert_eq!(dl.reason, "negative_value");
        assert_eq!(
            dl.rejections.len(),
            1,
            "unknown targets are not dead-lettered"
        );
        assert_eq!(dl.rejections[0].index, 1);
        assert_eq!(
            (dl.partition, dl.offset, dl.key.as_deref()),
            (Some(2), Some(41), Some("web"))
        );
        assert_eq!(dl.payload.as_deref(), Some("[...]"));
        let binary = DeadLetter::of("kafka", &origin, &[0xff, 0x00], &rejected, 0).unwrap();
        assert_eq!(binary.payload_base64.as_deref(), Some("/wA="));
        let only_unknown = vec![(0, rej(Reason::UnknownTarget))];
        assert!(DeadLetter::of("kafka", &origin, b"x", &only_unknown, 0).is_none());
    }

    /// Issue 16, finding 3: a 1 MB malformed message made a 2 MB dead
    /// letter that Kafka refused for ever. The copy is bounded, and says
    /// where the whole original is.
    #[test]
    fn large_originals_and_many_rejections_are_cut() {
        let origin = Origin {
            topic: "signals".into(),
            partition: Some(3),
            offset: Some(99),
            ..Origin::default()
        };
        let big = format!(
            "{{\"type\": \"queue_depth\", \"x\": \"{}\"",
            "\\\"".repeat(400_000)
        );
        let dl = DeadLetter::single(
            "kafka",
            &origin,
            big.as_bytes(),
            "malformed_json",
            &"d".repeat(5000),
            0,
        );
        assert_eq!(dl.payload_truncated_from, Some(big.len()));
        assert!(dl.payload.as_ref().unwrap().len() <= MAX_PAYLOAD_COPY);
        assert!(dl.detail.chars().count() <= MAX_DETAIL + 3);
        assert!(dl.to_json().len() < 200_000, "{}", dl.to_json().len());
        assert_eq!((dl.partition, dl.offset), (Some(3), Some(99)));
        let many: Vec<(usize, Rejection)> = (0..1000).map(|i| (i, rej(Reason::TooOld))).collect();
        let dl = DeadLetter::of("amqp", &origin, b"[]", &many, 0).unwrap();
        assert_eq!(dl.rejections.len(), MAX_REJECTIONS);
        assert_eq!(dl.rejections_total, Some(1000));
        // A small one is copied whole, with no new fields.
        let dl = DeadLetter::single("kafka", &origin, b"oops", "malformed_json", "d", 0);
        let v: serde_json::Value = serde_json::from_slice(&dl.to_json()).unwrap();
        assert_eq!(v["payload"], "oops");
        assert!(v.get("payload_truncated_from").is_none() && v.get("rejections_total").is_none());
    }
}
