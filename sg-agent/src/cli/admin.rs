//! The commands that talk to a running agent (`apply`, `detach`, `check`),
//! seal a file, or remove pins (`cleanup`): none of them may change state an
//! agent owns behind its back.

use std::{
    io::{Read, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::{
    control::{self, Request},
    datapath::Maps,
    pins::{self, PinLock},
    reload, source,
};

fn no_agent(pin_dir: &Path) -> String {
    format!(
        "no sg-agent runs with pin directory {} (in this network namespace)",
        pin_dir.display()
    )
}

pub fn check(path: &Path, pin_dir: &Path) -> Result<()> {
    let d = source::file::load(path, None)?;
    for w in &d.warnings {
        println!("warning: {w}");
    }
    let rules: usize = d
        .groups
        .iter()
        .map(|g| g.ingress.len() + g.egress.len())
        .sum();
    println!(
        "{}: valid: {} VPC(s), {} security group(s) with {rules} rule(s), {} prefix list(s), {} network interface(s)",
        path.display(),
        d.vpcs.len(),
        d.groups.len(),
        d.prefix_lists.len(),
        d.interfaces.len()
    );
    for i in d.interfaces.iter() {
        let names: Vec<&str> = i
            .groups
            .iter()
            .filter_map(|g| d.group(g))
            .map(|g| g.name.as_str())
            .collect();
        let how = if i.detached { " [detached]" } else { "" };
        println!(
            "  {} ({}, {}): {}{how}",
            i.name,
            i.id,
            i.vpc,
            names.join(", ")
        );
    }
    let abs = std::path::absolute(path).context("resolving the configuration's path")?;
    match control::call(pin_dir, &Request::Check { path: abs })? {
        Some(r) => println!("{}", r.message),
        None => println!("{}: nothing to compare with", no_agent(pin_dir)),
    }
    Ok(())
}

pub fn apply(pin_dir: &Path, file: Option<std::path::PathBuf>) -> Result<()> {
    let req = match file {
        // The agent reads the file itself: an absolute path means the same
        // file to both.
        Some(f) => Request::ApplyFile {
            path: std::path::absolute(&f)?,
        },
        None => Request::Apply,
    };
    let r = control::call(pin_dir, &req)?.with_context(|| no_agent(pin_dir))?;
    if !r.ok {
        bail!("{}", r.message);
    }
    println!("{}", r.message);
    Ok(())
}

pub fn detach(pin_dir: &Path, interface: &str) -> Result<()> {
    let req = Request::Detach {
        interface: interface.to_string(),
    };
    if let Some(r) = control::call(pin_dir, &req)? {
        if !r.ok {
            bail!("{}", r.message);
        }
        println!("{}", r.message);
        return Ok(());
    }
    // No agent: the pins enforce on their own; detach there, owning them
    // meanwhile so that no agent starts halfway through.
    if !pin_dir.exists() {
        bail!("{}: nothing is enforced here", no_agent(pin_dir));
    }
    let _lock = PinLock::take(pin_dir)?;
    let ifindex = nix::net::if_::if_nametoindex(interface)
        .with_context(|| format!("no network interface {interface:?} here"))?;
    let mut maps = Maps::open(pin_dir)?;
    if maps.unconfigure(ifindex).is_none() {
        bail!("{interface} is not enforced from {}", pin_dir.display());
    }
    println!(
        "detached {interface} (ifindex {ifindex}): its traffic is no longer filtered; the next agent drops its policy entries"
    );
    Ok(())
}

pub fn seal(file: &Path) -> Result<()> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        std::io::stdout().write_all(reload::seal(&text).as_bytes())?;
        return Ok(());
    }
    let text = crate::file::read_config_text(file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let sealed = reload::seal(&text);
    // Written beside it and renamed over it: a watching agent sees the file
    // whole, and takes it.
    let mut tmp = PathBuf::from(file);
    tmp.set_file_name(format!(
        ".{}.sg-seal",
        file.file_name().context("a file name")?.to_string_lossy()
    ));
    let mode = std::fs::metadata(file)?.permissions().mode();
    std::fs::write(&tmp, &sealed).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, file).with_context(|| format!("renaming over {}", file.display()))?;
    println!("sealed {}", file.display());
    Ok(())
}

/// Removes the pins under `dir`, unless an agent owns them.
pub fn cleanup(dir: &Path) -> Result<()> {
    if !dir.exists() {
        println!("nothing pinned under {}", dir.display());
        return Ok(());
    }
    let lock = PinLock::take(dir)?;
    Maps::remove_pins_at(dir);
    drop(lock);
    println!("removed the pins under {}", dir.display());
    Ok(())
}

/// Removes every sg pin directory on the host (all layouts, all network
/// namespaces) but those that running agents own.
pub fn cleanup_all() -> Result<()> {
    let root = Path::new(pins::BPFFS_ROOT).join("sg");
    let (mut removed, mut skipped) = (0, 0);
    for layout in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for ns in std::fs::read_dir(layout.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            match PinLock::take(&ns.path()) {
                Ok(lock) => {
                    Maps::remove_pins_at(&ns.path());
                    drop(lock);
                    removed += 1;
                }
                Err(e) => {
                    println!("skipped: {e:#}");
                    skipped += 1;
                }
            }
        }
        let _ = std::fs::remove_dir(layout.path());
    }
    let _ = std::fs::remove_dir(&root);
    println!(
        "removed {removed} sg pin director{}{}",
        if removed == 1 { "y" } else { "ies" },
        if skipped > 0 {
            format!(", skipped {skipped} owned by running agents")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// `sg-agent lookup-events`: the matching records, one JSON line each.
pub fn lookup_events(at: &crate::store::StateAt, f: &crate::store::EventFilter) -> Result<()> {
    if let crate::store::StateAt::Dir(dir) = at
        && !dir.join(crate::store::DB_FILE).exists()
    {
        bail!(
            "{}: no audit trail here (is this the agent's --state-dir?)",
            dir.display()
        );
    }
    let store = crate::store::Store::open(at)?;
    for e in store.events(f)? {
        println!("{}", serde_json::to_string(&e)?);
    }
    Ok(())
}
