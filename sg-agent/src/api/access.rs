//! Who may call the API: access keys, their secrets and what each may do,
//! read from the credentials file (docs/api.md, "Credentials").

use std::{collections::HashMap, path::Path};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// `Describe*`, `Get*` (and STS `GetCallerIdentity`).
    ReadOnly,
    Full,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The IAM user name the key stands for (in ARNs and audit records).
    #[serde(default = "admin")]
    pub user: String,
    pub access: Access,
    /// Optional narrowing, IAM-style: `ec2:Describe*`, `ec2:AuthorizeSecurityGroupIngress`...
    #[serde(default)]
    pub actions: Option<Vec<String>>,
}

fn admin() -> String {
    "sg-admin".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The account that owns everything (`OwnerId`, ARNs, `UserId`).
    #[serde(default = "account")]
    pub account_id: String,
    /// The region of ARNs when a request's scope names none.
    #[serde(default = "region")]
    pub region: String,
    pub keys: Vec<Key>,
}

fn account() -> String {
    "000000000000".into()
}

fn region() -> String {
    "us-east-1".into()
}

pub fn is_read(action: &str) -> bool {
    action.starts_with("Describe") || action.starts_with("Get")
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Credentials> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the API credentials {}", path.display()))?;
        let c: Credentials = serde_yaml::from_str(&text)
            .with_context(|| format!("{}: not a credentials file", path.display()))?;
        if c.keys.is_empty() {
            bail!("{}: no keys: nobody could call the API", path.display());
        }
        if !(c.account_id.len() == 12 && c.account_id.bytes().all(|b| b.is_ascii_digit())) {
            bail!(
                "{}: account_id {:?} is not 12 digits",
                path.display(),
                c.account_id
            );
        }
        let mut seen = HashMap::new();
        for k in &c.keys {
            if k.secret_access_key.len() < 16 {
                bail!(
                    "{}: the secret of {} is shorter than 16 characters",
                    path.display(),
                    k.access_key_id
                );
            }
            if seen.insert(k.access_key_id.clone(), ()).is_some() {
                bail!(
                    "{}: key {} is listed twice",
                    path.display(),
                    k.access_key_id
                );
            }
        }
        Ok(c)
    }

    pub fn key(&self, id: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.access_key_id == id)
    }
}

impl Key {
    /// Whether this key may call `service:action`.
    pub fn allows(&self, service: &str, action: &str) -> bool {
        if service == "sts" && action == "GetCallerIdentity" {
            return true;
        }
        if self.access == Access::ReadOnly && !is_read(action) {
            return false;
        }
        let full = format!("{service}:{action}");
        self.actions.as_ref().is_none_or(|pats| {
            pats.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => full.starts_with(prefix),
                None => *p == full,
            })
        })
    }

    pub fn arn(&self, account: &str) -> String {
        format!("arn:aws:iam::{account}:user/{}", self.user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_keys_read_and_narrowed_keys_do_only_what_they_list() {
        let k = |access, actions: Option<Vec<&str>>| Key {
            access_key_id: "AKID".into(),
            secret_access_key: "x".repeat(20),
            user: "u".into(),
            access,
            actions: actions.map(|a| a.into_iter().map(String::from).collect()),
        };
        let ro = k(Access::ReadOnly, None);
        assert!(ro.allows("ec2", "DescribeSecurityGroups"));
        assert!(!ro.allows("ec2", "AuthorizeSecurityGroupIngress"));
        assert!(ro.allows("sts", "GetCallerIdentity"));
        let narrow = k(
            Access::Full,
            Some(vec!["ec2:Describe*", "ec2:AuthorizeSecurityGroupIngress"]),
        );
        assert!(narrow.allows("ec2", "AuthorizeSecurityGroupIngress"));
        assert!(!narrow.allows("ec2", "RevokeSecurityGroupIngress"));
        assert!(k(Access::Full, None).allows("ec2", "DeleteVpc"));
    }
}
