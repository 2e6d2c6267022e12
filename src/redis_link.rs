//! One kept connection to a Redis server, shared by every user of that server in the process
//! (the limits' shared store, the response cache's Redis tier): a background task (re)connects,
//! requests only read the current connection, and after a failure every call fails fast for
//! [`RETRY_AFTER_FAILURE`], so an outage never makes a request wait.
//!
//! - (Re)connecting is the job of one background task ([`RedisLink::maintain`]), each attempt
//!   bounded by the connect timeout; a request only reads the current connection (a
//!   `tokio::sync::watch` value) and, when there is none yet, waits for one no later than its
//!   own deadline ([`RedisLink::connection`]).
//! - A caller whose round trip failed or timed out calls [`RedisLink::mark_down`]: the link
//!   fails fast ([`RedisLink::is_down`], an atomic read, no lock) and the maintainer connects
//!   afresh once the pause is over, so a recovery is noticed within [`RETRY_AFTER_FAILURE`].
//!   A new connection ends the pause at once (a caller that gave up waiting for the first
//!   connection at start does not hold the others off for the whole pause).
//!
//! The connection is redis-rs's `aio::ConnectionManager`
//! (<https://docs.rs/redis/0.32/redis/aio/struct.ConnectionManager.html>): cheap to clone,
//! multiplexed (requests pipeline over one TCP connection).

use prometheus::IntCounter;
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// How long a link fails fast after a Redis failure before trying again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(500);

/// A kept connection to one Redis server. Share it in an `Arc` and run
/// [`RedisLink::maintain`] in the background.
pub struct RedisLink {
    client: redis::Client,
    /// The current connection, set by [`RedisLink::maintain`]; `None` while there is none.
    conn: watch::Sender<Option<ConnectionManager>>,
    /// Asks the maintainer for a (new) connection.
    reconnect: Notify,
    timeout: Duration,
    connect_timeout: Duration,
    /// Counts failed connect attempts (the user's own metric).
    connect_errors: IntCounter,
    /// The link's clock origin (tokio's clock, so tests can pause it).
    epoch: Instant,
    /// After a failure, calls fail fast until then (ms since `epoch`).
    down_until_ms: AtomicU64,
}

impl RedisLink {
    /// A link to `url` (`redis://[:password@]host:port[/db]`, `rediss://` for TLS; a secret,
    /// never logged). `timeout`: the bound the users put on one call
    /// ([`RedisLink::timeout`]); `connect_timeout`: the bound on one background connect
    /// attempt (at least 1 ms); `connect_errors`: counts the failed ones. Errors: an
    /// unparseable URL. Connecting is the job of [`RedisLink::maintain`].
    pub fn new(
        url: &str,
        timeout: Duration,
        connect_timeout: Duration,
        connect_errors: IntCounter,
    ) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            conn: watch::Sender::new(None),
            reconnect: Notify::new(),
            timeout,
            connect_timeout: connect_timeout.max(Duration::from_millis(1)),
            connect_errors,
            epoch: Instant::now(),
            down_until_ms: AtomicU64::new(0),
        })
    }

    /// The bound on one call through this link (the users' `timeout_ms`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The bound on one connect attempt (the users' `connect_timeout_ms`, at least 1 ms).
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The client of this link's server, for a connection of another kind (a pub/sub
    /// subscriber holds one of its own).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    fn clock_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether calls fail fast now (an atomic read: never waits).
    pub fn is_down(&self) -> bool {
        self.clock_ms() < self.down_until_ms.load(Ordering::Acquire)
    }

    fn pause(&self) {
        let pause = u64::try_from(RETRY_AFTER_FAILURE.as_millis()).unwrap_or(u64::MAX);
        let until = self.clock_ms().saturating_add(pause);
        self.down_until_ms.fetch_max(until, Ordering::AcqRel);
    }

    /// A call failed or timed out: fail fast for [`RETRY_AFTER_FAILURE`], forget the
    /// connection and ask the maintainer for a new one.
    pub fn mark_down(&self) {
        self.pause();
        self.conn.send_replace(None);
        self.reconnect.notify_one();
    }

    /// Keep a connection to Redis: connect at start, and again (after the fail-fast pause)
    /// whenever a call found the connection broken. Runs until the process ends (or the
    /// task is dropped); every connect attempt is bounded by the connect timeout.
    pub async fn maintain(&self) {
        loop {
            if self.conn.borrow().is_some() {
                self.reconnect.notified().await;
                continue;
            }
            let wait = self
                .down_until_ms
                .load(Ordering::Acquire)
                .saturating_sub(self.clock_ms());
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            let connect = ConnectionManager::new(self.client.clone());
            match tokio::time::timeout(self.connect_timeout, connect).await {
                Ok(Ok(c)) => {
                    // A fresh connection ends any fail-fast pause: one a request started
                    // while this connect was under way (at start, say) guards nothing.
                    self.conn.send_replace(Some(c));
                    self.down_until_ms.store(0, Ordering::Release);
                }
                _ => {
                    self.connect_errors.inc();
                    self.pause();
                }
            }
        }
    }

    /// The current connection, waiting for the maintainer's first one no later than
    /// `deadline`. `None`: none by then (the caller decides whether that marks the link down).
    pub async fn connection(&self, deadline: Instant) -> Option<ConnectionManager> {
        let mut rx = self.conn.subscribe();
        let current = rx.borrow_and_update().clone();
        if current.is_some() {
            return current;
        }
        self.reconnect.notify_one();
        let ready = tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await;
        match ready {
            Ok(Ok(c)) => c.clone(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn counter() -> IntCounter {
        IntCounter::new("test_connect_errors", "test").unwrap()
    }

    #[test]
    fn urls_are_checked_at_creation() {
        let t = Duration::from_millis(50);
        assert!(RedisLink::new("redis://127.0.0.1:6379/0", t, t, counter()).is_ok());
        assert!(RedisLink::new("rediss://redis.example:6380", t, t, counter()).is_ok());
        assert!(RedisLink::new("http://nope", t, t, counter()).is_err());
    }

    /// Nothing listens: connect attempts fail and are counted; a caller finds no connection
    /// by its deadline; once marked down the link fails fast, and keeps failing fast while
    /// the maintainer's reconnects fail.
    #[tokio::test(start_paused = true)]
    async fn an_unreachable_server_is_counted_and_marked_down() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let errors = counter();
        let link = Arc::new(
            RedisLink::new(
                &format!("redis://127.0.0.1:{port}"),
                Duration::from_millis(50),
                Duration::from_millis(100),
                errors.clone(),
            )
            .unwrap(),
        );
        let keeper = link.clone();
        let task = tokio::spawn(async move { keeper.maintain().await });
        assert!(!link.is_down());
        let t0 = Instant::now();
        assert!(link.connection(t0 + link.timeout()).await.is_none());
        assert!(t0.elapsed() <= link.timeout());
        link.mark_down();
        assert!(link.is_down());
        // Past the pause the maintainer tries again; its failures keep the link failing fast
        // (requests never wait on a server that refuses), each counted. Bounded poll.
        for _ in 0..300 {
            if errors.get() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(errors.get() >= 2, "failed connects were not counted");
        assert!(
            link.is_down(),
            "a failed reconnect did not keep the link down"
        );
        task.abort();
    }
}
