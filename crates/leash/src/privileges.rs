//! Running as the DNS forwarder's own user: `leash dns` starts as root (or as that user with the
//! two capabilities, as the systemd unit starts it), binds its sockets, and keeps only
//! CAP_NET_ADMIN (netlink writes to the sets, SO_MARK) and CAP_NET_BIND_SERVICE (port 53).
//!
//! Why its own user: the ruleset lets DNS out to the upstreams only from sockets of that uid
//! (`meta skuid`), since neither the mark (CAP_NET_RAW sets it since Linux 5.17) nor uid 0 (a
//! `docker run --network host` container is uid 0 with CAP_NET_RAW) proves anything.

use anyhow::{Context, Result, bail};
use rustix::thread::{CapabilitySet, CapabilitySets};

/// What the forwarder keeps.
pub const FORWARDER_CAPS: CapabilitySet = CapabilitySet::NET_ADMIN.union(CapabilitySet::NET_BIND_SERVICE);

/// Who the process is now, as far as dropping goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Effective uid 0: it can become the forwarder's user.
    Root,
    /// Already the forwarder's user (systemd's `User=` with `AmbientCapabilities=`).
    AsUser,
}

/// Whether this process may run as the forwarder of `uid`: root, or `uid` itself holding
/// CAP_NET_ADMIN. The message says what is missing otherwise.
pub fn check_start(uid: u32) -> Result<Start> {
    let euid = nix::unistd::geteuid().as_raw();
    if euid == 0 {
        return Ok(Start::Root);
    }
    if euid != uid {
        bail!(
            "leash dns runs as uid {euid}, but its queries are let out only from the forwarder's user (uid {uid}): \
             start it as root (it then becomes that user) or as that user"
        );
    }
    let caps = rustix::thread::capabilities(None).context("cannot read the process's capabilities")?;
    if !caps.permitted.contains(CapabilitySet::NET_ADMIN) {
        bail!("leash dns runs as the forwarder's user without CAP_NET_ADMIN (it writes nftables sets): start it with AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE");
    }
    Ok(Start::AsUser)
}

/// The gid to run with: the user's primary group if the system knows the uid, else the same
/// number (a uid given as a number in `[dns] user` need not be in /etc/passwd).
pub fn primary_gid(uid: u32) -> u32 {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map_or(uid, |u| u.gid.as_raw())
}

/// Becomes `uid`/`gid` with no supplementary groups, keeping only [`FORWARDER_CAPS`] (effective
/// and permitted; the bounding set holds nothing else, no ambient capability, no new privileges
/// on exec). Must be called while the process has one thread: capabilities are per thread, and
/// threads started later inherit what this one has.
pub fn become_forwarder(start: Start, uid: u32, gid: u32) -> Result<()> {
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(1);
    if threads != 1 {
        bail!("internal error: dropping privileges with {threads} threads running");
    }
    if start == Start::Root {
        // Still CAP_SETPCAP: empty the bounding set of everything else first.
        for bit in 0..64 {
            let cap = CapabilitySet::from_bits_retain(1 << bit);
            if !FORWARDER_CAPS.contains(cap) {
                // EINVAL for numbers this kernel does not know: nothing to drop.
                let _ = rustix::thread::remove_capability_from_bounding_set(cap);
            }
        }
        rustix::thread::set_keep_capabilities(true).context("prctl(PR_SET_KEEPCAPS)")?;
        nix::unistd::setgroups(&[]).context("setgroups")?;
        let g = nix::unistd::Gid::from_raw(gid);
        nix::unistd::setresgid(g, g, g).with_context(|| format!("setresgid({gid})"))?;
        let u = nix::unistd::Uid::from_raw(uid);
        nix::unistd::setresuid(u, u, u).with_context(|| format!("setresuid({uid})"))?;
        rustix::thread::set_keep_capabilities(false).context("prctl(PR_SET_KEEPCAPS)")?;
    }
    rustix::thread::set_capabilities(
        None,
        CapabilitySets { effective: FORWARDER_CAPS, permitted: FORWARDER_CAPS, inheritable: CapabilitySet::empty() },
    )
    .context("capset: keeping CAP_NET_ADMIN and CAP_NET_BIND_SERVICE")?;
    rustix::thread::clear_ambient_capability_set().context("prctl(PR_CAP_AMBIENT_CLEAR_ALL)")?;
    rustix::thread::set_no_new_privs(true).context("prctl(PR_SET_NO_NEW_PRIVS)")?;
    // What it became, checked rather than assumed.
    let caps = rustix::thread::capabilities(None).context("cannot read the capabilities back")?;
    if nix::unistd::getuid().as_raw() != uid || nix::unistd::geteuid().as_raw() != uid || caps.effective != FORWARDER_CAPS || caps.permitted != FORWARDER_CAPS {
        bail!("dropping privileges left uid {} with capabilities {:?}", nix::unistd::geteuid(), caps.effective);
    }
    Ok(())
}
