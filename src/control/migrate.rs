//! `canary-lb ctl migrate-keys`: a store of the legacy key layout (`ns:…`, written by the
//! releases before the tagged one) moved to its tagged names (`{ns}:…`) in one atomic script.
//!
//! The refusal rule: while any proxy report under the legacy names lacks the tagged-layout
//! marker, a proxy of an older release is following the store, and after the move it would
//! see no store at all (it keeps its last servers, but follows no change, and its writes would
//! go to names nobody reads). `--force` goes ahead anyway. A store with both markers is
//! refused outright: something wrote the legacy names after a migration, and which of the two
//! holds the truth is for a person to decide.

use super::CtlError;
use crate::store::{Connection, KeyLayout, Migration, Store};

/// The line `ctl status` adds when the store is not (only) in the tagged layout.
pub(super) fn layout_note(layout: KeyLayout, store: &Store) -> Option<String> {
    let legacy = store.with_legacy_names().marker_key();
    match layout {
        KeyLayout::Legacy => Some(format!(
            "keys: legacy layout ({legacy}, the names of releases before the tagged one); \
             `canary-lb ctl migrate-keys` moves them to the tagged layout Redis Cluster needs"
        )),
        KeyLayout::Both => Some(format!(
            "keys: WARNING: both {legacy} and {} exist: the tagged layout is in force and \
             something wrote the legacy names after a migration (a `ctl` or heartbeat of an \
             older release?)",
            store.marker_key()
        )),
        KeyLayout::New | KeyLayout::Tagged => None,
    }
}

/// Run `migrate-keys` on `store` (see the module documentation).
pub(super) async fn run(c: &mut Connection, store: &Store, force: bool) -> Result<(), CtlError> {
    let namespace = store.namespace();
    let legacy_meta = store.with_legacy_names().marker_key();
    match store.key_layout(c).await? {
        KeyLayout::Tagged => {
            println!(
                "namespace {namespace} is already in the tagged key layout ({} exists); \
                 nothing to do",
                store.marker_key()
            );
            return Ok(());
        }
        KeyLayout::New => {
            println!(
                "namespace {namespace} has no store (neither {legacy_meta} nor {} exists): \
                 nothing to migrate; the first write creates it in the tagged key layout",
                store.marker_key()
            );
            return Ok(());
        }
        KeyLayout::Both => return Err(both_markers(store)),
        KeyLayout::Legacy => {}
    }
    let reports = store.legacy_proxy_reports(c).await?;
    let old: Vec<&str> = reports
        .iter()
        .filter(|r| !r.follows_tagged_layout)
        .map(|r| r.proxy_id.as_str())
        .collect();
    if !old.is_empty() {
        let who = format!(
            "{} proxy report(s) without the tagged-layout marker: {} (a release before the \
             tagged key layout)",
            old.len(),
            old.join(", ")
        );
        if !force {
            return Err(CtlError::Migrate(format!(
                "refusing to migrate namespace {namespace}: {who}. After the move such a proxy \
                 finds no store under the names it reads: it keeps its last known servers but \
                 follows no change. Upgrade those proxies first (a report expires a few seconds \
                 after its proxy stops), or pass --force. Nothing moved"
            )));
        }
        eprintln!(
            "warning: --force: {who}; they keep their last known servers and follow no change \
             until upgraded"
        );
    }
    match store.migrate_keys(c).await? {
        Migration::Moved { moved, tagged_meta } => {
            println!(
                "moved {moved} key(s) of namespace {namespace} to the tagged key layout \
                 ({tagged_meta}); the proxies of this release follow within a second"
            );
            Ok(())
        }
        Migration::AlreadyTagged { tagged_meta } => {
            println!(
                "namespace {namespace} is already in the tagged key layout ({tagged_meta} \
                 exists); nothing to do"
            );
            Ok(())
        }
        Migration::NoStore {
            legacy_meta,
            tagged_meta,
        } => {
            println!(
                "namespace {namespace} has no store any more (neither {legacy_meta} nor \
                 {tagged_meta} exists): nothing to migrate"
            );
            Ok(())
        }
        Migration::BothMarkers { .. } => Err(both_markers(store)),
    }
}

fn both_markers(store: &Store) -> CtlError {
    CtlError::Migrate(format!(
        "refusing to migrate namespace {}: both {} and {} exist. The tagged layout is in force \
         (this release reads it), and something wrote the legacy names after a migration: a \
         `ctl` or heartbeat of an older release, or a script by hand. Nothing moved. Upgrade \
         those writers, compare the two with `redis-cli --scan --pattern '{}:*'`, and delete \
         the legacy keys once nothing needs them",
        store.namespace(),
        store.with_legacy_names().marker_key(),
        store.marker_key(),
        store.namespace()
    ))
}
