//! The one HTTP client of the commands that talk to a running proxy's admin listener
//! (`canary-lb reload`'s `GET /status`, `ctl rollout --admin`): ureq, blocking, plain
//! `http://` (the admin listener is loopback or an internal network).
//!
//! Bounded so a hung or babbling listener makes the command fail, never hang: one deadline
//! for the whole exchange, at most `max_body` bytes read, no redirects followed, no proxy
//! from the environment.

use std::time::Duration;

/// An admin listener at `http://authority` (with an optional path prefix) and its token.
pub(crate) struct AdminClient {
    agent: ureq::Agent,
    /// `http://host:port[/prefix]`, without a trailing `/`.
    base: String,
    token: Option<String>,
    max_body: u64,
}

impl AdminClient {
    pub(crate) fn new(
        base: String,
        token: Option<String>,
        timeout: Duration,
        max_body: u64,
    ) -> AdminClient {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .user_agent("canary-lb-ctl")
            .build()
            .into();
        AdminClient {
            agent,
            base,
            token,
            max_body,
        }
    }

    /// The full URL of `path` (for messages).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path`: the status code and the body.
    pub(crate) fn get(&self, path: &str) -> Result<(u16, Vec<u8>), String> {
        let mut req = self
            .agent
            .get(self.url(path))
            .header("Accept", "application/json");
        if let Some(token) = &self.token {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        self.read(req.call())
    }

    /// `POST path` with an empty body: the status code and the body.
    pub(crate) fn post(&self, path: &str) -> Result<(u16, Vec<u8>), String> {
        let mut req = self
            .agent
            .post(self.url(path))
            .header("Accept", "application/json");
        if let Some(token) = &self.token {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        self.read(req.send_empty())
    }

    fn read(
        &self,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut resp = sent.map_err(|e| problem(e, self.max_body))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(self.max_body)
            .read_to_vec()
            .map_err(|e| problem(e, self.max_body))?;
        Ok((status, body))
    }
}

/// The error as a command prints it.
fn problem(e: ureq::Error, max_body: u64) -> String {
    match e {
        ureq::Error::Timeout(_) => "no complete answer in time".to_string(),
        ureq::Error::BodyExceedsLimit(_) => format!("answer longer than {max_body} bytes"),
        // Bytes that do not parse as an HTTP answer (a listener that is not the admin port).
        ureq::Error::Protocol(e) => format!("no complete answer: not an HTTP status line ({e})"),
        e => e.to_string(),
    }
}
