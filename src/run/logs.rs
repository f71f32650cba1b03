//! Container logs in docker's json-file format: one JSON object per line,
//! `{"log":"text\n","stream":"stdout","time":"2024-01-02T03:04:05.123456789Z"}`, written by the
//! monitor line by line (a line longer than 16 KiB is split, as docker does), read by
//! `kiln logs` (`--tail`, `-t`, `-f`).

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::state::{now_nanos, rfc3339_nanos};
use super::{io_err, Result, RunError};
use crate::executor::sandbox::Stream;

/// docker's maximum log line before it splits.
const MAX_LINE: usize = 16 * 1024;

/// One entry of the log file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub log: String,
    pub stream: String,
    pub time: String,
}

/// Appends output to a json-file log, line by line.
pub struct LogWriter {
    file: File,
    partial: [Vec<u8>; 2],
}

impl LogWriter {
    pub fn open(path: &Path) -> Result<LogWriter> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err("opening", path))?;
        Ok(LogWriter {
            file,
            partial: [Vec::new(), Vec::new()],
        })
    }

    fn emit(&mut self, stream: Stream, bytes: &[u8]) {
        let entry = Entry {
            log: String::from_utf8_lossy(bytes).into_owned(),
            stream: match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            }
            .to_string(),
            time: rfc3339_nanos(now_nanos()),
        };
        if let Ok(mut line) = serde_json::to_vec(&entry) {
            line.push(b'\n');
            if let Err(e) = self.file.write_all(&line) {
                tracing::warn!(error = %e, "cannot write the container log");
            }
        }
    }

    /// Output as it comes; complete lines are written at once.
    pub fn write(&mut self, stream: Stream, bytes: &[u8]) {
        let i = matches!(stream, Stream::Stderr) as usize;
        let mut buf = std::mem::take(&mut self.partial[i]);
        buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos + 1;
            let mut s = start;
            while end - s > MAX_LINE {
                self.emit(stream, &buf[s..s + MAX_LINE]);
                s += MAX_LINE;
            }
            self.emit(stream, &buf[s..end]);
            start = end;
        }
        let mut rest = buf.split_off(start);
        while rest.len() >= MAX_LINE {
            let tail = rest.split_off(MAX_LINE);
            self.emit(stream, &rest);
            rest = tail;
        }
        self.partial[i] = rest;
    }

    /// Writes what is left of unterminated lines.
    pub fn flush(&mut self) {
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            let rest = std::mem::take(&mut self.partial[i]);
            if !rest.is_empty() {
                self.emit(stream, &rest);
            }
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.flush();
    }
}

/// How to print entries.
#[derive(Debug, Clone, Copy, Default)]
pub struct Show {
    pub timestamps: bool,
}

fn print_entry(
    e: &Entry,
    show: Show,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<()> {
    let w: &mut dyn Write = if e.stream == "stderr" { err } else { out };
    if show.timestamps {
        write!(w, "{} ", e.time)?;
    }
    w.write_all(e.log.as_bytes())?;
    w.flush()
}

/// Reads complete entries (whole lines) from `reader` until EOF or until `end` bytes were
/// read. A line cut short (still being written) waits in `pending` for the rest. Returns
/// the bytes of the complete lines read.
fn for_each_entry(
    reader: &mut impl BufRead,
    path: &Path,
    end: Option<u64>,
    pending: &mut String,
    f: &mut dyn FnMut(Entry) -> Result<()>,
) -> Result<u64> {
    let mut offset = 0u64;
    while end.is_none_or(|end| offset < end) {
        let n = reader.read_line(pending).map_err(io_err("reading", path))?;
        if n == 0 || !pending.ends_with('\n') {
            break;
        }
        offset += pending.len() as u64;
        if let Ok(e) = serde_json::from_str::<Entry>(pending) {
            f(e)?;
        }
        pending.clear();
    }
    Ok(offset)
}

fn open_log(path: &Path) -> Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("opening", path)(e)),
    }
}

