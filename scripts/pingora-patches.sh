#!/usr/bin/env bash
# The vendored Pingora crate: vendor/pingora-core is the pristine pingora-core from crates.io
# with the patches of patches/pingora/ applied in order (Cargo.toml's [patch.crates-io] builds
# it instead of the registry copy). Nothing in vendor/ is edited by hand: change a patch, then
# re-run `apply`. An upgrade is a rebase: bump VERSION and SHA256, re-apply, fix what no longer
# applies. See patches/pingora/README.md.
#
#   scripts/pingora-patches.sh apply   rebuild vendor/pingora-core from the pristine crate
#   scripts/pingora-patches.sh check   rebuild into a temp dir and compare with vendor/
#                                      (non-zero, naming the difference, when they differ)
#   scripts/pingora-patches.sh test [FILTER...]
#                                      run the crate's own unit tests on a copy of vendor/
#                                      (dev-dependencies resolved afresh; target/pingora-core-tests)
#
# The .crate comes from cargo's download cache when it is there, else from crates.io with curl;
# either way its sha256 must be the one pinned below (Cargo.lock's checksum of the registry
# crate before it was patched).
set -euo pipefail
cd "$(dirname "$0")/.."

CRATE=pingora-core
VERSION=0.9.1
SHA256=a535f47f65fdcb003f9e1df04cd18e614c128dfe9388acce3f211ae38ac14d68
# cargo's own download location first; crates.io's download API (which redirects there) second.
URLS=(
  "https://static.crates.io/crates/$CRATE/$CRATE-$VERSION.crate"
  "https://crates.io/api/v1/crates/$CRATE/$VERSION/download"
)
VENDOR="vendor/$CRATE"
PATCHES=patches/pingora

die() {
  echo "pingora-patches: $*" >&2
  exit 1
}

# fetch FILE: the verified pristine .crate into FILE.
fetch() {
  local out=$1 cached
  for cached in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$CRATE-$VERSION.crate"; do
    if [ -f "$cached" ] && echo "$SHA256  $cached" | sha256sum --check --status; then
      cp "$cached" "$out"
      return
    fi
  done
  command -v curl >/dev/null || die "curl is needed to download $CRATE $VERSION"
  local url
  for url in "${URLS[@]}"; do
    if curl --fail --silent --show-error --location --retry 2 --max-time 120 \
      --user-agent "canary-lb scripts/pingora-patches.sh" -o "$out" "$url"; then
      echo "$SHA256  $out" | sha256sum --check --status \
        || die "$url: sha256 $(sha256sum "$out" | cut -d' ' -f1), expected $SHA256"
      return
    fi
  done
  die "could not download $CRATE $VERSION (${URLS[*]})"
}

# build DIR: DIR/$CRATE-$VERSION = pristine crate + every patch, in order.
build() {
  local dir=$1 patch
  fetch "$dir/$CRATE.crate"
  tar -xzf "$dir/$CRATE.crate" -C "$dir"
  [ -d "$dir/$CRATE-$VERSION" ] || die "$CRATE.crate did not unpack to $CRATE-$VERSION/"
  for patch in "$PATCHES"/[0-9][0-9][0-9][0-9]-*.patch; do
    [ -f "$patch" ] || continue
    # git apply skips the header paragraph and, unlike patch(1), never applies with fuzz.
    # The ceiling keeps it from taking a repository around $TMPDIR for the patch's root.
    GIT_CEILING_DIRECTORIES="$dir" git -C "$dir/$CRATE-$VERSION" apply -p1 "$PWD/$patch" \
      || die "$patch does not apply to pristine $CRATE $VERSION plus the patches before it"
  done
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

case "${1:-}" in
  apply)
    build "$tmp"
    rm -rf "$VENDOR"
    mkdir -p "$(dirname "$VENDOR")"
    mv "$tmp/$CRATE-$VERSION" "$VENDOR"
    echo "pingora-patches: $VENDOR = $CRATE $VERSION + $(ls "$PATCHES"/[0-9]*.patch 2>/dev/null | wc -l) patch(es)"
    ;;
  check)
    [ -d "$VENDOR" ] || die "$VENDOR is missing: run $0 apply"
    build "$tmp"
    if ! diff -r "$tmp/$CRATE-$VERSION" "$VENDOR" >"$tmp/diff"; then
      sed "s|$tmp/$CRATE-$VERSION|(pristine+patches)|g" "$tmp/diff" | head -40 >&2
      die "$VENDOR differs from $CRATE $VERSION + $PATCHES/*.patch (above); edit a patch and run $0 apply"
    fi
    echo "pingora-patches: $VENDOR matches $CRATE $VERSION + $(ls "$PATCHES"/[0-9]*.patch 2>/dev/null | wc -l) patch(es)"
    ;;
  test)
    shift
    [ -d "$VENDOR" ] || die "$VENDOR is missing: run $0 apply"
    # A copy, so that cargo's lock file and build output never touch vendor/ (which `check`
    # compares byte for byte). The published lock pins dev-dependencies that a registry mirror
    # may not carry: resolve afresh.
    target="${CARGO_TARGET_DIR:-$PWD/target}/pingora-core-tests"
    rm -rf "$target/crate"
    mkdir -p "$target"
    cp -r "$VENDOR" "$target/crate"
    rm -f "$target/crate/Cargo.lock"
    CARGO_TARGET_DIR="$target" cargo test --manifest-path "$target/crate/Cargo.toml" --lib -- "$@"
    ;;
  *)
    sed -n '2,18p' "$0" >&2
    exit 2
    ;;
esac
