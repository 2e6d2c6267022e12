//! The client side of an inspected request, as failover, commit, the relay and resume see it:
//! where the response goes and how a client that left is noticed. Pingora's [`Session`] is
//! one; a coalesced flight (several clients sharing one upstream attempt) is another.

use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// Where an inspected request's response goes.
pub trait Downstream: Send {
    /// The client's request header (normalized path, as routed).
    fn req_header(&self) -> &RequestHeader;

    /// Write the response header. Errors: the client is gone.
    fn write_header(
        &mut self,
        header: Box<ResponseHeader>,
    ) -> impl std::future::Future<Output = pingora_error::Result<()>> + Send;

    /// Write body bytes (`end`: the last ones). Errors: the client is gone.
    fn write_body(
        &mut self,
        data: Bytes,
        end: bool,
    ) -> impl std::future::Future<Output = pingora_error::Result<()>> + Send;

    /// Resolves when the client has left (or sent bytes it should not have, on a request whose
    /// body was read whole). Cancel-safe: used as a `select!` branch.
    fn gone(&mut self) -> impl std::future::Future<Output = ()> + Send;

    /// Close the client connection after this response (it ended abnormally).
    fn close_after(&mut self);

    /// The served attempt's response header, once the client's header was built from it
    /// (before [`Downstream::write_header`]): dropped, or kept by a coalesced flight for its
    /// followers to build theirs from.
    fn keep_upstream_header(&mut self, _header: Box<ResponseHeader>) {}
}

impl Downstream for Session {
    fn req_header(&self) -> &RequestHeader {
        self.as_downstream().req_header()
    }

    async fn write_header(&mut self, header: Box<ResponseHeader>) -> pingora_error::Result<()> {
        self.write_response_header(header, false).await
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> pingora_error::Result<()> {
        self.write_response_body(Some(data), end).await
    }

    async fn gone(&mut self) {
        let _ = self.as_downstream_mut().read_body_or_idle(true).await;
    }

    fn close_after(&mut self) {
        self.set_keepalive(None);
    }
}
