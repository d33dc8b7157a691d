//! The live flows a policy denies, as `leash apply` reports and (with `--cut` or `[defaults]
//! on_apply = "cut"`) ends them, and as `leash conns --policy` lists what a candidate would cut.
//!
//! Finding them is `observe::denied::survey` over a socket snapshot and the conntrack table;
//! forwarded flows (containers, VMs) are judged with the interfaces route lookups find for them
//! (`kernel::rtnl::Paths`, asked once per source and destination in a survey).
//! Ending one (see [`cut`]): its local socket is destroyed (`SOCK_DESTROY`, as `ss -K`: the
//! owner's next call fails with ECONNABORTED, a TCP peer gets a reset), then its conntrack entries
//! are deleted, so that whatever packet of the flow comes next is new to conntrack and meets the
//! new rules. A flow seen only in conntrack (an unconnected UDP socket's, or a forwarded one)
//! loses its entry; the socket, which may talk to allowed peers too, is left alone. Local UDP
//! entries without any socket are deleted as well: nothing uses them, and a later socket on the
//! same port pair would ride them past the new rules.
//!
//! A forwarded flow has no socket here: deleting its entry is the whole cut. The workload's next
//! packet meets the forward chain as new (a TCP segment of a cut connection is picked up by
//! conntrack and rejected or dropped as the policy says). A masqueraded flow (Docker's NAT) also
//! ends for the peer: its next packet reaches this host's own address with no entry to translate
//! it. A flow routed without NAT whose peer sends first is, like a local flow without
//! `SOCK_DESTROY`, taken up again by conntrack as the peer's (`nf_conntrack_tcp_loose`), which is
//! traffic into a workload and not governed; the report says so.
//!
//! On a kernel without `CONFIG_INET_DIAG_DESTROY` (probed, see
//! `kernel::sockdiag::SockDiag::destroy_supported`) only the entries are deleted. A local flow
//! then meets the new rules at its next outgoing packet (TCP gets a reset under `deny_with =
//! "reject"`), but if the peer sends first, conntrack takes the flow up again as the peer's and
//! this host's answers pass as established: the cut does not hold for it, and the report says
//! so.

use anyhow::{Context, Result};
use kernel::conntrack::{self, Conntrack};
use kernel::sockdiag::SockDiag;
use observe::conns::{self, Conn, Options};
use observe::denied::{self, DeniedFlow, Origin, Survey};
use policy::Policy;
use serde::Serialize;

/// The live flows a policy denies, and whether the conntrack table could be read.
#[derive(Debug, Default)]
pub struct Live {
    pub survey: Survey,
    /// Why the conntrack table was not read (the survey then has sockets only).
    pub conntrack_error: Option<String>,
    /// Why routes could not be looked up (forwarded flows were then judged fail closed, see
    /// `observe::denied`).
    pub routes_error: Option<String>,
    /// How long the survey took.
    pub elapsed: std::time::Duration,
}

/// Lists the sockets of this network namespace (with their processes), judges them by `policy`,
/// reads the conntrack table and finds the live flows `policy` denies.
pub fn survey(policy: &Policy) -> Result<Live> {
    let t0 = std::time::Instant::now();
    let snap = conns::snapshot(&Options::default(), Some(policy)).context("cannot list the connections of this network namespace")?;
    let mut live = survey_of(&snap.conns, policy);
    live.elapsed = t0.elapsed();
    Ok(live)
}

/// [`survey`] over sockets already listed and judged by `policy` (`leash conns` has them).
pub fn survey_of(snap: &[Conn], policy: &Policy) -> Live {
    let t0 = std::time::Instant::now();
    let (entries, conntrack_error) = match conntrack::dump() {
        Ok(e) => (Some(e), None),
        Err(e) => (None, Some(format!("cannot read the conntrack table ({e}): flows seen only there are not listed"))),
    };
    let own = crate::system::own_addresses();
    let mut paths = kernel::rtnl::Paths::new();
    let survey = denied::survey(snap, entries.as_deref(), policy, &own, &mut |src, dst| paths.path(src, dst));
    let routes_error = paths.error.map(|e| format!("cannot look up routes ({e}): forwarded flows were judged as entering on any interface"));
    Live { survey, conntrack_error, routes_error, elapsed: t0.elapsed() }
}

/// How a cut may end sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Destroy {
    /// The kernel destroys sockets (SOCK_DESTROY).
    Supported,
    /// The kernel cannot (`CONFIG_INET_DIAG_DESTROY` unset): entries only.
    Unsupported,
    /// Not asked for (`--fault-no-sock-destroy`, a testing aid imitating such a kernel).
    Disabled,
}

