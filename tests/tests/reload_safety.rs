//! No write to the configuration file opens a denied port, even for a
//! moment, except a complete file that says so: truncation, empty and cut
//! documents, `cp` over, two halves with a pause, editors, deletion, a
//! symlink to /dev/zero, a FIFO, `chmod 000`, a full disk — each while a
//! probe loop hits the denied port. Afterwards the agent still takes a
//! complete change.

use std::{
    fs::OpenOptions,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use sg_tests::*;

/// Lets the agent see and judge a write before the next one.
const PAUSE: Duration = Duration::from_millis(150);

/// tcp/8080 from the client's subnet; tcp/9000 only from 10.9.0.200, which
/// is not the client: cut to `10.9.0.200/3` (0.0.0.0/3) it would open 9000.
const BASE: &str = "security_groups:
  - name: app
    ingress:
      - ip_protocol: tcp
        from_port: 8080
        to_port: 8080
        ip_ranges:
          - 10.77.0.0/24
      - ip_protocol: tcp
        from_port: 9000
        to_port: 9000
        ip_ranges:
          - 10.9.0.200/32
network_interfaces:
  - interface: eth0
    groups: [app]
";

fn wide() -> String {
    BASE.replace("10.9.0.200/32", "10.77.0.0/24")
}

/// Whether `denied` opens to the client within 5 s (a change was taken).
fn opens(pair: &Pair, denied: std::net::SocketAddr) -> bool {
    wait_until(Duration::from_secs(5), || {
        tcp_probe(&pair.client, denied, Duration::from_secs(1)).unwrap() == Seen::Pass
    })
}

/// A tmpfs mounted over a directory for the test's life: its size is how
/// the test fills the disk.
struct Tmpfs(TempDir);

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = TempDir::new().unwrap();
        sh(std::process::Command::new("mount").args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            dir.0.to_str().unwrap(),
        ]))
        .unwrap();
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = sh(std::process::Command::new("umount").arg(&self.0.0));
    }
}

/// Publishes `text` the way complete files are: beside, then renamed over.
fn publish(path: &Path, text: &str) {
    let tmp = path.with_extension("publish");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    thread::sleep(PAUSE);
}

/// Truncates and writes `bytes` in place, as `>` and most writers do.
fn in_place(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
    drop(f);
    thread::sleep(PAUSE);
}

/// Where each line ends, and a few places inside values: the `/32` cut to
/// `/3`, a port cut short, a key cut in two.
fn cuts(text: &str) -> Vec<usize> {
    let mut at: Vec<usize> = text.match_indices('\n').map(|(i, _)| i + 1).collect();
    for cidr in ["10.9.0.200/32", "10.77.0.0/24"] {
        if let Some(i) = text.rfind(cidr) {
            // `/32` cut to `/3`, `/24` to `/2`.
            at.push(i + cidr.find('/').unwrap() + 2);
        }
    }
    at.push(text.find("9000").unwrap() + 2);
    at.push(text.find("network_interfaces").unwrap() + 7);
    at.push(text.find("groups: [app]").unwrap() + 9);
    at
}

/// Truncated, emptied, an empty document and `{}` renamed in.
fn empty_files(agent: &Agent, path: &Path) {
    in_place(path, b"");
    publish(path, "");
    publish(path, "{}\n");
    assert!(
        agent
            .log()
            .contains("kept enforcing with their last policy: eth0"),
        "{}",
        agent.log()
    );
    publish(path, BASE);
}

/// Cut at every line and inside values, written in place; and the cuts
/// inside a line renamed in.
fn cut_files(path: &Path) {
    for text in [BASE, wide().as_str()] {
        for cut in cuts(text) {
            in_place(path, &text.as_bytes()[..cut]);
            if !text[..cut].ends_with('\n') {
                publish(path, &text[..cut]);
            }
        }
    }
    publish(path, BASE);
}

/// `cp` of a complete, wider file over it; the same in two halves with a
/// pause; an editor that renames the original away and writes anew in place
/// (vim's default); then one that writes a swap file and renames it over (a
/// complete file: taken).
fn writers_and_editors(agent: &Agent, path: &Path, scratch: &Path) {
    let elsewhere = scratch.join("wide.yaml");
    std::fs::write(&elsewhere, wide()).unwrap();
    std::fs::copy(&elsewhere, path).unwrap();
    thread::sleep(PAUSE);
    assert!(
        agent
            .log()
            .contains("as it stands, it would widen: eth0: inbound tcp 9000 from 10.77.0.0/24"),
        "a refusal says what taking the file would widen: {}",
        agent.log()
    );
    {
        let w = wide();
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .unwrap();
        f.write_all(&w.as_bytes()[..w.len() / 2]).unwrap();
        thread::sleep(Duration::from_millis(400));
        f.write_all(&w.as_bytes()[w.len() / 2..]).unwrap();
    }
    thread::sleep(PAUSE);
    publish(path, BASE);
    std::fs::rename(path, path.with_extension("yaml~")).unwrap();
    in_place(path, wide().as_bytes());
    let applied = || agent.log().matches("configuration applied").count();
    let before = applied();
    let edited = BASE.replace(
        "network_interfaces:",
        "      - {ip_protocol: tcp, from_port: 7000, to_port: 7000, ip_ranges: [10.9.0.201/32]}\nnetwork_interfaces:",
    );
    publish(path, &edited);
    assert!(
        wait_until(Duration::from_secs(3), || applied() > before),
        "a renamed-in file is taken: {}",
        agent.log()
    );
}

