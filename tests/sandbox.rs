//! The throwaway cluster and the test support built on it.

mod support;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use viewkeeper::sandbox::Sandbox;

/// Set in the child process of `the_watchdog_cleans_up_after_a_killed_process`.
const HOLDER_VAR: &str = "VIEWKEEPER_SANDBOX_HOLDER";

#[test]
fn each_test_database_is_fresh_and_distinct() {
    let a = support::test_db();
    let b = support::test_db();
    assert_ne!(a.name, b.name);
    assert_ne!(a.url, b.url);
    assert!(a.name.starts_with("vk_test_"), "{}", a.name);

    for db in [&a, &b] {
        assert_eq!(db.scalar_i64("SELECT 1"), 1);
        assert_eq!(
            db.scalar_string("SELECT current_database()").as_deref(),
            Some(db.name.as_str())
        );
    }

    a.batch("CREATE TABLE only_in_a (id int); INSERT INTO only_in_a VALUES (1), (NULL)");
    assert_eq!(
        a.strings("SELECT id, id::text || 'x' FROM only_in_a ORDER BY id"),
        vec![
            vec![Some("1".to_owned()), Some("1x".to_owned())],
            vec![None, None],
        ]
    );
    let err = b
        .try_batch("SELECT * FROM only_in_a")
        .expect_err("the table was created in the other database");
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn a_sandbox_starts_and_stops_without_leftovers() {
    let started = Instant::now();
    let sandbox = Sandbox::start()
        .unwrap_or_else(|err| panic!("could not start: {}", support::error_chain(&err)));
    let start_time = started.elapsed();
    let port = sandbox.port();
    assert!(sandbox.bindir().join("initdb").is_file());
    assert_eq!(
        sandbox.url("app"),
        format!("postgresql://postgres@127.0.0.1:{port}/app")
    );

    let data_dir = data_directory(&sandbox.url("postgres"));
    assert!(data_dir.is_dir(), "{}", data_dir.display());

    let stopping = Instant::now();
    sandbox.stop();
    let stop_time = stopping.elapsed();
    eprintln!("sandbox start {start_time:?}, stop {stop_time:?}");

    assert!(!data_dir.exists(), "{} is left", data_dir.display());
    assert!(
        data_dir.parent().is_some_and(|dir| !dir.exists()),
        "the sandbox folder of {} is left",
        data_dir.display()
    );
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
}

#[test]
fn dropping_a_sandbox_stops_it() {
    let sandbox = Sandbox::start()
        .unwrap_or_else(|err| panic!("could not start: {}", support::error_chain(&err)));
    let data_dir = data_directory(&sandbox.url("postgres"));
    drop(sandbox);
    assert!(!data_dir.exists(), "{} is left", data_dir.display());
}

#[test]
fn the_watchdog_cleans_up_after_a_killed_process() {
    if std::env::var_os(HOLDER_VAR).is_some() {
        hold_a_sandbox_until_killed();
    }
    // Run this test again in a child process that holds a sandbox, then kill the child
    // without any chance to clean up.
    let mut child = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([
            "--exact",
            "the_watchdog_cleans_up_after_a_killed_process",
            "--nocapture",
        ])
        .env(HOLDER_VAR, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("could not run the test binary");
    let stdout = child.stdout.take().expect("piped stdout");
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("SANDBOX ").map(str::to_owned));
    let Some(line) = line else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the holder process did not report its sandbox");
    };
    let (port, data_dir) = line.split_once(' ').expect("port and data folder");
    let port: u16 = port.parse().expect("a port number");
    let data_dir = PathBuf::from(data_dir);
    assert!(data_dir.is_dir());

    child.kill().expect("could not kill the holder process");
    let _ = child.wait();

    let deadline = Instant::now() + Duration::from_secs(15);
    while (data_dir.exists() || TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!data_dir.exists(), "{} is left", data_dir.display());
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
        "the server still listens on {port}"
    );
}

/// The child of `the_watchdog_cleans_up_after_a_killed_process`: starts a sandbox, says
/// where it is, and waits to be killed.
fn hold_a_sandbox_until_killed() -> ! {
    let sandbox = Sandbox::start()
        .unwrap_or_else(|err| panic!("could not start: {}", support::error_chain(&err)));
    let data_dir = data_directory(&sandbox.url("postgres"));
    println!("SANDBOX {} {}", sandbox.port(), data_dir.display());
    // Wait to be killed; the parent gives up long before this ends.
    std::thread::sleep(Duration::from_secs(120));
    panic!("the parent test never killed this holder process");
}

#[test]
fn replaces_the_database_of_a_url() {
    assert_eq!(
        support::with_database(
            "postgresql://postgres@127.0.0.1:5432/postgres",
            "vk_test_1_2"
        ),
        "postgresql://postgres@127.0.0.1:5432/vk_test_1_2"
    );
    assert_eq!(
        support::with_database("postgres://u:p@h/db?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(
        support::with_database("postgresql://h:5433", "x"),
        "postgresql://h:5433/x"
    );
    assert_eq!(
        support::with_database("host=h user=u", "x"),
        "host=h user=u dbname=x"
    );
}

/// The server's data folder, as it reports it.
fn data_directory(url: &str) -> PathBuf {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|err| panic!("could not connect to {url}: {err}"));
        tokio::spawn(connection);
        let row = client
            .query_one("SELECT current_setting('data_directory')", &[])
            .await
            .unwrap_or_else(|err| panic!("could not query {url}: {err}"));
        Path::new(&row.get::<_, String>(0)).to_owned()
    })
}
