//! The attach socket of a detached container (`containers/<id>/attach.sock`, 0600), the way
//! containerd's shim holds a container's stdio: the monitor of a container created with
//! `-i` (OpenStdin) or `-t` owns the container's stdin pipe or pty master, and clients (the
//! daemon's attach endpoint) reach it here. One line opens each connection:
//!
//! - `attach` / `attach stdin`: with `stdin`, what the client sends goes to the container's
//!   stdin; when the client closes its side and the container was created with StdinOnce
//!   (`docker run -i`), the container's stdin closes (EOF; a pipe only, a pty has no EOF).
//!   For a tty the container's output comes back raw on the connection (output the pty wrote
//!   before the first client connected is kept, up to [`MAX_BACKLOG`], and sent first) until
//!   the run ends. Without a tty output is read from the json-file log instead.
//! - `resize ROWS COLS`: the pty's window size (TIOCSWINSZ); the answer is `ok` or
//!   `error: …`.
//!
//! The socket exists from before the container's first start until its monitor ends.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::libc;

use super::state::Container;
use super::{io_err, Result, RunError};

/// The socket's name in the container's directory.
pub const SOCKET: &str = "attach.sock";
/// Tty output kept for the first client (the container may write before anyone attached).
pub const MAX_BACKLOG: usize = 1 << 20;
/// The longest opening line a client may send.
const MAX_HEADER: usize = 64;
/// How long a client may take to send its opening line, or to take a piece of tty output.
const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where a container's attach socket is.
pub fn socket_path(c: &Container) -> PathBuf {
    c.path(SOCKET)
}

/// Runs `f` on a path naming `path` that fits a Unix socket address (108 bytes): long paths
/// (a deep root plus a 64-character id) go through `/proc/self/fd/N/` of their directory.
fn with_short_path<T>(
    path: &Path,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    if path.as_os_str().len() < 100 {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    let dir = File::open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    let r = f(&short);
    drop(dir);
    r
}

/// Connects to a container's attach socket (a std stream; the daemon makes it async).
pub fn connect(c: &Container) -> std::io::Result<UnixStream> {
    with_short_path(&socket_path(c), |p| UnixStream::connect(p))
}

/// Sets the window size of a running container's pty through its monitor.
pub fn resize(c: &Container, rows: u16, cols: u16) -> Result<()> {
    let path = socket_path(c);
    let fail = |message: String| RunError::Container {
        id: c.short_id().to_string(),
        message,
    };
    let mut s = connect(c).map_err(|e| {
        fail(format!(
            "cannot reach its monitor at {} to resize its terminal: {e}",
            path.display()
        ))
    })?;
    s.write_all(format!("resize {rows} {cols}\n").as_bytes())
        .map_err(io_err("writing to", &path))?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(io_err("reading from", &path))?;
    match answer.trim() {
        "ok" => Ok(()),
        other => Err(fail(
            other
                .strip_prefix("error: ")
                .unwrap_or("its monitor did not answer the resize")
                .to_string(),
        )),
    }
}

/// Sets a pty's window size.
pub fn set_window_size(master: &File, rows: u16, cols: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize we own from a descriptor we hold.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What the monitor shares with the socket's connections.
struct Shared {
    tty: bool,
    stdin_once: bool,
    /// Where stdin goes: the write end of the container's stdin pipe, or the pty master.
    stdin: Mutex<Option<File>>,
    /// The read end of the next run's stdin pipe (no tty).
    next_reader: Mutex<Option<File>>,
    /// Stdin that came before the pty existed.
    pending: Mutex<Vec<u8>>,
    /// The pty master (resize).
    master: Mutex<Option<File>>,
    clients: Mutex<Clients>,
}

/// Connections that receive tty output.
struct Clients {
    streams: Vec<UnixStream>,
    /// Output before the first client (None once one came).
    backlog: Option<Vec<u8>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A container's attach socket, served by its monitor.
#[derive(Clone)]
pub struct AttachServer {
    shared: Arc<Shared>,
}

impl AttachServer {
    /// Listens on the container's socket when it has a stdin or a tty (None otherwise).
    pub fn listen(c: &Container) -> Result<Option<AttachServer>> {
        let cfg = &c.config;
        if !cfg.open_stdin && !cfg.tty {
            return Ok(None);
        }
        let server = AttachServer {
            shared: Arc::new(Shared {
                tty: cfg.tty,
                stdin_once: cfg.stdin_once,
                stdin: Mutex::new(None),
                next_reader: Mutex::new(None),
                pending: Mutex::new(Vec::new()),
                master: Mutex::new(None),
                clients: Mutex::new(Clients {
                    streams: Vec::new(),
                    backlog: Some(Vec::new()),
                }),
            }),
        };
        server.new_pipe()?;
        let path = socket_path(c);
        let _ = std::fs::remove_file(&path);
        let listener = with_short_path(&path, |p| UnixListener::bind(p))
            .map_err(io_err("listening on", &path))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(io_err("restricting", &path))?;
        }
        let shared = Arc::clone(&server.shared);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        let shared = Arc::clone(&shared);
                        std::thread::spawn(move || serve(&shared, s));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "attach socket: accept failed");
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
            }
        });
        Ok(Some(server))
    }

    /// A fresh stdin pipe for the next run (no tty, `-i`).
    fn new_pipe(&self) -> Result<()> {
        let s = &self.shared;
        if s.tty {
            return Ok(());
        }
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| io_err("creating", Path::new("the stdin pipe"))(e.into()))?;
        *lock(&s.stdin) = Some(File::from(w));
        *lock(&s.next_reader) = Some(File::from(r));
        Ok(())
    }

    /// The container's stdin for this run (no tty).
    pub fn stdin_for_run(&self) -> Option<File> {
        lock(&self.shared.next_reader).take()
    }

    /// The run's pty master: stdin and resizes go to it from now on.
    pub fn set_console(&self, master: &File) {
        let s = &self.shared;
        let (Ok(a), Ok(b)) = (master.try_clone(), master.try_clone()) else {
            return;
        };
        *lock(&s.master) = Some(b);
        let mut stdin = lock(&s.stdin);
        let mut a = a;
        let pending = std::mem::take(&mut *lock(&s.pending));
        if !pending.is_empty() {
            let _ = a.write_all(&pending);
        }
        *stdin = Some(a);
    }

    /// Tty output: to every attached client, or kept for the first one.
    pub fn output(&self, bytes: &[u8]) {
        let mut clients = lock(&self.shared.clients);
        if let Some(b) = clients.backlog.as_mut() {
            if b.len() + bytes.len() <= MAX_BACKLOG {
                b.extend_from_slice(bytes);
            }
        }
        clients.streams.retain_mut(|s| s.write_all(bytes).is_ok());
    }

    /// The run ended: clients see the end of the output, the next run gets a new stdin.
    pub fn run_ended(&self) {
        let s = &self.shared;
        *lock(&s.master) = None;
        if s.tty {
            *lock(&s.stdin) = None;
        }
        let _ = lock(&s.next_reader).take();
        for c in lock(&s.clients).streams.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        if let Err(e) = self.new_pipe() {
            tracing::warn!(error = %e, "cannot make the next run's stdin");
        }
    }
}

