//! The throwaway server: [`TempPostgres`] and its [`Builder`].

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Error;
use crate::locate::{self, RunAs};
use crate::url::encode_path_segment;

/// How many times a start is attempted with a fresh port.
const START_ATTEMPTS: u32 = 5;

/// Seconds `pg_ctl` waits for a start or stop.
const PG_CTL_TIMEOUT: &str = "60";

/// Lines of the server log quoted in a start error.
const LOG_TAIL_LINES: usize = 30;

/// Default `max_connections`.
const DEFAULT_MAX_CONNECTIONS: &str = "200";

/// The database superuser created by `initdb`.
const SUPERUSER: &str = "postgres";

/// Distinguishes temp dirs created by one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The reaper, run as `/bin/sh -c REAPER_SCRIPT sh TEMPDIR PIDFILE STOP...`.
///
/// It ignores SIGHUP/SIGINT (it is in its own process group anyway), blocks
/// until its stdin reaches end-of-file (the only write end belongs to the
/// process that owns the server, so that happens when that process drops the
/// server or dies in any way), then stops the server if its pid file still
/// exists and removes the temp dir. All paths arrive as positional
/// parameters; nothing is interpolated into the script.
const REAPER_SCRIPT: &str = r#"trap '' HUP INT
read -r line
dir=$1
pidfile=$2
shift 2
if [ -f "$pidfile" ]; then "$@"; fi
rm -rf -- "$dir"
"#;

/// Configures and starts a [`TempPostgres`]; see [`TempPostgres::builder`].
///
/// ```no_run
/// let pg = immu_testdb::TempPostgres::builder()
///     .fsync(true)
///     .setting("max_connections", "300")
///     .start()?;
/// # Ok::<(), immu_testdb::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Builder {
    fsync: bool,
    settings: Vec<(String, String)>,
    bin_dir: Option<PathBuf>,
    preferred_port: Option<u16>,
}

impl Builder {
    /// A builder with the defaults: `fsync` off, `max_connections=200`,
    /// binaries found automatically. Same as [`TempPostgres::builder`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the server makes its writes durable (`fsync`,
    /// `synchronous_commit` and `full_page_writes`).
    ///
    /// Off by default, which makes tests fast; the data dies with the server
    /// anyway. Turn it on for crash tests (data committed before
    /// `pg_ctl stop -m immediate` must survive) and realistic benchmarks.
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }

    /// Adds a server setting, as with `postgres -c name=value`, for example
    /// `setting("max_connections", "500")` or
    /// `setting("log_min_duration_statement", "0")`.
    ///
    /// Settings are written to the server's `postgresql.conf` (properly
    /// quoted, so values may contain spaces and quotes) and override the
    /// defaults of this crate. The name may contain ASCII letters, digits,
    /// `_` and `.`; `port` is chosen by this crate and cannot be set. An
    /// invalid name makes [`start`](Self::start) fail with
    /// [`Error::InvalidSetting`].
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Uses the `initdb` and `pg_ctl` in `dir` instead of searching for them
    /// (see [`TempPostgres`] for the search order). If `dir` does not hold
    /// them, [`start`](Self::start) fails with [`Error::NotInstalled`].
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Tries `port` first (e.g. for a demo with a stable URL). If it is
    /// taken, a free port is chosen as usual; check
    /// [`TempPostgres::port`].
    pub fn preferred_port(mut self, port: u16) -> Self {
        self.preferred_port = Some(port);
        self
    }

    /// Creates a fresh cluster in a new temporary directory and starts a
    /// server on a free loopback port. Blocks until the server accepts
    /// connections (typically well under a second).
    ///
    /// # Errors
    ///
    /// [`Error::NotInstalled`] without PostgreSQL binaries,
    /// [`Error::NoPostgresUser`] when running as root without a `postgres`
    /// OS user, [`Error::InvalidSetting`] for a bad setting,
    /// [`Error::StartFailed`] (with the tail of the server log) when the
    /// server does not come up, and [`Error::Io`] / [`Error::Command`] for
    /// other failures. Nothing is left behind on failure.
    pub fn start(self) -> Result<TempPostgres, Error> {
        validate_settings(&self.settings)?;
        let bin_dir = locate::find_bin_dir(self.bin_dir.as_deref())?;
        let run_as = RunAs::detect()?;
        let dir = create_temp_dir(run_as.owner())?;
        let data_dir = dir.join("data");
        let log_file = dir.join("server.log");

        // The reaper exists before anything else does, so that every exit
        // path from here on (error, panic, kill) cleans up.
        let mut stop_argv = run_as.argv(&bin_dir.join("pg_ctl"));
        stop_argv.extend([
            OsString::from("-D"),
            data_dir.clone().into(),
            "stop".into(),
            "-m".into(),
            "immediate".into(),
            "-w".into(),
            "-t".into(),
            PG_CTL_TIMEOUT.into(),
        ]);
        let reaper = match Reaper::spawn(&dir, &data_dir.join("postmaster.pid"), &stop_argv) {
            Ok(reaper) => reaper,
            Err(err) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(err);
            }
        };

        let mut server = TempPostgres {
            url: String::new(),
            port: 0,
            dir,
            data_dir,
            log_file,
            bin_dir,
            run_as,
            reaper: Some(reaper),
        };
        // On error `server` is dropped: that stops whatever runs and removes
        // the directory (and waits for it).
        server.init(self.fsync, &self.settings)?;
        server.start_on_free_port(self.preferred_port)?;
        Ok(server)
    }
}

