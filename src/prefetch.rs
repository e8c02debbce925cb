//! Asking the CPU for memory before it is read.
//!
//! At 50,000 targets a tick walks about a hundred megabytes of targets,
//! windows and Lua objects, and most of one target's reads miss every
//! cache (issue 21: `luaH_getshortstr`, a Lua table lookup, was a tenth
//! of the tick's profile, nearly all of it on the loads of the table and
//! its slots). The tick knows which target comes next, so it asks for the
//! next targets' memory while it evaluates this one
//! (the engine's prefetch stages).
//!
//! A prefetch is a hint: it never faults and changes no value, whatever
//! the address, so a wrong or stale address costs a wasted fill and
//! nothing else.

/// One cache line's bytes on the machines this runs on.
pub const LINE: usize = 64;

/// Asks for the cache line holding `p`.
#[inline(always)]
pub fn line<T: ?Sized>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` reads nothing a program can see and never
    // faults, whatever the address (Intel SDM, PREFETCHh).
    #[allow(unsafe_code)]
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks for the lines of the `bytes` bytes from `p`, at most `max_lines`.
#[inline]
pub fn lines<T: ?Sized>(p: *const T, bytes: usize, max_lines: usize) {
    let p = p.cast::<u8>();
    let skew = p as usize % LINE;
    let first = p.wrapping_sub(skew);
    let n = (skew + bytes.max(1)).div_ceil(LINE).min(max_lines);
    for k in 0..n {
        line(first.wrapping_add(k * LINE));
    }
}

/// Up to `N` places kept by address and length, to ask for together
/// (the first empty one ends them). An address is only ever prefetched,
/// so one that went stale costs a wasted fill.
#[derive(Debug, Clone, Copy)]
pub struct Places<const N: usize>([(usize, usize); N]);

impl<const N: usize> Default for Places<N> {
    fn default() -> Self {
        Self([(0, 0); N])
    }
}

impl<const N: usize> Places<N> {
    /// From `(address, bytes)` pairs, the first `N`.
    pub fn of(places: impl IntoIterator<Item = (usize, usize)>) -> Self {
        let mut out = Self::default();
        for (slot, p) in out.0.iter_mut().zip(places) {
            *slot = p;
        }
        out
    }

    /// Asks for the first `max_lines` lines of each place.
    pub fn prefetch(&self, max_lines: usize) {
        for &(at, bytes) in &self.0 {
            if at == 0 {
                break;
            }
            lines(at as *const u8, bytes, max_lines);
        }
    }

    #[cfg(test)]
    pub fn places(&self) -> &[(usize, usize); N] {
        &self.0
    }
}
