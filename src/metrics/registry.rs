//! The registry handle every layer registers its metrics with, and the typed families it
//! hands back.
//!
//! A layer measures itself: it calls [`Registry::counters`] (or `gauges`, `pool_counters`,
//! ...) once at start with its own label type, a [`LabelValue`] it owns, and keeps the
//! [`Family`] it gets: one handle per label value, resolved now, so recording is an index into
//! an array (no hashing, no string, no lock on the request path), and every value is exported
//! at 0 from the first scrape (a series that appears at 1 has no earlier sample, so
//! `increase()` in an alert rule would miss that first event). Series whose labels are only
//! known later (a server's address, a status code) use the plain vectors
//! ([`Registry::counter_vec`]) and resolve their handles once where the layer keeps them.
//!
//! The handle is a cheap clone: layers keep their handles, the registry keeps the families
//! and writes the text exposition ([`Registry::text`]).

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, TextEncoder,
};

use super::labels::LabelValue;
use crate::model::{PerPool, PoolKind};

/// What a layer brings up to date just before a scrape (values counted elsewhere).
type ScrapeHook = Box<dyn Fn() + Send + Sync>;

/// A Prometheus registry, shared by every layer of one process.
#[derive(Clone, Default)]
pub struct Registry {
    inner: prometheus::Registry,
    hooks: Arc<Mutex<Vec<ScrapeHook>>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// `metric`, registered (the registry keeps a clone; the handle shares its value).
    pub fn register<M: Collector + Clone + 'static>(&self, metric: M) -> prometheus::Result<M> {
        self.inner.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    /// A collector the registry alone holds (the process collector).
    pub fn register_collector(&self, collector: Box<dyn Collector>) -> prometheus::Result<()> {
        self.inner.register(collector)
    }

    /// A counter without labels.
    pub fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        self.register(IntCounter::new(name, help)?)
    }

    /// A gauge without labels.
    pub fn gauge(&self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        self.register(IntGauge::new(name, help)?)
    }

    /// A gauge without labels that holds a fraction.
    pub fn float_gauge(&self, name: &str, help: &str) -> prometheus::Result<Gauge> {
        self.register(Gauge::new(name, help)?)
    }

    /// Counters whose `labels` are known only later (no series until one is asked for).
    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        self.register(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    /// Gauges whose `labels` are known only later.
    pub fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    /// One counter per value of `L`, labelled `label`, each at 0 from now.
    pub fn counters<L: LabelValue>(
        &self,
        name: &str,
        help: &str,
        label: &str,
    ) -> prometheus::Result<Family<L, IntCounter, IntCounterVec>> {
        let vec = self.counter_vec(name, help, &[label])?;
        Ok(Family::of(vec, |vec, v: L| {
            vec.with_label_values(&[v.label()])
        }))
    }

    /// One gauge per value of `L`, labelled `label`, each at 0 from now.
    pub fn gauges<L: LabelValue>(
        &self,
        name: &str,
        help: &str,
        label: &str,
    ) -> prometheus::Result<Family<L, IntGauge, IntGaugeVec>> {
        let vec = self.gauge_vec(name, help, &[label])?;
        Ok(Family::of(vec, |vec, v: L| {
            vec.with_label_values(&[v.label()])
        }))
    }

    /// One counter per pool (`pool` label), each at 0 from now.
    pub fn pool_counter(&self, name: &str, help: &str) -> prometheus::Result<PerPool<IntCounter>> {
        let vec = self.counter_vec(name, help, &["pool"])?;
        Ok(PerPool::from_fn(|p| vec.with_label_values(&[p.as_str()])))
    }

    /// One counter per pool and value of `L` (labels `pool` and `label`), each at 0 from now.
    pub fn pool_counters<L: LabelValue>(
        &self,
        name: &str,
        help: &str,
        label: &str,
    ) -> prometheus::Result<PerPool<Counters<L>>> {
        let vec = self.counter_vec(name, help, &["pool", label])?;
        Ok(PerPool::from_fn(|pool| Counters::of_pool(&vec, pool)))
    }

    /// One gauge per pool and value of `L` (labels `pool` and `label`), each at 0 from now.
    pub fn pool_gauges<L: LabelValue>(
        &self,
        name: &str,
        help: &str,
        label: &str,
    ) -> prometheus::Result<PerPool<Gauges<L>>> {
        let vec = self.gauge_vec(name, help, &["pool", label])?;
        Ok(PerPool::from_fn(|pool| Gauges::of_pool(&vec, pool)))
    }

    /// A histogram per pool (`pool` label) with `buckets`, each at 0 from now.
    pub fn pool_histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> prometheus::Result<PerPool<prometheus::Histogram>> {
        let vec = self.register(HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            &["pool"],
        )?)?;
        Ok(PerPool::from_fn(|p| vec.with_label_values(&[p.as_str()])))
    }

    /// Run `hook` before every scrape: for values a layer reads from elsewhere (Pingora's
    /// connection counts) rather than counts itself.
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(hook));
    }

    /// The Prometheus text exposition of every registered metric, after the scrape hooks.
    pub fn text(&self) -> Vec<u8> {
        for hook in self.hooks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            hook();
        }
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.inner.gather(), &mut out) {
            log::error!("cannot encode metrics: {e}");
        }
        out
    }
}

