//! Quota settings, and the quotas that span a VPC.

use foldhash::{HashMap, HashMapExt};

use crate::model::{Collector, Group, INVALID, input::RawConfig};

/// The quota and table settings themselves.
pub fn settings(v: &mut Collector, raw: &RawConfig) {
    let q = raw.quotas;
    if !(1..=16).contains(&q.groups_per_interface) {
        v.err(
            0,
            "quotas.groups_per_interface",
            "quotas",
            INVALID,
            format!(
                "groups_per_interface {} is outside 1-16",
                q.groups_per_interface
            ),
        );
    }
    if q.rules_per_group == 0 || q.rules_per_group.saturating_mul(q.groups_per_interface) > 1000 {
        v.err(
            0,
            "quotas.rules_per_group",
            "quotas",
            INVALID,
            format!(
                "rules_per_group ({}) x groups_per_interface ({}) must be 1-1000",
                q.rules_per_group, q.groups_per_interface
            ),
        );
    }
    if raw.conntrack.max_flows == 0 {
        v.err(
            0,
            "conntrack.max_flows",
            "conntrack",
            INVALID,
            "max_flows must be at least 1",
        );
    }
}

/// Groups per VPC (`SecurityGroupLimitExceeded`).
pub fn groups_per_vpc(v: &mut Collector, groups: &[Group], max: u32) {
    let per_vpc: HashMap<&str, usize> = groups.iter().fold(HashMap::new(), |mut m, g| {
        *m.entry(g.vpc.as_str()).or_default() += 1;
        m
    });
    for (vpc, n) in per_vpc {
        if n as u32 > max {
            v.err(
                0,
                "security_groups",
                &format!("VPC {vpc}"),
                "SecurityGroupLimitExceeded",
                format!("{n} groups, the quota is {}", max),
            );
        }
    }
}