/// Rejects setting names that could not be written to `postgresql.conf`
/// safely, and `port`.
fn validate_settings(settings: &[(String, String)]) -> Result<(), Error> {
    for (name, _) in settings {
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            && !name.starts_with('.');
        if !valid {
            return Err(Error::InvalidSetting {
                name: name.clone(),
                reason: "a setting name consists of ASCII letters, digits, `_` and `.`".into(),
            });
        }
        if name.eq_ignore_ascii_case("port") {
            return Err(Error::InvalidSetting {
                name: name.clone(),
                reason: "the port is chosen by immu-testdb (see TempPostgres::port)".into(),
            });
        }
    }
    Ok(())
}

/// Quotes a value for `postgresql.conf`: `'...'` with `'` doubled and
/// backslashes and line breaks escaped.
pub(crate) fn quote_conf_value(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        match c {
            '\'' => quoted.push_str("''"),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            _ => quoted.push(c),
        }
    }
    quoted.push('\'');
    quoted
}

/// Creates `$TMPDIR/immu-pg-<pid>-<counter>-<nanos>` (mode 0700), owned by
/// `owner` when given.
fn create_temp_dir(owner: Option<(u32, u32)>) -> Result<PathBuf, Error> {
    let base = std::env::temp_dir();
    let mut last_err = None;
    for _ in 0..100 {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name =
            format!("immu-pg-{}-{}-{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let dir = base.join(name);
        match fs::create_dir(&dir) {
            Ok(()) => {
                let prepared =
                    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).and_then(|()| match owner {
                        Some((uid, gid)) => chown(&dir, Some(uid), Some(gid)),
                        None => Ok(()),
                    });
                if let Err(err) = prepared {
                    let _ = fs::remove_dir(&dir);
                    return Err(Error::io(
                        format!("could not prepare temporary directory {}", dir.display()),
                        err,
                    ));
                }
                return Ok(dir);
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last_err = Some(err),
            Err(err) => {
                return Err(Error::io(
                    format!("could not create temporary directory in {}", base.display()),
                    err,
                ));
            }
        }
    }
    Err(Error::io(
        format!("could not create a unique temporary directory in {}", base.display()),
        last_err.unwrap_or_else(|| io::Error::other("too many attempts")),
    ))
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::io("could not find a free port on 127.0.0.1", e))?;
    let port =
        listener.local_addr().map_err(|e| Error::io("could not find a free port on 127.0.0.1", e))?.port();
    Ok(port)
}