/// What [`cut`] did.
#[derive(Debug, Default, Serialize)]
pub struct CutReport {
    pub destroy: Option<Destroy>,
    pub sockets_destroyed: usize,
    /// Sockets that were gone by the time they were to be destroyed.
    pub sockets_gone: usize,
    pub entries_deleted: usize,
    pub entries_gone: usize,
    /// Leftover UDP entries without a socket that were deleted.
    pub leftovers_deleted: usize,
    /// What failed (the rest was still done).
    pub errors: Vec<String>,
}

/// Ends the flows of `live` (see the module docs). `destroy_sockets: false` deletes entries only.
/// Call it only once the new table is committed and verified: from then on every new packet of
/// a cut flow meets the new rules.
pub fn cut(live: &Live, destroy_sockets: bool) -> CutReport {
    let mut r = CutReport::default();
    let needs_sockets = live.survey.denied.iter().any(|f| f.socket.is_some());
    let mut diag = None;
    if needs_sockets {
        r.destroy = Some(if !destroy_sockets {
            Destroy::Disabled
        } else {
            match SockDiag::open().and_then(|mut d| d.destroy_supported().map(|ok| (d, ok))) {
                Ok((d, true)) => {
                    diag = Some(d);
                    Destroy::Supported
                }
                Ok((_, false)) => Destroy::Unsupported,
                Err(e) => {
                    r.errors.push(format!("cannot ask the kernel to destroy sockets: {e}"));
                    Destroy::Unsupported
                }
            }
        });
    }
    let mut ct = match Conntrack::open() {
        Ok(c) => Some(c),
        Err(e) => {
            r.errors.push(format!("cannot open ctnetlink: {e}"));
            None
        }
    };
    for f in &live.survey.denied {
        if let (Some(d), Some(s)) = (diag.as_mut(), &f.socket) {
            match d.destroy(s) {
                Ok(true) => r.sockets_destroyed += 1,
                Ok(false) => r.sockets_gone += 1,
                Err(e) => r.errors.push(format!("cannot destroy the socket of {}: {e}", flow_text(f))),
            }
        }
        let Some(ct) = ct.as_mut() else { continue };
        for e in &f.entries {
            match ct.delete(e) {
                Ok(true) => r.entries_deleted += 1,
                Ok(false) => r.entries_gone += 1,
                Err(err) => r.errors.push(format!("cannot delete the conntrack entry of {}: {err}", e.orig)),
            }
        }
    }
    if let Some(ct) = ct.as_mut() {
        for e in &live.survey.leftovers {
            match ct.delete(e) {
                Ok(true) => r.leftovers_deleted += 1,
                Ok(false) => {}
                Err(err) => r.errors.push(format!("cannot delete the leftover conntrack entry of {}: {err}", e.orig)),
            }
        }
    }
    r
}

/// `tcp 192.0.2.1:40000 -> 198.51.100.7:22`.
pub fn flow_text(f: &DeniedFlow) -> String {
    format!("{} {} -> {}", f.proto, f.local, f.remote)
}

/// One line per denied flow: the flow, its owner and process, what decided, and how it exists.
pub fn flow_lines(live: &Live) -> Vec<String> {
    live.survey
        .denied
        .iter()
        .map(|f| {
            let user = f.user.clone().or_else(|| f.uid.map(|u| u.to_string())).unwrap_or_else(|| "-".into());
            let process = match (f.pid, &f.comm) {
                (Some(p), Some(c)) => format!("{p}/{c}"),
                (Some(p), None) => p.to_string(),
                _ => "-".into(),
            };
            let how = match f.origin {
                Origin::Socket => format!("socket {}", f.state.unwrap_or("-")),
                Origin::Conntrack => "conntrack entry of an unconnected socket".into(),
                Origin::Forwarded => {
                    let iif = match (&f.iif, &f.judged_iif) {
                        (Some(i), _) => i.clone(),
                        (None, Some(j)) => format!("? (judged as entering on {j})"),
                        (None, None) => "? (judged without an interface)".into(),
                    };
                    format!("forwarded {iif} -> {}, conntrack entry", f.oif.as_deref().unwrap_or("?"))
                }
            };
            format!("  {}  {user}  {process}  by {}  [{how}]", flow_text(f), f.decider_text())
        })
        .collect()
}

/// At most this many flows are listed one by one in `leash apply`'s text (`--json` has all).
const APPLY_LINES: usize = 100;

/// The flow lines, the first [`APPLY_LINES`] of them and a count of the rest.
fn capped_lines(live: &Live) -> Vec<String> {
    let mut lines = flow_lines(live);
    if lines.len() > APPLY_LINES {
        let more = lines.len() - APPLY_LINES;
        lines.truncate(APPLY_LINES);
        lines.push(format!("  ... and {more} more (`leash apply --json` lists every one)"));
    }
    lines
}

