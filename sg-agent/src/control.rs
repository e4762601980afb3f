//! The running agent's control socket, through which `sg-agent apply`,
//! `detach` and `check` reach it: a Unix socket in the abstract namespace,
//! which belongs to the network namespace (as the default pin directory
//! does), named after the pin directory. One JSON request per connection,
//! one JSON reply; only root (or the agent's own user) may ask.

use std::{
    io::{BufRead, BufReader, Write},
    os::linux::net::SocketAddrExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
    sync::{mpsc, oneshot},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Take the configuration file as it is now.
    Apply,
    /// Stop enforcing on an interface the file no longer lists.
    Detach { interface: String },
    /// Validate a file and say what it would change against what is in force.
    Check { path: PathBuf },
    /// Managed mode: make the state the file's (a declarative apply).
    ApplyFile { path: PathBuf },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
}

/// A request from a client, with where its reply goes.
pub type Call = (Request, oneshot::Sender<Reply>);

fn address(pin_dir: &Path) -> Result<std::os::unix::net::SocketAddr> {
    // Abstract names are at most 107 bytes: name long directories by hash.
    let dir = pin_dir.display().to_string();
    let name = if dir.len() <= 80 {
        format!("sg-agent:{dir}")
    } else {
        format!(
            "sg-agent:#{}",
            &crate::model::validate::sha256_hex(dir.as_bytes())[..32]
        )
    };
    Ok(std::os::unix::net::SocketAddr::from_abstract_name(
        name.as_bytes(),
    )?)
}

/// Serves the control socket of the agent owning `pin_dir`: every request
/// goes to the agent's loop through the returned channel.
pub fn serve(pin_dir: &Path) -> Result<mpsc::Receiver<Call>> {
    let std = std::os::unix::net::UnixListener::bind_addr(&address(pin_dir)?)
        .context("binding the control socket (is another sg-agent running here?)")?;
    std.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(std)?;
    let (tx, rx) = mpsc::channel::<Call>(8);
    let me = nix::unistd::geteuid().as_raw();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let allowed = w
                    .as_ref()
                    .peer_cred()
                    .is_ok_and(|c| c.uid() == 0 || c.uid() == me);
                let reply = if !allowed {
                    Reply {
                        ok: false,
                        message: "only root may control sg-agent".into(),
                    }
                } else {
                    let mut line = String::new();
                    let mut r = tokio::io::BufReader::new(r);
                    let read =
                        tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
                    match (read, serde_json::from_str::<Request>(&line)) {
                        (Ok(Ok(_)), Ok(req)) => {
                            let (rtx, rrx) = oneshot::channel();
                            if tx.send((req, rtx)).await.is_err() {
                                return;
                            }
                            match rrx.await {
                                Ok(r) => r,
                                Err(_) => return,
                            }
                        }
                        (_, Err(e)) => Reply {
                            ok: false,
                            message: format!("bad request: {e}"),
                        },
                        (Err(_), _) | (Ok(Err(_)), _) => return,
                    }
                };
                if let Ok(mut text) = serde_json::to_string(&reply) {
                    text.push('\n');
                    let _ = w.write_all(text.as_bytes()).await;
                }
            });
        }
    });
    Ok(rx)
}

/// Sends `req` to the agent owning `pin_dir`; `None` when no agent listens.
pub fn call(pin_dir: &Path, req: &Request) -> Result<Option<Reply>> {
    let stream = match std::os::unix::net::UnixStream::connect_addr(&address(pin_dir)?) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
        Err(e) => return Err(e).context("connecting to sg-agent's control socket"),
    };
    // A large configuration takes a while to validate and apply.
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut text = serde_json::to_string(req)?;
    text.push('\n');
    (&stream).write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .context("reading sg-agent's reply")?;
    if line.is_empty() {
        bail!("sg-agent closed the control socket without a reply");
    }
    Ok(Some(serde_json::from_str(&line)?))
}
