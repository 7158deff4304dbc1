//! The embedded store: one SQLite file (WAL, `synchronous=NORMAL`, FULL for
//! the writes nothing can rebuild, `busy_timeout`), every write in a `BEGIN
//! IMMEDIATE` transaction, schema versions in `PRAGMA user_version`.

use crate::*;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;

/// Schema migrations, applied in order; `user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE projects (
    id            TEXT PRIMARY KEY,
    goal          TEXT NOT NULL,
    name          TEXT NOT NULL DEFAULT '',
    state         TEXT NOT NULL,
    plan          TEXT,
    options       TEXT NOT NULL DEFAULT '{}',
    fix_round     INTEGER NOT NULL DEFAULT 0,
    planner_calls INTEGER NOT NULL DEFAULT 0,
    error         TEXT,
    final_commit  TEXT,
    delivery      TEXT,
    created_ms    INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL
);
CREATE TABLE tasks (
    project_id       TEXT NOT NULL REFERENCES projects(id),
    id               TEXT NOT NULL,
    seq              INTEGER NOT NULL,
    title            TEXT NOT NULL,
    description      TEXT NOT NULL,
    kind             TEXT NOT NULL,
    files            TEXT NOT NULL DEFAULT '[]',
    commands         TEXT NOT NULL DEFAULT '[]',
    fix_round        INTEGER NOT NULL DEFAULT 0,
    state            TEXT NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    attempts_counted INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    conflict_paths   TEXT NOT NULL DEFAULT '[]',
    commit_sha       TEXT,
    merge_commit     TEXT,
    summary          TEXT,
    changed_files    TEXT NOT NULL DEFAULT '[]',
    started_ms       INTEGER,
    finished_ms      INTEGER,
    PRIMARY KEY (project_id, id)
);
CREATE TABLE task_deps (
    project_id TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    depends_on TEXT NOT NULL,
    PRIMARY KEY (project_id, task_id, depends_on)
);
CREATE TABLE attempts (
    project_id TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    outcome    TEXT NOT NULL,
    reason     TEXT,
    turns      INTEGER NOT NULL DEFAULT 0,
    commit_sha TEXT,
    started_ms INTEGER NOT NULL,
    ended_ms   INTEGER,
    PRIMARY KEY (project_id, task_id, attempt)
);
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id TEXT NOT NULL,
    task_id    TEXT,
    ts_ms      INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX events_by_project ON events(project_id, id);
CREATE TABLE model_calls (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id    TEXT NOT NULL,
    task_id       TEXT,
    attempt       INTEGER,
    role          TEXT NOT NULL,
    model         TEXT NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    latency_ms    INTEGER NOT NULL,
    retries       INTEGER NOT NULL,
    outcome       TEXT NOT NULL,
    ts_ms         INTEGER NOT NULL
);
CREATE INDEX model_calls_by_project ON model_calls(project_id);
"#,
    r#"
ALTER TABLE projects ADD COLUMN waiting TEXT;
"#,
    r#"
ALTER TABLE model_calls ADD COLUMN provider TEXT NOT NULL DEFAULT '';
ALTER TABLE model_calls ADD COLUMN waited_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE model_calls ADD COLUMN cost_usd REAL;
"#,
    r#"
ALTER TABLE projects ADD COLUMN source TEXT;
"#,
    r#"
ALTER TABLE tasks ADD COLUMN review_comment TEXT;
"#,
];

/// The SQLite implementation of [`Store`]. One connection behind a mutex:
/// every call is one short local transaction.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn data_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Data(format!("{what}: {e}"))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| data_err("cannot encode", e))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| data_err(what, e))
}

fn parse<T: FromStr<Err = String>>(s: &str) -> Result<T> {
    T::from_str(s).map_err(Error::Data)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::Open {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        }
        let conn = Connection::open(path).map_err(|e| Error::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::setup(conn, path)
    }

    /// A private in-memory database (tests).
    pub fn in_memory() -> Result<Self> {
        Self::setup(Connection::open_in_memory()?, Path::new(":memory:"))
    }

    fn setup(conn: Connection, path: &Path) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Every statement is prepared once and kept (see `Cached`): more
        // than the default 16 distinct ones run on a task's path.
        conn.set_prepared_statement_cache_capacity(128);
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if mode != "wal" && mode != "memory" {
            tracing_free_warn(&format!(
                "{}: journal_mode is {mode}, not wal",
                path.display()
            ));
        }
        // NORMAL: a commit is not synced; what a crash of the process cannot
        // lose (the WAL is in the kernel's cache), a power loss can, back to
        // the last synced commit. Writes recovery cannot rebuild (model-call
        // accounting, submissions, operator changes) use `write_durable`.
        // docs/store.md, "Durability".
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        // A page cache of 512 KiB instead of SQLite's 2 MiB: the daemon's
        // one connection lives for months and its cache fills as the
        // store grows, a steady climb of serve's RSS over a soak
        // (docs/benchmarks.md); a page it misses is read from the WAL or
        // the file, which the kernel's cache holds.
        conn.execute_batch("PRAGMA cache_size = -512;")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(Error::Open {
                path: path.display().to_string(),
                message: format!("the database has schema version {version}, newer than this agentswarm knows ({known}); upgrade agentswarm"),
            });
        }
        let store = Self {
            conn: Mutex::new(conn),
        };
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            store.write(|tx| {
                // Another process may have applied it since we looked: the
                // version is read again under the write lock.
                let now: i64 = tx.row_cached("PRAGMA user_version", [], |r| r.get(0))?;
                if now > i as i64 {
                    return Ok(());
                }
                tx.execute_batch(sql)?;
                tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
                Ok(())
            })?;
        }
        Ok(store)
    }

    /// `PRAGMA quick_check`: `ok`, or what is wrong with the file.
    pub fn quick_check(&self) -> Result<String> {
        self.read(|c| {
            let mut stmt = c.prepare("PRAGMA quick_check")?;
            let rows: Vec<String> = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows.join("; "))
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        may_block(|| {
            let conn = self
                .conn
                .lock()
                .map_err(|_| Error::Data("the store lock is poisoned".into()))?;
            f(&conn)
        })
    }

    /// One `BEGIN IMMEDIATE` transaction, committed without a sync (see
    /// `setup`): for what recovery rebuilds from git or can redo.
    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        may_block(|| {
            let mut conn = self
                .conn
                .lock()
                .map_err(|_| Error::Data("the store lock is poisoned".into()))?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// Like `write`, but the commit is synced (`synchronous=FULL` for this
    /// one transaction), and with it every commit before it: for what
    /// nothing can rebuild — model-call accounting (budgets), a submitted
    /// project, an operator's cancel or limits, a plan the model was paid for.
    fn write_durable<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        may_block(|| {
            let mut conn = self
                .conn
                .lock()
                .map_err(|_| Error::Data("the store lock is poisoned".into()))?;
            conn.exec_cached("PRAGMA synchronous = FULL", [])?;
            let result = (|| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let out = f(&tx)?;
                tx.commit()?;
                Ok(out)
            })();
            conn.exec_cached("PRAGMA synchronous = NORMAL", [])?;
            result
        })
    }
}

