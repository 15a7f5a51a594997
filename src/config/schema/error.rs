//! Why a config text was refused (`InvalidConfig`), naming the key and its line.

/// Why a config text was refused; the message names the key (and, from serde, the line).
#[derive(Debug, thiserror::Error)]
pub enum InvalidConfig {
    /// YAML syntax, an unknown key or a bad value: serde's message names the key and the line.
    /// Shown, not a `#[source]`, so a chain printer does not repeat it.
    #[error("{0}")]
    Yaml(serde_yaml_ng::Error),
    /// A value serde accepted that the config as a whole does not (`Config::validate`), with
    /// the line of the key when it is in the text.
    #[error("{key}: {problem}{}", at.map(|p| format!(" at {p}")).unwrap_or_default())]
    Key {
        key: String,
        problem: String,
        at: Option<super::super::locate::Position>,
    },
    /// serde's message for the document as a whole (a duplicate or unknown top-level key),
    /// which it gives without a line, with the line found.
    #[error("{message} at {at}")]
    YamlAt {
        message: String,
        at: super::super::locate::Position,
    },
}

impl InvalidConfig {
    /// serde_yaml_ng gives no line for problems of the top-level map (its position is the
    /// document's start): find the key it names.
    pub(super) fn from_yaml(e: serde_yaml_ng::Error, text: &str) -> InvalidConfig {
        let message = e.to_string();
        if e.location().is_some_and(|l| l.line() > 1 || l.column() > 1) {
            return InvalidConfig::Yaml(e);
        }
        let named = |prefix: &str| {
            message
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('`'))
                .and_then(|rest| rest.split('`').next())
                .map(str::to_string)
        };
        let at = match (named("duplicate field "), named("unknown field ")) {
            (Some(key), _) => super::super::locate::locate(text, &key, 2),
            (None, Some(key)) => super::super::locate::locate(text, &key, 1),
            _ => None,
        };
        match at {
            Some(at) => InvalidConfig::YamlAt { message, at },
            None => InvalidConfig::Yaml(e),
        }
    }

    /// The error with the line of its key in `text`, when it has a key and the key is there.
    pub(super) fn located(self, text: &str) -> InvalidConfig {
        match self {
            InvalidConfig::Key {
                key,
                problem,
                at: None,
            } => InvalidConfig::Key {
                at: super::super::locate::locate_nearest(text, &key),
                key,
                problem,
            },
            other => other,
        }
    }
}

pub(super) fn invalid(key: impl Into<String>, problem: impl ToString) -> InvalidConfig {
    InvalidConfig::Key {
        key: key.into(),
        problem: problem.to_string(),
        at: None,
    }
}
