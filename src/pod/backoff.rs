//! Exponential back-off keyed by container or image, as client-go's
//! `flowcontrol.Backoff` that the kubelet uses for CrashLoopBackOff and
//! ImagePullBackOff: 10 s doubling to 5 min, forgotten after 2×max without failures.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};

#[derive(Debug, Clone)]
struct Entry {
    delay: Duration,
    last_update: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    entries: HashMap<String, Entry>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::seconds(10), Duration::seconds(300))
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, entries: HashMap::new() }
    }

    fn expired(&self, event: DateTime<Utc>, e: &Entry) -> bool {
        event - e.last_update > self.max * 2
    }

    /// Whether `key` is still backing off from an event at `event_time`; if so, when it ends.
    pub fn in_backoff_since(&self, key: &str, event_time: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let e = self.entries.get(key)?;
        if self.expired(event_time, e) {
            return None;
        }
        let until = event_time + e.delay;
        (now < until).then_some(until)
    }

    /// Records a failure at `event_time`: the first one (or one long after the last)
    /// starts at the initial delay, each next one doubles it up to the max.
    pub fn next(&mut self, key: &str, event_time: DateTime<Utc>) {
        let initial = self.initial;
        let max = self.max;
        let fresh = match self.entries.get(key) {
            None => true,
            Some(e) => self.expired(event_time, e),
        };
        let e = self.entries.entry(key.to_string()).or_insert(Entry { delay: initial, last_update: event_time });
        if fresh {
            e.delay = initial;
        } else {
            e.delay = (e.delay * 2).min(max);
        }
        e.last_update = event_time;
    }

    /// The current delay for `key` (for messages).
    pub fn delay(&self, key: &str) -> Option<Duration> {
        self.entries.get(key).map(|e| e.delay)
    }

    pub fn forget(&mut self, key: &str) {
        self.entries.remove(key);
    }
}

/// Go's `time.Duration` formatting for whole seconds/minutes: `10s`, `40s`, `1m20s`, `5m0s`.
pub fn go_duration(d: Duration) -> String {
    let s = d.num_seconds();
    if s >= 60 { format!("{}m{}s", s / 60, s % 60) } else { format!("{s}s") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn first_failure_restarts_at_once_then_delays_double_to_the_cap() {
        let mut b = Backoff::default();
        assert!(b.in_backoff_since("c", t(0), t(0)).is_none());
        b.next("c", t(0));
        assert_eq!(b.in_backoff_since("c", t(1), t(2)), Some(t(11)));
        b.next("c", t(11));
        assert_eq!(b.delay("c"), Some(Duration::seconds(20)));
        for i in 0..10 {
            b.next("c", t(12 + i));
        }
        assert_eq!(b.delay("c"), Some(Duration::seconds(300)));
    }

    #[test]
    fn backoff_resets_after_ten_minutes_without_failures() {
        let mut b = Backoff::default();
        b.next("c", t(0));
        b.next("c", t(10));
        assert_eq!(b.delay("c"), Some(Duration::seconds(20)));
        assert!(b.in_backoff_since("c", t(700), t(700)).is_none());
        b.next("c", t(700));
        assert_eq!(b.delay("c"), Some(Duration::seconds(10)));
    }

    #[test]
    fn go_style_durations() {
        assert_eq!(go_duration(Duration::seconds(10)), "10s");
        assert_eq!(go_duration(Duration::seconds(80)), "1m20s");
        assert_eq!(go_duration(Duration::seconds(300)), "5m0s");
    }
}
