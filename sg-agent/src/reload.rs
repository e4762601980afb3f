//! When a new version of the configuration file is taken (README, "How
//! reloads are taken"). A file is taken only when it is provably complete:
//!
//! - renamed over the path (`mv`, `install`, tools that write a temporary
//!   file and rename it, a Kubernetes ConfigMap's symlink swap), and ending
//!   with a newline, since a cut file usually does not;
//! - or sealed: its last line is `# sg-sha256: <hex>`, the SHA-256 of every
//!   byte before that line (`sg-agent seal FILE` writes it), which a torn or
//!   half-written file cannot match;
//! - or named complete by the operator: `sg-agent apply`, SIGHUP.
//!
//! A change written in place without a seal is never taken by itself, nor is
//! an empty file, whatever the trigger.

use std::path::Path;

use crate::{
    model::{Desired, validate::sha256_hex},
    widen::{self, Enforced},
};

/// The seal line's prefix.
pub const SEAL_PREFIX: &str = "# sg-sha256: ";

/// What made the agent look at the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A new file was renamed over the path (inotify `IN_MOVED_TO`).
    Renamed,
    /// The file was written in place (`IN_CLOSE_WRITE`, `IN_MODIFY`).
    InPlace,
    /// The operator asked: `sg-agent apply`, SIGHUP; or started the agent
    /// afresh on the file.
    Apply,
    /// The agent starts where an earlier one's pins still enforce (a crash,
    /// a service manager's restart): nobody vouched for the file, so it is
    /// held to the rename rule, and refused it leaves the pins enforcing.
    Restart,
}

/// Why a version of the file is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the file is empty: an empty file is never taken (to stop enforcing on an interface, use `detached: true` or `sg-agent detach`)"
    )]
    Empty,
    #[error(
        "the seal does not match the content (sha256 {actual}): the file is torn, or was edited after it was sealed; run `sg-agent seal` again"
    )]
    BadSeal { actual: String },
    #[error(
        "the file was renamed in but does not end with a newline, as a cut file would not; end it with one, seal it, or run `sg-agent apply`"
    )]
    Cut,
    #[error(
        "at a restart (an earlier agent's pins enforcing) the file must end with a newline or carry a seal, as a cut file would not; the pinned policy stays in force until it does"
    )]
    CutAtRestart,
    #[error(
        "the file was changed in place and carries no seal, so it may be half-written; write it by rename, seal it (`sg-agent seal`), or run `sg-agent apply` once it is complete"
    )]
    InPlace,
}

/// The seal's verdict on a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seal {
    /// No seal line.
    None,
    Valid,
    /// A seal line whose hash differs from the content's.
    Invalid {
        actual: String,
    },
}

/// Splits a text into the body and its seal line's hash, if the last line
/// (one trailing newline allowed) is a seal.
fn split_seal(text: &str) -> Option<(&str, &str)> {
    let t = text.strip_suffix('\n').unwrap_or(text);
    let start = t.rfind('\n').map_or(0, |i| i + 1);
    let hash = t[start..].strip_prefix(SEAL_PREFIX)?;
    Some((&text[..start], hash.trim_end()))
}

/// Checks the seal of `text`.
pub fn seal_of(text: &str) -> Seal {
    match split_seal(text) {
        None => Seal::None,
        Some((body, hash)) => {
            let actual = sha256_hex(body.as_bytes());
            if actual == hash {
                Seal::Valid
            } else {
                Seal::Invalid { actual }
            }
        }
    }
}

/// `text` with a seal line over it (an existing seal replaced).
pub fn seal(text: &str) -> String {
    let body = split_seal(text).map_or(text, |(b, _)| b);
    let mut body = body.to_string();
    if !body.is_empty() && !body.ends_with('\n') {
        body.push('\n');
    }
    let hash = sha256_hex(body.as_bytes());
    format!("{body}{SEAL_PREFIX}{hash}\n")
}

