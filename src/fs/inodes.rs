//! The inode table: FUSE inode numbers to backing paths and back.
//!
//! A node is keyed by the backing file's (st_dev, st_ino), so hard links share
//! one FUSE inode (and therefore one open state). A node remembers every name
//! it was reached by, so unlinking one link leaves the others usable. Names are
//! relative to the backing root; renames rewrite them (a directory rename
//! rewrites every cached descendant). Nodes live while the kernel holds a
//! lookup reference; the root lives forever. A node the kernel forgot
//! (`forget`) is kept, names and all, while it is among the `NAMED_MAX` most
//! recently forgotten: the kernel can ask for it again by number alone (a
//! LOOKUP of "." when a file handle from name_to_handle_at or an NFS client
//! is opened after its inode left the kernel's cache), and it is reached
//! again by its name, with every check of `KmsFs::open_checked`. Past that
//! it keeps only its number: the same backing file looked up again gets it
//! back, so a file's inode number (st_ino) stays the same for as long as
//! the mount runs, as programs expect (tar compares a directory's st_ino
//! before and after extracting into it; git keeps it in its index).

use std::collections::{HashMap, HashSet, VecDeque};
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
    /// When the kernel forgot it (an increasing count), 0 while it knows it.
    forgotten: u64,
}

/// The table. Not thread-safe by itself: the filesystem keeps it in a mutex.
#[derive(Debug)]
pub(super) struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<BackingKey, u64>,
    /// Every known name to its node: unlink and file renames cost O(1).
    by_path: HashMap<PathBuf, u64>,
    /// Forgotten nodes, oldest first, with when they were forgotten (an
    /// entry whose node was looked up again since is skipped).
    forgotten: VecDeque<(u64, u64)>,
    /// How many nodes are forgotten but kept (at most `NAMED_MAX`).
    forgotten_nodes: usize,
    /// The count `Node::forgotten` takes its values from.
    forgets: u64,
    /// The numbers of nodes dropped from the table, by backing identity (at
    /// most `RETIRED_MAX`; past that they start afresh).
    retired: HashMap<BackingKey, u64>,
    next: u64,
}

