//! provision-worker: takes GPU provisioning requests off Kafka and carries each one
//! through its life in SQLite (`pending -> provisioning -> completed | failed`).
//!
//! # Layout
//! - `config`: environment and `.env`, defaults, validation, `DATABASE_URL` parsing.
//! - `cli`: the command line (`run`, `--help`, `--version`, and the operator commands).
//! - `request`: one provisioning request, validated once from the raw message bytes.
//! - `kubeconfig`: rendering the mock kubeconfig (pure).
//! - `store`: SQLite: schema from `sql/`, the pool, the state transitions as named functions.
pub mod cli;
pub mod config;
pub mod kubeconfig;
pub mod request;
pub mod store;
