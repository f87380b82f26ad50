//! `viewkeeper schedule`: refreshes each managed materialized view when its declared policy
//! says so, upstream before downstream.
//!
//! What is due is decided from the refresh history in the state schema and the server's
//! clock, never from process memory, so any number of schedulers on any number of hosts can
//! run against one database: the per-view advisory lock keeps two from refreshing one view
//! at once, and the history re-read under that lock keeps two from refreshing one period.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;
use tokio_postgres::Client;

use super::{Outcome, RefreshTarget, Wait, refresh_one};
use crate::catalog::Catalog;
use crate::catalog::read::dependency_names;
use crate::db;
use crate::graph::DependencyGraph;
use crate::name::QualifiedName;
use crate::project::{Kind, Project, RefreshTrigger, parse_cron};
use crate::sql::session;
use crate::state::{self, RefreshHistory};

/// Longest wait between two retries of a failing refresh.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often the declarations are re-read even without SIGHUP.
const RELOAD_EVERY: Duration = Duration::from_secs(5);
/// Longest sleep between two looks at the database.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Refreshes kept in the history per view.
const HISTORY_KEPT: i64 = 1000;

/// How the scheduler behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// After SIGINT/SIGTERM, how long a running refresh may take before it is cancelled.
    pub grace: Duration,
    /// Reconcile as soon as the guard reports a managed view dropped.
    pub heal: bool,
}

/// What the scheduler reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    Started(&'a RefreshTarget),
    Finished(&'a RefreshTarget, &'a Outcome, Option<DateTime<Utc>>),
    /// Something went wrong outside a refresh (declarations, connection); it carries on.
    Problem(String),
    /// Views dropped outside viewkeeper were restored; the summary says what was done.
    Healed(String),
    Stopping,
}

/// How long to wait after `failures` consecutive failures: 1 s, 2 s, 4 s, … up to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let seconds = 1u64
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u64::MAX);
    Duration::from_secs(seconds).min(MAX_BACKOFF)
}

/// When a view's next refresh is due, or `None` while it waits for an upstream refresh.
/// `upstream_success` is the latest successful refresh of any materialized view it reads,
/// directly or through other views. Pure.
pub fn next_due(
    trigger: &RefreshTrigger,
    history: &RefreshHistory,
    upstream_success: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let scheduled = match trigger {
        RefreshTrigger::Every(interval) => Some(match history.last_success {
            Some(last) => last + TimeDelta::from_std(*interval).unwrap_or(TimeDelta::MAX),
            // Never refreshed by viewkeeper: refresh now to start the schedule.
            None => DateTime::<Utc>::MIN_UTC,
        }),
        RefreshTrigger::Cron {
            expression,
            timezone,
        } => match (history.last_success, parse_cron(expression)) {
            (None, _) => Some(DateTime::<Utc>::MIN_UTC),
            (Some(last), Ok(cron)) => {
                let zone = timezone.unwrap_or(chrono_tz::UTC);
                cron.find_next_occurrence(&last.with_timezone(&zone), false)
                    .ok()
                    .map(|next| next.with_timezone(&Utc))
            }
            (Some(_), Err(_)) => None,
        },
        RefreshTrigger::WithUpstream => match (upstream_success, history.last_success) {
            (Some(upstream), Some(own)) if upstream > own => Some(upstream),
            (Some(upstream), None) => Some(upstream),
            _ => None,
        },
    }?;
    if history.consecutive_failures > 0
        && let Some(attempt) = history.last_attempt
    {
        let retry = attempt
            + TimeDelta::from_std(backoff(history.consecutive_failures)).unwrap_or(TimeDelta::MAX);
        return Some(scheduled.max(retry));
    }
    Some(scheduled)
}

/// A scheduled view and what decides its refreshes.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub target: RefreshTarget,
    pub trigger: RefreshTrigger,
    /// Managed materialized views it reads, directly or through views.
    pub upstream: Vec<QualifiedName>,
}