/// Whether a version of the file, seen through `trigger`, may be taken.
pub fn admit(trigger: Trigger, text: &str) -> Result<(), Refusal> {
    let seal = seal_of(text);
    let body = split_seal(text).map_or(text, |(b, _)| b);
    if body.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    }) {
        return Err(Refusal::Empty);
    }
    match (seal, trigger) {
        (Seal::Invalid { actual }, _) => Err(Refusal::BadSeal { actual }),
        (Seal::Valid, _) | (Seal::None, Trigger::Apply) => Ok(()),
        (Seal::None, Trigger::Renamed | Trigger::Restart) if text.ends_with('\n') => Ok(()),
        (Seal::None, Trigger::Renamed) => Err(Refusal::Cut),
        (Seal::None, Trigger::Restart) => Err(Refusal::CutAtRestart),
        (Seal::None, Trigger::InPlace) => Err(Refusal::InPlace),
    }
}

/// The desired state a version of the file gives, if it may be taken:
/// admitted (see [`admit`]), then parsed and validated as a whole. `name` is
/// the file as messages show it; imports resolve against `dir`. A version
/// refused only for how it was written is still read, when `enforced` is
/// given, so that the refusal says what taking it would widen.
pub fn take(
    trigger: Trigger,
    name: &str,
    text: &str,
    dir: Option<&Path>,
    previous: Option<&Desired>,
    enforced: Option<&Enforced>,
) -> Result<Desired, String> {
    if let Err(refusal) = admit(trigger, text) {
        let mut msg = format!("{name}: not taken: {refusal}");
        if let Some(before) = enforced
            && refusal != Refusal::Empty
        {
            match crate::source::file::parse(name, text, dir, previous) {
                Ok(d) => {
                    let w = widen::widenings(before, &widen::after(before, &d));
                    if w.is_empty() {
                        msg.push_str("; as it stands, it would widen nothing");
                    } else {
                        msg.push_str(&format!("; as it stands, it would widen: {}", w.join("; ")));
                    }
                }
                Err(_) => msg.push_str("; as it stands, it is not valid either"),
            }
        }
        return Err(msg);
    }
    crate::source::file::parse(name, text, dir, previous).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "security_groups:\n  - name: a\n";

    #[test]
    fn seals_round_trip_and_catch_every_cut() {
        let sealed = seal(DOC);
        assert_eq!(seal_of(&sealed), Seal::Valid);
        assert_eq!(seal(&sealed), sealed, "resealing is idempotent");
        assert_eq!(
            seal_of(sealed.trim_end()),
            Seal::Valid,
            "final newline optional"
        );
        assert_eq!(admit(Trigger::InPlace, &sealed), Ok(()));
        for cut in 0..sealed.len() - 1 {
            let prefix = &sealed[..cut];
            assert!(
                admit(Trigger::InPlace, prefix).is_err(),
                "a prefix of {cut} bytes was taken"
            );
        }
        let edited = sealed.replace("name: a", "name: b");
        assert!(matches!(
            admit(Trigger::Apply, &edited),
            Err(Refusal::BadSeal { .. })
        ));
    }

    #[test]
    fn triggers() {
        assert_eq!(admit(Trigger::Renamed, DOC), Ok(()));
        assert_eq!(admit(Trigger::Renamed, DOC.trim_end()), Err(Refusal::Cut));
        assert_eq!(admit(Trigger::InPlace, DOC), Err(Refusal::InPlace));
        assert_eq!(admit(Trigger::Apply, DOC.trim_end()), Ok(()));
        assert_eq!(admit(Trigger::Restart, DOC), Ok(()));
        assert_eq!(
            admit(Trigger::Restart, DOC.trim_end()),
            Err(Refusal::CutAtRestart)
        );
        assert_eq!(admit(Trigger::Restart, seal(DOC).trim_end()), Ok(()));
        for empty in ["", "\n", "# nothing\n---\n", "  \n"] {
            for t in [
                Trigger::Renamed,
                Trigger::InPlace,
                Trigger::Apply,
                Trigger::Restart,
            ] {
                assert_eq!(admit(t, empty), Err(Refusal::Empty), "{empty:?}");
            }
        }
        assert_eq!(admit(Trigger::Apply, &seal("")), Err(Refusal::Empty));
    }
}
