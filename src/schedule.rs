//! Scheduled scaling: `[[targets.schedules]]` entries, each a cron
//! expression in a time zone and a duration, with min/max replica
//! overrides while it is active (like KEDA's cron scaler). An occurrence
//! that starts at `s` is active over `[s, s + duration)`. When several
//! are active, the first listed wins. The policy sees the active one in
//! `ctx.schedule`; the guard applies its bounds.

use std::str::FromStr;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::Deserialize;

use crate::clock::Millis;
use crate::settings::de_duration;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub name: String,
    /// Five fields (minute hour day-of-month month day-of-week), or six
    /// with seconds first.
    pub cron: String,
    /// An IANA time zone such as "Europe/Berlin"; default UTC.
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(deserialize_with = "de_duration")]
    pub duration: Duration,
    #[serde(default)]
    pub min_replicas: Option<u32>,
    #[serde(default)]
    pub max_replicas: Option<u32>,
}

fn utc() -> String {
    "UTC".into()
}

/// A checked schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    cron: Cron,
    tz: Tz,
    duration_ms: i64,
    pub min: Option<u32>,
    pub max: Option<u32>,
}

/// The schedule in force at some time.
#[derive(Debug, Clone, PartialEq)]
pub struct Active {
    pub name: String,
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub started_ms: Millis,
    pub ends_ms: Millis,
}

/// What is wrong with a schedule; names the bad value.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron {cron:?} does not parse: {source}")]
    Cron {
        cron: String,
        source: croner::errors::CronError,
    },
    #[error("timezone {0:?} is not an IANA time zone")]
    Timezone(String),
    #[error("duration must be above zero")]
    ZeroDuration,
    #[error("min_replicas {min} is above max_replicas {max}")]
    Bounds { min: u32, max: u32 },
}

impl Schedule {
    /// Checks every field; the error names the bad value.
    pub fn parse(c: &ScheduleConfig) -> Result<Schedule, ScheduleError> {
        let cron = Cron::from_str(c.cron.trim()).map_err(|source| ScheduleError::Cron {
            cron: c.cron.clone(),
            source,
        })?;
        let tz =
            Tz::from_str(&c.timezone).map_err(|_| ScheduleError::Timezone(c.timezone.clone()))?;
        if c.duration.is_zero() {
            return Err(ScheduleError::ZeroDuration);
        }
        if let (Some(lo), Some(hi)) = (c.min_replicas, c.max_replicas) {
            if lo > hi {
                return Err(ScheduleError::Bounds { min: lo, max: hi });
            }
        }
        Ok(Schedule {
            name: c.name.clone(),
            cron,
            tz,
            duration_ms: c.duration.as_millis() as i64,
            min: c.min_replicas,
            max: c.max_replicas,
        })
    }

    /// The occurrence active at `now`, if any.
    pub fn active_at(&self, now_ms: Millis) -> Option<Active> {
        let now = Utc
            .timestamp_millis_opt(now_ms)
            .single()?
            .with_timezone(&self.tz);
        let start = self.cron.find_previous_occurrence(&now, true).ok()?;
        let started_ms = start.timestamp_millis();
        let ends_ms = started_ms + self.duration_ms;
        (now_ms < ends_ms).then(|| Active {
            name: self.name.clone(),
            min: self.min,
            max: self.max,
            started_ms,
            ends_ms,
        })
    }
}

/// The first listed schedule active at `now`.
pub fn active(schedules: &[Schedule], now_ms: Millis) -> Option<Active> {
    schedules.iter().find_map(|s| s.active_at(now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(cron: &str, tz: &str, hours: u64) -> ScheduleConfig {
        ScheduleConfig {
            name: "peak".into(),
            cron: cron.into(),
            timezone: tz.into(),
            duration: Duration::from_secs(hours * 3600),
            min_replicas: Some(10),
            max_replicas: None,
        }
    }

    fn ms(rfc3339: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn weekday_business_hours_in_a_time_zone() {
        // 08:00 to 18:00 in Berlin, Monday to Friday; 2026-11-24 is a Tuesday (UTC+1).
        let s = Schedule::parse(&cfg("0 8 * * 1-5", "Europe/Berlin", 10)).unwrap();
        let a = s
            .active_at(ms("2026-11-24T07:30:00Z"))
            .expect("08:30 Berlin");
        assert_eq!(a.started_ms, ms("2026-11-24T07:00:00Z"));
        assert_eq!(a.ends_ms, ms("2026-11-24T17:00:00Z"));
        assert_eq!(a.min, Some(10));
        assert!(
            s.active_at(ms("2026-11-24T06:59:59Z")).is_none(),
            "07:59 Berlin"
        );
        assert!(
            s.active_at(ms("2026-11-24T17:00:00Z")).is_none(),
            "the end is exclusive"
        );
        // Saturday
        assert!(s.active_at(ms("2026-11-28T09:00:00Z")).is_none());
        // the same clock time in UTC is an hour later
        let u = Schedule::parse(&cfg("0 8 * * 1-5", "UTC", 10)).unwrap();
        assert!(u.active_at(ms("2026-11-24T07:30:00Z")).is_none());
    }

    #[test]
    fn first_listed_active_schedule_wins() {
        let a = Schedule::parse(&cfg("0 * * * *", "UTC", 1)).unwrap();
        let mut c = cfg("0 0 * * *", "UTC", 24);
        c.name = "all-day".into();
        let b = Schedule::parse(&c).unwrap();
        let now = ms("2026-11-24T10:15:00Z");
        assert_eq!(active(&[a.clone(), b.clone()], now).unwrap().name, "peak");
        assert_eq!(active(&[b, a], now).unwrap().name, "all-day");
    }

    #[test]
    fn bad_fields_are_named() {
        let e = Schedule::parse(&cfg("0 25 * * *", "UTC", 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"0 25 * * *\""), "{e}");
        let e = Schedule::parse(&cfg("0 8 * * *", "Mars/Olympus", 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("Mars/Olympus"), "{e}");
        let e = Schedule::parse(&cfg("0 8 * * *", "UTC", 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("duration"), "{e}");
        let mut c = cfg("0 8 * * *", "UTC", 1);
        c.max_replicas = Some(3);
        let e = Schedule::parse(&c).unwrap_err().to_string();
        assert!(e.contains("min_replicas 10 is above max_replicas 3"), "{e}");
    }
}
