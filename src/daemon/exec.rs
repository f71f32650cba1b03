//! Exec through the API: `POST /containers/{id}/exec` records what to run (in the daemon's
//! memory, as docker keeps exec instances), `POST /exec/{id}/start` runs it in the running
//! container through [`crate::run::exec`] (the sandbox helper in join mode) with the
//! hijacked connection as its stdin/stdout/stderr (multiplexed) or its pty (raw),
//! `GET /exec/{id}/json` reports Running, Pid and ExitCode (docker exec exits with it) and
//! `POST /exec/{id}/resize` sets the pty's size. With `Detach` the process runs on its own.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

use hyper::StatusCode;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::attach::{hijacked, size, split_upgraded};
use super::containers::{find, output_writer};
use super::http::{self, ApiError, ApiResult, Chunk, Query};
use super::{blocking, State};
use crate::executor::sandbox::{self, CancelToken, Stream};
use crate::run::exec::{join_config, running_pid, ExecOptions};
use crate::run::state::Container;

/// Finished exec records kept for inspection; older ones are dropped beyond this.
const MAX_FINISHED: usize = 256;

/// The exec instances of the daemon.
#[derive(Default)]
pub struct Execs(Mutex<HashMap<String, Arc<ExecRecord>>>);

/// What `POST /containers/{id}/exec` asked for.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    user: String,
    working_dir: String,
    tty: bool,
    attach_stdin: bool,
    attach_stdout: bool,
    attach_stderr: bool,
    privileged: bool,
    console_size: Option<[u16; 2]>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct StartBody {
    detach: bool,
    tty: bool,
    console_size: Option<[u16; 2]>,
}

/// One exec instance.
pub struct ExecRecord {
    id: String,
    container: Container,
    body: CreateBody,
    run: Mutex<ExecState>,
}

#[derive(Default)]
struct ExecState {
    started: bool,
    running: bool,
    pid: i32,
    exit_code: Option<i32>,
    /// The pty master while a `Tty` exec runs (resize).
    master: Option<std::fs::File>,
    /// Order of finishing (for trimming).
    finished: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn console_size(s: Option<[u16; 2]>) -> Option<(u16, u16)> {
    s.filter(|[r, c]| *r > 0 && *c > 0).map(|[r, c]| (r, c))
}

impl Execs {
    /// The exec instances of container `id` (docker's `ExecIDs`: those not finished).
    pub fn of_container(&self, id: &str) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.0)
            .values()
            .filter(|r| r.container.id() == id && lock(&r.run).exit_code.is_none())
            .map(|r| r.id.clone())
            .collect();
        ids.sort();
        ids
    }

    fn get(&self, id: &str) -> ApiResult<Arc<ExecRecord>> {
        lock(&self.0)
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("No such exec instance: {id}")))
    }

    fn insert(&self, r: Arc<ExecRecord>) {
        let mut map = lock(&self.0);
        let mut done: Vec<(u64, String)> = map
            .values()
            .filter_map(|r| {
                let s = lock(&r.run);
                (s.exit_code.is_some()).then(|| (s.finished, r.id.clone()))
            })
            .collect();
        if done.len() > MAX_FINISHED {
            done.sort();
            for (_, id) in &done[..done.len() - MAX_FINISHED] {
                map.remove(id);
            }
        }
        map.insert(r.id.clone(), r);
    }
}

/// docker's exec events: `exec_create: CMD`, `exec_start: CMD`, `exec_die` (with exitCode).
fn publish(state: &State, r: &ExecRecord, action: &str, exit_code: Option<i32>) {
    let cmd = r.body.cmd.clone().unwrap_or_default().join(" ");
    let c = &r.container;
    let action = match exit_code {
        Some(_) => action.to_string(),
        None => format!("{action}: {cmd}"),
    };
    let mut e = crate::engine::events::Event::new("container", &action, c.id())
        .with("name", &c.config.name)
        .with("image", &c.config.image)
        .with("execID", &r.id);
    if let Some(code) = exit_code {
        e = e.with("exitCode", &code.to_string());
    }
    state.engine.events.publish(e);
}

fn not_running(c: &Container) -> ApiError {
    ApiError::conflict(format!("container {} is not running", c.id()))
}

