//! A mergeable quantile sketch with bounded relative error (the DDSketch
//! scheme: logarithmic bins, so a quantile is off by at most `ALPHA` of its
//! value), kept small by a cap on bins that collapses the lowest ones.

/// Relative accuracy of every quantile whose bin was not collapsed.
pub const ALPHA: f64 = 0.02;
/// Values below this count as zero (latency in ms, depth in messages).
pub const MIN_VALUE: f64 = 1e-3;
/// At most this many bins per sketch; with `ALPHA` = 2% they span a ratio
/// of about 600 between the smallest and the largest value kept exact.
pub const MAX_BINS: usize = 160;

const GAMMA: f64 = (1.0 + ALPHA) / (1.0 - ALPHA);

/// ln(GAMMA), written out because `ln` is not const (checked by a test).
const LN_GAMMA: f64 = 0.040005334613699206;
const INV_LN_GAMMA: f64 = 24.996666311036567;

#[inline]
fn ln_gamma() -> f64 {
    LN_GAMMA
}

/// The bin of a positive value; `None` for values that count as zero.
#[inline]
pub fn key(v: f64) -> Option<i32> {
    if v < MIN_VALUE {
        None
    } else {
        Some((v.ln() * INV_LN_GAMMA).ceil() as i32)
    }
}

/// The representative of a bin: within `ALPHA` of every value in it.
#[inline]
fn value_of(key: i32) -> f64 {
    // gamma^key * 2 / (gamma + 1), with exp: powi is a slow libgcc loop.
    (f64::from(key) * ln_gamma()).exp() * (2.0 / (GAMMA + 1.0))
}

#[derive(Debug, Clone, Default)]
pub struct Sketch {
    offset: i32,
    counts: Vec<u32>,
    zeros: u64,
}

impl Sketch {
    pub fn clear(&mut self) {
        self.counts.clear();
        self.zeros = 0;
    }

    pub fn count(&self) -> u64 {
        self.zeros + self.counts.iter().map(|&c| u64::from(c)).sum::<u64>()
    }

    pub fn heap_bytes(&self) -> usize {
        self.counts.capacity() * std::mem::size_of::<u32>()
    }

    #[inline]
    pub fn add_key(&mut self, key: Option<i32>) {
        let Some(k) = key else {
            self.zeros += 1;
            return;
        };
        if self.counts.is_empty() {
            self.offset = k;
            self.counts.push(1);
            return;
        }
        let top = self.offset + self.counts.len() as i32 - 1;
        if k >= self.offset && k <= top {
            let c = &mut self.counts[(k - self.offset) as usize];
            *c = c.saturating_add(1);
            return;
        }
        let lo = k.min(self.offset);
        let hi = k.max(top);
        let span = (hi - lo + 1) as usize;
        if span <= MAX_BINS {
            self.regrid(lo, span);
            let c = &mut self.counts[(k - self.offset) as usize];
            *c = c.saturating_add(1);
        } else {
            // Keep the top MAX_BINS bins: high quantiles matter for scaling.
            let new_lo = hi - MAX_BINS as i32 + 1;
            self.regrid(new_lo, MAX_BINS);
            let k = k.max(new_lo);
            let c = &mut self.counts[(k - self.offset) as usize];
            *c = c.saturating_add(1);
        }
    }

    /// Moves the bins onto `[lo, lo + len)`, folding bins below `lo` into `lo`.
    fn regrid(&mut self, lo: i32, len: usize) {
        let mut next = vec![0u32; len];
        for (i, &c) in self.counts.iter().enumerate() {
            let k = self.offset + i as i32;
            let j = (k.max(lo) - lo) as usize;
            if j < len {
                next[j] = next[j].saturating_add(c);
            }
        }
        self.offset = lo;
        self.counts = next;
    }

