//! A power cut for the tests: a small FUSE filesystem that loses what was
//! written but not fsynced (the idea of LazyFS, which Jepsen uses).
//!
//! [`LazyFs::mount`] mounts an empty filesystem on a fresh directory. Processes
//! under test keep their data directory there. [`LazyFs::cut`] is the power
//! cut: the caller has killed (SIGKILL) every process using the filesystem;
//! `cut` unmounts it, throws away every byte not made durable, and mounts the
//! durable state again at the same path, as a machine sees its disk after it
//! is switched back on.
//!
//! # What is modelled
//!
//! - **File data** (`write`, `truncate`, `fallocate`) is volatile until the
//!   file is fsynced (`fsync` or `fdatasync`, both the same here): each file
//!   keeps the bytes processes see and the bytes on "disk"; an fsync copies the
//!   first to the second; a cut copies the second back. A cut therefore loses
//!   every write since the file's last fsync, wholly: page by page tearing and
//!   reordering of unsynced writes (which a real disk may also do) are not
//!   modelled: losing all of them is the harshest of those outcomes for a
//!   database that relies on fsync, and the only one SQLite's WAL depends on.
//! - **Names** (create, mkdir, unlink, rmdir, rename) are durable when the call
//!   returns, as LazyFS does (it passes them straight to the disk) and as a
//!   journalling filesystem nearly does; `fsyncdir` has nothing to do. A file
//!   created and never fsynced survives a cut, empty.
//! - The "disk" is the [`LazyFs`] value's memory, so it lives as long as the
//!   test; nothing is written to the host's disk.
//!
//! # Ownership
//!
//! The filesystem is served by a fuser background thread; the state is shared
//! with [`LazyFs`] under one mutex (the kernel's requests are served one at a
//! time anyway). Attributes and names are never cached by the kernel (zero
//! TTL) and file pages are dropped at every open (no `FOPEN_KEEP_CACHE`), so
//! after a cut nothing the kernel remembers outlives the lost data; the
//! unmount in [`LazyFs::cut`] makes sure of it.
//!
//! # Invariant
//!
//! Bytes that were fsynced are never lost by a cut; bytes written after a
//! file's last fsync always are.
//!
//! Mounting needs `/dev/fuse` and root (or `fusermount3`, Debian's `fuse3`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackgroundSession, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Nothing cached in the kernel: after a cut every attribute is asked again.
const TTL: Duration = Duration::ZERO;

/// A mounted lazy filesystem (see the module docs). Unmounted on drop.
pub struct LazyFs {
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
    // Declared last: removed after the filesystem is unmounted.
    mountpoint: tempfile::TempDir,
}

/// What one cut threw away.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CutReport {
    /// Files whose contents went back to their last fsynced state.
    pub files_reverted: usize,
    /// Bytes of file contents that differed from the durable state.
    pub bytes_lost: u64,
}

impl LazyFs {
    /// Mounts an empty lazy filesystem on a new temporary directory.
    pub fn mount() -> io::Result<Self> {
        let mountpoint = tempfile::Builder::new().prefix("lazyfs-").tempdir()?;
        let state = Arc::new(Mutex::new(State::new()));
        let session = Some(mount_at(mountpoint.path(), &state)?);
        Ok(Self {
            state,
            session,
            mountpoint,
        })
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        self.mountpoint.path()
    }

    /// The power cut. Every process using the filesystem must already be dead
    /// (SIGKILL, and reaped): the unmount fails while a file is open. Unmounts,
    /// drops every unsynced byte, and mounts the durable state at the same path.
    pub fn cut(&mut self) -> io::Result<CutReport> {
        if let Some(session) = self.session.take() {
            session.umount_and_join()?;
        }
        let report = lock(&self.state).cut();
        self.session = Some(mount_at(self.mountpoint.path(), &self.state)?);
        Ok(report)
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if let Err(e) = session.umount_and_join() {
                // Still busy (a connection of the test not yet closed): detach
                // it, so that no stale mount outlives the test.
                eprintln!(
                    "lazyfs: unmount {}: {e}; detaching it",
                    self.mountpoint.path().display()
                );
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(self.mountpoint.path())
                    .status();
            }
        }
    }
}

