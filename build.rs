//! Sets `CANARY_LB_COMMIT` for `canary_lb_build_info{commit}` (src/metrics/mod.rs): the
//! environment's `CANARY_LB_COMMIT` when set (a container build without `.git` passes it as a
//! build argument), else the short hash of git's `HEAD`, else nothing (the metric then says
//! `unknown`). No network; a build outside a git checkout still works.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Only `[0-9A-Za-z._-]`, at most 64 bytes: it becomes a label value.
fn clean(commit: &str) -> Option<String> {
    let ok = !commit.is_empty()
        && commit.len() <= 64
        && commit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then(|| commit.to_string())
}

/// Rerun when `path` changes; a path that does not exist would rerun every build.
fn watch(path: Option<String>) {
    if let Some(p) = path.filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={p}");
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=CANARY_LB_COMMIT");
    let from_env = std::env::var("CANARY_LB_COMMIT").ok();
    let commit = match from_env.as_deref().and_then(clean) {
        Some(c) => Some(c),
        None => {
            // Rebuild when HEAD moves: HEAD itself (a checkout) and the branch it points to (a
            // commit), wherever this checkout or worktree keeps them.
            for path in ["HEAD", "packed-refs"] {
                watch(git(&["rev-parse", "--git-path", path]));
            }
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch(git(&["rev-parse", "--git-path", &branch]));
            }
            git(&["rev-parse", "--short=12", "HEAD"]).and_then(|c| clean(&c))
        }
    };
    if let Some(commit) = commit {
        println!("cargo:rustc-env=CANARY_LB_COMMIT={commit}");
    }
}
