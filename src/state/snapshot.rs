//! One target's snapshot: what a restarted or new owner cannot re-read
//! quickly. The encoding is versioned and compact:
//!
//! ```text
//! "TWSS" | format version (u16, LE) | zstd frame (with checksum) of:
//!     u32 LE length of the header | header (JSON) | histories
//! ```
//!
//! The header is JSON so fields can be added (an older reader ignores
//! them, a newer one defaults them). The histories are most of the bytes:
//! - version 2 (written since 2026-12-04) keeps each history's own parts
//!   ([`Packed`]), in the header's order: its coarse, pending and
//!   block-being-filled floats and its blocks' minima and maxima (f32,
//!   LE), then its blocks' quantized bytes; after the histories, each
//!   fitted model's seasonal terms (f64, LE; the header's `seasonals`
//!   says how many), which are not in its JSON. A restore copies the
//!   parts and does not quantize every point again; the bytes are two
//!   fifths of version 1's (docs/design-notes.md, "A snapshot keeps the
//!   history's own parts");
//! - version 1 kept every point as an f32, byte plane by byte plane (all
//!   first bytes, then all second bytes, ...). It is still read, and
//!   written when `state.format = 1` (a rolling upgrade from a
//!   tidewatch that reads only version 1).
//!
//! A version this code does not know is refused as incompatible; bytes
//! that do not decode are corrupt. Either way the target starts cold, and
//! nothing in a snapshot can make the decoder allocate more than
//! `MAX_DECODED` or panic.

use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::command::ScaleCommand;
use crate::event::Metric;
use crate::forecast::builtin::ForecasterState;
use crate::guard::GuardState;
use crate::policy::Plain;
use crate::window::{Block, Closed, HistoryState, Packed, BLOCK};

const MAGIC: &[u8; 4] = b"TWSS";
/// The format this code writes by default. Version 1 is the first;
/// version 2 keeps each history's own parts.
pub const FORMAT_VERSION: u16 = 2;
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
    /// Version 2: for each forecaster, how many seasonal terms of its
    /// model follow the histories as f64s (LE); its JSON has none. Empty:
    /// they are in the JSON (version 1, and the first version 2
    /// snapshots of 2026-12-04).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    seasonals: Vec<usize>,
}

fn empty_table() -> Plain {
    Plain::Table(Vec::new())
}

#[derive(Serialize, Deserialize)]
struct HistoryHeader {
    metric: String,
    step_ms: i64,
    first_step: i64,
    /// Closed steps: in version 1, the points in the float section, in
    /// the order of the histories; in version 2, of a history written as
    /// points (no `packed`).
    points: usize,
    /// Version 2: the sizes of the history's parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    packed: Option<PackedHeader>,
}

/// The sizes of a [`Packed`] history's parts, and where it stood in them.
#[derive(Serialize, Deserialize)]
struct PackedHeader {
    capacity: usize,
    coarse: usize,
    coarse_skip: usize,
    pending: usize,
    blocks: usize,
    skip: usize,
    tail: usize,
}

/// Reads a version 2 history section from the front, never past its end.
struct Section<'a> {
    bytes: &'a [u8],
}

