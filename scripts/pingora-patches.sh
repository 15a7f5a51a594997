#!/usr/bin/env bash
# The vendored Pingora crates: vendor/<crate> is the pristine crate from crates.io with the
# patches of patches/pingora/ applied in order (Cargo.toml's [patch.crates-io] builds it instead
# of the registry copy). A patch applies to pingora-core unless its header has a line
# `Crate: <name>`. Nothing in vendor/ is edited by hand: change a patch, then re-run `apply`.
# An upgrade is a rebase: bump VERSION and the SHA256s, re-apply, fix what no longer applies.
# See patches/pingora/README.md.
#
#   scripts/pingora-patches.sh apply   rebuild vendor/<crate> from the pristine crates
#   scripts/pingora-patches.sh check   rebuild into a temp dir and compare with vendor/
#                                      (non-zero, naming the difference, when they differ)
#   scripts/pingora-patches.sh test [FILTER...]
#                                      run each vendored crate's own unit tests on a copy of
#                                      vendor/<crate> (dev-dependencies resolved afresh;
#                                      target/<crate>-tests); ONLY=<crate> runs one crate's
#
# The .crate comes from cargo's download cache when it is there, else from crates.io with curl;
# either way its sha256 must be the one pinned below (Cargo.lock's checksum of the registry
# crate before it was patched).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.9.1
# The vendored crates and the sha256 of each pristine .crate. Vendor only crates a patch changes.
declare -A SHA256=(
  [pingora-core]=a535f47f65fdcb003f9e1df04cd18e614c128dfe9388acce3f211ae38ac14d68
  [pingora-proxy]=8e3d5670490740405ecc8c6f75c3fcbce4d24f7adaffb355ca44550e7918e358
  [pingora-pool]=ecda093a10bad5e887d73286f052dd0fc78ad0d6c7654235e507ed0f85b64af1
  [pingora-http]=3f38e9e519d53fab09eb320f7be2cd27ef9e66f755eba3bd84cc68852108d841
  [pingora-timeout]=d58d029af71f7694815494c681f1bb93aa06d83b6fa6a6b42e7154ee0e8e43e4
)
CRATES=(pingora-core pingora-proxy pingora-pool pingora-http pingora-timeout)
PATCHES=patches/pingora

die() {
  echo "pingora-patches: $*" >&2
  exit 1
}

# crate_of PATCH: the crate a patch applies to (its `Crate:` header line, else pingora-core).
crate_of() {
  local c
  c=$(sed -n '/^diff /q; s/^Crate: *\([a-z0-9-]*\) *$/\1/p' "$1" | head -1)
  echo "${c:-pingora-core}"
}

# fetch CRATE FILE: the verified pristine .crate into FILE.
fetch() {
  local CRATE=$1 out=$2 cached
  local sha=${SHA256[$CRATE]}
  # cargo's own download location first; crates.io's download API (which redirects there) second.
  local URLS=(
    "https://static.crates.io/crates/$CRATE/$CRATE-$VERSION.crate"
    "https://crates.io/api/v1/crates/$CRATE/$VERSION/download"
  )
  for cached in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$CRATE-$VERSION.crate"; do
    if [ -f "$cached" ] && echo "$sha  $cached" | sha256sum --check --status; then
      cp "$cached" "$out"
      return
    fi
  done
  command -v curl >/dev/null || die "curl is needed to download $CRATE $VERSION"
  local url
  for url in "${URLS[@]}"; do
    if curl --fail --silent --show-error --location --retry 2 --max-time 120 \
      --user-agent "canary-lb scripts/pingora-patches.sh" -o "$out" "$url"; then
      echo "$sha  $out" | sha256sum --check --status \
        || die "$url: sha256 $(sha256sum "$out" | cut -d' ' -f1), expected $sha"
      return
    fi
  done
  die "could not download $CRATE $VERSION (${URLS[*]})"
}

