//! Whose fault an error is: the upstream server's, the client's, or the proxy's own.
//!
//! Passive health and active checks count only the first kind, so that nothing a client does,
//! and nothing the proxy runs short of (descriptors, buffers, memory, local ports), takes a
//! server out of rotation.

use pingora_error::{Error, ErrorSource, ErrorType};

/// Errno values that mean the proxy itself ran short (descriptors, buffers, memory, local
/// ports), whoever it was talking to.
const PROXY_OWN_ERRNOS: [i32; 5] = [
    libc::EMFILE,
    libc::ENFILE,
    libc::ENOBUFS,
    libc::ENOMEM,
    libc::EADDRNOTAVAIL,
];

/// Whether `e` is a transport failure of the upstream server, the only kind passive health
/// counts: a connect refused, timed out or unroutable, a TLS handshake failure, a reset or a
/// timeout on the connection. Errors of the client, of the proxy's own resources and HTTP
/// statuses are not.
pub fn is_server_failure(e: &Error) -> bool {
    if matches!(e.esource(), ErrorSource::Downstream | ErrorSource::Internal) {
        return false;
    }
    let transport = matches!(
        e.etype(),
        ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::HandshakeError
            | ErrorType::ReadError
            | ErrorType::WriteError
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::ConnectionClosed
    );
    transport && !is_proxy_own(e)
}

/// The root cause is one of [`PROXY_OWN_ERRNOS`].
pub fn is_proxy_own(e: &Error) -> bool {
    e.root_cause()
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.raw_os_error())
        .is_some_and(|errno| PROXY_OWN_ERRNOS.contains(&errno))
}

/// A reset or close by the upstream (not a timeout: a server that is still working on the
/// request may yet act on it).
pub fn is_reset(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
    ) && !is_proxy_own(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_upstream_transport_failures_count() {
        let err = |t: ErrorType, src: Option<ErrorSource>| {
            let mut e = Error::new(t);
            match src {
                Some(ErrorSource::Upstream) => e.as_up(),
                Some(ErrorSource::Downstream) => e.as_down(),
                Some(ErrorSource::Internal) => e.as_in(),
                _ => {}
            }
            e
        };
        let up = Some(ErrorSource::Upstream);
        assert!(is_server_failure(&err(ErrorType::ConnectRefused, None)));
        assert!(is_server_failure(&err(
            ErrorType::ConnectTimedout,
            up.clone()
        )));
        assert!(is_server_failure(&err(
            ErrorType::ConnectionClosed,
            up.clone()
        )));
        assert!(is_server_failure(&err(ErrorType::ReadTimedout, up.clone())));
        // The client's errors, the proxy's own and HTTP statuses never count.
        assert!(!is_server_failure(&err(
            ErrorType::ConnectionClosed,
            Some(ErrorSource::Downstream)
        )));
        assert!(!is_server_failure(&err(
            ErrorType::InternalError,
            Some(ErrorSource::Internal)
        )));
        assert!(!is_server_failure(&err(
            ErrorType::HTTPStatus(502),
            up.clone()
        )));
        assert!(!is_server_failure(&err(ErrorType::InvalidHTTPHeader, up)));
        for errno in PROXY_OWN_ERRNOS {
            let e = Error::because(
                ErrorType::ConnectError,
                "connect",
                std::io::Error::from_raw_os_error(errno),
            );
            assert!(!is_server_failure(&e), "errno {errno}");
            assert!(!is_reset(&e), "errno {errno}");
        }
        let refused = Error::because(
            ErrorType::ConnectRefused,
            "connect",
            std::io::Error::from_raw_os_error(libc::ECONNREFUSED),
        );
        assert!(is_server_failure(&refused));
    }
}
