//! The one retry schedule of every broker client: exponential backoff
//! from 100 ms, doubling to a 5 s interval, each wait jittered by ±50 %
//! (so 50 ms to 7.5 s), forever. Used for reconnecting and for publishing
//! until acknowledged.

use std::time::Duration;

use backoff::backoff::Backoff as _;
use backoff::ExponentialBackoff;

/// The longest interval before jitter.
pub const MAX_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Backoff(ExponentialBackoff);

impl Default for Backoff {
    fn default() -> Self {
        let first = Duration::from_millis(100);
        Self(ExponentialBackoff {
            // `current_interval` too: the struct's default (500 ms) would
            // otherwise be the first wait until the first reset.
            current_interval: first,
            initial_interval: first,
            max_interval: MAX_INTERVAL,
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        })
    }
}

impl Backoff {
    /// The same schedule from another first interval (still capped at 5 s).
    pub fn starting_at(first: Duration) -> Self {
        let mut b = Self::default();
        b.0.current_interval = first;
        b.0.initial_interval = first;
        b
    }

    /// How long to wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        self.0.next_backoff().unwrap_or(MAX_INTERVAL)
    }

    /// Back to the first interval, after a success.
    pub fn reset(&mut self) {
        self.0.reset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_cap_and_reset() {
        let mut b = Backoff::default();
        let first = b.next_wait();
        assert!(
            first <= Duration::from_millis(150),
            "starts at 100 ms: {first:?}"
        );
        let later: Vec<Duration> = (0..20).map(|_| b.next_wait()).collect();
        let most = MAX_INTERVAL.mul_f64(1.5);
        assert!(later.iter().all(|w| *w <= most), "{later:?}");
        assert!(later[19] >= MAX_INTERVAL / 2, "{later:?}");
        b.reset();
        assert!(
            b.next_wait() <= Duration::from_millis(150),
            "reset starts at 100 ms"
        );
    }
}
