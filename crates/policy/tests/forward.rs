//! `[forward]`, `from` and forwarded `[[expect]]`s: what they parse to, every mistake as an error at
//! its position, and how `explain` decides forwarded connections (the forward chain's order).

mod common;

use common::{errors, load_ok, one_error};
use policy::{Action, Connection, Decider, ForwardMode, Forwarded, Proto, explain};

fn fwd(dst: &str, port: u16, src: &str, iif: Option<&str>) -> Connection {
    Connection {
        proto: Proto::Tcp,
        dst: dst.parse().unwrap(),
        port: Some(port),
        uid: 0,
        gid: 0,
        name: None,
        cgroup: None,
        at: None,
        from: Some(Forwarded { src: src.parse().unwrap(), iif: iif.map(Into::into), oif: Some("eth0".into()) }),
    }
}

fn host(dst: &str, port: u16) -> Connection {
    Connection { from: None, ..fwd(dst, port, "192.0.2.1", None) }
}

#[test]
fn defaults_govern_the_usual_container_bridges() {
    let p = load_ok("version = 1\n");
    assert_eq!(p.forward.mode, ForwardMode::Govern);
    let names: Vec<String> = p.forward.interfaces.iter().map(|i| i.to_string()).collect();
    assert_eq!(names, ["docker0", "br-*", "podman*", "virbr*", "lxcbr*", "cni*"]);
    assert!(p.forward.sources.is_empty());
    assert!(p.is_workload("198.18.0.2".parse().unwrap(), Some("br-1a2b3c")));
    assert!(!p.is_workload("198.18.0.2".parse().unwrap(), Some("eth0")));
}

#[test]
fn forward_section_and_from_parse() {
    let p = load_ok(
        "version = 1\n[forward]\nmode = \"govern\"\ninterfaces = [\"vmbr*\"]\nsources = [\"10.8.0.0/24\", \"2001:db8:8::/48\"]\n\
         [[rule]]\nname = \"a\"\naction = \"allow\"\nfrom = [\"198.18.0.0/16\", \"docker0\", \"eth1.100\", \"2001:db8::5\"]\n\
         [[expect]]\nto = \"192.0.2.1:443\"\nfrom = \"198.18.0.2\"\nverdict = \"allow\"\n\
         [[expect]]\nto = \"[2001:db8::1]:443\"\nfrom = \"2001:db8:8::2\"\niif = \"tap0\"\nverdict = \"deny\"\n",
    );
    let f = p.rules[0].cond.from.as_ref().unwrap();
    assert_eq!(f.nets.len(), 2);
    let ifaces: Vec<String> = f.interfaces.iter().map(|i| i.to_string()).collect();
    assert_eq!(ifaces, ["docker0", "eth1.100"]);
    // The workload interfaces are [forward]'s and the rules' `from`s; so are the sources.
    let all: Vec<String> = p.workload_interfaces().iter().map(|i| i.to_string()).collect();
    assert_eq!(all, ["vmbr*", "docker0", "eth1.100"]);
    assert_eq!(p.workload_sources().len(), 4);
    // Without `iif` an expectation enters on an example of the first pattern.
    assert_eq!(p.expects[0].iif.as_deref(), Some("vmbr0"));
    assert_eq!(p.expects[1].iif.as_deref(), Some("tap0"));
    assert_eq!(p.expects[1].from, Some("2001:db8:8::2".parse().unwrap()));
}

#[test]
fn mistakes_are_errors_at_their_position() {
    one_error("version = 1\n[forward]\nmode = \"govrn\"\n", 3, 8, "bad-value", "expected `govern` or `ignore`");
    one_error("version = 1\n[forward]\ninterfaces = [\"bad/name\"]\n", 3, 15, "bad-interface", "invalid interface `bad/name`");
    one_error("version = 1\n[forward]\ninterfaces = [\"*\"]\n", 3, 15, "bad-interface", "invalid interface `*`");
    one_error("version = 1\n[forward]\ninterfaces = [\"averyveryverylongname\"]\n", 3, 15, "bad-interface", "1 to 15");
    one_error("version = 1\n[forward]\nsources = [\"10.0.0.1/8\"]\n", 3, 12, "host-bits-set", "10.0.0.0/8");
    one_error("version = 1\n[forward]\nsurces = []\n", 3, 1, "unknown-key", "sources");
    one_error("version = 1\nforward = 1\n", 2, 11, "wrong-type", "[forward]");
    let rule = |extra: &str| format!("version = 1\n[[rule]]\nname = \"r\"\naction = \"allow\"\n{extra}");
    one_error(&rule("from = [\"10.0.0.300\"]\n"), 5, 9, "bad-address", "10.0.0.300");
    one_error(&rule("from = [\"eth*0\"]\n"), 5, 9, "bad-from", "or an address or CIDR");
    one_error(&rule("from = [7]\n"), 5, 9, "wrong-type", "interface name");
    one_error(&rule("from = [\"docker0\"]\nuser = 0\n"), 6, 8, "from-with-socket", "`user` cannot go with `from` (line 5)");
    let e = errors(&rule("from = [\"docker0\"]\nservice = \"nginx\"\n"));
    assert!(e.iter().any(|f| (f.0, f.1, f.2) == (6, 11, "from-with-socket") && f.3.contains("`service`/`cgroup`")), "{e:?}");
    one_error(
        &rule("from = [\"docker0\"]\nrate = \"1/second\"\nlimit_per = \"user\"\n"),
        7,
        13,
        "from-with-socket",
        "`limit_per = \"user\"` cannot go with `from`",
    );
    one_error(
        &format!("{}[forward]\nmode = \"ignore\"\n", rule("from = [\"docker0\"]\n")),
        5,
        8,
        "from-not-governed",
        "mode = \"ignore\" (line 7)",
    );
    let expect = |extra: &str| format!("version = 1\n[[expect]]\nto = \"192.0.2.1:443\"\nverdict = \"allow\"\n{extra}");
    one_error(&expect("from = \"nope\"\n"), 5, 8, "bad-address", "workload's source address");
    one_error(&expect("from = \"127.0.0.1\"\n"), 5, 8, "bad-address", "cannot be the source");
    one_error(&expect("from = \"2001:db8::2\"\n"), 5, 8, "expect-family", "different address families");
    one_error(&expect("iif = \"docker0\"\n"), 5, 7, "bad-value", "only for forwarded expectations");
    one_error(&expect("from = \"198.18.0.2\"\niif = \"br-*\"\n"), 6, 7, "bad-interface", "is a pattern");
    one_error(&expect("from = \"198.18.0.2\"\nuser = \"root\"\n"), 6, 1, "from-with-socket", "not from a local process");
    one_error(
        "version = 1\n[[expect]]\nto = \"127.0.0.1:443\"\nverdict = \"allow\"\nfrom = \"198.18.0.2\"\n",
        3,
        6,
        "bad-address",
        "cannot go to a loopback address",
    );
    // Several mistakes at once are all reported.
    assert_eq!(errors(&rule("from = [\"a b\", \"10.0.0.1/8\"]\n")).len(), 2);
}

