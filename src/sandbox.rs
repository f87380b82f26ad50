//! A throwaway PostgreSQL cluster for the demo, benchmarks and tests.
//!
//! [`Sandbox::start`] runs the local server binaries (`initdb`, `pg_ctl`) in a temporary
//! folder, listening on 127.0.0.1 on a free port with trust authentication, and
//! [`Sandbox::stop`] (or dropping the value) shuts it down and removes the folder. When the
//! process runs as root, the server runs as the `postgres` OS user, since `initdb` and
//! `postgres` refuse to run as root.
//!
//! A cluster never outlives the process that started it: a small watchdog shell, started
//! alongside it, stops the server and removes the folder as soon as that process is gone,
//! even if it was killed or never ran `Drop` (a cluster kept in a `static` is never dropped).

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Instant;

/// The name of the database superuser created by `initdb`, and of the OS user that runs the
/// server when we are root.
const SUPERUSER: &str = "postgres";

/// How many ports to try when another process grabs the free port we picked before the
/// server binds it.
const PORT_ATTEMPTS: usize = 5;

/// A memory file system, preferred for the sandbox folder when it has room (see `temp_parent`).
const MEMORY_DIR: &str = "/dev/shm";

/// The free space `MEMORY_DIR` needs: a fresh cluster takes about 40 MiB, and Docker's
/// default 64 MiB `/dev/shm` would fill up at the first sizeable test.
const MEMORY_DIR_MIN_FREE_KIB: u64 = 1024 * 1024;

/// How much of the server log to quote when the server does not start.
const LOG_TAIL_BYTES: u64 = 4096;

/// Run by the watchdog with `$1` = pg_ctl, `$2` = data folder, `$3` = sandbox folder.
///
/// Its standard input is a pipe whose only write end belongs to the process that started the
/// cluster, so `read` returns at end of file as soon as that process is gone, however it
/// ended. Waiting on a pipe needs no polling and cannot be fooled by a reused process id. A
/// normal stop cleans up itself and kills the watchdog first.
const WATCHDOG_SCRIPT: &str = r#"trap '' HUP INT
read -r _
[ -f "$2/postmaster.pid" ] && "$1" stop -D "$2" -m immediate -w -t 10 >/dev/null 2>&1
rm -rf "$3"
"#;

/// A running throwaway PostgreSQL cluster in a temporary folder.
///
/// The superuser is `postgres` with trust authentication on 127.0.0.1; connect with
/// [`Sandbox::url`]. The cluster is stopped and its folder removed by [`Sandbox::stop`], on
/// drop, or by its watchdog when this process ends.
#[derive(Debug)]
pub struct Sandbox {
    /// The temporary folder holding `data/`, `socket/` and `server.log`; `None` once stopped.
    dir: Option<tempfile::TempDir>,
    port: u16,
    bindir: PathBuf,
    /// Who runs `initdb`, `pg_ctl` and the server; `None` means the current user.
    owner: Option<Owner>,
    watchdog: Option<Watchdog>,
}

/// An error starting a [`Sandbox`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// No folder holding both `initdb` and `pg_ctl` was found.
    #[error(
        "could not find the PostgreSQL server binaries (initdb and pg_ctl); tried {tried}; \
         install the PostgreSQL server packages (on Debian or Ubuntu: `apt-get install postgresql`) \
         or put their bin folder on PATH"
    )]
    BinariesNotFound {
        /// Where we looked, in order.
        tried: String,
    },
    /// `VIEWKEEPER_PG_BINDIR` names a folder without `initdb` and `pg_ctl`.
    #[error(
        "{BINDIR_VAR}={} holds no initdb and pg_ctl; point it at a PostgreSQL bin folder \
         (scripts/fetch-postgres MAJOR prints one) or unset it",
        dir.display()
    )]
    BindirVarInvalid {
        /// The folder the variable names.
        dir: PathBuf,
    },
    /// We are root but there is no `postgres` OS user to run the server as.
    #[error(
        "running as root, but there is no `postgres` OS user to run the server as \
         (initdb refuses to run as root); install the PostgreSQL server packages, which create it, \
         or run as an ordinary user"
    )]
    NoPostgresUser,
    /// Looking up the `postgres` OS user failed.
    #[error("could not look up the `postgres` OS user")]
    UserLookup {
        /// The lookup's error.
        #[source]
        source: nix::Error,
    },
    /// A file system or socket operation failed.
    #[error("could not {action} {}", path.display())]
    Io {
        /// What we were doing, e.g. "create the temporary folder".
        action: &'static str,
        /// The path (or address) involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A command could not be run at all.
    #[error("could not run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// What it printed on stderr (or stdout when stderr was empty), trimmed.
        stderr: String,
    },
    /// `pg_ctl start` failed; the server log says why.
    #[error(
        "the PostgreSQL server did not start: `{command}` failed ({status}): {stderr}\nend of the server log:\n{log_tail}"
    )]
    StartFailed {
        /// The `pg_ctl start` command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// What it printed on stderr, trimmed.
        stderr: String,
        /// The last lines of the server log.
        log_tail: String,
    },
}

