//! The load patterns: closed loops (a fixed count, or for a time), one connection in
//! sequence, an open loop at a fixed rate (no coordinated omission), streams one after the
//! other, and one stream opened and held; with their latency samples ([`Lat`]).
use crate::client::{stamped, Client};
use crate::support::http::find;
use futures_util::future::join_all;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Quantile `q` (0..1, nearest rank) of `sorted`; NaN when empty.
pub fn pct(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64
}

/// Latency samples (ns) of the requests that succeeded, and the count that did not.
pub struct Lat {
    pub ns: Vec<u64>,
    pub errors: u64,
}

impl Lat {
    /// Quantile `q` in µs.
    pub fn p(&mut self, q: f64) -> f64 {
        self.ns.sort_unstable();
        pct(&self.ns, q) / 1000.0
    }
}

/// Closed loop, `conns` connections, exactly `total` requests. Returns (ok, errors, seconds).
pub async fn closed_count(
    addr: SocketAddr,
    req: &[u8],
    conns: usize,
    total: u64,
    to: Duration,
) -> (u64, u64, f64) {
    let left = Rc::new(Cell::new(total));
    let (ok, err) = (Rc::new(Cell::new(0u64)), Rc::new(Cell::new(0u64)));
    let t = Instant::now();
    join_all((0..conns).map(|_| {
        let (left, ok, err) = (left.clone(), ok.clone(), err.clone());
        async move {
            let mut c = Client::new(addr, to);
            while left.get() > 0 {
                left.set(left.get() - 1);
                match c.send(req, false).await {
                    Some(r) if r.status == 200 => ok.set(ok.get() + 1),
                    _ => err.set(err.get() + 1),
                }
            }
        }
    }))
    .await;
    (ok.get(), err.get(), t.elapsed().as_secs_f64())
}

/// Closed loop for `secs`, counting completions after a warm-up tenth. Returns (rps, errors).
pub async fn closed_for(
    addr: SocketAddr,
    req: &[u8],
    conns: usize,
    secs: f64,
    to: Duration,
) -> (f64, u64) {
    let t0 = Instant::now();
    let warm = t0 + Duration::from_secs_f64(secs * 0.1);
    let end = t0 + Duration::from_secs_f64(secs);
    let (ok, err) = (Rc::new(Cell::new(0u64)), Rc::new(Cell::new(0u64)));
    join_all((0..conns).map(|_| {
        let (ok, err) = (ok.clone(), err.clone());
        async move {
            let mut c = Client::new(addr, to);
            while Instant::now() < end {
                match c.send(req, false).await {
                    Some(r) if r.status == 200 => {
                        if r.done >= warm && r.done <= end {
                            ok.set(ok.get() + 1)
                        }
                    }
                    _ => err.set(err.get() + 1),
                }
            }
        }
    }))
    .await;
    (ok.get() as f64 / (secs * 0.9), err.get())
}

/// One connection, `n` requests one after the other.
pub async fn sequential(addr: SocketAddr, req: &[u8], n: u64, to: Duration) -> Lat {
    let mut c = Client::new(addr, to);
    let mut lat = Lat {
        ns: Vec::with_capacity(n as usize),
        errors: 0,
    };
    for _ in 0..n {
        let t = Instant::now();
        match c.send(req, false).await {
            Some(r) if r.status == 200 => lat.ns.push((r.done - t).as_nanos() as u64),
            _ => lat.errors += 1,
        }
    }
    lat
}

/// Open loop at `rate` req/s for `secs`, spread round-robin over `conns` keep-alive
/// connections. Latency runs from the send, or from the scheduled time when the connection was
/// still busy then (no coordinated omission; the 1 ms timer's own lateness is not counted).
pub async fn open_loop(
    addr: SocketAddr,
    req: &[u8],
    rate: f64,
    secs: f64,
    conns: usize,
    to: Duration,
) -> (Lat, f64) {
    let total = (rate * secs) as usize;
    let t0 = Instant::now() + Duration::from_millis(5);
    let res = join_all((0..conns).map(|j| async move {
        let mut c = Client::new(addr, to);
        let mut ns = Vec::new();
        let mut errors = 0u64;
        let mut last_done = t0;
        let mut i = j;
        while i < total {
            let sched = t0 + Duration::from_secs_f64(i as f64 / rate);
            let start = if last_done > sched {
                sched
            } else {
                tokio::time::sleep_until(sched.into()).await;
                Instant::now()
            };
            match c.send(req, false).await {
                Some(r) if r.status == 200 => {
                    ns.push((r.done - start).as_nanos() as u64);
                    last_done = r.done;
                }
                _ => {
                    errors += 1;
                    last_done = Instant::now();
                }
            }
            i += conns;
        }
        (ns, errors)
    }))
    .await;
    let elapsed = t0.elapsed().as_secs_f64();
    let mut lat = Lat {
        ns: Vec::new(),
        errors: 0,
    };
    for (ns, e) in res {
        lat.ns.extend(ns);
        lat.errors += e;
    }
    let achieved = lat.ns.len() as f64 / elapsed.max(secs);
    (lat, achieved)
}

/// `n` streams one after the other on one connection: (TTFT, total time), both from the send.
pub async fn streams(addr: SocketAddr, req: &[u8], n: u64, to: Duration) -> (Lat, Lat) {
    let mut c = Client::new(addr, to);
    let mut ttft = Lat {
        ns: Vec::new(),
        errors: 0,
    };
    let mut total = Lat {
        ns: Vec::new(),
        errors: 0,
    };
    for _ in 0..n {
        let t = Instant::now();
        match c.send(req, true).await {
            Some(r) if r.status == 200 && find(&r.body, b"data: [DONE]").is_some() => {
                ttft.ns
                    .push((r.first_body.unwrap_or(r.done) - t).as_nanos() as u64);
                total.ns.push((r.done - t).as_nanos() as u64);
            }
            _ => {
                ttft.errors += 1;
                total.errors += 1;
            }
        }
    }
    (ttft, total)
}

/// Open a stream and return its socket once the first SSE bytes arrived.
pub async fn open_stream(addr: SocketAddr, req: &[u8]) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(&stamped(req)).await?;
    let mut buf = Vec::with_capacity(2048);
    let mut tmp = [0u8; 2048];
    loop {
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(h) = find(&buf, b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 200") {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            if find(&buf[h..], b"data:").is_some() {
                return Ok(s);
            }
        }
    }
}

/// Poll `f` every 20 ms until it holds (true) or `deadline` passes (false).
pub async fn wait_until<F, Fut>(deadline: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while t.elapsed() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Whether a TCP connect to `addr` succeeds.
pub async fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_ok()
}