/// The managed materialized views with a refresh policy, upstream first. Pure.
pub fn scheduled_views(project: &Project, catalog: &Catalog) -> Vec<Scheduled> {
    let Some(state) = &catalog.state else {
        return Vec::new();
    };
    let graph: DependencyGraph = catalog.graph_of(project);
    let Ok(order) = graph.topological_order() else {
        return Vec::new();
    };
    let is_managed_view = |name: &QualifiedName| {
        project
            .declarations
            .get(name)
            .is_some_and(|d| d.kind == Kind::MaterializedView)
            && state.objects.contains_key(name)
            && catalog.relations.contains_key(name)
    };
    order
        .iter()
        .filter(|name| is_managed_view(name))
        .filter_map(|name| {
            let declaration = project.declarations.get(name)?;
            let policy = declaration.refresh.as_ref()?;
            let upstream = graph
                .with_dependencies([name])
                .into_iter()
                .filter(|other| other != name && is_managed_view(other))
                .collect();
            Some(Scheduled {
                target: RefreshTarget::of(project, declaration),
                trigger: policy.trigger.clone(),
                upstream,
            })
        })
        .collect()
}

/// The latest successful refresh among `upstream`.
fn upstream_success(
    upstream: &[QualifiedName],
    history: &BTreeMap<QualifiedName, RefreshHistory>,
) -> Option<DateTime<Utc>> {
    upstream
        .iter()
        .filter_map(|name| history.get(name).and_then(|h| h.last_success))
        .max()
}

