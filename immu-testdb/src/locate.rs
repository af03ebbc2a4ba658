//! Finding the PostgreSQL binaries and deciding which OS user runs them.

use std::env;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Error;

/// The environment variable that names the directory holding `initdb` and
/// `pg_ctl`, overriding the search.
pub(crate) const BIN_ENV: &str = "IMMU_PG_BIN";

/// The OS user the server runs as when we are root.
pub(crate) const OS_USER: &str = "postgres";

/// Where the Debian/Ubuntu packages install versioned binaries.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// Where a source build installs by default.
const SOURCE_BUILD_BIN: &str = "/usr/local/pgsql/bin";

/// Directories searched for system tools (`runuser`, `su`, `id`) in addition
/// to `PATH`.
const SYSTEM_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Finds the directory holding `initdb` and `pg_ctl`.
///
/// `explicit` (from [`Builder::bin_dir`](crate::Builder::bin_dir)) wins, then
/// the `IMMU_PG_BIN` environment variable; both are used strictly (no
/// fallback). Otherwise: `PATH`, the highest version under
/// `/usr/lib/postgresql/*/bin`, `/usr/local/pgsql/bin`.
pub(crate) fn find_bin_dir(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(dir) = explicit {
        return checked(dir).ok_or_else(|| Error::NotInstalled {
            searched: format!("in {} (Builder::bin_dir)", one_line(dir)),
        });
    }
    if let Some(dir) = env::var_os(BIN_ENV).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        return checked(&dir)
            .ok_or_else(|| Error::NotInstalled { searched: format!("in {BIN_ENV}={}", one_line(&dir)) });
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            if dir.as_os_str().is_empty() {
                continue;
            }
            if let Some(found) = checked(&dir) {
                return Ok(found);
            }
        }
    }
    for dir in debian_bin_dirs() {
        if let Some(found) = checked(&dir) {
            return Ok(found);
        }
    }
    if let Some(found) = checked(Path::new(SOURCE_BUILD_BIN)) {
        return Ok(found);
    }
    Err(Error::NotInstalled { searched: format!("on PATH, in {DEBIAN_ROOT}/*/bin or in {SOURCE_BUILD_BIN}") })
}

/// Renders a path for a one-line message.
fn one_line(path: &Path) -> String {
    path.display().to_string().escape_debug().to_string()
}

/// `/usr/lib/postgresql/<version>/bin`, highest version first.
fn debian_bin_dirs() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(DEBIAN_ROOT) else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u64>, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|entry| {
            let name = entry.file_name();
            (version_key(&name.to_string_lossy()), entry.path().join("bin"))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

/// `"9.6"` → `[9, 6]`, `"16"` → `[16]`; a non-numeric part counts as 0.
pub(crate) fn version_key(name: &str) -> Vec<u64> {
    name.split('.')
        .map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().unwrap_or(0)
        })
        .collect()
}

/// `dir` if it holds both `initdb` and `pg_ctl`, made absolute, with
/// symlinks to the binaries followed (so `/usr/local/bin` with symlinks
/// resolves to the real installation directory, where `postgres` lives too).
fn checked(dir: &Path) -> Option<PathBuf> {
    if !(is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl"))) {
        return None;
    }
    if let Ok(real) = fs::canonicalize(dir.join("initdb"))
        && let Some(parent) = real.parent()
        && is_executable(&parent.join("pg_ctl"))
    {
        return Some(parent.to_path_buf());
    }
    Some(std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()))
}