/// `execute` and `query_row` through the connection's statement cache:
/// parsing and planning a statement cost more than running most of these
/// (preparing statements, most of it the `synchronous` switches of durable
/// writes, was a tenth of the supervisor's CPU samples in a profile of 150
/// tasks; docs/benchmarks.md).
trait Cached {
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// Runs a store call that may block (the connection's lock, a sync to
/// disk). On a worker thread of a multi-thread tokio runtime the runtime is
/// told first (`block_in_place`), so the other tasks of that thread move on
/// instead of waiting behind it; anywhere else (a blocking-pool thread, a
/// plain thread, a current-thread runtime) it simply runs.
fn may_block<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The store has no logging dependency; this goes to stderr once at open.
fn tracing_free_warn(msg: &str) {
    eprintln!("agentswarm store: warning: {msg}");
}

fn insert_event(
    tx: &Connection,
    project: &ProjectId,
    task: Option<&TaskId>,
    kind: &str,
    data: &serde_json::Value,
) -> Result<i64> {
    tx.exec_cached(
        "INSERT INTO events (project_id, task_id, ts_ms, kind, data) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            project.as_str(),
            task.map(|t| t.as_str()),
            now_ms(),
            kind,
            to_json(data)?
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

fn insert_tasks(tx: &Connection, id: &ProjectId, tasks: &[NewTask]) -> Result<()> {
    let mut seq: i64 = tx.row_cached(
        "SELECT COALESCE(MAX(seq), 0) FROM tasks WHERE project_id = ?1",
        [id.as_str()],
        |r| r.get(0),
    )?;
    for t in tasks {
        seq += 1;
        tx.exec_cached(
            "INSERT INTO tasks (project_id, id, seq, title, description, kind, files, commands, fix_round, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending')",
            params![
                id.as_str(),
                t.id.as_str(),
                seq,
                t.title,
                t.description,
                t.kind.as_str(),
                to_json(&t.files)?,
                to_json(&t.commands)?,
                t.fix_round
            ],
        )?;
        for d in &t.depends_on {
            tx.exec_cached("INSERT OR IGNORE INTO task_deps (project_id, task_id, depends_on) VALUES (?1, ?2, ?3)", params![id.as_str(), t.id.as_str(), d.as_str()])?;
        }
    }
    Ok(())
}

const PROJECT_COLUMNS: &str = "id, goal, name, state, plan, options, fix_round, planner_calls, error, final_commit, delivery, created_ms, updated_ms, waiting, source";

fn project_from_row(
    r: &Row<'_>,
) -> rusqlite::Result<(ProjectRecord, String, Option<String>, String)> {
    let state: String = r.get(3)?;
    let plan: Option<String> = r.get(4)?;
    let options: String = r.get(5)?;
    Ok((
        ProjectRecord {
            id: ProjectId::new(r.get::<_, String>(0)?),
            goal: r.get(1)?,
            name: r.get(2)?,
            state: ProjectState::Queued,
            plan: None,
            options: serde_json::Value::Null,
            fix_round: r.get(6)?,
            planner_calls: r.get(7)?,
            error: r.get(8)?,
            final_commit: r.get(9)?,
            delivery: r.get(10)?,
            created_ms: r.get(11)?,
            updated_ms: r.get(12)?,
            waiting: r.get(13)?,
            source: r
                .get::<_, Option<String>>(14)?
                .and_then(|s| serde_json::from_str(&s).ok()),
        },
        state,
        plan,
        options,
    ))
}

fn finish_project(raw: (ProjectRecord, String, Option<String>, String)) -> Result<ProjectRecord> {
    let (mut p, state, plan, options) = raw;
    p.state = parse(&state)?;
    p.plan = plan.map(|s| from_json(&s, "stored plan")).transpose()?;
    p.options = from_json(&options, "stored options")?;
    Ok(p)
}

const TASK_COLUMNS: &str = "project_id, id, title, description, kind, files, commands, fix_round, seq, state, attempt, attempts_counted, \
     last_error, conflict_paths, commit_sha, merge_commit, summary, changed_files, started_ms, finished_ms, review_comment";

struct RawTask {
    rec: TaskRecord,
    kind: String,
    state: String,
    files: String,
    commands: String,
    conflicts: String,
    changed: String,
}

fn task_from_row(r: &Row<'_>) -> rusqlite::Result<RawTask> {
    Ok(RawTask {
        rec: TaskRecord {
            project_id: ProjectId::new(r.get::<_, String>(0)?),
            id: TaskId::new(r.get::<_, String>(1)?),
            title: r.get(2)?,
            description: r.get(3)?,
            kind: TaskKind::Code,
            depends_on: Vec::new(),
            files: Vec::new(),
            commands: Vec::new(),
            fix_round: r.get(7)?,
            seq: r.get(8)?,
            state: TaskState::Pending,
            attempt: r.get(10)?,
            attempts_counted: r.get(11)?,
            last_error: r.get(12)?,
            conflict_paths: Vec::new(),
            commit: r.get(14)?,
            merge_commit: r.get(15)?,
            summary: r.get(16)?,
            changed_files: Vec::new(),
            started_ms: r.get(18)?,
            finished_ms: r.get(19)?,
            review_comment: r.get(20)?,
        },
        kind: r.get(4)?,
        files: r.get(5)?,
        commands: r.get(6)?,
        state: r.get(9)?,
        conflicts: r.get(13)?,
        changed: r.get(17)?,
    })
}

fn load_tasks(conn: &Connection, id: &ProjectId, only: Option<&TaskId>) -> Result<Vec<TaskRecord>> {
    // One task is looked up by its key (`id = ?2`): a `?2 IS NULL OR id =
    // ?2` in one statement for both cases made SQLite scan every task of the
    // project for each, which a 1,000-task plan paid on every transition.
    let filter: Vec<&str> = std::iter::once(id.as_str())
        .chain(only.map(TaskId::as_str))
        .collect();
    let mut raws = Vec::new();
    {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE project_id = ?1{} ORDER BY seq",
            if only.is_some() { " AND id = ?2" } else { "" }
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(&filter), task_from_row)?;
        for r in rows {
            raws.push(r?);
        }
    }
    let mut deps: std::collections::HashMap<String, Vec<TaskId>> = std::collections::HashMap::new();
    {
        let sql = format!(
            "SELECT d.task_id, d.depends_on FROM task_deps d JOIN tasks t ON t.project_id = d.project_id AND t.id = d.depends_on
             WHERE d.project_id = ?1{} ORDER BY t.seq",
            if only.is_some() { " AND d.task_id = ?2" } else { "" }
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(&filter), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        for r in rows {
            let (t, d) = r?;
            deps.entry(t).or_default().push(TaskId::new(d));
        }
    }
    raws.into_iter()
        .map(|raw| {
            let mut t = raw.rec;
            t.kind = parse(&raw.kind)?;
            t.state = parse(&raw.state)?;
            t.files = from_json(&raw.files, "task files")?;
            t.commands = from_json(&raw.commands, "task commands")?;
            t.conflict_paths = from_json(&raw.conflicts, "task conflict paths")?;
            t.changed_files = from_json(&raw.changed, "task changed files")?;
            t.depends_on = deps.remove(t.id.as_str()).unwrap_or_default();
            Ok(t)
        })
        .collect()
}

impl Store for SqliteStore {
    fn create_project(&self, project: &NewProject) -> Result<()> {
        self.write_durable(|tx| {
            let now = now_ms();
            tx.exec_cached(
                "INSERT INTO projects (id, goal, state, options, created_ms, updated_ms, source) VALUES (?1, ?2, 'queued', ?3, ?4, ?4, ?5)",
                params![
                    project.id.as_str(),
                    project.goal,
                    to_json(&project.options)?,
                    now,
                    project.source.as_ref().map(to_json).transpose()?
                ],
            )?;
            insert_event(tx, &project.id, None, "project_state", &serde_json::json!({"from": null, "to": "queued"}))?;
            Ok(())
        })
    }

    fn project(&self, id: &ProjectId) -> Result<ProjectRecord> {
        self.read(|c| {
            let raw = c
                .query_row(
                    &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = ?1"),
                    [id.as_str()],
                    project_from_row,
                )
                .optional()?
                .ok_or_else(|| Error::ProjectNotFound(id.clone()))?;
            finish_project(raw)
        })
    }

    fn list_projects(&self) -> Result<Vec<ProjectRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {PROJECT_COLUMNS} FROM projects ORDER BY created_ms DESC, rowid DESC"
            ))?;
            let rows = stmt.query_map([], project_from_row)?;
            rows.map(|r| finish_project(r?)).collect()
        })
    }

    fn set_project_state(
        &self,
        id: &ProjectId,
        from: &[ProjectState],
        to: ProjectState,
        error: Option<&str>,
    ) -> Result<bool> {
        self.write(|tx| {
            let current: Option<String> = tx.row_cached("SELECT state FROM projects WHERE id = ?1", [id.as_str()], |r| r.get(0)).optional()?;
            let Some(current) = current else { return Err(Error::ProjectNotFound(id.clone())) };
            let cur: ProjectState = parse(&current)?;
            if !from.contains(&cur) {
                return Ok(false);
            }
            let n = tx.exec_cached(
                "UPDATE projects SET state = ?1, error = ?2, updated_ms = ?3 WHERE id = ?4 AND state = ?5",
                params![to.as_str(), error, now_ms(), id.as_str(), current],
            )?;
            if n == 1 {
                insert_event(tx, id, None, "project_state", &serde_json::json!({"from": current, "to": to.as_str(), "error": error}))?;
            }
            Ok(n == 1)
        })
    }

    fn set_project_waiting(&self, id: &ProjectId, waiting: Option<&str>) -> Result<()> {
        self.write(|tx| {
            tx.exec_cached(
                "UPDATE projects SET waiting = ?1 WHERE id = ?2",
                params![waiting, id.as_str()],
            )?;
            Ok(())
        })
    }

    fn delete_project(&self, id: &ProjectId) -> Result<bool> {
        self.write(|tx| {
            let current: Option<String> = tx
                .query_row(
                    "SELECT state FROM projects WHERE id = ?1",
                    [id.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(current) = current else {
                return Err(Error::ProjectNotFound(id.clone()));
            };
            let state: ProjectState = parse(&current)?;
            if !state.is_terminal() {
                return Ok(false);
            }
            for table in ["task_deps", "attempts", "events", "model_calls", "tasks"] {
                tx.exec_cached(
                    &format!("DELETE FROM {table} WHERE project_id = ?1"),
                    [id.as_str()],
                )?;
            }
            tx.exec_cached("DELETE FROM projects WHERE id = ?1", [id.as_str()])?;
            Ok(true)
        })
    }

    fn cancel_project(&self, id: &ProjectId) -> Result<bool> {
        self.write_durable(|tx| {
            let current: Option<String> = tx.row_cached("SELECT state FROM projects WHERE id = ?1", [id.as_str()], |r| r.get(0)).optional()?;
            let Some(current) = current else { return Err(Error::ProjectNotFound(id.clone())) };
            let cur: ProjectState = parse(&current)?;
            if cur.is_terminal() {
                return Ok(false);
            }
            let now = now_ms();
            tx.exec_cached(
                "UPDATE projects SET state = 'cancelled', waiting = NULL, updated_ms = ?1 WHERE id = ?2",
                params![now, id.as_str()],
            )?;
            tx.exec_cached(
                "UPDATE tasks SET state = 'cancelled', finished_ms = ?1 WHERE project_id = ?2 \
                 AND state IN ('pending', 'ready', 'running', 'review', 'merging')",
                params![now, id.as_str()],
            )?;
            insert_event(tx, id, None, "project_state", &serde_json::json!({"from": current, "to": "cancelled", "error": null}))?;
            Ok(true)
        })
    }

    fn set_planner_calls(&self, id: &ProjectId, calls: u32) -> Result<()> {
        self.write(|tx| {
            tx.exec_cached(
                "UPDATE projects SET planner_calls = ?1, updated_ms = ?2 WHERE id = ?3",
                params![calls, now_ms(), id.as_str()],
            )?;
            Ok(())
        })
    }

    fn set_project_options(&self, id: &ProjectId, options: &serde_json::Value) -> Result<()> {
        let text = to_json(options)?;
        self.write_durable(|tx| {
            let n = tx.exec_cached(
                "UPDATE projects SET options = ?1, updated_ms = ?2 WHERE id = ?3",
                params![text, now_ms(), id.as_str()],
            )?;
            if n == 0 {
                return Err(Error::ProjectNotFound(id.clone()));
            }
            Ok(())
        })
    }

    fn set_project_source(&self, id: &ProjectId, source: &serde_json::Value) -> Result<()> {
        let text = to_json(source)?;
        self.write(|tx| {
            let n = tx.exec_cached(
                "UPDATE projects SET source = ?1, updated_ms = ?2 WHERE id = ?3",
                params![text, now_ms(), id.as_str()],
            )?;
            if n == 0 {
                return Err(Error::ProjectNotFound(id.clone()));
            }
            Ok(())
        })
    }

    fn set_final(
        &self,
        id: &ProjectId,
        final_commit: Option<&str>,
        delivery: Option<&str>,
    ) -> Result<()> {
        self.write(|tx| {
            tx.exec_cached(
                "UPDATE projects SET final_commit = ?1, delivery = ?2, updated_ms = ?3 WHERE id = ?4",
                params![final_commit, delivery, now_ms(), id.as_str()],
            )?;
            Ok(())
        })
    }

    fn save_plan(&self, id: &ProjectId, plan: &Plan, tasks: &[NewTask]) -> Result<()> {
        self.write_durable(|tx| {
            let n = tx.exec_cached(
                "UPDATE projects SET plan = ?1, name = ?2, updated_ms = ?3 WHERE id = ?4 AND plan IS NULL",
                params![to_json(plan)?, plan.name, now_ms(), id.as_str()],
            )?;
            if n != 1 {
                return Err(Error::Data(format!("project {id} already has a plan (or does not exist)")));
            }
            insert_tasks(tx, id, tasks)
        })
    }

    fn add_fix_tasks(
        &self,
        id: &ProjectId,
        round: u32,
        tasks: &[NewTask],
        verify_task: &TaskId,
    ) -> Result<()> {
        self.write_durable(|tx| {
            insert_tasks(tx, id, tasks)?;
            for t in tasks {
                tx.exec_cached(
                    "INSERT OR IGNORE INTO task_deps (project_id, task_id, depends_on) VALUES (?1, ?2, ?3)",
                    params![id.as_str(), verify_task.as_str(), t.id.as_str()],
                )?;
            }
            let previous: Option<String> =
                tx.row_cached("SELECT state FROM tasks WHERE project_id = ?1 AND id = ?2", params![id.as_str(), verify_task.as_str()], |r| r.get(0)).optional()?;
            let Some(previous) = previous else {
                return Err(Error::Data(format!("project {id} has no task {verify_task}")));
            };
            tx.exec_cached(
                "UPDATE tasks SET state = 'pending' WHERE project_id = ?1 AND id = ?2",
                params![id.as_str(), verify_task.as_str()],
            )?;
            insert_event(tx, id, Some(verify_task), "task_state", &serde_json::json!({"from": previous, "to": "pending", "fix_round": round}))?;
            tx.exec_cached("UPDATE projects SET fix_round = ?1, updated_ms = ?2 WHERE id = ?3", params![round, now_ms(), id.as_str()])?;
            Ok(())
        })
    }

    fn tasks(&self, id: &ProjectId) -> Result<Vec<TaskRecord>> {
        self.read(|c| load_tasks(c, id, None))
    }

    fn task(&self, id: &ProjectId, task: &TaskId) -> Result<Option<TaskRecord>> {
        self.read(|c| Ok(load_tasks(c, id, Some(task))?.into_iter().next()))
    }

    fn update_task(&self, id: &ProjectId, task: &TaskId, u: &TaskUpdate) -> Result<bool> {
        self.write(|tx| {
            let current: Option<(String, u32)> = tx
                .query_row("SELECT state, attempt FROM tasks WHERE project_id = ?1 AND id = ?2", params![id.as_str(), task.as_str()], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let Some((state, attempt)) = current else { return Ok(false) };
            let cur: TaskState = parse(&state)?;
            if !u.from.is_empty() && !u.from.contains(&cur) {
                return Ok(false);
            }
            if u.expect_attempt.is_some_and(|a| a != attempt) {
                return Ok(false);
            }
            let mut sets: Vec<&str> = Vec::new();
            let mut values: Vec<rusqlite::types::Value> = Vec::new();
            use rusqlite::types::Value as V;
            let text = |s: &str| V::Text(s.to_owned());
            if let Some(to) = u.to {
                sets.push("state");
                values.push(text(to.as_str()));
            }
            if let Some(a) = u.attempt {
                sets.push("attempt");
                values.push(V::Integer(a.into()));
            }
            if let Some(a) = u.attempts_counted {
                sets.push("attempts_counted");
                values.push(V::Integer(a.into()));
            }
            if let Some(e) = &u.last_error {
                sets.push("last_error");
                values.push(e.as_deref().map(text).unwrap_or(V::Null));
            }
            if let Some(p) = &u.conflict_paths {
                sets.push("conflict_paths");
                values.push(V::Text(to_json(p)?));
            }
            if let Some(c) = &u.commit {
                sets.push("commit_sha");
                values.push(text(c));
            }
            if let Some(c) = &u.merge_commit {
                sets.push("merge_commit");
                values.push(text(c));
            }
            if let Some(s) = &u.summary {
                sets.push("summary");
                values.push(text(s));
            }
            if let Some(f) = &u.changed_files {
                sets.push("changed_files");
                values.push(V::Text(to_json(f)?));
            }
            if let Some(t) = u.started_ms {
                sets.push("started_ms");
                values.push(V::Integer(t));
            }
            if let Some(t) = u.finished_ms {
                sets.push("finished_ms");
                values.push(V::Integer(t));
            }
            if let Some(c) = &u.review_comment {
                sets.push("review_comment");
                values.push(c.as_deref().map(text).unwrap_or(V::Null));
            }
            if sets.is_empty() {
                return Ok(true);
            }
            let assignments: Vec<String> = sets.iter().enumerate().map(|(i, c)| format!("{c} = ?{}", i + 1)).collect();
            let n = sets.len();
            let sql = format!(
                "UPDATE tasks SET {} WHERE project_id = ?{} AND id = ?{} AND state = ?{} AND attempt = ?{}",
                assignments.join(", "),
                n + 1,
                n + 2,
                n + 3,
                n + 4
            );
            values.push(text(id.as_str()));
            values.push(text(task.as_str()));
            values.push(text(&state));
            values.push(V::Integer(attempt.into()));
            let changed = tx.exec_cached(&sql, rusqlite::params_from_iter(values))?;
            if changed == 1 {
                if let Some(to) = u.to {
                    let error = match &u.last_error {
                        Some(e) => e.clone(),
                        None => None,
                    };
                    insert_event(
                        tx,
                        id,
                        Some(task),
                        "task_state",
                        &serde_json::json!({"from": state, "to": to.as_str(), "attempt": u.attempt.unwrap_or(attempt), "error": error}),
                    )?;
                }
            }
            Ok(changed == 1)
        })
    }

    fn start_attempt(
        &self,
        id: &ProjectId,
        task: &TaskId,
        attempt: u32,
        started_ms: i64,
    ) -> Result<()> {
        self.write(|tx| {
            tx.exec_cached(
                "INSERT INTO attempts (project_id, task_id, attempt, outcome, started_ms) VALUES (?1, ?2, ?3, 'running', ?4)
                 ON CONFLICT (project_id, task_id, attempt) DO UPDATE SET outcome = 'running', reason = NULL, started_ms = excluded.started_ms, ended_ms = NULL",
                params![id.as_str(), task.as_str(), attempt, started_ms],
            )?;
            Ok(())
        })
    }

    fn finish_attempt(&self, id: &ProjectId, end: &AttemptEnd) -> Result<()> {
        let AttemptEnd {
            task,
            attempt,
            outcome,
            reason,
            turns,
            commit,
        } = end;
        self.write(|tx| {
            let now = now_ms();
            tx.exec_cached(
                "INSERT INTO attempts (project_id, task_id, attempt, outcome, reason, turns, commit_sha, started_ms, ended_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
                 ON CONFLICT (project_id, task_id, attempt) DO UPDATE SET outcome = excluded.outcome, reason = excluded.reason,
                   turns = MAX(attempts.turns, excluded.turns), commit_sha = COALESCE(excluded.commit_sha, attempts.commit_sha), ended_ms = excluded.ended_ms",
                params![id.as_str(), task.as_str(), attempt, outcome.as_str(), reason, turns, commit, now],
            )?;
            Ok(())
        })
    }

    fn decide_review(
        &self,
        id: &ProjectId,
        task: &TaskId,
        attempt: u32,
        decision: &ReviewDecision,
    ) -> Result<bool> {
        self.write_durable(|tx| {
            let now = now_ms();
            let (to, comment) = match decision {
                ReviewDecision::Approve => (TaskState::Merging, None),
                ReviewDecision::Reject { comment } => (TaskState::Ready, Some(comment.as_str())),
            };
            let changed = match comment {
                None => tx.exec_cached(
                    "UPDATE tasks SET state = 'merging' WHERE project_id = ?1 AND id = ?2 AND state = 'review' AND attempt = ?3",
                    params![id.as_str(), task.as_str(), attempt],
                )?,
                Some(c) => tx.exec_cached(
                    "UPDATE tasks SET state = 'ready', review_comment = ?4, last_error = ?5, commit_sha = NULL, conflict_paths = '[]'
                     WHERE project_id = ?1 AND id = ?2 AND state = 'review' AND attempt = ?3",
                    params![id.as_str(), task.as_str(), attempt, c, format!("rejected in review: {c}")],
                )?,
            };
            if changed != 1 {
                return Ok(false);
            }
            if let Some(c) = comment {
                tx.exec_cached(
                    "UPDATE attempts SET outcome = 'rejected', reason = ?4, ended_ms = ?5 WHERE project_id = ?1 AND task_id = ?2 AND attempt = ?3",
                    params![id.as_str(), task.as_str(), attempt, format!("rejected in review: {c}"), now],
                )?;
            }
            insert_event(
                tx,
                id,
                Some(task),
                "task_state",
                &serde_json::json!({"from": "review", "to": to.as_str(), "attempt": attempt, "error": null}),
            )?;
            let (kind, data) = match comment {
                None => ("review_approved", serde_json::json!({"attempt": attempt})),
                Some(c) => ("review_rejected", serde_json::json!({"attempt": attempt, "comment": c})),
            };
            insert_event(tx, id, Some(task), kind, &data)?;
            Ok(true)
        })
    }

    fn attempts(&self, id: &ProjectId, task: &TaskId) -> Result<Vec<AttemptRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT attempt, outcome, reason, turns, commit_sha, started_ms, ended_ms FROM attempts
                 WHERE project_id = ?1 AND task_id = ?2 ORDER BY attempt",
            )?;
            let rows = stmt.query_map(params![id.as_str(), task.as_str()], |r| {
                Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
            })?;
            rows.map(|r| {
                let (attempt, outcome, reason, turns, commit, started_ms, ended_ms) = r?;
                Ok(AttemptRecord {
                    project_id: id.clone(),
                    task_id: task.clone(),
                    attempt,
                    outcome: parse(&outcome)?,
                    reason,
                    turns,
                    commit,
                    started_ms,
                    ended_ms,
                })
            })
            .collect()
        })
    }

    fn append_event(
        &self,
        id: &ProjectId,
        task: Option<&TaskId>,
        kind: &str,
        data: &serde_json::Value,
    ) -> Result<i64> {
        self.write(|tx| insert_event(tx, id, task, kind, data))
    }

    fn events(&self, id: &ProjectId, after: i64, limit: usize) -> Result<Vec<EventRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, task_id, ts_ms, kind, data FROM events WHERE project_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![id.as_str(), after, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?))
            })?;
            rows.map(|r| {
                let (eid, task, ts_ms, kind, data) = r?;
                Ok(EventRecord { id: eid, project_id: id.clone(), task_id: task.map(TaskId::new), ts_ms, kind, data: from_json(&data, "event data")? })
            })
            .collect()
        })
    }

    fn events_of_kind(&self, id: &ProjectId, kind: &str, limit: usize) -> Result<Vec<EventRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, task_id, ts_ms, data FROM events WHERE project_id = ?1 AND kind = ?2 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![id.as_str(), kind, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
            })?;
            rows.map(|r| {
                let (eid, task, ts_ms, data) = r?;
                Ok(EventRecord { id: eid, project_id: id.clone(), task_id: task.map(TaskId::new), ts_ms, kind: kind.to_owned(), data: from_json(&data, "event data")? })
            })
            .collect()
        })
    }

    fn last_event_id(&self, project: Option<&ProjectId>) -> Result<i64> {
        self.read(|c| {
            let id: Option<i64> = match project {
                Some(p) => c.row_cached(
                    "SELECT MAX(id) FROM events WHERE project_id = ?1",
                    params![p.as_str()],
                    |r| r.get(0),
                )?,
                None => c.row_cached("SELECT MAX(id) FROM events", [], |r| r.get(0))?,
            };
            Ok(id.unwrap_or(0))
        })
    }

    fn all_events(&self, after: i64, limit: usize) -> Result<Vec<EventRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, project_id, task_id, ts_ms, kind, data FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, i64>(3)?, r.get::<_, String>(4)?, r.get::<_, String>(5)?))
            })?;
            rows.map(|r| {
                let (eid, project, task, ts_ms, kind, data) = r?;
                Ok(EventRecord { id: eid, project_id: ProjectId::new(project), task_id: task.map(TaskId::new), ts_ms, kind, data: from_json(&data, "event data")? })
            })
            .collect()
        })
    }

    fn record_model_call(&self, call: &ModelCallRecord) -> Result<()> {
        self.write_durable(|tx| {
            tx.exec_cached(
                "INSERT INTO model_calls (project_id, task_id, attempt, role, provider, model, input_tokens, output_tokens, latency_ms, retries, waited_ms, cost_usd, outcome, ts_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    call.project_id.as_str(),
                    call.task_id.as_ref().map(|t| t.as_str()),
                    call.attempt,
                    call.role,
                    call.provider,
                    call.model,
                    call.input_tokens as i64,
                    call.output_tokens as i64,
                    call.latency_ms as i64,
                    call.retries,
                    call.waited_ms as i64,
                    call.cost_usd,
                    call.outcome,
                    call.ts_ms
                ],
            )?;
            Ok(())
        })
    }

    fn usage(&self, id: &ProjectId) -> Result<Vec<UsageTotals>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT role, provider, model, COUNT(*), SUM(outcome != 'ok'), SUM(retries),
                        SUM(input_tokens), SUM(output_tokens), TOTAL(cost_usd), SUM(cost_usd IS NULL)
                 FROM model_calls WHERE project_id = ?1 GROUP BY role, provider, model
                 ORDER BY role, provider, model",
            )?;
            let rows = stmt.query_map([id.as_str()], |r| {
                Ok(UsageTotals {
                    role: r.get(0)?,
                    provider: r.get(1)?,
                    model: r.get(2)?,
                    calls: r.get::<_, i64>(3)? as u64,
                    failed_calls: r.get::<_, i64>(4)? as u64,
                    retries: r.get::<_, i64>(5)? as u64,
                    input_tokens: r.get::<_, i64>(6)? as u64,
                    output_tokens: r.get::<_, i64>(7)? as u64,
                    cost_usd: r.get(8)?,
                    unpriced_calls: r.get::<_, i64>(9)? as u64,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn spent(&self, id: &ProjectId) -> Result<Spent> {
        self.read(|c| {
            let (tokens, cost): (i64, f64) = c.row_cached(
                "SELECT TOTAL(input_tokens + output_tokens), TOTAL(cost_usd) FROM model_calls WHERE project_id = ?1",
                [id.as_str()],
                |r| Ok((r.get::<_, f64>(0)? as i64, r.get(1)?)),
            )?;
            Ok(Spent {
                tokens: tokens.max(0) as u64,
                cost_usd: cost,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store call that waits (here for the connection, held by another
    /// thread as a slow write would) does not stall the other tasks of the
    /// runtime thread it was called on.
    #[test]
    fn a_waiting_store_call_does_not_stall_its_runtime_thread() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let held = s.clone();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let _conn = held.conn.lock().unwrap();
            locked_tx.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(600));
        });
        locked_rx.recv().unwrap();
        let longest_gap = rt.block_on(async {
            let store = s.clone();
            let ticker = tokio::spawn(async {
                let mut longest = std::time::Duration::ZERO;
                let mut last = std::time::Instant::now();
                for _ in 0..40 {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    longest = longest.max(last.elapsed());
                    last = std::time::Instant::now();
                }
                longest
            });
            // The ticker is running on the one worker thread; now the call.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let call = tokio::spawn(async move { store.list_projects().map(|p| p.len()) });
            assert_eq!(call.await.unwrap().unwrap(), 0);
            ticker.await.unwrap()
        });
        holder.join().unwrap();
        assert!(
            longest_gap < std::time::Duration::from_millis(300),
            "the runtime thread stalled for {longest_gap:?} behind a store call"
        );
    }

    fn task(id: &str, deps: &[&str], kind: TaskKind) -> NewTask {
        NewTask {
            id: id.into(),
            title: format!("T {id}"),
            description: String::new(),
            kind,
            depends_on: deps.iter().map(|d| TaskId::from(*d)).collect(),
            files: vec![],
            commands: if kind == TaskKind::Verify {
                vec!["true".into()]
            } else {
                vec![]
            },
            fix_round: 0,
        }
    }

    fn plan() -> Plan {
        Plan {
            name: "p".into(),
            summary: String::new(),
            tasks: vec![],
        }
    }

    fn setup(store: &SqliteStore) -> ProjectId {
        let id = ProjectId::from("p1");
        store
            .create_project(&NewProject {
                id: id.clone(),
                goal: "g".into(),
                options: serde_json::json!({}),
                source: None,
            })
            .unwrap();
        store
            .save_plan(
                &id,
                &plan(),
                &[
                    task("a", &[], TaskKind::Code),
                    task("b", &["a"], TaskKind::Code),
                    task("v", &["b"], TaskKind::Verify),
                ],
            )
            .unwrap();
        id
    }

    #[test]
    fn transitions_are_conditional_and_logged() {
        let s = SqliteStore::in_memory().unwrap();
        let id = setup(&s);
        let a = TaskId::from("a");
        let to_ready = TaskUpdate {
            from: vec![TaskState::Pending],
            to: Some(TaskState::Ready),
            ..Default::default()
        };
        assert!(s.update_task(&id, &a, &to_ready).unwrap());
        assert!(
            !s.update_task(&id, &a, &to_ready).unwrap(),
            "second identical transition must not apply"
        );
        let run = TaskUpdate {
            from: vec![TaskState::Ready],
            to: Some(TaskState::Running),
            attempt: Some(1),
            ..Default::default()
        };
        assert!(s.update_task(&id, &a, &run).unwrap());
        let stale = TaskUpdate {
            from: vec![TaskState::Running],
            to: Some(TaskState::Merging),
            expect_attempt: Some(2),
            ..Default::default()
        };
        assert!(
            !s.update_task(&id, &a, &stale).unwrap(),
            "a result for another attempt is refused"
        );
        let t = s.task(&id, &a).unwrap().unwrap();
        assert_eq!((t.state, t.attempt), (TaskState::Running, 1));
        let events: Vec<_> = s
            .events(&id, 0, 100)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "task_state")
            .collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].data["to"], "running");
    }

    #[test]
    fn all_events_interleave_projects_in_id_order() {
        let s = SqliteStore::in_memory().unwrap();
        let p1 = setup(&s);
        let p2 = ProjectId::new("p2");
        s.create_project(&NewProject {
            id: p2.clone(),
            goal: "g2".into(),
            options: serde_json::json!({}),
            source: None,
        })
        .unwrap();
        let a = s
            .append_event(&p1, None, "info", &serde_json::json!({"n": 1}))
            .unwrap();
        let b = s
            .append_event(&p2, None, "info", &serde_json::json!({"n": 2}))
            .unwrap();
        let all = s.all_events(0, 1000).unwrap();
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));
        let tail: Vec<_> = all
            .iter()
            .filter(|e| e.id >= a)
            .map(|e| (e.project_id.as_str(), e.id))
            .collect();
        assert_eq!(tail, [(p1.as_str(), a), ("p2", b)]);
        let after_a = s.all_events(a, 10).unwrap();
        assert_eq!(after_a.len(), 1);
        assert_eq!(after_a[0].data["n"], 2);
        assert_eq!(s.all_events(0, 1).unwrap().len(), 1, "the limit holds");
        assert_eq!(s.last_event_id(None).unwrap(), b);
        let c = s
            .append_event(&p1, None, "info", &serde_json::json!({"n": 3}))
            .unwrap();
        s.append_event(&p1, None, "other", &serde_json::json!({}))
            .unwrap();
        let newest: Vec<i64> = s
            .events_of_kind(&p1, "info", 10)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(
            &newest[..2],
            [c, a],
            "newest first, this project and kind only"
        );
        assert_eq!(s.events_of_kind(&p1, "info", 1).unwrap().len(), 1);
        assert!(s.last_event_id(Some(&p1)).unwrap() > c);
        assert_eq!(s.last_event_id(Some(&ProjectId::new("none"))).unwrap(), 0);
    }

    #[test]
    fn plan_order_deps_and_fix_rounds() {
        let s = SqliteStore::in_memory().unwrap();
        let id = setup(&s);
        let tasks = s.tasks(&id).unwrap();
        assert_eq!(
            tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "v"]
        );
        assert_eq!(tasks[1].depends_on, vec![TaskId::from("a")]);
        assert!(
            s.save_plan(&id, &plan(), &[]).is_err(),
            "a plan is stored once"
        );
        let mut fix = task("f1-x", &["b"], TaskKind::Code);
        fix.fix_round = 1;
        s.add_fix_tasks(&id, 1, &[fix], &TaskId::from("v")).unwrap();
        let v = s.task(&id, &TaskId::from("v")).unwrap().unwrap();
        assert_eq!(v.depends_on, vec![TaskId::from("b"), TaskId::from("f1-x")]);
        assert_eq!(s.project(&id).unwrap().fix_round, 1);
    }

    #[test]
    fn a_project_source_is_stored_replaced_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentswarm.db");
        let id = ProjectId::from("p9");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.create_project(&NewProject {
                id: id.clone(),
                goal: "g".into(),
                options: serde_json::json!({}),
                source: Some(serde_json::json!({"repo": "/srv/app", "base": "main"})),
            })
            .unwrap();
            assert_eq!(setup(&s), ProjectId::from("p1"));
            assert_eq!(s.project(&ProjectId::from("p1")).unwrap().source, None);
            s.set_project_source(
                &id,
                &serde_json::json!({"repo": "/srv/app", "base": "main", "branch": "agentswarm/p9"}),
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let p = s.project(&id).unwrap();
        assert_eq!(
            p.source.unwrap()["branch"],
            serde_json::json!("agentswarm/p9")
        );
        assert!(s
            .set_project_source(&ProjectId::from("nope"), &serde_json::json!({}))
            .is_err());
    }

    #[test]
    fn survives_reopen_and_records_usage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db/agentswarm.db");
        let synchronous = |s: &SqliteStore| {
            s.read(|c| Ok(c.row_cached("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))?))
                .unwrap()
        };
        {
            let s = SqliteStore::open(&path).unwrap();
            // NORMAL (1) between the synced (FULL) writes.
            assert_eq!(synchronous(&s), 1);
            let id = setup(&s);
            s.start_attempt(&id, &TaskId::from("a"), 1, 5).unwrap();
            s.finish_attempt(
                &id,
                &AttemptEnd::merged(&TaskId::from("a"), 1, 3, Some("abc".into())),
            )
            .unwrap();
            for outcome in ["ok", "http_429"] {
                s.record_model_call(&ModelCallRecord {
                    project_id: id.clone(),
                    task_id: None,
                    attempt: None,
                    role: "planner".into(),
                    provider: "p".into(),
                    model: "m".into(),
                    input_tokens: 10,
                    output_tokens: 5,
                    latency_ms: 1,
                    retries: 0,
                    waited_ms: 0,
                    cost_usd: (outcome == "ok").then_some(0.25),
                    outcome: outcome.into(),
                    ts_ms: now_ms(),
                })
                .unwrap();
            }
            assert_eq!(synchronous(&s), 1, "a synced write restores NORMAL");
            assert!(s
                .set_project_state(&id, &[ProjectState::Queued], ProjectState::Running, None)
                .unwrap());
        }
        let s = SqliteStore::open(&path).unwrap();
        let id = ProjectId::from("p1");
        let p = s.project(&id).unwrap();
        assert_eq!(p.state, ProjectState::Running);
        assert_eq!(p.name, "p");
        let att = s.attempts(&id, &TaskId::from("a")).unwrap();
        assert_eq!(
            (att[0].outcome, att[0].turns, att[0].commit.as_deref()),
            (AttemptOutcome::Merged, 3, Some("abc"))
        );
        let u = s.usage(&id).unwrap();
        assert_eq!(
            (u[0].calls, u[0].failed_calls, u[0].input_tokens),
            (2, 1, 20)
        );
        assert_eq!((u[0].cost_usd, u[0].unpriced_calls), (0.25, 1));
        assert_eq!(
            s.spent(&id).unwrap(),
            Spent {
                tokens: 30,
                cost_usd: 0.25
            }
        );
        assert!(matches!(
            s.project(&ProjectId::from("nope")),
            Err(Error::ProjectNotFound(_))
        ));
        assert_eq!(s.list_projects().unwrap().len(), 1);
    }
}
