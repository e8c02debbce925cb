//! Per-target gauges whose series come and go with every command (the
//! desired and observed replicas, the unanswered commands), kept so that
//! a scrape never holds a lock the engine shards wait on.
//!
//! A `prometheus` vector keeps its series in a map behind one lock, and a
//! scrape reads every series of 50,000 targets under it: a series added
//! or removed meanwhile (with `summary` the observed one appears with each
//! command and goes with its result) waits for the whole scrape, and with
//! it the shard that issued the command and every signal behind it. Here
//! each target has a slot of its own, found through a map that only a new
//! target writes; a value is an atomic, "no series" a sentinel, and a
//! scrape copies the list of slot chunks under a read lock held for a
//! moment, then reads the atomics without one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto;

/// Slots per chunk: chunks are added, never moved, so a writer holds a
/// slot's atomic through a chunk that stays where it is.
const CHUNK: usize = 1024;

/// The value of a slot without a series.
const ABSENT: i64 = i64::MIN;

struct Chunk {
    names: Vec<OnceLock<String>>,
    values: Vec<AtomicI64>,
}

impl Chunk {
    fn new() -> Self {
        Self {
            names: (0..CHUNK).map(|_| OnceLock::new()).collect(),
            values: (0..CHUNK).map(|_| AtomicI64::new(ABSENT)).collect(),
        }
    }
}

#[derive(Default)]
struct Slots {
    index: HashMap<String, usize>,
    chunks: Vec<Arc<Chunk>>,
}

/// An integer gauge with one label, `target`, whose series a scrape reads
/// without blocking the writers (see the module's text).
#[derive(Clone)]
pub struct TargetGauges {
    desc: Desc,
    slots: Arc<RwLock<Slots>>,
}

impl TargetGauges {
    pub fn new(name: &str, help: &str) -> prometheus::Result<Self> {
        Ok(Self {
            desc: Desc::new(
                name.to_string(),
                help.to_string(),
                vec!["target".to_string()],
                HashMap::new(),
            )?,
            slots: Arc::default(),
        })
    }

    /// `target`'s series at `value` (made if it has none).
    pub fn set(&self, target: &str, value: i64) {
        self.with_slot(target, true, |a| a.store(value, Ordering::Relaxed));
    }

    /// `target` has no series (until the next `set`).
    pub fn remove(&self, target: &str) {
        self.with_slot(target, false, |a| a.store(ABSENT, Ordering::Relaxed));
    }

    /// `target`'s value, if it has a series.
    #[cfg(test)]
    pub fn get(&self, target: &str) -> Option<i64> {
        let mut out = None;
        self.with_slot(target, false, |a| {
            out = Some(a.load(Ordering::Relaxed)).filter(|&v| v != ABSENT)
        });
        out
    }

    fn with_slot(&self, target: &str, make: bool, f: impl FnOnce(&AtomicI64)) {
        {
            let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
            if let Some(&i) = slots.index.get(target) {
                f(&slots.chunks[i / CHUNK].values[i % CHUNK]);
                return;
            }
        }
        if !make {
            return;
        }
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        let i = match slots.index.get(target) {
            Some(&i) => i,
            None => {
                let i = slots.index.len();
                if i / CHUNK == slots.chunks.len() {
                    slots.chunks.push(Arc::new(Chunk::new()));
                }
                let _ = slots.chunks[i / CHUNK].names[i % CHUNK].set(target.to_string());
                slots.index.insert(target.to_string(), i);
                i
            }
        };
        f(&slots.chunks[i / CHUNK].values[i % CHUNK]);
    }
}

impl TargetGauges {
    /// Its series in the Prometheus text format (what `TextEncoder`
    /// writes for the family `collect` returns), appended to `out`;
    /// nothing without a series. Written straight from the slots: a
    /// scrape of 50,000 targets makes no `proto::Metric` per target.
    pub fn write_text(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let name = &self.desc.fq_name;
        let mut any = false;
        self.each(|target, v| {
            if !any {
                any = true;
                let help = escape(&self.desc.help, false);
                let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n");
            }
            let _ = writeln!(out, "{name}{{target=\"{}\"}} {v}", escape(target, true));
        });
    }

