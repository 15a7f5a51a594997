//! `ctl rollout --admin URL`: the proxy's admin endpoints (`GET /rollout`, `POST
//! /rollout/start?...`, `POST /rollout/<command>`) through the commands' one admin client
//! (`control/admin_client.rs`: plain `http://`, one deadline for the whole exchange, at most
//! [`MAX_RESPONSE`] bytes read, so a hung or babbling listener makes the command fail, never
//! hang).

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::{StartFlags, View};
use crate::control::admin_client::AdminClient;
use crate::control::CtlError;
use crate::rollout::Command;

/// The most bytes of one response read (the rollout JSON with 20 history entries is a few KiB).
pub const MAX_RESPONSE: usize = 1 << 20;

pub(crate) struct Admin {
    /// `http://host:port[/prefix]`: any path before `/rollout` (a proxy behind a prefix).
    client: AdminClient,
}

fn admin_error(url: &str, problem: impl ToString) -> CtlError {
    CtlError::Admin {
        url: url.to_string(),
        problem: problem.to_string(),
    }
}

impl Admin {
    /// `http://host:port[/prefix]`, or `host:port`.
    pub(crate) fn new(
        url: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Admin, CtlError> {
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return Err(admin_error(
                    url,
                    format!("`{scheme}://` is not supported: give http://host:port"),
                ))
            }
            None => url,
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') || !authority.contains(':') {
            return Err(admin_error(
                url,
                "give http://host:port (the proxy's metrics_listen)",
            ));
        }
        if prefix.bytes().any(|b| b <= b' ' || b == b'?' || b == b'#') {
            return Err(admin_error(url, "the path must be plain"));
        }
        Ok(Admin {
            client: AdminClient::new(
                format!("http://{authority}{prefix}"),
                token,
                timeout,
                MAX_RESPONSE as u64,
            ),
        })
    }

    fn url(&self, path: &str) -> String {
        self.client.url(path)
    }

    pub(crate) fn view(&self) -> Result<View, CtlError> {
        self.json("GET", "/rollout")
    }

    pub(crate) fn start(&self, flags: &StartFlags) -> Result<View, CtlError> {
        self.json("POST", &format!("/rollout/start{}", start_query(flags)))
    }

    pub(crate) fn command(&self, cmd: Command) -> Result<View, CtlError> {
        self.json("POST", &format!("/rollout/{}", cmd.as_str()))
    }

    /// 200 with the rollout JSON; 409 is a refused command (its text is the reason).
    fn json(&self, method: &str, path: &str) -> Result<View, CtlError> {
        let url = self.url(path);
        let (status, body) = self.request(method, path)?;
        let text = String::from_utf8_lossy(&body);
        match status {
            200 => serde_json::from_slice(&body)
                .map_err(|e| admin_error(&url, format!("the answer is not the rollout JSON: {e}"))),
            409 => Err(CtlError::Rollout(text.trim().to_string())),
            401 | 403 => Err(admin_error(
                &url,
                format!("{status}: pass --admin-token-file (the proxy's metrics_auth_token_file)"),
            )),
            _ => Err(admin_error(&url, format!("{status}: {}", text.trim()))),
        }
    }

    fn request(&self, method: &str, path: &str) -> Result<(u16, Vec<u8>), CtlError> {
        let sent = match method {
            "POST" => self.client.post(path),
            _ => self.client.get(path),
        };
        sent.map_err(|e| admin_error(&self.url(path), e))
    }
}

/// `?steps=5,10&interval=2s&...` with only the flags given, as typed (the proxy parses them
/// with the same parser and fills in the rest from its config).
pub(crate) fn start_query(flags: &StartFlags) -> String {
    let params: Vec<String> = flags
        .keys
        .iter()
        .map(|(key, value)| format!("{key}={}", percent_encode(value)))
        .collect();
    if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    }
}

/// What a value keeps as it is: letters, digits and `,._-`; every other byte is `%XX` (never
/// `+` for a space: releases before `form_urlencoded` read `+` as itself).
const VALUE_AS_IS: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b',')
    .remove(b'.')
    .remove(b'_')
    .remove(b'-');

fn percent_encode(value: &str) -> String {
    utf8_percent_encode(value, VALUE_AS_IS).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_are_checked() {
        let a = Admin::new("http://127.0.0.1:9091/", None, Duration::from_secs(1)).unwrap();
        assert_eq!(a.url("/rollout"), "http://127.0.0.1:9091/rollout");
        let a = Admin::new("127.0.0.1:9091/lb", None, Duration::from_secs(1)).unwrap();
        assert_eq!(a.url("/rollout"), "http://127.0.0.1:9091/lb/rollout");
        for bad in [
            "https://127.0.0.1:9091",
            "http://user:pw@127.0.0.1:9091",
            "http://",
            "localhost",
            "http://127.0.0.1:9091/a b",
        ] {
            assert!(
                Admin::new(bad, None, Duration::from_secs(1)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_start_query_carries_only_the_given_flags() {
        assert_eq!(start_query(&StartFlags::default()), "");
        let flags = StartFlags {
            keys: vec![
                ("steps", "5,12.5".into()),
                ("interval", "1500ms".into()),
                ("threshold", "2".into()),
                ("min_requests", "25%& x".into()),
            ],
        };
        assert_eq!(
            start_query(&flags),
            "?steps=5,12.5&interval=1500ms&threshold=2&min_requests=25%25%26%20x"
        );
    }
}