# build DIR: DIR/<crate>-$VERSION = pristine crate + its patches, in order, for every crate.
build() {
  local dir=$1 patch CRATE
  for CRATE in "${CRATES[@]}"; do
    fetch "$CRATE" "$dir/$CRATE.crate"
    tar -xzf "$dir/$CRATE.crate" -C "$dir"
    [ -d "$dir/$CRATE-$VERSION" ] || die "$CRATE.crate did not unpack to $CRATE-$VERSION/"
  done
  for patch in "$PATCHES"/[0-9][0-9][0-9][0-9]-*.patch; do
    [ -f "$patch" ] || continue
    CRATE=$(crate_of "$patch")
    [ -n "${SHA256[$CRATE]:-}" ] || die "$patch: crate $CRATE is not in this script's CRATES"
    # git apply skips the header paragraph and, unlike patch(1), never applies with fuzz.
    # The ceiling keeps it from taking a repository around $TMPDIR for the patch's root.
    GIT_CEILING_DIRECTORIES="$dir" git -C "$dir/$CRATE-$VERSION" apply -p1 "$PWD/$patch" \
      || die "$patch does not apply to pristine $CRATE $VERSION plus the patches before it"
  done
}

# npatches CRATE: how many patches apply to CRATE.
npatches() {
  local p n=0
  for p in "$PATCHES"/[0-9][0-9][0-9][0-9]-*.patch; do
    [ -f "$p" ] && [ "$(crate_of "$p")" = "$1" ] && n=$((n + 1))
  done
  echo $n
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

case "${1:-}" in
  apply)
    build "$tmp"
    for CRATE in "${CRATES[@]}"; do
      VENDOR="vendor/$CRATE"
      rm -rf "$VENDOR"
      mkdir -p "$(dirname "$VENDOR")"
      mv "$tmp/$CRATE-$VERSION" "$VENDOR"
      echo "pingora-patches: $VENDOR = $CRATE $VERSION + $(npatches "$CRATE") patch(es)"
    done
    ;;
  check)
    build "$tmp"
    for CRATE in "${CRATES[@]}"; do
      VENDOR="vendor/$CRATE"
      [ -d "$VENDOR" ] || die "$VENDOR is missing: run $0 apply"
      if ! diff -r "$tmp/$CRATE-$VERSION" "$VENDOR" >"$tmp/diff"; then
        sed "s|$tmp/$CRATE-$VERSION|(pristine+patches)|g" "$tmp/diff" | head -40 >&2
        die "$VENDOR differs from $CRATE $VERSION + $PATCHES/*.patch (above); edit a patch and run $0 apply"
      fi
      echo "pingora-patches: $VENDOR matches $CRATE $VERSION + $(npatches "$CRATE") patch(es)"
    done
    for d in vendor/*/; do   # a crate dropped from CRATES must leave vendor/ too
      d=${d%/}; [ -n "${SHA256[${d#vendor/}]:-}" ] || die "$d is vendored but not in this script's CRATES"
    done
    ;;
  test)
    shift
    for CRATE in "${CRATES[@]}"; do
      [ -z "${ONLY:-}" ] || [ "$ONLY" = "$CRATE" ] || continue
      VENDOR="vendor/$CRATE"
      [ -d "$VENDOR" ] || die "$VENDOR is missing: run $0 apply"
      # A copy, so that cargo's lock file and build output never touch vendor/ (which `check`
      # compares byte for byte). The published lock pins dev-dependencies that a registry mirror
      # may not carry: resolve afresh.
      target="${CARGO_TARGET_DIR:-$PWD/target}/$CRATE-tests"
      rm -rf "$target/crate"
      mkdir -p "$target"
      cp -r "$VENDOR" "$target/crate"
      rm -f "$target/crate/Cargo.lock"
      for other in "${CRATES[@]}"; do   # the other vendored crates, as canary-lb builds them
        [ "$other" = "$CRATE" ] || printf '[patch.crates-io.%s]\npath = "%s"\n' \
          "$other" "$PWD/vendor/$other" >>"$target/crate/Cargo.toml"
      done
      CARGO_TARGET_DIR="$target" cargo test --manifest-path "$target/crate/Cargo.toml" --lib -- "$@"
    done
    ;;
  *)
    sed -n '2,19p' "$0" >&2
    exit 2
    ;;
esac
