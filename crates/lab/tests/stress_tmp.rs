use lab::{Case, Lab};
use policy::Proto;
use std::net::IpAddr;
use std::time::{Duration, Instant};
#[test]
fn stress() {
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for round in 0..15 {
                    let a: IpAddr = "2001:db8::10".parse().unwrap();
                    let b: IpAddr = "192.0.2.10".parse().unwrap();
                    let lab = Lab::new(&[a, b], &[8080], &[5300]).unwrap();
                    for (p, d, port) in [(Proto::Tcp, a, Some(8080)), (Proto::Tcp, b, Some(8080)), (Proto::Icmpv6, a, None)] {
                        let c = Case { proto: p, dst: d, port, uid: 0, gid: 0 };
                        let t0 = Instant::now();
                        let o = lab.probe(&c, Duration::from_secs(4));
                        if t0.elapsed() > Duration::from_millis(50) {
                            let mut msg = format!("t{t} round {round} {c}: {o:?} in {:?}\n", t0.elapsed());
                            for ns in [lab.client(), lab.peer()] {
                                let out = std::process::Command::new("nsenter").arg(format!("--net={}", ns.path().display())).args(["sh", "-c", "nstat -az | grep -v ' 0 ' | grep -E 'Ip6|Icmp6|Tcp'; ip -6 neigh"]).output().unwrap();
                                msg += &String::from_utf8_lossy(&out.stdout);
                                msg += "----\n";
                            }
                            println!("{msg}");
                        }
                    }
                }
            });
        }
    });
}
