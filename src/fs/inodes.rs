//! The inode table: FUSE inode numbers to backing paths and back.
//!
//! A node is keyed by the backing file's (st_dev, st_ino), so hard links share
//! one FUSE inode (and therefore one open state). A node remembers every name
//! it was reached by, so unlinking one link leaves the others usable. Names are
//! relative to the backing root; renames rewrite them (a directory rename
//! rewrites every cached descendant). Nodes live while the kernel holds a
//! lookup reference (`forget` drops them); the root lives forever. A node
//! the kernel forgot keeps its number: the same backing file looked up again
//! gets it back, so a file's inode number (st_ino) stays the same for as long
//! as the mount runs, as programs expect (tar compares a directory's st_ino
//! before and after extracting into it; git keeps it in its index).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The FUSE root inode number.
pub(super) const ROOT_INO: u64 = 1;

/// Identity of a backing file: device, inode number, and its incarnation
/// (file type and birth time, see `core::backing_key`). The incarnation tells
/// apart a file from a later one that reuses its inode number after an unlink,
/// while the kernel may still hold the old node: handing the kernel the old
/// FUSE inode for a file of another type makes it mark the inode bad.
pub(super) type BackingKey = (u64, u64, u64);

/// The names of one node: the one most recently used, and the others in a
/// set, so that adding, using and removing a name costs the same with one
/// hard link or twelve thousand (under the table's lock, which every
/// request takes).
#[derive(Debug, Default)]
struct Names {
    first: Option<PathBuf>,
    rest: HashSet<PathBuf>,
}

impl Names {
    fn one(p: &Path) -> Self {
        Names {
            first: Some(p.to_path_buf()),
            rest: HashSet::new(),
        }
    }

    fn first(&self) -> Option<&Path> {
        self.first.as_deref()
    }

    fn contains(&self, p: &Path) -> bool {
        self.first.as_deref() == Some(p) || self.rest.contains(p)
    }

    /// Makes `p` the first name (a new one is added); true when it is new.
    fn use_name(&mut self, p: &Path) -> bool {
        if self.first.as_deref() == Some(p) {
            return false;
        }
        let new = !self.rest.remove(p);
        if let Some(old) = self.first.replace(p.to_path_buf()) {
            self.rest.insert(old);
        }
        new
    }

    /// Adds `p` (not as the first unless it is the only one); true when new.
    fn add(&mut self, p: &Path) -> bool {
        if self.contains(p) {
            return false;
        }
        if self.first.is_none() {
            self.first = Some(p.to_path_buf());
        } else {
            self.rest.insert(p.to_path_buf());
        }
        true
    }

    /// Removes `p`; another name becomes the first if it was.
    fn remove(&mut self, p: &Path) {
        if self.first.as_deref() == Some(p) {
            self.first = self.rest.iter().next().cloned();
            if let Some(f) = &self.first {
                self.rest.remove(f);
            }
        } else {
            self.rest.remove(p);
        }
        if self.rest.capacity() > 64 && self.rest.len() < self.rest.capacity() / 4 {
            self.rest.shrink_to_fit();
        }
    }

    fn into_all(self) -> impl Iterator<Item = PathBuf> {
        self.first.into_iter().chain(self.rest)
    }
}

#[derive(Debug)]
struct Node {
    /// Names of this node relative to the backing root.
    paths: Names,
    lookups: u64,
    key: BackingKey,
    is_dir: bool,
}

/// The table. Not thread-safe by itself: the filesystem keeps it in a mutex.
#[derive(Debug)]
pub(super) struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<BackingKey, u64>,
    /// Every known name to its node: unlink and file renames cost O(1).
    by_path: HashMap<PathBuf, u64>,
    /// The numbers of nodes the kernel forgot, by backing identity (at most
    /// `RETIRED_MAX`; past that they start afresh).
    retired: HashMap<BackingKey, u64>,
    next: u64,
}