fn write_err(e: std::io::Error) -> RunError {
    io_err("writing", Path::new("stdout"))(e)
}

/// Prints the log (the last `tail` entries when given); returns the offset read up to.
pub fn print(
    path: &Path,
    tail: Option<usize>,
    show: Show,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u64> {
    let Some(file) = open_log(path)? else {
        return Ok(0);
    };
    let mut entries = Vec::new();
    let mut partial = String::new();
    let offset = for_each_entry(
        &mut BufReader::new(file),
        path,
        None,
        &mut partial,
        &mut |e| {
            entries.push(e);
            Ok(())
        },
    )?;
    let skip = tail.map_or(0, |t| entries.len().saturating_sub(t));
    for e in &entries[skip..] {
        print_entry(e, show, out, err).map_err(write_err)?;
    }
    Ok(offset)
}

/// Prints the entries in the first `end` bytes of the log (what a container wrote before
/// an attach with `logs=1`), streaming.
pub fn print_range(
    path: &Path,
    end: u64,
    show: Show,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<()> {
    let Some(file) = open_log(path)? else {
        return Ok(());
    };
    let mut partial = String::new();
    for_each_entry(
        &mut BufReader::new(file),
        path,
        Some(end),
        &mut partial,
        &mut |e| print_entry(&e, show, out, err).map_err(write_err),
    )?;
    Ok(())
}

/// Prints entries appended after `offset` until `done()` says the writer is gone and
/// everything has been read (`logs -f`, attach). The log is opened once and kept open, so
/// the last lines of a `--rm` container whose directory is removed still arrive; it is
/// polled from 1 ms, backing off to 100 ms while nothing comes.
pub fn follow(
    path: &Path,
    offset: u64,
    show: Show,
    out: &mut dyn Write,
    err: &mut dyn Write,
    done: &dyn Fn() -> bool,
) -> Result<()> {
    let max = std::time::Duration::from_millis(100);
    let mut backoff = super::Backoff::up_to(max);
    let mut reader = None;
    let mut pending = String::new();
    loop {
        let finished = done();
        if reader.is_none() {
            if let Some(mut f) = open_log(path)? {
                f.seek(SeekFrom::Start(offset))
                    .map_err(io_err("seeking", path))?;
                reader = Some(BufReader::new(f));
            }
        }
        if let Some(r) = reader.as_mut() {
            let read = for_each_entry(r, path, None, &mut pending, &mut |e| {
                print_entry(&e, show, out, err).map_err(write_err)
            })?;
            if read > 0 {
                backoff = super::Backoff::up_to(max);
            }
        }
        if finished {
            return Ok(());
        }
        backoff.sleep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_partials() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c-json.log");
        {
            let mut w = LogWriter::open(&p).unwrap();
            w.write(Stream::Stdout, b"hel");
            w.write(Stream::Stderr, b"oops\n");
            w.write(Stream::Stdout, b"lo\nwor");
            w.write(Stream::Stdout, b"ld");
        }
        let mut out = Vec::new();
        let mut err = Vec::new();
        print(&p, None, Show::default(), &mut out, &mut err).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "hello\nworld");
        assert_eq!(String::from_utf8(err).unwrap(), "oops\n");
        let mut out = Vec::new();
        print(&p, Some(1), Show::default(), &mut out, &mut Vec::new()).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "world");
        let text = std::fs::read_to_string(&p).unwrap();
        let first: Entry = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first.stream, "stderr");
        assert!(first.time.ends_with('Z'));
    }

    #[test]
    fn long_lines_split() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c-json.log");
        {
            let mut w = LogWriter::open(&p).unwrap();
            let mut big = vec![b'x'; MAX_LINE * 2 + 10];
            big.push(b'\n');
            w.write(Stream::Stdout, &big);
        }
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 3);
    }
}
