//! Terraform with the `hashicorp/aws` provider, as users run it, pointed at
//! an agent's API: the provider comes from the machine's filesystem mirror
//! (no registry is reachable), `terraform` runs inside the agent's network
//! namespace.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::*;

/// Where images of this kind keep the provider mirror.
const MIRRORS: &[&str] = &[
    "/opt/tf-plugins",
    "/usr/share/terraform/plugins",
    "/usr/local/share/terraform/plugins",
];

/// The provider block that points `hashicorp/aws` at sg (README, "Terraform").
pub const PROVIDER: &str = r#"
terraform {
  required_providers {
    aws = { source = "hashicorp/aws" }
  }
}
provider "aws" {
  region                  = "us-east-1"
  access_key              = "AKIASGTESTADMIN00001"
  secret_key              = "sgtestsecretadmin0000000000000000000000"
  skip_metadata_api_check = true
  skip_region_validation  = true
  endpoints {
    ec2 = "http://127.0.0.1:8733"
    sts = "http://127.0.0.1:8733"
  }
}
"#;

pub struct Terraform {
    dir: TempDir,
    netns: PathBuf,
    bin: PathBuf,
}

fn find_terraform() -> Result<PathBuf> {
    for p in ["/usr/local/bin/terraform", "/usr/bin/terraform"] {
        if Path::new(p).exists() {
            return Ok(p.into());
        }
    }
    bail!(
        "terraform is not installed on this machine (looked in /usr/local/bin and /usr/bin): the Terraform tests need it and its hashicorp/aws filesystem mirror"
    )
}

fn find_mirror() -> Result<&'static str> {
    MIRRORS
        .iter()
        .copied()
        .find(|m| {
            Path::new(m)
                .join("registry.terraform.io/hashicorp/aws")
                .is_dir()
        })
        .with_context(|| format!("no hashicorp/aws provider mirror in {MIRRORS:?}"))
}

impl Terraform {
    pub fn new(ns: &Netns) -> Result<Terraform> {
        let bin = find_terraform()?;
        let mirror = find_mirror()?;
        let dir = TempDir::new()?;
        std::fs::write(
            dir.0.join("cli.tfrc"),
            format!(
                "provider_installation {{\n  filesystem_mirror {{\n    path    = \"{mirror}\"\n    include = [\"registry.terraform.io/hashicorp/aws\"]\n  }}\n  direct {{\n    exclude = [\"registry.terraform.io/hashicorp/aws\"]\n  }}\n}}\n"
            ),
        )?;
        std::fs::create_dir_all(dir.0.join("work"))?;
        Ok(Terraform {
            dir,
            netns: ns.path(),
            bin,
        })
    }

    fn command(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(&self.bin)
            .current_dir(self.dir.0.join("work"))
            .env("TF_CLI_CONFIG_FILE", self.dir.0.join("cli.tfrc"))
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env("HOME", &self.dir.0);
        c
    }

    /// Writes the configuration (after the provider block).
    pub fn config(&self, resources: &str) -> Result<()> {
        std::fs::write(
            self.dir.0.join("work/main.tf"),
            format!("{PROVIDER}\n{resources}"),
        )?;
        Ok(())
    }

    /// `terraform ARGS`, failing with its output unless it exits 0.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        sh(self.command().args(args).arg("-no-color"))
    }

    pub fn init(&self) -> Result<()> {
        self.run(&["init", "-input=false"]).map(|_| ())
    }

    pub fn apply(&self) -> Result<()> {
        self.run(&["apply", "-auto-approve", "-input=false"])
            .map(|_| ())
    }

    pub fn destroy(&self) -> Result<()> {
        self.run(&["destroy", "-auto-approve", "-input=false"])
            .map(|_| ())
    }

    /// `terraform plan -detailed-exitcode`: its exit code (0: no changes,
    /// 2: changes) and output.
    pub fn plan(&self) -> Result<(i32, String)> {
        let out = self
            .command()
            .args(["plan", "-detailed-exitcode", "-input=false", "-no-color"])
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.code().unwrap_or(-1), text))
    }
}
