//! The active policy: the file the applied table's comment names (`leash sha256:HASH PATH`),
//! read again. What `conns`, `log`, `top`, `watch` and `metrics` judge the live host by.

use crate::load::{self, Loaded};
use kernel::Firewall;

/// What looking for the active policy found.
#[derive(Debug)]
pub enum Active {
    /// There is no table `inet leash` in this network namespace.
    NoTable,
    /// The table could not be read.
    TableUnreadable(kernel::Error),
    /// The table's comment names no policy file (not leash's comment, or a path too long to keep).
    NoPolicyFile,
    /// The file named cannot be read.
    Unreadable { path: String, error: anyhow::Error },
    /// The file has errors now.
    HasErrors { path: String },
    /// The policy, loaded again.
    Policy(Box<ActivePolicy>),
}

/// The active policy as the file is now, and whether it is what was applied.
#[derive(Debug)]
pub struct ActivePolicy {
    /// The path the comment names.
    pub path: String,
    /// The (possibly shortened) hash in the comment.
    pub applied_hash: String,
    pub loaded: Loaded,
    pub policy: policy::Policy,
}

impl ActivePolicy {
    /// Whether the file changed since it was applied: its rules are then not the kernel's.
    pub fn changed_since_apply(&self) -> bool {
        !load::same_hash(&self.loaded.sha256, &self.applied_hash)
    }
}

impl Active {
    /// The policy, when there is one without errors.
    pub fn policy(self) -> Option<policy::Policy> {
        match self {
            Active::Policy(a) => Some(a.policy),
            _ => None,
        }
    }
}

/// The hash and the path in a table comment written by [`Loaded::table_comment`]; the path is
/// `None` when the comment holds only the hash.
pub fn comment_fields(comment: &str) -> Option<(&str, Option<&str>)> {
    let (hash, path) = observe::metrics::parse_table_comment(comment)?;
    Some((hash, (!path.is_empty()).then_some(path)))
}

/// Finds the active policy: the table's comment, then the file it names, loaded again.
pub fn find(fw: &dyn Firewall) -> Active {
    match fw.table_info() {
        Ok(Some(info)) => from_table(&info),
        Ok(None) => Active::NoTable,
        Err(e) => Active::TableUnreadable(e),
    }
}

/// The policy of the table described by `info` (its handle and comment, read by the caller):
/// the file the comment names, loaded again.
pub fn from_table(info: &kernel::TableInfo) -> Active {
    let Some((hash, Some(path))) = info.comment.as_deref().and_then(comment_fields) else {
        return Active::NoPolicyFile;
    };
    let (hash, path) = (hash.to_string(), path.to_string());
    let loaded = match load::load(std::path::Path::new(&path), crate::system::today()) {
        Ok(l) => l,
        Err(error) => return Active::Unreadable { path, error },
    };
    match loaded.policy.clone() {
        Some(policy) => Active::Policy(Box::new(ActivePolicy { path, applied_hash: hash, loaded, policy })),
        None => Active::HasErrors { path },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeFirewall;

    #[test]
    fn comments_give_hash_and_path() {
        assert_eq!(comment_fields("leash sha256:abc /etc/p.toml"), Some(("abc", Some("/etc/p.toml"))));
        assert_eq!(comment_fields("leash sha256:abc"), Some(("abc", None)));
        assert_eq!(comment_fields("leash sha256:"), None);
        assert_eq!(comment_fields("something else"), None);
    }

    #[test]
    fn the_active_policy_is_the_file_the_comment_names() {
        assert!(matches!(find(&FakeFirewall::empty()), Active::NoTable));

        let dir = std::env::temp_dir().join(format!("leash-active-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.toml");
        std::fs::write(&file, "version = 1\n[defaults]\noutbound = \"allow\"\n").unwrap();
        let l = load::load(&file, crate::system::today()).unwrap();
        let mut table = FakeFirewall::table_with_sets(&[]);
        table.comment = Some(l.table_comment());
        let fw = FakeFirewall::with_table(&table, 1);
        let Active::Policy(a) = find(&fw) else { panic!("no active policy") };
        assert_eq!(a.path, std::fs::canonicalize(&file).unwrap().display().to_string());
        assert!(!a.changed_since_apply());

        std::fs::write(&file, "version = 1\n[defaults]\noutbound = \"deny\"\n").unwrap();
        let Active::Policy(a) = find(&fw) else { panic!("no active policy") };
        assert!(a.changed_since_apply(), "the file changed since the apply");

        std::fs::write(&file, "version = 1\n[defaults]\noutbound = \"maybe\"\n").unwrap();
        assert!(matches!(find(&fw), Active::HasErrors { .. }));

        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(find(&fw), Active::Unreadable { .. }));

        table.comment = Some("hand-made".into());
        assert!(matches!(find(&FakeFirewall::with_table(&table, 2)), Active::NoPolicyFile));
    }
}
