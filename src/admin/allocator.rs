//! `GET /debug/allocator` on the admin listener: jemalloc's statistics (the binary's global
//! allocator) as one JSON object of byte counts, read through `tikv-jemalloc-ctl` after
//! advancing jemalloc's `epoch` (its statistics are a snapshot refreshed on each advance).
//!
//! The fields are jemalloc's `stats.*` mallctls (<https://jemalloc.net/jemalloc.3.html>):
//! `allocated_bytes` (held by the application), `active_bytes` (in active pages),
//! `resident_bytes` (physically resident, allocator metadata included), `mapped_bytes` (in
//! active extents), `retained_bytes` (virtual memory kept, not returned to the OS) and
//! `metadata_bytes` (jemalloc's own bookkeeping).

use super::reply;
use http::Response;
use tikv_jemalloc_ctl::{epoch, stats};

/// 200 with the statistics as JSON; 500 (plain text) if jemalloc refuses a read.
pub fn serve() -> Response<Vec<u8>> {
    match read() {
        Ok(body) => reply(200, "application/json", body),
        Err(e) => reply(
            500,
            "text/plain",
            format!("allocator statistics unavailable: {e}\n").into_bytes(),
        ),
    }
}

fn read() -> Result<Vec<u8>, tikv_jemalloc_ctl::Error> {
    epoch::advance()?;
    let body = serde_json::json!({
        "allocator": "jemalloc",
        "allocated_bytes": stats::allocated::read()?,
        "active_bytes": stats::active::read()?,
        "resident_bytes": stats::resident::read()?,
        "mapped_bytes": stats::mapped::read()?,
        "retained_bytes": stats::retained::read()?,
        "metadata_bytes": stats::metadata::read()?,
    });
    Ok(body.to_string().into_bytes())
}