/// A human readable rendering of a command line.
fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `command` to completion with its output captured; fails unless it
/// exits successfully. Returns the combined output.
fn run(mut command: Command) -> Result<String, Error> {
    let what = describe(&command);
    let out = command
        .stdin(Stdio::null())
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| Error::io(format!("could not run `{what}`"), e))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(Error::Command { command: what, status: out.status.to_string(), output: text.trim().to_owned() })
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether a server log says the port was taken.
fn port_was_taken(log: &str) -> bool {
    ["Address already in use", "could not bind", "could not create any TCP/IP sockets"]
        .iter()
        .any(|needle| log.contains(needle))
}

/// The postmaster's pid from `postmaster.pid`, if that file exists.
fn read_postmaster_pid(data_dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Whether process `pid` runs (exists and is not a zombie), per `/proc`.
/// Without `/proc` this cannot be told and is reported as not running.
fn is_running(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Waits up to `timeout` for process `pid` to exit; whether it did.
fn wait_until_exited(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_running(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// The cleanup process; see [`REAPER_SCRIPT`].
#[derive(Debug)]
struct Reaper {
    child: Child,
    /// The write end of the reaper's stdin; only this process holds it.
    stdin: Option<ChildStdin>,
}

impl Reaper {
    fn spawn(dir: &Path, pid_file: &Path, stop_argv: &[OsString]) -> Result<Self, Error> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(REAPER_SCRIPT)
            .arg("sh")
            .arg(dir)
            .arg(pid_file)
            .args(stop_argv)
            .env("LC_ALL", "C")
            .current_dir("/")
            .stdin(Stdio::piped())
            // Never hold on to our stdout/stderr: whoever reads them (cargo
            // test, a shell pipeline) would wait for the reaper.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: Ctrl-C on the terminal must not kill it.
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io("could not spawn the cleanup process (/bin/sh)", e))?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }

    /// Triggers the cleanup and waits for it to finish.
    fn finish(&mut self) -> Result<(), Error> {
        drop(self.stdin.take());
        let status = self.child.wait().map_err(|e| Error::io("could not wait for the cleanup process", e))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Cleanup { detail: format!("the cleanup process failed ({status})") })
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.finish();
        }
    }
}

/// A running throwaway PostgreSQL server.
///
/// Created by [`TempPostgres::start`] or [`TempPostgres::builder`]. The
/// server listens on `127.0.0.1` only (no Unix socket), on a free port, with
/// trust authentication for the superuser `postgres`; connect with
/// [`url`](Self::url). Its cluster lives in a fresh directory under
/// [`std::env::temp_dir`].
///
/// # Finding PostgreSQL
///
/// `initdb` and `pg_ctl` are taken from the directory named by the
/// `IMMU_PG_BIN` environment variable if set (or
/// [`Builder::bin_dir`]), otherwise from the first `PATH` entry holding both,
/// otherwise from the highest version under `/usr/lib/postgresql/*/bin`,
/// otherwise from `/usr/local/pgsql/bin`.
///
/// # Running as root
///
/// PostgreSQL refuses to run as root. When the process is root, `initdb`
/// and `pg_ctl` run as the `postgres` OS user (via `runuser`, or `su`), and
/// the temporary directory is owned by that user. That user must be able to
/// reach the temporary directory (the default `/tmp` is fine).
///
/// # Cleanup
///
/// Dropping the value (or calling [`stop`](Self::stop)) stops the server
/// and removes its directory before returning. If the process dies without
/// dropping it (panic with `panic = "abort"`, `std::process::exit`,
/// SIGKILL, Ctrl-C, or a `static` that is never dropped), a small watchdog
/// process started with the server notices and does the same within moments.
#[derive(Debug)]
pub struct TempPostgres {
    url: String,
    port: u16,
    dir: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    bin_dir: PathBuf,
    run_as: RunAs,
    reaper: Option<Reaper>,
}

impl TempPostgres {
    /// Starts a server with the default settings; same as
    /// `TempPostgres::builder().start()`.
    ///
    /// # Errors
    ///
    /// See [`Builder::start`].
    pub fn start() -> Result<Self, Error> {
        Builder::new().start()
    }

