//! Integration tests against real PostgreSQL servers (no mocks).
//!
//! Some tests re-run this test binary as a child process (see
//! [`helper_child_process`]) to observe what happens when a process dies
//! without dropping its server, or runs with a different environment.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use immu_testdb::{Error, TempPostgres, TestDatabase};

/// Selects the helper mode in a child process.
const HELPER_ENV: &str = "IMMU_TESTDB_HELPER";

/// Runs `sql` with psql; `Err` holds psql's error output.
fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, url])
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs `sql` with psql and panics on failure.
fn query(url: &str, sql: &str) -> String {
    psql(url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Processes whose command line mentions `path` or whose working directory
/// is inside it (PostgreSQL backends rename themselves but keep the data
/// directory as their working directory).
fn processes_using(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    let own = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == own {
            continue;
        }
        let cmdline = fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cwd = fs::read_link(entry.path().join("cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if cmdline.contains(&needle) || cwd.starts_with(&needle) {
            found.push(format!("pid {name}: {cmdline} (cwd {cwd})"));
        }
    }
    found
}

/// The postmaster's pid, from `postmaster.pid`.
fn postmaster_pid(data_dir: &Path) -> u32 {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).expect("postmaster.pid");
    text.lines().next().unwrap().trim().parse().unwrap()
}

/// The real uid of a process, from `/proc/<pid>/status`.
fn process_uid(pid: u32) -> u32 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Whether process `pid` runs (exists and is not a zombie).
fn is_running(pid: &str) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Kills (SIGKILL) and reaps a child process when dropped, so that a failed
/// assertion does not leave a helper process behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `id -u <user>`.
fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    assert!(out.status.success(), "no OS user {user}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Our effective uid.
fn my_uid() -> u32 {
    fs::metadata("/proc/self").unwrap().uid()
}

/// A fresh empty directory (removed by the caller).
fn empty_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "immu-testdb-empty-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Asserts that the server's directory and all its processes are gone.
fn assert_gone(dir: &Path) {
    assert!(!dir.exists(), "{} still exists", dir.display());
    let left = processes_using(dir);
    assert!(left.is_empty(), "processes left over: {left:#?}");
}

/// Waits up to `timeout` for the directory and its processes to vanish.
fn wait_gone(dir: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !dir.exists() && processes_using(dir).is_empty() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert_gone(dir);
}

/// Re-runs this test binary as a child that executes [`helper_child_process`]
/// in `mode`, with its stdout piped.
fn spawn_helper(mode: &str, configure: impl FnOnce(&mut Command)) -> KillOnDrop {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["helper_child_process", "--exact", "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    configure(&mut command);
    KillOnDrop(command.spawn().unwrap())
}

/// Reads the child's whole stdout, failing (instead of hanging) if the
/// pipe is not closed in time, e.g. because a leftover process holds it.
fn read_all_with_timeout(child: &mut Child, timeout: Duration) -> String {
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx.recv_timeout(timeout).expect("the child's stdout stayed open: some process inherited it")
}

/// Reads the output of a `hang` helper up to its last report line.
fn read_until_pid(child: &mut KillOnDrop) -> String {
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let done = line.contains("HELPER PID=");
            lines.push(line);
            if done {
                break;
            }
        }
        let _ = tx.send(lines.join("\n"));
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("helper did not report")
}

/// The value of `HELPER KEY=value` in the helper's output.
fn helper_value(output: &str, key: &str) -> Option<String> {
    // libtest may print "test helper_child_process ... " in front.
    let marker = format!("HELPER {key}=");
    output.lines().find_map(|line| line.find(&marker).map(|i| line[i + marker.len()..].to_owned()))
}

/// Not a test by itself: when re-run with `IMMU_TESTDB_HELPER` set, this
/// plays the child process of the tests below. Without it, it does nothing.
#[test]
fn helper_child_process() {
    let Ok(mode) = std::env::var(HELPER_ENV) else {
        return;
    };
    let report = |key: &str, value: &str| println!("HELPER {key}={value}");
    match mode.as_str() {
        "exit" | "hang" => {
            let pg = TempPostgres::start().expect("start");
            report("URL", pg.url());
            report("DIR", &pg.data_dir().parent().unwrap().to_string_lossy());
            report("PID", &postmaster_pid(pg.data_dir()).to_string());
            if mode == "exit" {
                // Exit without running destructors.
                std::process::exit(0);
            }
            loop {
                thread::sleep(Duration::from_secs(1));
            }
        }
        "start-error" => match TempPostgres::start() {
            Ok(_) => report("ERROR", "none"),
            Err(err) => report("ERROR", &err.to_string().replace('\n', "\\n")),
        },
        "from-env" => {
            let db = TestDatabase::from_env().expect("from_env");
            report("TEMP", &db.is_temp().to_string());
            report("URL", db.url());
            report("URL_FOR", &db.url_for("other db"));
            if let Some(pg) = db.temp() {
                report("ANSWER", &query(pg.url(), "select 40 + 2"));
            }
        }
        other => panic!("unknown helper mode {other}"),
    }
}

#[test]
fn start_query_and_drop_cleans_up() {
    let pg = TempPostgres::start().unwrap();
    let url = pg.url().to_owned();
    assert_eq!(url, format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port()));
    assert_eq!(pg.url_for("my db"), format!("postgres://postgres@127.0.0.1:{}/my%20db", pg.port()));
    let dir = pg.data_dir().parent().unwrap().to_path_buf();
    assert!(pg.data_dir().join("PG_VERSION").is_file());
    assert!(pg.log_file().is_file());
    assert!(pg.bin_dir().join("pg_ctl").is_file());

    assert_eq!(query(&url, "select 1"), "1");
    assert_eq!(query(&url, "select current_user"), "postgres");
    assert_eq!(query(&url, "show fsync"), "off");
    assert_eq!(query(&url, "show synchronous_commit"), "off");
    assert_eq!(query(&url, "show full_page_writes"), "off");
    assert_eq!(query(&url, "show max_connections"), "200");
    assert_eq!(query(&url, "show listen_addresses"), "127.0.0.1");
    assert_eq!(query(&url, "show server_encoding"), "UTF8");
    query(&url, "create database \"my db\"");
    assert_eq!(query(&pg.url_for("my db"), "select current_database()"), "my db");

    let pid = postmaster_pid(pg.data_dir());
    assert!(!processes_using(&dir).is_empty());
    drop(pg);
    // No waiting: when drop returns, everything is gone.
    assert_gone(&dir);
    assert!(!is_running(&pid.to_string()), "postmaster {pid} still runs");
    assert!(psql(&url, "select 1").is_err());
}

#[test]
fn postmaster_runs_as_postgres_user_when_root() {
    let pg = TempPostgres::start().unwrap();
    let pid = postmaster_pid(pg.data_dir());
    let uid = process_uid(pid);
    let data_owner = fs::metadata(pg.data_dir()).unwrap().uid();
    if my_uid() == 0 {
        let postgres = uid_of("postgres");
        assert_ne!(postgres, 0);
        assert_eq!(uid, postgres, "postmaster {pid} must run as the postgres user");
        assert_eq!(data_owner, postgres);
        let dir_owner = fs::metadata(pg.data_dir().parent().unwrap()).unwrap().uid();
        assert_eq!(dir_owner, postgres);
    } else {
        assert_eq!(uid, my_uid());
        assert_eq!(data_owner, my_uid());
    }
    pg.stop().unwrap();
}

#[test]
fn two_servers_at_once_get_different_ports() {
    let other = thread::spawn(TempPostgres::start);
    let a = TempPostgres::start().unwrap();
    let b = other.join().unwrap().unwrap();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    assert_eq!(query(a.url(), "select 'a'"), "a");
    assert_eq!(query(b.url(), "select 'b'"), "b");
    let (dir_a, dir_b) = (a.data_dir().to_path_buf(), b.data_dir().to_path_buf());
    drop(a);
    assert_gone(&dir_a);
    assert_eq!(query(b.url(), "select 'still b'"), "still b");
    drop(b);
    assert_gone(&dir_b);
}

#[test]
fn taken_port_is_retried_with_another() {
    // Hold a port, and ask for exactly that one: the first start fails with
    // "Address already in use", the retry picks a free port.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    let pg = TempPostgres::builder().preferred_port(taken).start().unwrap();
    assert_ne!(pg.port(), taken);
    assert_eq!(query(pg.url(), "select 1"), "1");
    let log = fs::read_to_string(pg.log_file()).unwrap();
    assert!(log.contains("Address already in use"), "{log}");
    drop(holder);
}

#[test]
fn preferred_port_is_used_when_free() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let pg = TempPostgres::builder().preferred_port(port).start().unwrap();
    // (Another process could grab it in between; then a retry happened.)
    let log = fs::read_to_string(pg.log_file()).unwrap();
    if !log.contains("Address already in use") {
        assert_eq!(pg.port(), port);
    }
    assert_eq!(query(pg.url(), "select 1"), "1");
}