    /// Quantiles `qs` (ascending, in [0, 1]) of the union of `sketches`,
    /// written to `out`; false when they hold no values.
    /// The q-quantile is the element of rank floor(q * (n - 1)).
    pub fn merged_quantiles<'a>(
        sketches: impl Iterator<Item = &'a Sketch>,
        qs: &[f64],
        out: &mut [f64],
    ) -> bool {
        let mut live: [Option<&Sketch>; 16] = [None; 16];
        let mut n_live = 0;
        let mut zeros = 0u64;
        let mut lo = i32::MAX;
        let mut hi = i32::MIN;
        for s in sketches {
            zeros += s.zeros;
            if !s.counts.is_empty() && n_live < live.len() {
                lo = lo.min(s.offset);
                hi = hi.max(s.offset + s.counts.len() as i32 - 1);
                live[n_live] = Some(s);
                n_live += 1;
            }
        }
        // One pass over every bin into a merged histogram, then one walk.
        let width = if n_live == 0 {
            0
        } else {
            (hi - lo + 1) as usize
        };
        // On the stack for the usual width; the heap only for rare wide unions.
        let mut stack = [0u64; 2 * MAX_BINS];
        let mut heap = Vec::new();
        let merged: &mut [u64] = if width <= stack.len() {
            &mut stack[..width]
        } else {
            heap.resize(width, 0);
            &mut heap
        };
        for s in live.iter().take(n_live).flatten() {
            let base = (s.offset - lo) as usize;
            for (m, &c) in merged[base..base + s.counts.len()]
                .iter_mut()
                .zip(&s.counts)
            {
                *m += u64::from(c);
            }
        }
        let total = zeros + merged.iter().sum::<u64>();
        let merged = &*merged;
        if total == 0 {
            return false;
        }
        let mut ranks = [0u64; 8];
        for (r, q) in ranks.iter_mut().zip(qs) {
            *r = (q.clamp(0.0, 1.0) * (total - 1) as f64).floor() as u64;
        }
        let ranks = &ranks[..qs.len().min(8)];
        let mut qi = 0;
        let mut seen = zeros;
        while qi < ranks.len() && ranks[qi] < seen {
            out[qi] = 0.0;
            qi += 1;
        }
        for (i, &c) in merged.iter().enumerate() {
            if qi == ranks.len() {
                break;
            }
            seen += c;
            while qi < ranks.len() && ranks[qi] < seen {
                out[qi] = value_of(lo + i as i32);
                qi += 1;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_gamma() {
        assert!((LN_GAMMA - GAMMA.ln()).abs() < 1e-15);
        assert!((INV_LN_GAMMA - 1.0 / GAMMA.ln()).abs() < 1e-12);
    }

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64) / ((1u64 << 53) as f64)
    }

    /// Stated accuracy: every quantile within ALPHA (2%) of the exact one,
    /// for values spanning less than the ratio MAX_BINS bins cover.
    #[test]
    fn quantiles_within_stated_relative_error() {
        let qs = [0.5, 0.9, 0.95, 0.99];
        let mut seed = 42;
        for (lo, hi) in [(1.0f64, 400.0f64), (0.5, 50.0), (100.0, 20_000.0)] {
            // Log-uniform samples across [lo, hi], spread over 10 sketches.
            let mut sketches = vec![Sketch::default(); 10];
            let mut all = Vec::new();
            for i in 0..20_000 {
                let v: f64 = lo * (hi / lo).powf(lcg(&mut seed));
                sketches[i % 10].add_key(key(v));
                all.push(v);
            }
            all.sort_by(f64::total_cmp);
            let mut out = [0.0; 4];
            assert!(Sketch::merged_quantiles(sketches.iter(), &qs, &mut out));
            for (q, got) in qs.iter().zip(out) {
                let want = exact(&all, *q);
                let err = (got - want).abs() / want;
                assert!(
                    err <= ALPHA,
                    "q{q} range {lo}-{hi}: got {got}, exact {want}, err {err}"
                );
            }
        }
    }

    #[test]
    fn zeros_and_collapse_keep_high_quantiles_exact() {
        let mut s = Sketch::default();
        for _ in 0..50 {
            s.add_key(key(0.0));
        }
        // A range far wider than MAX_BINS bins: the low end collapses.
        for i in 0..50 {
            s.add_key(key(0.01 * 1.5f64.powi(i)));
        }
        assert!(s.counts.len() <= MAX_BINS);
        assert_eq!(s.count(), 100);
        let mut out = [0.0; 3];
        Sketch::merged_quantiles(std::iter::once(&s), &[0.2, 0.99, 1.0], &mut out);
        assert_eq!(out[0], 0.0);
        let top = 0.01 * 1.5f64.powi(49);
        assert!((out[2] - top).abs() / top <= ALPHA, "{} vs {top}", out[2]);
        let p99 = 0.01 * 1.5f64.powi(48);
        assert!((out[1] - p99).abs() / p99 <= ALPHA, "{} vs {p99}", out[1]);
    }

    #[test]
    fn empty_sketches_have_no_quantiles() {
        let s = Sketch::default();
        let mut out = [0.0];
        assert!(!Sketch::merged_quantiles(
            std::iter::once(&s),
            &[0.5],
            &mut out
        ));
    }
}
