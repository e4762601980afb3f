//! Reading a configuration file without trusting what sits at its path: a
//! FIFO must not block the reader, `/dev/zero` must not be read forever, and
//! a file too large to be a configuration must not be loaded into memory.

use std::{
    io::Read,
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
};

/// The largest configuration accepted: a 10,000-rule file is ~1 MB.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Why a configuration file could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("is a {0}, not a regular file; refusing to read it")]
    NotRegular(&'static str),
    #[error("is larger than {MAX_CONFIG_BYTES} bytes; refusing to read it")]
    TooLarge,
}

/// Reads the regular file at `path` (symlinks followed), at most
/// [`MAX_CONFIG_BYTES`]. The open never blocks (`O_NONBLOCK`: a FIFO opens at
/// once and is then refused by its type), and the type is checked on the
/// opened descriptor, so the file cannot be swapped between check and read.
pub fn read_config(path: &Path) -> Result<Vec<u8>, ReadError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(ReadError::NotRegular(if ft.is_dir() {
            "directory"
        } else if ft.is_fifo() {
            "FIFO"
        } else if ft.is_char_device() {
            "character device"
        } else if ft.is_block_device() {
            "block device"
        } else if ft.is_socket() {
            "socket"
        } else {
            "special file"
        }));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ReadError::TooLarge);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file growing while it is read stops at the bound all the same.
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ReadError::TooLarge);
    }
    Ok(bytes)
}

/// [`read_config`], as text: invalid UTF-8 is refused with its byte offset.
pub fn read_config_text(path: &Path) -> Result<String, String> {
    utf8(read_config(path).map_err(|e| e.to_string())?)
}

/// The bytes as UTF-8, or an error naming the first invalid byte.
pub fn utf8(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_files_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("sg-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(matches!(
            read_config(&fifo),
            Err(ReadError::NotRegular("FIFO"))
        ));
        let zero = dir.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(matches!(
            read_config(&zero),
            Err(ReadError::NotRegular("character device"))
        ));
        assert!(matches!(
            read_config(&dir),
            Err(ReadError::NotRegular("directory"))
        ));
        let big = dir.join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_CONFIG_BYTES + 1)
            .unwrap();
        assert!(matches!(read_config(&big), Err(ReadError::TooLarge)));
        let bad = dir.join("bad");
        std::fs::write(&bad, b"a: \xff\n").unwrap();
        assert!(read_config_text(&bad).unwrap_err().contains("offset 3"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