    /// A [`Builder`] to configure the server before starting it.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// The connection URL of the `postgres` database as superuser
    /// `postgres`: `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The connection URL of another database on this server (which must
    /// be created first, e.g. with `CREATE DATABASE`). The name is
    /// percent-encoded as needed.
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{}", self.port, encode_path_segment(database))
    }

    /// The TCP port the server listens on (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory (`<temp dir>/data`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log (`<temp dir>/server.log`).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The directory the PostgreSQL binaries (`initdb`, `pg_ctl`,
    /// `postgres`) were taken from.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Runs `pg_ctl -D <data dir> ARGS...` as the right OS user, e.g.
    /// `pg.pg_ctl(&["stop", "-m", "immediate"])` to simulate a crash.
    ///
    /// For `start` and `restart`, `-l <log file>` is added unless `ARGS`
    /// has `-l` already, so the server logs to [`log_file`](Self::log_file)
    /// (and does not inherit this process's output).
    ///
    /// # Errors
    ///
    /// [`Error::Command`] with pg_ctl's output if it fails.
    pub fn pg_ctl(&self, args: &[&str]) -> Result<(), Error> {
        let mut command = self.run_as.command(&self.bin_dir.join("pg_ctl"));
        command.arg("-D").arg(&self.data_dir);
        let starts = args.iter().any(|a| matches!(*a, "start" | "restart"));
        let has_log = args.iter().any(|a| a.starts_with("-l") || a.starts_with("--log"));
        if starts && !has_log {
            command.arg("-l").arg(&self.log_file);
        }
        command.args(args).current_dir(&self.dir);
        run(command).map(drop)
    }

    /// Starts the server again, on the same port and directory: after
    /// `pg_ctl(&["stop", "-m", "immediate"])` this performs crash recovery;
    /// if the server is running it is restarted (`-m fast`).
    ///
    /// # Errors
    ///
    /// [`Error::Command`] with pg_ctl's output and the tail of the server
    /// log if the server does not come up (e.g. the port was taken while it
    /// was down).
    pub fn restart(&self) -> Result<(), Error> {
        let before = self.log_len();
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", PG_CTL_TIMEOUT])
            .map_err(|err| self.with_log_tail(err, before))
    }

    /// Stops the server and removes its directory, waiting for both.
    /// Dropping the value does the same but ignores errors.
    ///
    /// # Errors
    ///
    /// [`Error::Command`] if `pg_ctl stop` fails, [`Error::Cleanup`] if the
    /// directory could not be removed. Cleanup is attempted to the end
    /// either way.
    pub fn stop(mut self) -> Result<(), Error> {
        self.shutdown()
    }

    /// Runs `initdb` and writes the server settings.
    fn init(&mut self, fsync: bool, settings: &[(String, String)]) -> Result<(), Error> {
        let mut initdb = self.run_as.command(&self.bin_dir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C", "-N"])
            .current_dir(&self.dir);
        run(initdb).map_err(|err| match (err, self.run_as.owner()) {
            (Error::Command { command, status, mut output }, Some(_)) => {
                let _ = write!(
                    output,
                    "\n(initdb runs as the `{}` OS user, which must be able to reach {}; \
                     set TMPDIR to a directory it can reach, such as /tmp)",
                    locate::OS_USER,
                    self.dir.display()
                );
                Error::Command { command, status, output }
            }
            (err, _) => err,
        })?;

        let durable = if fsync { "on" } else { "off" };
        let mut conf = String::from("\n# --- added by immu-testdb ---\n");
        let defaults = [
            ("listen_addresses", "127.0.0.1"),
            ("unix_socket_directories", ""),
            ("max_connections", DEFAULT_MAX_CONNECTIONS),
            ("fsync", durable),
            ("synchronous_commit", durable),
            ("full_page_writes", durable),
        ];
        let all = defaults
            .iter()
            .map(|(n, v)| (*n, *v))
            .chain(settings.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        for (name, value) in all {
            let _ = writeln!(conf, "{name} = {}", quote_conf_value(value));
        }
        self.append_conf(&conf)
    }

    /// Appends to `postgresql.conf` (later lines win). Appending keeps the
    /// file's owner.
    fn append_conf(&self, text: &str) -> Result<(), Error> {
        let path = self.data_dir.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(|e| Error::io(format!("could not write {}", path.display()), e))
    }

    /// Starts the server on a free port (`preferred` first, if given),
    /// retrying with another port when the chosen one was taken in the
    /// meantime.
    fn start_on_free_port(&mut self, preferred: Option<u16>) -> Result<(), Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = match preferred {
                Some(port) if attempt == 1 && port != 0 => port,
                _ => free_port()?,
            };
            self.append_conf(&format!("port = {port}\n"))?;
            self.port = port;
            self.url = format!("postgres://{SUPERUSER}@127.0.0.1:{port}/postgres");
            let before = self.log_len();
            match self.pg_ctl(&["start", "-w", "-t", PG_CTL_TIMEOUT]) {
                Ok(()) => return Ok(()),
                Err(err) => {
                    let log = self.log_since(before);
                    if attempt < START_ATTEMPTS && port_was_taken(&log) {
                        continue;
                    }
                    let detail = match err {
                        Error::Command { output, .. } => output,
                        other => other.to_string(),
                    };
                    return Err(Error::StartFailed {
                        attempts: attempt,
                        detail,
                        log_tail: tail(&log, LOG_TAIL_LINES),
                    });
                }
            }
        }
    }

    /// The current size of the server log.
    fn log_len(&self) -> u64 {
        fs::metadata(&self.log_file).map_or(0, |m| m.len())
    }

    /// The server log from byte `offset` on.
    fn log_since(&self, offset: u64) -> String {
        let bytes = fs::read(&self.log_file).unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Adds the tail of the server log (from `offset`) to a command error.
    fn with_log_tail(&self, err: Error, offset: u64) -> Error {
        match err {
            Error::Command { command, status, mut output } => {
                let log = tail(&self.log_since(offset), LOG_TAIL_LINES);
                if !log.is_empty() {
                    let _ = write!(output, "\n--- tail of the server log ---\n{log}");
                }
                Error::Command { command, status, output }
            }
            other => other,
        }
    }

    /// Stops the server, lets the reaper remove the directory and waits for
    /// it. Idempotent.
    fn shutdown(&mut self) -> Result<(), Error> {
        let Some(mut reaper) = self.reaper.take() else {
            return Ok(());
        };
        let mut first_error = None;
        let postmaster = read_postmaster_pid(&self.data_dir);
        // The data is thrown away, so an immediate stop (no checkpoint) is
        // all that is needed.
        if postmaster.is_some()
            && let Err(err) = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", PG_CTL_TIMEOUT])
        {
            first_error = Some(err);
        }
        if let Err(err) = reaper.finish() {
            first_error.get_or_insert(err);
        }
        // pg_ctl returns once the pid file is gone, a moment before the
        // postmaster has exited; wait for that too.
        if let Some(pid) = postmaster
            && !wait_until_exited(pid, Duration::from_secs(10))
        {
            first_error.get_or_insert(Error::Cleanup {
                detail: format!("the postmaster (pid {pid}) is still running"),
            });
        }
        if self.dir.exists()
            && let Err(err) = fs::remove_dir_all(&self.dir)
        {
            first_error.get_or_insert(Error::Cleanup {
                detail: format!("could not remove {}: {err}", self.dir.display()),
            });
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_values_are_quoted() {
        assert_eq!(quote_conf_value(""), "''");
        assert_eq!(quote_conf_value("a b"), "'a b'");
        assert_eq!(quote_conf_value("it's"), "'it''s'");
        assert_eq!(quote_conf_value(r"a\b"), r"'a\\b'");
        assert_eq!(quote_conf_value("a\nb"), r"'a\nb'");
    }

    #[test]
    fn setting_names_are_validated() {
        let ok = |n: &str| validate_settings(&[(n.to_owned(), "x".to_owned())]).is_ok();
        assert!(ok("max_connections"));
        assert!(ok("pg_stat_statements.track"));
        assert!(!ok(""));
        assert!(!ok("a b"));
        assert!(!ok("a=b"));
        assert!(!ok("x'"));
        assert!(!ok("port"));
        assert!(!ok("PORT"));
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
