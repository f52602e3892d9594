//! grove: one agent-task orchestrator per workspace, shared by every window.
//!
//! The binary (`src/main.rs`) is a thin wrapper around [`cli::main`]; the
//! library exists so that integration tests (schema drift, golden vectors)
//! can reach the wire types. See ARCHITECTURE.md for the map.

// All output goes through `output` (a closed stdout must not panic).
#![warn(clippy::print_stdout, clippy::print_stderr)]

#[macro_use]
pub mod output;

pub mod acp;
pub mod bench;
pub mod chaos;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod election;
pub mod lifecycle;
pub mod local_cluster;
pub mod node;
pub mod orchestrator;
pub mod paths;
pub mod primary_record;
pub mod proc;
pub mod protocol;
pub mod shim;
pub mod stats;
pub mod store;
pub mod subscriber;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;
pub mod trust;
pub mod waiter;