#[test]
fn explain_follows_the_forward_chain() {
    let p = load_ok(
        "version = 1\n[forward]\ninterfaces = [\"docker0\"]\nsources = [\"203.0.113.0/24\"]\n\
         [dns]\nupstreams = [\"192.0.2.53\"]\n\
         [[rule]]\nname = \"mine\"\naction = \"allow\"\nports = [443]\nuser = 0\n\
         [[rule]]\nname = \"containers\"\naction = \"allow\"\nports = [8443]\nfrom = [\"docker0\"]\n\
         [[rule]]\nname = \"named\"\naction = \"allow\"\nports = [443]\nto = [\"api.example.test\"]\n",
    );
    let decider = |c: &Connection| {
        let e = explain(&p, c);
        (e.verdict, e.decider)
    };
    // A container: the user rule passes it by, its own rule allows 8443, the default denies 443.
    assert_eq!(decider(&fwd("192.0.2.10", 8443, "198.18.0.2", Some("docker0"))), (Action::Allow, Decider::Rule(1)));
    let e = explain(&p, &fwd("192.0.2.10", 443, "198.18.0.2", Some("docker0")));
    assert_eq!((e.verdict, e.decider), (Action::Deny, Decider::Default));
    assert!(e.misses[0].1.to_string().contains("no local socket to match `user`"), "{}", e.misses[0].1);
    // The host: its user rule allows, and `from` is not for it.
    assert_eq!(decider(&host("192.0.2.10", 443)), (Action::Allow, Decider::Rule(0)));
    let e = explain(&p, &host("192.0.2.10", 8443));
    assert_eq!(e.verdict, Action::Deny);
    assert!(e.misses[1].1.to_string().contains("host's own connection"), "{}", e.misses[1].1);
    // Not a workload: left alone. To a workload source: left alone.
    assert_eq!(decider(&fwd("192.0.2.10", 22, "198.18.0.2", Some("eth1"))), (Action::Allow, Decider::NotGoverned));
    assert_eq!(decider(&fwd("203.0.113.9", 22, "198.18.0.2", Some("docker0"))), (Action::Allow, Decider::BetweenWorkloads));
    let mut out_to_workload = fwd("192.0.2.10", 22, "198.18.0.2", Some("docker0"));
    out_to_workload.from.as_mut().unwrap().oif = Some("docker0".into());
    assert_eq!(decider(&out_to_workload), (Action::Allow, Decider::BetweenWorkloads));
    // A workload by its source network, on any interface.
    assert_eq!(decider(&fwd("192.0.2.10", 22, "203.0.113.5", Some("tap9"))), (Action::Deny, Decider::Default));
    // DNS from a workload is denied even under redirect (the host's is redirected).
    let mut dns = fwd("192.0.2.53", 53, "198.18.0.2", Some("docker0"));
    dns.proto = Proto::Udp;
    assert_eq!(decider(&dns), (Action::Deny, Decider::DnsBypass));
    let mut host_dns = host("192.0.2.53", 53);
    host_dns.proto = Proto::Udp;
    assert_eq!(decider(&host_dns), (Action::Allow, Decider::DnsRedirect));
    // Domain sets are shared: a container's connection to an answered address is allowed.
    let mut named = fwd("192.0.2.80", 443, "198.18.0.2", Some("docker0"));
    named.name = Some("api.example.test".into());
    assert_eq!(decider(&named), (Action::Allow, Decider::Rule(2)));
    // Forwarded traffic is not governed at all under mode = "ignore".
    let ignore = load_ok("version = 1\n[forward]\nmode = \"ignore\"\n");
    assert_eq!(explain(&ignore, &fwd("192.0.2.10", 22, "198.18.0.2", Some("docker0"))).decider, Decider::NotGoverned);
    let summary = policy::forward::summary(&ignore);
    assert!(summary.contains("not governed"), "{summary}");
    let summary = policy::forward::summary(&p);
    assert!(summary.contains("entering on docker0 or from 203.0.113.0/24"), "{summary}");
    assert!(summary.contains("except `mine`"), "{summary}");
    assert!(summary.contains("DNS to port 53 and 853 is denied"), "{summary}");
}