#[test]
fn handles_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TempPostgres>();
    assert_send_sync::<TestDatabase>();
    assert_send_sync::<Error>();
}

#[test]
fn settings_are_applied_and_quoted() {
    let tricky = r"it's a \ value with 'quotes' and spaces";
    let pg = TempPostgres::builder()
        .setting("max_connections", "50")
        .setting("immu.test_value", tricky)
        .setting("search_path", "\"my schema\", public")
        .start()
        .unwrap();
    assert_eq!(query(pg.url(), "show max_connections"), "50");
    assert_eq!(query(pg.url(), "show immu.test_value"), tricky);
    assert_eq!(query(pg.url(), "show search_path"), "\"my schema\", public");
}

#[test]
fn invalid_settings_are_rejected_before_starting() {
    for name in ["bad name", "a=b", "", "port"] {
        let err = TempPostgres::builder().setting(name, "1").start().unwrap_err();
        assert!(matches!(err, Error::InvalidSetting { .. }), "{name}: {err}");
    }
}

#[test]
fn restart_after_immediate_stop() {
    let pg = TempPostgres::builder().fsync(true).start().unwrap();
    let url = pg.url().to_owned();
    assert_eq!(query(&url, "show fsync"), "on");
    assert_eq!(query(&url, "show synchronous_commit"), "on");
    query(&url, "create table t (x int); insert into t values (1), (2)");

    pg.pg_ctl(&["stop", "-m", "immediate"]).unwrap();
    assert!(psql(&url, "select 1").is_err(), "server should be down");
    pg.restart().unwrap();
    // Same port, crash recovery kept the committed rows.
    assert_eq!(query(&url, "select sum(x) from t"), "3");

    // restart() also works while the server runs.
    pg.restart().unwrap();
    assert_eq!(query(&url, "select count(*) from t"), "2");

    // Stopping an already stopped server is fine too.
    pg.pg_ctl(&["stop", "-m", "immediate"]).unwrap();
    let dir = pg.data_dir().parent().unwrap().to_path_buf();
    pg.stop().unwrap();
    assert_gone(&dir);
}

