//! One target's snapshot: what a restarted or new owner cannot re-read
//! quickly. The encoding is versioned and compact:
//!
//! ```text
//! "TWSS" | format version (u16, LE) | zstd frame (with checksum) of:
//!     u32 LE length of the header | header (JSON) | history points
//! ```
//!
//! The header is JSON so fields can be added (an older reader ignores
//! them, a newer one defaults them); the history points, which are most of
//! the bytes, are f32s stored byte plane by byte plane (all first bytes,
//! then all second bytes, ...), which zstd compresses about twice as well
//! as the plain little-endian floats. A version this code does not know is
//! refused as incompatible; bytes that do not decode are corrupt. Either
//! way the target starts cold, and nothing in a snapshot can make the
//! decoder allocate more than `MAX_DECODED` or panic.

use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::command::ScaleCommand;
use crate::event::Metric;
use crate::forecast::builtin::ForecasterState;
use crate::guard::GuardState;
use crate::policy::Plain;
use crate::window::HistoryState;

const MAGIC: &[u8; 4] = b"TWSS";
/// The format this code writes. Version 1 is the first.
pub const FORMAT_VERSION: u16 = 1;
/// The oldest format this code reads.
pub const OLDEST_READABLE: u16 = 1;
/// The largest snapshot decoded (compressed bytes), and the most its
/// contents may expand to: 8 days of minute history on four metrics is
/// 180 KiB of floats, so this leaves room for long histories and large
/// policy state, and stops a hostile record.
pub const MAX_ENCODED: usize = 16 << 20;
pub const MAX_DECODED: usize = 64 << 20;

/// The run-time controls of a target (control messages, `tidewatch ctl`),
/// kept across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlState {
    /// `pause`, `pause_scale_in`, `pause_scale_out` or `pin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ControlRecord>,
    /// `dry_run_on` or `dry_run_off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<ControlRecord>,
    /// The message time of the newest control applied: a control re-read
    /// (a Kafka replay) that is not newer changes nothing.
    #[serde(default)]
    pub applied_ms: Millis,
}

/// One control in force: the action, who asked, why, until when.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlRecord {
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at_ms: Millis,
    /// A pin's one command was issued.
    #[serde(default)]
    pub done: bool,
}

/// A command no worker has answered yet, and when it was last sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unanswered {
    pub command: ScaleCommand,
    pub sent_ms: Millis,
}

/// One target's state.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSnapshot {
    pub target: String,
    pub taken_at_ms: Millis,
    /// The scaler process that wrote it (a restarted one has a new id).
    pub writer: String,
    pub current: u32,
    /// The last generation issued, and the highest the broker acknowledged.
    pub last_generation: i64,
    pub published_generation: i64,
    /// The generation of a command no worker has answered yet.
    pub unanswered_generation: Option<i64>,
    /// That command and when it (or its last re-issue) went out, so a new
    /// owner re-issues it after `reissue_after` as this one would have.
    /// Snapshots written before it was kept have only the generation.
    pub unanswered: Option<Unanswered>,
    pub guard: GuardState,
    pub policy: String,
    pub policy_state: Plain,
    pub control: ControlState,
    pub histories: Vec<(Metric, HistoryState)>,
    pub forecasters: Vec<(Metric, ForecasterState)>,
}

/// Why a snapshot was not used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot of {target:?} is corrupt: {why}")]
    Corrupt { target: String, why: String },
    #[error(
        "snapshot of {target:?} has format version {found}; this tidewatch reads versions \
         {OLDEST_READABLE} to {FORMAT_VERSION}"
    )]
    Incompatible { target: String, found: u16 },
    #[error("snapshot of {target:?} is {bytes} bytes, more than the {MAX_ENCODED} allowed")]
    TooLarge { target: String, bytes: usize },
}

impl SnapshotError {
    /// The target whose snapshot it is.
    pub fn target(&self) -> &str {
        match self {
            SnapshotError::Corrupt { target, .. }
            | SnapshotError::Incompatible { target, .. }
            | SnapshotError::TooLarge { target, .. } => target,
        }
    }

