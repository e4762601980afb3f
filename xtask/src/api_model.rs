//! `cargo xtask api-model`: extracts, from botocore's service models, the
//! shapes of the EC2 and STS actions sg serves, into
//! `sg-agent/src/api/model.json` (checked in). The API decodes requests and
//! encodes responses by walking these shapes, so member names, list
//! serialisation and XML element names are AWS's own, never retyped.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Read,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

/// The EC2 actions served (README, "Supported actions").
pub const EC2_ACTIONS: &[&str] = &[
    "AuthorizeSecurityGroupEgress",
    "AuthorizeSecurityGroupIngress",
    "CreateManagedPrefixList",
    "CreateSecurityGroup",
    "CreateTags",
    "CreateVpc",
    "DeleteManagedPrefixList",
    "DeleteSecurityGroup",
    "DeleteTags",
    "DeleteVpc",
    "DescribeManagedPrefixLists",
    "DescribeNetworkAcls",
    "DescribeNetworkInterfaces",
    "DescribeRouteTables",
    "DescribeSecurityGroupReferences",
    "DescribeSecurityGroupRules",
    "DescribeSecurityGroups",
    "DescribeStaleSecurityGroups",
    "DescribeTags",
    "DescribeVpcAttribute",
    "DescribeVpcs",
    "GetManagedPrefixListEntries",
    "ModifyManagedPrefixList",
    "ModifyNetworkInterfaceAttribute",
    "ModifySecurityGroupRules",
    "ModifyVpcAttribute",
    "RevokeSecurityGroupEgress",
    "RevokeSecurityGroupIngress",
    "UpdateSecurityGroupRuleDescriptionsEgress",
    "UpdateSecurityGroupRuleDescriptionsIngress",
];

pub fn run(root: &Path) -> Result<()> {
    let data = botocore_data()?;
    let ec2 = read_model(&data.join("ec2/2016-11-15/service-2.json"))?;
    let version = ec2["metadata"]["apiVersion"].clone();
    let mut out_ops = Map::new();
    let mut wanted = BTreeSet::new();
    for a in EC2_ACTIONS {
        let op = &ec2["operations"][*a];
        if op.is_null() {
            bail!("botocore's EC2 model has no operation {a}");
        }
        let input = op["input"]["shape"].as_str().map(String::from);
        let output = op["output"]["shape"].as_str().map(String::from);
        wanted.extend(input.clone());
        wanted.extend(output.clone());
        out_ops.insert((*a).into(), json!({"input": input, "output": output}));
    }
    let shapes = reachable(&ec2["shapes"], wanted)?;
    let out = json!({
        "source": format!("botocore {} data/ec2/2016-11-15/service-2.json", botocore_version()?),
        "apiVersion": version,
        "operations": out_ops,
        "shapes": shapes,
    });
    let path = root.join("sg-agent/src/api/model.json");
    std::fs::write(&path, serde_json::to_string(&out)? + "\n")?;
    println!(
        "wrote {} ({} actions, {} shapes)",
        path.display(),
        EC2_ACTIONS.len(),
        out["shapes"].as_object().map_or(0, |m| m.len())
    );
    Ok(())
}

fn botocore_version() -> Result<String> {
    let out = Command::new("python3")
        .args(["-c", "import botocore; print(botocore.__version__)"])
        .output()
        .context("python3 (botocore)")?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn botocore_data() -> Result<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import botocore, os; print(os.path.dirname(botocore.__file__))",
        ])
        .output()
        .context("python3 (botocore) is needed to extract the API model")?;
    if !out.status.success() {
        bail!("botocore is not installed for python3 (pip install botocore)");
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("data"))
}

/// Reads `service-2.json`, or the `.gz` newer botocore ships.
fn read_model(path: &Path) -> Result<Value> {
    let mut text = String::new();
    if path.exists() {
        text = std::fs::read_to_string(path)?;
    } else {
        let gz = path.with_extension("json.gz");
        flate2::read::GzDecoder::new(
            std::fs::File::open(&gz).with_context(|| gz.display().to_string())?,
        )
        .read_to_string(&mut text)?;
    }
    Ok(serde_json::from_str(&text)?)
}

/// The shapes reachable from `roots`, each cut down to what the codec uses.
fn reachable(all: &Value, mut todo: BTreeSet<String>) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    while let Some(name) = todo.pop_first() {
        if out.contains_key(&name) {
            continue;
        }
        let s = &all[&name];
        let ty = s["type"].as_str().context(name.clone())?;
        let mut keep = Map::new();
        keep.insert("type".into(), ty.into());
        for k in ["required", "flattened"] {
            if !s[k].is_null() {
                keep.insert(k.into(), s[k].clone());
            }
        }
        if ty == "structure" {
            let mut members = Map::new();
            for (m, ref_) in s["members"].as_object().into_iter().flatten() {
                let shape = ref_["shape"].as_str().context(m.clone())?;
                todo.insert(shape.into());
                let mut r = Map::new();
                r.insert("shape".into(), shape.into());
                for k in ["locationName", "queryName"] {
                    if !ref_[k].is_null() {
                        r.insert(k.into(), ref_[k].clone());
                    }
                }
                members.insert(m.clone(), Value::Object(r));
            }
            keep.insert("members".into(), Value::Object(members));
        }
        if ty == "list" {
            let m = &s["member"];
            let shape = m["shape"].as_str().context(name.clone())?;
            todo.insert(shape.into());
            let mut r = Map::new();
            r.insert("shape".into(), shape.into());
            if !m["locationName"].is_null() {
                r.insert("locationName".into(), m["locationName"].clone());
            }
            keep.insert("member".into(), Value::Object(r));
        }
        out.insert(name, Value::Object(keep));
    }
    Ok(out)
}
