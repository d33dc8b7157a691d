//! The facts of the host a policy needs (users, groups, files, cgroups) as the [`Resolver`] trait
//! the caller implements, and [`StaticResolver`], such a database given as a table, for tests,
//! benchmarks and tools that must not depend on the host's `/etc/passwd`.

/// Resolves user and group names to numeric ids. The binary implements it over the system's user
/// database; tests implement it over a fixed table.
pub trait Resolver {
    fn user(&self, name: &str) -> Option<u32>;
    fn group(&self, name: &str) -> Option<u32>;
    /// The primary group of a user id, used when an expectation names a user but no group.
    fn primary_group(&self, uid: u32) -> Option<u32>;
    /// The contents of a file the policy names (a `[[set]]` file, the country database), as
    /// written in the policy: the binary resolves it relative to the policy's directory.
    fn read_file(&self, path: &str) -> Result<Vec<u8>, String> {
        Err(format!("{path}: files cannot be read here"))
    }
    /// Where nft finds the cgroup v2 hierarchy, relative to `/sys/fs/cgroup`: `Some("")` on a
    /// cgroup2-only host, `Some("unified")` on a hybrid one, `None` when cgroup v2 is not mounted.
    fn cgroup2_prefix(&self) -> Option<String> {
        None
    }
    /// The kernel's id (the inode number) of a cgroup v2 directory given relative to the cgroup v2
    /// root, or `None` when it does not exist.
    fn cgroup_id(&self, _path: &str) -> Option<u64> {
        None
    }
}

/// Users (name, uid, primary gid) and groups (name, gid), looked up by exact name.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    users: Vec<(String, u32, Option<u32>)>,
    groups: Vec<(String, u32)>,
    files: Vec<(String, Vec<u8>)>,
    cgroup_prefix: Option<String>,
    cgroups: Vec<(String, u64)>,
}

impl StaticResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a user with its primary group (`None`: the primary group is unknown).
    pub fn user(mut self, name: &str, uid: u32, primary_gid: Option<u32>) -> Self {
        self.users.push((name.to_string(), uid, primary_gid));
        self
    }

    /// Adds a group.
    pub fn group(mut self, name: &str, gid: u32) -> Self {
        self.groups.push((name.to_string(), gid));
        self
    }

    /// Adds a file the policy may name.
    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((path.to_string(), contents.into()));
        self
    }

    /// Says where cgroup v2 is mounted (see [`Resolver::cgroup2_prefix`]).
    pub fn cgroup2(mut self, prefix: &str) -> Self {
        self.cgroup_prefix = Some(prefix.to_string());
        self
    }

    /// Adds an existing cgroup v2 directory (relative to the cgroup v2 root) with its id.
    pub fn cgroup(mut self, path: &str, id: u64) -> Self {
        self.cgroups.push((path.trim_matches('/').to_string(), id));
        self
    }

    /// The accounts every Debian system has, with Debian's fixed ids: root, www-data, backup,
    /// _apt, nobody; groups root, users, nogroup. Plus `leash-dns` (998, the id systemd-sysusers
    /// typically gives the forwarder's user from contrib/sysusers.d/leash.conf).
    pub fn debian_base() -> Self {
        Self::new()
            .user("root", 0, Some(0))
            .user("www-data", 33, Some(33))
            .user("backup", 34, Some(34))
            .user("_apt", 42, Some(65534))
            .user("nobody", 65534, Some(65534))
            .user("leash-dns", 998, Some(998))
            .group("root", 0)
            .group("users", 100)
            .group("nogroup", 65534)
    }
}

impl Resolver for StaticResolver {
    fn user(&self, name: &str) -> Option<u32> {
        self.users.iter().find(|u| u.0 == name).map(|u| u.1)
    }
    fn group(&self, name: &str) -> Option<u32> {
        self.groups.iter().find(|g| g.0 == name).map(|g| g.1)
    }
    fn primary_group(&self, uid: u32) -> Option<u32> {
        self.users.iter().find(|u| u.1 == uid).and_then(|u| u.2)
    }
    fn read_file(&self, path: &str) -> Result<Vec<u8>, String> {
        self.files.iter().find(|f| f.0 == path).map(|f| f.1.clone()).ok_or_else(|| format!("{path}: no such file"))
    }
    fn cgroup2_prefix(&self) -> Option<String> {
        self.cgroup_prefix.clone()
    }
    fn cgroup_id(&self, path: &str) -> Option<u64> {
        self.cgroups.iter().find(|c| c.0 == path.trim_matches('/')).map(|c| c.1)
    }
}