    /// The restore outcome label.
    pub fn code(&self) -> &'static str {
        match self {
            SnapshotError::Corrupt { .. } | SnapshotError::TooLarge { .. } => "corrupt",
            SnapshotError::Incompatible { .. } => "incompatible",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    target: String,
    taken_at_ms: Millis,
    writer: String,
    current: u32,
    last_generation: i64,
    published_generation: i64,
    #[serde(default)]
    unanswered_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unanswered: Option<Unanswered>,
    #[serde(default)]
    guard: GuardState,
    #[serde(default)]
    policy: String,
    #[serde(default = "empty_table")]
    policy_state: Plain,
    #[serde(default)]
    control: ControlState,
    #[serde(default)]
    histories: Vec<HistoryHeader>,
    #[serde(default)]
    forecasters: Vec<(String, ForecasterState)>,
}

fn empty_table() -> Plain {
    Plain::Table(Vec::new())
}

#[derive(Serialize, Deserialize)]
struct HistoryHeader {
    metric: String,
    step_ms: i64,
    first_step: i64,
    /// Points in the float section, in the order of the histories.
    points: usize,
}

impl TargetSnapshot {
    /// From when this state needs signals again: the first step missing
    /// from its histories (the open step was not kept), or when it was
    /// taken if it has no history.
    pub fn resume_ms(&self) -> Millis {
        self.histories
            .iter()
            .map(|(_, h)| h)
            .filter(|h| !h.points.is_empty())
            .map(|h| (h.first_step + h.points.len() as i64).saturating_mul(h.step_ms))
            .min()
            .unwrap_or(self.taken_at_ms)
            .min(self.taken_at_ms)
    }