/// The OS user that owns the cluster's files and runs its processes.
#[derive(Debug, Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

/// The watchdog process and the write end of the pipe it waits on.
#[derive(Debug)]
struct Watchdog {
    /// Held only to be closed when this process ends, which wakes the watchdog.
    _parent_alive: io::PipeWriter,
    child: Child,
}

/// The environment variable that picks the server binaries' folder, e.g. another major
/// version's from `scripts/fetch-postgres 17`. Read at run time, so one test build runs
/// against every version.
pub const BINDIR_VAR: &str = "VIEWKEEPER_PG_BINDIR";

/// Finds the folder holding the PostgreSQL server binaries `initdb` and `pg_ctl`.
///
/// Takes `VIEWKEEPER_PG_BINDIR` when set (and fails when it holds no server binaries, rather
/// than testing another version than asked); otherwise tries `pg_config --bindir`, then `/usr/lib/postgresql/*/bin` (highest version first, the
/// Debian and Ubuntu layout), then the folders on `PATH`.
pub fn find_bindir() -> Result<PathBuf, SandboxError> {
    if let Some(dir) = std::env::var_os(BINDIR_VAR).filter(|dir| !dir.is_empty()) {
        let dir = PathBuf::from(dir);
        // The watchdog runs with another working directory: keep the path absolute.
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        return if has_server_binaries(&dir) {
            Ok(dir)
        } else {
            Err(SandboxError::BindirVarInvalid { dir })
        };
    }
    let mut tried = Vec::new();

    // On Debian `pg_config` may come from libpq-dev without the server: check, don't trust.
    match Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_server_binaries(&dir) {
                return Ok(dir);
            }
            tried.push(format!("`pg_config --bindir` ({})", dir.display()));
        }
        Ok(_) => tried.push("`pg_config --bindir` (it failed)".to_owned()),
        Err(_) => tried.push("`pg_config --bindir` (no pg_config)".to_owned()),
    }

    let debian_root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(debian_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = parse_version(entry.file_name().to_str()?)?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions
        .iter()
        .rev()
        .find(|(_, dir)| has_server_binaries(dir))
    {
        return Ok(dir.clone());
    }
    tried.push(format!("{}/*/bin", debian_root.display()));

    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_server_binaries(&dir) {
                // The watchdog runs with another working directory: keep the path absolute.
                return Ok(std::path::absolute(&dir).unwrap_or(dir));
            }
        }
    }
    tried.push("the folders on PATH".to_owned());

    Err(SandboxError::BinariesNotFound {
        tried: tried.join(", "),
    })
}

/// Parses a Debian version folder name such as `15` or `9.6`.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl"].iter().all(|name| {
        fs::metadata(dir.join(name))
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    })
}

impl Sandbox {
    /// Creates a cluster in a new temporary folder and starts it.
    ///
    /// Blocks until the server accepts connections (typically well under a second).
    pub fn start() -> Result<Sandbox, SandboxError> {
        Sandbox::start_with_settings(&[])
    }