#[test]
fn start_failure_reports_the_server_log() {
    let err = TempPostgres::builder().setting("shared_buffers", "lots").start().unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::StartFailed { attempts: 1, .. }), "{message}");
    assert!(message.contains("shared_buffers"), "{message}");
    assert!(message.contains("tail of the server log"), "{message}");
}

#[test]
fn pg_ctl_errors_are_reported() {
    let pg = TempPostgres::start().unwrap();
    let err = pg.pg_ctl(&["no-such-action"]).unwrap_err();
    assert!(matches!(err, Error::Command { .. }), "{err}");
    assert!(err.to_string().contains("no-such-action"), "{err}");
}

#[test]
fn reaper_cleans_up_after_exit_without_drop() {
    let mut child = spawn_helper("exit", |_| {});
    // The pipe must close: neither the reaper nor the server may hold it.
    let output = read_all_with_timeout(&mut child.0, Duration::from_secs(30));
    let status = child.0.wait().unwrap();
    assert!(status.success(), "helper failed: {output}");
    let dir = PathBuf::from(helper_value(&output, "DIR").expect("helper output"));
    let url = helper_value(&output, "URL").unwrap();
    let pid = helper_value(&output, "PID").unwrap();
    wait_gone(&dir, Duration::from_secs(10));
    assert!(!is_running(&pid), "postmaster {pid} still runs");
    assert!(psql(&url, "select 1").is_err());
}

#[test]
fn reaper_cleans_up_after_sigkill() {
    let mut child = spawn_helper("hang", |_| {});
    let output = read_until_pid(&mut child);
    let dir = PathBuf::from(helper_value(&output, "DIR").expect("helper output"));
    let url = helper_value(&output, "URL").unwrap();
    assert_eq!(query(&url, "select 1"), "1");

    child.0.kill().unwrap(); // SIGKILL: no destructor, no handler runs
    child.0.wait().unwrap();
    wait_gone(&dir, Duration::from_secs(10));
    assert!(psql(&url, "select 1").is_err());
}