/// `POST /containers/{id}/exec` → `{"Id"}`.
pub async fn create(
    state: &Arc<State>,
    key: &str,
    req: hyper::Request<hyper::body::Incoming>,
) -> ApiResult {
    let body: Option<CreateBody> = http::read_json(req).await?;
    let body = body.ok_or_else(|| ApiError::bad_request("the request needs a JSON body"))?;
    if body.cmd.as_ref().is_none_or(|c| c.is_empty()) {
        return Err(ApiError::bad_request("No exec command specified"));
    }
    let st = state.clone();
    let key = key.to_string();
    let c = blocking(move || {
        let c = find(&st, &key)?;
        running_pid(&c).map_err(|_| not_running(&c))?;
        Ok(c)
    })
    .await?;
    let id = crate::run::state::new_id();
    let r = Arc::new(ExecRecord {
        id: id.clone(),
        container: c,
        body,
        run: Mutex::new(ExecState::default()),
    });
    publish(state, &r, "exec_create", None);
    state.execs.insert(r);
    Ok(http::json_status(StatusCode::CREATED, &json!({ "Id": id })))
}

/// `GET /exec/{id}/json`.
pub async fn inspect(state: &Arc<State>, id: &str) -> ApiResult {
    let r = state.execs.get(id)?;
    let s = lock(&r.run);
    let b = &r.body;
    let cmd = b.cmd.clone().unwrap_or_default();
    http::json(&json!({
        "ID": r.id,
        "Running": s.running,
        "ExitCode": s.exit_code,
        "ProcessConfig": {
            "tty": b.tty,
            "entrypoint": cmd.first().cloned().unwrap_or_default(),
            "arguments": cmd.get(1..).unwrap_or_default(),
            "privileged": b.privileged,
            "user": b.user,
        },
        "OpenStdin": b.attach_stdin,
        "OpenStderr": b.attach_stderr,
        "OpenStdout": b.attach_stdout,
        "CanRemove": false,
        "ContainerID": r.container.id(),
        "DetachKeys": "",
        "Pid": s.pid,
    }))
}

/// `POST /exec/{id}/resize?h=&w=`.
pub async fn resize(state: &Arc<State>, id: &str, query: &Query) -> ApiResult {
    let (h, w) = size(query)?;
    let r = state.execs.get(id)?;
    let s = lock(&r.run);
    let Some(master) = s.master.as_ref() else {
        return Err(ApiError::conflict(if r.body.tty {
            match s.exit_code {
                Some(code) => format!("exec {id} has exited (exit code {code})"),
                None => format!("exec {id} is not running yet"),
            }
        } else {
            format!("exec {id} has no terminal (created without Tty)")
        }));
    };
    crate::run::attach::set_window_size(master, h, w)
        .map_err(|e| ApiError::internal(format!("resizing the terminal of exec {id}: {e}")))?;
    http::no_content(StatusCode::OK)
}

/// `POST /exec/{id}/start`.
pub async fn start(
    state: &Arc<State>,
    id: &str,
    mut req: hyper::Request<hyper::body::Incoming>,
) -> ApiResult {
    let r = state.execs.get(id)?;
    let upgrade = hyper::upgrade::on(&mut req);
    let body: Option<StartBody> = http::read_json(req).await?;
    let body = body.unwrap_or_default();
    if running_pid(&r.container).is_err() {
        return Err(not_running(&r.container));
    }
    {
        let mut s = lock(&r.run);
        if s.started {
            return Err(ApiError::conflict(format!(
                "exec {id} has already been started"
            )));
        }
        s.started = true;
    }
    publish(state, &r, "exec_start", None);
    let tty = r.body.tty || body.tty;
    let size = console_size(body.console_size)
        .or(console_size(r.body.console_size))
        .unwrap_or((24, 80));
    if body.detach {
        let (tx, _rx) = mpsc::channel::<Chunk>(1);
        drop(_rx);
        let st = state.clone();
        tokio::task::spawn_blocking(move || run(&st, &r, tty, size, None, tx));
        return http::no_content(StatusCode::OK);
    }
    let st = state.clone();
    tokio::spawn(async move {
        let Some((mut rd, tx, writer)) = split_upgraded(upgrade).await else {
            lock(&r.run).exit_code = Some(126);
            return;
        };
        // Stdin: a pipe (no tty) now, the pty master once the process runs.
        let (stdin_tx, stdin_rx) = tokio::sync::oneshot::channel::<std::fs::File>();
        let mut pipe_reader = None;
        let want_in = r.body.attach_stdin;
        let mut stdin_tx = Some(stdin_tx);
        if want_in && !tty {
            match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
                Ok((pr, pw)) => {
                    pipe_reader = Some(std::fs::File::from(pr));
                    if let Some(t) = stdin_tx.take() {
                        let _ = t.send(std::fs::File::from(pw));
                    }
                }
                Err(e) => tracing::warn!("exec {}: cannot make a stdin pipe: {e}", r.id),
            }
        }
        let stdin_task = want_in.then(|| {
            tokio::spawn(async move {
                let Ok(f) = stdin_rx.await else { return };
                let mut f = tokio::fs::File::from_std(f);
                let _ = tokio::io::copy(&mut rd, &mut f).await;
                let _ = f.flush().await;
            })
        });
        let console_tx = if tty { stdin_tx.take() } else { None };
        let r2 = Arc::clone(&r);
        let _ = tokio::task::spawn_blocking(move || {
            run(
                &st,
                &r2,
                tty,
                size,
                Some(Stdio {
                    pipe: pipe_reader,
                    console: console_tx,
                }),
                tx,
            )
        })
        .await;
        if let Some(t) = stdin_task {
            t.abort();
        }
        let _ = writer.await;
    });
    Ok(hijacked(tty))
}

