//! A small tmpfs mounted for a test (a disk that fills up), unmounted when dropped.
//! Mounting needs root, as the project machine and CI have.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

/// A mounted tmpfs.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `256k`) at `path`, creating the directory.
    pub fn mount(path: PathBuf, size: &str) -> Self {
        fs::create_dir_all(&path).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the project machine and CI run as root)"
        );
        Self { path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
