//! Benchmark: `leash apply` of a policy with 100,000 destination addresses against `nft -f` of the
//! script `leash compile` prints for the same policy (the same table), in the same run.
//!
//! ```sh
//! sudo cargo bench -p leash --bench apply                     # 5 rounds, both variants
//! sudo cargo bench -p leash --bench apply -- --rounds 9 --variant hosts
//! LEASH_BENCH_ROUNDS=3 cargo bench -p leash --bench apply     # rounds from the environment
//! ```
//!
//! Options (after `--`): `--rounds N` (default 5, or `LEASH_BENCH_ROUNDS`), `--warmup N` (untimed
//! rounds first, default 1), `--variant hosts|mixed|all` (default all), `--no-oracle` (skip the
//! final listing comparison, which dumps both large sets with `nft list table` and takes a few
//! seconds), `--keep` (keep the scratch directory with the generated policies and scripts, e.g. to
//! profile one run with `perf`).
//! `LEASH_BIN` overrides the leash binary (default: the one cargo built for this bench).
//!
//! Before every timed run the bench waits (at most 5 s) for a 100 ms window in which the CPUs are
//! idle, so that deferred kernel work of the previous run (freeing a replaced table, tearing down a
//! namespace) is not billed to the next one; the report says how many runs started without it.
//!
//! Each round, for each tool, in a namespace of its own made for that round (anonymous, held by a
//! file descriptor of this process, so it vanishes with the process however it ends), the bench
//! times the whole command as a child process (`nsenter --net=NS leash apply --json POLICY` and
//! `nsenter --net=NS nft -f SCRIPT`): once into the fresh namespace, once more on top of the table
//! that is then there (replace). The order of the tools alternates between rounds. Peak RSS of
//! each child comes from `wait4`'s rusage. After every timed run `leash status --json` checks the
//! table (comment, chain, rule count, sets); after the last round `nft list table` of both
//! namespaces must be identical and its sets must hold exactly the expected number of elements.
//! Nothing runs in the machine's own network namespace.
//!
//! Addresses: 198.18.0.0/15 (RFC 2544 benchmarking range) holds only 131,072 IPv4 addresses, so
//! at most 65,536 pairwise non-adjacent ones (every other address); leash merges adjacent
//! addresses into one range, so adjacent ones would not make 100,000 elements. The 100,000
//! destinations are therefore 65,536 IPv4 (every other address of 198.18.0.0/15) and 34,464 IPv6
//! (every other address from 2001:db8:1::, documentation range): two interval sets, 100,000
//! elements in all.

mod common;

use anyhow::{Context, Result, bail, ensure};
use common::{Args, Finished, Scratch, median_f, mib, ms, ratio, run_in, settle, tool_version};
use kernel::netns::NetNs;
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const V4_BASE: u32 = 0xC612_0000; // 198.18.0.0
const V4_HOSTS: u32 = 65_536; // every other address of 198.18.0.0/15
const V6_BASE: u128 = 0x2001_0db8_0001_0000_0000_0000_0000_0000; // 2001:db8:1::
const DESTINATIONS: usize = 100_000;
/// Name of the policy rule that holds the big list.
const BIG_RULE: &str = "blocklist";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// 100,000 single addresses: 65,536 /32 + 34,464 /128, none adjacent.
    Hosts,
    /// 100,000 entries: 64 IPv4 /24 networks mixed with 65,536 /32 hosts (8,192 of them inside
    /// those networks, so merging has work to do) and 34,400 /128 hosts.
    Mixed,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Hosts => "hosts",
            Variant::Mixed => "mixed",
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Variant::Hosts => {
                "100,000 host addresses (65,536 IPv4 /32 + 34,464 IPv6 /128, none adjacent)"
            }
            Variant::Mixed => {
                "100,000 entries: 64 IPv4 /24 + 65,536 IPv4 /32 (8,192 inside the /24s) + 34,400 IPv6 /128"
            }
        }
    }
}

