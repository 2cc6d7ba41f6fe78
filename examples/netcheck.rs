//! netcheck: a tiny TCP probe that tells a client which source address the
//! server saw. The demo (`scripts/demo.sh`) and the end-to-end tests use it
//! to observe masquerading: a peer behind the node runs `serve`, the pod runs
//! `connect`, and the reply says whether the pod's own address or the node's
//! address arrived.
//!
//! ```text
//! netcheck serve ADDR:PORT [--once | --count N] [--timeout SECS]
//! netcheck connect ADDR:PORT [--timeout SECS]
//! ```
//!
//! `serve` prints `listening on ADDR:PORT` once bound (so a script can wait
//! for it), answers every connection with the peer's IP address and a
//! newline, logs `PEER_IP` per connection on stdout, and exits 0 after N
//! connections (with `--once`/`--count`), or when `--timeout` (default 60 s)
//! runs out: exit 0 without a count, 1 when fewer than N connections came.
//!
//! `connect` connects within `--timeout` (default 2 s), prints what the server
//! sent and exits 0; on a timeout it prints `timeout` and exits 1; on any other
//! error it prints `error: ...` and exits 1.
//!
//! Everything is bounded: no wait without a deadline, no unbounded read.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "usage:
  netcheck serve ADDR:PORT [--once | --count N] [--timeout SECS]
  netcheck connect ADDR:PORT [--timeout SECS]";

const DEFAULT_SERVE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The most a client reads: an address and a newline fit easily.
const MAX_REPLY: u64 = 256;
/// How long `serve` spends writing one reply before giving up on that client.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a waiting `serve` looks for a new connection.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, PartialEq)]
enum Command {
    Serve {
        addr: SocketAddr,
        count: Option<u64>,
        timeout: Duration,
    },
    Connect {
        addr: SocketAddr,
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(command) => command,
        Err(msg) => {
            eprintln!("netcheck: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Serve {
            addr,
            count,
            timeout,
        } => serve(addr, count, timeout),
        Command::Connect { addr, timeout } => connect(addr, timeout),
    }
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let (mode, rest) = args.split_first().ok_or("missing command")?;
    let (addr, options) = rest.split_first().ok_or("missing ADDR:PORT")?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?} (want ADDR:PORT or [V6]:PORT): {e}"))?;
    let mut count = None;
    let mut timeout = None;
    let mut options = options.iter();
    while let Some(option) = options.next() {
        let (name, inline) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (option.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| options.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match (mode.as_str(), name) {
            ("serve", "--once") if inline.is_none() => count = Some(1),
            ("serve", "--count") => {
                let n: u64 = value()?.parse().map_err(|e| format!("--count: {e}"))?;
                if n == 0 {
                    return Err("--count must be at least 1".into());
                }
                count = Some(n);
            }
            ("serve" | "connect", "--timeout") => {
                let secs: f64 = value()?.parse().map_err(|e| format!("--timeout: {e}"))?;
                if !(secs > 0.0 && secs <= 86_400.0) {
                    return Err("--timeout must be between 0 and 86400 seconds".into());
                }
                timeout = Some(Duration::from_secs_f64(secs));
            }
            _ => return Err(format!("unknown option {option:?} for {mode}")),
        }
    }
    match mode.as_str() {
        "serve" => Ok(Command::Serve {
            addr,
            count,
            timeout: timeout.unwrap_or(DEFAULT_SERVE_TIMEOUT),
        }),
        "connect" => Ok(Command::Connect {
            addr,
            timeout: timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        }),
        other => Err(format!("unknown command {other:?}")),
    }
}

/// Accepts connections until `count` is reached or `timeout` runs out,
/// answering each with the peer's address.
fn serve(addr: SocketAddr, count: Option<u64>, timeout: Duration) -> ExitCode {
    let listener = match TcpListener::bind(addr) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: bind {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Non-blocking accept polled against a deadline keeps the server bounded.
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let bound = listener.local_addr().unwrap_or(addr);
    println!("listening on {bound}");
    flush_stdout();

    let deadline = Instant::now() + timeout;
    let mut served: u64 = 0;
    while count.is_none_or(|n| served < n) {
        match listener.accept() {
            Ok((stream, peer)) => {
                served += 1;
                println!("{}", peer.ip());
                flush_stdout();
                if let Err(e) = reply(stream, peer) {
                    eprintln!("warning: reply to {peer}: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return match count {
                        None => ExitCode::SUCCESS,
                        Some(n) => {
                            eprintln!("timeout: {served} of {n} connections after {:?}", timeout);
                            ExitCode::FAILURE
                        }
                    };
                }
                thread::sleep(ACCEPT_POLL);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // A failed accept (for example a peer that reset before we
                // took it) ends only that attempt.
                eprintln!("warning: accept: {e}");
                thread::sleep(ACCEPT_POLL);
            }
        }
    }
    ExitCode::SUCCESS
}

fn reply(mut stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
    stream.write_all(format!("{}\n", peer.ip()).as_bytes())?;
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Write)
}

/// Connects within `timeout`, prints the server's reply and exits 0.
fn connect(addr: SocketAddr, timeout: Duration) -> ExitCode {
    let start = Instant::now();
    match fetch(addr, timeout, start) {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            println!("timeout");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("error: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fetch(addr: SocketAddr, timeout: Duration, start: Instant) -> io::Result<String> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    let remaining = timeout
        .checked_sub(start.elapsed())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?;
    stream.set_read_timeout(Some(remaining))?;
    let mut text = String::new();
    stream.take(MAX_REPLY).read_to_string(&mut text)?;
    if text.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "server closed without a reply",
        ));
    }
    Ok(text)
}

fn flush_stdout() {
    // Scripts wait for these lines; a closed stdout is not our problem.
    let _ = io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_serve_and_connect() {
        assert_eq!(
            parse_args(&args("serve 10.10.0.2:8080 --once")),
            Ok(Command::Serve {
                addr: "10.10.0.2:8080".parse().unwrap(),
                count: Some(1),
                timeout: DEFAULT_SERVE_TIMEOUT,
            })
        );
        assert_eq!(
            parse_args(&args("serve [::1]:80 --count=3 --timeout 5")),
            Ok(Command::Serve {
                addr: "[::1]:80".parse().unwrap(),
                count: Some(3),
                timeout: Duration::from_secs(5),
            })
        );
        assert_eq!(
            parse_args(&args("connect 127.0.0.1:1 --timeout 0.5")),
            Ok(Command::Connect {
                addr: "127.0.0.1:1".parse().unwrap(),
                timeout: Duration::from_millis(500),
            })
        );
    }

    #[test]
    fn rejects_bad_arguments() {
        for bad in [
            "",
            "serve",
            "serve 10.0.0.1",
            "serve 10.0.0.1:80 --count 0",
            "serve 10.0.0.1:80 --count",
            "connect 10.0.0.1:80 --once",
            "connect 10.0.0.1:80 --timeout -1",
            "listen 10.0.0.1:80",
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn loopback_round_trip_reports_the_source_address() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (stream, peer) = listener.accept().unwrap();
            reply(stream, peer).unwrap();
        });
        let text = fetch(addr, Duration::from_secs(2), Instant::now()).unwrap();
        assert_eq!(text, "127.0.0.1\n");
        server.join().unwrap();
    }
}
