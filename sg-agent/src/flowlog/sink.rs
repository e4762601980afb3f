//! Where records go: a file rotated by size (bounded disk use: the file
//! and at most `max_files` rotated ones, `NAME.1` the newest), or standard
//! output.

use std::io::Write;

use anyhow::{Context, Result};
use file_rotate::{ContentLimit, FileRotate, compression::Compression, suffix::AppendCount};

pub enum Sink {
    Stdout,
    File(FileRotate<AppendCount>),
}

impl Sink {
    pub fn open(destination: &str, max_bytes: u64, max_files: usize) -> Result<Sink> {
        if destination == "-" || destination == "stdout" {
            return Ok(Sink::Stdout);
        }
        let path = std::path::Path::new(destination);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "flow log destination {destination}: creating {}",
                    dir.display()
                )
            })?;
        }
        // Probe that it can be written now rather than at the first window.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("flow log destination {destination}"))?;
        Ok(Sink::File(FileRotate::new(
            path,
            AppendCount::new(max_files),
            // Rotated after a line, never within one: each file parses.
            ContentLimit::BytesSurpassed(max_bytes as usize),
            Compression::None,
            None,
        )))
    }

    /// Writes one record per line.
    pub fn write(&mut self, lines: &[String]) -> std::io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                for l in lines {
                    writeln!(out, "{l}")?;
                }
                out.flush()
            }
            Sink::File(f) => {
                for l in lines {
                    f.write_all(format!("{l}\n").as_bytes())?;
                }
                f.flush()
            }
        }
    }
}
