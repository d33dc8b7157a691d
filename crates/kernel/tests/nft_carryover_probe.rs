use kernel::netns::NetNs;
use kernel::testutil::{need_root, nft_load};
use kernel::{SetWriter, TimedElement};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[test]
fn probe_concurrent() {
    if !need_root("probe") { return; }
    let ns = NetNs::new().unwrap();
    nft_load(&ns, "table inet leash {\n set d { type ipv4_addr; flags timeout; }\n set e { type ipv4_addr; flags timeout; }\n}\n");
    let n: u32 = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(20000);
    let elems: Vec<TimedElement> = (0..n).map(|i| TimedElement { set: "d", addr: std::net::Ipv4Addr::from(0x0a00_0000 + i).into(), timeout_ms: 600_000 }).collect();
    let mut w = ns.run(SetWriter::open).unwrap();
    let t = Instant::now();
    w.add_timed("leash", &elems).unwrap();
    eprintln!("add {n}: {:?}", t.elapsed());
    for k in 0..8 {
        if k == 4 { std::thread::sleep(std::time::Duration::from_millis(1000)); }
        let t = Instant::now();
        let v = ns.run(|| kernel::timed_elements("leash", "d")).unwrap().unwrap();
        eprintln!("dump {}: {:?}", v.len(), t.elapsed());
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0u32;
            let mut w = ns.run(SetWriter::open).unwrap();
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                // both into the dumped set and into another set
                w.add_timed("leash", &[TimedElement { set: if i % 2 == 0 { "d" } else { "e" }, addr: std::net::Ipv4Addr::from(0xc000_0000 + i).into(), timeout_ms: 600_000 }]).unwrap();
            }
            eprintln!("writer added {i}");
        });
        for _ in 0..10 {
            let t = Instant::now();
            let r = ns.run(|| kernel::timed_elements("leash", "d"));
            eprintln!("concurrent dump: {:?} in {:?}", r.map(|v| v.map(|v| v.len())), t.elapsed());
        }
        stop.store(true, Ordering::Relaxed);
    });
}