/// The process's side of the connection.
struct Stdio {
    /// Its stdin (no tty).
    pipe: Option<std::fs::File>,
    /// Receives the pty master for the client's input (tty).
    console: Option<tokio::sync::oneshot::Sender<std::fs::File>>,
}

/// Runs the exec to its end; its output goes to `tx` (dropped once the exit code is
/// recorded, which ends the client's stream).
fn run(
    state: &State,
    r: &ExecRecord,
    tty: bool,
    size: (u16, u16),
    stdio: Option<Stdio>,
    tx: mpsc::Sender<Chunk>,
) {
    let (pipe, console_tx) = match stdio {
        Some(s) => (s.pipe, s.console),
        None => (None, None),
    };
    let b = &r.body;
    let writer = |wanted: bool, stream: u8| output_writer(&tx, wanted, tty, stream);
    let (mut out, mut err) = (writer(b.attach_stdout, 1), writer(b.attach_stderr, 2));
    let opts = ExecOptions {
        cmd: b.cmd.clone().unwrap_or_default(),
        user: non_empty(&b.user),
        env: b.env.clone().unwrap_or_default(),
        workdir: non_empty(&b.working_dir),
    };
    let c = &r.container;
    let result = (|| -> crate::run::Result<i32> {
        let snapshots = crate::run::rootfs::open_snapshots(&state.engine.root)?;
        let pid = running_pid(c)?;
        let mut config = join_config(snapshots.as_ref(), c, pid, &opts, pipe, tty.then_some(size))?;
        if b.privileged {
            config.container.cap_add = u64::MAX;
        }
        let mut pump = None;
        let mut console_tx = console_tx;
        let outcome = sandbox::run_observed(
            &config,
            &mut |stream, bytes| {
                let w = match stream {
                    Stream::Stdout => &mut out,
                    Stream::Stderr => &mut err,
                };
                let _ = w.write_all(bytes);
            },
            &mut |s| {
                let mut st = lock(&r.run);
                st.running = true;
                st.pid = s.pid;
                if let Some(master) = s.console {
                    st.master = master.try_clone().ok();
                    if let (Some(t), Ok(m)) = (console_tx.take(), master.try_clone()) {
                        let _ = t.send(m);
                    }
                    let mut sink = writer(b.attach_stdout, 1);
                    pump = Some(crate::run::exec::pump_console(
                        master,
                        false,
                        false,
                        move |bytes: &[u8]| {
                            let _ = sink.write_all(bytes);
                        },
                    ));
                }
            },
            &CancelToken::new(),
        );
        if let Some(p) = pump {
            let _ = p.join();
        }
        Ok(match outcome {
            Ok(o) => o.exit_code,
            Err(e) => {
                tracing::warn!("exec {} in {}: {e}", r.id, c.short_id());
                let code = crate::run::exec::failure_code(&e);
                let _ = writeln!(err, "{e}");
                code
            }
        })
    })();
    let code = result.unwrap_or_else(|e| {
        tracing::warn!("exec {} in {}: {e}", r.id, c.short_id());
        let _ = writeln!(err, "{e}");
        126
    });
    static FINISHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut st = lock(&r.run);
    st.running = false;
    st.master = None;
    st.exit_code = Some(code);
    st.finished = FINISHED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    drop(st);
    publish(state, r, "exec_die", Some(code));
    drop(out);
    drop(err);
    drop(tx);
}