/// What happens to the listed flows when they are not cut, in one sentence.
pub fn left_running(p: &Policy) -> &'static str {
    if p.defaults.allow_established {
        "they keep running until they close (allow_established lets their packets through); their next connect is denied"
    } else {
        "with allow_established = false their next packet is denied"
    }
}

/// The lines `leash apply` prints about live flows: the list, then what was done.
pub fn apply_text(live: &Live, cut: Option<&CutReport>, p: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    for e in live.conntrack_error.iter().chain(&live.routes_error) {
        out.push(format!("warning: {e}"));
    }
    let s = &live.survey;
    if s.undecided > 0 {
        out.push(format!(
            "warning: {} outgoing connection(s) not judged: the policy has service or cgroup rules and their process is not visible",
            s.undecided
        ));
    }
    let n = s.denied.len();
    match cut {
        None => {
            if n == 0 {
                out.push("live connections: none that the new policy denies".into());
                return out;
            }
            out.push(format!("live connections the new policy denies: {n} (listed after the commit)"));
            out.extend(capped_lines(live));
            out.push(format!("{}; `leash apply --cut` ends them (on_apply = \"report\")", left_running(p)));
        }
        Some(r) => {
            if n == 0 && r.leftovers_deleted == 0 {
                out.push("live connections: none that the new policy denies, nothing cut".into());
            } else {
                out.push(format!("cut {n} live connection(s) the new policy denies:"));
                out.extend(capped_lines(live));
                out.push(format!(
                    "{} socket(s) destroyed ({} gone already), {} conntrack entries deleted ({} gone already), {} leftover UDP entries without a socket deleted",
                    r.sockets_destroyed, r.sockets_gone, r.entries_deleted, r.entries_gone, r.leftovers_deleted
                ));
            }
            if s.denied.iter().any(|f| f.origin == Origin::Forwarded) {
                out.push(
                    "note: a forwarded flow's cut is the deletion of its conntrack entry: the workload's next packet meets the new rules; \
                     a flow routed without NAT whose peer sends first is taken up again by conntrack as the peer's (not governed)"
                        .into(),
                );
            }
            match r.destroy {
                Some(Destroy::Unsupported) | Some(Destroy::Disabled) => out.push(
                    "warning: this kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY): only their conntrack entries were deleted. \
                     Their next outgoing packet meets the new rules, but a peer that sends first takes the flow up again \
                     and this host's answers pass as established; end those processes or restart their connections"
                        .into(),
                ),
                _ => {}
            }
            for e in &r.errors {
                out.push(format!("error: {e}"));
            }
        }
    }
    out
}

