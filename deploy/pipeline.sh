#!/usr/bin/env bash
# Deploy one app server behind canary-lb: the flow of deploy/jenkins/Jenkinsfile as a plain
# script any CI can call. The branch picks the pool: master -> production, canary -> canary;
# other branches deploy nothing (exit 0).
#
#   BRANCH=master OLD_ADDR=10.0.0.1:3000 NEW_ADDR=10.0.0.2:3000 \
#   CANARY_LB_REDIS_URL=redis://redis.internal:6379/0 deploy/pipeline.sh
#
# Environment:
#   BRANCH               required: master or canary
#   NEW_ADDR             required: host:port of the new app instance
#   OLD_ADDR             host:port it replaces; empty on a first deploy (NEW is only registered)
#   CANARY_LB_REDIS_URL  required: the control plane (read by canary-lb ctl itself)
#   CANARY_LB_NAMESPACE  key namespace of every ctl call (default canary-lb; it also wins over
#                        CANARY_LB_CONFIG_FILE's discovery.namespace)
#   ROLLOUT              canary branch: `auto` (default) ramps the canary step by step with
#                        `ctl rollout start` and gates on `ctl rollout status --wait` (the
#                        proxies judge each step and roll back on their own); `off` leaves the
#                        percent to CANARY_PERCENT
#   ROLLOUT_STEPS        canary_percent of each step, e.g. 5,10,25,50,100 (default: the
#                        `rollout:` section of CANARY_LB_CONFIG_FILE, else canary-lb's defaults)
#   ROLLOUT_INTERVAL     analysis window, e.g. 30s (same default)
#   ROLLOUT_TIMEOUT      stop waiting for the rollout after this long (default: no limit)
#   CANARY_LB_CONFIG_FILE  the proxies' config: its routing.salt is the salt the rollout freezes
#                        (needed unless the salt is in Redis, `ns:routing` field `salt`:
#                        without either `ctl rollout start` refuses, since any other salt would
#                        reshuffle users), and its `rollout:` section gives the defaults
#   CANARY_PERCENT       canary branch with ROLLOUT=off: share of users sent to canary
#                        afterwards (unset: unchanged)
#   REPLACE_TIMEOUT      limit of each wait of `ctl replace` (default 60s)
#   REPLACE_SETTLE       how long NEW must stay in rotation (default 5s; see `ctl replace --help`)
#   BUILD_CMD            build step, e.g. "cargo build --release" (default: skipped)
#   DEPLOY_CMD           starts the new instance at NEW_ADDR (default: a placeholder message)
#   STOP_OLD_CMD         stops the old instance once it is out of rotation (default: skipped)
#   CANARY_LB            the canary-lb binary (default: canary-lb on PATH)
#
# Exit codes (those of `canary-lb ctl replace`): 0 deployed; 1 error (safe to re-run);
# 2 NEW never served: OLD still serves, NEW was deregistered; 3 OLD still had requests in
# flight at the timeout (STOP_OLD_CMD is then not run; stop OLD later).
# The canary branch's rollout gate adds: 4 the canary was rolled back (or aborted): 0 % of
# users on it; 5 the rollout paused (too little traffic, or by hand): `ctl rollout resume`
# or `ctl rollout abort` it, then re-run `ctl rollout status --wait`.
set -euo pipefail

log() { echo "pipeline: $*"; }
step() { echo "pipeline: ==== $* ===="; }

branch="${BRANCH:?set BRANCH (master or canary)}"
case "$branch" in
  master) pool=production ;;
  canary) pool=canary ;;
  *)
    log "branch '$branch' deploys nowhere (master -> production, canary -> canary); nothing to do"
    exit 0
    ;;
esac
new="${NEW_ADDR:?set NEW_ADDR (host:port of the new instance)}"
old="${OLD_ADDR:-}"
: "${CANARY_LB_REDIS_URL:?set CANARY_LB_REDIS_URL (the Redis the proxies follow)}"
export CANARY_LB_REDIS_URL
# One namespace for every call, the rollout start that reads CANARY_LB_CONFIG_FILE included.
export CANARY_LB_NAMESPACE="${CANARY_LB_NAMESPACE:-canary-lb}"
ctl=("${CANARY_LB:-canary-lb}" ctl)

step "build ($branch)"
if [ -n "${BUILD_CMD:-}" ]; then bash -c "$BUILD_CMD"; else log "no BUILD_CMD; skipped"; fi

step "deploy $new"
if [ -n "${DEPLOY_CMD:-}" ]; then
  bash -c "$DEPLOY_CMD"
else
  log "no DEPLOY_CMD: start the new instance at $new here (placeholder)"
fi

if [ -n "$old" ]; then
  step "replace $old with $new in $pool"
  code=0
  "${ctl[@]}" replace --pool "$pool" "$old" "$new" \
    --timeout "${REPLACE_TIMEOUT:-60s}" --settle "${REPLACE_SETTLE:-5s}" --strict || code=$?
  case "$code" in
    0) ;;
    2) log "$new never served; $old still serves and was not touched. Stop $new and investigate."
       exit 2 ;;
    3) log "$old still had requests in flight; it is out of rotation. Stop it later, not now."
       exit 3 ;;
    *) log "ctl replace failed (exit $code); every step is idempotent, re-run to continue"
       exit "$code" ;;
  esac
  step "stop $old"
  if [ -n "${STOP_OLD_CMD:-}" ]; then bash -c "$STOP_OLD_CMD"; else log "no STOP_OLD_CMD; skipped"; fi
else
  step "register $new in $pool (first deploy: no OLD_ADDR)"
  "${ctl[@]}" register --pool "$pool" "$new"
fi

if [ "$pool" = canary ] && [ "${ROLLOUT:-auto}" = auto ]; then
  step "rollout: ramp the canary and gate on its verdicts"
  start=(rollout start)
  [ -n "${CANARY_LB_CONFIG_FILE:-}" ] && start=(--config "$CANARY_LB_CONFIG_FILE" "${start[@]}")
  [ -n "${ROLLOUT_STEPS:-}" ] && start+=(--steps "$ROLLOUT_STEPS")
  [ -n "${ROLLOUT_INTERVAL:-}" ] && start+=(--interval "$ROLLOUT_INTERVAL")
  "${ctl[@]}" "${start[@]}"
  wait_args=(rollout status --wait)
  [ -n "${ROLLOUT_TIMEOUT:-}" ] && wait_args+=(--timeout "$ROLLOUT_TIMEOUT")
  code=0
  "${ctl[@]}" "${wait_args[@]}" || code=$?
  case "$code" in
    0) log "rollout succeeded: the canary serves 100 %; promote it to production" ;;
    2) log "the canary was rolled back (or aborted): 0 % of users on it. See \`canary-lb ctl rollout history\`."
       exit 4 ;;
    3) log "the rollout paused: \`canary-lb ctl rollout resume\` or \`abort\` it, then wait again"
       exit 5 ;;
    *) log "ctl rollout status --wait failed (exit $code); the rollout goes on in the proxies: re-run the wait"
       exit 1 ;;
  esac
elif [ "$pool" = canary ] && [ -n "${CANARY_PERCENT:-}" ]; then
  step "canary percent $CANARY_PERCENT"
  "${ctl[@]}" canary set "$CANARY_PERCENT"
fi

step "status"
"${ctl[@]}" status
log "deployed $new to $pool"
