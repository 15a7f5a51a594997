//! Stopping a proxy and telling an exit from a hang.

use std::process::ExitStatus;
use std::time::Duration;

use super::Proxy;

/// How long a stopped proxy may take to exit before a test calls it a hang. SIGINT needs no
/// drain, so this is generous for a loaded 2-core machine, not a timing assertion.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// SIGINT `proxy` and wait up to [`EXIT_DEADLINE`] for it to exit. A hang is an `Err` saying
/// how many `Accept() failed` lines the proxy logged meanwhile (the spinning accept loop that
/// patches/pingora/0003 ends logs a million a second); the caller's guard kills it.
pub fn sigint_and_wait(proxy: &mut Proxy) -> Result<ExitStatus, String> {
    proxy.sigint();
    match proxy.wait_exit(EXIT_DEADLINE) {
        Some(status) => Ok(status),
        None => {
            let spins = proxy.logs().matches("Accept() failed").count();
            Err(format!(
                "still running {EXIT_DEADLINE:?} after SIGINT ({spins} `Accept() failed` lines \
                 logged)"
            ))
        }
    }
}