    /// Like [`Sandbox::start`], with extra server settings written to `postgresql.conf`
    /// before the server starts, e.g. `("shared_preload_libraries", "pg_cron")`.
    pub fn start_with_settings(settings: &[(&str, &str)]) -> Result<Sandbox, SandboxError> {
        let started = Instant::now();
        let bindir = find_bindir()?;
        let owner = server_owner()?;

        let parent = temp_parent(owner.is_some());
        let dir = tempfile::Builder::new()
            .prefix("viewkeeper-pg-")
            .tempdir_in(&parent)
            .map_err(|source| SandboxError::Io {
                action: "create a temporary folder in",
                path: parent.clone(),
                source,
            })?;
        if let Some(owner) = owner {
            chown_to(dir.path(), owner)?;
        }

        // Armed before initdb, so even a process killed mid-start leaves nothing behind.
        let watchdog = Watchdog::spawn(&bindir, dir.path(), owner)?;
        // From here on, returning an error drops `sandbox`, which cleans up.
        let mut sandbox = Sandbox {
            dir: Some(dir),
            port: 0,
            bindir,
            owner,
            watchdog: Some(watchdog),
        };

        let mut initdb = sandbox.command("initdb", sandbox.path()?);
        initdb
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C"])
            // Durability is pointless for a throwaway cluster and syncing costs seconds.
            .arg("--no-sync")
            .arg("-D")
            .arg(sandbox.data_dir()?);
        run_checked(initdb)?;
        // pg_stat_statements lets tests count statements on the server; it joins any
        // libraries the caller preloads (a command-line setting would replace theirs).
        let mut settings: Vec<(&str, String)> = settings
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned()))
            .collect();
        if sandbox.has_library("pg_stat_statements") {
            match settings
                .iter_mut()
                .find(|(name, _)| *name == "shared_preload_libraries")
            {
                Some((_, value)) => value.push_str(",pg_stat_statements"),
                None => {
                    settings.push(("shared_preload_libraries", "pg_stat_statements".to_owned()))
                }
            }
        }
        if !settings.is_empty() {
            let settings: Vec<(&str, &str)> = settings
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .collect();
            sandbox.append_settings(&settings)?;
        }

        let socket_dir = sandbox.path()?.join("socket");
        fs::create_dir(&socket_dir).map_err(|source| SandboxError::Io {
            action: "create the socket folder",
            path: socket_dir.clone(),
            source,
        })?;
        if let Some(owner) = owner {
            chown_to(&socket_dir, owner)?;
        }

        let mut attempt = 1;
        loop {
            sandbox.port = free_port()?;
            match sandbox.pg_ctl_start(&socket_dir)? {
                Ok(()) => break,
                // Someone took the port between our probe and the server's bind: pick another.
                Err(SandboxError::StartFailed { ref log_tail, .. })
                    if attempt < PORT_ATTEMPTS && log_tail.contains("could not bind") =>
                {
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }

        tracing::debug!(
            port = sandbox.port,
            elapsed = ?started.elapsed(),
            "started a sandbox PostgreSQL cluster"
        );
        Ok(sandbox)
    }

    /// The TCP port the server listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder holding the server binaries in use.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The folder holding the server's Unix socket (`.s.PGSQL.<port>`), for connecting
    /// without TCP, e.g. with `host=<this folder>`.
    pub fn socket_dir(&self) -> Result<PathBuf, SandboxError> {
        Ok(self.path()?.join("socket"))
    }

    /// Writes `contents` to `name` in the cluster's data folder (replacing `pg_hba.conf`,
    /// say, or adding a TLS key), owned by the server's OS user and readable by it alone
    /// (mode 0600), as the server requires for a key. Returns the file's path. The server
    /// reads the file at its next reload (`SELECT pg_reload_conf()`).
    pub fn write_data_file(&self, name: &str, contents: &[u8]) -> Result<PathBuf, SandboxError> {
        let path = self.data_dir()?.join(name);
        let io_error = |action: &'static str| {
            let path = path.clone();
            move |source| SandboxError::Io {
                action,
                path,
                source,
            }
        };
        fs::write(&path, contents).map_err(io_error("write the file"))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(io_error("restrict the permissions of"))?;
        if let Some(owner) = self.owner {
            chown_to(&path, owner)?;
        }
        Ok(path)
    }

    /// A connection URL for `database` as the superuser `postgres`, e.g.
    /// `postgresql://postgres@127.0.0.1:54321/postgres`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Stops the server (fast shutdown) and removes its folder.
    ///
    /// Failures are logged, not returned: there is nothing a caller could do about them.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Stops the server if it runs, removes the folder and dismisses the watchdog. Idempotent.
    fn shutdown(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        let started = Instant::now();
        let data_dir = dir.path().join("data");
        if data_dir.join("postmaster.pid").exists() {
            let stopped = ["fast", "immediate"].into_iter().any(|mode| {
                let mut stop = self.command("pg_ctl", dir.path());
                stop.arg("stop")
                    .arg("-D")
                    .arg(&data_dir)
                    .args(["-m", mode, "-w", "-t", "10"]);
                match run_checked(stop) {
                    Ok(_) => true,
                    Err(err) => {
                        tracing::warn!(error = %err, "could not stop the sandbox cluster");
                        false
                    }
                }
            });
            if !stopped {
                tracing::warn!(path = %dir.path().display(), "the sandbox cluster may still run");
            }
        }
        let path = dir.path().to_owned();
        if let Err(err) = dir.close() {
            tracing::warn!(path = %path.display(), error = %err, "could not remove the sandbox folder");
        }
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.dismiss();
        }
        tracing::debug!(elapsed = ?started.elapsed(), "stopped a sandbox PostgreSQL cluster");
    }

    /// Appends `name = 'value'` lines to `postgresql.conf`; later lines win.
    fn append_settings(&self, settings: &[(&str, &str)]) -> Result<(), SandboxError> {
        let path = self.data_dir()?.join("postgresql.conf");
        let lines: String = settings
            .iter()
            .map(|(name, value)| format!("{name} = '{}'\n", value.replace('\'', "''")))
            .collect();
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| io::Write::write_all(&mut file, lines.as_bytes()))
            .map_err(|source| SandboxError::Io {
                action: "add settings to",
                path,
                source,
            })
    }

    /// Runs `pg_ctl start`; the outer error is a failure to even run it, the inner one a
    /// server that did not start.
    fn pg_ctl_start(&self, socket_dir: &Path) -> Result<Result<(), SandboxError>, SandboxError> {
        let log = self.path()?.join("server.log");
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {socket} -c fsync=off -c max_connections=200",
            port = self.port,
            // pg_ctl hands the options to a shell.
            socket = shell_quote(&socket_dir.to_string_lossy()),
        );
        // Lets tests count on the server the statements a client sent; PostgreSQL's packages
        // ship the module next to the server binaries.
        let mut start = self.command("pg_ctl", self.path()?);
        start
            .arg("start")
            .arg("-D")
            .arg(self.data_dir()?)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "30", "-o", &options]);
        let command = describe(&start);
        let output = output_of(start)?;
        if output.status.success() {
            return Ok(Ok(()));
        }
        Ok(Err(SandboxError::StartFailed {
            command,
            status: output.status,
            stderr: failure_text(&output),
            log_tail: log_tail(&log),
        }))
    }

    /// Whether the server's library folder (`<bindir>/../lib`) holds this module.
    fn has_library(&self, name: &str) -> bool {
        self.bindir
            .parent()
            .is_some_and(|prefix| prefix.join("lib").join(format!("{name}.so")).is_file())
    }

    fn path(&self) -> Result<&Path, SandboxError> {
        // Only `shutdown` empties `dir`, and nothing runs after it.
        self.dir
            .as_ref()
            .map(tempfile::TempDir::path)
            .ok_or_else(|| SandboxError::Io {
                action: "use the stopped sandbox folder",
                path: PathBuf::new(),
                source: io::Error::from(io::ErrorKind::NotFound),
            })
    }

    fn data_dir(&self) -> Result<PathBuf, SandboxError> {
        Ok(self.path()?.join("data"))
    }

    /// A command for one of the server binaries, run as the cluster's owner in `cwd`.
    fn command(&self, binary: &str, cwd: &Path) -> Command {
        let mut cmd = Command::new(self.bindir.join(binary));
        // The owner may not be allowed into our working directory (e.g. /root).
        cmd.current_dir(cwd).stdin(Stdio::null());
        if let Some(owner) = self.owner {
            cmd.uid(owner.uid).gid(owner.gid);
        }
        cmd
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Watchdog {
    fn spawn(bindir: &Path, dir: &Path, owner: Option<Owner>) -> Result<Watchdog, SandboxError> {
        let (reader, writer) = io::pipe().map_err(|source| SandboxError::Io {
            action: "create a pipe for the watchdog of",
            path: dir.to_owned(),
            source,
        })?;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("viewkeeper-sandbox-watchdog")
            .arg(bindir.join("pg_ctl"))
            .arg(dir.join("data"))
            .arg(dir)
            .current_dir("/")
            .stdin(reader)
            // Null output: it must never hold a test harness's pipes open.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C to the terminal must not kill it first.
            .process_group(0);
        // As the owner, pg_ctl accepts to run and can only signal the owner's processes.
        if let Some(owner) = owner {
            cmd.uid(owner.uid).gid(owner.gid);
        }
        let command = describe(&cmd);
        let child = cmd
            .spawn()
            .map_err(|source| SandboxError::Spawn { command, source })?;
        // `cmd` still holds the read end; drop it so only the child keeps it.
        drop(cmd);
        Ok(Watchdog {
            _parent_alive: writer,
            child,
        })
    }

    /// Ends the watchdog without letting it act, once the cluster is already gone.
    fn dismiss(mut self) {
        // Killed before the pipe closes, so it never wakes. Signalling rather than writing
        // to the pipe: a binary that restores the default SIGPIPE would die writing to a
        // watchdog that is already gone. Until we reap it, its pid cannot be reused.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The OS user to run the server as: `postgres` when we are root, else ourselves.
fn server_owner() -> Result<Option<Owner>, SandboxError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name(SUPERUSER) {
        Ok(Some(user)) => Ok(Some(Owner {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })),
        Ok(None) => Err(SandboxError::NoPostgresUser),
        Err(source) => Err(SandboxError::UserLookup { source }),
    }
}

/// Where to create the sandbox folder.
///
/// An explicit `TMPDIR` wins. Otherwise `/dev/shm` when it has room: initdb writes about a
/// thousand files, and on a memory file system it runs several times faster (measured here:
/// 0.35 s against 1.4 s on ext4). Set `TMPDIR` to keep a big benchmark cluster on disk.
///
/// When the server runs as another user, that user must be able to reach the folder and
/// remove it (the watchdog runs as that user). A sticky world-writable folder such as `/tmp`
/// allows both, so a private `TMPDIR` (say under `/root`) is passed over for `/tmp`.
fn temp_parent(other_owner: bool) -> PathBuf {
    let fallback = PathBuf::from("/tmp");
    match std::env::var_os("TMPDIR").filter(|dir| !dir.is_empty()) {
        Some(dir) if !other_owner || is_shared_folder(Path::new(&dir)) => PathBuf::from(dir),
        Some(_) => fallback,
        None => {
            let memory = Path::new(MEMORY_DIR);
            let roomy = available_kib(memory).is_some_and(|kib| kib >= MEMORY_DIR_MIN_FREE_KIB);
            if is_shared_folder(memory) && roomy {
                memory.to_owned()
            } else {
                fallback
            }
        }
    }
}

/// Whether anyone may create entries in `dir` and only remove their own (mode 1777-like).
fn is_shared_folder(dir: &Path) -> bool {
    fs::metadata(dir)
        .is_ok_and(|meta| meta.is_dir() && meta.permissions().mode() & 0o1003 == 0o1003)
}

/// Free space on the file system holding `dir`, from POSIX `df -Pk` (std has no statvfs).
fn available_kib(dir: &Path) -> Option<u64> {
    let output = Command::new("df")
        .arg("-Pk")
        .arg(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    // Filesystem 1024-blocks Used Available Capacity Mounted-on
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

fn chown_to(path: &Path, owner: Owner) -> Result<(), SandboxError> {
    chown(path, Some(owner.uid), Some(owner.gid)).map_err(|source| SandboxError::Io {
        action: "hand over to the postgres user the folder",
        path: path.to_owned(),
        source,
    })
}

/// Picks a TCP port that is free on 127.0.0.1 right now.
///
/// The listener is closed before the server binds the port, so another process could take it
/// in between; `start` retries with a new port when that happens.
fn free_port() -> Result<u16, SandboxError> {
    let address = (Ipv4Addr::LOCALHOST, 0);
    TcpListener::bind(address)
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|source| SandboxError::Io {
            action: "find a free TCP port on",
            path: PathBuf::from("127.0.0.1"),
            source,
        })
}

fn output_of(mut cmd: Command) -> Result<Output, SandboxError> {
    cmd.output().map_err(|source| SandboxError::Spawn {
        command: describe(&cmd),
        source,
    })
}

fn run_checked(cmd: Command) -> Result<Output, SandboxError> {
    let command = describe(&cmd);
    let output = output_of(cmd)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(SandboxError::CommandFailed {
            command,
            status: output.status,
            stderr: failure_text(&output),
        })
    }
}

/// The command line, for error messages.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .map(|arg| {
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'') {
                shell_quote(&arg)
            } else {
                arg.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a failed command said: stderr, or stdout when it printed nothing on stderr.
fn failure_text(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if stderr.is_empty() {
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    } else {
        stderr
    }
}

/// The last few lines of the server log, or why they could not be read.
fn log_tail(path: &Path) -> String {
    let read = || -> io::Result<String> {
        let mut file = fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes);
        // Drop a partial first line when we started mid-file.
        let text = match (len > LOG_TAIL_BYTES, text.split_once('\n')) {
            (true, Some((_, rest))) => rest,
            _ => &text,
        };
        Ok(text.trim_end().to_owned())
    };
    match read() {
        Ok(text) if text.is_empty() => "(empty)".to_owned(),
        Ok(text) => text,
        Err(err) => format!("(could not read {}: {err})", path.display()),
    }
}

/// Quotes `text` for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_version_folders() {
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("lib"), None);
        let mut versions = [
            parse_version("9.6"),
            parse_version("15"),
            parse_version("10"),
        ];
        versions.sort();
        assert_eq!(versions.last(), Some(&Some(vec![15])));
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
