//! Test support: a fresh PostgreSQL database for each test (used by this crate's tests, the
//! `conveyor` binary's and the examples'; nothing else in the crate uses it).
//!
//! [`TestDb::new`] finds a server, in this order:
//! 1. `CONVEYOR_TEST_POSTGRES` (a URL whose user may `CREATE DATABASE`), when set;
//! 2. the server on 127.0.0.1:5432 as user `postgres` (what `scripts/services.sh` starts);
//! 3. a throwaway server started from the distribution's binaries (`initdb` and `pg_ctl` under
//!    `/usr/lib/postgresql/*/bin`, the newest version) in a temporary folder on a free
//!    127.0.0.1 port, shared by the tests of this process and removed when the process ends
//!    (a watchdog stops it and deletes the folder). As root it runs as user `postgres` (or
//!    `nobody`), since PostgreSQL refuses to run as root.
//!
//! When none of these is possible it panics saying what to install: a test needing PostgreSQL
//! never passes silently without one. Each [`TestDb`] is a database of its own
//! (`CREATE DATABASE conveyor_test_<uuid>`), dropped when the value is dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// A database of its own for one test; dropped (`DROP DATABASE ... WITH (FORCE)`) on drop.
#[derive(Debug)]
pub struct TestDb {
    url: String,
    admin_url: String,
    name: String,
    pool: PgPool,
}

impl TestDb {
    /// A fresh, empty database (see the module docs for where). Panics with what to install
    /// when there is no PostgreSQL.
    pub async fn new() -> TestDb {
        let admin_url = server_url();
        let name = format!("conveyor_test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "cannot connect to the test PostgreSQL at {}: {e}",
                redact(&admin_url)
            )
        });
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "CREATE DATABASE on {} failed: {e} (the user needs CREATEDB)",
                    redact(&admin_url)
                )
            });
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connecting to the new database {name}: {e}"));
        TestDb {
            url,
            admin_url,
            name,
            pool,
        }
    }

    /// A fresh database with conveyor's migrations applied.
    pub async fn migrated() -> TestDb {
        let db = TestDb::new().await;
        crate::migrate(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("migrating the test database: {e}"));
        db
    }

    /// Its URL (for child processes: `--database-url`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool on it (16 connections).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // a thread of its own: drop may run inside a runtime, which cannot block on another.
        // The pool is not closed first (closing waits for connections that may only go back to
        // it on the runtime this drop blocks): FORCE ends their sessions.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                let mut admin = PgConnection::connect(&admin_url).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// The server's URL for creating databases, found once per process.
fn server_url() -> String {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    URL.get_or_init(find_server)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn find_server() -> Result<String, String> {
    if let Ok(url) = std::env::var("CONVEYOR_TEST_POSTGRES") {
        if !url.is_empty() {
            return Ok(url);
        }
    }
    let local = "127.0.0.1:5432".parse().expect("an address");
    if std::net::TcpStream::connect_timeout(&local, Duration::from_millis(500)).is_ok() {
        return Ok("postgres://postgres@127.0.0.1:5432/postgres".into());
    }
    let Some(bin) = newest_bin_dir() else {
        return Err("no PostgreSQL for the tests: CONVEYOR_TEST_POSTGRES is not set, nothing \
                    listens on 127.0.0.1:5432, and no server binaries are under \
                    /usr/lib/postgresql/*/bin. Set CONVEYOR_TEST_POSTGRES=postgres://USER@HOST:PORT/DB \
                    (the user needs CREATEDB), or start one with `sudo scripts/services.sh`, or \
                    install the server (Debian: `apt-get install postgresql`) so the tests can \
                    start a throwaway one"
            .into());
    };
    throwaway(&bin)
}

fn newest_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version: Vec<u32> = e
                .file_name()
                .to_str()?
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, b)| b)
}

/// Starts a server from `bin` in a temporary folder, stopped and removed when this process ends.
fn throwaway(bin: &Path) -> Result<String, String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        format!(
            "starting a throwaway PostgreSQL from {}: {what}: {e}",
            bin.display()
        )
    };
    let dir = std::env::temp_dir().join(format!(
        "conveyor-pg-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    ));
    let data = dir.join("data");
    std::fs::create_dir_all(&dir).map_err(|e| fail("creating the folder", &e))?;
    let user = run_as_user();
    if let Some(user) = &user {
        let ok = Command::new("chown")
            .args(["-R", user])
            .arg(&dir)
            .status()
            .map_err(|e| fail("chown", &e))?;
        if !ok.success() {
            return Err(fail("chown", &format!("chown -R {user} failed")));
        }
    }
    let as_user = |program: PathBuf| -> Command {
        match &user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    };
    let out = as_user(bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
        .output()
        .map_err(|e| fail("running initdb", &e))?;
    if !out.status.success() {
        return Err(fail("initdb", &String::from_utf8_lossy(&out.stderr)));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| fail("finding a free port", &e))?
        .port();
    let log = dir.join("postgres.log");
    let out = as_user(bin.join("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(&log)
        .arg("-o")
        .arg(format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c max_connections=300",
            dir.display()
        ))
        .args(["-w", "-t", "60", "start"])
        .stdout(Stdio::null())
        .output()
        .map_err(|e| fail("running pg_ctl start", &e))?;
    if !out.status.success() {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(fail(
            "pg_ctl start",
            &format!("{}\n{tail}", String::from_utf8_lossy(&out.stderr)),
        ));
    }
    // The watchdog: once this process is gone, stop the server (immediate) and remove the folder.
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         kill -QUIT \"$(head -n 1 '{data}/postmaster.pid' 2>/dev/null)\" 2>/dev/null; \
         sleep 2; rm -rf '{dir}'",
        pid = std::process::id(),
        data = data.display(),
        dir = dir.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail("starting the watchdog", &e))?;
    eprintln!(
        "conveyor-postgres testing: started a throwaway PostgreSQL ({}) on 127.0.0.1:{port} in {} \
         (log {}); it is stopped and removed when this test process ends",
        bin.display(),
        dir.display(),
        log.display()
    );
    Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

/// PostgreSQL refuses to run as root: as root, the user to run it as.
fn run_as_user() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok()?;
    if uid != 0 {
        return None;
    }
    let exists = |u: &str| {
        Command::new("id")
            .arg(u)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    Some(
        if exists("postgres") {
            "postgres"
        } else {
            "nobody"
        }
        .to_owned(),
    )
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let start = base.find("://").map_or(0, |i| i + 3);
    let root = match base[start..].find('/') {
        Some(i) => &base[..start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let Some(at) = url[start..].find('@').map(|i| start + i) else {
        return url.to_owned();
    };
    match url[start..at].split_once(':') {
        Some((user, _)) => format!("{}{user}:***{}", &url[..start], &url[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database() {
        assert_eq!(
            with_database("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/test?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
        assert_eq!(redact("postgres://u:secret@h/x"), "postgres://u:***@h/x");
    }
}