/// Runs until SIGINT or SIGTERM: refreshes what is due, re-reads the declarations every few
/// seconds and on SIGHUP, and on shutdown lets a running refresh finish within the grace
/// period before cancelling it on the server.
pub async fn run(
    root: &Path,
    url: &str,
    options: &Options,
    mut on_event: impl FnMut(Event<'_>),
) -> Result<(), crate::error::Error> {
    let mut project = Project::load(root)?;
    let (shutdown, mut stopping) = watch::channel(false);
    let (reload, mut reloading) = watch::channel(());
    listen_for_signals(shutdown, reload)?;

    let mut client: Option<Client> = None;
    let mut last_reload = tokio::time::Instant::now();
    let mut last_prune = None::<tokio::time::Instant>;
    let mut healer = Healer::default();
    // SIGHUP wakes the sleep below, which also marks the signal seen: remember it here.
    let mut force_reload = false;
    loop {
        if *stopping.borrow() {
            break;
        }
        if force_reload
            || reloading.has_changed().unwrap_or(false)
            || last_reload.elapsed() >= RELOAD_EVERY
        {
            force_reload = false;
            reloading.mark_unchanged();
            last_reload = tokio::time::Instant::now();
            match Project::load(root) {
                Ok(loaded) => project = loaded,
                Err(problems) => on_event(Event::Problem(format!(
                    "keeping the previous declarations: {}",
                    crate::render::problems_line(&problems)
                ))),
            }
        }
        let connected = match client.take() {
            Some(connected) if !connected.is_closed() => connected,
            _ => match connect(url, &project).await {
                Ok(connected) => connected,
                Err(error) => {
                    on_event(Event::Problem(error.to_string()));
                    sleep_or_stop(&mut stopping, Duration::from_secs(2)).await;
                    continue;
                }
            },
        };
        let mut connected = connected;
        if options.heal {
            healer
                .listen(url, &project, &connected, &mut on_event)
                .await;
            healer
                .heal(&mut connected, url, &project, &mut on_event)
                .await;
        }
        let pass = run_pass(
            &mut connected,
            &project,
            options,
            &mut stopping,
            &mut on_event,
        )
        .await;
        let sleep = match pass {
            Ok(sleep) => {
                client = Some(connected);
                sleep
            }
            Err(error) => {
                on_event(Event::Problem(format!(
                    "lost the database: {}",
                    db::describe(&error)
                )));
                Duration::from_secs(2)
            }
        };
        if let Some(connected) = &client
            && last_prune.is_none_or(|at| at.elapsed() >= Duration::from_secs(300))
        {
            last_prune = Some(tokio::time::Instant::now());
            if let Err(error) =
                state::prune_history(connected, &project.config.state_schema, HISTORY_KEPT).await
            {
                tracing::debug!("cannot prune the refresh history: {}", db::describe(&error));
            }
        }
        tokio::select! {
            _ = sleep_or_stop(&mut stopping, sleep) => {}
            _ = reloading.changed() => force_reload = true,
            _ = healer.dropped() => {}
        }
    }
    on_event(Event::Stopping);
    Ok(())
}

/// Self-healing: listens for the guard's notifications and restores what is missing once the dropping
/// transaction has committed. When the declarations cannot be applied to the new schema, it
/// waits until the declarations or the schema change before trying again, and never tries
/// more often than every few seconds.
#[derive(Default)]
struct Healer {
    listener: Option<(
        Client,
        tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    )>,
    /// A drop was reported and not yet repaired.
    pending: bool,
    /// The (declarations, schema) fingerprint of the last failed attempt.
    blocked: Option<(String, String)>,
    last_attempt: Option<tokio::time::Instant>,
    warned_unguarded: bool,
}

/// Least time between two repair attempts.
const HEAL_INTERVAL: Duration = Duration::from_secs(2);

impl Healer {
    /// Opens the listening connection if needed, and notes any drops reported meanwhile.
    async fn listen(
        &mut self,
        url: &str,
        project: &Project,
        client: &Client,
        on_event: &mut impl FnMut(Event<'_>),
    ) {
        if self
            .listener
            .as_ref()
            .is_none_or(|(listener, _)| listener.is_closed())
        {
            self.listener = None;
            match db::connect_listening(url, &project.config.search_path).await {
                Ok((listener, notifications)) => {
                    let listen = session::listen(crate::guard::CHANNEL);
                    match listener.batch_execute(&listen).await {
                        Ok(()) => self.listener = Some((listener, notifications)),
                        Err(error) => on_event(Event::Problem(format!(
                            "cannot listen for dropped views: {}",
                            db::describe(&error)
                        ))),
                    }
                }
                Err(error) => on_event(Event::Problem(format!(
                    "cannot listen for dropped views: {error}"
                ))),
            }
            // Drops made while nobody was listening: anything managed that is missing now.
            if self.listener.is_some() && missing_managed(client, project).await {
                self.pending = true;
                self.blocked = None;
            }
            if !self.warned_unguarded && matches!(crate::guard::installed(client).await, Ok(false))
            {
                self.warned_unguarded = true;
                on_event(Event::Problem(
                    "self-healing waits for the guard: run `viewkeeper guard install` as a superuser"
                        .to_owned(),
                ));
            }
        }
        if let Some((_, notifications)) = &mut self.listener {
            while notifications.try_recv().is_ok() {
                self.pending = true;
                self.blocked = None;
            }
        }
    }

    /// Waits for the next notification (forever when not listening).
    async fn dropped(&mut self) {
        match &mut self.listener {
            Some((_, notifications)) => {
                if notifications.recv().await.is_some() {
                    self.pending = true;
                    self.blocked = None;
                } else {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// Restores what is missing when a drop is pending, unless the same declarations already failed
    /// against the same schema.
    async fn heal(
        &mut self,
        client: &mut Client,
        url: &str,
        project: &Project,
        on_event: &mut impl FnMut(Event<'_>),
    ) {
        if !self.pending
            || self
                .last_attempt
                .is_some_and(|at| at.elapsed() < HEAL_INTERVAL)
        {
            return;
        }
        let schema = match crate::catalog::schema_fingerprint(&*client).await {
            Ok(schema) => schema,
            Err(error) => {
                on_event(Event::Problem(db::describe(&error)));
                return;
            }
        };
        let fingerprint = (project.fingerprint(), schema);
        if self.blocked.as_ref() == Some(&fingerprint) {
            return;
        }
        self.last_attempt = Some(tokio::time::Instant::now());
        // What a CASCADE took is rebuilt on a few sessions at once, as `run` does.
        let workers = crate::apply::Workers {
            url: url.to_owned(),
            jobs: crate::apply::default_jobs(),
        };
        match crate::apply::restore_missing(client, project, Some(&workers), |_, _| {}).await {
            Ok(reconciled) => {
                let summary: Vec<String> = reconciled
                    .plan
                    .actions()
                    .iter()
                    .map(|action| format!("{} {}", action.change.verb(), action.object))
                    .collect();
                if !summary.is_empty() || reconciled.failed.is_empty() {
                    on_event(Event::Healed(if summary.is_empty() {
                        "nothing was missing".to_owned()
                    } else {
                        summary.join(", ")
                    }));
                }
                // What could not be brought back: wait for a change, or retry shortly when
                // only locks or the connection were in the way.
                let errors: Vec<String> = reconciled
                    .failed
                    .iter()
                    .map(|(name, error)| format!("{name}: {}", error.message))
                    .collect();
                if errors.is_empty() {
                    self.pending = false;
                    self.blocked = None;
                } else if reconciled.failed.iter().all(|(_, error)| error.transient) {
                    on_event(Event::Problem(format!(
                        "cannot restore the dropped views yet ({}); trying again shortly",
                        errors.join("; ")
                    )));
                } else {
                    self.blocked = Some(fingerprint);
                    on_event(Event::Problem(format!(
                        "cannot restore the dropped views yet ({}); the database stays as it is \
                         until the declarations or the schema change, or `viewkeeper reconcile` \
                         applies the declarations",
                        errors.join("; ")
                    )));
                }
            }
            Err(error) if error.is_transient() => {
                on_event(Event::Problem(format!(
                    "cannot restore the dropped views yet ({error}); trying again shortly"
                )));
            }
            Err(error) => {
                self.blocked = Some(fingerprint);
                on_event(Event::Problem(format!(
                    "cannot restore the dropped views yet ({error}); the database stays as it is \
                     until the declarations or the schema change, or `viewkeeper reconcile` \
                     applies the declarations"
                )));
            }
        }
    }
}

/// Whether a declared object viewkeeper manages is missing from the database.
async fn missing_managed(client: &Client, project: &Project) -> bool {
    let schema = &project.config.state_schema;
    match crate::waits::introspect(client, &[], schema, project.config.lock_timeout).await {
        Ok(catalog) => catalog.state.as_ref().is_some_and(|state| {
            state.objects.keys().any(|name| {
                project.declarations.contains_key(name) && !catalog.relations.contains_key(name)
            })
        }),
        Err(_) => false,
    }
}

async fn connect(url: &str, project: &Project) -> Result<Client, crate::error::Error> {
    let client = db::connect(url, &project.config.search_path).await?;
    crate::commands::warn_restore_owed(&client, &project.config).await;
    // The process id in application_name tells operators which scheduler holds a refresh.
    let name = format!("viewkeeper schedule {}", std::process::id());
    let _ = client
        .batch_execute(&session::set_application_name(&name))
        .await;
    // A scheduler killed mid-refresh should not leave its backend refreshing for nothing:
    // PostgreSQL 14+ notices the closed connection and aborts (older versions ignore it).
    let _ = client
        .batch_execute(session::CHECK_CONNECTION_EVERY_SECOND)
        .await;
    Ok(client)
}

/// One look at the database: refresh everything due, in order. Returns how long to sleep.
async fn run_pass(
    client: &mut Client,
    project: &Project,
    options: &Options,
    stopping: &mut watch::Receiver<bool>,
    on_event: &mut impl FnMut(Event<'_>),
) -> Result<Duration, tokio_postgres::Error> {
    let schema = &project.config.state_schema;
    let catalog = crate::waits::introspect(
        client,
        &dependency_names(project),
        schema,
        project.config.lock_timeout,
    )
    .await?;
    if catalog.state.is_none() {
        return Ok(MAX_SLEEP);
    }
    let views = scheduled_views(project, &catalog);
    let mut history = state::read_history(&*client, schema, None).await?;
    let mut now: DateTime<Utc> = client.query_one(session::CLOCK, &[]).await?.get(0);
    let mut earliest: Option<DateTime<Utc>> = None;
    for view in &views {
        if *stopping.borrow() {
            break;
        }
        let own = history.get(&view.target.name).cloned().unwrap_or_default();
        let upstream = upstream_success(&view.upstream, &history);
        let Some(due) = next_due(&view.trigger, &own, upstream) else {
            continue;
        };
        if due > now {
            earliest = Some(earliest.map_or(due, |e| e.min(due)));
            continue;
        }
        let trigger = view.trigger.clone();
        let still_due = move |fresh: &RefreshHistory, at: DateTime<Utc>| {
            next_due(&trigger, fresh, upstream).is_some_and(|due| due <= at)
        };
        on_event(Event::Started(&view.target));
        let outcome =
            refresh_with_grace(client, schema, &view.target, &still_due, options, stopping).await?;
        now = client.query_one(session::CLOCK, &[]).await?.get(0);
        let retry_at = match &outcome {
            Outcome::Refreshed { started_at, .. } => {
                let entry = history.entry(view.target.name.clone()).or_default();
                entry.last_success = Some(*started_at);
                entry.last_attempt = Some(*started_at);
                entry.consecutive_failures = 0;
                entry.last_error = None;
                None
            }
            Outcome::Failed(message) => {
                let entry = history.entry(view.target.name.clone()).or_default();
                entry.last_attempt = Some(now);
                entry.consecutive_failures += 1;
                entry.last_error = Some(message.clone());
                next_due(&view.trigger, entry, upstream)
            }
            Outcome::Skipped(_) => None,
        };
        on_event(Event::Finished(&view.target, &outcome, retry_at));
    }
    let sleep = earliest
        .and_then(|due| (due - now).to_std().ok())
        .unwrap_or(MAX_SLEEP)
        .clamp(Duration::from_millis(50), MAX_SLEEP);
    Ok(sleep)
}

/// Runs one refresh; on shutdown, gives it `options.grace` to finish, then cancels it on
/// the server so no backend is left working for a process that is gone.
async fn refresh_with_grace(
    client: &mut Client,
    schema: &str,
    target: &RefreshTarget,
    still_due: &(dyn Fn(&RefreshHistory, DateTime<Utc>) -> bool + Sync),
    options: &Options,
    stopping: &mut watch::Receiver<bool>,
) -> Result<Outcome, tokio_postgres::Error> {
    let cancel = client.cancel_token();
    let refresh = refresh_one(client, schema, target, true, Wait::Skip, Some(still_due));
    let mut refresh = std::pin::pin!(refresh);
    tokio::select! {
        outcome = &mut refresh => return outcome,
        _ = stopping.wait_for(|stop| *stop) => {}
    }
    match tokio::time::timeout(options.grace, &mut refresh).await {
        Ok(outcome) => outcome,
        Err(_) => {
            if let Err(error) = db::cancel(&cancel).await {
                tracing::warn!("cannot cancel the refresh of {}: {error}", target.name);
            }
            refresh.await
        }
    }
}

async fn sleep_or_stop(stopping: &mut watch::Receiver<bool>, duration: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = stopping.wait_for(|stop| *stop) => {}
    }
}

/// SIGINT and SIGTERM ask for a clean stop; SIGHUP for a reload of the declarations.
fn listen_for_signals(
    shutdown: watch::Sender<bool>,
    reload: watch::Sender<()>,
) -> Result<(), crate::error::Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let io = |source| crate::error::Error::Io {
        context: "cannot listen for signals".to_owned(),
        source,
    };
    let mut interrupt = signal(SignalKind::interrupt()).map_err(io)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(io)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(io)?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => { let _ = shutdown.send(true); }
                _ = terminate.recv() => { let _ = shutdown.send(true); }
                _ = hangup.recv() => { let _ = reload.send(()); }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap_or_default()
    }

    fn history(success: Option<i64>, attempt: Option<i64>, failures: u32) -> RefreshHistory {
        RefreshHistory {
            last_success: success.map(at),
            last_attempt: attempt.map(at),
            consecutive_failures: failures,
            ..RefreshHistory::default()
        }
    }

    #[test]
    fn every_is_due_one_interval_after_the_last_success() {
        let every = RefreshTrigger::Every(Duration::from_secs(15));
        assert_eq!(
            next_due(&every, &history(Some(0), Some(0), 0), None),
            Some(at(15))
        );
        assert_eq!(
            next_due(&every, &history(None, None, 0), None),
            Some(DateTime::<Utc>::MIN_UTC)
        );
    }

    #[test]
    fn failures_back_off_exponentially() {
        let every = RefreshTrigger::Every(Duration::from_secs(1));
        assert_eq!(
            next_due(&every, &history(Some(0), Some(10), 1), None),
            Some(at(11))
        );
        assert_eq!(
            next_due(&every, &history(Some(0), Some(10), 3), None),
            Some(at(14))
        );
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn cron_is_due_at_the_next_occurrence_in_its_zone() {
        let cron = RefreshTrigger::Cron {
            expression: "0 3 * * *".to_owned(),
            timezone: Some(chrono_tz::Europe::Paris),
        };
        let last = DateTime::parse_from_rfc3339("2026-07-01T12:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .ok();
        let history = RefreshHistory {
            last_success: last,
            last_attempt: last,
            ..RefreshHistory::default()
        };
        let expected = DateTime::parse_from_rfc3339("2026-07-02T01:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .ok();
        assert_eq!(next_due(&cron, &history, None), expected);
    }

    #[test]
    fn with_upstream_waits_for_a_newer_upstream_refresh() {
        let chained = RefreshTrigger::WithUpstream;
        assert_eq!(
            next_due(&chained, &history(Some(10), Some(10), 0), Some(at(5))),
            None
        );
        assert_eq!(
            next_due(&chained, &history(Some(10), Some(10), 0), Some(at(12))),
            Some(at(12))
        );
        assert_eq!(next_due(&chained, &history(None, None, 0), None), None);
    }
}
