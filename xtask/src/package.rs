//! `cargo xtask package`: the Debian package (cargo-deb), with the man pages
//! and shell completions generated from sg-agent's own CLI; and its check
//! in `cargo xtask test`: it installs, systemd accepts the unit, and the man
//! pages say what `--help` says.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cargo, target_dir};

/// Builds the package; returns the .deb's path.
pub fn build() -> Result<PathBuf> {
    let status = cargo()
        .args([
            "build",
            "--release",
            "--package",
            "sg-agent",
            "--bin",
            "sg-agent",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building sg-agent failed ({status})");
    }
    let bin = target_dir().join("release/sg-agent");
    let out = target_dir().join("package");
    let _ = std::fs::remove_dir_all(&out);
    let man = out.join("man");
    run(Command::new(&bin).args(["man", "--dir"]).arg(&man))?;
    for page in std::fs::read_dir(&man)? {
        run(Command::new("gzip").args(["-9nf"]).arg(page?.path()))?;
    }
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for (shell, name) in [
        ("bash", "sg-agent.bash"),
        ("zsh", "_sg-agent"),
        ("fish", "sg-agent.fish"),
    ] {
        let text = Command::new(&bin)
            .args(["completions", shell])
            .output()
            .context("generating completions")?;
        if !text.status.success() {
            bail!("sg-agent completions {shell} failed");
        }
        std::fs::write(completions.join(name), text.stdout)?;
    }
    let deb_dir = target_dir().join("debian");
    let _ = std::fs::remove_dir_all(&deb_dir);
    let status = cargo()
        .args(["deb", "--package", "sg-agent", "--no-build", "--output"])
        .arg(&deb_dir)
        .status()
        .context("running cargo deb")?;
    if !status.success() {
        bail!("cargo deb failed ({status})");
    }
    let deb = std::fs::read_dir(&deb_dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("cargo deb wrote no .deb")?;
    eprintln!("package: {}", deb.display());
    Ok(deb)
}

/// Installs the package on this machine, checks it, and removes it again.
pub fn check(deb: &Path) -> Result<()> {
    run(Command::new("dpkg").arg("-i").arg(deb))?;
    let result = check_installed();
    let removed = run(Command::new("dpkg").args(["--purge", "sg-agent"]));
    result.and(removed)
}

fn check_installed() -> Result<()> {
    let unit = "/lib/systemd/system/sg-agent.service";
    let out = Command::new("systemd-analyze")
        .args(["verify", unit])
        .output()
        .context("running systemd-analyze")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // It may grumble about other units on the machine; not about ours.
    if !out.status.success() || text.lines().any(|l| l.contains("sg-agent.service")) {
        bail!("systemd-analyze verify {unit}:\n{text}");
    }
    for path in [
        "/usr/bin/sg-agent",
        "/etc/sg/sg.yaml",
        "/usr/share/man/man8/sg-agent.8.gz",
        "/usr/share/man/man8/sg-agent-run.8.gz",
        "/usr/share/bash-completion/completions/sg-agent",
    ] {
        if !Path::new(path).exists() {
            bail!("the package did not install {path}");
        }
    }
    // The shipped configuration is valid.
    run(Command::new("/usr/bin/sg-agent").args(["check"]))?;
    help_matches_man()
}

/// Every command in `sg-agent --help`, and every option of each command's
/// `--help`, is in the installed man pages.
fn help_matches_man() -> Result<()> {
    let help = output(Command::new("/usr/bin/sg-agent").arg("--help"))?;
    let commands: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect();
    if commands.len() < 10 {
        bail!("read only {commands:?} from sg-agent --help");
    }
    let man = |page: &str| -> Result<String> {
        let roff = output(Command::new("zcat").arg(format!("/usr/share/man/man8/{page}.8.gz")))?;
        // roff escapes hyphens.
        Ok(roff.replace("\\-", "-"))
    };
    let root = man("sg-agent")?;
    for c in &commands {
        if !root.contains(c.as_str()) {
            bail!("sg-agent(8) does not mention the command {c}");
        }
        let page = man(&format!("sg-agent-{c}"))?;
        let sub = output(Command::new("/usr/bin/sg-agent").args([c.as_str(), "--help"]))?;
        for flag in sub
            .split(|ch: char| ch.is_whitespace() || ch == ',' || ch == '[' || ch == ']')
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| w.split(['=', '<']).next().unwrap_or(w))
        {
            if flag != "--help" && !page.contains(flag) {
                bail!(
                    "sg-agent-{c}(8) does not document {flag}, which `sg-agent {c} --help` shows"
                );
            }
        }
    }
    eprintln!(
        "package: installed, the unit verified, {} commands' man pages match --help",
        commands.len()
    );
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
