//! The one reader of Prometheus's text format in the tests: a scrape parsed into samples
//! (name, labels, value), with the few questions tests ask of it.

use std::collections::BTreeSet;

/// One sample line: `name{key="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// Whether the sample carries `key="value"` for each `key="value"` text of `wanted`.
    pub fn has_labels(&self, wanted: &[&str]) -> bool {
        wanted.iter().all(|w| {
            self.labels.iter().any(|(k, v)| {
                w.strip_prefix(k.as_str()).and_then(|r| r.strip_prefix('='))
                    == Some(&format!("\"{v}\""))
            })
        })
    }
}

/// A parsed `/metrics` text.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parse `text`; comment lines are skipped, and a line that is not a sample panics with
    /// the line (the proxy's output is the thing under test).
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| sample(l).unwrap_or_else(|| panic!("not a Prometheus sample line: {l:?}")))
            .collect();
        Scrape { samples }
    }

    /// The sum of the samples of `name` carrying every label of `labels` (each written as
    /// `key="value"`); 0 when there is none.
    pub fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The value of the one sample of `name` with `labels`, if there is exactly one.
    pub fn value(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let mut found = self.matching(name, labels);
        let first = found.next()?;
        found.next().is_none().then_some(first.value)
    }

    /// The value of the series written as Prometheus prints it (`name{key="value"}`).
    pub fn series(&self, printed: &str) -> Option<f64> {
        let want = sample(&format!("{printed} 0"))
            .unwrap_or_else(|| panic!("not a Prometheus series: {printed:?}"));
        self.samples
            .iter()
            .find(|s| s.name == want.name && s.labels == want.labels)
            .map(|s| s.value)
    }

    /// Whether metric `name` has a sample (a histogram by its `_bucket`/`_sum`/`_count`).
    pub fn has(&self, name: &str) -> bool {
        self.samples
            .iter()
            .any(|s| family(&s.name) == name || s.name == name)
    }

    /// The sample names, as written (histogram suffixes included).
    pub fn names(&self) -> BTreeSet<String> {
        self.samples.iter().map(|s| s.name.clone()).collect()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [&str],
    ) -> impl Iterator<Item = &'a Sample> {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.has_labels(labels))
    }
}

/// A histogram sample's family name (`x_bucket` -> `x`); other names unchanged.
pub fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// Every `canary_lb_*` name in any text (a dashboard, a rules file), as written (histogram
/// suffixes included; [`family`] takes them off); a name glued to a longer word is not one.
pub fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("canary_lb_") {
        let glued = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        let token: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !glued {
            names.insert(token.clone());
        }
        rest = &rest[i + token.len()..];
    }
    names
}

/// One sample line, label values unescaped (`\\`, `\"`, `\n`).
fn sample(line: &str) -> Option<Sample> {
    let (series, value) = line.trim_end().rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let Some((name, mut rest)) = series.split_once('{') else {
        return Some(Sample {
            name: series.to_string(),
            labels: Vec::new(),
            value,
        });
    };
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches(',');
        if rest == "}" {
            break;
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut text = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => text.push('\n'),
                    c => text.push(c),
                },
                (_, c) => text.push(c),
            }
        };
        labels.push((key.to_string(), text));
        rest = &after[end + 1..];
    }
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}
