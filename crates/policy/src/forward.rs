//! What the policy does with forwarded traffic (containers, VMs, namespaces routed through the
//! host), in one sentence for `leash check`.

use crate::model::{Bypass, Policy};

/// Which forwarded traffic the policy governs, and which it leaves to the other tables.
pub fn summary(policy: &Policy) -> String {
    if !policy.governs_forwarded() {
        return "forwarded traffic (containers, VMs, routed namespaces) is not governed: [forward] mode = \"ignore\"; \
                only the other tables decide it"
            .to_string();
    }
    let mut from: Vec<String> = Vec::new();
    let ifaces = policy.workload_interfaces();
    if !ifaces.is_empty() {
        from.push(format!("entering on {}", ifaces.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")));
    }
    let sources = policy.workload_sources();
    if !sources.is_empty() {
        from.push(format!("from {}", sources.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")));
    }
    if from.is_empty() {
        return "forwarded traffic is not governed: [forward] names no interfaces or sources".to_string();
    }
    let dns = if policy.has_domain_rules() && policy.dns.bypass != Bypass::Off {
        "; their DNS to port 53 and 853 is denied (a forwarded query cannot be redirected to the forwarder)"
    } else {
        ""
    };
    let socket: Vec<String> = policy
        .rules
        .iter()
        .filter(|r| r.needs_socket() && r.matches_nothing().is_none())
        .map(|r| format!("`{}`", r.name))
        .collect();
    let except = match socket.len() {
        0 => String::new(),
        1 => format!(" (except {}, which needs a local socket: user, group, service or cgroup)", socket[0]),
        _ => format!(" (except {}, which need a local socket: user, group, service or cgroup)", socket.join(", ")),
    };
    format!(
        "forwarded traffic: new connections {} meet the policy's rules{except} and then the default ({}){dns}; \
         established and related flows, traffic between these workloads and all other forwarded traffic are left \
         to the other tables",
        from.join(" or "),
        policy.defaults.outbound.as_str()
    )
}
