//! A minimal Redis client (RESP2 over TCP): enough to run one Lua script
//! atomically, which is all the shared quota store needs.
//!
//! A few connections are kept and used round-robin; a connection that fails
//! is dropped and reopened on next use. Only `redis://host:port[/db]` URLs
//! without TLS or password are supported (a Redis on the cluster network,
//! reachable only by the gateways).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// A Redis reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nabc` (None for the null bulk string)
    Bulk(Option<Vec<u8>>),
    /// `*2 ...` (None for the null array)
    Array(Option<Vec<Reply>>),
}

/// Failures talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The URL is not `redis://host:port[/db]`.
    #[error("invalid Redis URL (expected redis://host:port[/db])")]
    Url,
    /// Network failure.
    #[error("Redis connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// Redis answered with an error.
    #[error("Redis error: {0}")]
    Server(String),
    /// The reply could not be parsed or had the wrong shape.
    #[error("unexpected Redis reply")]
    Protocol,
    /// No answer in time.
    #[error("Redis timed out")]
    Timeout,
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

/// A small pool of Redis connections.
pub struct RedisClient {
    addr: String,
    db: u32,
    conns: Vec<Mutex<Option<Conn>>>,
    next: AtomicUsize,
    timeout: Duration,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClient")
            .field("addr", &self.addr)
            .finish()
    }
}

impl RedisClient {
    /// A client for `url` (connections open lazily).
    pub fn new(url: &str, pool: usize) -> Result<Self, RedisError> {
        let rest = url.strip_prefix("redis://").ok_or(RedisError::Url)?;
        let (addr, db) = match rest.split_once('/') {
            Some((a, "")) => (a, 0),
            Some((a, d)) => (a, d.parse().map_err(|_| RedisError::Url)?),
            None => (rest, 0),
        };
        if addr.is_empty() || addr.contains('@') {
            return Err(RedisError::Url);
        }
        let addr = if addr.contains(':') {
            addr.to_string()
        } else {
            format!("{addr}:6379")
        };
        Ok(RedisClient {
            addr,
            db,
            conns: (0..pool.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            timeout: Duration::from_millis(500),
        })
    }

    /// Runs one command (its arguments as binary-safe strings).
    pub async fn command(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let mut slot = self.conns[i].lock().await;
        let result = tokio::time::timeout(self.timeout, async {
            if slot.is_none() {
                *slot = Some(self.connect().await?);
            }
            let conn = slot.as_mut().ok_or(RedisError::Protocol)?;
            roundtrip(conn, args).await
        })
        .await
        .unwrap_or(Err(RedisError::Timeout));
        match result {
            Ok(Reply::Error(e)) => Err(RedisError::Server(e)),
            Ok(r) => Ok(r),
            Err(e) => {
                // The connection's state is unknown: start afresh next time.
                *slot = None;
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<Conn, RedisError> {
        let stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            buf: BytesMut::with_capacity(4096),
        };
        if self.db != 0 {
            let db = self.db.to_string();
            if let Reply::Error(e) = roundtrip(&mut conn, &[b"SELECT", db.as_bytes()]).await? {
                return Err(RedisError::Server(e));
            }
        }
        Ok(conn)
    }
}

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn roundtrip(conn: &mut Conn, args: &[&[u8]]) -> Result<Reply, RedisError> {
    conn.stream.write_all(&encode(args)).await?;
    loop {
        if let Some((reply, used)) = parse(&conn.buf)? {
            conn.buf.advance(used);
            return Ok(reply);
        }
        if conn.stream.read_buf(&mut conn.buf).await? == 0 {
            return Err(RedisError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// Parses one reply from the start of `buf`: `None` if incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, RedisError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[1..end]).map_err(|_| RedisError::Protocol)?;
    let after = end + 2;
    let int = || line.parse::<i64>().map_err(|_| RedisError::Protocol);
    match buf.first() {
        Some(b'+') => Ok(Some((Reply::Simple(line.to_string()), after))),
        Some(b'-') => Ok(Some((Reply::Error(line.to_string()), after))),
        Some(b':') => Ok(Some((Reply::Integer(int()?), after))),
        Some(b'$') => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let n = n as usize;
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            Ok(Some((
                Reply::Bulk(Some(buf[after..after + n].to_vec())),
                after + n + 2,
            )))
        }
        Some(b'*') => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), after)));
            }
            let mut items = Vec::with_capacity(n as usize);
            let mut pos = after;
            for _ in 0..n {
                match parse(&buf[pos..])? {
                    Some((r, used)) => {
                        items.push(r);
                        pos += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), pos)))
        }
        _ => Err(RedisError::Protocol),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies() {
        assert_eq!(
            parse(b"*3\r\n:1\r\n$2\r\nab\r\n+OK\r\n").unwrap(),
            Some((
                Reply::Array(Some(vec![
                    Reply::Integer(1),
                    Reply::Bulk(Some(b"ab".to_vec())),
                    Reply::Simple("OK".into())
                ])),
                21
            ))
        );
        assert_eq!(parse(b"*2\r\n:1\r\n").unwrap(), None);
        assert_eq!(parse(b"$5\r\nab").unwrap(), None);
        assert_eq!(
            parse(b"-NOSCRIPT x\r\n").unwrap(),
            Some((Reply::Error("NOSCRIPT x".into()), 13))
        );
    }

    #[test]
    fn urls() {
        assert!(RedisClient::new("redis://127.0.0.1:6380/2", 1).is_ok());
        assert!(RedisClient::new("http://x", 1).is_err());
        assert!(RedisClient::new("redis://user:pw@x:1", 1).is_err());
    }
}
