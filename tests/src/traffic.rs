//! Traffic: servers, probes, a ping flood, a TCP stream, a probe loop.

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsFd,
    sync::{Arc, atomic::Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

use crate::*;

/// A ping every 2 ms, `count` of them: `(sent, received)`.
pub fn ping_flood(ns: &Netns, dst: &str, count: u32, seconds: u32) -> (u32, u32) {
    let out = ns
        .command("ping")
        .args([
            "-i",
            "0.002",
            "-q",
            "-c",
            &count.to_string(),
            "-w",
            &seconds.to_string(),
            dst,
        ])
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("transmitted"))
        .unwrap_or_default();
    let num = |word: &str| -> u32 {
        line.split(',')
            .find(|p| p.contains(word))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (num("transmitted"), num("received"))
}

/// A TCP stream from `ns` to an echo server at `dst`, running until stopped:
/// it writes and reads back continuously and counts the bytes echoed.
pub struct Stream {
    stop: Arc<std::sync::atomic::AtomicBool>,
    echoed: Arc<std::sync::atomic::AtomicU64>,
    thread: Option<thread::JoinHandle<std::io::Result<()>>>,
}

impl Stream {
    pub fn start(ns: &Netns, dst: SocketAddr) -> Result<Stream> {
        let s = ns.run(move || TcpStream::connect_timeout(&dst, Duration::from_secs(2)))??;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let echoed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (st, ec) = (stop.clone(), echoed.clone());
        let thread = thread::spawn(move || -> std::io::Result<()> {
            let mut s = s;
            let chunk = [0x42u8; 16384];
            let mut back = [0u8; 16384];
            while !st.load(Ordering::Relaxed) {
                s.write_all(&chunk)?;
                s.read_exact(&mut back)?;
                ec.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            Ok(())
        });
        Ok(Stream {
            stop,
            echoed,
            thread: Some(thread),
        })
    }

    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }

    /// Stops the stream; an error means it broke (a reset, or 5 s of silence).
    pub fn finish(mut self) -> std::io::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("stream thread")?;
        Ok(self.echoed())
    }
}

/// Connects from `ns` to `dst` over and over (each attempt gives up after
/// 100 ms) until finished: the probe loop on a denied port that must never
/// get through while the configuration is tampered with.
pub struct ProbeLoop {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<(u32, u32)>>,
}

impl ProbeLoop {
    pub fn start(ns: &Netns, dst: SocketAddr) -> Result<ProbeLoop> {
        let file = File::open(ns.path()).with_context(|| format!("opening {}", ns.name))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let thread = thread::spawn(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
            let (mut tries, mut passed) = (0, 0);
            while !st.load(Ordering::Relaxed) {
                tries += 1;
                if TcpStream::connect_timeout(&dst, Duration::from_millis(100)).is_ok() {
                    passed += 1;
                }
            }
            (tries, passed)
        });
        Ok(ProbeLoop {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the loop: `(attempts, connections that got through)`.
    pub fn finish(mut self) -> (u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("probe thread")
    }
}

/// What a probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The exchange completed (connected and echoed, or answered).
    Pass,
    /// Nothing came back: the packets were dropped.
    Dropped,
    /// A TCP connect was refused (an RST came back): nobody listens, or the
    /// filter let the SYN through.
    Refused,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Seen::Pass => "allow",
            Seen::Dropped => "deny",
            Seen::Refused => "refused",
        })
    }
}

/// A TCP echo server in `ns`, serving until the process ends or the listener
/// is dropped with the returned handle's thread.
pub fn tcp_echo_server(ns: &Netns, addr: SocketAddr) -> Result<SocketAddr> {
    let listener = ns.run(move || TcpListener::bind(addr))??;
    let local = listener.local_addr()?;
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(local)
}

/// A UDP echo server in `ns`.
pub fn udp_echo_server(ns: &Netns, addr: SocketAddr) -> Result<SocketAddr> {
    let sock = ns.run(move || UdpSocket::bind(addr))??;
    let local = sock.local_addr()?;
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    Ok(local)
}

/// Connects from `ns` to `dst`, sends a message and expects it echoed.
pub fn tcp_probe(ns: &Netns, dst: SocketAddr, timeout: Duration) -> Result<Seen> {
    ns.run(move || -> Result<Seen> {
        let mut s = match TcpStream::connect_timeout(&dst, timeout) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Ok(Seen::Dropped),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Ok(Seen::Refused);
            }
            Err(e) => return Err(e.into()),
        };
        s.set_read_timeout(Some(timeout))?;
        let msg = b"sg probe";
        s.write_all(msg)?;
        let mut buf = [0u8; 8];
        match s.read_exact(&mut buf) {
            Ok(()) if &buf == msg => Ok(Seen::Pass),
            Ok(()) => bail!("echo from {dst} garbled"),
            Err(_) => Ok(Seen::Dropped),
        }
    })?
}

/// Sends a datagram from `ns` to `dst` and waits for its echo (three tries).
pub fn udp_probe(ns: &Netns, dst: SocketAddr, timeout: Duration) -> Result<Seen> {
    ns.run(move || -> Result<Seen> {
        let bind: SocketAddr = if dst.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let s = UdpSocket::bind(bind)?;
        s.set_read_timeout(Some(timeout / 3))?;
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            s.send_to(b"sg probe", dst)?;
            if let Ok((n, from)) = s.recv_from(&mut buf)
                && from == dst
                && &buf[..n] == b"sg probe"
            {
                return Ok(Seen::Pass);
            }
        }
        Ok(Seen::Dropped)
    })?
}

/// A socket address from an address of either family and a port.
pub fn addr(ip: &str, port: u16) -> SocketAddr {
    let ip: std::net::IpAddr = ip.parse().expect("an IP address");
    SocketAddr::new(ip, port)
}

/// Waits until `f` holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    f()
}
