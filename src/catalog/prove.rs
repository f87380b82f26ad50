//! The compile step's execution: the plan's new queries compiled on the server as
//! temporary views (see [`crate::compile`]), so `plan` can say whether reconcile would apply.

use tokio_postgres::Transaction;

use crate::apply::{ApplyError, StatementError, statement_error};
use crate::plan::{Plan, Statement};
use crate::project::Project;

/// The first compiled statement the server refused, and why.
pub struct Refusal {
    statements: Vec<Statement>,
    index: usize,
    error: tokio_postgres::Error,
}

impl Refusal {
    /// It gave up waiting for a lock (on what the query reads): not the query's fault.
    pub fn timed_out(&self) -> bool {
        crate::waits::timed_out(&self.error)
    }

    /// Not the query's fault at all (a lock, a cancel, a deadlock, a lost connection):
    /// the server's message, without the query's place.
    pub fn not_the_query(&self) -> Option<String> {
        crate::apply::is_transient(&self.error).then(|| crate::db::describe(&self.error))
    }

    /// The statement refused.
    pub fn statement(&self) -> &Statement {
        &self.statements[self.index]
    }

    /// As reconcile reports a rejected statement: file, line, column, and why.
    pub fn into_error(self) -> ApplyError {
        ApplyError::Statement(Box::new(self.into_statement_error()))
    }

    /// [`Refusal::into_error`]'s statement error.
    pub fn into_statement_error(self) -> StatementError {
        statement_error(&self.statements, self.index, &self.error)
    }
}

/// Proves that `plan` applies: compiles every query it creates as a temporary view, in
/// plan order, inside `transaction` (which the caller rolls back). The statements are
/// pipelined; the first one the server refuses is returned.
pub async fn prove(
    transaction: &Transaction<'_>,
    project: &Project,
    plan: &Plan,
) -> Result<(), Refusal> {
    let statements = crate::compile::compile_statements(plan, project);
    if statements.is_empty() {
        return Ok(());
    }
    let outcomes = futures_util::future::join_all(
        statements
            .iter()
            .map(|statement| transaction.query_typed(&statement.sql, &[])),
    )
    .await;
    let refused = outcomes
        .into_iter()
        .enumerate()
        .find_map(|(index, outcome)| outcome.err().map(|error| (index, error)));
    match refused {
        Some((index, error)) => Err(Refusal {
            statements,
            index,
            error,
        }),
        None => Ok(()),
    }
}
