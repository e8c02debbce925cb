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
    pub received_at: String,
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
                detail: r.detail.clone(),
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
            detail: detail.to_owned(),
        };
        Self::with(source, origin, bytes, vec![r], now)
    }

    fn with(
        source: &str,
        origin: &Origin,
        bytes: &[u8],
        rejections: Vec<RejectionRecord>,
        now: Millis,
    ) -> DeadLetter {
        let first = rejections[0].clone();
        let (payload, payload_base64) = match std::str::from_utf8(bytes) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => {
                use base64::Engine as _;
                (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
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
}
