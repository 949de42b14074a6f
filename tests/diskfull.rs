//! End to end: the target's disk fills up mid-mirror. The test mounts a small tmpfs of its
//! own as the target folder (root only; skipped with a message otherwise) and removes it
//! afterwards. The source must hear a clear error, no file may appear under its final name
//! with content the source never had, and once space is freed the mirror completes.

// Not on Windows: it mounts a tmpfs, which only Linux has.
#![cfg(target_os = "linux")]

mod common;

use common::{Sandbox, assert_same_tree, write_random};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: usize = 1 << 20;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(at.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(
            ok.success(),
            "remount {} with size {size}",
            self.0.display()
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn a_full_target_disk_is_reported_leaves_no_partial_file_and_completes_once_freed() {
    if !is_root() {
        eprintln!("SKIPPED: mounting a size-limited file system needs root");
        return;
    }
    let sandbox = Sandbox::new();
    let (src, dst) = (sandbox.dir("src"), sandbox.dir("dst"));
    let Some(mount) = Mount::tmpfs(&dst, "12m") else {
        eprintln!("SKIPPED: this machine refuses to mount a tmpfs");
        return;
    };
    // 20 MiB that do not compress, in files the 12 MiB disk can partly hold.
    for (i, name) in ["db/a.ncd", "db/b.ncd", "db/c.ncd", "db/d.ncd"]
        .iter()
        .enumerate()
    {
        write_random(&src.join(name), 100 + i as u64, 5 * MIB);
    }
    std::fs::write(src.join("workspace.xml"), b"<workspace/>").unwrap();
    let agent = sandbox.serve(&dst);

    let full = sandbox.push(&src).target(&agent).run();
    assert_ne!(
        full.code, 0,
        "a mirror that cannot fit must not report success"
    );
    let said = format!("{}\n{}", full.stderr, full.stdout).to_lowercase();
    assert!(
        said.contains("disk is full") && said.contains("free space there"),
        "the source is told the target's disk is full:\n{}",
        full.describe()
    );
    for entry in walk(&dst) {
        let rel = entry.strip_prefix(&dst).unwrap();
        if rel.starts_with(".rainmaker") || entry.is_dir() {
            continue;
        }
        assert_eq!(
            std::fs::read(&entry).unwrap(),
            std::fs::read(src.join(rel)).unwrap_or_default(),
            "{} is under its final name only with the source's content",
            rel.display()
        );
    }

    println!("the source was told:\n{}", full.stderr.trim());
    mount.resize("64m");
    let freed = sandbox.push(&src).target(&agent).run();
    freed.assert_ok();
    assert_same_tree(&src, &dst);
    println!(
        "disk full: exit {}, then after freeing space the mirror sent {} bytes and completed",
        full.code,
        freed.target_u64(&agent.url, "bytes_changed")
    );
    drop(agent);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            }
            out.push(path);
        }
    }
    out
}
