//! The span export queue: finished spans go into a bounded queue (never blocking the request
//! that ended them) and a thread of its own batches them to the OTLP exporter. Unlike the
//! SDK's `BatchSpanProcessor`, which only logs what it drops, every span that does not reach
//! the collector is counted in `sluice_trace_spans_dropped_total{reason}`: a full queue
//! (`queue_full`), an export that failed or timed out, the collector down included
//! (`export_failed`), or spans still queued when the process stops (`shutdown`).

use crate::metrics;
use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the export thread is told.
enum Msg {
    /// A finished span.
    Span(Box<SpanData>),
    /// Export what is queued, then answer.
    Flush(SyncSender<()>),
}

/// Batches and export bounds (from `tracing`).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Finished spans queued at most.
    pub queue_spans: usize,
    /// Spans per export request at most.
    pub batch_spans: usize,
    /// Longest wait before a partial batch is exported.
    pub export_delay: Duration,
    /// Longest a flush waits for the export thread (the process's exit waits on it).
    pub flush_timeout: Duration,
}

/// A [`SpanProcessor`] over a bounded queue with counted drops (see the module doc).
#[derive(Debug)]
pub struct CountingProcessor {
    tx: SyncSender<Msg>,
    /// The queue's receiver and the exporter, until `set_resource` (called once by the
    /// provider's builder) starts the export thread with the resource in place.
    pending: Mutex<Option<Pending>>,
    bounds: Bounds,
}

struct Pending<E = Box<dyn ErasedExporter>> {
    rx: Receiver<Msg>,
    exporter: E,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

/// [`SpanExporter`] without its generic future, so that the processor is not generic.
trait ErasedExporter: Send {
    fn export_blocking(&mut self, batch: Vec<SpanData>) -> OTelSdkResult;
    fn set_resource(&mut self, resource: &Resource);
}

impl<E: SpanExporter> ErasedExporter for E {
    fn export_blocking(&mut self, batch: Vec<SpanData>) -> OTelSdkResult {
        // The OTLP exporter's blocking HTTP client does its I/O inside this future; it runs on
        // the export thread, never on a Pingora worker.
        futures_executor::block_on(SpanExporter::export(self, batch))
    }
    fn set_resource(&mut self, resource: &Resource) {
        SpanExporter::set_resource(self, resource);
    }
}

impl CountingProcessor {
    /// A processor feeding `exporter` within `bounds`; the export thread starts when the
    /// tracer provider is built.
    pub fn new<E: SpanExporter + 'static>(exporter: E, bounds: Bounds) -> Self {
        let (tx, rx) = sync_channel(bounds.queue_spans.max(1));
        Self {
            tx,
            pending: Mutex::new(Some(Pending {
                rx,
                exporter: Box::new(exporter),
            })),
            bounds,
        }
    }

    fn start(&self, resource: &Resource) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        let Some(Pending { rx, mut exporter }) = pending.take() else {
            return;
        };
        exporter.set_resource(resource);
        let bounds = self.bounds;
        let spawned = std::thread::Builder::new()
            .name("sluice-otlp".to_owned())
            .spawn(move || export_loop(rx, exporter, bounds));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "tracing: cannot start the export thread");
        }
    }
}

impl SpanProcessor for CountingProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.tx.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => dropped("queue_full", 1),
            Err(TrySendError::Disconnected(_)) => dropped("shutdown", 1),
        }
    }

    /// Export what is queued, waiting at most `flush_timeout`; never blocks on a full queue
    /// (its spans are being exported already).
    fn force_flush(&self) -> OTelSdkResult {
        let (ack, done) = sync_channel(1);
        let wait = self.bounds.flush_timeout;
        match self.tx.try_send(Msg::Flush(ack)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(OTelSdkError::Timeout(Duration::ZERO)),
            Err(TrySendError::Disconnected(_)) => return Err(OTelSdkError::AlreadyShutdown),
        }
        done.recv_timeout(wait)
            .map_err(|_| OTelSdkError::Timeout(wait))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.start(resource);
    }
}

fn dropped(reason: &str, n: usize) {
    metrics::TRACE_SPANS_DROPPED
        .with_label_values(&[reason])
        .inc_by(n as u64);
}

/// The export thread: gather up to `batch_spans` spans or until `export_delay` passed since
/// the batch's first span, export, repeat; ends when every sender is gone.
fn export_loop(rx: Receiver<Msg>, mut exporter: Box<dyn ErasedExporter>, b: Bounds) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(b.batch_spans);
    let mut due: Option<Instant> = None;
    loop {
        let msg = match due {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        match msg {
            Ok(Msg::Span(s)) => {
                batch.push(*s);
                due.get_or_insert_with(|| Instant::now() + b.export_delay);
                if batch.len() >= b.batch_spans {
                    export(&mut *exporter, &mut batch);
                    due = None;
                }
            }
            Ok(Msg::Flush(ack)) => {
                export(&mut *exporter, &mut batch);
                due = None;
                let _ = ack.try_send(());
            }
            Err(RecvTimeoutError::Timeout) => {
                export(&mut *exporter, &mut batch);
                due = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                export(&mut *exporter, &mut batch);
                return;
            }
        }
    }
}

fn export(exporter: &mut dyn ErasedExporter, batch: &mut Vec<SpanData>) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len();
    let spans = std::mem::replace(batch, Vec::with_capacity(n));
    match exporter.export_blocking(spans) {
        Ok(()) => metrics::TRACE_SPANS_EXPORTED.inc_by(n as u64),
        Err(e) => {
            dropped("export_failed", n);
            tracing::debug!(error = %e, spans = n, "tracing: export failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// An exporter that counts the spans it got.
    #[derive(Debug, Clone, Default)]
    struct Counting(Arc<AtomicUsize>);

    impl SpanExporter for Counting {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.fetch_add(batch.len(), Ordering::SeqCst);
            Ok(())
        }
    }

    /// An exporter that always fails, as one whose collector is down.
    #[derive(Debug)]
    struct Down;

    impl SpanExporter for Down {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            Err(OTelSdkError::InternalFailure("connection refused".into()))
        }
    }

    fn provider<E: SpanExporter + 'static>(
        e: E,
        queue: usize,
    ) -> opentelemetry_sdk::trace::SdkTracerProvider {
        let bounds = Bounds {
            queue_spans: queue,
            batch_spans: queue,
            export_delay: Duration::from_secs(60),
            flush_timeout: Duration::from_secs(10),
        };
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_span_processor(CountingProcessor::new(e, bounds))
            .build()
    }

    fn spans(p: &opentelemetry_sdk::trace::SdkTracerProvider, n: usize) {
        use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
        let t = p.tracer("test");
        for _ in 0..n {
            t.start("s").end();
        }
    }

    fn dropped_now(reason: &str) -> u64 {
        metrics::TRACE_SPANS_DROPPED
            .with_label_values(&[reason])
            .get()
    }

    #[test]
    fn failed_exports_are_counted_as_dropped() {
        let before = dropped_now("export_failed");
        let p = provider(Down, 16);
        spans(&p, 3);
        assert!(p.force_flush().is_ok());
        assert!(dropped_now("export_failed") >= before + 3);
    }

    #[test]
    fn exported_spans_reach_the_exporter() {
        let got = Counting::default();
        let p = provider(got.clone(), 16);
        spans(&p, 5);
        assert!(p.force_flush().is_ok());
        assert_eq!(got.0.load(Ordering::SeqCst), 5);
    }
}
