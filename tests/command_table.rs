//! The README's command table (issue 22): every command the binary has is in it, every command
//! and `--option` it names exists, so the table cannot drift from the code. Read from clap's
//! own description of the command line, not from running the binary.

use std::collections::BTreeSet;

use clap::CommandFactory;

const README: &str = include_str!("../README.md");

/// The backticked commands of the first column of the "Command line" table, one list per row.
fn table_rows() -> Vec<Vec<String>> {
    let start = README
        .find("\n## Command line")
        .expect("README has a Command line section");
    let section = &README[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    section[..end]
        .lines()
        .filter(|l| l.starts_with("| `canary-lb"))
        .map(|l| {
            let first_cell = l.split(" | ").next().unwrap_or_default();
            first_cell
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// The subcommand path `words` leads to from `root` (words that are not subcommands, such as
/// `N` or `ADDR`, end it), with the command reached. `a/b` in a word means either.
fn walk<'a>(root: &'a clap::Command, words: &[&str]) -> Vec<(Vec<String>, &'a clap::Command)> {
    let Some((first, rest)) = words.split_first() else {
        return vec![(Vec::new(), root)];
    };
    let mut found = Vec::new();
    for alt in first.split('/') {
        if let Some(sub) = root.find_subcommand(alt) {
            for (mut path, cmd) in walk(sub, rest) {
                path.insert(0, alt.to_string());
                found.push((path, cmd));
            }
        }
    }
    if found.is_empty() {
        found.push((Vec::new(), root));
    }
    found
}

/// The command at `path` under `root`.
fn at<'a>(root: &'a clap::Command, path: &[String]) -> &'a clap::Command {
    path.iter().fold(root, |c, w| {
        c.find_subcommand(w)
            .unwrap_or_else(|| panic!("no subcommand {w}"))
    })
}

/// Every path documented in the table, each checked against clap: the words name
/// subcommands, and every `--option` exists on the command they reach.
fn documented(root: &clap::Command) -> BTreeSet<Vec<String>> {
    let mut paths = BTreeSet::new();
    for row in table_rows() {
        let mut parent: Vec<String> = Vec::new();
        for segment in &row {
            let words: Vec<&str> = segment
                .split_whitespace()
                .filter(|w| *w != "canary-lb")
                .collect();
            let commands: Vec<&str> = words
                .iter()
                .copied()
                .take_while(|w| !w.starts_with('-') && !w.starts_with('['))
                .collect();
            // A later segment of a row (`canary get`, `status`) is relative to the first one:
            // resolve it under the deepest of its ancestors that knows its first word.
            let base = if segment.starts_with("canary-lb") {
                Vec::new()
            } else {
                let mut base = parent.clone();
                while !base.is_empty() && at(root, &base).find_subcommand(commands[0]).is_none() {
                    base.pop();
                }
                base
            };
            let under = at(root, &base);
            for (tail, cmd) in walk(under, &commands) {
                assert!(
                    !tail.is_empty() || !base.is_empty(),
                    "README command `{segment}` names no command of the binary"
                );
                let mut path = base.clone();
                path.extend(tail);
                for option in words.iter().filter_map(|w| {
                    let w = w.trim_start_matches('[');
                    w.strip_prefix("--")
                }) {
                    let option = option.split(['/', ']', '=']).next().unwrap_or_default();
                    assert!(
                        cmd.get_arguments()
                            .any(|a| a.get_long() == Some(option)
                                || a.get_all_aliases().into_iter().flatten().any(|x| x == option))
                            || root.get_arguments().any(|a| a.get_long() == Some(option)),
                        "README documents `--{option}` for `canary-lb {}`, which has no such option",
                        path.join(" ")
                    );
                }
                if path.len() > parent.len() || segment.starts_with("canary-lb") {
                    parent = path.clone();
                    parent.pop();
                }
                paths.insert(path);
            }
        }
    }
    paths
}

/// Every leaf command of the binary (visible ones), as word paths.
fn leaves(cmd: &clap::Command, prefix: &mut Vec<String>, out: &mut BTreeSet<Vec<String>>) {
    let subs: Vec<&clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .collect();
    if subs.is_empty() {
        out.insert(prefix.clone());
    }
    for s in subs {
        prefix.push(s.get_name().to_string());
        leaves(s, prefix, out);
        prefix.pop();
    }
}

#[test]
fn readme_command_table_matches_the_command_line() {
    let root = canary_lb::cli::Cli::command();
    let documented = documented(&root);
    let mut all = BTreeSet::new();
    leaves(&root, &mut Vec::new(), &mut all);
    let missing: Vec<String> = all
        .iter()
        .filter(|leaf| !documented.contains(*leaf))
        .map(|leaf| leaf.join(" "))
        .collect();
    assert!(
        missing.is_empty(),
        "commands missing from the README's command table: {missing:?}"
    );
}
