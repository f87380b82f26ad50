//! viewkeeper keeps a PostgreSQL database's views and materialized views equal to a set of
//! declaration files, whatever migrations do to them.
//!
//! Data flows one way: [`project`] (files) → [`graph`] → [`catalog`] (live database) →
//! [`plan`] (a pure value) → [`apply`]. Only the two ends do IO.

pub mod graph;
pub mod name;
pub mod project;
pub mod sandbox;
mod sql;
