//! Logs on stderr, with a bound on every line that can repeat.
//!
//! An error path that logs on each occurrence writes as fast as it fails: at a shutdown race
//! Pingora's accept loop logged `Accept() failed` 117 million times in four minutes and
//! filled the disk. [`PerSiteLimit`] lets at most [`LINES_PER_SITE_PER_SECOND`] lines a
//! second through from each log site (a `file:line`, Pingora's and the redis crate's
//! included: their `log` records arrive through `tracing-log` and are told apart by their
//! own file and line), and drops the rest. Once a second a line per site says how many
//! were dropped, and `sloguard_log_lines_suppressed_total` counts them all. The decision,
//! [`SiteWindow`], is pure and tested; the layer is its edge.

// The log limiter's edge: stamps each line with the clock.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// Most lines a second from one log site. A burst of ten says what is happening; the
/// thousandth identical line says nothing more.
pub const LINES_PER_SITE_PER_SECOND: u32 = 10;

/// The access log's target, exempt from the per-site limit.
pub const ACCESS_TARGET: &str = "sloguard::access";

/// The log format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// The filter in force, replaceable while serving (`POST /logging` on the admin port).
struct LiveFilter {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The directives it was built from (`EnvFilter`'s `Display` reorders them).
    directives: Mutex<String>,
}

static LIVE_FILTER: OnceLock<LiveFilter> = OnceLock::new();

/// Why a new log filter was refused; the one in force stays.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("invalid log filter `{directives}`: {source}")]
    Invalid {
        directives: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("no log subscriber of ours is installed")]
    NotInstalled,
}

/// Replaces the log filter while serving, as Envoy's `/logging?level=` and linkerd's
/// `/proxy-log-level` do: an on-call engineer turns `sloguard=debug` on for the minute a
/// problem lasts, without a restart that would lose the state being looked at. `directives`
/// take `RUST_LOG`'s syntax (`debug`, `sloguard=debug,pingora=warn`). Returns the directives
/// replaced.
pub fn set_filter(directives: &str) -> Result<String, FilterError> {
    let live = LIVE_FILTER.get().ok_or(FilterError::NotInstalled)?;
    let filter = EnvFilter::try_new(directives).map_err(|source| FilterError::Invalid {
        directives: directives.to_string(),
        source,
    })?;
    // Held across the swap, so two changes at once cannot leave the directives reported
    // differing from the filter in force.
    let mut current = live
        .directives
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    live.handle
        .reload(filter)
        .map_err(|_| FilterError::NotInstalled)?;
    Ok(std::mem::replace(&mut current, directives.to_string()))
}

/// The directives of the filter in force, if our subscriber is installed.
pub fn current_filter() -> Option<String> {
    let live = LIVE_FILTER.get()?;
    Some(
        live.directives
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
    )
}

/// Installs the subscriber: `RUST_LOG` (default `info`), the per-site limit, `format`.
/// Also starts the thread that reports suppressed lines once a second.
pub fn init(format: Format) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| !d.trim().is_empty());
    let (filter, directives) = match from_env.as_deref().map(EnvFilter::try_new) {
        Some(Ok(f)) => (f, from_env.unwrap_or_default()),
        _ => (EnvFilter::new("info"), "info".to_string()),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(PerSiteLimit::default());
    let installed = match format {
        Format::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        Format::Json => registry
            // Flat: an access line's fields sit beside `timestamp`, `level` and `target`
            // (`.status`, not `.fields.status`), as log pipelines index them.
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if installed.is_ok() {
        let _ = LIVE_FILTER.set(LiveFilter {
            handle,
            directives: Mutex::new(directives),
        });
        let _ = std::thread::Builder::new()
            .name("log-limit".into())
            .spawn(report_suppressed_forever);
    }
}

/// Lines dropped by the per-site limit since start.
pub fn suppressed_total() -> u64 {
    SUPPRESSED_TOTAL.load(Ordering::Relaxed)
}

static SUPPRESSED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Sites with lines dropped since the last report: (file, line) -> (dropped, level, target).
type Pending = HashMap<(&'static str, u32), (u64, tracing::Level, String)>;

fn pending() -> &'static Mutex<Pending> {
    static PENDING: OnceLock<Mutex<Pending>> = OnceLock::new();
    PENDING.get_or_init(Default::default)
}

fn report_suppressed_forever() {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let drained: Vec<_> = {
            let mut p = pending().lock().unwrap_or_else(PoisonError::into_inner);
            p.drain().collect()
        };
        for ((file, line), (dropped, level, target)) in drained {
            // Logged from this thread's own site, which is limited like any other.
            if level <= tracing::Level::WARN {
                tracing::warn!(site = %format!("{file}:{line}"), %target, dropped, "... and {dropped} more lines like the above from this site in the last second (log limit: {LINES_PER_SITE_PER_SECOND} a second per site)");
            } else {
                tracing::info!(site = %format!("{file}:{line}"), %target, dropped, "... and {dropped} more lines like the above from this site in the last second (log limit: {LINES_PER_SITE_PER_SECOND} a second per site)");
            }
        }
    }
}