/// The JSON `leash apply` prints under `live_connections`.
pub fn apply_json(live: &Live, mode: policy::OnApply, cut: Option<&CutReport>) -> serde_json::Value {
    serde_json::json!({
        "mode": match mode { policy::OnApply::Report => "report", policy::OnApply::Cut => "cut" },
        "denied": live.survey.denied,
        "undecided": live.survey.undecided,
        "leftover_entries": live.survey.leftovers.len(),
        "conntrack_error": live.conntrack_error,
        "routes_error": live.routes_error,
        "survey_ms": live.elapsed.as_secs_f64() * 1000.0,
        "cut": cut,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel::conntrack::{Entry, L4, Tuple};

    fn flow(origin: Origin) -> DeniedFlow {
        DeniedFlow {
            origin,
            proto: "tcp",
            local: "192.0.2.1:40000".parse().unwrap(),
            remote: "198.51.100.7:22".parse().unwrap(),
            state: Some("ESTABLISHED"),
            uid: Some(1000),
            user: Some("alice".into()),
            pid: Some(42),
            comm: Some("ssh".into()),
            rule: None,
            decided_by: "default",
            iif: None,
            oif: None,
            judged_iif: None,
            socket: None,
            entries: Vec::new(),
        }
    }

    fn policy(text: &str) -> Policy {
        let (p, d) = policy::load(text, &policy::StaticResolver::default());
        p.unwrap_or_else(|| panic!("{d:?}"))
    }

    #[test]
    fn the_report_lists_each_flow_and_says_what_happens_to_it() {
        let p = policy("version = 1\n");
        let live = Live { survey: Survey { denied: vec![flow(Origin::Socket)], leftovers: Vec::new(), undecided: 0 }, ..Live::default() };
        let text = apply_text(&live, None, &p);
        assert_eq!(
            text,
            vec![
                "live connections the new policy denies: 1 (listed after the commit)".to_string(),
                "  tcp 192.0.2.1:40000 -> 198.51.100.7:22  alice  42/ssh  by (default)  [socket ESTABLISHED]".to_string(),
                "they keep running until they close (allow_established lets their packets through); their next connect is denied; \
                 `leash apply --cut` ends them (on_apply = \"report\")"
                    .to_string(),
            ]
        );
        let none = apply_text(&Live::default(), None, &p);
        assert_eq!(none, vec!["live connections: none that the new policy denies".to_string()]);

        let r = CutReport { destroy: Some(Destroy::Unsupported), entries_deleted: 1, ..CutReport::default() };
        let text = apply_text(&live, Some(&r), &p);
        assert_eq!(text[0], "cut 1 live connection(s) the new policy denies:");
        assert!(text[2].starts_with("0 socket(s) destroyed (0 gone already), 1 conntrack entries deleted"), "{text:#?}");
        assert!(text[3].starts_with("warning: this kernel cannot destroy sockets"), "{text:#?}");

        let j = apply_json(&live, policy::OnApply::Cut, Some(&r));
        assert_eq!(j["mode"], "cut");
        assert_eq!(j["denied"][0]["origin"], "socket");
        assert_eq!(j["denied"][0]["remote"], "198.51.100.7:22");
        assert_eq!(j["cut"]["destroy"], "unsupported");
        assert_eq!(j["cut"]["entries_deleted"], 1);
    }

    #[test]
    fn a_long_list_is_cut_short_in_text() {
        let live = Live { survey: Survey { denied: vec![flow(Origin::Socket); 250], ..Survey::default() }, ..Live::default() };
        let text = apply_text(&live, None, &policy("version = 1\n"));
        assert_eq!(text.len(), 1 + APPLY_LINES + 2, "{text:#?}");
        assert_eq!(text[APPLY_LINES + 1], "  ... and 150 more (`leash apply --json` lists every one)");
        assert_eq!(apply_json(&live, policy::OnApply::Report, None)["denied"].as_array().unwrap().len(), 250);
    }

    #[test]
    fn forwarded_and_conntrack_flows_say_how_they_exist() {
        let mut f = flow(Origin::Forwarded);
        (f.iif, f.oif) = (Some("docker0".into()), Some("eth0".into()));
        f.entries.push(Entry {
            orig: Tuple { src: "10.0.0.2".parse().unwrap(), dst: "198.51.100.7".parse().unwrap(), proto: 6, l4: L4::Ports { src: 1, dst: 22 } },
            reply: Tuple { src: "198.51.100.7".parse().unwrap(), dst: "10.0.0.2".parse().unwrap(), proto: 6, l4: L4::Ports { src: 22, dst: 1 } },
            id: 1,
            zone: 0,
            mark: 0,
            status: 0,
            timeout: 1,
            tcp_state: Some(3),
        });
        let mut unknown = f.clone();
        (unknown.iif, unknown.judged_iif) = (None, Some("br-0".into()));
        let live = Live {
            survey: Survey { denied: vec![f, flow(Origin::Conntrack), unknown], leftovers: Vec::new(), undecided: 2 },
            conntrack_error: Some("no".into()),
            routes_error: Some("no routes".into()),
            ..Live::default()
        };
        let text = apply_text(&live, None, &policy("version = 1\n[defaults]\nallow_established = false\n"));
        assert_eq!(text[..2], ["warning: no".to_string(), "warning: no routes".to_string()]);
        assert!(text[2].contains("2 outgoing connection(s) not judged"), "{text:#?}");
        assert!(text[4].ends_with("[forwarded docker0 -> eth0, conntrack entry]"), "{text:#?}");
        assert!(text[5].ends_with("[conntrack entry of an unconnected socket]"), "{text:#?}");
        assert!(text[6].ends_with("[forwarded ? (judged as entering on br-0) -> eth0, conntrack entry]"), "{text:#?}");
        assert!(text[7].starts_with("with allow_established = false their next packet is denied"), "{text:#?}");
        let j = apply_json(&live, policy::OnApply::Report, None);
        assert_eq!((j["denied"][0]["iif"].as_str(), j["denied"][0]["oif"].as_str()), (Some("docker0"), Some("eth0")));
        assert_eq!((j["denied"][2]["iif"].as_str(), j["denied"][2]["judged_iif"].as_str()), (None, Some("br-0")));
        assert_eq!(j["routes_error"], "no routes");
        // Cut: the note on what deleting a forwarded flow's entry does.
        let r = CutReport { destroy: None, entries_deleted: 2, ..CutReport::default() };
        let text = apply_text(&live, Some(&r), &policy("version = 1\n"));
        assert!(text.iter().any(|l| l.starts_with("note: a forwarded flow's cut is the deletion of its conntrack entry")), "{text:#?}");
    }
}