/// The destination list of the big rule, as the strings written into the policy.
fn destinations(v: Variant) -> Vec<String> {
    let mut out = Vec::with_capacity(DESTINATIONS + 64);
    for i in 0..V4_HOSTS {
        let addr = V4_BASE + 2 * i;
        // One /24 block holds 128 of the hosts; in the mixed variant every 8th block is also listed
        // whole, right before its first host.
        if v == Variant::Mixed && i % 128 == 0 && (i / 128) % 8 == 3 {
            out.push(format!("{}/24", Ipv4Addr::from(addr)));
        }
        out.push(Ipv4Addr::from(addr).to_string());
    }
    let v6 = DESTINATIONS - out.len();
    for i in 0..v6 as u128 {
        out.push(Ipv6Addr::from(V6_BASE + 2 * i).to_string());
    }
    assert_eq!(out.len(), DESTINATIONS);
    out
}

fn policy_text(v: Variant) -> String {
    let mut s = String::with_capacity(3 << 20);
    s.push_str(&format!(
        r#"# Generated by crates/leash/benches/apply.rs (variant {}). Documentation and benchmark ranges only.
version = 1

[defaults]
outbound = "deny"
deny_with = "reject"
log_denied = true
allow_loopback = true
allow_established = true

[[rule]]
name = "dns"
action = "allow"
proto = ["udp", "tcp"]
ports = [53]
to = ["192.0.2.53", "2001:db8::53"]
purpose = "Name resolution"

[[rule]]
name = "ntp"
action = "allow"
proto = "udp"
ports = [123]
to = ["192.0.2.123", "2001:db8::123"]
purpose = "Time synchronisation"

[[rule]]
name = "{BIG_RULE}"
action = "deny"
purpose = "Benchmark: a large destination blocklist"
to = [
"#,
        v.name()
    ));
    for d in destinations(v) {
        writeln!(s, "  \"{d}\",").unwrap();
    }
    s.push_str(
        r#"]

[[rule]]
name = "web"
action = "allow"
proto = "tcp"
ports = [80, 443]
purpose = "Outbound HTTP(S) anywhere else"
"#,
    );
    s
}

/// What a policy must become in the kernel, from the compiler itself (run in this process).
#[derive(Debug)]
struct Expected {
    comment: Option<String>,
    rules: usize,
    /// (set name, elements) for every set.
    sets: Vec<(String, usize)>,
}

impl Expected {
    fn elements(&self) -> usize {
        self.sets.iter().map(|(_, n)| n).sum()
    }
    fn big_elements(&self) -> usize {
        self.sets
            .iter()
            .filter(|(n, _)| n.starts_with(&format!("r_{BIG_RULE}_")))
            .map(|(_, n)| n)
            .sum()
    }
}

/// The in-process phases of `leash apply` before the kernel: read + hash, parse + validate, lint,
/// compile, encode (and, for comparison, rendering the nft script).
#[derive(Debug, Default, Clone)]
struct Phases {
    read_hash: Duration,
    parse: Duration,
    lint: Duration,
    compile: Duration,
    encode: Duration,
    render: Duration,
    batch_bytes: usize,
}

fn phases(path: &Path) -> Result<(Phases, ruleset::Table)> {
    let mut ph = Phases::default();
    let t = Instant::now();
    let bytes = std::fs::read(path)?;
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let src = String::from_utf8(bytes)?;
    ph.read_hash = t.elapsed();
    let t = Instant::now();
    let (p, diags) = policy::load(&src, &policy::StaticResolver::new());
    ph.parse = t.elapsed();
    let Some(p) = p else {
        bail!("generated policy does not validate: {diags:?}")
    };
    let t = Instant::now();
    let lints = policy::lint::lint(
        &p,
        policy::Date {
            year: 2026,
            month: 1,
            day: 1,
        },
    );
    ph.lint = t.elapsed();
    std::hint::black_box(lints);
    let comment = format!(
        "leash sha256:{sha} {}",
        std::fs::canonicalize(path)?.display()
    );
    let t = Instant::now();
    let table = ruleset::compile(
        &p,
        &ruleset::compile::CompileOptions {
            comment: Some(comment),
            ..Default::default()
        },
    );
    ph.compile = t.elapsed();
    let t = Instant::now();
    let batch =
        kernel::encode_apply_batch(&table, &kernel::ApplyOptions::default()).context("encoding")?;
    ph.encode = t.elapsed();
    ph.batch_bytes = batch.len();
    let t = Instant::now();
    let text = ruleset::render::nft_text(&table);
    ph.render = t.elapsed();
    std::hint::black_box(text);
    Ok((ph, table))
}

/// Checks the table in `ns` with `leash status --json`: comment, one chain with the expected rule
/// count, the expected sets. Large sets are only counted up to leash's counting limit there; their
/// exact size is checked once at the end ([`oracle`]).
fn check_status(leash: &Path, ns: &NetNs, exp: &Expected, scratch: &Path, who: &str) -> Result<()> {
    let r = run_in(ns, &[leash.as_os_str(), "status".as_ref(), "--json".as_ref()], scratch)?;
    let j: serde_json::Value = serde_json::from_str(&r.stdout).context("leash status --json")?;
    let ctx = || {
        format!(
            "after {who}: {}",
            r.stdout.chars().take(2000).collect::<String>()
        )
    };
    ensure!(j["active"] == true, "no table: {}", ctx());
    ensure!(
        j["comment"].as_str() == exp.comment.as_deref(),
        "comment differs: {}",
        ctx()
    );
    let rules: u64 = j["chains"]
        .as_array()
        .context("chains")?
        .iter()
        .map(|c| c["rules"].as_u64().unwrap_or(0))
        .sum();
    ensure!(
        rules as usize == exp.rules,
        "{rules} kernel rules, want {}: {}",
        exp.rules,
        ctx()
    );
    let sets = j["sets"].as_array().context("sets")?;
    ensure!(
        sets.len() == exp.sets.len(),
        "{} sets, want {}: {}",
        sets.len(),
        exp.sets.len(),
        ctx()
    );
    for (name, n) in &exp.sets {
        let s = sets
            .iter()
            .find(|s| s["name"] == name.as_str())
            .with_context(|| format!("set {name} missing: {}", ctx()))?;
        let got = s["elements"].as_u64().context("elements")? as usize;
        // `elements_exact` false (newer leash) = counted up to a limit; older leash counts all.
        let exact = s.get("elements_exact").is_none_or(|e| e == true);
        ensure!(
            if exact {
                got == *n
            } else {
                got <= *n && got > 0
            },
            "set {name}: {got} elements (exact: {exact}), want {n}: {}",
            ctx()
        );
    }
    Ok(())
}

/// Elements per set in an `nft list table` text listing (elements never contain `,` or `}`).
fn count_listed_elements(listing: &str) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    let mut in_elements = false;
    for line in listing.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("set ").and_then(|l| l.strip_suffix(" {")) {
            out.push((name.to_string(), 0));
            continue;
        }
        let body = if let Some(b) = t.strip_prefix("elements = {") {
            in_elements = true;
            b
        } else if in_elements {
            t
        } else {
            continue;
        };
        let (body, end) = match body.find('}') {
            Some(i) => (&body[..i], true),
            None => (body, false),
        };
        if let Some(last) = out.last_mut() {
            last.1 += body.split(',').filter(|e| !e.trim().is_empty()).count();
        }
        if end {
            in_elements = false;
        }
    }
    out
}