/// Forgotten nodes kept whole, names included, so that a file handle of
/// theirs still opens (a few hundred bytes each, most of it the names).
const NAMED_MAX: usize = 1 << 17;

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
                forgotten: 0,
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
            forgotten: VecDeque::new(),
            forgotten_nodes: 0,
            forgets: 0,
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
                forgotten: 0,
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
            if n.forgotten != 0 {
                n.forgotten = 0;
                self.forgotten_nodes -= 1;
            }
        }
    }

    /// `resolve` plus one lookup reference: what a reply with an entry needs.
    pub(super) fn lookup(&mut self, path: &Path, key: BackingKey, is_dir: bool) -> u64 {
        let ino = self.resolve(path, key, is_dir);
        self.add_lookup(ino);
        ino
    }

    /// Drops `n` lookup references. A node with none left is forgotten: kept
    /// as it is (the kernel may ask for it by number), and, past the
    /// `NAMED_MAX` most recently forgotten, the oldest forgotten node is
    /// dropped (`drop_node`). Returns true when `ino` was forgotten.
    pub(super) fn forget(&mut self, ino: u64, n: u64) -> bool {
        if ino == ROOT_INO {
            return false;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return false;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups > 0 || node.forgotten != 0 {
            return false;
        }
        if node.paths.first().is_none() {
            // No name left to reach it by: nothing to keep but its number.
            self.drop_node(ino);
            return true;
        }
        self.forgets += 1;
        node.forgotten = self.forgets;
        self.forgotten.push_back((ino, self.forgets));
        self.forgotten_nodes += 1;
        while self.forgotten_nodes > NAMED_MAX {
            let Some((old, when)) = self.forgotten.pop_front() else {
                break;
            };
            if self.nodes.get(&old).is_some_and(|n| n.forgotten == when) {
                self.drop_node(old);
            }
        }
        // Entries of nodes looked up again since: dropped now and then, so
        // that the queue stays within twice what it holds.
        if self.forgotten.len() > 2 * self.forgotten_nodes + 1024 {
            let nodes = &self.nodes;
            self.forgotten
                .retain(|(i, when)| nodes.get(i).is_some_and(|n| n.forgotten == *when));
        }
        true
    }

    /// Removes forgotten node `ino` from the table, keeping only its number
    /// for its backing file.
    fn drop_node(&mut self, ino: u64) {
        let Some(node) = self.nodes.remove(&ino) else {
            return;
        };
        if node.forgotten != 0 {
            self.forgotten_nodes -= 1;
        }
        for p in node.paths.into_all() {
            if self.by_path.get(&p) == Some(&ino) {
                self.by_path.remove(&p);
            }
        }
        if self.by_key.get(&node.key) == Some(&ino) {
            self.by_key.remove(&node.key);
            if self.retired.len() >= RETIRED_MAX {
                self.retired.clear();
            }
            self.retired.insert(node.key, ino);
        }
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

    /// The node named `path`, if any.
    pub(super) fn at(&self, path: &Path) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// `ino` now stands for backing object `key` (a symlink re-sealed for
    /// its new place is a new backing object: `fs::links`).
    pub(super) fn rekey(&mut self, ino: u64, key: BackingKey) {
        let Some(n) = self.nodes.get_mut(&ino) else {
            return;
        };
        if self.by_key.get(&n.key) == Some(&ino) {
            self.by_key.remove(&n.key);
        }
        n.key = key;
        self.by_key.insert(key, ino);
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
        // Forgotten, but kept: the kernel may ask for it by number.
        assert_eq!(t.node(a), Some((Path::new("a"), (1, 10, 5))));
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
        assert!(!t.forget(a, 1));
        assert_eq!(t.path(a), Some(Path::new("a")));
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
        assert_eq!(t.by_path.get(Path::new("n2")), Some(&new));
        // A forgotten node with no name left is dropped, its number kept.
        t.remove_path(&p("n2"));
        let gone = t.lookup(&p("g"), (1, 12, 0), false);
        t.remove_path(&p("g"));
        assert!(t.forget(gone, 1));
        assert!(!t.contains(gone));
        assert_eq!(t.lookup(&p("g2"), (1, 12, 0), false), gone);
    }

    #[test]
    fn forgotten_nodes_are_reached_by_number_until_named_max_newer_ones() {
        let mut t = InodeTable::new((1, 2, 0));
        let first = t.lookup(&p("d/first"), (1, 3, 0), false);
        assert!(t.forget(first, 1));
        // A rename through the mount while it is forgotten moves its name.
        let d = t.lookup(&p("d"), (1, 4, 0), true);
        t.rename(&p("d"), &p("e"));
        assert_eq!(t.path(first), Some(Path::new("e/first")));
        assert!(t.forget(d, 1));
        // Looked up again (a LOOKUP of "."): the same node, known again.
        assert_eq!(t.lookup(&p("e/first"), (1, 3, 0), false), first);
        assert!(t.forget(first, 1));
        let mut inos = Vec::new();
        for i in 0..NAMED_MAX as u64 {
            let ino = t.lookup(&p(&format!("f{i}")), (1, 100 + i, 0), false);
            assert!(t.forget(ino, 1));
            inos.push(ino);
        }
        // `d` and `first` were the oldest forgotten: dropped, numbers kept.
        assert!(!t.contains(d));
        assert!(!t.contains(first));
        assert_eq!(t.forgotten_nodes, NAMED_MAX);
        assert_eq!(t.path(inos[0]), Some(Path::new("f0")));
        assert_eq!(t.lookup(&p("e/first"), (1, 3, 0), false), first);
        assert!(t.forgotten.len() <= 2 * t.forgotten_nodes + 1024);
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
