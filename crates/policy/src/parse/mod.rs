//! Policy text -> validated `Policy`, reporting every error with the span it is about.
//!
//! The document is walked by hand over `toml_edit`'s span-keeping tree instead of going through
//! serde: serde stops at the first problem and cannot point at an unknown key, while an operator
//! fixing a policy wants all errors at once, each at the exact key or value that is wrong.
//!
//! `walk` goes through the document (the top level, `[defaults]`, `[dns]`, `[[set]]`,
//! `[countries]`), `rule` and `expect` through one `[[rule]]` or `[[expect]]`, and `values` holds
//! the parser's state and reads single values. `resolve` is the one step that asks the host, through
//! the `Resolver`: the files of sets and of the country database, cgroup ids, user and group names.

mod expect;
mod resolve;
mod rule;
mod values;
mod walk;

pub use walk::load;
