//! Rendered diagnostics of a few broken policies (tests/broken/*.toml), as snapshots: what an
//! operator really sees, reviewed once and kept from drifting.

mod common;

use common::users;
use policy::{Date, diag, lint, load};

fn rendered(file: &str) -> String {
    let path = format!("{}/tests/broken/{file}", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).unwrap();
    let (policy, mut diags) = load(&src, &users());
    if let Some(p) = &policy {
        diags.extend(lint::lint(p, Date { year: 2026, month: 5, day: 1 }));
    }
    diags.iter().map(|d| diag::render(file, &src, d)).collect()
}

#[test]
fn typos() {
    insta::assert_snapshot!(rendered("typos.toml"));
}

#[test]
fn values() {
    insta::assert_snapshot!(rendered("values.toml"));
}

#[test]
fn expects() {
    insta::assert_snapshot!(rendered("expects.toml"));
}

#[test]
fn syntax() {
    insta::assert_snapshot!(rendered("syntax.toml"));
}

#[test]
fn lints() {
    insta::assert_snapshot!(rendered("lints.toml"));
}