/// Once per variant, untimed: `nft list table inet leash` in the namespace leash applied to and
/// in the one `nft -f` loaded must be identical, and hold exactly the expected elements.
fn oracle(ns_leash: &NetNs, ns_nft: &NetNs, exp: &Expected, scratch: &Path) -> Result<Duration> {
    let t = Instant::now();
    let list = |ns: &NetNs| {
        run_in(ns, &["nft", "list", "table", "inet", "leash"], scratch)
    };
    let a = list(ns_leash)?.stdout;
    let b = list(ns_nft)?.stdout;
    let took = t.elapsed();
    if a != b {
        let first = a.lines().zip(b.lines()).position(|(x, y)| x != y);
        bail!(
            "listings differ (leash {} lines, nft {} lines; first difference at line {first:?})",
            a.lines().count(),
            b.lines().count()
        );
    }
    let counted = count_listed_elements(&a);
    let mut want = exp.sets.clone();
    want.sort();
    let mut got = counted;
    got.sort();
    ensure!(
        got == want,
        "elements per set listed {got:?}, want {want:?}"
    );
    Ok(took)
}

#[derive(Debug, Default)]
struct Series {
    wall: Vec<Duration>,
    /// Peak RSS, MiB.
    rss: Vec<f64>,
    user: Vec<Duration>,
    sys: Vec<Duration>,
}

impl Series {
    fn push(&mut self, r: &Finished) {
        self.wall.push(r.wall);
        self.rss.push(mib(r.maxrss_kib));
        self.user.push(r.user);
        self.sys.push(r.sys);
    }
}

