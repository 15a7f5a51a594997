//! What `POST /_control` injects into a demo app: a share of 500s, added latency, and the
//! share of requests it is added to (spread evenly, not at random, so tests are exact).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::app::MAX_SLOW;

/// What `POST /_control` set: the share of requests failed and the latency added.
pub(super) struct Control {
    /// Share of requests answered 500, in millionths.
    pub(super) error_ppm: AtomicU64,
    pub(super) latency_ms: AtomicU64,
    /// Requests seen since the last change (spreads the failures evenly).
    pub(super) seen: AtomicU64,
    /// Share of requests `latency_ms` is added to, in millionths (all by default).
    pub(super) slow_ppm: AtomicU64,
    /// Requests seen since the last change of `slow_share` (spreads the slow ones evenly).
    pub(super) slow_seen: AtomicU64,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            error_ppm: AtomicU64::new(0),
            latency_ms: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            slow_ppm: AtomicU64::new(PPM),
            slow_seen: AtomicU64::new(0),
        }
    }
}

/// A share of 1 in millionths.
pub(super) const PPM: u64 = 1_000_000;

/// What one `/_control` query sets; a key left out keeps its value (`None`).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ControlQuery {
    pub(super) error_ppm: Option<u64>,
    pub(super) latency_ms: Option<u64>,
    pub(super) slow_ppm: Option<u64>,
}

/// Whether request `i` (counted from 0) is one of a `ppm` share: it is when
/// `floor((i + 1) * share) > floor(i * share)`, so exactly that share is, evenly spread.
pub(super) fn in_share(i: u64, ppm: u64) -> bool {
    (i + 1) * ppm / PPM > i * ppm / PPM
}

/// `error_rate` and `slow_share` in 0..=1 and `latency_ms` in 0..=60000 from a `/_control`
/// query.
pub(super) fn parse_control(query: Option<&str>) -> Result<ControlQuery, String> {
    let mut q = ControlQuery::default();
    let share = |key: &str, v: &str| match v.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok((r * 1e6).round() as u64),
        _ => Err(format!("{key} must be a number from 0 to 1")),
    };
    for (key, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match (key.as_ref(), v.as_ref()) {
            ("error_rate", v) => q.error_ppm = Some(share("error_rate", v)?),
            ("slow_share", v) => q.slow_ppm = Some(share("slow_share", v)?),
            ("latency_ms", v) => match v.parse::<u64>() {
                Ok(ms) if ms <= MAX_SLOW.as_millis() as u64 => q.latency_ms = Some(ms),
                _ => {
                    return Err(format!(
                        "latency_ms must be 0..={} milliseconds",
                        MAX_SLOW.as_millis()
                    ))
                }
            },
            _ => return Err("unknown key: use error_rate, latency_ms and slow_share".into()),
        }
    }
    Ok(q)
}

impl Control {
    pub(super) fn show(&self) -> String {
        format!(
            "error_rate={} latency_ms={} slow_share={}\n",
            self.error_ppm.load(Relaxed) as f64 / 1e6,
            self.latency_ms.load(Relaxed),
            self.slow_ppm.load(Relaxed) as f64 / 1e6
        )
    }

    /// Whether this request is one of the failed share: request `i` fails when
    /// `floor((i + 1) * rate) > floor(i * rate)`, so exactly that share fails, evenly spread.
    pub(super) fn fail_next(&self) -> bool {
        let ppm = self.error_ppm.load(Relaxed);
        if ppm == 0 {
            return false;
        }
        in_share(self.seen.fetch_add(1, Relaxed), ppm)
    }

    /// The latency to add to this request: `latency_ms` for the `slow_share` of requests
    /// (evenly spread, as the failures), nothing for the others.
    pub(super) fn delay_next(&self) -> Option<Duration> {
        let ms = self.latency_ms.load(Relaxed);
        if ms == 0 {
            return None;
        }
        let ppm = self.slow_ppm.load(Relaxed);
        let slow = ppm >= PPM || (ppm > 0 && in_share(self.slow_seen.fetch_add(1, Relaxed), ppm));
        slow.then(|| Duration::from_millis(ms))
    }
}