/// The series of one metric for every value of the label type `L`, resolved at start: `M` is
/// the handle (`IntCounter`, `IntGauge`), `V` the vector it came from.
pub struct Family<L, M, V> {
    handles: Box<[M]>,
    vec: V,
    label: PhantomData<fn(L)>,
}

impl<L: LabelValue, M, V> Family<L, M, V> {
    fn of(vec: V, handle: impl Fn(&V, L) -> M) -> Family<L, M, V> {
        Family {
            handles: L::ALL.iter().map(|&v| handle(&vec, v)).collect(),
            vec,
            label: PhantomData,
        }
    }

    /// The series of `value` (`None` only if `L::index` disagrees with `L::ALL`, which
    /// [`super::assert_distinct`] checks in the owner's tests).
    pub fn get(&self, value: L) -> Option<&M> {
        self.handles.get(value.index())
    }

    /// Every value with its series, in `L::ALL`'s order.
    pub fn iter(&self) -> impl Iterator<Item = (L, &M)> {
        L::ALL.iter().copied().zip(self.handles.iter())
    }
}

impl<L: LabelValue> Family<L, IntCounter, IntCounterVec> {
    /// The series of `pool` and every value of `L` in `vec` (labels `pool` and `L`'s), at 0.
    pub fn of_pool(vec: &IntCounterVec, pool: PoolKind) -> Counters<L> {
        Family::of(vec.clone(), |vec, v: L| {
            vec.with_label_values(&[pool.as_str(), v.label()])
        })
    }

    pub fn inc(&self, value: L) {
        if let Some(c) = self.get(value) {
            c.inc();
        }
    }

    /// Count under a label text `L` does not list (data from outside: a kind a newer store
    /// reports), so that it is not lost. Hashes the text: not for the request path.
    pub fn inc_text(&self, text: &str) {
        match self.vec.get_metric_with_label_values(&[text]) {
            Ok(c) => c.inc(),
            Err(e) => log::debug!("metric label `{text}` not counted: {e}"),
        }
    }
}

impl<L: LabelValue> Family<L, IntGauge, IntGaugeVec> {
    /// The series of `pool` and every value of `L` in `vec` (labels `pool` and `L`'s), at 0.
    pub fn of_pool(vec: &IntGaugeVec, pool: PoolKind) -> Gauges<L> {
        Family::of(vec.clone(), |vec, v: L| {
            vec.with_label_values(&[pool.as_str(), v.label()])
        })
    }

    pub fn set(&self, value: L, to: i64) {
        if let Some(g) = self.get(value) {
            g.set(to);
        }
    }
}

/// Counters of one metric, one per value of `L`.
pub type Counters<L> = Family<L, IntCounter, IntCounterVec>;
/// Gauges of one metric, one per value of `L`.
pub type Gauges<L> = Family<L, IntGauge, IntGaugeVec>;