    /// The encoded bytes (see the module's documentation).
    pub fn encode(&self) -> Vec<u8> {
        let header = Header {
            target: self.target.clone(),
            taken_at_ms: self.taken_at_ms,
            writer: self.writer.clone(),
            current: self.current,
            last_generation: self.last_generation,
            published_generation: self.published_generation,
            unanswered_generation: self.unanswered_generation,
            unanswered: self.unanswered.clone(),
            guard: self.guard.clone(),
            policy: self.policy.clone(),
            policy_state: self.policy_state.clone(),
            control: self.control.clone(),
            histories: self
                .histories
                .iter()
                .map(|(m, h)| HistoryHeader {
                    metric: m.name().to_owned(),
                    step_ms: h.step_ms,
                    first_step: h.first_step,
                    points: h.points.len(),
                })
                .collect(),
            forecasters: self
                .forecasters
                .iter()
                .map(|(m, f)| (m.name().to_owned(), f.clone()))
                .collect(),
        };
        // Serializing plain data to a Vec cannot fail; an empty header
        // would decode as corrupt rather than panic here.
        let json = serde_json::to_vec(&header).unwrap_or_default();
        let floats: usize = self.histories.iter().map(|(_, h)| h.points.len()).sum();
        let mut body = Vec::with_capacity(4 + json.len() + 4 * floats);
        body.extend_from_slice(&(json.len() as u32).to_le_bytes());
        body.extend_from_slice(&json);
        let start = body.len();
        body.resize(start + 4 * floats, 0);
        let planes = &mut body[start..];
        let mut i = 0;
        for (_, h) in &self.histories {
            for v in &h.points {
                let b = v.to_le_bytes();
                for (plane, byte) in b.iter().enumerate() {
                    planes[plane * floats + i] = *byte;
                }
                i += 1;
            }
        }
        let mut out = Vec::with_capacity(body.len() / 3 + 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let mut enc = match zstd::stream::Encoder::new(out, 3) {
            Ok(e) => e,
            Err(_) => return Vec::new(),
        };
        let _ = enc.include_checksum(true);
        let _ = enc.set_pledged_src_size(Some(body.len() as u64));
        use std::io::Write;
        if enc.write_all(&body).is_err() {
            return Vec::new();
        }
        enc.finish().unwrap_or_default()
    }

    /// Decodes a snapshot stored under `key` (the target's name).
    pub fn decode(key: &str, bytes: &[u8]) -> Result<TargetSnapshot, SnapshotError> {
        let corrupt = |why: String| SnapshotError::Corrupt {
            target: key.to_owned(),
            why,
        };
        if bytes.len() > MAX_ENCODED {
            return Err(SnapshotError::TooLarge {
                target: key.to_owned(),
                bytes: bytes.len(),
            });
        }
        if bytes.len() < 6 || &bytes[..4] != MAGIC {
            return Err(corrupt("it does not start with the snapshot marker".into()));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if !(OLDEST_READABLE..=FORMAT_VERSION).contains(&version) {
            return Err(SnapshotError::Incompatible {
                target: key.to_owned(),
                found: version,
            });
        }
        let body = decompress(&bytes[6..]).map_err(corrupt)?;
        if body.len() < 4 {
            return Err(corrupt("no header".into()));
        }
        let json_len = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
        let json = body
            .get(4..4 + json_len)
            .ok_or_else(|| corrupt(format!("header length {json_len} is past the end")))?;
        let h: Header = serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))?;
        if h.target != key {
            return Err(corrupt(format!("it is the snapshot of {:?}", h.target)));
        }
        let planes = &body[4 + json_len..];
        let floats: usize = h.histories.iter().map(|x| x.points).sum();
        if planes.len() != 4 * floats {
            return Err(corrupt(format!(
                "{} bytes of history for {floats} points",
                planes.len()
            )));
        }
        let metric = |name: &str| {
            Metric::parse(name).ok_or_else(|| corrupt(format!("unknown metric {name:?}")))
        };
        let mut histories = Vec::with_capacity(h.histories.len());
        let mut i = 0;
        for x in &h.histories {
            if x.step_ms <= 0 {
                return Err(corrupt(format!("history step {} ms", x.step_ms)));
            }
            let points = (i..i + x.points)
                .map(|j| {
                    f32::from_le_bytes([
                        planes[j],
                        planes[floats + j],
                        planes[2 * floats + j],
                        planes[3 * floats + j],
                    ])
                })
                .collect();
            i += x.points;
            histories.push((
                metric(&x.metric)?,
                HistoryState {
                    step_ms: x.step_ms,
                    first_step: x.first_step,
                    points,
                },
            ));
        }
        let forecasters = h
            .forecasters
            .into_iter()
            .map(|(m, f)| Ok((metric(&m)?, f)))
            .collect::<Result<_, SnapshotError>>()?;
        let unanswered = h.unanswered.filter(|u| {
            Some(u.command.generation) == h.unanswered_generation && u.command.target == h.target
        });
        Ok(TargetSnapshot {
            target: h.target,
            taken_at_ms: h.taken_at_ms,
            writer: h.writer,
            current: h.current,
            last_generation: h.last_generation,
            published_generation: h.published_generation,
            unanswered_generation: h.unanswered_generation,
            unanswered,
            guard: h.guard,
            policy: h.policy,
            policy_state: h.policy_state,
            control: h.control,
            histories,
            forecasters,
        })
    }
}

/// zstd, refusing to expand past `MAX_DECODED`.
fn decompress(frame: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let dec = zstd::stream::Decoder::new(frame).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    dec.take(MAX_DECODED as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("it does not decompress: {e}"))?;
    if out.len() > MAX_DECODED {
        return Err(format!("it expands past {MAX_DECODED} bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TargetSnapshot {
        let points: Vec<f32> = (0..11_520)
            .map(|i| {
                if i % 500 == 7 {
                    f32::NAN
                } else {
                    100.0 + (i as f32 / 60.0).sin() * 40.0
                }
            })
            .collect();
        TargetSnapshot {
            target: "checkout".into(),
            taken_at_ms: 1_764_000_000_000,
            writer: "w1".into(),
            current: 10,
            last_generation: 41,
            published_generation: 40,
            unanswered_generation: Some(41),
            unanswered: Some(Unanswered {
                command: ScaleCommand::issue(
                    crate::command::Order {
                        target: "checkout",
                        provider: "k8s",
                        policy: "p.lua@abc",
                        current: 7,
                        desired: 10,
                        reason: "depth".into(),
                        dry_run: false,
                    },
                    41,
                    1_763_999_990_000,
                    60_000,
                ),
                sent_ms: 1_763_999_990_000,
            }),
            guard: GuardState {
                last_up_ms: Some(1),
                last_change_ms: Some(2),
                recent: vec![(5, 10), (6, 7)],
                recent_up: vec![(5, 7)],
                up_events: vec![(4, 3)],
                down_events: vec![],
            },
            policy: "p.lua@abc".into(),
            policy_state: Plain::Table(vec![(Plain::Str("peak".into()), Plain::Int(12))]),
            control: ControlState::default(),
            histories: vec![(
                Metric::QueueDepth,
                HistoryState {
                    step_ms: 60_000,
                    first_step: 29_400_000,
                    points,
                },
            )],
            forecasters: vec![],
        }
    }

    fn same(a: &TargetSnapshot, b: &TargetSnapshot) -> bool {
        // NaN != NaN: compare the bits of the points
        let bits = |s: &TargetSnapshot| -> Vec<Vec<u32>> {
            s.histories
                .iter()
                .map(|(_, h)| h.points.iter().map(|p| p.to_bits()).collect())
                .collect()
        };
        let strip = |s: &TargetSnapshot| {
            let mut s = s.clone();
            s.histories.iter_mut().for_each(|(_, h)| h.points.clear());
            s
        };
        bits(a) == bits(b) && strip(a) == strip(b)
    }

    #[test]
    fn round_trips_exactly_and_compresses_the_history() {
        let s = sample();
        let bytes = s.encode();
        let back = TargetSnapshot::decode("checkout", &bytes).unwrap();
        assert!(same(&s, &back));
        // 11,520 floats are 46,080 bytes raw
        assert!(bytes.len() < 40_000, "{} bytes", bytes.len());
    }

    /// Re-encodes `s` with its JSON header changed by `edit`.
    fn with_header(s: &TargetSnapshot, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let bytes = s.encode();
        let body = decompress(&bytes[6..]).unwrap();
        let n = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&body[4..4 + n]).unwrap();
        edit(&mut header);
        let json = serde_json::to_vec(&header).unwrap();
        let mut new = (json.len() as u32).to_le_bytes().to_vec();
        new.extend_from_slice(&json);
        new.extend_from_slice(&body[4 + n..]);
        let mut out = bytes[..6].to_vec();
        out.extend(zstd::encode_all(&new[..], 3).unwrap());
        out
    }

    #[test]
    fn the_unanswered_command_is_kept_and_an_older_snapshot_without_it_still_reads() {
        let s = sample();
        let back = TargetSnapshot::decode("checkout", &s.encode()).unwrap();
        let u = back.unanswered.expect("the unanswered command is kept");
        assert_eq!(u.command.desired_replicas, 10);
        assert_eq!(u.command.generation, 41);
        assert_eq!(u.sent_ms, 1_763_999_990_000);
        // written before the command was kept: only the generation
        let old = with_header(&s, |h| {
            h.as_object_mut().unwrap().remove("unanswered");
        });
        let back = TargetSnapshot::decode("checkout", &old).unwrap();
        assert_eq!(back.unanswered_generation, Some(41));
        assert!(back.unanswered.is_none());
        // a command that is not the unanswered generation, or of another
        // target, is not taken
        for (key, value) in [
            ("unanswered_generation", serde_json::json!(40)),
            ("unanswered_generation", serde_json::Value::Null),
        ] {
            let odd = with_header(&s, |h| {
                h[key] = value;
            });
            assert!(TargetSnapshot::decode("checkout", &odd)
                .unwrap()
                .unanswered
                .is_none());
        }
        let odd = with_header(&s, |h| {
            h["unanswered"]["command"]["target"] = serde_json::json!("payments");
        });
        assert!(TargetSnapshot::decode("checkout", &odd)
            .unwrap()
            .unanswered
            .is_none());
    }

    #[test]
    fn damaged_snapshots_are_corrupt_never_a_panic() {
        let good = sample().encode();
        assert_eq!(
            TargetSnapshot::decode("checkout", b"").unwrap_err().code(),
            "corrupt"
        );
        // every truncation and a flipped byte at many places
        for cut in (0..good.len()).step_by(97) {
            let e = TargetSnapshot::decode("checkout", &good[..cut]).unwrap_err();
            assert_eq!(e.code(), "corrupt", "cut at {cut}: {e}");
        }
        for at in (6..good.len()).step_by(131) {
            let mut bad = good.clone();
            bad[at] ^= 0x5a;
            let e = TargetSnapshot::decode("checkout", &bad).unwrap_err();
            assert_eq!(e.code(), "corrupt", "flip at {at}: {e}");
        }
        // a snapshot stored under another target's key
        let e = TargetSnapshot::decode("payments", &good).unwrap_err();
        assert!(e.to_string().contains("\"checkout\""), "{e}");
    }

    #[test]
    fn another_version_is_incompatible_and_says_which() {
        let mut bytes = sample().encode();
        bytes[4..6].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let e = TargetSnapshot::decode("checkout", &bytes).unwrap_err();
        assert_eq!(e.code(), "incompatible");
        let text = e.to_string();
        assert!(
            text.contains(&format!("version {}", FORMAT_VERSION + 1)),
            "{text}"
        );
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let zeros = vec![0u8; MAX_DECODED + 1024];
        bytes.extend(zstd::bulk::compress(&zeros, 1).unwrap());
        assert!(bytes.len() < 1 << 20);
        let e = TargetSnapshot::decode("checkout", &bytes).unwrap_err();
        assert!(e.to_string().contains("expands past"), "{e}");
    }

    #[test]
    fn a_newer_header_field_is_ignored_and_a_missing_one_defaulted() {
        // a header as a later version might write it, with only the fields
        // version 1 needs and one it does not know
        let json = br#"{"target":"checkout","taken_at_ms":5,"writer":"w","current":3,
            "last_generation":9,"published_generation":9,"added_later":{"x":1}}"#;
        let mut body = (json.len() as u32).to_le_bytes().to_vec();
        body.extend_from_slice(json);
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend(zstd::bulk::compress(&body, 1).unwrap());
        let s = TargetSnapshot::decode("checkout", &bytes).unwrap();
        assert_eq!((s.current, s.last_generation), (3, 9));
        assert!(s.histories.is_empty() && s.guard.recent.is_empty());
    }
}
