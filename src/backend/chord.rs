//! Chord bookkeeping on the Redis backend, with Celery 5.7's scripts (PROTOCOL.md §11, §22).
//!
//! Each finished header task adds `[1, tid, state, result]` to the sorted set
//! `celery-taskset-meta-<gid>.j` (score = its `group_index`), deduplicated by `.d` so a
//! redelivered header task counts once. The call that sees the set complete (`.s` + `.t`)
//! takes the `.c` claim; only the claimer joins and publishes the body, then clears `.j .t .s
//! .d` and marks `.c` "done". The keys keep the 5.5 meaning, so mixed fleets finish chords too.

use redis::Script;
use serde_json::{Value, json};

use super::{BackendError, ExceptionInfo, ResultBackend, State};

pub const GROUP_KEY_PREFIX: &str = "celery-taskset-meta-";

/// Celery 5.7's `CHORD_PART_RETURN_LUA` (same keys, arguments and reply).
const PART_RETURN: &str = r"
local jkey, tkey, skey, dkey, gkey, ckey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local tid, value, ordered, score = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local expires, group_expires = tonumber(ARGV[5]), tonumber(ARGV[6])
local claim_expires = tonumber(ARGV[7])
local claim_token = ARGV[8]
if redis.call('GET', ckey) == 'done' then
    return {-1, 0, 0, 0}
end
local member = tid .. ':' .. score
if redis.call('SISMEMBER', dkey, member) == 0 then
    if ordered == '1' then
        redis.call('ZADD', jkey, score, value)
    else
        redis.call('RPUSH', jkey, value)
    end
    redis.call('SADD', dkey, member)
end
local readycount
if ordered == '1' then
    readycount = redis.call('ZCOUNT', jkey, '-inf', '+inf')
else
    readycount = redis.call('LLEN', jkey)
end
if expires > 0 then
    for _, key in ipairs({jkey, tkey, skey, dkey}) do
        redis.call('EXPIRE', key, expires)
    end
    if group_expires > 0 then
        redis.call('EXPIRE', gkey, group_expires)
    end
end
local totaldiff = redis.call('GET', tkey)
local size = redis.call('GET', skey)
local claimed = 0
if size and readycount == tonumber(size) + tonumber(totaldiff or 0) then
    if redis.call('SET', ckey, claim_token, 'NX', 'EX', claim_expires) then
        claimed = 1
    end
end
return {readycount, totaldiff, size, claimed}
";

/// Celery 5.7's `CHORD_CLEANUP_LUA`.
const CLEANUP: &str = r"
local ckey, jkey, tkey, skey, dkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token, done_expires = ARGV[1], tonumber(ARGV[2])
if redis.call('GET', ckey) == token then
    redis.call('DEL', jkey, tkey, skey, dkey)
    if done_expires and done_expires > 0 then
        redis.call('SET', ckey, 'done', 'EX', done_expires)
    end
    return 1
end
return 0
";

/// Celery's claim lifetime for the default `result_chord_join_timeout` (5 s → 10 s).
const CLAIM_EXPIRES_S: u64 = 10;
/// How long the "done" marker keeps late duplicates out.
const DONE_EXPIRES_S: u64 = 300;

fn key(gid: &str, suffix: &str) -> String {
    format!("{GROUP_KEY_PREFIX}{gid}{suffix}")
}

/// What one header task's return decided.
#[derive(Debug, Clone, PartialEq)]
pub enum ChordProgress {
    /// Other parts are still missing (or another worker completes the chord).
    Pending,
    /// This call completed the chord: publish the body with these ordered results, then call
    /// [`ResultBackend::chord_cleanup`] with the token.
    Complete { results: Vec<Value>, token: String },
    /// This call completed the chord, but a part failed: the body must fail with this error.
    Failed(ExceptionInfo),
}

