//! The one thread that counts tokens (estimates after a response, see
//! [`crate::usage::estimate`]): tokenizing is CPU work that must not stall a worker thread, and
//! each thread that tokenizes keeps caches of its own (the `tiktoken` crate's merge cache, up
//! to about 1.2 MB, and the pre-tokenizer regex's), so running it on tokio's blocking pool
//! (up to 512 threads) would let a burst of estimates grow memory by hundreds of MB. Jobs wait
//! in a bounded queue ([`QUEUE`]); a caller whose job does not fit waits for room, holding
//! only its own request's text.

use std::sync::OnceLock;
use tokio::sync::{mpsc, oneshot};

/// Estimates waiting for the counting thread at most.
pub const QUEUE: usize = 256;

type Job = Box<dyn FnOnce() + Send>;

fn sender() -> Option<&'static mpsc::Sender<Job>> {
    static TX: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("sluice-tokens".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    // A job that panics loses its own count (its caller settles without
                    // it), not the thread.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .ok()
            .map(|_| tx)
    })
    .as_ref()
}

/// Run `work` on the counting thread and return its result; `None` if the thread could not
/// be started or `work` panicked (the caller then settles without the count).
pub async fn run<T, F>(work: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(work());
    });
    sender()?.send(job).await.ok()?;
    rx.await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_job_runs_on_the_one_counting_thread() {
        let names = futures_util::future::join_all(
            (0..32).map(|_| run(|| std::thread::current().name().map(str::to_owned))),
        )
        .await;
        assert!(names
            .iter()
            .all(|n| n.as_ref().and_then(|n| n.as_deref()) == Some("sluice-tokens")));
    }
}