impl<'a> Section<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.bytes.len() {
            return Err(format!(
                "{what}: {n} bytes asked, {} left in the history section",
                self.bytes.len()
            ));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn floats(&mut self, n: usize, what: &str) -> Result<Vec<f32>, String> {
        let bytes = n
            .checked_mul(4)
            .ok_or_else(|| format!("{what}: {n} floats"))?;
        Ok(self
            .take(bytes, what)?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

fn put_floats(out: &mut Vec<u8>, xs: impl IntoIterator<Item = f32>) {
    for x in xs {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

impl TargetSnapshot {
    /// From when this state needs signals again: the first step missing
    /// from its histories (the open step was not kept), or when it was
    /// taken if it has no history.
    pub fn resume_ms(&self) -> Millis {
        self.histories
            .iter()
            .map(|(_, h)| h)
            .filter(|h| !h.is_empty())
            .map(|h| (h.first_step + h.len() as i64).saturating_mul(h.step_ms))
            .min()
            .unwrap_or(self.taken_at_ms)
            .min(self.taken_at_ms)
    }

    /// The encoded bytes (see the module's documentation), in the format
    /// this code writes by default.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_as(FORMAT_VERSION)
    }

    /// The encoded bytes in format `version` (1 or 2; another is 2).
    pub fn encode_as(&self, version: u16) -> Vec<u8> {
        let version = if version == 1 { 1 } else { FORMAT_VERSION };
        // version 1 has every point; a history's parts are expanded
        let expanded: Vec<Vec<f32>> = if version == 1 {
            self.histories.iter().map(|(_, h)| h.points()).collect()
        } else {
            Vec::new()
        };
        let mut header = Header {
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
                .enumerate()
                .map(|(i, (m, h))| HistoryHeader {
                    metric: m.name().to_owned(),
                    step_ms: h.step_ms,
                    first_step: h.first_step,
                    points: expanded.get(i).map_or(h.len(), Vec::len),
                    packed: match &h.closed {
                        Closed::Packed(p) if version > 1 => Some(PackedHeader {
                            capacity: p.capacity,
                            coarse: p.coarse.len(),
                            coarse_skip: p.coarse_skip,
                            pending: p.pending.len(),
                            blocks: p.blocks.len(),
                            skip: p.skip,
                            tail: p.tail.len(),
                        }),
                        _ => None,
                    },
                })
                .collect(),
            forecasters: Vec::with_capacity(self.forecasters.len()),
            seasonals: Vec::new(),
        };
        let mut terms: Vec<Vec<f64>> = Vec::new();
        for (m, f) in &self.forecasters {
            let mut f = f.clone();
            if version > 1 {
                let t = f
                    .model
                    .as_mut()
                    .map(|h| h.take_seasonals())
                    .unwrap_or_default();
                header.seasonals.push(t.len());
                terms.push(t);
            }
            header.forecasters.push((m.name().to_owned(), f));
        }
        // Serializing plain data to a Vec cannot fail; an empty header
        // would decode as corrupt rather than panic here.
        let json = serde_json::to_vec(&header).unwrap_or_default();
        let mut body = Vec::with_capacity(
            4 + json.len() + 4 * self.histories.iter().map(|(_, h)| h.len()).sum::<usize>() / 3,
        );
        body.extend_from_slice(&(json.len() as u32).to_le_bytes());
        body.extend_from_slice(&json);
        if version == 1 {
            let floats: usize = expanded.iter().map(Vec::len).sum();
            let start = body.len();
            body.resize(start + 4 * floats, 0);
            let planes = &mut body[start..];
            for (i, v) in expanded.iter().flatten().enumerate() {
                for (plane, byte) in v.to_le_bytes().iter().enumerate() {
                    planes[plane * floats + i] = *byte;
                }
            }
        } else {
            for (_, h) in &self.histories {
                match &h.closed {
                    Closed::Points(v) => put_floats(&mut body, v.iter().copied()),
                    Closed::Packed(p) => {
                        put_floats(&mut body, p.coarse.iter().copied());
                        put_floats(&mut body, p.pending.iter().copied());
                        put_floats(&mut body, p.tail.iter().copied());
                        put_floats(&mut body, p.blocks.iter().map(|b| b.min));
                        put_floats(&mut body, p.blocks.iter().map(|b| b.max));
                        for b in &p.blocks {
                            body.extend_from_slice(&b.q);
                        }
                    }
                }
            }
            for t in &terms {
                for x in t {
                    body.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        let Some(frame) = compress(&body) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(frame.len() + 6);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&frame);
        out
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
        let mut h: Header = serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))?;
        if h.target != key {
            return Err(corrupt(format!("it is the snapshot of {:?}", h.target)));
        }
        let section = &body[4 + json_len..];
        let metric = |name: &str| {
            Metric::parse(name).ok_or_else(|| corrupt(format!("unknown metric {name:?}")))
        };
        for x in &h.histories {
            if x.step_ms <= 0 {
                return Err(corrupt(format!("history step {} ms", x.step_ms)));
            }
        }
        let closed = if version == 1 {
            planes_v1(&h.histories, section)
        } else {
            sections_v2(&h.histories, &h.seasonals, &mut h.forecasters, section)
        }
        .map_err(corrupt)?;
        let mut histories = Vec::with_capacity(h.histories.len());
        for (x, closed) in h.histories.iter().zip(closed) {
            let state = HistoryState {
                step_ms: x.step_ms,
                first_step: x.first_step,
                closed,
            };
            // every step's time, first to last, is a time in milliseconds
            let last = x.first_step.checked_add(state.len() as i64);
            if x.first_step.checked_mul(x.step_ms).is_none()
                || last.and_then(|l| l.checked_mul(x.step_ms)).is_none()
            {
                return Err(corrupt(format!(
                    "{}: history from step {} of {} ms is past any time",
                    x.metric, x.first_step, x.step_ms
                )));
            }
            histories.push((metric(&x.metric)?, state));
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

/// Version 1's histories: every point, all of them byte plane by byte
/// plane.
fn planes_v1(histories: &[HistoryHeader], planes: &[u8]) -> Result<Vec<Closed>, String> {
    let floats = histories
        .iter()
        .try_fold(0usize, |n, x| n.checked_add(x.points))
        .unwrap_or(usize::MAX);
    if floats.checked_mul(4) != Some(planes.len()) {
        return Err(format!(
            "{} bytes of history for {floats} points",
            planes.len()
        ));
    }
    let mut i = 0;
    Ok(histories
        .iter()
        .map(|x| {
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
            Closed::Points(points)
        })
        .collect())
}

/// Version 2's histories: each one's parts (or its points), in order, the
/// section read to its end.
fn sections_v2(
    histories: &[HistoryHeader],
    seasonals: &[usize],
    forecasters: &mut [(String, ForecasterState)],
    bytes: &[u8],
) -> Result<Vec<Closed>, String> {
    let mut s = Section { bytes };
    let mut out = Vec::with_capacity(histories.len());
    for x in histories {
        let Some(k) = &x.packed else {
            out.push(Closed::Points(s.floats(x.points, &x.metric)?));
            continue;
        };
        let coarse = s.floats(k.coarse, &x.metric)?;
        let pending = s.floats(k.pending, &x.metric)?;
        let tail = s.floats(k.tail, &x.metric)?;
        let mins = s.floats(k.blocks, &x.metric)?;
        let maxes = s.floats(k.blocks, &x.metric)?;
        let q = s.take(
            k.blocks
                .checked_mul(BLOCK)
                .ok_or_else(|| format!("{}: {} blocks", x.metric, k.blocks))?,
            &x.metric,
        )?;
        let blocks = q
            .chunks_exact(BLOCK)
            .zip(mins.into_iter().zip(maxes))
            .map(|(q, (min, max))| Block {
                min,
                max,
                q: q.try_into().unwrap_or([0; BLOCK]),
            })
            .collect();
        let p = Packed {
            capacity: k.capacity,
            coarse,
            coarse_skip: k.coarse_skip,
            pending,
            blocks,
            skip: k.skip,
            tail,
        };
        p.check().map_err(|why| format!("{}: {why}", x.metric))?;
        out.push(Closed::Packed(p));
    }
    // then each model's seasonal terms
    if !seasonals.is_empty() && seasonals.len() != forecasters.len() {
        return Err(format!(
            "seasonal terms for {} forecasters, {} forecasters",
            seasonals.len(),
            forecasters.len()
        ));
    }
    for (&n, (metric, f)) in seasonals.iter().zip(forecasters.iter_mut()) {
        if f.model.is_none() && n > 0 {
            return Err(format!("{metric}: {n} seasonal terms and no model"));
        }
        let bytes = n
            .checked_mul(8)
            .ok_or_else(|| format!("{metric}: {n} seasonal terms"))?;
        let terms: Vec<f64> = s
            .take(bytes, metric)?
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect();
        if let Some(model) = f.model.as_mut() {
            model.put_seasonals(terms);
        }
    }
    if !s.bytes.is_empty() {
        return Err(format!("{} bytes past the last history", s.bytes.len()));
    }
    Ok(out)
}

thread_local! {
    /// Each thread's zstd context, kept: one made for each snapshot was
    /// 9% of the state thread's samples (PERFORMANCE.md, "A zstd context
    /// kept by each thread"). In the scaler only the state thread
    /// encodes, so this is one context's memory.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// `body` as one zstd frame at level 3 with its checksum and size, in
/// this thread's kept context; `None` if zstd fails.
fn compress(body: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            let mut z = zstd::bulk::Compressor::new(3).ok()?;
            z.include_checksum(true).ok()?;
            *c = Some(z);
        }
        c.as_mut()?.compress(body).ok()
    })
}

thread_local! {
    /// Each thread's zstd context for decoding, kept as the encoder's
    /// is: one made for each snapshot was 2.4% of a restore's profile.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd, refusing to expand past `MAX_DECODED`. A frame that gives its
/// size (every one [`compress`] writes) is decoded into exactly that
/// room in this thread's kept context, and zstd checks the size and the
/// checksum; any other frame through a stream decoder of its own.
fn decompress(frame: &[u8]) -> Result<Vec<u8>, String> {
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(frame) {
        if size > MAX_DECODED as u64 {
            return Err(format!("it expands past {MAX_DECODED} bytes"));
        }
        let kept = DECOMPRESSOR.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = zstd::bulk::Decompressor::new().ok();
            }
            d.as_mut().map(|d| d.decompress(frame, size as usize))
        });
        if let Some(out) = kept {
            return out.map_err(|e| format!("it does not decompress: {e}"));
        }
    }
    streamed(frame)
}

/// [`decompress`] through a stream decoder, for a frame that does not
/// give its size.
fn streamed(frame: &[u8]) -> Result<Vec<u8>, String> {
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
pub(crate) mod tests {
    use super::*;

    /// 11,520 points: a wave with a gap every 500.
    fn wave() -> Vec<f32> {
        (0..11_520)
            .map(|i| {
                if i % 500 == 7 {
                    f32::NAN
                } else {
                    100.0 + (i as f32 / 60.0).sin() * 40.0
                }
            })
            .collect()
    }

    /// A two-week history of 11,520 + 50 steps: its parts.
    fn packed_history() -> HistoryState {
        let mut h = crate::window::History::new(
            std::time::Duration::from_secs(14 * 86_400),
            std::time::Duration::from_secs(60),
            false,
        );
        let first = 29_400_000i64;
        for (i, v) in wave().into_iter().chain([5.0; 50]).enumerate() {
            if v.is_finite() {
                h.record((first + i as i64) * 60_000, f64::from(v));
            }
        }
        h.record((first + 11_570) * 60_000, 0.0);
        h.export()
    }

    pub(crate) fn sample() -> TargetSnapshot {
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
            histories: vec![
                (Metric::QueueDepth, packed_history()),
                (
                    Metric::Requests,
                    HistoryState {
                        step_ms: 60_000,
                        first_step: 29_400_000,
                        closed: Closed::Points(wave()),
                    },
                ),
            ],
            forecasters: vec![],
        }
    }

    /// NaN != NaN: the snapshots as their debug text (a NaN is "NaN").
    fn same(a: &TargetSnapshot, b: &TargetSnapshot) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    fn bits(points: &[f32]) -> Vec<u32> {
        points.iter().map(|p| p.to_bits()).collect()
    }

    /// Version 2 gives back the history's parts as they were, and points
    /// as they were; version 1 (still read, and written for a rolling
    /// upgrade) gives every point of both, bit for bit.
    #[test]
    fn round_trips_exactly_and_compresses_the_history() {
        let s = sample();
        let bytes = s.encode();
        assert_eq!(bytes[4..6], FORMAT_VERSION.to_le_bytes());
        let back = TargetSnapshot::decode("checkout", &bytes).unwrap();
        assert!(same(&s, &back));
        assert!(matches!(back.histories[0].1.closed, Closed::Packed(_)));
        let v1 = s.encode_as(1);
        assert_eq!(v1[4..6], 1u16.to_le_bytes());
        let old = TargetSnapshot::decode("checkout", &v1).unwrap();
        for ((m, a), (n, b)) in s.histories.iter().zip(&old.histories) {
            assert_eq!(m, n);
            assert!(matches!(b.closed, Closed::Points(_)));
            assert_eq!((a.step_ms, a.first_step), (b.step_ms, b.first_step));
            assert_eq!(bits(&a.points()), bits(&b.points()), "{m:?}");
        }
        let strip = |s: &TargetSnapshot| TargetSnapshot {
            histories: Vec::new(),
            ..s.clone()
        };
        assert!(same(&strip(&s), &strip(&old)));
        // the parts of 11,570 steps take fewer bytes than the 11,520
        // floats of the other history (46,080 bytes raw)
        let packed_only = TargetSnapshot {
            histories: s.histories[..1].to_vec(),
            ..s.clone()
        };
        let points_only = TargetSnapshot {
            histories: s.histories[1..].to_vec(),
            ..s.clone()
        };
        // floats (46,080 bytes raw; version 1's byte planes)
        let (p, q) = (packed_only.encode().len(), points_only.encode_as(1).len());
        assert!(p * 2 < q && q < 40_000, "{p} bytes of parts, {q} of points");
        // version 1 of the parts is every point again
        assert!(packed_only.encode_as(1).len() * 2 > q);
    }

    /// A fitted daily model: its 1,440 seasonal terms go as bytes after
    /// the histories in version 2 (none in the JSON), as numbers in the
    /// JSON in version 1; both read back to the same model, and counts
    /// that do not fit the bytes or the models are corrupt.
    #[test]
    fn a_models_seasonal_terms_are_bytes_in_version_2() {
        let series: Vec<f64> = (0..3 * 1440)
            .map(|i| {
                100.0 + 40.0 * (i as f64 * std::f64::consts::TAU / 1440.0).sin() + (i % 7) as f64
            })
            .collect();
        let model = crate::forecast::holt::HoltWinters::fit(&series, 1440).expect("a fit");
        let state = ForecasterState {
            model: Some(model),
            next_step: 29_411_570,
            fitted_at_ms: Some(1_763_999_000_000),
            fitted_len: 3 * 1440,
            last: 107.0,
        };
        let s = TargetSnapshot {
            forecasters: vec![
                (Metric::QueueDepth, state),
                (
                    Metric::Requests,
                    ForecasterState {
                        model: None,
                        next_step: 5,
                        fitted_at_ms: None,
                        fitted_len: 0,
                        last: 1.0,
                    },
                ),
            ],
            ..sample()
        };
        for version in [1, 2] {
            let bytes = s.encode_as(version);
            let back = TargetSnapshot::decode("checkout", &bytes).unwrap();
            // version 1 writes the histories as points (compared in
            // round_trips_exactly_and_compresses_the_history)
            let models = |t: &TargetSnapshot| format!("{:?}", t.forecasters);
            assert_eq!(models(&back), models(&s), "version {version}");
            assert!(version == 1 || same(&s, &back));
            assert!(back.forecasters[0].1.model.as_ref().unwrap().is_sound());
            let body = decompress(&bytes[6..]).unwrap();
            let n = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
            let header: serde_json::Value = serde_json::from_slice(&body[4..4 + n]).unwrap();
            let in_json = header["forecasters"][0][1]["model"]["seasonals"]
                .as_array()
                .unwrap()
                .len();
            assert_eq!(
                in_json,
                if version == 1 { 1440 } else { 0 },
                "version {version}"
            );
        }
        for (counts, says) in [
            (
                serde_json::json!([1440]),
                "seasonal terms for 1 forecasters",
            ),
            (
                serde_json::json!([1440, 3]),
                "3 seasonal terms and no model",
            ),
            (
                serde_json::json!([100_000, 0]),
                "left in the history section",
            ),
            (serde_json::json!([1439, 0]), "bytes past the last history"),
        ] {
            let odd = with_header(&s, |h| h["seasonals"] = counts.clone());
            let e = TargetSnapshot::decode("checkout", &odd).unwrap_err();
            assert!(e.to_string().contains(says), "{counts}: {e}");
        }
    }

    /// Parts that no history holds, in a snapshot whose bytes are intact
    /// (a writer's bug or a hostile record), are corrupt and say which
    /// history and why; so are sizes past the section's end.
    #[test]
    fn parts_no_history_holds_are_corrupt() {
        let s = sample();
        for (field, value, says) in [
            ("skip", 64, "points left of"),
            ("coarse_skip", 15, "coarse points"),
            ("capacity", 0, "capacity of 0"),
            ("blocks", 1_000_000, "left in the history section"),
            ("tail", 1, "bytes past the last history"),
        ] {
            let odd = with_header(&s, |h| {
                h["histories"][0]["packed"][field] = serde_json::json!(value);
            });
            let e = TargetSnapshot::decode("checkout", &odd).unwrap_err();
            let text = e.to_string();
            assert_eq!(e.code(), "corrupt", "{field}: {text}");
            assert!(text.contains(says), "{field}: {text}");
            // a damaged history is named, except bytes left after the last
            assert!(
                field == "tail" || text.contains("queue_depth"),
                "{field}: {text}"
            );
        }
        // a first step whose time does not fit in milliseconds, in either
        // format: corrupt, never an overflow later
        for v1 in [false, true] {
            let mut bytes = with_header(&s, |h| {
                h["histories"][1]["first_step"] = serde_json::json!(i64::MAX / 1000);
            });
            if v1 {
                let old = TargetSnapshot {
                    histories: vec![(
                        Metric::Requests,
                        HistoryState {
                            first_step: i64::MAX / 1000,
                            ..s.histories[1].1.clone()
                        },
                    )],
                    ..s.clone()
                };
                bytes = old.encode_as(1);
            }
            let e = TargetSnapshot::decode("checkout", &bytes).unwrap_err();
            assert!(e.to_string().contains("past any time"), "{e}");
        }
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

    /// The thread's kept zstd context makes the same frame every time,
    /// the same as a fresh thread's (nothing of one snapshot carries into
    /// the next), with its checksum and its content size in the header.
    #[test]
    fn a_kept_context_makes_the_same_checked_frame() {
        let s = sample();
        let first = s.encode();
        let again = s.encode();
        let fresh = std::thread::spawn(move || s.encode()).join().unwrap();
        assert_eq!(first, again);
        assert_eq!(first, fresh);
        let other = {
            let mut t = sample();
            t.current += 1;
            t.encode()
        };
        assert_ne!(other, first);
        assert!(TargetSnapshot::decode("checkout", &first).is_ok());
        // the frame: its magic, then the descriptor's checksum and size bits
        assert_eq!(first[6..10], [0x28, 0xb5, 0x2f, 0xfd]);
        let descriptor = first[10];
        assert_ne!(descriptor & 0x04, 0, "checksum flag");
        assert_ne!(descriptor & 0xc0 | descriptor & 0x20, 0, "content size");
    }

    /// The kept decoder reads a frame as a stream decoder does, again and
    /// on another thread; a frame without its size goes the stream's way;
    /// one whose header promises more than MAX_DECODED is refused before
    /// any room is made; and a flipped header bit it reads through is one
    /// the stream decoder reads through too.
    #[test]
    fn a_kept_decoder_reads_what_a_stream_decoder_reads() {
        let frame = sample().encode()[6..].to_vec();
        let body = streamed(&frame).unwrap();
        assert!(body.len() > 1000);
        assert_eq!(decompress(&frame).unwrap(), body);
        assert_eq!(decompress(&frame).unwrap(), body, "the kept context again");
        let f = frame.clone();
        let other = std::thread::spawn(move || decompress(&f).unwrap())
            .join()
            .unwrap();
        assert_eq!(other, body);
        // no size in the header: the stream decoder
        let unsized_frame = zstd::stream::encode_all(&body[..], 3).unwrap();
        assert!(matches!(
            zstd::zstd_safe::get_frame_content_size(&unsized_frame),
            Ok(None)
        ));
        assert_eq!(decompress(&unsized_frame).unwrap(), body);
        // a header that promises more than the bound
        let big = vec![0u8; MAX_DECODED + 1];
        let bomb = zstd::bulk::compress(&big, 1).unwrap();
        assert!(bomb.len() < 1 << 20);
        let e = decompress(&bomb).unwrap_err();
        assert!(e.contains("expands past"), "{e}");
        for at in 0..24 {
            for bit in 0..8 {
                let mut bad = frame.clone();
                bad[at] ^= 1 << bit;
                // what the kept decoder takes, the stream decoder takes
                // too, to the same bytes (the descriptor's unused bit is
                // ignored by both)
                if let Ok(out) = decompress(&bad) {
                    assert_eq!(streamed(&bad).as_ref(), Ok(&out), "bit {bit} of byte {at}");
                    assert_eq!(out, body, "bit {bit} of byte {at}");
                }
            }
        }
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
