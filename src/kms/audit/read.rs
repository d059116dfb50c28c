//! Reading a trail back: every record with the file and line it is on, in
//! order, and a cursor that picks up what was appended since (`--follow`).
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::trail::{file_name, list_files};

/// One line of a trail file.
#[derive(Debug, Clone)]
pub struct Line {
    /// The trail file's name.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// The line's bytes (without the newline).
    pub bytes: Vec<u8>,
    /// False when the file ended without a newline here (a torn write).
    pub complete: bool,
}

impl Line {
    /// The record, when the line is one.
    pub fn record(&self) -> Option<Value> {
        serde_json::from_slice(&self.bytes).ok()
    }
}

#[allow(clippy::disallowed_methods)] // a trail file, in the keystore directory or a copy the user named; only read
fn open(p: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
}

/// Reads complete and partial lines of `p` from byte `offset`, numbering from
/// `first_line`. Returns the lines and the offset after the last complete one.
fn read_lines(
    p: &Path,
    name: &str,
    offset: u64,
    first_line: usize,
    take_partial: bool,
) -> io::Result<(Vec<Line>, u64)> {
    let mut f = open(p)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut r = BufReader::new(f);
    let mut out = Vec::new();
    let mut pos = offset;
    let mut n = first_line;
    loop {
        let mut buf = Vec::new();
        let got = r.read_until(b'\n', &mut buf)?;
        if got == 0 {
            break;
        }
        let complete = buf.last() == Some(&b'\n');
        if !complete && !take_partial {
            break;
        }
        if complete {
            buf.pop();
            pos += got as u64;
        }
        out.push(Line {
            file: name.to_string(),
            line: n,
            bytes: buf,
            complete,
        });
        n += 1;
    }
    Ok((out, pos))
}

/// Every line of every trail file in `dir`, in order, file by file.
pub fn all_lines(dir: &Path) -> io::Result<Vec<(u32, Vec<Line>)>> {
    let mut out = Vec::new();
    for (n, p) in list_files(dir)? {
        let (lines, _) = read_lines(&p, &file_name(n), 0, 1, true)?;
        out.push((n, lines));
    }
    Ok(out)
}

/// Every line of one file (an archive a prune wrote), named `name`.
pub fn file_lines(p: &Path, name: &str) -> io::Result<Vec<Line>> {
    read_lines(p, name, 0, 1, true).map(|(l, _)| l)
}

/// Where `--follow` has read up to.
#[derive(Debug)]
pub struct Cursor {
    dir: PathBuf,
    file_no: u32,
    offset: u64,
    line: usize,
}

impl Cursor {
    /// A cursor at the start of the trail.
    pub fn start(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            file_no: 0,
            offset: 0,
            line: 1,
        }
    }

    /// The complete lines appended since the last call.
    pub fn next_lines(&mut self) -> io::Result<Vec<Line>> {
        let mut out = Vec::new();
        let files = match list_files(&self.dir) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for (n, p) in files {
            if n < self.file_no {
                continue;
            }
            if n > self.file_no {
                self.file_no = n;
                self.offset = 0;
                self.line = 1;
            }
            let (lines, pos) = read_lines(&p, &file_name(n), self.offset, self.line, false)?;
            self.offset = pos;
            self.line += lines.len();
            out.extend(lines);
        }
        Ok(out)
    }
}
