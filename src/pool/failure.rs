//! Whose fault an error is: the upstream server's, the client's, or the proxy's own.
//!
//! Passive health and active checks count only the first kind, so that nothing a client does,
//! and nothing the proxy runs short of (descriptors, buffers, memory, local ports), takes a
//! server out of rotation.

use pingora_error::{Error, ErrorSource, ErrorType};

/// The `kind` label of `canary_lb_upstream_tls_failures_total`: why a TLS connection to an
/// app server failed. The first three are a trust mismatch between the proxy's `pools.X.tls`
/// and the server's certificates, which never counts against the server's health; the last is
/// any other failed handshake (a server that does not speak TLS, no shared version), which
/// does, as a connect failure would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamTlsFailure {
    /// The server's certificate is not signed by a CA the pool trusts (`ca_file`).
    UnknownCa,
    /// The server's certificate is signed but unusable: expired, not yet valid, not for the
    /// SNI name, revoked, malformed.
    BadCertificate,
    /// The server refused the proxy's client certificate, or wanted one and got none (mTLS).
    ClientCertRefused,
    /// Any other failed TLS handshake with the server.
    Handshake,
}

impl UpstreamTlsFailure {
    pub const ALL: [UpstreamTlsFailure; 4] = [
        UpstreamTlsFailure::UnknownCa,
        UpstreamTlsFailure::BadCertificate,
        UpstreamTlsFailure::ClientCertRefused,
        UpstreamTlsFailure::Handshake,
    ];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            UpstreamTlsFailure::UnknownCa => "unknown_ca",
            UpstreamTlsFailure::BadCertificate => "bad_certificate",
            UpstreamTlsFailure::ClientCertRefused => "client_cert_refused",
            UpstreamTlsFailure::Handshake => "handshake",
        }
    }

    /// A trust mismatch (certificates), not a failing server.
    pub const fn is_certificate(self) -> bool {
        !matches!(self, UpstreamTlsFailure::Handshake)
    }
}

crate::metrics::label_value!(UpstreamTlsFailure);

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
    transport && !is_proxy_own(e) && !tls_failure(e).is_some_and(|k| k.is_certificate())
}

/// Why a TLS connection to a server failed, if `e` is such a failure: during the handshake
/// (Pingora keeps only rustls's text of it), or right after it, when a TLS 1.3 server refuses
/// the client certificate with an alert on its first read (a typed rustls error).
pub fn tls_failure(e: &Error) -> Option<UpstreamTlsFailure> {
    if matches!(e.esource(), ErrorSource::Downstream) {
        return None;
    }
    let typed = e
        .root_cause()
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if let Some(tls) = typed {
        return Some(classify(tls));
    }
    if !matches!(e.etype(), ErrorType::TLSHandshakeFailure) {
        return None;
    }
    let text = e.to_string();
    Some(classify_text(&text))
}

fn classify(e: &rustls::Error) -> UpstreamTlsFailure {
    use rustls::{AlertDescription as A, CertificateError as C};
    match e {
        // (A certificate from another CA of the same name fails on its signature.)
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            UpstreamTlsFailure::UnknownCa
        }
        rustls::Error::InvalidCertificate(_) => UpstreamTlsFailure::BadCertificate,
        rustls::Error::AlertReceived(
            A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::AccessDenied,
        ) => UpstreamTlsFailure::ClientCertRefused,
        _ => UpstreamTlsFailure::Handshake,
    }
}

/// [`classify`] on the text Pingora keeps of a failed handshake (`TLS connect() failed:
/// <rustls error>, SNI: ..`): rustls's `Display` of the same errors.
fn classify_text(text: &str) -> UpstreamTlsFailure {
    if let Some(rest) = text.split("invalid peer certificate: ").nth(1) {
        return if rest.starts_with("UnknownIssuer") || rest.starts_with("BadSignature") {
            UpstreamTlsFailure::UnknownCa
        } else {
            UpstreamTlsFailure::BadCertificate
        };
    }
    if let Some(rest) = text.split("received fatal alert: ").nth(1) {
        const REFUSED: [&str; 8] = [
            "CertificateRequired",
            "BadCertificate",
            "UnknownCA",
            "CertificateUnknown",
            "UnsupportedCertificate",
            "CertificateExpired",
            "CertificateRevoked",
            "AccessDenied",
        ];
        if REFUSED.iter().any(|a| rest.starts_with(a)) {
            return UpstreamTlsFailure::ClientCertRefused;
        }
    }
    UpstreamTlsFailure::Handshake
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
        && !tls_failure(e).is_some_and(|k| k.is_certificate())
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
        // A certificate the proxy does not accept is a trust mismatch, not a failing server;
        // any other failed handshake is the server's.
        let handshake = |text: &str| {
            let mut e = Error::explain(
                ErrorType::TLSHandshakeFailure,
                format!("TLS connect() failed: {text}, SNI: app.internal"),
            );
            e.as_up();
            e
        };
        for (text, kind) in [
            (
                "invalid peer certificate: UnknownIssuer",
                UpstreamTlsFailure::UnknownCa,
            ),
            (
                "invalid peer certificate: BadSignature",
                UpstreamTlsFailure::UnknownCa,
            ),
            (
                "invalid peer certificate: Expired",
                UpstreamTlsFailure::BadCertificate,
            ),
            (
                "received fatal alert: CertificateRequired",
                UpstreamTlsFailure::ClientCertRefused,
            ),
            (
                "received fatal alert: ProtocolVersion",
                UpstreamTlsFailure::Handshake,
            ),
            ("corrupt message", UpstreamTlsFailure::Handshake),
        ] {
            let e = handshake(text);
            assert_eq!(tls_failure(&e), Some(kind), "{text}");
            assert_eq!(is_server_failure(&e), !kind.is_certificate(), "{text}");
        }
        let alert = Error::because(
            ErrorType::ReadError,
            "read",
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
            ),
        );
        assert_eq!(
            tls_failure(&alert),
            Some(UpstreamTlsFailure::ClientCertRefused)
        );
        assert!(!is_server_failure(&alert));
        assert_eq!(tls_failure(&err(ErrorType::ConnectRefused, None)), None);
        let refused = Error::because(
            ErrorType::ConnectRefused,
            "connect",
            std::io::Error::from_raw_os_error(libc::ECONNREFUSED),
        );
        assert!(is_server_failure(&refused));
    }
}
