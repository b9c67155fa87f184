//! Opening the files a user names — kernel, initramfs, disks, the entropy source, console
//! and log files — without ever blocking, and only when they are the right kind of file.
//!
//! `open()` of a FIFO blocks until a writer comes, and would stall the VMM thread (and with
//! it the API and termination signals). Every such path is opened with `O_NONBLOCK`, then
//! checked with `fstat`: what is not the kind the item needs is refused with one line naming
//! the kind found. `O_NONBLOCK` is cleared again on what is kept, so reads and writes behave
//! as usual.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The kinds of file an item accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file only (kernel, initramfs, console and log files).
    Regular,
    /// A regular file or a block device (a disk image).
    Disk,
    /// A regular file or a character device (an entropy source such as `/dev/urandom`).
    Source,
}

impl Kind {
    fn wanted(self) -> &'static str {
        match self {
            Kind::Regular => "a regular file",
            Kind::Disk => "a regular file or a block device",
            Kind::Source => "a regular file or a character device",
        }
    }
}

fn found(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "a regular file"
    }
}

/// Opens `path` with `options` (and the extra `open(2)` flags `flags`, such as `O_DIRECT`)
/// without blocking, and checks it is of `kind`.
pub fn open(path: &Path, options: &mut OpenOptions, flags: i32, kind: Kind) -> io::Result<File> {
    let file = options.custom_flags(flags | libc::O_NONBLOCK).open(path)?;
    let ft = file.metadata()?.file_type();
    let ok = match kind {
        Kind::Regular => ft.is_file(),
        Kind::Disk => ft.is_file() || ft.is_block_device(),
        Kind::Source => ft.is_file() || ft.is_char_device(),
    };
    if !ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {}, but {} is needed", found(ft), kind.wanted()),
        ));
    }
    let fd = file.as_raw_fd();
    // SAFETY: reading and setting the status flags of a descriptor we own.
    unsafe {
        let status = libc::fcntl(fd, libc::F_GETFL);
        if status < 0 || libc::fcntl(fd, libc::F_SETFL, status & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(file)
}

/// Opens `path` for reading, without blocking, if it is of `kind`.
pub fn open_read(path: &Path, kind: Kind) -> io::Result<File> {
    open(path, OpenOptions::new().read(true), 0, kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_directories_and_devices_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("palisade-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: creating a FIFO at a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_read(&fifo, Kind::Regular).unwrap_err();
        assert_eq!(e.to_string(), "is a FIFO, but a regular file is needed");
        // A FIFO opened for writing with no reader fails at once too (ENXIO).
        assert!(open(&fifo, OpenOptions::new().write(true), 0, Kind::Regular).is_err());
        let e = open_read(&dir, Kind::Regular).unwrap_err();
        assert!(e.to_string().starts_with("is a directory"), "{e}");
        let e = open_read(Path::new("/dev/zero"), Kind::Disk).unwrap_err();
        assert!(e.to_string().starts_with("is a character device"), "{e}");
        assert!(open_read(Path::new("/dev/urandom"), Kind::Source).is_ok());
        let file = dir.join("file");
        std::fs::write(&file, "x").unwrap();
        let f = open_read(&file, Kind::Regular).unwrap();
        // SAFETY: reading the status flags of an open descriptor.
        let status = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(status & libc::O_NONBLOCK, 0, "O_NONBLOCK is cleared");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