fn mount_at(path: &Path, state: &Arc<Mutex<State>>) -> io::Result<BackgroundSession> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("storesync-lazyfs".into()),
        MountOption::RW,
        MountOption::NoAtime,
    ];
    fuser::spawn_mount(
        LazyFilesystem {
            state: Arc::clone(state),
        },
        path,
        &config,
    )
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while serving one request leaves the tree consistent enough to
    // go on serving (each operation updates it in one step).
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Kind {
    File {
        /// What processes read.
        data: Vec<u8>,
        /// What survives a cut: the contents at the last fsync.
        durable: Vec<u8>,
        /// Offsets of `data` written since the last fsync (`lo..hi`).
        dirty: Option<(u64, u64)>,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        parent: u64,
    },
}

struct Node {
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    nlink: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
}

struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
}

impl State {
    fn new() -> Self {
        let root = Node::new(
            Kind::Dir {
                entries: BTreeMap::new(),
                parent: INodeNo::ROOT.0,
            },
            0o755,
            0,
            0,
        );
        Self {
            nodes: HashMap::from([(INodeNo::ROOT.0, root)]),
            next_ino: INodeNo::ROOT.0 + 1,
        }
    }

    fn cut(&mut self) -> CutReport {
        let mut report = CutReport::default();
        // Unmounted: no file is open, so unlinked files are gone for good.
        self.nodes.retain(|_, node| node.nlink > 0);
        for node in self.nodes.values_mut() {
            if let Kind::File {
                data,
                durable,
                dirty,
            } = &mut node.kind
            {
                if data != durable {
                    report.files_reverted += 1;
                    let common = data.len().min(durable.len());
                    let differing = data[..common]
                        .iter()
                        .zip(&durable[..common])
                        .filter(|(a, b)| a != b)
                        .count();
                    let lengths = data.len().abs_diff(durable.len());
                    report.bytes_lost += (differing + lengths) as u64;
                }
                data.clone_from(durable);
                *dirty = None;
            }
        }
        report
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        Ok(node.attr(ino))
    }