/// Reads the opening line of a connection.
fn header(s: &mut UnixStream) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_HEADER {
        match s.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => return String::from_utf8(line).ok(),
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
    None
}

fn serve(shared: &Shared, mut s: UnixStream) {
    // A client that says nothing, or stops reading tty output, is let go.
    let _ = s.set_read_timeout(Some(CLIENT_TIMEOUT));
    let Some(line) = header(&mut s) else { return };
    let _ = s.set_read_timeout(None);
    let _ = s.set_write_timeout(Some(CLIENT_TIMEOUT));
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["resize", rows, cols] => {
            let answer = match (rows.parse::<u16>(), cols.parse::<u16>()) {
                (Ok(r), Ok(c)) => match lock(&shared.master).as_ref() {
                    Some(m) => set_window_size(m, r, c)
                        .map(|()| "ok".to_string())
                        .unwrap_or_else(|e| format!("error: resizing its terminal: {e}")),
                    None if shared.tty => "error: it is not running".to_string(),
                    None => "error: it has no terminal (created without -t)".to_string(),
                },
                _ => format!("error: invalid size {rows}x{cols}"),
            };
            let _ = s.write_all(format!("{answer}\n").as_bytes());
        }
        ["attach", rest @ ..] => {
            if shared.tty {
                let mut clients = lock(&shared.clients);
                let backlog = clients.backlog.take().unwrap_or_default();
                if let Ok(mut out) = s.try_clone() {
                    if out.write_all(&backlog).is_ok() {
                        clients.streams.push(out);
                    }
                }
            }
            if rest == ["stdin"] {
                copy_stdin(shared, &mut s);
            }
        }
        _ => {
            let _ = s.write_all(format!("error: unknown request {line:?}\n").as_bytes());
        }
    }
}

/// Client → the container's stdin until the client closes its side.
fn copy_stdin(shared: &Shared, s: &mut UnixStream) {
    let mut buf = [0u8; 8192];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut stdin = lock(&shared.stdin);
        let failed = match stdin.as_mut() {
            Some(f) => f.write_all(&buf[..n]).is_err(),
            None if shared.tty => {
                lock(&shared.pending).extend_from_slice(&buf[..n]);
                false
            }
            None => false,
        };
        if failed && !shared.tty {
            // The container closed its stdin (or ended).
            *stdin = None;
        }
    }
    if shared.stdin_once && !shared.tty {
        lock(&shared.stdin).take();
    }
}
