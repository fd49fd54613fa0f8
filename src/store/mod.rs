//! The store. Moved here from `src/store.rs` unchanged; split by concern in the commits
//! that follow.
mod group;
mod sqlite;

pub use sqlite::*;
