//! Connecting the way psql does, against a real server: `sslmode` over TLS with a test
//! certificate authority, `PGPASSWORD`, the password file, connections from the `PG*`
//! variables alone, and passwords masked in errors.
//!
//! These tests always start their own throwaway cluster (never the server of
//! `VIEWKEEPER_TEST_DATABASE_URL`): they turn TLS on and replace `pg_hba.conf`. The library
//! tests hand `connect_with` an environment of their own; only the `viewkeeper` binary is run
//! with real environment variables, since those are global to a process.

use std::fs;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tokio_postgres::Client;
use viewkeeper::db::{ConnectError, Environment, connect_with};
use viewkeeper::sandbox::Sandbox;

/// A role that must give a password over TCP and over the Unix socket.
const PW_ROLE: &str = "vk_pw";
const PW: &str = "pw-S3cret:with\\odd'chars";
/// A role the server turns down on a connection without TLS.
const TLS_ROLE: &str = "vk_tls_only";

/// The variables libpq reads; removed from the binary's environment before each run.
const PG_VARS: &[&str] = &[
    "DATABASE_URL",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGAPPNAME",
    "PGOPTIONS",
    "PGCONNECT_TIMEOUT",
    "PGTARGETSESSIONATTRS",
    "PGCHANNELBINDING",
    "PGLOADBALANCEHOSTS",
    "PGSSLNEGOTIATION",
    "PGSERVICE",
    "PGSSLCERT",
    "PGSSLKEY",
];

/// The cluster all tests here share, with TLS on and the roles and rules above.
struct Server {
    sandbox: Sandbox,
    /// Holds the client-side files: the CA certificates, password files, a project.
    files: tempfile::TempDir,
    /// The CA that signed the server's certificate.
    ca: PathBuf,
    /// A CA that did not.
    wrong_ca: PathBuf,
}

impl Server {
    fn port(&self) -> u16 {
        self.sandbox.port()
    }

    /// An empty home folder, so no `~/.pgpass` or `~/.postgresql/root.crt` interferes.
    fn home(&self) -> PathBuf {
        self.files.path().join("home")
    }

    /// An environment with just `vars`, an empty home and `postgres` as the OS user.
    fn env(&self, vars: &[(&str, &str)]) -> Environment {
        let home = self.home().display().to_string();
        Environment::from_vars(
            vars.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .chain([("HOME".to_owned(), home)]),
        )
        .with_os_user("postgres")
    }

    /// The superuser on 127.0.0.1 with extra URL parameters.
    fn url(&self, params: &str) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/postgres{params}",
            self.port()
        )
    }
}

static SERVER: OnceLock<Server> = OnceLock::new();

fn server() -> &'static Server {
    SERVER.get_or_init(|| match set_up() {
        Ok(server) => server,
        Err(why) => panic!("could not set up the TLS test server: {why}"),
    })
}