/// One site's current one-second window.
#[derive(Debug, Clone, Copy)]
pub struct SiteWindow {
    started: Instant,
    lines: u32,
}

impl SiteWindow {
    pub fn new(now: Instant) -> SiteWindow {
        SiteWindow {
            started: now,
            lines: 0,
        }
    }

    /// Whether one more line from this site may be written at `now`.
    pub fn admit(&mut self, now: Instant, per_second: u32) -> bool {
        if now.saturating_duration_since(self.started) >= Duration::from_secs(1) {
            self.started = now;
            self.lines = 0;
        }
        if self.lines < per_second {
            self.lines += 1;
            true
        } else {
            false
        }
    }
}

/// The tracing layer that drops lines past the per-site limit (for every layer after it).
#[derive(Default)]
pub struct PerSiteLimit {
    sites: Mutex<HashMap<(&'static str, u32), SiteWindow>>,
}

impl<S: Subscriber> Layer<S> for PerSiteLimit {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        // The access log is a record, not an error path: it has its own sampling and rate
        // (`[log]`, `proxy::access_log`), and one line per request from one site.
        if meta.target() == ACCESS_TARGET {
            return true;
        }
        let file = meta.file().unwrap_or(meta.target());
        let line = meta.line().unwrap_or(0);
        let now = Instant::now();
        // A `log` record's metadata is built per record, so its file name is not `'static`
        // here; the site table keys on our own interned copy.
        let key = (intern(file), line);
        let admitted = {
            let mut sites = self.sites.lock().unwrap_or_else(PoisonError::into_inner);
            sites
                .entry(key)
                .or_insert_with(|| SiteWindow::new(now))
                .admit(now, LINES_PER_SITE_PER_SECOND)
        };
        if !admitted {
            SUPPRESSED_TOTAL.fetch_add(1, Ordering::Relaxed);
            let mut p = pending().lock().unwrap_or_else(PoisonError::into_inner);
            let e = p
                .entry(key)
                .or_insert_with(|| (0, *meta.level(), meta.target().to_string()));
            e.0 += 1;
        }
        admitted
    }
}

/// A `'static` copy of a source file name, made once per distinct name (there are a few
/// hundred files in the binary at most).
fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(s) = names.get(name) {
        return s;
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.insert(name.to_string(), leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_gets_its_lines_per_second_then_nothing_until_the_next_second() {
        let t0 = Instant::now();
        let mut w = SiteWindow::new(t0);
        let admitted = (0..1000)
            .filter(|i| w.admit(t0 + Duration::from_micros(*i), 10))
            .count();
        assert_eq!(admitted, 10);
        assert!(!w.admit(t0 + Duration::from_millis(999), 10));
        assert!(w.admit(t0 + Duration::from_secs(1), 10));
    }

    #[test]
    fn a_storm_of_a_million_lines_writes_a_handful() {
        let t0 = Instant::now();
        let mut w = SiteWindow::new(t0);
        // A million failures over 4 s, spread evenly.
        let admitted = (0..1_000_000u64)
            .filter(|i| w.admit(t0 + Duration::from_micros(i * 4), 10))
            .count();
        assert_eq!(admitted, 40);
    }

    #[test]
    fn interned_names_are_shared() {
        let a = intern(&String::from("src/x.rs"));
        let b = intern("src/x.rs");
        assert!(std::ptr::eq(a, b));
    }
}
