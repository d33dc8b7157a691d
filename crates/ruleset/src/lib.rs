//! Compiles a validated policy into a model of leash's nftables table and renders it as nft text or nft JSON; pure.

pub mod compile;
pub mod model;
pub mod render;

pub use compile::{compile, domain_set_name};
pub use model::*;