#[test]
fn reaper_cleans_up_after_ctrl_c() {
    // Ctrl-C on a terminal sends SIGINT to the foreground process group:
    // run the helper in a group of its own and signal the whole group.
    let mut child = spawn_helper("hang", |c| {
        c.process_group(0);
    });
    let output = read_until_pid(&mut child);
    let dir = PathBuf::from(helper_value(&output, "DIR").expect("helper output"));
    let url = helper_value(&output, "URL").unwrap();
    assert_eq!(query(&url, "select 1"), "1");

    // A process started in the background by a non-interactive shell inherits SIGINT ignored, and
    // an ignored signal cannot be restored without unsafe code: there Ctrl-C could not stop the
    // helper anyway, so the group gets SIGTERM, which ends it the same way (no destructor runs).
    let signal = if sigint_ignored(child.0.id()) {
        eprintln!(
            "SIGINT is ignored in this environment (started in the background?): sending SIGTERM instead"
        );
        "-TERM"
    } else {
        "-INT"
    };
    let group = format!("-{}", child.0.id());
    let status = Command::new("kill").args([signal, "--", &group]).status().unwrap();
    assert!(status.success());
    child.0.wait().unwrap();
    wait_gone(&dir, Duration::from_secs(10));
    assert!(psql(&url, "select 1").is_err());
}

/// Whether process `pid` ignores SIGINT (bit 1 of `SigIgn` in `/proc/<pid>/status`).
fn sigint_ignored(pid: u32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (2 - 1)) != 0)
}

#[test]
fn not_installed_with_bin_dir() {
    let empty = empty_dir();
    let err = TempPostgres::builder().bin_dir(&empty).start().unwrap_err();
    fs::remove_dir_all(&empty).unwrap();
    assert!(matches!(err, Error::NotInstalled { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("install"), "{message}");
    assert!(message.contains("DATABASE_URL"), "{message}");
    assert!(!message.contains('\n'), "one line please: {message}");
}

#[test]
fn not_installed_with_env_and_empty_path() {
    let empty = empty_dir();
    let mut child = spawn_helper("start-error", |c| {
        c.env("IMMU_PG_BIN", &empty).env("PATH", "");
    });
    let output = read_all_with_timeout(&mut child.0, Duration::from_secs(30));
    child.0.wait().unwrap();
    fs::remove_dir_all(&empty).unwrap();
    let message = helper_value(&output, "ERROR").expect("helper output");
    assert!(message.contains("install"), "{message}");
    assert!(message.contains("IMMU_PG_BIN="), "{message}");
    assert!(!message.contains("\\n"), "one line please: {message}");
}

#[test]
fn test_database_uses_database_url() {
    let mut child = spawn_helper("from-env", |c| {
        c.env("DATABASE_URL", "postgres://app:secret@db.example:5433/app?sslmode=disable");
    });
    let output = read_all_with_timeout(&mut child.0, Duration::from_secs(30));
    assert!(child.0.wait().unwrap().success(), "{output}");
    assert_eq!(helper_value(&output, "TEMP").as_deref(), Some("false"));
    assert_eq!(
        helper_value(&output, "URL").as_deref(),
        Some("postgres://app:secret@db.example:5433/app?sslmode=disable")
    );
    assert_eq!(
        helper_value(&output, "URL_FOR").as_deref(),
        Some("postgres://app:secret@db.example:5433/other%20db?sslmode=disable")
    );
}

#[test]
fn test_database_starts_a_server_without_database_url() {
    let mut child = spawn_helper("from-env", |c| {
        c.env("DATABASE_URL", "");
    });
    let output = read_all_with_timeout(&mut child.0, Duration::from_secs(30));
    assert!(child.0.wait().unwrap().success(), "{output}");
    assert_eq!(helper_value(&output, "TEMP").as_deref(), Some("true"));
    let url = helper_value(&output, "URL").unwrap();
    assert!(url.starts_with("postgres://postgres@127.0.0.1:"), "{url}");
    assert_eq!(helper_value(&output, "ANSWER").as_deref(), Some("42"));
    // The child dropped its server before exiting.
    assert!(psql(&url, "select 1").is_err());
}
