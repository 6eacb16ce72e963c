//! The shipped Grafana dashboard (`k8s/monitoring/grafana-dashboard.json`), query by query,
//! as Grafana would send each one to Prometheus: the dashboard's variables substituted with
//! what the on-call engineer would have selected (the one namespace, every pod, every
//! route), `$__rate_interval` as Grafana computes it, and the fixed windows of the stat
//! panels (`[5m]`) time-scaled as the rules are (see `prometheus::time_scaled_rules`).

use serde_json::Value;

pub use super::prometheus::SCRAPE_MS;
use super::prometheus::{scale_windows, Prometheus};
use super::repo_root;

/// One query of one panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    /// The panel's title and, where a panel draws several queries, the query's position
    /// (`"In flight vs concurrency limit #2"`).
    pub name: String,
    /// The PromQL, variables substituted.
    pub expr: String,
    /// The query ends in `> 0`: it shows only series with events, so "no data" is its
    /// normal state while nothing happens.
    pub events_only: bool,
}

/// Grafana's `$__rate_interval` at `scrape_ms`: four scrape intervals, its floor (the
/// dashboard's `$__interval` at the scaled time range is below one scrape).
pub fn rate_interval_ms(scrape_ms: u64) -> u64 {
    4 * scrape_ms
}

/// Every query of the dashboard, in panel order, for namespace `namespace`.
pub fn panel_queries(namespace: &str, scrape_ms: u64, time_scale: u64) -> Vec<PanelQuery> {
    let path = repo_root().join("k8s/monitoring/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    collect(&dashboard["panels"], &mut out);
    let rate = format!("{}ms", rate_interval_ms(scrape_ms));
    for q in &mut out {
        let expr = q
            .expr
            .replace("$__rate_interval", &rate)
            .replace("$namespace", namespace)
            .replace("$pod", ".*")
            .replace("$route", ".*");
        assert!(!expr.contains('$'), "{}: a variable left in {expr}", q.name);
        q.expr = scale_windows(&expr, time_scale);
        q.events_only = q.expr.trim_end().ends_with("> 0");
    }
    out
}

fn collect(panels: &Value, out: &mut Vec<PanelQuery>) {
    for panel in panels.as_array().into_iter().flatten() {
        collect(&panel["panels"], out);
        let title = panel["title"].as_str().unwrap_or_default();
        let targets: Vec<&str> = panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str())
            .collect();
        for (i, expr) in targets.iter().enumerate() {
            let name = if targets.len() > 1 {
                format!("{title} #{}", i + 1)
            } else {
                title.to_string()
            };
            out.push(PanelQuery {
                name,
                expr: expr.to_string(),
                events_only: false,
            });
        }
    }
}

/// What one query's panel showed.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// An empty result: Grafana shows "No data".
    NoData,
    /// Every series' value was NaN (a quantile over no requests): Grafana draws nothing.
    NaN,
    /// The largest value over the returned series and the span read, and how many series
    /// there were.
    Value { max: f64, series: usize },
}

impl Reading {
    pub fn has_data(&self) -> bool {
        matches!(self, Reading::Value { .. })
    }

    pub fn max(&self) -> f64 {
        match self {
            Reading::Value { max, .. } => *max,
            _ => f64::NAN,
        }
    }
}

impl std::fmt::Display for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reading::NoData => write!(f, "no data"),
            Reading::NaN => write!(f, "NaN"),
            Reading::Value { max, series } if *series > 1 => write!(f, "{max:.3} ({series})"),
            Reading::Value { max, .. } => write!(f, "{max:.3}"),
        }
    }
}

/// Every query, as its panel drew it from `since` until now (a time series panel over a
/// phase of an incident, not one instant: an ejection is a spike in one 2-second step):
/// each series' largest value in that span, at the scrape interval's resolution.
pub async fn read_all(
    prom: &Prometheus,
    queries: &[PanelQuery],
    since: std::time::Instant,
) -> Vec<Reading> {
    let over = since.elapsed();
    let mut out = Vec::with_capacity(queries.len());
    for q in queries {
        let over_phase = format!(
            "max_over_time(({})[{}ms:{}ms])",
            q.expr,
            over.as_millis().max(1),
            SCRAPE_MS
        );
        let values: Vec<f64> = prom
            .query(&over_phase)
            .await
            .iter()
            .filter_map(|r| r["value"][1].as_str()?.parse().ok())
            .collect();
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        out.push(if values.is_empty() {
            Reading::NoData
        } else if finite.is_empty() {
            Reading::NaN
        } else {
            Reading::Value {
                max: finite.iter().copied().fold(f64::MIN, f64::max),
                series: values.len(),
            }
        });
    }
    out
}

/// The reading of the query named `name` (see [`PanelQuery::name`]) among `readings`, read
/// from `queries`. A panel renamed or removed fails here, by name.
pub fn reading<'a>(queries: &[PanelQuery], readings: &'a [Reading], name: &str) -> &'a Reading {
    let i = queries
        .iter()
        .position(|q| q.name == name)
        .unwrap_or_else(|| {
            let names: Vec<&str> = queries.iter().map(|q| q.name.as_str()).collect();
            panic!("no panel query {name:?} in the dashboard: {names:?}")
        });
    &readings[i]
}
