//! `tidewatch signals check`: decodes sample messages offline with a
//! configured input's format and says what each record becomes (the
//! signal: target, metric, values) or why it becomes none, so a mapping
//! can be tried on a message copied from a broker before it is deployed.

use std::io::Write;
use std::path::PathBuf;

use crate::config::Config;
use crate::event::{Decoded, Input, Signal};

/// What to check.
pub struct CheckOptions {
    pub config: PathBuf,
    /// The input: its index in `[[source.inputs]]`, its topic or its
    /// routing-key pattern; `None`: tidewatch's own format.
    pub input: Option<String>,
    pub samples: Vec<PathBuf>,
    /// One message per line (a log file, a `kcat` dump) instead of one
    /// per file.
    pub lines: bool,
}

/// Why the check could not run (a usage error, exit 64).
#[derive(Debug)]
pub struct Usage(pub String);

/// Prints one line per record; true when every record became a signal
/// for a configured target.
pub fn check(opts: &CheckOptions, out: &mut dyn Write) -> Result<bool, Usage> {
    let (cfg, _) = Config::load(&opts.config).map_err(|e| {
        Usage(format!(
            "{}: {}",
            opts.config.display(),
            e.problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    let mut limits = cfg.engine.limits();
    // samples are copied from a broker at any time: no age limit here
    limits.max_event_age_ms = i64::MAX / 4;
    limits.max_clock_skew_ms = i64::MAX / 4;
    let inputs = crate::source::inputs::compile(&cfg.source.inputs, &limits);
    let tidewatch = Input {
        name: "tidewatch".into(),
        matcher: crate::event::Matcher::Topic(String::new()),
        decoder: crate::event::Decoder::Tidewatch,
        limits: limits.clone(),
        deadletter_unmatched: false,
    };
    let input = match &opts.input {
        None => &tidewatch,
        Some(sel) => {
            let by_index = sel.parse::<usize>().ok().and_then(|i| inputs.get(i));
            let by_name = (0..inputs.len())
                .filter_map(|i| inputs.get(i))
                .find(|i| i.name == *sel);
            by_index.or(by_name).ok_or_else(|| {
                let names: Vec<String> = (0..inputs.len())
                    .filter_map(|i| inputs.get(i))
                    .enumerate()
                    .map(|(n, i)| format!("{n} ({})", i.name))
                    .collect();
                Usage(format!(
                    "--input {sel:?}: no such input in {} (inputs: {})",
                    opts.config.display(),
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ))
            })?
        }
    };
    let targets: std::collections::HashSet<&str> =
        cfg.targets.iter().map(|t| t.name.as_str()).collect();
    let now = chrono::Utc::now().timestamp_millis();
    let at = crate::event::At {
        now_ms: now,
        default_ts: now,
    };
    let mut all_good = true;
    let w = |out: &mut dyn Write, line: String| {
        let _ = writeln!(out, "{line}");
    };
    for path in &opts.samples {
        let bytes = std::fs::read(path)
            .map_err(|e| Usage(format!("{}: cannot read: {e}", path.display())))?;
        let messages: Vec<&[u8]> = if opts.lines {
            bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                .collect()
        } else {
            vec![&bytes[..]]
        };
        for (m, msg) in messages.iter().enumerate() {
            let at_msg = if opts.lines {
                format!("{}:{}", path.display(), m + 1)
            } else {
                path.display().to_string()
            };
            for (r, d) in input.decode(msg, at).into_iter().enumerate() {
                let here = format!("{at_msg} record {r}");
                match d {
                    Decoded::Signal(s) => {
                        let known = targets.contains(s.target());
                        if !known {
                            all_good = false;
                        }
                        w(
                            out,
                            format!(
                                "{here}: {}{}",
                                describe(&s),
                                if known {
                                    String::new()
                                } else {
                                    format!(
                                        "  (unmatched: target {:?} is not in [[targets]])",
                                        s.target()
                                    )
                                }
                            ),
                        );
                    }
                    Decoded::Skipped(k) => {
                        all_good = false;
                        w(out, format!("{here}: unmatched ({})", k.code()));
                    }
                    Decoded::Rejected(e) => {
                        all_good = false;
                        w(out, format!("{here}: refused: {e}"));
                    }
                }
            }
        }
    }
    Ok(all_good)
}

/// A signal in one line: its type, target and values.
pub fn describe(s: &Signal) -> String {
    let when = |ms: i64| crate::clock::rfc3339(ms);
    match s {
        Signal::Latency(l) => format!(
            "gateway_latency target={} route={} samples_ms={:?} errors={} ts={}",
            l.target,
            l.route.as_deref().unwrap_or("-"),
            l.samples_ms,
            l.errors,
            when(l.ts_ms)
        ),
        Signal::QueueDepth(q) => format!(
            "queue_depth target={} queue={} depth={} ts={}",
            q.target,
            q.queue,
            q.depth,
            when(q.ts_ms)
        ),
        Signal::Forecast(f) => format!(
            "forecast target={} metric={} source={} points={}",
            f.target,
            f.metric,
            f.source,
            f.points.len()
        ),
        Signal::Control(c) => format!(
            "control target={} action={} replicas={} until={} by={} reason={:?} ts={}",
            c.target,
            c.action.code(),
            c.replicas.map_or("-".into(), |n| n.to_string()),
            c.until_ms.map_or("-".into(), when),
            c.by.as_deref().unwrap_or("-"),
            c.reason.as_deref().unwrap_or(""),
            when(c.ts_ms)
        ),
    }
}
