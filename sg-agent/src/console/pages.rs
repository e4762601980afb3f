//! The console's pages. Each table row carries its object's id
//! (`data-id`) so that a browser test can read back what a page shows.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::FlowFilter;
use crate::{
    findings::{Finding, rules, show},
    flowlog::{Action, Record, Status},
    model::Desired,
};

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#16191f}
nav{background:#232f3e;padding:8px 16px}nav a{color:#fff;margin-right:18px;text-decoration:none}
main{padding:16px}table{border-collapse:collapse;margin:8px 0 20px}
th,td{border:1px solid #d5dbdb;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f3f3}.critical{color:#d13212;font-weight:600}.warning{color:#b7740f}
.REJECT{color:#d13212}.ACCEPT{color:#1d8102}ul{margin:0;padding-left:16px}";

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " — sg console" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                nav {
                    a href="/" { "Overview" }
                    a href="/groups" { "Security groups" }
                    a href="/interfaces" { "Network interfaces" }
                    a href="/tiers" { "Tiers" }
                    a href="/flows" { "Flow logs" }
                    a href="/audit" { "Audit" }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

pub fn overview(d: &Desired, in_use: Option<u64>, max_flows: u64) -> Markup {
    let rules: usize = d
        .groups
        .iter()
        .map(|g| g.ingress.len() + g.egress.len())
        .sum();
    page(
        "Overview",
        html! {
            table #summary {
                tr { th { "VPCs" } td data-id="vpcs" { (d.vpcs.len()) } }
                tr { th { "Security groups" } td data-id="groups" { (d.groups.len()) } }
                tr { th { "Rules" } td data-id="rules" { (rules) } }
                tr { th { "Prefix lists" } td data-id="prefix-lists" { (d.prefix_lists.len()) } }
                tr { th { "Network interfaces" } td data-id="interfaces" { (d.interfaces.len()) } }
            }
            h2 { "Connection tracking allowance" }
            table #allowance {
                tr { th { "Tracked flows" } td data-id="in-use" { (in_use.map_or("-".into(), |n| n.to_string())) } }
                tr { th { "conntrack_allowance_available" } td data-id="available" {
                    (in_use.map_or("-".into(), |n| max_flows.saturating_sub(n).to_string()))
                } }
                tr { th { "Allowance" } td data-id="max" { (max_flows) } }
            }
        },
    )
}

pub fn groups(d: &Desired) -> Markup {
    page(
        "Security groups",
        html! {
            table #groups {
                tr { th { "Group ID" } th { "Name" } th { "VPC" } th { "Description" } th { "Inbound rules" } th { "Outbound rules" } }
                @for g in &d.groups {
                    tr data-id=(g.id) {
                        td { (g.id) } td { (g.name) } td { (g.vpc) } td { (g.description) }
                        @for dir in ["ingress", "egress"] {
                            td { ul {
                                @for (_, r) in rules(g).filter(|(x, _)| *x == dir) {
                                    li data-rule=(r.id) { (show(dir, r)) }
                                }
                            } }
                        }
                    }
                }
            }
        },
    )
}

pub fn interfaces(d: &Desired) -> Markup {
    page(
        "Network interfaces",
        html! {
            table #interfaces {
                tr { th { "Interface ID" } th { "Name" } th { "Host" } th { "VPC" } th { "Addresses" } th { "Security groups" } }
                @for i in d.interfaces.iter() {
                    tr data-id=(i.id) {
                        td { (i.id) } td { (i.name) } td { (i.host.as_deref().unwrap_or("-")) } td { (i.vpc) }
                        td { @for a in &i.ipv4 { (a) " " } @for a in &i.ipv6 { (a) " " } }
                        td { ul { @for g in &i.groups {
                            li data-group=(g) { (g) " " (d.group(g).map_or("", |g| g.name.as_str())) }
                        } } }
                    }
                }
            }
        },
    )
}

pub fn tiers(svg: anyhow::Result<String>) -> Markup {
    page(
        "Tiers",
        html! {
            @match svg {
                // Graphviz's own SVG, inline: nothing is fetched.
                Ok(s) => div #graph { (PreEscaped(s.split_once("<svg").map_or(s.clone(), |(_, r)| format!("<svg{r}")))) },
                Err(e) => p #graph-error { "The picture needs Graphviz: " (format!("{e:#}")) },
            }
        },
    )
}

pub fn audit(found: &[Finding]) -> Markup {
    page(
        "Audit",
        html! {
            p { (found.len()) " finding(s)." }
            table #findings {
                tr { th { "Severity" } th { "Finding" } th { "Resource" } th { "Group" } th { "Detail" } }
                @for f in found {
                    tr data-id=(f.resource) {
                        td class=(f.severity) { (f.severity) }
                        td { (f.kind) @if let Some(g) = &f.guardrail { ": " (g) } }
                        td { (f.resource) }
                        td { (f.group_id.as_deref().unwrap_or("-")) }
                        td { (f.detail) }
                    }
                }
            }
        },
    )
}

fn selected(f: &FlowFilter, r: &Record, port: Option<u16>) -> bool {
    (f.interface.is_empty() || r.interface_id == f.interface)
        && match f.action.as_str() {
            "" => true,
            a => r.flow.as_ref().is_some_and(|p| {
                matches!(
                    (a, p.action),
                    ("ACCEPT", Action::Accept) | ("REJECT", Action::Reject)
                )
            }),
        }
        && port.is_none_or(|n| {
            r.flow
                .as_ref()
                .is_some_and(|p| p.sport == n || p.dport == n)
        })
}

pub fn flows(recent: &[Record], f: &FlowFilter, port: Option<u16>) -> Markup {
    let shown: Vec<&Record> = recent
        .iter()
        .filter(|r| selected(f, r, port))
        .take(500)
        .collect();
    page(
        "Flow logs",
        html! {
            form #filter method="get" action="/flows" {
                label { "Interface " input name="interface" value=(f.interface) placeholder="eni-…"; }
                " "
                label { "Action " select name="action" {
                    @for a in ["", "ACCEPT", "REJECT"] {
                        option value=(a) selected[f.action == a] { (if a.is_empty() { "any" } else { a }) }
                    }
                } }
                " "
                label { "Port " input name="port" value=(f.port) size="6"; }
                " " button type="submit" { "Filter" }
            }
            p { (shown.len()) " record(s), newest first (the last " (crate::flowlog::RECENT_MAX) " written are kept)." }
            table #flows {
                tr { th { "interface-id" } th { "srcaddr" } th { "dstaddr" } th { "srcport" } th { "dstport" } th { "protocol" } th { "packets" } th { "bytes" } th { "start" } th { "end" } th { "action" } th { "log-status" } }
                @for r in shown {
                    tr {
                        td { (r.interface_id) }
                        @if let Some(p) = &r.flow {
                            td { (p.src) } td { (p.dst) } td { (p.sport) } td { (p.dport) } td { (p.protocol) }
                            td { (p.packets) } td { (p.bytes) }
                        } @else {
                            @for _ in 0..7 { td { "-" } }
                        }
                        td { (r.start) } td { (r.end) }
                        @let action = r.flow.as_ref().map_or("-", |p| if p.action == Action::Accept { "ACCEPT" } else { "REJECT" });
                        td class=(action) { (action) }
                        td { (match r.status { Status::Ok => "OK", Status::NoData => "NODATA", Status::SkipData => "SKIPDATA" }) }
                    }
                }
            }
        },
    )
}