    fn dir_entries(&self, ino: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match &self.nodes.get(&ino).ok_or(Errno::ENOENT)?.kind {
            Kind::Dir { entries, .. } => Ok(entries),
            Kind::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    fn dir_entries_mut(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match &mut self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?.kind {
            Kind::Dir { entries, .. } => Ok(entries),
            Kind::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir_entries(parent)?
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    /// Adds a new node `name` under `parent`.
    fn create(&mut self, parent: u64, name: &OsStr, node: Node) -> Result<FileAttr, Errno> {
        if self.dir_entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let is_dir = matches!(node.kind, Kind::Dir { .. });
        self.nodes.insert(ino, node);
        self.dir_entries_mut(parent)?.insert(name.to_owned(), ino);
        let parent_node = self.nodes.get_mut(&parent).ok_or(Errno::ENOENT)?;
        if is_dir {
            parent_node.nlink += 1;
        }
        parent_node.touch();
        self.attr(ino)
    }

    /// Removes `name` from `parent`; `dir` says which kind it must be.
    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        let node = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        match (&node.kind, dir) {
            (Kind::Dir { entries, .. }, true) if !entries.is_empty() => {
                return Err(Errno::ENOTEMPTY)
            }
            (Kind::Dir { .. }, false) => return Err(Errno::EISDIR),
            (Kind::File { .. }, true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.dir_entries_mut(parent)?.remove(name);
        self.unlinked(ino);
        let parent_node = self.nodes.get_mut(&parent).ok_or(Errno::ENOENT)?;
        if dir {
            parent_node.nlink -= 1;
        }
        parent_node.touch();
        Ok(())
    }

    /// One name of `ino` is gone. The node stays until the next cut: an open
    /// file may still be read and written (and SQLite does so).
    fn unlinked(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.nlink = if matches!(node.kind, Kind::Dir { .. }) {
                0
            } else {
                node.nlink.saturating_sub(1)
            };
            node.ctime = SystemTime::now();
        }
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Errno::EINVAL);
        }
        let ino = self.lookup(parent, name)?;
        let moving_dir = matches!(
            self.nodes.get(&ino).map(|n| &n.kind),
            Some(Kind::Dir { .. })
        );
        if let Ok(target) = self.lookup(new_parent, new_name) {
            if target == ino {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            self.remove(new_parent, new_name, moving_dir)?;
        }
        self.dir_entries_mut(parent)?.remove(name);
        self.dir_entries_mut(new_parent)?
            .insert(new_name.to_owned(), ino);
        if moving_dir && parent != new_parent {
            if let Some(Kind::Dir { parent: p, .. }) = self.nodes.get_mut(&ino).map(|n| &mut n.kind)
            {
                *p = new_parent;
            }
            if let Some(old) = self.nodes.get_mut(&parent) {
                old.nlink -= 1;
            }
            if let Some(new) = self.nodes.get_mut(&new_parent) {
                new.nlink += 1;
            }
        }
        for dir in [parent, new_parent] {
            if let Some(node) = self.nodes.get_mut(&dir) {
                node.touch();
            }
        }
        Ok(())
    }

    fn file(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        match node.kind {
            Kind::File { .. } => Ok(node),
            Kind::Dir { .. } => Err(Errno::EISDIR),
        }
    }
}

impl Node {
    fn new(kind: Kind, perm: u16, uid: u32, gid: u32) -> Self {
        let now = SystemTime::now();
        let nlink = if matches!(kind, Kind::Dir { .. }) {
            2
        } else {
            1
        };
        Self {
            kind,
            perm,
            uid,
            gid,
            nlink,
            atime: now,
            mtime: now,
            ctime: now,
        }
    }

    fn file(perm: u16, req: &Request) -> Self {
        Self::new(
            Kind::File {
                data: Vec::new(),
                durable: Vec::new(),
                dirty: None,
            },
            perm,
            req.uid(),
            req.gid(),
        )
    }

    fn touch(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, size) = match &self.kind {
            Kind::File { data, .. } => (FileType::RegularFile, data.len() as u64),
            Kind::Dir { entries, .. } => (FileType::Directory, entries.len() as u64),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.ctime,
            kind,
            perm: self.perm,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Resizes the contents (zero-filled), marking the changed range dirty.
    fn resize(&mut self, size: u64) -> Result<(), Errno> {
        let new_len = usize::try_from(size).map_err(|_| Errno::EFBIG)?;
        if let Kind::File { data, dirty, .. } = &mut self.kind {
            let old = data.len() as u64;
            data.resize(new_len, 0);
            mark_dirty(dirty, old.min(size), old.max(size));
        }
        self.touch();
        Ok(())
    }
}

fn mark_dirty(dirty: &mut Option<(u64, u64)>, lo: u64, hi: u64) {
    if lo >= hi {
        return;
    }
    *dirty = Some(match *dirty {
        Some((a, b)) => (a.min(lo), b.max(hi)),
        None => (lo, hi),
    });
}

/// The filesystem fuser serves; the state is shared with [`LazyFs`].
struct LazyFilesystem {
    state: Arc<Mutex<State>>,
}

impl LazyFilesystem {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn perm(mode: u32, umask: u32) -> u16 {
    // The mask keeps the value within 12 bits: the cast cannot truncate.
    ((mode & !umask) & 0o7777) as u16
}

impl Filesystem for LazyFilesystem {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let state = self.state();
        match state.lookup(parent.0, name).and_then(|ino| state.attr(ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        let result = (|| {
            if let Some(size) = size {
                state.file(ino.0)?.resize(size)?;
            }
            let node = state.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
            if let Some(mode) = mode {
                node.perm = perm(mode, 0);
            }
            if let Some(uid) = uid {
                node.uid = uid;
            }
            if let Some(gid) = gid {
                node.gid = gid;
            }
            let resolve = |t: TimeOrNow| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
            if let Some(t) = atime {
                node.atime = resolve(t);
            }
            if let Some(t) = mtime {
                node.mtime = resolve(t);
            }
            node.ctime = SystemTime::now();
            Ok(node.attr(ino.0))
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Regular files only: nothing under test makes devices or pipes.
        if mode & libc_s_ifmt() != libc_s_ifreg() {
            reply.error(Errno::EPERM);
            return;
        }
        match self
            .state()
            .create(parent.0, name, Node::file(perm(mode, umask), req))
        {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let node = Node::new(
            Kind::Dir {
                entries: BTreeMap::new(),
                parent: parent.0,
            },
            perm(mode, umask),
            req.uid(),
            req.gid(),
        );
        match self.state().create(parent.0, name, node) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state().remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state().remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self
            .state()
            .rename(parent.0, name, newparent.0, newname, flags)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.state();
        let result = state.file(ino.0).and_then(|node| {
            if flags.0 & libc_o_trunc() != 0 {
                node.resize(0)?;
            }
            Ok(())
        });
        match result {
            // No FOPEN_KEEP_CACHE: the kernel drops its pages of the file.
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut state = self.state();
        match state.file(ino.0) {
            Ok(Node {
                kind: Kind::File { data, .. },
                ..
            }) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Ok(_) => reply.error(Errno::EISDIR),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        bytes: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        let result = state.file(ino.0).and_then(|node| {
            let start = usize::try_from(offset).map_err(|_| Errno::EFBIG)?;
            let end = start.checked_add(bytes.len()).ok_or(Errno::EFBIG)?;
            let written = u32::try_from(bytes.len()).map_err(|_| Errno::EINVAL)?;
            if let Kind::File { data, dirty, .. } = &mut node.kind {
                if data.len() < end {
                    // The gap between the old end and `start` is part of the change.
                    mark_dirty(dirty, data.len() as u64, start as u64);
                    data.resize(end, 0);
                }
                data[start..end].copy_from_slice(bytes);
                mark_dirty(dirty, start as u64, end as u64);
            }
            node.touch();
            Ok(written)
        });
        match result {
            Ok(written) => reply.written(written),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not fsync: nothing becomes durable here.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        match state.file(ino.0) {
            Ok(Node {
                kind:
                    Kind::File {
                        data,
                        durable,
                        dirty,
                    },
                ..
            }) => {
                durable.resize(data.len(), 0);
                if let Some((lo, hi)) = dirty.take() {
                    let lo = usize::try_from(lo).unwrap_or(usize::MAX).min(data.len());
                    let hi = usize::try_from(hi).unwrap_or(usize::MAX).min(data.len());
                    durable[lo..hi].copy_from_slice(&data[lo..hi]);
                }
                reply.ok();
            }
            Ok(_) => reply.error(Errno::EISDIR),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().dir_entries(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.state();
        let (entries, parent) = match state.nodes.get(&ino.0).map(|n| &n.kind) {
            Some(Kind::Dir { entries, parent }) => (entries, *parent),
            Some(Kind::File { .. }) => return reply.error(Errno::ENOTDIR),
            None => return reply.error(Errno::ENOENT),
        };
        let mut listing: Vec<(u64, FileType, OsString)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (parent, FileType::Directory, "..".into()),
        ];
        for (name, child) in entries {
            let kind = match state.nodes.get(child).map(|n| &n.kind) {
                Some(Kind::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            listing.push((*child, kind, name.clone()));
        }
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (index, (child, kind, name)) in listing.into_iter().enumerate().skip(skip) {
            if reply.add(INodeNo(child), index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Names are durable at once (see the module docs).
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Plenty of room: 1 TiB of 4 KiB blocks.
        let blocks = 1 << 28;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Only root uses it; existence is the only check.
        match self.state().attr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .state()
            .create(parent.0, name, Node::file(perm(mode, umask), req))
        {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Plain allocation only (mode 0): it extends the file with zeros.
        if mode != 0 {
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        let mut state = self.state();
        let result = state.file(ino.0).and_then(|node| {
            let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
            if end > node.attr(ino.0).size {
                node.resize(end)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

// The few libc constants needed, without a libc dependency of our own.
const fn libc_s_ifmt() -> u32 {
    0o170000
}
const fn libc_s_ifreg() -> u32 {
    0o100000
}
const fn libc_o_trunc() -> i32 {
    0o1000
}