    /// `f(target, value)` for each series, in the order targets first came.
    fn each(&self, mut f: impl FnMut(&str, i64)) {
        // the chunks, under the lock for as long as a copy of ~50 pointers
        let (chunks, used) = {
            let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
            (slots.chunks.clone(), slots.index.len())
        };
        for (c, chunk) in chunks.iter().enumerate() {
            for k in 0..CHUNK.min(used.saturating_sub(c * CHUNK)) {
                let v = chunk.values[k].load(Ordering::Relaxed);
                if let (Some(target), false) = (chunk.names[k].get(), v == ABSENT) {
                    f(target, v);
                }
            }
        }
    }
}

/// `s` escaped as the text format asks: a backslash and a line feed in
/// HELP, and the double quote too in a label value.
fn escape(s: &str, quote: bool) -> std::borrow::Cow<'_, str> {
    if !s.contains(['\\', '\n', '"']) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut e = String::with_capacity(s.len() + 4);
    for ch in s.chars() {
        match ch {
            '\\' => e.push_str("\\\\"),
            '\n' => e.push_str("\\n"),
            '"' if quote => e.push_str("\\\""),
            _ => e.push(ch),
        }
    }
    std::borrow::Cow::Owned(e)
}

impl Collector for TargetGauges {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let mut metrics = Vec::new();
        self.each(|target, v| {
            let mut label = proto::LabelPair::default();
            label.set_name("target".to_string());
            label.set_value(target.to_string());
            let mut gauge = proto::Gauge::default();
            gauge.set_value(v as f64);
            let mut m = proto::Metric::from_label(vec![label]);
            m.set_gauge(gauge);
            metrics.push(m);
        });
        let mut family = proto::MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(proto::MetricType::GAUGE);
        family.set_metric(metrics);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(g: &TargetGauges) -> Vec<(String, f64)> {
        g.collect()[0]
            .get_metric()
            .iter()
            .map(|m| {
                (
                    m.get_label()[0].value().to_string(),
                    m.get_gauge().get_value(),
                )
            })
            .collect()
    }

    #[test]
    fn series_come_and_go_in_the_order_targets_first_came() {
        let g = TargetGauges::new("tidewatch_test_gauge", "a test").unwrap();
        assert!(lines(&g).is_empty());
        g.set("b", 3);
        g.set("a", 2);
        g.remove("nobody");
        assert_eq!(lines(&g), vec![("b".into(), 3.0), ("a".into(), 2.0)]);
        g.remove("b");
        assert_eq!(lines(&g), vec![("a".into(), 2.0)]);
        assert_eq!(g.get("b"), None);
        g.set("b", 7);
        assert_eq!(g.get("b"), Some(7));
        assert_eq!(lines(&g), vec![("b".into(), 7.0), ("a".into(), 2.0)]);
        // across chunks
        for i in 0..3000 {
            g.set(&format!("t{i}"), i);
        }
        assert_eq!(lines(&g).len(), 3002);
        assert_eq!(g.get("t2999"), Some(2999));
    }

    /// The text written straight from the slots is what the `prometheus`
    /// crate's encoder writes for the same series, escapes included.
    #[test]
    fn text_is_what_the_encoder_writes() {
        use prometheus::Encoder;
        let g = TargetGauges::new("tidewatch_test_gauge", "a \\ test\nof help").unwrap();
        let text = |g: &TargetGauges| {
            let mut ours = Vec::new();
            g.write_text(&mut ours);
            let mut theirs = Vec::new();
            let families: Vec<_> = g
                .collect()
                .into_iter()
                .filter(|f| !f.get_metric().is_empty())
                .collect();
            prometheus::TextEncoder::new()
                .encode(&families, &mut theirs)
                .unwrap();
            (
                String::from_utf8(ours).unwrap(),
                String::from_utf8(theirs).unwrap(),
            )
        };
        let (ours, theirs) = text(&g);
        assert_eq!(ours, "", "no series, no family");
        assert_eq!(theirs, "");
        g.set("plain", 3);
        g.set("odd \"quoted\" \\ name\nline", -2);
        g.set("gone", 1);
        g.remove("gone");
        for i in 0..1500 {
            g.set(&format!("t{i}"), i);
        }
        let (ours, theirs) = text(&g);
        assert_eq!(ours, theirs);
        assert!(
            ours.contains(r#"tidewatch_test_gauge{target="odd \"quoted\" \\ name\nline"} -2"#),
            "{ours}"
        );
        assert!(
            ours.starts_with("# HELP tidewatch_test_gauge a \\\\ test\\nof help\n"),
            "{ours}"
        );
        assert_eq!(ours.lines().count(), 2 + 1502);
    }
}
