//! What `canary-lb check` warns about: configs that load but can only answer 503 (no server
//! to send a request to), and the same server in both pools. A warning is not an error (the
//! proxy starts: servers may come later, by SIGHUP or `ctl`); `check --strict` makes it one.
//! Host names that do not resolve are checked by `check` itself (it does the lookups).

use std::fmt;

use super::locate::{locate_nearest, Position};
use super::Config;

/// One warning: the key it is about, what is wrong, and where the key is in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub key: String,
    pub message: String,
    pub at: Option<Position>,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The warning about the whole file has no key.
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(at) = self.at {
            write!(f, " at {at}")?;
        }
        Ok(())
    }
}

impl Warning {
    /// A warning about `key`, placed at its line in `text` (or its nearest enclosing key's).
    pub fn at_key(text: &str, key: impl Into<String>, message: impl Into<String>) -> Warning {
        let key = key.into();
        Warning {
            at: locate_nearest(text, &key),
            key,
            message: message.into(),
        }
    }
}

impl Config {
    /// The warnings of this config read from `text`.
    pub fn warnings(&self, text: &str) -> Vec<Warning> {
        let mut out = Vec::new();
        let sets_nothing = matches!(
            serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text),
            Ok(serde_yaml_ng::Value::Null)
        ) || matches!(
            serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text),
            Ok(serde_yaml_ng::Value::Mapping(m)) if m.is_empty()
        );
        if sets_nothing {
            out.push(Warning {
                key: String::new(),
                message: "the file sets nothing, so every key takes its default: listen \
                          0.0.0.0:8080 with no servers, and every request is answered 503"
                    .into(),
                at: None,
            });
            return out;
        }
        out.extend(self.shadow_warnings(text));
        if !self.discovery.provider.role().servers_in_config_file {
            // Redis supplies the servers; the file's lists are normally empty.
            return out;
        }
        let (prod, canary) = (&self.pools.production.servers, &self.pools.canary.servers);
        if prod.is_empty() && canary.is_empty() {
            out.push(Warning::at_key(
                text,
                "pools",
                "no servers in either pool (discovery.provider: static): every request is \
                 answered 503; list them under pools.production.servers",
            ));
        } else if prod.is_empty() && !self.fallback_to_canary {
            out.push(Warning::at_key(
                text,
                "pools.production.servers",
                "no production server (discovery.provider: static): every request routed to \
                 production is answered 503 (fallback_to_canary is off)",
            ));
        }
        for (i, s) in canary.iter().enumerate() {
            if let Some(j) = prod.iter().position(|p| p.addr == s.addr) {
                out.push(Warning::at_key(
                    text,
                    format!("pools.canary.servers[{i}]"),
                    format!(
                        "`{}` is also pools.production.servers[{j}]: the canary and production \
                         are the same server, so a rollout compares it with itself",
                        s.addr
                    ),
                ));
            }
        }
        out
    }

    /// A shadow step that lets copies act as the user, or repeat requests with side effects:
    /// allowed (the app servers may skip them on the copy's mark), never the default.
    fn shadow_warnings(&self, text: &str) -> Vec<Warning> {
        let Some(shadow) = &self.rollout.shadow else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if shadow.forward_credentials {
            out.push(Warning::at_key(
                text,
                "rollout.shadow.forward_credentials",
                format!(
                    "copies to the canary carry the users' Cookie and Authorization: the canary \
                     acts as each copied user, side effects included, unless the app servers \
                     skip them on `{}: 1`",
                    shadow.header
                ),
            ));
        }
        let unsafe_methods: Vec<&str> = shadow
            .methods
            .iter()
            .map(String::as_str)
            .filter(|m| !matches!(*m, "GET" | "HEAD" | "OPTIONS"))
            .collect();
        if !unsafe_methods.is_empty() {
            out.push(Warning::at_key(
                text,
                "rollout.shadow.methods",
                format!(
                    "{} requests are copied: the canary runs each a second time, so their side \
                     effects happen twice unless the app servers skip them on `{}: 1`",
                    unsafe_methods.join(", "),
                    shadow.header
                ),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(text: &str) -> Vec<String> {
        Config::parse(text)
            .expect("valid")
            .warnings(text)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn configs_that_can_only_answer_503_are_warned_about() {
        assert!(warnings("")[0].contains("sets nothing"));
        assert!(warnings("# only a comment\n")[0].contains("sets nothing"));
        let none = warnings("threads: 1\n");
        assert!(none[0].starts_with("pools: no servers"), "{none:?}");
        let no_prod = warnings("threads: 1\npools:\n  canary: { servers: [\"127.0.0.1:2\"] }\n");
        assert!(
            no_prod[0].contains("pools.production.servers") && no_prod[0].contains("line 3"),
            "{no_prod:?}"
        );
        let same = warnings(
            "pools:\n  production: { servers: [\"127.0.0.1:1\"] }\n  canary:\n    servers:\n      - \"127.0.0.1:1\"\n",
        );
        assert_eq!(same.len(), 1, "{same:?}");
        assert!(
            same[0].starts_with("pools.canary.servers[0]: `127.0.0.1:1` is also")
                && same[0].contains("line 5"),
            "{same:?}"
        );
        assert!(warnings("pools: { production: { servers: [\"127.0.0.1:1\"] } }\n").is_empty());
        assert!(warnings("discovery: { provider: redis }\n").is_empty());
    }

    #[test]
    fn a_shadow_step_that_acts_as_the_user_or_repeats_side_effects_is_warned_about() {
        let pools = "pools:\n  production: { servers: [\"127.0.0.1:1\"] }\n";
        assert!(warnings(&format!(
            "{pools}rollout: {{ shadow: {{ percent: 10 }} }}\n"
        ))
        .is_empty());
        let w = warnings(&format!(
            "{pools}rollout:\n  shadow:\n    methods: [GET, POST]\n    forward_credentials: true\n"
        ));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("rollout.shadow.forward_credentials:") && w[0].contains("line 6"),
            "{w:?}"
        );
        assert!(
            w[1].starts_with("rollout.shadow.methods: POST requests are copied")
                && w[1].contains("line 5"),
            "{w:?}"
        );
    }
}
