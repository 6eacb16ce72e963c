//! A `redis-server` of our own for the rate-limit scenarios (127.0.0.1, a free port, no
//! persistence, pinned with the system under test), and just enough RESP to ask it `PING`
//! and `INFO` over a raw TCP connection: no Redis client crate for two commands.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::procs::{self, Proc};

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$n` followed by n bytes; `$-1` is `None`.
    Bulk(Option<String>),
}

/// Why a reply could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RespError {
    #[error("not a RESP reply we read (first byte {0:?})")]
    Unsupported(char),
    #[error("malformed RESP reply: {0}")]
    Malformed(String),
}

/// A command as a RESP array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply at the start of `buf`: `Ok(None)` if more bytes are needed, else the
/// reply and how many bytes it took.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, RespError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[1..eol])
        .map_err(|_| RespError::Malformed("header line is not UTF-8".into()))?;
    let after = eol + 2;
    let reply = match first {
        b'+' => Reply::Simple(line.into()),
        b'-' => Reply::Error(line.into()),
        b':' => Reply::Integer(
            line.parse()
                .map_err(|_| RespError::Malformed(format!("integer `{line}`")))?,
        ),
        b'$' => {
            let n: i64 = line
                .parse()
                .map_err(|_| RespError::Malformed(format!("bulk length `{line}`")))?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let n = n as usize;
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            if &buf[after + n..after + n + 2] != b"\r\n" {
                return Err(RespError::Malformed("bulk string not ended by CRLF".into()));
            }
            let text = String::from_utf8_lossy(&buf[after..after + n]).into_owned();
            return Ok(Some((Reply::Bulk(Some(text)), after + n + 2)));
        }
        other => return Err(RespError::Unsupported(other as char)),
    };
    Ok(Some((reply, after)))
}

/// Sends one command on a fresh connection and reads its reply (2 s at most).
pub fn command(addr: SocketAddr, args: &[&str]) -> anyhow::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .with_context(|| format!("connecting to redis at {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(&encode(args))?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some((reply, _)) = parse_reply(&buf)? {
            return Ok(reply);
        }
        if Instant::now() > deadline {
            bail!("redis at {addr}: no complete reply to {args:?} within 2 s");
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("redis at {addr} closed the connection");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A `name:value` integer field of an `INFO` text (`total_commands_processed:123`).
pub fn info_field(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// Calls of one command from `INFO commandstats` (`cmdstat_evalsha:calls=12,usec=...`); 0
/// when the command was never called (Redis lists only commands called).
pub fn command_calls(commandstats: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:");
    commandstats
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// What Redis had processed at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    pub at: Instant,
    /// `total_commands_processed` (our own `INFO` calls included: 2 per reading).
    pub commands: u64,
    /// `EVALSHA` and `EVAL` calls: sloguard's rate-limit script, one per decision.
    pub script_calls: u64,
}

/// Redis work between two readings.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq)]
pub struct Usage {
    /// Commands per second (our two `INFO` calls per reading subtracted).
    pub commands_per_s: f64,
    /// Script calls (`EVALSHA`/`EVAL`), in total and per second.
    pub script_calls: u64,
    pub script_calls_per_s: f64,
}

impl Counters {
    /// The work done from `self` to `later`.
    pub fn until(&self, later: &Counters) -> Usage {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let commands = later.commands.saturating_sub(self.commands + 2);
        let script_calls = later.script_calls.saturating_sub(self.script_calls);
        Usage {
            commands_per_s: (commands as f64 / secs).round(),
            script_calls,
            script_calls_per_s: (script_calls as f64 / secs).round(),
        }
    }
}

/// A `redis-server` we started: stopped on drop; [`RedisServer::kill`] and
/// [`RedisServer::restart`] (same port) take it away and bring it back.
pub struct RedisServer {
    bin: PathBuf,
    dir: PathBuf,
    cpu: Option<usize>,
    pub port: u16,
    proc: Option<Proc>,
    starts: u32,
}

impl RedisServer {
    /// Starts `bin` on a free port with its files (none: no persistence) and log in `dir`,
    /// pinned to `cpu`; retries on new ports if one was taken meanwhile.
    pub fn start(bin: &Path, dir: &Path, cpu: Option<usize>) -> anyhow::Result<RedisServer> {
        std::fs::create_dir_all(dir)?;
        let mut last = None;
        for _ in 0..3 {
            let mut r = RedisServer {
                bin: bin.to_path_buf(),
                dir: dir.to_path_buf(),
                cpu,
                port: procs::free_port()?,
                proc: None,
                starts: 0,
            };
            match r.spawn() {
                Ok(()) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no attempt")))
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir);
        let log = self.dir.join(format!("redis-{}.log", self.starts));
        let mut p = Proc::spawn("redis-server", cmd, self.cpu, &log, libc::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            p.check_alive()?;
            if self.ping() {
                self.proc = Some(p);
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server not answering PING after 10 s; its log:\n{}",
                    p.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether it answers `PING`.
    pub fn ping(&self) -> bool {
        matches!(command(self.addr(), &["PING"]), Ok(Reply::Simple(s)) if s == "PONG")
    }

    /// Stops it at once (SIGKILL): an outage, its data gone with it.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill_now();
        }
    }

    /// Starts it again on the same port (must be called from the main thread, like every
    /// start: the parent-death signal follows the thread that started the process).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Commands processed so far, from `INFO stats` and `INFO commandstats`.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        let text = |r: Reply| match r {
            Reply::Bulk(Some(t)) => Ok(t),
            other => Err(anyhow!("unexpected INFO reply {other:?}")),
        };
        let stats = text(command(self.addr(), &["INFO", "stats"])?)?;
        let at = Instant::now();
        let cmdstats = text(command(self.addr(), &["INFO", "commandstats"])?)?;
        Ok(Counters {
            at,
            commands: info_field(&stats, "total_commands_processed")
                .ok_or_else(|| anyhow!("no total_commands_processed in INFO stats"))?,
            script_calls: command_calls(&cmdstats, "evalsha") + command_calls(&cmdstats, "eval"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        assert_eq!(
            encode(&["INFO", "stats"]),
            b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n".to_vec()
        );
        assert_eq!(encode(&[]), b"*0\r\n".to_vec());
    }

    #[test]
    fn parses_replies_and_asks_for_more_when_cut() {
        assert_eq!(
            parse_reply(b"+PONG\r\n").unwrap(),
            Some((Reply::Simple("PONG".into()), 7))
        );
        assert_eq!(
            parse_reply(b"-ERR nope\r\nrest").unwrap(),
            Some((Reply::Error("ERR nope".into()), 11))
        );
        assert_eq!(
            parse_reply(b":-12\r\n").unwrap(),
            Some((Reply::Integer(-12), 6))
        );
        assert_eq!(
            parse_reply(b"$5\r\nhello\r\n").unwrap(),
            Some((Reply::Bulk(Some("hello".into())), 11))
        );
        assert_eq!(
            parse_reply(b"$-1\r\n").unwrap(),
            Some((Reply::Bulk(None), 5))
        );
        // A bulk string may hold CRLFs.
        assert_eq!(
            parse_reply(b"$4\r\na\r\nb\r\n").unwrap(),
            Some((Reply::Bulk(Some("a\r\nb".into())), 10))
        );
        for cut in [&b""[..], b"+PON", b"$5\r\nhel", b"$5\r\nhello\r", b"$5"] {
            assert_eq!(parse_reply(cut).unwrap(), None, "{cut:?}");
        }
        assert_eq!(parse_reply(b"*1\r\n"), Err(RespError::Unsupported('*')));
        assert!(parse_reply(b"$x\r\n").is_err());
        assert!(parse_reply(b"$2\r\nabcd").is_err());
    }

    const STATS: &str = "# Stats\r\ntotal_connections_received:5\r\n\
                         total_commands_processed:12345\r\ninstantaneous_ops_per_sec:7\r\n";
    const CMDSTATS: &str = "# Commandstats\r\n\
        cmdstat_info:calls=4,usec=120,usec_per_call=30.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_evalsha:calls=9000,usec=90000,usec_per_call=10.00,rejected_calls=0,failed_calls=2\r\n\
        cmdstat_eval:calls=1,usec=50,usec_per_call=50.00,rejected_calls=0,failed_calls=0\r\n";

    #[test]
    fn reads_info_fields_and_command_calls() {
        assert_eq!(info_field(STATS, "total_commands_processed"), Some(12345));
        assert_eq!(info_field(STATS, "total_connections_received"), Some(5));
        assert_eq!(info_field(STATS, "total_commands"), None);
        assert_eq!(command_calls(CMDSTATS, "evalsha"), 9000);
        assert_eq!(command_calls(CMDSTATS, "eval"), 1);
        assert_eq!(command_calls(CMDSTATS, "ping"), 0);
    }

    #[test]
    fn usage_is_per_second_without_our_info_calls() {
        let t = Instant::now();
        let a = Counters {
            at: t,
            commands: 100,
            script_calls: 50,
        };
        let b = Counters {
            at: t + Duration::from_secs(2),
            commands: 2102,
            script_calls: 2050,
        };
        let u = a.until(&b);
        assert_eq!(u.commands_per_s, 1000.0);
        assert_eq!((u.script_calls, u.script_calls_per_s), (2000, 1000.0));
    }
}
