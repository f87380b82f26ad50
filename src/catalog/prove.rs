//! The compile step's execution: the plan's new queries compiled on the server as
//! temporary views (see [`crate::compile`]), so `plan` can say whether reconcile would apply.

use tokio_postgres::Transaction;

use crate::apply::{ApplyError, statement_error};
use crate::plan::Plan;
use crate::project::Project;

/// Proves that `plan` applies: compiles every query it creates as a temporary view, in
/// plan order, inside `transaction` (which the caller rolls back). The statements are
/// pipelined; the first one PostgreSQL rejects is reported as reconcile would report it.
pub async fn prove(
    transaction: &Transaction<'_>,
    project: &Project,
    plan: &Plan,
) -> Result<(), ApplyError> {
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
    for (index, outcome) in outcomes.into_iter().enumerate() {
        if let Err(error) = outcome {
            return Err(ApplyError::Statement(Box::new(statement_error(
                &statements,
                index,
                &error,
            ))));
        }
    }
    Ok(())
}
