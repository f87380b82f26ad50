//! viewkeeper keeps a PostgreSQL database's views and materialized views equal to a set of
//! declaration files, whatever migrations do to them.
//!
//! Data flows one way: [`project`] (files) → [`graph`] → [`catalog`] (live database) →
//! [`plan`] (a pure value) → [`apply`]. Only the two ends do IO; [`commands`] is the edge
//! that prints.

pub mod apply;
pub mod catalog;
pub mod cli;
pub mod color;
pub mod commands;
pub mod compile;
pub mod db;
pub mod error;
pub mod graph;
pub mod guard;
pub mod import;
pub mod in_sync;
pub mod name;
pub mod objects;
pub mod plan;
pub mod project;
pub mod refresh;
pub mod render;
pub mod sandbox;
pub mod saved_plan;
mod sql;
pub mod state;
pub mod status;
pub mod waits;

pub use commands::{Status, run};
