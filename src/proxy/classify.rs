//! Pingora errors mapped to sluice's, by who caused them (the client, sluice itself, or the
//! upstream): used by the attempts, the relay, passthrough's `fail_to_proxy` and the breakers'
//! outcome (`balance::breaker::Outcome`).

use crate::error::{SluiceError, TimeoutPhase};
use pingora_error::{Error, ErrorSource, ErrorType};

/// Map a Pingora proxy error to sluice's error, by who caused it ([`Error::esource`]): the
/// client ([`client_error`]), sluice itself ([`SluiceError::Internal`]: a hook refused or
/// failed before anything was sent), or the upstream (connect failure, timeout, reset,
/// invalid response). Connect and timeout types count as the upstream's whatever their source
/// (an unresolvable endpoint name is reported before Pingora tags it).
pub fn classify(e: &Error, endpoint: &str, before_header: bool) -> SluiceError {
    let upstream = endpoint.to_owned();
    let source = e.esource();
    if *source == ErrorSource::Downstream {
        return client_error(e);
    }
    match e.etype() {
        ErrorType::ConnectTimedout => SluiceError::UpstreamTimeout {
            upstream,
            phase: TimeoutPhase::Connect,
        },
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => SluiceError::UpstreamTimeout {
            upstream,
            phase: if before_header {
                TimeoutPhase::FirstByte
            } else {
                TimeoutPhase::Idle
            },
        },
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::ConnectProxyFailure
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError
        | ErrorType::SocketError
        | ErrorType::BindError => SluiceError::UpstreamUnreachable(upstream),
        _ if *source == ErrorSource::Upstream => SluiceError::UpstreamFailed(upstream),
        _ => SluiceError::Internal,
    }
}

/// pingora-core's v1 body reader error types (not exported by pingora-core, matched by
/// name): a chunk size that is not hex, overflows or is too long, a chunk not ended by CRLF
/// (`InvalidChunk`), or a malformed trailer section (`InvalidTrailerEnd`).
const INVALID_CHUNK: ErrorType = ErrorType::new("InvalidChunk");
const INVALID_TRAILER_END: ErrorType = ErrorType::new("InvalidTrailerEnd");

/// Map an error reading the client's request to sluice's error: invalid framing
/// ([`SluiceError::BadRequestFraming`], answered with a 400 and `connection: close`) or a client
/// that left or stalled ([`SluiceError::ClientGone`]: nobody to answer).
pub fn client_error(e: &Error) -> SluiceError {
    let etype = e.etype();
    if *etype == INVALID_CHUNK
        || *etype == INVALID_TRAILER_END
        || *etype == ErrorType::InvalidHTTPHeader
    {
        SluiceError::BadRequestFraming
    } else {
        SluiceError::ClientGone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(etype: ErrorType, source: Option<ErrorSource>) -> Box<Error> {
        let mut e = Error::explain(etype, "test");
        match source {
            Some(ErrorSource::Upstream) => e.as_up(),
            Some(ErrorSource::Downstream) => e.as_down(),
            Some(_) => e.as_in(),
            None => {}
        }
        e
    }

    #[test]
    fn errors_are_classified_by_who_caused_them() {
        let c = |e: Box<Error>| classify(&e, "h:1", true);
        let down = Some(ErrorSource::Downstream);
        let up = Some(ErrorSource::Upstream);
        assert!(matches!(
            c(err(INVALID_CHUNK, down.clone())),
            SluiceError::BadRequestFraming
        ));
        assert!(matches!(
            c(err(ErrorType::ConnectionClosed, down.clone())),
            SluiceError::ClientGone
        ));
        // A read error is the client's when it comes from downstream, the upstream's otherwise.
        assert!(matches!(
            c(err(ErrorType::ReadError, down)),
            SluiceError::ClientGone
        ));
        assert!(matches!(
            c(err(ErrorType::ReadError, up)),
            SluiceError::UpstreamFailed(_)
        ));
        // Sluice's own refusals (a hook that failed before sending) are internal.
        assert!(matches!(
            c(err(ErrorType::InternalError, None)),
            SluiceError::Internal
        ));
        assert!(matches!(
            c(err(ErrorType::InternalError, Some(ErrorSource::Internal))),
            SluiceError::Internal
        ));
        // Connect failures and timeouts are the upstream's even before Pingora tags them.
        assert!(matches!(
            c(err(ErrorType::ConnectNoRoute, None)),
            SluiceError::UpstreamUnreachable(_)
        ));
        assert!(matches!(
            c(err(ErrorType::ConnectTimedout, None)),
            SluiceError::UpstreamTimeout { .. }
        ));
    }
}
