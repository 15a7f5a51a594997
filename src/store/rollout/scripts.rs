//! The Lua scripts: a window report counted once, the leader lease, the one fenced state write.

/// KEYS: window hash. ARGV: reporter field, ttl ms, then field, increment pairs.
/// Returns 1 when counted, 0 when this reporter had already reported this window.
pub(super) const REPORT_LUA: &str = r#"
if redis.call('HSETNX', KEYS[1], ARGV[1], 1) == 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 0
end
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HINCRBY', KEYS[1], 'reporters', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// KEYS: leader, epoch. ARGV: replica, ttl ms.
/// Returns the epoch while `replica` holds the lease (renewed), a new epoch when it just took
/// it, 0 when another replica holds it.
pub(super) const LEAD_LUA: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  local epoch = tonumber(redis.call('GET', KEYS[2]))
  if epoch then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return epoch
  end
  redis.call('DEL', KEYS[1])
  holder = false
end
if not holder then
  if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return redis.call('INCR', KEYS[2])
  end
end
return 0
"#;

/// KEYS: state, leader, epoch, routing, events, meta, history.
/// ARGV: 1 check lease (`1`/`0`), 2 replica, 3 epoch, 4 expected id (`""`: nothing usable
/// stored), 5 expected version, 6 next json, 7 next id, 8 phase, 9 weight, 10 step,
/// 11 version, 12 updated_ms, 13 entry json, 14 now ms, 15 history maxlen, 16 routing event,
/// 17 rollout event.
/// Returns 1 written, 0 fenced by the lease, -1 fenced by the stored state, -2 refused
/// because the store has no marker (lost or never written: see `mod.rs`).
pub(super) const APPLY_LUA: &str = concat!(
    bump_meta_lua!(),
    r#"
if redis.call('HEXISTS', KEYS[6], 'generation') == 0 then return -2 end
if ARGV[1] == '1' then
  if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
  if redis.call('GET', KEYS[3]) ~= ARGV[3] then return 0 end
end
if ARGV[4] == '' then
  local raw = redis.call('HGET', KEYS[1], 'json')
  if raw and pcall(cjson.decode, raw) then return -1 end
else
  if redis.call('HGET', KEYS[1], 'id') ~= ARGV[4] then return -1 end
  if redis.call('HGET', KEYS[1], 'version') ~= ARGV[5] then return -1 end
end
redis.call('HSET', KEYS[1], 'json', ARGV[6], 'id', ARGV[7], 'phase', ARGV[8],
  'weight', ARGV[9], 'step', ARGV[10], 'version', ARGV[11], 'updated_ms', ARGV[12])
redis.call('HSET', KEYS[4], 'canary_percent', ARGV[9])
bump_meta(KEYS[6], ARGV[14])
redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[15], '*', 'entry', ARGV[13])
redis.call('PUBLISH', KEYS[5], ARGV[16])
redis.call('PUBLISH', KEYS[5], ARGV[17])
return 1
"#
);
