mod common;
use kernel::netns::NetNs;
#[test]
fn scratch_dump_scaling() {
    for n in [25_000u32, 50_000, 100_000, 200_000] {
        let (table, _) = common::big_v4(n);
        let ns = NetNs::new().unwrap();
        let r = ns.run(|| kernel::apply(&table, &Default::default())).unwrap();
        let t = std::time::Instant::now();
        let s = ns.run(kernel::status).unwrap().unwrap();
        eprintln!("n={n} send+ack {:?} verify {:?} status {:?} count {}", r.send_and_ack, r.verify, t.elapsed(), s.sets[0].elements);
    }
}
