//! The demo's TLS listener: a CA and a certificate made at start, and the tour's TLS lines.

use std::time::Duration;

use crate::cli::DemoArgs;

/// The files of the demo's TLS listener.
pub(super) struct DemoTls {
    /// The directory holding them, removed on exit.
    pub(super) dir: std::path::PathBuf,
    pub(super) ca: std::path::PathBuf,
    pub(super) cert: std::path::PathBuf,
    pub(super) key: std::path::PathBuf,
}

/// Make a CA and a certificate for `localhost` and `127.0.0.1` signed by it (rcgen), and write
/// them to a fresh directory under the system temp dir (owner-only), for the demo's TLS
/// listener and the printed `curl --cacert` lines. Valid for 30 days from now.
pub(super) fn demo_certificate() -> anyhow::Result<DemoTls> {
    use anyhow::Context;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let dir = std::env::temp_dir().join(format!("canary-lb-demo-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", dir.display()))?;
    }
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "canary-lb demo CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "canary-lb demo");
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + Duration::from_secs(30 * 24 * 3600)).into();
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let files = DemoTls {
        dir: dir.clone(),
        ca: dir.join("ca.pem"),
        cert: dir.join("localhost.crt"),
        key: dir.join("localhost.key"),
    };
    for (path, pem) in [
        (&files.ca, ca.pem()),
        (&files.cert, cert.pem()),
        (&files.key, key.serialize_pem()),
    ] {
        std::fs::write(path, pem).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(files)
}

pub(super) fn print_tls_tour(args: &DemoArgs, tls: &DemoTls) {
    let port = args.tls_listen.port();
    let ca = tls.ca.display();
    println!(
        "HTTPS on {tls_listen} with a certificate for localhost made at start (CA: {ca}):\n\n\
         \x20 curl --cacert {ca} https://localhost:{port}/            # HTTP/1.1 over TLS\n\
         \x20 curl --cacert {ca} --http2 -si https://localhost:{port}/ | head -1   # HTTP/2\n",
        tls_listen = args.tls_listen,
    );
}
