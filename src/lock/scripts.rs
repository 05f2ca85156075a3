//! The commands the lock sends: `SET NX PX`, and Lua scripts for owner-only
//! release and extend, with the pipelined calls that carry them.
//!
//! Both scripts take any number of keys so that one script call per chunk of
//! keys serves single locks and batches alike; a batch release is then a
//! pipeline of a few script calls per master instead of hundreds.

use std::sync::LazyLock;

use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, Pipeline, RedisResult, Script};

use super::token::Token;

/// Appends `SET key token NX PX ttl_ms` to `pipe`: the one way a lock key is
/// created (single, coalesced and batched acquires all use it).
pub(crate) fn set_nx_px(pipe: &mut Pipeline, key: &str, token: &Token, ttl_ms: u64) {
    pipe.cmd("SET")
        .arg(key)
        .arg(&token.as_bytes()[..])
        .arg("NX")
        .arg("PX")
        .arg(ttl_ms);
}

/// Deletes each key whose value is our token. Returns how many were deleted.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then
    n = n + redis.call('DEL', k)
  end
end
return n",
    )
});

/// Deletes each key whose value is *its own* token (`ARGV[i]` for
/// `KEYS[i]`): the releases of different owners coalesced into one call.
/// Returns one 1/0 per key.
pub(crate) static RELEASE_EACH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[i] then
    out[i] = redis.call('DEL', k)
  else
    out[i] = 0
  end
end
return out",
    )
});

/// Re-arms the TTL of each key whose value is our token. Returns one 1/0 per key.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then
    out[i] = redis.call('PEXPIRE', k, ARGV[2])
  else
    out[i] = 0
  end
end
return out",
    )
});

/// Keys per script call: big enough to amortise the call, small enough not to
/// block the Redis event loop noticeably.
const CHUNK: usize = 256;

/// Runs `script` over `keys` in chunks, all in one pipeline. EVALSHA first; on
/// NOSCRIPT (a restarted master) the script is loaded and the pipeline sent
/// again, which is safe because both scripts are idempotent.
pub(crate) async fn eval_chunked<T: FromRedisValue>(
    conn: &mut MultiplexedConnection,
    script: &Script,
    keys: &[String],
    args: &[&[u8]],
) -> RedisResult<Vec<T>> {
    let build = || {
        let mut pipe = redis::pipe();
        for chunk in keys.chunks(CHUNK) {
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(chunk.len())
                .arg(chunk);
            for a in args {
                cmd.arg(*a);
            }
        }
        pipe
    };
    match build().query_async::<Vec<T>>(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            build().query_async(conn).await
        }
        other => other,
    }
}

/// Owner-only delete of each key with its own token (`tokens[i]` for
/// `keys[i]`); one 1/0 per key. NOSCRIPT (a restarted master) loads the
/// script and resends, which is safe because the script is idempotent.
pub(crate) async fn release_each(
    conn: &mut MultiplexedConnection,
    keys: &[&str],
    tokens: &[&[u8]],
) -> RedisResult<Vec<i64>> {
    let build = || {
        let mut pipe = redis::pipe();
        for (ks, ts) in keys.chunks(CHUNK).zip(tokens.chunks(CHUNK)) {
            pipe.cmd("EVALSHA")
                .arg(RELEASE_EACH.get_hash())
                .arg(ks.len())
                .arg(ks)
                .arg(ts);
        }
        pipe
    };
    let chunks: Vec<Vec<i64>> = match build().query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            RELEASE_EACH.load_async(conn).await?;
            build().query_async(conn).await?
        }
        other => other?,
    };
    Ok(chunks.into_iter().flatten().collect())
}
