//! Real outcomes in a lab: allowed probes connect; `reject` and `drop` look the way the table in
//! the crate docs says; `meta skuid`/`skgid` see the probe's user.

mod common;

use lab::{Case, Lab, Outcome};
use policy::Proto;
use std::net::IpAddr;
use std::time::Duration;

const TCP: u16 = 8080;
const UDP: u16 = 5300;
/// Long enough for anything that is not dropped (they take well under 10 ms here).
const TIMEOUT: Duration = Duration::from_millis(700);
const NOBODY: u32 = 65534;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn case(proto: Proto, dst: &str, uid: u32, gid: u32) -> Case {
    let port = match proto {
        Proto::Tcp => Some(TCP),
        Proto::Udp => Some(UDP),
        _ => None,
    };
    Case { proto, dst: ip(dst), port, uid, gid, name: None, cgroup: None }
}

fn icmp_for(dst: &str) -> Proto {
    if ip(dst).is_ipv4() { Proto::Icmp } else { Proto::Icmpv6 }
}

fn lab(dsts: &[&str]) -> Lab {
    let addrs: Vec<IpAddr> = dsts.iter().map(|d| ip(d)).collect();
    Lab::new(&addrs, &[TCP], &[UDP]).expect("build lab")
}

/// Probes and compares, printing the ruleset on a mismatch.
fn check(lab: &Lab, c: &Case, want: &Outcome) {
    let got = lab.probe(c, TIMEOUT);
    assert_eq!(&got, want, "{c}: got {}\nclient ruleset:\n{}", got.describe(), common::ruleset(lab.client()));
}

#[test]
fn allowed_probes_connect_without_rules_as_root_and_as_nobody() {
    if !common::need_root() {
        return;
    }
    let dsts = ["192.0.2.10", "2001:db8::10", "198.51.100.7", "2001:db8:1::7"];
    let lab = lab(&dsts);
    for d in dsts {
        for p in [Proto::Tcp, Proto::Udp, icmp_for(d)] {
            check(&lab, &case(p, d, 0, 0), &Outcome::Connected);
            check(&lab, &case(p, d, NOBODY, NOBODY), &Outcome::Connected);
        }
    }
}

#[test]
fn loopback_destinations_answer_on_the_clients_lo() {
    if !common::need_root() {
        return;
    }
    let dsts = ["127.0.0.1", "::1", "192.0.2.10"];
    let lab = lab(&dsts);
    for d in dsts {
        for p in [Proto::Tcp, Proto::Udp, icmp_for(d)] {
            check(&lab, &case(p, d, NOBODY, NOBODY), &Outcome::Connected);
        }
    }
}

#[test]
fn reject_and_drop_look_as_documented() {
    if !common::need_root() {
        return;
    }
    // .20: rejected the way leash compiles `deny_with = "reject"`; .30: dropped;
    // .40: icmpx admin-prohibited for TCP too.
    let lab = lab(&["192.0.2.20", "2001:db8::20", "192.0.2.30", "2001:db8::30", "192.0.2.40"]);
    common::nft(
        lab.client(),
        r#"
table inet t {
  chain out {
    type filter hook output priority 0; policy accept;
    ip daddr 192.0.2.20 meta l4proto tcp reject with tcp reset
    ip6 daddr 2001:db8::20 meta l4proto tcp reject with tcp reset
    ip daddr 192.0.2.20 reject with icmpx admin-prohibited
    ip6 daddr 2001:db8::20 reject with icmpx admin-prohibited
    ip daddr 192.0.2.30 drop
    ip6 daddr 2001:db8::30 drop
    ip daddr 192.0.2.40 reject with icmpx admin-prohibited
  }
}
"#,
    );
    let unreach = |e: &str| Outcome::Unreachable(e.to_string());
    let table = [
        (Proto::Tcp, "192.0.2.20", Outcome::Refused),
        (Proto::Tcp, "2001:db8::20", Outcome::Refused),
        (Proto::Udp, "192.0.2.20", unreach("EHOSTUNREACH")),
        (Proto::Udp, "2001:db8::20", unreach("EACCES")),
        (Proto::Icmp, "192.0.2.20", unreach("EHOSTUNREACH")),
        (Proto::Icmpv6, "2001:db8::20", unreach("EACCES")),
        (Proto::Tcp, "192.0.2.30", Outcome::TimedOut),
        (Proto::Tcp, "2001:db8::30", Outcome::TimedOut),
        (Proto::Udp, "192.0.2.30", Outcome::NotPermitted),
        (Proto::Udp, "2001:db8::30", Outcome::NotPermitted),
        (Proto::Icmp, "192.0.2.30", Outcome::NotPermitted),
        // ping over IPv6 ignores the error of its own send, so a drop is only a timeout.
        (Proto::Icmpv6, "2001:db8::30", Outcome::TimedOut),
        (Proto::Tcp, "192.0.2.40", unreach("EHOSTUNREACH")),
    ];
    std::thread::scope(|s| {
        for (p, d, want) in &table {
            let lab = &lab;
            // In parallel, so the drops wait together.
            s.spawn(move || {
                for (uid, gid) in [(0, 0), (NOBODY, NOBODY)] {
                    check(lab, &case(*p, d, uid, gid), want);
                }
            });
        }
    });
}