/// Deleted; a symlink to /dev/zero; a FIFO; each also asked for by
/// `sg-agent apply`, which must answer at once (the loop never blocks); and
/// `chmod 000` after a write in place.
fn odd_files(ns: &Netns, path: &Path) {
    let apply = || ns.command(agent_bin()).arg("apply").output().unwrap();
    std::fs::remove_file(path).unwrap();
    thread::sleep(PAUSE);
    assert!(!apply().status.success());
    std::os::unix::fs::symlink("/dev/zero", path).unwrap();
    thread::sleep(PAUSE);
    let out = apply();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("character device"),
        "{out:?}"
    );
    std::fs::remove_file(path).unwrap();
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).unwrap();
    thread::sleep(PAUSE);
    let out = apply();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FIFO"),
        "{out:?}"
    );
    std::fs::remove_file(path).unwrap();
    publish(path, BASE);
    in_place(path, wide().as_bytes());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o000)).unwrap();
    thread::sleep(PAUSE);
    publish(path, BASE);
}

/// A full disk: a careless writer's new file, cut at the page the disk had
/// left, renamed in; then the same written in place, cut too.
fn full_disk(path: &Path, disk: &Path) {
    let filler = disk.join("filler");
    let free = nix::sys::statvfs::statvfs(disk).unwrap();
    let room = free.blocks_available() as usize * free.fragment_size() as usize;
    std::fs::write(&filler, vec![0u8; room - 4096]).unwrap();
    let big = format!(
        "{}{}",
        wide(),
        "# padding padding padding padding padding padding padding padding padding pad\n"
            .repeat(150)
    );
    for page in [4096, 8192] {
        assert_ne!(big.as_bytes()[page - 1], b'\n', "a cut falls inside a line");
    }
    let tmp = path.with_extension("new");
    assert!(
        std::fs::write(&tmp, big.as_bytes()).is_err(),
        "the disk is full"
    );
    std::fs::rename(&tmp, path).unwrap();
    thread::sleep(PAUSE);
    let torn = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap()
        .write_all(big.as_bytes());
    assert!(torn.is_err(), "the disk is full");
    thread::sleep(PAUSE);
    std::fs::remove_file(&filler).unwrap();
    publish(path, BASE);
}

#[test]
fn no_write_to_the_file_opens_a_denied_port() {
    if !kernel_available("no_write_to_the_file_opens_a_denied_port") {
        return;
    }
    let pair = Pair::new("tamper").unwrap();
    let denied = tcp_echo_server(&pair.server, addr(SERVER_V4, 9000)).unwrap();
    let allowed = tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    // The configuration's directory is a small tmpfs, to fill it at the end.
    let disk = Tmpfs::new("64k");
    let dir = TempDir(disk.0.0.join("etc"));
    std::fs::create_dir_all(&dir.0).unwrap();
    let agent = Agent::start_in(&pair.server, dir, BASE, &[]).unwrap();
    let path: PathBuf = agent.config.clone();
    let probes = ProbeLoop::start(&pair.client, denied).unwrap();
    empty_files(&agent, &path);
    cut_files(&path);
    writers_and_editors(&agent, &path, &disk.0.0);
    odd_files(&pair.server, &path);
    full_disk(&path, &disk.0.0);
    let (tries, passed) = probes.finish();
    assert_eq!(
        passed,
        0,
        "{passed} of {tries} connects to the denied port got through:\n{}",
        agent.log()
    );
    assert!(tries > 50, "only {tries} probes");
    assert_eq!(
        tcp_probe(&pair.client, allowed, Duration::from_secs(2)).unwrap(),
        Seen::Pass
    );
    for refusal in ["changed in place", "empty", "does not end with a newline"] {
        assert!(agent.log().contains(refusal), "{refusal}:\n{}", agent.log());
    }
    // A complete, valid change is still taken.
    publish(&path, &wide());
    assert!(opens(&pair, denied), "{}", agent.log());
    assert!(
        agent.log().contains("widens what passes"),
        "the widening is logged: {}",
        agent.log()
    );
}

#[test]
fn a_sealed_file_written_in_place_is_taken_once_whole() {
    if !kernel_available("a_sealed_file_written_in_place_is_taken_once_whole") {
        return;
    }
    let pair = Pair::new("seal").unwrap();
    let denied = tcp_echo_server(&pair.server, addr(SERVER_V4, 9000)).unwrap();
    let agent = Agent::start(&pair.server, BASE).unwrap();
    let path = agent.config.clone();
    // Sealed by the CLI (stdin to stdout), then written in place slowly.
    let mut child = std::process::Command::new(agent_bin())
        .args(["seal", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(wide().as_bytes())
        .unwrap();
    let sealed = child.wait_with_output().unwrap().stdout;
    assert!(String::from_utf8_lossy(&sealed).contains("# sg-sha256: "));
    let probes = ProbeLoop::start(&pair.client, denied).unwrap();
    {
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        // The seal's last digit (and the newline after it, which the seal
        // does not need) completes the file.
        let (body, last) = sealed.split_at(sealed.len() - 2);
        for chunk in body.chunks(40) {
            f.write_all(chunk).unwrap();
            thread::sleep(Duration::from_millis(30));
        }
        thread::sleep(PAUSE);
        // Stop probing before the file is whole.
        let (tries, passed) = probes.finish();
        assert_eq!(
            passed, 0,
            "{passed} of {tries} got through before the file was whole"
        );
        f.write_all(last).unwrap();
    }
    assert!(
        opens(&pair, denied),
        "the whole sealed file is taken: {}",
        agent.log()
    );
}