/// A regular file with an execute bit (following symlinks).
fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds a system tool on `PATH` or in the usual system directories.
pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    let from_path = env::var_os("PATH").map(|p| env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    from_path
        .into_iter()
        .filter(|d| d.is_absolute())
        .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// How the PostgreSQL binaries are run.
#[derive(Debug, Clone)]
pub(crate) enum RunAs {
    /// Directly, as the current user (we are not root).
    Direct,
    /// `runuser -u USER -- program args...` (we are root).
    Runuser {
        /// Path of `runuser`.
        runuser: PathBuf,
        /// uid and gid of the target user (owner of the temp dir).
        uid: u32,
        /// gid of the target user.
        gid: u32,
    },
    /// `su -s /bin/sh -c 'exec "$0" "$@"' USER -- program args...` (root
    /// without `runuser`).
    Su {
        /// Path of `su`.
        su: PathBuf,
        /// uid of the target user.
        uid: u32,
        /// gid of the target user.
        gid: u32,
    },
}

impl RunAs {
    /// Decides how to run the binaries: directly, or as the `postgres`
    /// user when we are root.
    pub(crate) fn detect() -> Result<Self, Error> {
        if !is_root() {
            return Ok(Self::Direct);
        }
        let Some((uid, gid)) = lookup_user(OS_USER) else {
            return Err(Error::NoPostgresUser {
                detail: format!(
                    "there is no `{OS_USER}` OS user to run it as: create one \
                     (useradd --system {OS_USER})"
                ),
            });
        };
        if uid == 0 {
            return Err(Error::NoPostgresUser {
                detail: format!("the `{OS_USER}` OS user has uid 0: give it a non-root uid"),
            });
        }
        if let Some(runuser) = find_tool("runuser") {
            return Ok(Self::Runuser { runuser, uid, gid });
        }
        if let Some(su) = find_tool("su") {
            return Ok(Self::Su { su, uid, gid });
        }
        Err(Error::NoPostgresUser {
            detail: format!(
                "neither `runuser` nor `su` was found to switch to the `{OS_USER}` OS user \
                 (install util-linux)"
            ),
        })
    }

    /// The uid/gid that must own the temporary directory, if it is not us.
    pub(crate) fn owner(&self) -> Option<(u32, u32)> {
        match self {
            Self::Direct => None,
            Self::Runuser { uid, gid, .. } | Self::Su { uid, gid, .. } => Some((*uid, *gid)),
        }
    }

    /// The command line prefix that runs `program` as the right user; the
    /// program's own arguments follow. Nothing is interpolated into a shell
    /// script: the `su` variant passes the program and its arguments as
    /// positional parameters.
    pub(crate) fn argv(&self, program: &Path) -> Vec<OsString> {
        match self {
            Self::Direct => vec![program.into()],
            Self::Runuser { runuser, .. } => {
                vec![runuser.into(), "-u".into(), OS_USER.into(), "--".into(), program.into()]
            }
            Self::Su { su, .. } => vec![
                su.into(),
                "-s".into(),
                "/bin/sh".into(),
                "-c".into(),
                r#"exec "$0" "$@""#.into(),
                OS_USER.into(),
                "--".into(),
                program.into(),
            ],
        }
    }

    /// A [`Command`] that runs `program` as the right user.
    pub(crate) fn command(&self, program: &Path) -> Command {
        let argv = self.argv(program);
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        command
    }
}

/// Whether the effective user is root: the owner of `/proc/self`, else
/// `id -u`.
fn is_root() -> bool {
    if let Ok(meta) = fs::metadata("/proc/self") {
        return meta.uid() == 0;
    }
    id_number(&["-u"]) == Some(0)
}

/// uid and gid of `user`: `id -u USER` / `id -g USER`, else `/etc/passwd`.
fn lookup_user(user: &str) -> Option<(u32, u32)> {
    if let (Some(uid), Some(gid)) = (id_number(&["-u", user]), id_number(&["-g", user])) {
        return Some((uid, gid));
    }
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != user {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// Runs `id ARGS` and parses its output as a number.
fn id_number(args: &[&str]) -> Option<u32> {
    let id = find_tool("id")?;
    let out = Command::new(id)
        .args(args.iter().map(OsStr::new))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec![version_key("9.6"), version_key("16"), version_key("10"), version_key("15")];
        v.sort();
        assert_eq!(v, vec![vec![9, 6], vec![10], vec![15], vec![16]]);
        assert_eq!(version_key("17beta1"), vec![17]);
    }

    /// Runs a shell through `run_as` and checks the user and that tricky
    /// arguments arrive unchanged (no shell interpolation).
    fn check_switch_user(run_as: &RunAs, uid: u32) {
        let out = run_as
            .command(Path::new("/bin/sh"))
            .args(["-c", r#"id -u; printf '%s|' "$@""#, "sh", "a b", "$x", "'q\"", ";id"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{uid}\na b|$x|'q\"|;id|"));
    }

    #[test]
    fn switching_to_the_postgres_user_works_when_root() {
        if !is_root() {
            return;
        }
        let (uid, gid) = lookup_user(OS_USER).expect("root needs a postgres user");
        if let Some(runuser) = find_tool("runuser") {
            check_switch_user(&RunAs::Runuser { runuser, uid, gid }, uid);
        }
        if let Some(su) = find_tool("su") {
            check_switch_user(&RunAs::Su { su, uid, gid }, uid);
        }
        assert!(matches!(RunAs::detect().unwrap(), RunAs::Runuser { .. } | RunAs::Su { .. }));
    }

    #[test]
    fn su_argv_passes_program_positionally() {
        let run_as = RunAs::Su { su: "/bin/su".into(), uid: 1, gid: 1 };
        let argv = run_as.argv(Path::new("/x/pg_ctl"));
        assert_eq!(argv.last().unwrap(), "/x/pg_ctl");
        assert!(argv.contains(&OsString::from("--")));
    }
}
