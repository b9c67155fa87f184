//! The locks on disk images, kept per disk so that a migration can hand them over.
//!
//! A disk's image is locked when it is opened (one writer at most, see `lock_image`). A
//! migration between two VMMs on one host would deadlock on that: the destination opens the
//! images while the source still runs. So the destination opens them unlocked and takes the
//! locks at the end, once the source — paused, its devices held — has let go of its own; if
//! the migration fails, the source takes them back.

use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{lock_image, PciDeviceError, PciDevices};

/// One disk's image and whether this VMM holds its lock now.
pub(super) struct ImageLock {
    pub(super) id: String,
    pub(super) path: PathBuf,
    pub(super) readonly: bool,
    /// A descriptor of the disk's locked open (the lock belongs to that open).
    pub(super) file: File,
    pub(super) held: bool,
}

/// How long taking the locks back waits for the other VMM to let go of them.
const TAKE_WAIT: Duration = Duration::from_secs(5);

fn unlock(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: flock is plain data.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_UNLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_SETLK reads `lock`, which outlives the call.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } != 0 {
        log::warn!(
            "cannot unlock a disk image: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl PciDevices {
    /// Disks plugged from now on open their images without locking them, until
    /// [`PciDevices::take_image_locks`] (a VM arriving by migration).
    pub fn defer_image_locks(&mut self) {
        self.defer_locks = true;
    }

    /// Records disk `id`'s image, opened (and locked, unless locks are deferred) as `file`.
    pub(super) fn keep_image(&mut self, id: &str, path: PathBuf, readonly: bool, file: File) {
        self.image_locks.push(ImageLock {
            id: id.to_string(),
            path,
            readonly,
            file,
            held: !self.defer_locks,
        });
    }

    /// Forgets disk `id`'s image (the disk is gone).
    pub(super) fn forget_image(&mut self, id: &str) {
        self.image_locks.retain(|l| l.id != id);
    }

    /// Lets go of every image lock (a migrating source, paused, handing its disks over).
    pub fn release_image_locks(&mut self) {
        for lock in self.image_locks.iter_mut().filter(|l| l.held) {
            unlock(&lock.file);
            lock.held = false;
        }
    }

    /// Takes every image lock not held, waiting a little for another VMM to let go of it;
    /// disks plugged later lock as usual again. On a conflict, the error names the image and
    /// the locks this call took are let go again.
    pub fn take_image_locks(&mut self) -> Result<(), PciDeviceError> {
        let deadline = Instant::now() + TAKE_WAIT;
        let mut taken: Vec<usize> = Vec::new();
        for (index, lock) in self.image_locks.iter().enumerate() {
            if lock.held {
                continue;
            }
            loop {
                match lock_image(&lock.file, lock.readonly) {
                    Ok(()) => break,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err((holder, kind)) => {
                        for &i in &taken {
                            unlock(&self.image_locks[i].file);
                        }
                        return Err(PciDeviceError::Locked {
                            path: lock.path.clone(),
                            holder,
                            kind,
                        });
                    }
                }
            }
            taken.push(index);
        }
        for i in taken {
            self.image_locks[i].held = true;
        }
        self.defer_locks = false;
        Ok(())
    }
}