/// Forgotten nodes whose numbers are kept for their files (about 64 bytes each).
const RETIRED_MAX: usize = 1 << 20;

impl InodeTable {
    /// A table with the root (relative path "") for a backing root with `key`.
    pub(super) fn new(root_key: BackingKey) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                paths: Names::one(Path::new("")),
                lookups: 1,
                key: root_key,
                is_dir: true,
            },
        );
        let mut by_key = HashMap::new();
        by_key.insert(root_key, ROOT_INO);
        let mut by_path = HashMap::new();
        by_path.insert(PathBuf::new(), ROOT_INO);
        Self {
            nodes,
            by_key,
            by_path,
            retired: HashMap::new(),
            next: ROOT_INO + 1,
        }
    }

    /// The current relative path of `ino`, if it still has a name.
    #[cfg(test)]
    pub(super) fn path(&self, ino: u64) -> Option<&Path> {
        self.nodes.get(&ino).and_then(|n| n.paths.first())
    }

    /// The current relative path of `ino`, if it still has a name, and the
    /// identity of the backing file it stands for.
    pub(super) fn node(&self, ino: u64) -> Option<(&Path, BackingKey)> {
        let n = self.nodes.get(&ino)?;
        Some((n.paths.first()?, n.key))
    }

    /// True when `ino` is known.
    #[cfg(test)]
    pub(super) fn contains(&self, ino: u64) -> bool {
        self.nodes.contains_key(&ino)
    }

    /// Finds or creates the node for the backing file `key` reached by `path`,
    /// without taking a lookup reference. `path` becomes its preferred name.
    pub(super) fn resolve(&mut self, path: &Path, key: BackingKey, is_dir: bool) -> u64 {
        if let Some(&ino) = self.by_key.get(&key)
            && let Some(n) = self.nodes.get_mut(&ino)
        {
            n.is_dir = is_dir;
            if n.paths.use_name(path) {
                self.index(path, ino);
            }
            return ino;
        }
        let ino = self.retired.remove(&key).unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.nodes.insert(
            ino,
            Node {
                paths: Names::one(path),
                lookups: 0,
                key,
                is_dir,
            },
        );
        self.by_key.insert(key, ino);
        self.index(path, ino);
        ino
    }

    /// Records that `path` names `ino`; a node that had that name loses it.
    fn index(&mut self, path: &Path, ino: u64) {
        if let Some(old) = self.by_path.insert(path.to_path_buf(), ino)
            && old != ino
            && let Some(n) = self.nodes.get_mut(&old)
        {
            n.paths.remove(path);
        }
    }

    /// Forgets the name `path`; returns the node it named.
    fn unindex(&mut self, path: &Path) -> Option<u64> {
        let ino = self.by_path.remove(path)?;
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.paths.remove(path);
        }
        Some(ino)
    }

    /// Takes one lookup reference on `ino` (the kernel now knows it).
    pub(super) fn add_lookup(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.lookups += 1;
        }
    }

    /// `resolve` plus one lookup reference: what a reply with an entry needs.
    pub(super) fn lookup(&mut self, path: &Path, key: BackingKey, is_dir: bool) -> u64 {
        let ino = self.resolve(path, key, is_dir);
        self.add_lookup(ino);
        ino
    }

    /// Drops `n` lookup references; the node goes when none are left.
    /// Returns true when the node was removed.
    pub(super) fn forget(&mut self, ino: u64, n: u64) -> bool {
        if ino == ROOT_INO {
            return false;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return false;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups > 0 {
            return false;
        }
        let key = node.key;
        if let Some(node) = self.nodes.remove(&ino) {
            for p in node.paths.into_all() {
                if self.by_path.get(&p) == Some(&ino) {
                    self.by_path.remove(&p);
                }
            }
        }
        if self.by_key.get(&key) == Some(&ino) {
            self.by_key.remove(&key);
            if self.retired.len() >= RETIRED_MAX {
                self.retired.clear();
            }
            self.retired.insert(key, ino);
        }
        true
    }

    /// The name `path` is gone (unlink, rmdir, or replaced by a rename).
    /// (A directory can only go when empty, so no name under it is left.)
    pub(super) fn remove_path(&mut self, path: &Path) {
        self.unindex(path);
    }

    /// Cached names strictly under directory `dir` (a scan: directories only).
    fn descendants(&self, dir: &Path) -> Vec<PathBuf> {
        self.by_path
            .keys()
            .filter(|p| p.starts_with(dir) && p.as_path() != dir)
            .cloned()
            .collect()
    }

    /// `from` was renamed to `to` (replacing whatever `to` was).
    pub(super) fn rename(&mut self, from: &Path, to: &Path) {
        self.remove_path(to);
        self.move_name(from, to);
    }

    /// `a` and `b` were exchanged (RENAME_EXCHANGE).
    pub(super) fn exchange(&mut self, a: &Path, b: &Path) {
        let tmp = PathBuf::from("\0kmsfs-exchange");
        self.move_name(a, &tmp);
        self.move_name(b, a);
        self.move_name(&tmp, b);
    }

    /// Renames the name `from` (and, for a directory, every cached name under it).
    fn move_name(&mut self, from: &Path, to: &Path) {
        let Some(ino) = self.unindex(from) else {
            return;
        };
        let is_dir = match self.nodes.get_mut(&ino) {
            Some(n) => {
                n.paths.use_name(to);
                n.is_dir
            }
            None => false,
        };
        self.index(to, ino);
        if is_dir {
            for old in self.descendants(from) {
                let Some(child) = self.unindex(&old) else {
                    continue;
                };
                let Ok(rest) = old.strip_prefix(from) else {
                    continue;
                };
                let new = to.join(rest);
                if let Some(n) = self.nodes.get_mut(&child) {
                    n.paths.use_name(&new);
                }
                self.index(&new, child);
            }
        }
    }

    /// Adds another name of `ino` (a new hard link).
    pub(super) fn add_path(&mut self, ino: u64, path: &Path) {
        if let Some(n) = self.nodes.get_mut(&ino)
            && n.paths.add(path)
        {
            self.index(path, ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn a_forgotten_file_looked_up_again_gets_its_number_back() {
        let mut t = InodeTable::new((1, 1, 0));
        let a = t.lookup(&p("a"), (1, 10, 5), true);
        let b = t.lookup(&p("b"), (1, 11, 5), false);
        assert!(t.forget(a, 1));
        assert!(!t.contains(a));
        // Another file does not get a's number; a itself does.
        let c = t.lookup(&p("c"), (1, 12, 5), false);
        assert_ne!(c, a);
        assert_eq!(t.lookup(&p("a"), (1, 10, 5), true), a);
        // The same inode number in a new incarnation is another file.
        assert!(t.forget(b, 1));
        assert_ne!(t.lookup(&p("b"), (1, 11, 6), false), b);
    }

    #[test]
    fn a_reused_inode_number_of_a_new_file_is_a_new_node() {
        let mut t = InodeTable::new((1, 2, 0));
        let old = t.lookup(&p("f"), (1, 10, 7), false);
        // The file is unlinked (the kernel still holds the node) and a FIFO
        // made at the same name gets the same backing inode number.
        t.remove_path(&p("f"));
        let new = t.lookup(&p("f"), (1, 10, 8), false);
        assert_ne!(old, new);
        assert_eq!(t.path(new), Some(Path::new("f")));
    }

    #[test]
    fn lookup_forget_cycle() {
        let mut t = InodeTable::new((1, 2, 0));
        let a = t.lookup(&p("a"), (1, 10, 0), false);
        assert_ne!(a, ROOT_INO);
        assert_eq!(t.lookup(&p("a"), (1, 10, 0), false), a);
        assert_eq!(t.path(a), Some(Path::new("a")));
        assert!(!t.forget(a, 1));
        assert!(t.forget(a, 1));
        assert!(!t.contains(a));
        assert!(!t.forget(ROOT_INO, 5));
        assert_eq!(t.path(ROOT_INO), Some(Path::new("")));
    }

    #[test]
    fn hard_links_share_a_node_and_survive_unlink() {
        let mut t = InodeTable::new((1, 2, 0));
        let a = t.lookup(&p("a"), (1, 10, 0), false);
        let b = t.lookup(&p("d/b"), (1, 10, 0), false);
        assert_eq!(a, b);
        assert_eq!(t.path(a), Some(Path::new("d/b")));
        t.remove_path(&p("d/b"));
        assert_eq!(t.path(a), Some(Path::new("a")));
        t.remove_path(&p("a"));
        assert_eq!(t.path(a), None);
        assert!(t.contains(a));
    }

    #[test]
    fn directory_rename_moves_descendants() {
        let mut t = InodeTable::new((1, 2, 0));
        let d = t.lookup(&p("d"), (1, 3, 0), true);
        let f = t.lookup(&p("d/e/f"), (1, 4, 0), false);
        let other = t.lookup(&p("dd"), (1, 5, 0), false);
        t.rename(&p("d"), &p("x/y"));
        assert_eq!(t.path(d), Some(Path::new("x/y")));
        assert_eq!(t.path(f), Some(Path::new("x/y/e/f")));
        assert_eq!(t.path(other), Some(Path::new("dd")));
    }

    #[test]
    fn rename_over_target_drops_its_name() {
        let mut t = InodeTable::new((1, 2, 0));
        let a = t.lookup(&p("a"), (1, 10, 0), false);
        let b = t.lookup(&p("b"), (1, 11, 0), false);
        t.rename(&p("a"), &p("b"));
        assert_eq!(t.path(a), Some(Path::new("b")));
        assert_eq!(t.path(b), None);
    }

    #[test]
    fn a_name_belongs_to_one_node() {
        let mut t = InodeTable::new((1, 2, 0));
        let old = t.lookup(&p("n"), (1, 10, 0), false);
        // The name now leads to another backing file (replaced beside the mount).
        let new = t.lookup(&p("n"), (1, 11, 0), false);
        assert_ne!(old, new);
        assert_eq!(t.path(old), None);
        assert_eq!(t.path(new), Some(Path::new("n")));
        t.add_path(new, &p("n2"));
        t.remove_path(&p("n"));
        assert_eq!(t.path(new), Some(Path::new("n2")));
        t.forget(new, 1);
        assert!(!t.by_path.contains_key(Path::new("n2")));
    }

    #[test]
    fn exchange_swaps_names() {
        let mut t = InodeTable::new((1, 2, 0));
        let a = t.lookup(&p("a"), (1, 10, 0), true);
        let c = t.lookup(&p("a/c"), (1, 12, 0), false);
        let b = t.lookup(&p("b"), (1, 11, 0), false);
        t.exchange(&p("a"), &p("b"));
        assert_eq!(t.path(a), Some(Path::new("b")));
        assert_eq!(t.path(c), Some(Path::new("b/c")));
        assert_eq!(t.path(b), Some(Path::new("a")));
    }

    #[test]
    fn many_hard_links_cost_no_more_per_name() {
        let mut t = InodeTable::new((1, 2, 0));
        let n = 20_000;
        let f = t.lookup(&p("l0"), (1, 10, 0), false);
        for i in 1..n {
            t.add_path(f, &p(&format!("l{i}")));
        }
        // Listings (readdirplus) resolve every name, each now the first.
        for i in 0..n {
            assert_eq!(t.resolve(&p(&format!("l{i}")), (1, 10, 0), false), f);
        }
        assert_eq!(t.path(f), Some(Path::new("l19999")));
        for i in (1..n).rev() {
            t.remove_path(&p(&format!("l{i}")));
        }
        assert_eq!(t.path(f), Some(Path::new("l0")));
        t.remove_path(&p("l0"));
        assert_eq!(t.path(f), None);
    }
}
