//! Fuzzes the forwarder's message handling: the client query parser, and upstream responses
//! (against fixed queries, under a small fixed policy) through matching, the CNAME walk, the
//! rebinding guard (with embedded IPv4), the stripping of address records off the chain, TTL
//! capping and the per-client patching of stored answers. Nothing may
//! panic, and the answers must keep the invariants clients and the firewall rely on.
#![no_main]

use dns::message::{self, Query};
use dns::rules::{self, RuleSets, Rules};
use dns::wire::{self, Header, Name, rtype};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

const POLICY: &str = r#"
version = 1

[dns]
upstreams = ["127.0.0.1:53"]

[[rule]]
name = "refused"
action = "deny"
to = ["blocked.example.test"]

[[rule]]
name = "api"
action = "allow"
proto = "tcp"
ports = [443]
to = ["api.example.test", "*.cdn.example.test"]

[[rule]]
name = "lan"
action = "allow"
to = ["nas.example.test"]
allow_private = true
"#;

const OWN: [IpAddr; 1] = [IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 254))];

fn rules() -> &'static Rules {
    static R: OnceLock<Rules> = OnceLock::new();
    R.get_or_init(|| {
        let (p, diags) = policy::load(POLICY, &policy::StaticResolver::default());
        let p = Arc::new(p.unwrap_or_else(|| panic!("{diags:?}")));
        let sets = p.rules.iter().map(|r| Some(RuleSets { v4: format!("{}4", r.name).into(), v6: format!("{}6", r.name).into() })).collect();
        Rules::new(p, sets)
    })
}

/// The fixed queries responses are matched against: (wire query, is it guarded by an allow rule
/// without allow_private).
fn queries() -> &'static [(Vec<u8>, bool)] {
    static Q: OnceLock<Vec<(Vec<u8>, bool)>> = OnceLock::new();
    Q.get_or_init(|| {
        [("api.example.test", rtype::A, true), ("x.cdn.example.test", rtype::AAAA, true), ("nas.example.test", rtype::A, false)]
            .into_iter()
            .map(|(n, t, guarded)| (message::build_query(0x4242, &Name::from_dotted(n).unwrap(), t), guarded))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    client_query(data);
    if data.is_empty() {
        return;
    }
    // First byte: which fixed query, and whether the rest is a whole response or only its
    // records (behind a valid header and question, so the fuzzer reaches the record walk).
    let (sel, rest) = (data[0], &data[1..]);
    let (qbytes, guarded) = &queries()[usize::from(sel % 3)];
    let q = message::parse_query(qbytes).unwrap();
    if sel & 0x80 == 0 {
        upstream_response(&q, *guarded, rest, sel);
    } else if rest.len() >= 6 {
        let mut resp = qbytes[..q.question_end].to_vec();
        resp[2] = 0x81 | (rest[0] & 0x06); // QR, RD, maybe TC/AA
        resp[3] = 0x80 | (rest[1] & 0x03); // RA, rcode 0..3
        resp[6..12].copy_from_slice(&[0, rest[2] & 0x1f, 0, rest[3] & 0x07, 0, rest[4] & 0x07]);
        resp.extend_from_slice(&rest[5..]);
        upstream_response(&q, *guarded, &resp, sel);
    }
});

fn client_query(data: &[u8]) {
    let Ok(q) = message::parse_query(data) else { return };
    assert!(q.question_end <= data.len());
    assert!(q.max_udp() >= 512);
    let _ = q.key();
    let _ = rules().decide(&q.qname);
    let mut out = Vec::new();
    // The query sent upstream must itself be a valid query for the same question.
    message::upstream_query(&q, 7, &mut out);
    let up = message::parse_query(&out).expect("upstream query parses");
    assert_eq!(up.asked(), q.asked());
    for code in [wire::rcode::SERVFAIL, wire::rcode::NXDOMAIN] {
        message::error_answer(&q, code, &mut out);
        let h = Header::parse(&out).unwrap();
        assert_eq!((h.id, h.rcode(), h.qdcount), (q.id, code, 1));
        assert!(message::check_response(&q.asked(), &out).is_ok());
    }
}

fn upstream_response(q: &Query<'_>, guarded: bool, resp: &[u8], sel: u8) {
    // The raw walkers on their own.
    if let Some(h) = Header::parse(resp) {
        if let Some(qu) = wire::read_question(resp, wire::HEADER_LEN) {
            let _ = wire::read_records(resp, &h, qu.end);
        }
    }
    if message::check_response(&q.asked(), resp).is_err() {
        return;
    }
    let decision = rules().decide(&q.qname);
    let Ok(outcome) = rules::process(rules(), &decision, q, resp, &OWN, 3600) else { return };
    let p = &outcome.prepared;
    for &(off, _) in &p.ttls {
        assert!(off as usize + 4 <= p.bytes.len());
    }
    // Every planned element is an address of the answer, and none the guard blocked.
    for i in &outcome.inserts {
        assert!(p.addrs.iter().any(|(a, _)| *a == i.addr));
        assert!(!outcome.blocked.iter().any(|b| b.addr == i.addr));
    }
    for age in [0u32, 1, u32::from(sel), u32::MAX] {
        for (max_len, client) in [(512usize, q.clone()), (65535, with_edns(q))] {
            let mut out = Vec::new();
            message::write_answer(p, &client, age, max_len, &mut out);
            let h = Header::parse(&out).expect("answer has a header");
            assert_eq!(h.id, client.id);
            if out.len() > max_len {
                panic!("answer of {} bytes for a {max_len} byte client", out.len());
            }
            if h.flags & wire::TC != 0 && h.ancount == 0 {
                continue;
            }
            // What the client receives: its chain ends in no guarded address (also none behind
            // an embedding of a private or own IPv4 address), it holds no address record off
            // the chain, and no TTL exceeds max_ttl.
            let a = message::analyze(&out, &client.qname).expect("our answer parses");
            assert!(a.off_chain.is_empty(), "address records off the CNAME chain reached the client");
            for f in &a.addrs {
                assert!(f.ttl <= 3600);
                if guarded {
                    assert!(
                        !policy::dns::is_rebinding_target(f.addr) && !policy::dns::is_own_address(f.addr, &OWN),
                        "{} reached the client",
                        f.addr
                    );
                }
            }
            for rr in &a.records {
                if rr.rtype != rtype::OPT {
                    assert!(rr.ttl <= 3600);
                }
            }
            if client.edns.is_none() {
                assert!(a.opt.is_none());
            }
        }
    }
}

/// The same query from a client that advertised EDNS (4096 bytes).
fn with_edns<'a>(q: &Query<'a>) -> Query<'a> {
    let mut c = q.clone();
    c.edns = Some(message::ClientEdns { udp_size: 4096, dnssec_ok: false });
    c
}
