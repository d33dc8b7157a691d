mod common;
use kernel::netns::NetNs;
#[test]
fn scratch_dump_scaling() {
    for n in [25_000u32, 40_000, 100_000, 1_000_000] {
        let (table, _) = common::big_v4(n);
        let ns = NetNs::new().unwrap();
        let t = std::time::Instant::now();
        let r = ns.run(|| kernel::apply(&table, &Default::default())).unwrap();
        let total = t.elapsed();
        let t = std::time::Instant::now();
        let s = ns.run(kernel::status).unwrap().unwrap();
        eprintln!("n={n} total {total:?} send+ack {:?} verify {:?} sampled {} msgs {} bytes {} status {:?} count {}", r.send_and_ack, r.verify, r.sampled_sets, r.messages, r.bytes, t.elapsed(), s.sets[0].elements);
    }
}