impl ResultBackend {
    /// Records one header task's final state and tells whether the chord is now complete.
    pub async fn chord_part_return(
        &self,
        gid: &str,
        tid: &str,
        group_index: Option<i64>,
        state: &State,
        result: &Value,
    ) -> Result<ChordProgress, BackendError> {
        let member = json!([1, tid, state.as_str(), result]).to_string();
        let score = group_index.map_or_else(|| "+inf".to_string(), |i| i.to_string());
        let expires = self.expires.map_or(0, |d| d.as_secs().max(1));
        let token = uuid::Uuid::new_v4().simple().to_string();
        let script = Script::new(PART_RETURN);
        let reply: Vec<redis::Value> = self
            .conn
            .retrying("chord part return", |mut c| {
                let mut inv = script.prepare_invoke();
                for suffix in [".j", ".t", ".s", ".d", "", ".c"] {
                    inv.key(key(gid, suffix));
                }
                inv.arg(tid)
                    .arg(&member)
                    .arg("1")
                    .arg(&score)
                    .arg(expires)
                    .arg(expires)
                    .arg(CLAIM_EXPIRES_S)
                    .arg(&token);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        let int = |i: usize| -> Option<i64> {
            match reply.get(i)? {
                redis::Value::Int(n) => Some(*n),
                redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
                _ => None,
            }
        };
        let (ready, diff, size, claimed) = (int(0), int(1), int(2), int(3));
        if ready == Some(-1) || claimed != Some(1) {
            return Ok(ChordProgress::Pending);
        }
        let (Some(ready), Some(size)) = (ready, size) else {
            return Ok(ChordProgress::Pending);
        };
        if ready != size + diff.unwrap_or(0) {
            return Ok(ChordProgress::Pending);
        }
        let parts: Vec<String> = self
            .conn
            .retrying("chord join", |mut c| {
                let k = key(gid, ".j");
                async move {
                    redis::cmd("ZRANGE")
                        .arg(k)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        let mut results = Vec::with_capacity(parts.len());
        for raw in parts {
            let part: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
            let (tid, state, value) = (&part[1], part[2].as_str().unwrap_or(""), &part[3]);
            if matches!(state, "FAILURE" | "REVOKED") {
                let exc = exception_repr(value);
                let tid = tid.as_str().unwrap_or("?");
                return Ok(ChordProgress::Failed(ExceptionInfo::new(
                    "ChordError",
                    "celery.exceptions",
                    format!("Dependency {tid} raised {exc}"),
                )));
            }
            results.push(value.clone());
        }
        Ok(ChordProgress::Complete { results, token })
    }

    /// Clears a completed chord's keys (when this worker still holds the claim) and marks it
    /// done, so a late duplicate of a header task cannot fire the body again.
    pub async fn chord_cleanup(&self, gid: &str, token: &str) -> Result<bool, BackendError> {
        let script = Script::new(CLEANUP);
        let cleaned: i64 = self
            .conn
            .retrying("chord cleanup", |mut c| {
                let mut inv = script.prepare_invoke();
                for suffix in [".c", ".j", ".t", ".s", ".d"] {
                    inv.key(key(gid, suffix));
                }
                inv.arg(token).arg(DONE_EXPIRES_S);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(cleaned == 1)
    }

    /// After a failed chord: drop its size so a late copy of a header task does not fail it
    /// again (the parts stay until they expire, as in Celery).
    pub async fn chord_forget_size(&self, gid: &str) -> Result<(), BackendError> {
        self.conn
            .retrying("chord size", |mut c| {
                let k = key(gid, ".s");
                async move { redis::cmd("DEL").arg(k).query_async::<()>(&mut c).await }
            })
            .await?;
        Ok(())
    }

    /// A chord this worker starts (a chord inside a chain): a fresh run, then its size.
    pub async fn set_chord_size(&self, gid: &str, size: usize) -> Result<(), BackendError> {
        let ttl = self.expires.map(|d| d.as_secs().max(1));
        self.conn
            .retrying("chord size", |mut c| {
                let mut pipe = redis::pipe();
                pipe.del(key(gid, ".c")).ignore();
                match ttl {
                    Some(t) => pipe.set_ex(key(gid, ".s"), size, t).ignore(),
                    None => pipe.set(key(gid, ".s"), size).ignore(),
                };
                async move { pipe.query_async::<()>(&mut c).await }
            })
            .await?;
        Ok(())
    }
}

/// `repr()` of a stored exception dict (`ValueError('inchord')`), or of a plain value.
fn exception_repr(value: &Value) -> String {
    let exc = value.as_object().and_then(|o| {
        Some(ExceptionInfo {
            exc_type: o.get("exc_type")?.as_str()?.to_string(),
            exc_module: o
                .get("exc_module")?
                .as_str()
                .unwrap_or("builtins")
                .to_string(),
            exc_message: match o.get("exc_message")? {
                Value::Array(a) => a.clone(),
                other => vec![other.clone()],
            },
        })
    });
    exc.map_or_else(|| crate::protocol::pyrepr::repr(value), |e| e.repr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_part_repr_matches_celery() {
        let golden: Value = serde_json::from_str(include_str!(
            "../../tests/golden/chord_join_member_failure.json"
        ))
        .unwrap();
        assert_eq!(exception_repr(&golden[3]), "ValueError('inchord')");
        let want: Value = serde_json::from_str(include_str!(
            "../../tests/golden/result_failure_chord_error.json"
        ))
        .unwrap();
        let text = format!(
            "Dependency {} raised {}",
            golden[1].as_str().unwrap(),
            exception_repr(&golden[3])
        );
        assert_eq!(json!([text]), want["result"]["exc_message"]);
    }
}
