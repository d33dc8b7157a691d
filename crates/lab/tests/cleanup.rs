//! A lab leaves nothing behind: no namespace, no interface in the root namespace, no thread, no
//! descriptor, also when the code using it panics. Its own test binary, so that no other test's
//! labs run at the same time and disturb the before/after comparison.

mod common;

use lab::{Case, Lab, Outcome, WorkloadSpec};
use policy::Proto;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

fn cmd(argv: &[&str]) -> String {
    // Spawned from the test's own thread, which is in the root namespace.
    let out = Command::new(argv[0]).args(&argv[1..]).output().expect("run command");
    assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    links: String,
    netns: String,
    ns_fds: usize,
    threads: usize,
}

fn snapshot() -> Snapshot {
    let ns_fds = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with("net:["))
        .count();
    Snapshot {
        links: cmd(&["ip", "-o", "link", "show"]),
        netns: cmd(&["ip", "netns", "list"]),
        ns_fds,
        threads: std::fs::read_dir("/proc/self/task").unwrap().count(),
    }
}

/// Every `net:[INODE]` any process or thread is in or holds open right now.
fn live_net_namespaces() -> BTreeSet<String> {
    let mut links = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = p.path();
        if !p.file_name().unwrap().to_string_lossy().chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        links.push(p.join("ns/net"));
        if let Ok(tasks) = std::fs::read_dir(p.join("task")) {
            links.extend(tasks.flatten().map(|t| t.path().join("ns/net")));
        }
        if let Ok(fds) = std::fs::read_dir(p.join("fd")) {
            links.extend(fds.flatten().map(|f| f.path()));
        }
    }
    links
        .into_iter()
        .filter_map(|l| std::fs::read_link(l).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .filter(|t| t.starts_with("net:["))
        .collect()
}

fn exercise(lab: &Lab) {
    let case = Case { proto: Proto::Tcp, dst: "192.0.2.10".parse().unwrap(), port: Some(80), uid: 65534, gid: 65534, name: None, cgroup: None };
    assert_eq!(lab.probe(&case, Duration::from_secs(1)), Outcome::Connected);
    common::nft(lab.client(), "table inet t { chain o { type filter hook output priority 0; policy drop; }; }");
}

#[test]
fn labs_leave_nothing_behind_even_on_panic() {
    if !common::need_root() {
        return;
    }
    let dsts: Vec<IpAddr> = vec!["192.0.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap()];
    let before = snapshot();
    let mut inodes = Vec::new();
    for _ in 0..3 {
        let lab = Lab::new(&dsts, &[80], &[53]).unwrap();
        inodes.push(format!("net:[{}]", lab.client().inode().unwrap()));
        inodes.push(format!("net:[{}]", lab.peer().inode().unwrap()));
        exercise(&lab);
        assert!(live_net_namespaces().contains(&inodes[inodes.len() - 1]), "the scan sees live labs");
    }
    // With workload namespaces routed through the client (forwarding on inside the client only).
    let workloads = [
        WorkloadSpec { iif: "docker0".into(), sources: vec!["198.18.0.2".parse().unwrap(), "2001:db8:c0::2".parse().unwrap()] },
        WorkloadSpec { iif: "br-0".into(), sources: vec!["198.18.1.2".parse().unwrap()] },
    ];
    let root_forwarding = (
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").unwrap(),
    );
    let with_workloads = |inodes: &mut Vec<String>| {
        let lab = Lab::with_workloads(&dsts, &[80], &[53], &workloads).unwrap();
        inodes.push(format!("net:[{}]", lab.client().inode().unwrap()));
        inodes.push(format!("net:[{}]", lab.peer().inode().unwrap()));
        for (ns, _) in lab.workloads() {
            inodes.push(format!("net:[{}]", ns.inode().unwrap()));
        }
        let case = Case { proto: Proto::Tcp, dst: "2001:db8::10".parse().unwrap(), port: Some(80), uid: 0, gid: 0, name: None, cgroup: None };
        assert_eq!(lab.probe_from(&case, "2001:db8:c0::2".parse().unwrap(), Duration::from_secs(1)), Outcome::Connected);
        exercise(&lab);
        lab
    };
    drop(with_workloads(&mut inodes));
    let panicked = std::panic::catch_unwind(|| {
        let mut ids = Vec::new();
        let lab = with_workloads(&mut ids);
        let _keep = lab;
        std::panic::panic_any(ids);
    });
    inodes.extend(*panicked.unwrap_err().downcast::<Vec<String>>().unwrap());
    let panicked = std::panic::catch_unwind(|| {
        let lab = Lab::new(&dsts, &[80], &[53]).unwrap();
        let ids = [lab.client().inode().unwrap(), lab.peer().inode().unwrap()];
        exercise(&lab);
        std::panic::panic_any(ids);
    });
    let ids = *panicked.unwrap_err().downcast::<[u64; 2]>().unwrap();
    inodes.extend(ids.iter().map(|i| format!("net:[{i}]")));
    assert_eq!(
        root_forwarding,
        (
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
            std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").unwrap(),
        ),
        "the root namespace's forwarding sysctls changed"
    );

    let after = snapshot();
    assert_eq!(before, after, "root namespace, netns list, descriptors or threads changed");
    let live = live_net_namespaces();
    for i in &inodes {
        assert!(!live.contains(i), "lab namespace {i} is still referenced");
    }
}