#[test]
fn skuid_and_skgid_rules_see_the_probes_user() {
    if !common::need_root() {
        return;
    }
    let lab = lab(&["192.0.2.10", "2001:db8::10"]);
    common::nft(
        lab.client(),
        r#"
table inet t {
  chain out {
    type filter hook output priority 0; policy accept;
    meta skuid 65534 meta l4proto tcp reject with tcp reset
    meta skuid 65534 reject with icmpx admin-prohibited
    meta skgid 4242 meta l4proto tcp reject with tcp reset
  }
}
"#,
    );
    for d in ["192.0.2.10", "2001:db8::10"] {
        check(&lab, &case(Proto::Tcp, d, 0, 0), &Outcome::Connected);
        check(&lab, &case(Proto::Tcp, d, 1000, 1000), &Outcome::Connected);
        check(&lab, &case(Proto::Tcp, d, NOBODY, NOBODY), &Outcome::Refused);
        check(&lab, &case(Proto::Tcp, d, 1000, 4242), &Outcome::Refused);
        check(&lab, &case(Proto::Udp, d, 0, 0), &Outcome::Connected);
        let want = Outcome::Unreachable(if d.contains(':') { "EACCES" } else { "EHOSTUNREACH" }.into());
        check(&lab, &case(Proto::Udp, d, NOBODY, NOBODY), &want);
        check(&lab, &case(icmp_for(d), d, NOBODY, NOBODY), &want);
    }
}

#[test]
fn bad_cases_are_probe_errors_not_verdicts() {
    if !common::need_root() {
        return;
    }
    let lab = lab(&["192.0.2.10"]);
    let no_port = Case { proto: Proto::Tcp, dst: ip("192.0.2.10"), port: None, uid: 0, gid: 0, name: None, cgroup: None };
    assert!(matches!(lab.probe(&no_port, TIMEOUT), Outcome::Error(_)));
    let wrong_family = case(Proto::Icmpv6, "192.0.2.10", 0, 0);
    assert!(matches!(lab.probe(&wrong_family, TIMEOUT), Outcome::Error(_)));
    // A port the peer does not listen on: the peer's own kernel refuses (TCP reset, ICMP port
    // unreachable), which is a denial in the lab's terms; expectations only use listened ports.
    let closed = Case { proto: Proto::Tcp, dst: ip("192.0.2.10"), port: Some(9), uid: 0, gid: 0, name: None, cgroup: None };
    assert_eq!(lab.probe(&closed, TIMEOUT), Outcome::Refused);
}

#[test]
fn unusable_destinations_are_refused_up_front() {
    for bad in ["0.0.0.0", "ff02::1", "fe80::1"] {
        let err = Lab::new(&[ip(bad)], &[TCP], &[]).unwrap_err();
        assert!(err.to_string().contains(bad), "{err}");
    }
}

#[test]
fn the_first_connection_after_setup_needs_no_retransmit() {
    if !common::need_root() {
        return;
    }
    // A lost SYN or neighbour solicitation costs a one-second retransmit, more than TIMEOUT:
    // this fails if Lab::new returns before both links and all addresses are really usable.
    for _ in 0..20 {
        let lab = lab(&["2001:db8::10", "192.0.2.10"]);
        check(&lab, &case(Proto::Tcp, "2001:db8::10", 0, 0), &Outcome::Connected);
        check(&lab, &case(Proto::Tcp, "192.0.2.10", 0, 0), &Outcome::Connected);
    }
}

#[test]
fn a_burst_of_rejected_datagrams_is_still_told_from_a_drop() {
    if !common::need_root() {
        return;
    }
    // The kernel rate-limits ICMP errors (net.ipv4.icmp_msgs_burst = 50, then 1000 per second;
    // IPv6 alike): past the burst, a rejected datagram's send fails with EPERM and no error
    // follows, which looks exactly like a drop. A policy with many rejected UDP and ICMP cases
    // (and the agreement test) must still see every reject as a reject.
    let dsts = ["192.0.2.20", "2001:db8::20"];
    let lab = lab(&dsts);
    common::nft(
        lab.client(),
        r#"
table inet t {
  chain out {
    type filter hook output priority 0; policy accept;
    ip daddr 192.0.2.20 reject with icmpx admin-prohibited
    ip6 daddr 2001:db8::20 reject with icmpx admin-prohibited
  }
}
"#,
    );
    let unreach = |e: &str| Outcome::Unreachable(e.to_string());
    let mut wrong = Vec::new();
    for round in 0..100 {
        for (p, d, want) in [
            (Proto::Udp, "192.0.2.20", unreach("EHOSTUNREACH")),
            (Proto::Udp, "2001:db8::20", unreach("EACCES")),
            (Proto::Icmp, "192.0.2.20", unreach("EHOSTUNREACH")),
        ] {
            let c = case(p, d, 0, 0);
            let got = lab.probe(&c, TIMEOUT);
            if got != want {
                wrong.push(format!("round {round}: {c}: got {}", got.describe()));
            }
        }
    }
    assert!(wrong.is_empty(), "{} of 300 rejects looked like something else:\n{}", wrong.len(), wrong.join("\n"));
}
