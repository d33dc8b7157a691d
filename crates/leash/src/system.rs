//! The system's user database as a `policy::Resolver`, and other facts read from the host.

use nix::unistd::{Group, Uid, User};

/// Resolves names with the C library (NSS: /etc/passwd, LDAP, ... whatever the host uses).
#[derive(Debug, Default)]
pub struct SystemResolver;

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
}

/// The name of a user id, if the system knows one.
pub fn user_name(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
}

/// Today's date in UTC, for the review lint.
pub fn today() -> policy::Date {
    jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).date().into()
}

/// Whether the process may change nftables (effective uid 0; CAP_NET_ADMIN alone is not detected).
pub fn is_root() -> bool {
    Uid::effective().is_root()
}
