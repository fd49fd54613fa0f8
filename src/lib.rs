//! provision-worker: takes GPU provisioning requests off Kafka and carries each one
//! through its life in SQLite or PostgreSQL (`pending -> provisioning -> completed |
//! failed`).
//!
//! # Layout
//! - `config`: environment and `.env`, defaults, validation; `DATABASE_URL` parsing and
//!   password masking (`config/database.rs`).
//! - `exposure`: what an allowed configuration still leaves exposed, warned about at start.
//! - `cli`: the command line (`run`, `--help`, `--version`, and the operator commands).
//! - `logging`: log lines in the Python worker's format.
//! - `request`: one provisioning request, validated once from the raw message bytes.
//! - `kubeconfig`: rendering the mock kubeconfig (pure).
//! - `store`: the state transitions as named functions behind one interface, database errors
//!   sorted in one place, durability before commits; two backends, SQLite (the default) and
//!   PostgreSQL (schemas from `sql/`).
//! - `provision`: what a worker does with one request.
//! - `pipeline`: the poller thread, the worker pool, the offset tracker; `run`.
//! - `signals`: SIGTERM/SIGINT/SIGHUP: one graceful shutdown per request, signals arriving
//!   together counted once, a deliberate second one exits at once.
//! - `tools`: the operator commands (`send`, `status`, `check`, `offsets`).
//! - `metrics`: counters, gauges and histograms on atomics, and the optional HTTP listener
//!   (`METRICS_ADDR`) serving `/metrics` and `/healthz`.
//!
//! The Kafka client is a crate of its own, `blocking_kafka` (crates/blocking-kafka): group
//! membership, fetch, commits, produce, TLS and SASL. It knows nothing about provisioning,
//! and the compiler holds it to that: it cannot name anything of this crate. So is the
//! PostgreSQL client, `blocking_postgres` (crates/blocking-postgres), which only `store`
//! uses.
//!
//! Dependencies point one way: `main` → `pipeline` → (`blocking_kafka`, `provision` →
//! (`store`, `kubeconfig`, `request`)). `blocking_kafka` and `store` never import each other.
pub mod cli;
pub mod config;
pub mod exposure;
pub mod kubeconfig;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod provision;
pub mod request;
pub mod signals;
pub mod store;
pub mod tools;