fn wall_ms(s: &Series) -> (f64, f64, f64) {
    let v: Vec<f64> = s.wall.iter().map(|d| ms(*d)).collect();
    (
        median_f(&v),
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(0.0, f64::max),
    )
}

#[derive(Debug, Default)]
struct VariantResult {
    leash_fresh: Series,
    nft_fresh: Series,
    leash_replace: Series,
    nft_replace: Series,
    kernel_ms: Vec<f64>,
    verify_ms: Vec<f64>,
    kernel_ms_replace: Vec<f64>,
    verify_ms_replace: Vec<f64>,
    phases: Vec<Phases>,
    /// Timed runs that started although the machine was not idle (other load for 5 s).
    unsettled: usize,
}

struct Opts {
    rounds: usize,
    variants: Vec<Variant>,
    oracle: bool,
    keep: bool,
    warmup: usize,
}

fn parse_args() -> Result<Opts> {
    let mut rounds = common::args::rounds(5)?;
    let mut variants = vec![Variant::Hosts, Variant::Mixed];
    let mut oracle = true;
    let mut keep = false;
    let mut warmup = 1;
    let mut args = Args::new("--rounds N, --variant hosts|mixed|all, --warmup N, --no-oracle, --keep");
    while let Some(a) = args.flag() {
        match a.as_str() {
            "--rounds" => rounds = args.value("--rounds")?,
            "--variant" => {
                variants = match args.word().as_deref() {
                    Some("hosts") => vec![Variant::Hosts],
                    Some("mixed") => vec![Variant::Mixed],
                    Some("all") => vec![Variant::Hosts, Variant::Mixed],
                    other => bail!("--variant hosts|mixed|all, not {other:?}"),
                }
            }
            "--no-oracle" => oracle = false,
            "--keep" => keep = true,
            "--warmup" => warmup = args.value("--warmup")?,
            other => return Err(args.unknown(other)),
        }
    }
    ensure!((1..=101).contains(&rounds), "rounds must be 1..=101");
    ensure!(warmup <= 10, "warmup must be 0..=10");
    Ok(Opts {
        rounds,
        variants,
        oracle,
        keep,
        warmup,
    })
}

