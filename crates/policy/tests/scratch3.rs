mod common;
#[test]
fn big() {
    let mut src = String::from("version = 1\n");
    for r in 0..20 {
        src.push_str(&format!("[[rule]]\nname = \"r{r}\"\naction = \"allow\"\nports = [53]\nto = ["));
        for i in 0..100_000u32 {
            let a = std::net::Ipv4Addr::from(0x0a000000 + i * 2 + r);
            src.push_str(&format!("\"{a}\","));
        }
        src.push_str("]\n");
    }
    let t = std::time::Instant::now();
    let (p, d) = common::load(&src);
    println!("load {:?} {} bytes {}", t.elapsed(), src.len(), d.len());
    let p = p.unwrap();
    let t = std::time::Instant::now();
    let l = policy::lint::lint(&p, policy::Date { year: 2026, month: 1, day: 1 });
    println!("lint {:?} {}", t.elapsed(), l.len());
    let t = std::time::Instant::now();
    let c = policy::Connection { proto: policy::Proto::Udp, dst: "10.9.9.9".parse().unwrap(), port: Some(53), uid: 0, gid: 0 };
    policy::explain(&p, &c);
    println!("explain {:?}", t.elapsed());
}
