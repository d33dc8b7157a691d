//! `leash watch` in a lab: a SYN flood against a destination the policy drops (50 non-blocking
//! connects that stay in SYN_SENT) and one connection to an unusual port raise the half-open,
//! connection-count and unusual-port alerts, naming this test process, in JSON lines and text.

use crate::harness::*;
use lab::Lab;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, connect, socket};
use serde_json::Value;
use std::net::{IpAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};

const DST: &str = "192.0.2.20";
/// Dropped by the default: connects stay half-open.
const DROPPED: u16 = 443;
/// Allowed by rule `irc`, and not a usual port.
const UNUSUAL: u16 = 6667;
const FLOOD: usize = 50;

fn policy_text() -> String {
    format!(
        r#"version = 1
[defaults]
outbound = "deny"
deny_with = "drop"

[[rule]]
name = "irc"
action = "allow"
proto = "tcp"
ports = [{UNUSUAL}]
to = ["{DST}"]
"#
    )
}

/// `FLOOD` non-blocking connects to the dropped port, made inside the client namespace; their
/// SYNs are dropped and retransmitted, so they stay in SYN_SENT while the descriptors live.
fn syn_flood(lab: &Lab) -> Vec<OwnedFd> {
    lab.client().run(|| {
        let to = SockaddrIn::from(SocketAddrV4::new(DST.parse().unwrap(), DROPPED));
        (0..FLOOD)
            .map(|_| {
                let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_NONBLOCK, None).unwrap();
                let e = connect(fd.as_raw_fd(), &to).unwrap_err();
                assert_eq!(e, nix::errno::Errno::EINPROGRESS);
                fd
            })
            .collect()
    })
}

#[test]
fn watch_reports_a_syn_flood_and_an_unusual_port() {
    if !need_root("watch_reports_a_syn_flood_and_an_unusual_port") {
        return;
    }
    let dir = TempDir::new("watch");
    let lab = Lab::new(&[DST.parse::<IpAddr>().unwrap()], &[DROPPED, UNUSUAL], &[]).expect("lab");
    let path = dir.file("watch.toml", &policy_text());
    let r = leash_in(lab.client(), &["apply", &path]);
    assert!(r.ok(), "{r}");

    // Nothing yet: no alert.
    let r = leash_in(lab.client(), &["watch", "--json", "--count", "1"]);
    assert!(r.ok() && r.stdout.is_empty(), "{r}");

    let flood = syn_flood(&lab);
    let irc = lab.client().run(|| TcpStream::connect((DST, UNUSUAL)).unwrap());
    let me = std::process::id();

    let r = leash_in(
        lab.client(),
        &["watch", "--json", "--count", "2", "--interval", "0.1", "--max-conns", "40", "--max-conns-per-process", "45"],
    );
    assert!(r.ok(), "{r}");
    let alerts: Vec<Value> =
        r.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}{r}"))).collect();
    let of = |kind: &str| alerts.iter().filter(|a| a["kind"] == kind).collect::<Vec<_>>();
    // Two looks, each condition once: alerts are edge-triggered.
    assert_eq!(alerts.len(), 4, "{r}");

    let half = of("half-open");
    assert_eq!(half.len(), 1, "{r}");
    assert_eq!(half[0]["count"], FLOOD, "{r}");
    assert_eq!(half[0]["threshold"], 20, "{r}");
    assert_eq!(half[0]["processes"][0]["pid"], me, "{r}");
    assert_eq!(half[0]["processes"][0]["count"], FLOOD, "{r}");
    assert_eq!(half[0]["destinations"][0]["remote"], format!("{DST}:{DROPPED}"), "{r}");

    let unusual = of("unusual-port");
    assert_eq!(unusual.len(), 1, "only the IRC connection (443 is usual): {r}");
    assert_eq!(unusual[0]["port"], UNUSUAL, "{r}");
    assert_eq!(unusual[0]["remote"], format!("{DST}:{UNUSUAL}"), "{r}");
    assert_eq!(unusual[0]["state"], "ESTABLISHED", "{r}");
    assert_eq!(unusual[0]["pid"], me, "{r}");
    assert_eq!(unusual[0]["uid"], 0, "{r}");
    assert_eq!(unusual[0]["verdict"], "allow", "the active policy's verdict: {r}");
    assert_eq!(unusual[0]["rule"], "irc", "{r}");

    let total = of("conn-count");
    assert_eq!(total.len(), 1, "{r}");
    assert_eq!(total[0]["count"], FLOOD + 1, "{r}");
    let per = of("process-conn-count");
    assert_eq!(per.len(), 1, "{r}");
    assert_eq!((per[0]["pid"].clone(), per[0]["count"].clone()), (me.into(), (FLOOD + 1).into()), "{r}");
    for a in &alerts {
        assert!(a["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{r}");
        assert!(a["message"].as_str().is_some_and(|m| m.starts_with(a["kind"].as_str().unwrap())), "{r}");
    }

    // Text lines: time, kind, what happened. Ports configurable: 6667 usual, so no alert for it.
    let r = leash_in(lab.client(), &["watch", "--count", "1", "--ports", "22,53,80,443,6660-6669"]);
    assert!(r.ok(), "{r}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{r}");
    assert!(lines[0].contains(" half-open: 50 half-open (SYN_SENT) connections (threshold 20); by "), "{r}");
    assert!(lines[0].contains(&format!("to {DST}:{DROPPED} (50)")), "{r}");

    // Bad input is a usage error.
    let r = leash_in(lab.client(), &["watch", "--ports", "0-9"]);
    assert_eq!(r.code, Some(2), "{r}");
    drop((flood, irc));
}
