//! What the tests read off a running sluice: Prometheus samples from its admin `/metrics`
//! (summed over matching label sets, or polled until a condition holds) and the kernel's
//! memory figures of its process.
use super::launch::Sluice;
use std::time::{Duration, Instant};

/// Sum of the samples of metric `name` in Prometheus text `text` whose labels include every
/// `labels` pair (exposition format: `name{k="v",...} value`).
pub fn sample_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Sluice {
    /// Poll metric `name`/`labels` until `ok(value)` or 10 s; returns the last value. For values
    /// written by the log stage, which runs just after the response ends.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        ok: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(name, labels).await;
            if ok(v) || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sum of the samples of metric `name` whose labels include every `labels` pair.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        sample_sum(&text, name, labels)
    }
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM` ...), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Reset the peak RSS (`VmHWM`) of `pid` to its current RSS (`/proc/<pid>/clear_refs`, value
/// 5, Linux 4.0+; see proc(5)).
pub fn reset_peak_rss(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}
