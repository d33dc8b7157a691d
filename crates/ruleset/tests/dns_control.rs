//! The DNS control as compiled: where the jump into the DNS chain stands, what the forwarder's
//! exemption requires, the ports that go through the chain, and the bounded domain sets.

use ruleset::compile::{CompileOptions, DNS_CHAIN, DNS_CHAIN_PORTS_SET, DNS_FORWARDER_COMMENT, ESTABLISHED_COMMENT};
use ruleset::render::rule_text;
use ruleset::{SetElements, Table};

fn compile(dns: &str) -> Table {
    let src = format!(
        "version = 1\n[dns]\n{dns}\n[[rule]]\nname = \"api\"\naction = \"allow\"\nports = [443]\nto = [\"api.example.test\"]\n"
    );
    let (p, diags) = policy::load(&src, &policy::StaticResolver::debian_base());
    let p = p.unwrap_or_else(|| panic!("{diags:#?}"));
    ruleset::compile(&p, &CompileOptions::default())
}

fn chain_texts(t: &Table, name: &str) -> Vec<String> {
    t.chains.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no chain {name}")).rules.iter().map(rule_text).collect()
}

#[test]
fn every_dns_packet_is_checked_before_the_established_fast_path() {
    // Issue 12, item 5: an established flow to port 53 must not skip the DNS control.
    let t = compile("upstreams = [\"192.0.2.53\"]");
    let out = chain_texts(&t, "output");
    let jump = out.iter().position(|r| r.contains("jump dns")).expect("a jump into the DNS chain");
    let est = out.iter().position(|r| r.contains(ESTABLISHED_COMMENT)).unwrap();
    assert!(jump < est, "{out:#?}");
    assert_eq!(out[jump], "th dport @dns_chain_ports jump dns comment \"@dns-control\"");
    let dns = chain_texts(&t, DNS_CHAIN);
    assert_eq!(dns[0], "ct direction reply return comment \"@dns-reply\"");
}

#[test]
fn the_forwarders_exemption_needs_mark_user_upstream_address_and_port() {
    // Issue 12, item 4: not any marked packet to any address on 53/853.
    let t = compile("upstreams = [\"192.0.2.53\", \"[2001:db8::53]:5300\"]\nuser = 64999\nmark = 7");
    let exempt: Vec<String> = chain_texts(&t, DNS_CHAIN).into_iter().filter(|r| r.contains(DNS_FORWARDER_COMMENT)).collect();
    assert_eq!(
        exempt,
        vec![
            "meta mark 0x00000007 meta skuid 64999 ip daddr 192.0.2.53 udp dport 53 counter accept comment \"@dns-forwarder\"",
            "meta mark 0x00000007 meta skuid 64999 ip daddr 192.0.2.53 tcp dport 53 counter accept comment \"@dns-forwarder\"",
            "meta mark 0x00000007 meta skuid 64999 ip6 daddr 2001:db8::53 udp dport 5300 counter accept comment \"@dns-forwarder\"",
            "meta mark 0x00000007 meta skuid 64999 ip6 daddr 2001:db8::53 tcp dport 5300 counter accept comment \"@dns-forwarder\"",
        ]
    );
    // The upstream's own port goes through the chain (else its new flows would meet the policy's
    // rules first), and the redirect target too.
    let ports = t.sets.iter().find(|s| s.name == DNS_CHAIN_PORTS_SET).unwrap();
    assert_eq!(ports.elements, SetElements::Ports(vec![(53, 53), (853, 853), (5300, 5300)]));
    // Nothing anywhere accepts by the mark alone.
    for c in &t.chains {
        for r in c.rules.iter().map(rule_text) {
            if r.contains("meta mark 0x00000007 ") && r.ends_with("accept comment \"@dns-forwarder\"") {
                assert!(r.contains("meta skuid 64999") && r.contains("daddr"), "{r}");
            }
        }
    }
}

#[test]
fn without_a_known_forwarder_user_no_query_is_exempt() {
    let t = compile("upstreams = [\"192.0.2.53\"]\nuser = \"no-such-user\"");
    let dns = chain_texts(&t, DNS_CHAIN);
    assert!(!dns.iter().any(|r| r.contains(DNS_FORWARDER_COMMENT)), "{dns:#?}");
    assert!(dns.iter().any(|r| r.contains("@dns-bypass")), "{dns:#?}");
}

#[test]
fn bypass_off_keeps_the_exemption_and_denies_nothing() {
    let t = compile("upstreams = [\"192.0.2.53:5353\"]\nbypass = \"off\"");
    let dns = chain_texts(&t, DNS_CHAIN);
    assert!(dns.iter().any(|r| r.contains("meta skuid 998 ip daddr 192.0.2.53 udp dport 5353")), "{dns:#?}");
    assert!(!dns.iter().any(|r| r.contains("@dns-bypass")), "{dns:#?}");
    assert!(!t.chains.iter().any(|c| c.name == ruleset::compile::DNS_REDIRECT_CHAIN));
}

#[test]
fn domain_sets_are_bounded_by_set_size() {
    // Issue 12, item 15: a domain set has a size bound.
    let t = compile("upstreams = [\"192.0.2.53\"]\nset_size = 2048");
    for name in ["r_api_d4", "r_api_d6"] {
        let s = t.sets.iter().find(|s| s.name == name).unwrap();
        assert_eq!(s.size, Some(2048), "{name}");
    }
    let text = ruleset::render::nft_text(&t);
    assert!(text.contains("set r_api_d4 {\n\t\ttype ipv4_addr\n\t\tsize 2048\n\t\tflags timeout\n"), "{text}");
    let t = compile("upstreams = [\"192.0.2.53\"]");
    assert_eq!(t.sets.iter().find(|s| s.name == "r_api_d4").unwrap().size, Some(policy::DEFAULT_SET_SIZE));
}