fn main() -> Result<()> {
    let opts = parse_args()?;
    if !common::is_root() {
        eprintln!("bench apply: needs root (network namespaces and nftables); skipped");
        return Ok(());
    }
    let leash = common::leash_bin();
    let scratch = Scratch::create(std::env::temp_dir(), "apply", opts.keep)?;
    let dir = scratch.0.clone();

    println!("leash binary: {}", leash.display());
    println!("{}", tool_version(&["nft", "--version"]));
    println!("{}", common::kernel_line());
    println!(
        "rounds: {} (after {} warm-up), variants: {:?}\n",
        opts.rounds,
        opts.warmup,
        opts.variants.iter().map(|v| v.name()).collect::<Vec<_>>()
    );

    let mut report = String::new();
    for &variant in &opts.variants {
        let policy = dir.join(format!("{}.toml", variant.name()));
        let script = dir.join(format!("{}.nft", variant.name()));
        std::fs::write(&policy, policy_text(variant))?;
        let (_, table) = phases(&policy)?;
        let exp = Expected {
            comment: table.comment.clone(),
            rules: table.chains.iter().map(|c| c.rules.len()).sum(),
            sets: table
                .sets
                .iter()
                .map(|s| (s.name.clone(), elements_of(&s.elements)))
                .collect(),
        };
        // The script nft loads, from the binary under test.
        let t = Instant::now();
        let out = Command::new(&leash)
            .arg("compile")
            .arg(&policy)
            .output()
            .context("leash compile")?;
        let compile_wall = t.elapsed();
        ensure!(
            out.status.success(),
            "leash compile failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&script, &out.stdout)?;
        println!(
            "== variant {}: {}\n   policy {:.2} MB, script {:.2} MB, {} kernel rules, {} sets, {} elements ({} in the big rule's sets); `leash compile` took {:.0} ms",
            variant.name(),
            variant.describe(),
            std::fs::metadata(&policy)?.len() as f64 / 1e6,
            out.stdout.len() as f64 / 1e6,
            exp.rules,
            exp.sets.len(),
            exp.elements(),
            exp.big_elements(),
            ms(compile_wall)
        );

        let leash_argv: Vec<OsString> = vec![
            leash.clone().into(),
            "apply".into(),
            "--json".into(),
            policy.clone().into(),
        ];
        let nft_argv: Vec<OsString> = vec!["nft".into(), "-f".into(), script.clone().into()];
        let mut res = VariantResult::default();
        let mut last: Option<(NetNs, NetNs)> = None;
        let mut warm = VariantResult::default();
        for round in 0..opts.warmup + opts.rounds {
            // Warm-up rounds (the first ones, untimed in the report) let the kernel grow its slab
            // caches and the page cache take in the binaries, policy and script.
            let warming = round < opts.warmup;
            // Namespaces of the previous round go now, and the kernel gets a moment to tear them
            // down (its cleanup work would otherwise run during the next measurement).
            drop(last.take());
            let ns_l = NetNs::new().context("new namespace")?;
            let ns_n = NetNs::new().context("new namespace")?;
            let apply_leash = |res: &mut VariantResult, replace: bool| -> Result<()> {
                res.unsettled += usize::from(!settle());
                let r = run_in(&ns_l, &leash_argv, &dir)?;
                let j: serde_json::Value =
                    serde_json::from_str(&r.stdout).context("leash apply --json")?;
                let (k, v) = (
                    j["report"]["kernel_ms"].as_f64().unwrap_or(f64::NAN),
                    j["report"]["verify_ms"].as_f64().unwrap_or(f64::NAN),
                );
                if replace {
                    res.leash_replace.push(&r);
                    res.kernel_ms_replace.push(k);
                    res.verify_ms_replace.push(v);
                } else {
                    res.leash_fresh.push(&r);
                    res.kernel_ms.push(k);
                    res.verify_ms.push(v);
                }
                check_status(&leash, &ns_l, &exp, &dir, "leash apply")
            };
            let apply_nft = |res: &mut VariantResult, replace: bool| -> Result<()> {
                res.unsettled += usize::from(!settle());
                let r = run_in(&ns_n, &nft_argv, &dir)?;
                if replace {
                    res.nft_replace.push(&r)
                } else {
                    res.nft_fresh.push(&r)
                }
                check_status(&leash, &ns_n, &exp, &dir, "nft -f")
            };
            let res = if warming { &mut warm } else { &mut res };
            if round % 2 == 0 {
                apply_leash(res, false)?;
                apply_nft(res, false)?;
                apply_leash(res, true)?;
                apply_nft(res, true)?;
            } else {
                apply_nft(res, false)?;
                apply_leash(res, false)?;
                apply_nft(res, true)?;
                apply_leash(res, true)?;
            }
            res.phases.push(phases(&policy)?.0);
            let i = res.leash_fresh.wall.len() - 1;
            println!(
                "   {} {}: fresh leash {:7.1} ms  nft {:7.1} ms | replace leash {:7.1} ms  nft {:7.1} ms",
                if warming { "warm-up" } else { "round" },
                if warming {
                    round + 1
                } else {
                    round - opts.warmup + 1
                },
                ms(res.leash_fresh.wall[i]),
                ms(res.nft_fresh.wall[i]),
                ms(res.leash_replace.wall[i]),
                ms(res.nft_replace.wall[i]),
            );
            last = Some((ns_l, ns_n));
        }
        if opts.oracle {
            let (l, n) = last.as_ref().unwrap();
            let took = oracle(l, n, &exp, &dir)?;
            println!(
                "   oracle: `nft list table inet leash` identical for both tools, {} elements listed ({:.1} s for both listings, untimed)",
                exp.elements(),
                took.as_secs_f64()
            );
        }
        drop(last.take());
        let section = render(variant, &exp, &res, opts.rounds);
        println!("\n{section}");
        report.push_str(&section);
        report.push('\n');
    }
    std::fs::write(dir.join("report.md"), &report)?;
    Ok(())
}

fn elements_of(e: &ruleset::model::SetElements) -> usize {
    e.len()
}

fn render(variant: Variant, exp: &Expected, r: &VariantResult, rounds: usize) -> String {
    let med = |v: &[Duration]| median_f(&v.iter().map(|d| ms(*d)).collect::<Vec<_>>());
    let mut s = String::new();
    writeln!(
        s,
        "### variant `{}`: {}\n\n{} elements in the big rule's two sets ({} in all sets), {} rounds.\n",
        variant.name(),
        variant.describe(),
        exp.big_elements(),
        exp.elements(),
        rounds
    )
    .unwrap();
    writeln!(s, "| run | tool | median ms | min ms | max ms | user CPU ms | sys CPU ms | peak RSS MiB | nft/leash |").unwrap();
    writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    for (what, l, n) in [
        ("fresh namespace", &r.leash_fresh, &r.nft_fresh),
        ("replace existing table", &r.leash_replace, &r.nft_replace),
    ] {
        let (lm, lmin, lmax) = wall_ms(l);
        let (nm, nmin, nmax) = wall_ms(n);
        writeln!(
            s,
            "| {what} | `leash apply` | {lm:.0} | {lmin:.0} | {lmax:.0} | {:.0} | {:.0} | {:.1} | |",
            med(&l.user),
            med(&l.sys),
            median_f(&l.rss)
        )
        .unwrap();
        writeln!(
            s,
            "| {what} | `nft -f` | {nm:.0} | {nmin:.0} | {nmax:.0} | {:.0} | {:.0} | {:.1} | {} |",
            med(&n.user),
            med(&n.sys),
            median_f(&n.rss),
            ratio(nm, lm)
        )
        .unwrap();
    }
    writeln!(
        s,
        "\n(time columns: medians of the runs except min/max; nft/leash: ratio of the median wall times, above 1 means leash is faster; {} of {} timed runs started while other load kept the machine busy)\n",
        r.unsettled,
        4 * rounds
    )
    .unwrap();
    let p = |f: fn(&Phases) -> Duration| {
        median_f(&r.phases.iter().map(|x| ms(f(x))).collect::<Vec<_>>())
    };
    writeln!(s, "Where `leash apply`'s wall time goes (medians; the first five phases measured in the bench process,").unwrap();
    writeln!(
        s,
        "kernel and read-back as `leash apply --json` reports them, the rest by difference):\n"
    )
    .unwrap();
    writeln!(s, "| phase | fresh ms | replace ms |").unwrap();
    writeln!(s, "|---|---:|---:|").unwrap();
    let rows = [
        ("read + SHA-256", p(|x| x.read_hash)),
        ("parse + validate (`policy::load`)", p(|x| x.parse)),
        ("lint", p(|x| x.lint)),
        ("compile (`ruleset::compile`)", p(|x| x.compile)),
        ("encode batch", p(|x| x.encode)),
    ];
    let mut user_sum = 0.0;
    for (name, v) in rows {
        user_sum += v;
        writeln!(s, "| {name} | {v:.1} | {v:.1} |").unwrap();
    }
    let (k, kr) = (median_f(&r.kernel_ms), median_f(&r.kernel_ms_replace));
    let (v, vr) = (median_f(&r.verify_ms), median_f(&r.verify_ms_replace));
    let rest = |wall: &[Duration], k: &[f64], v: &[f64]| {
        median_f(
            &wall
                .iter()
                .zip(k)
                .zip(v)
                .map(|((w, k), v)| ms(*w) - k - v)
                .collect::<Vec<_>>(),
        ) - user_sum
    };
    writeln!(
        s,
        "| kernel: send the batch, read the acks | {k:.1} | {kr:.1} |"
    )
    .unwrap();
    writeln!(s, "| read back + verify | {v:.1} | {vr:.1} |").unwrap();
    writeln!(
        s,
        "| rest: exec, nsenter, socket setup, JSON, exit | {:.1} | {:.1} |",
        rest(&r.leash_fresh.wall, &r.kernel_ms, &r.verify_ms),
        rest(
            &r.leash_replace.wall,
            &r.kernel_ms_replace,
            &r.verify_ms_replace
        )
    )
    .unwrap();
    writeln!(
        s,
        "| **total (median wall)** | {:.1} | {:.1} |",
        wall_ms(&r.leash_fresh).0,
        wall_ms(&r.leash_replace).0
    )
    .unwrap();
    let ph = &r.phases[0];
    writeln!(
        s,
        "\nThe batch is {:.2} MB, sent in one `sendmsg`. Rendering the nft script (`leash compile`, not part of apply) takes {:.1} ms.",
        ph.batch_bytes as f64 / 1e6,
        p(|x| x.render)
    )
    .unwrap();
    s
}
