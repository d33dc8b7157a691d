//! The system's user database as a `policy::Resolver`, and other facts read from the host.

use nix::unistd::{Group, Uid, User};

/// Resolves names with the C library (NSS: /etc/passwd, LDAP, ... whatever the host uses), reads
/// the files a policy names relative to the policy's directory, and looks cgroups up in the host's
/// cgroup v2 hierarchy.
#[derive(Debug, Default)]
pub struct SystemResolver {
    /// The directory relative file names are read from (the policy file's directory).
    pub base_dir: Option<std::path::PathBuf>,
}

impl SystemResolver {
    /// A resolver reading files relative to the directory of `policy`.
    pub fn for_policy(policy: &std::path::Path) -> Self {
        SystemResolver { base_dir: policy.parent().map(|d| if d.as_os_str().is_empty() { ".".into() } else { d.to_path_buf() }) }
    }
}

/// Where cgroup v2 is mounted (`lab::cgroup::mount_point` reads /proc/self/mountinfo), e.g.
/// `/sys/fs/cgroup/unified` on a hybrid host; read once per process.
pub fn cgroup2_mount() -> Option<&'static std::path::Path> {
    static MOUNT: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    MOUNT.get_or_init(lab::cgroup::mount_point).as_deref()
}

impl policy::Resolver for SystemResolver {
    fn user(&self, name: &str) -> Option<u32> {
        User::from_name(name).ok().flatten().map(|u| u.uid.as_raw())
    }
    fn group(&self, name: &str) -> Option<u32> {
        Group::from_name(name).ok().flatten().map(|g| g.gid.as_raw())
    }
    fn primary_group(&self, uid: u32) -> Option<u32> {
        User::from_uid(Uid::from_raw(uid)).ok().flatten().map(|u| u.gid.as_raw())
    }
    fn read_file(&self, path: &str) -> Result<Vec<u8>, String> {
        let p = std::path::Path::new(path);
        let full = match &self.base_dir {
            Some(base) if p.is_relative() => base.join(p),
            _ => p.to_path_buf(),
        };
        std::fs::read(&full).map_err(|e| format!("{}: {e}", full.display()))
    }
    fn cgroup2_prefix(&self) -> Option<String> {
        // nft resolves `socket cgroupv2` paths below /sys/fs/cgroup only.
        cgroup2_mount().filter(|m| m.starts_with("/sys/fs/cgroup")).map(lab::cgroup::nft_prefix)
    }
    fn cgroup_id(&self, path: &str) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let dir = cgroup2_mount()?.join(path.trim_matches('/'));
        std::fs::metadata(dir).ok().filter(|m| m.is_dir()).map(|m| m.ino())
    }
}

/// A user given on the command line as a number or a name.
pub fn user_id(s: &str) -> Option<u32> {
    use policy::Resolver;
    s.parse::<u32>().ok().or_else(|| SystemResolver::default().user(s))
}

/// A group given on the command line as a number or a name.
pub fn group_id(s: &str) -> Option<u32> {
    use policy::Resolver;
    s.parse::<u32>().ok().or_else(|| SystemResolver::default().group(s))
}

/// The addresses of this network namespace's interfaces (the rebinding guard keeps them out of
/// allow sets).
pub fn own_addresses() -> Vec<std::net::IpAddr> {
    use std::net::IpAddr;
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            if let Some(v4) = s.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The name of a user id, if the system knows one.
pub fn user_name(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
}

/// The kernel's time zone, minutes west of UTC (`gettimeofday`'s `tz_minuteswest`; 0 unless
/// something called `settimeofday` with one, as hosts with the hardware clock in local time do).
/// The kernel's `meta day` uses it.
pub fn kernel_minutes_west() -> i32 {
    /// `struct timezone` of <sys/time.h> (the libc crate declares it opaque).
    #[repr(C)]
    struct Timezone {
        tz_minuteswest: libc::c_int,
        tz_dsttime: libc::c_int,
    }
    let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
    let mut tz = Timezone { tz_minuteswest: 0, tz_dsttime: 0 };
    // The system call itself: glibc's gettimeofday may zero `tz` instead of asking the kernel
    // (it does outside the vDSO path since 2.31).
    // SAFETY: both pointers are to valid, writable structs with the kernel's layout.
    let rc = unsafe {
        libc::syscall(libc::SYS_gettimeofday, &mut tv as *mut libc::timeval, &mut tz as *mut Timezone)
    };
    if rc == 0 { tz.tz_minuteswest } else { 0 }
}

/// Today's date in UTC, for the review lint.
pub fn today() -> policy::Date {
    jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).date().into()
}

/// Whether the process may change nftables (effective uid 0; CAP_NET_ADMIN alone is not detected).
pub fn is_root() -> bool {
    Uid::effective().is_root()
}