fn set_up() -> Result<Server, String> {
    let sandbox = Sandbox::start().map_err(|e| e.to_string())?;
    let files = tempfile::tempdir().map_err(|e| e.to_string())?;
    fs::create_dir(files.path().join("home")).map_err(|e| e.to_string())?;

    let ca = authority("viewkeeper test CA")?;
    let wrong = authority("some other CA")?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server_key = KeyPair::generate().map_err(|e| e.to_string())?;
    let server_cert = params
        .signed_by(&server_key, &ca)
        .map_err(|e| e.to_string())?;

    let ca_path = files.path().join("ca.pem");
    fs::write(&ca_path, ca.pem()).map_err(|e| e.to_string())?;
    let wrong_path = files.path().join("wrong-ca.pem");
    fs::write(&wrong_path, wrong.pem()).map_err(|e| e.to_string())?;

    let write = |name: &str, contents: &[u8]| {
        sandbox
            .write_data_file(name, contents)
            .map_err(|e| e.to_string())
    };
    write("server.crt", server_cert.pem().as_bytes())?;
    write("server.key", server_key.serialize_pem().as_bytes())?;
    write(
        "pg_hba.conf",
        format!(
            "local all {PW_ROLE} scram-sha-256\n\
             local all all trust\n\
             host all {PW_ROLE} 127.0.0.1/32 scram-sha-256\n\
             hostnossl all {TLS_ROLE} 127.0.0.1/32 reject\n\
             host all all 127.0.0.1/32 trust\n"
        )
        .as_bytes(),
    )?;

    let admin = sandbox.url("postgres");
    block_on(async {
        let env = Environment::from_vars([("HOME", "/nonexistent")]);
        let client = connect_with(&format!("{admin}?sslmode=disable"), &[], &env)
            .await
            .map_err(|e| e.to_string())?;
        let password = PW.replace('\'', "''");
        for statement in [
            format!("CREATE ROLE {PW_ROLE} LOGIN PASSWORD '{password}'"),
            format!("CREATE ROLE {TLS_ROLE} LOGIN"),
            "ALTER SYSTEM SET ssl = on".to_owned(),
            "ALTER SYSTEM SET ssl_cert_file = 'server.crt'".to_owned(),
            "ALTER SYSTEM SET ssl_key_file = 'server.key'".to_owned(),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            client
                .batch_execute(&statement)
                .await
                .map_err(|e| viewkeeper::db::describe(&e))?;
        }
        Ok::<_, String>(())
    })?;
    let server = Server {
        sandbox,
        files,
        ca: ca_path,
        wrong_ca: wrong_path,
    };

    // The reload happens in the background: wait until TLS is on.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tried = block_on(connect_with(
            &server.url("?sslmode=require"),
            &[],
            &server.env(&[]),
        ));
        match tried {
            Ok(_) => return Ok(server),
            Err(error) if Instant::now() > deadline => {
                return Err(format!("TLS never came up: {error}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A self-signed certificate authority.
fn authority(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    CertifiedIssuer::self_signed(params, key).map_err(|e| e.to_string())
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

/// Connects with `url` and `vars` only, and says whether the session uses TLS, as whom.
fn session(url: &str, vars: &[(&str, &str)]) -> Result<(bool, String), ConnectError> {
    let server = server();
    block_on(async {
        let client = connect_with(url, &["public".to_owned()], &server.env(vars)).await?;
        Ok(describe_session(&client).await)
    })
}

async fn describe_session(client: &Client) -> (bool, String) {
    let row = client
        .query_one(
            "SELECT ssl, current_user::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    (row.get(0), row.get(1))
}

fn connects_with_tls(url: &str) -> bool {
    match session(url, &[]) {
        Ok((ssl, _)) => ssl,
        Err(error) => panic!("{url}: {error}"),
    }
}

fn error_text(result: Result<(bool, String), ConnectError>) -> String {
    match result {
        Ok(session) => panic!("connected, as {session:?}"),
        Err(error) => error.to_string(),
    }
}

/// A password file with `contents` and `mode`.
fn passfile(name: &str, contents: &str, mode: u32) -> PathBuf {
    let path = server().files.path().join(name);
    fs::write(&path, contents).expect("write the password file");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

// ---------------------------------------------------------------------------------------
// sslmode
// ---------------------------------------------------------------------------------------

#[test]
fn require_encrypts_without_checking_the_certificate() {
    let server = server();
    assert!(connects_with_tls(&server.url("?sslmode=require")));
    // libpq's other spelling.
    assert!(connects_with_tls(&server.url("?ssl=true")));
}

#[test]
fn disable_connects_in_the_clear_and_prefer_uses_tls_when_offered() {
    let server = server();
    assert!(!connects_with_tls(&server.url("?sslmode=disable")));
    assert!(connects_with_tls(&server.url("")), "prefer is the default");
    assert!(connects_with_tls(&server.url("?sslmode=prefer")));
    // A certificate that fails its check makes prefer fall back to a plain connection, as in
    // libpq.
    let wrong = display(&server.wrong_ca);
    assert!(!connects_with_tls(
        &server.url(&format!("?sslmode=prefer&sslrootcert={wrong}"))
    ));
}

#[test]
fn allow_retries_with_tls_when_the_server_turns_down_a_plain_connection() {
    let server = server();
    let url = format!(
        "postgresql://{TLS_ROLE}@127.0.0.1:{}/postgres?sslmode=allow",
        server.port()
    );
    assert_eq!(
        session(&url, &[]).expect("connects"),
        (true, TLS_ROLE.to_owned())
    );
    let plain = url.replace("allow", "disable");
    let text = error_text(session(&plain, &[]));
    assert!(text.contains("no encryption"), "{text}");
}

#[test]
fn verify_full_accepts_a_certificate_from_the_given_ca_for_the_host_name() {
    let server = server();
    let ca = display(&server.ca);
    for host in ["localhost", "127.0.0.1"] {
        let url = format!(
            "postgresql://postgres@{host}:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
            server.port()
        );
        assert!(connects_with_tls(&url), "{url}");
    }
    // The same from the variables.
    let port = server.port().to_string();
    let vars = [
        ("PGHOST", "localhost"),
        ("PGPORT", port.as_str()),
        ("PGUSER", "postgres"),
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", ca.as_str()),
    ];
    assert_eq!(
        session("", &vars).expect("connects"),
        (true, "postgres".to_owned())
    );
}

#[test]
fn verify_full_refuses_a_certificate_from_another_ca_and_says_why() {
    let server = server();
    let wrong = display(&server.wrong_ca);
    let url = format!(
        "postgresql://postgres:pw-in-url@localhost:{}/postgres?sslmode=verify-full&sslrootcert={wrong}",
        server.port()
    );
    let text = error_text(session(&url, &[]));
    assert!(text.contains("certificate verify failed"), "{text}");
    assert!(text.contains("unknown issuer"), "{text}");
    assert!(text.contains("(sslmode=verify-full"), "{text}");
    assert!(
        text.contains(&wrong),
        "names the root certificate file: {text}"
    );
    assert!(!text.contains("pw-in-url"), "{text}");
    assert!(text.contains("postgres:***@localhost"), "{text}");

    // verify-ca checks the chain too.
    let text = error_text(session(&url.replace("verify-full", "verify-ca"), &[]));
    assert!(text.contains("certificate verify failed"), "{text}");
    // require with a root certificate checks the chain as well, as libpq does.
    let text = error_text(session(&url.replace("verify-full", "require"), &[]));
    assert!(text.contains("certificate verify failed"), "{text}");
}

#[test]
fn verify_ca_ignores_the_host_name_and_verify_full_does_not() {
    let server = server();
    let ca = display(&server.ca);
    // A name the certificate does not cover, reaching the server through hostaddr.
    let url = |mode: &str| {
        format!(
            "host=db.example.test hostaddr=127.0.0.1 port={} user=postgres dbname=postgres \
             sslmode={mode} sslrootcert={ca}",
            server.port()
        )
    };
    assert!(connects_with_tls(&url("verify-ca")));
    let text = error_text(session(&url("verify-full"), &[]));
    assert!(text.contains("certificate verify failed"), "{text}");
    assert!(text.contains("db.example.test"), "{text}");
    assert!(text.contains("(sslmode=verify-full"), "{text}");
}

#[test]
fn a_missing_root_certificate_file_is_an_error() {
    let server = server();
    let url = server.url("?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem");
    let text = error_text(session(&url, &[]));
    assert!(
        text.contains("cannot read the root certificate file /nonexistent/ca.pem"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------
// Passwords
// ---------------------------------------------------------------------------------------

fn pw_url(server: &Server) -> String {
    format!(
        "postgresql://{PW_ROLE}@127.0.0.1:{}/postgres?sslmode=disable",
        server.port()
    )
}

#[test]
fn pgpassword_is_used_when_the_url_has_no_password() {
    let server = server();
    let url = pw_url(server);
    assert_eq!(
        session(&url, &[("PGPASSWORD", PW)]).expect("connects"),
        (false, PW_ROLE.to_owned())
    );
    let text = error_text(session(&url, &[]));
    assert!(text.contains("asks for a password"), "{text}");
}

#[test]
fn a_wrong_password_is_masked_in_the_error() {
    let server = server();
    let url = format!(
        "postgresql://{PW_ROLE}:Wr0ngPassw0rd@127.0.0.1:{}/postgres",
        server.port()
    );
    let text = error_text(session(&url, &[]));
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains("Wr0ngPassw0rd"), "{text}");
    assert!(
        text.contains(&format!("{PW_ROLE}:***@127.0.0.1:{}", server.port())),
        "{text}"
    );

    // From PGPASSWORD and in key=value form too.
    let text = error_text(session(
        &format!("host=127.0.0.1 port={} user={PW_ROLE}", server.port()),
        &[("PGPASSWORD", "Wr0ngPassw0rd")],
    ));
    assert!(!text.contains("Wr0ngPassw0rd"), "{text}");
    assert!(text.contains(&format!("{PW_ROLE}:***@")), "{text}");
}

#[test]
fn the_password_file_is_used_when_no_password_is_given() {
    let server = server();
    let port = server.port();
    let escaped = PW.replace('\\', "\\\\").replace(':', "\\:");
    let file = passfile(
        "pgpass-tcp",
        &format!(
            "# another server first\n\
             db.example.test:{port}:*:{PW_ROLE}:nope\n\
             127.0.0.1:{port}:*:{PW_ROLE}:{escaped}\n"
        ),
        0o600,
    );
    let path = display(&file);
    let url = pw_url(server);
    assert_eq!(
        session(&url, &[("PGPASSFILE", &path)]).expect("connects"),
        (false, PW_ROLE.to_owned())
    );
    // The passfile option in the connection string works the same.
    assert!(session(&format!("{url}&passfile={path}"), &[]).is_ok());

    // PGPASSWORD wins over the file.
    let text = error_text(session(
        &url,
        &[("PGPASSFILE", &path), ("PGPASSWORD", "Wr0ngPassw0rd")],
    ));
    assert!(text.contains("password authentication failed"), "{text}");

    // A file others may read is ignored, as libpq does.
    let open = passfile(
        "pgpass-open",
        &format!("127.0.0.1:{port}:*:{PW_ROLE}:{escaped}\n"),
        0o640,
    );
    let text = error_text(session(&url, &[("PGPASSFILE", &display(&open))]));
    assert!(text.contains("asks for a password"), "{text}");
}

#[test]
fn a_unix_socket_matches_localhost_in_the_password_file() {
    let server = server();
    let port = server.port().to_string();
    let escaped = PW.replace('\\', "\\\\").replace(':', "\\:");
    let file = passfile(
        "pgpass-socket",
        &format!("localhost:{port}:postgres:{PW_ROLE}:{escaped}\n"),
        0o600,
    );
    let socket = display(&server.sandbox.socket_dir().expect("socket folder"));
    let vars = [
        ("PGHOST", socket.as_str()),
        ("PGPORT", port.as_str()),
        ("PGUSER", PW_ROLE),
        ("PGDATABASE", "postgres"),
        ("PGPASSFILE", &display(&file)),
        // Ignored over a Unix socket, as in libpq.
        ("PGSSLMODE", "require"),
    ];
    assert_eq!(
        session("", &vars).expect("connects over the socket"),
        (false, PW_ROLE.to_owned())
    );
}

// ---------------------------------------------------------------------------------------
// The binary, with real environment variables
// ---------------------------------------------------------------------------------------

/// `viewkeeper --project <empty project> plan` with only `vars` among libpq's variables.
fn run_plan(vars: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let server = server();
    let project = server.files.path().join("project");
    fs::create_dir_all(project.join("views")).expect("project folder");
    let mut cmd = assert_cmd::Command::cargo_bin("viewkeeper").expect("binary");
    cmd.arg("--project")
        .arg(&project)
        .arg("plan")
        .env("NO_COLOR", "1")
        .env_remove("CLICOLOR_FORCE")
        .env("HOME", server.home());
    for var in PG_VARS {
        cmd.env_remove(var);
    }
    for (key, value) in vars {
        cmd.env(key, value);
    }
    let output = cmd.output().expect("run viewkeeper");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_binary_connects_from_pg_variables_alone() {
    let server = server();
    let port = server.port().to_string();
    let (code, stdout, stderr) = run_plan(&[
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", &port),
        ("PGUSER", "postgres"),
        ("PGDATABASE", "postgres"),
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");

    let (code, stdout, stderr) = run_plan(&[
        ("PGHOST", "localhost"),
        ("PGPORT", &port),
        ("PGUSER", PW_ROLE),
        ("PGDATABASE", "postgres"),
        ("PGPASSWORD", PW),
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", &display(&server.ca)),
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
}

#[test]
fn the_binary_masks_the_password_and_explains_certificate_failures() {
    let server = server();
    let port = server.port().to_string();
    let (code, stdout, stderr) = run_plan(&[
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", &port),
        ("PGUSER", PW_ROLE),
        ("PGDATABASE", "postgres"),
        ("PGPASSWORD", "Wr0ngPassw0rd"),
    ]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains("Wr0ngPassw0rd") && !stderr.contains("Wr0ngPassw0rd"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{PW_ROLE}:***@127.0.0.1:{port}/postgres")),
        "{stderr}"
    );

    let (code, stdout, stderr) = run_plan(&[
        ("PGHOST", "localhost"),
        ("PGPORT", &port),
        ("PGUSER", "postgres"),
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", &display(&server.wrong_ca)),
    ]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("certificate verify failed"), "{stderr}");
    assert!(stderr.contains("sslmode=verify-full"), "{stderr}");
}

#[test]
fn the_binary_still_asks_for_a_database_when_nothing_names_one() {
    let (code, stdout, stderr) = run_plan(&[]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("no database to connect to"), "{stderr}");
}
