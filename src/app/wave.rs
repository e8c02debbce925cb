//! The demo's load: a daily-like wave with a flash spike, shared by the
//! demo and loadgen.

/// Messages per second at virtual second `t`: a daily-like wave between
/// `base` and `base + swing`, and a flash spike at 60% of each day.
pub fn load_at(t: f64, day: f64, base: f64, swing: f64) -> f64 {
    let phase = (t % day) / day;
    let wave = base + swing * 0.5 * (1.0 - (2.0 * std::f64::consts::PI * phase).cos());
    let spike_start = 0.6 * day;
    let spike = if (t % day) >= spike_start && (t % day) < spike_start + day / 20.0 {
        2.0
    } else {
        1.0
    };
    wave * spike
}
