//! The writer's WAL written a commit at a time (see docs/design.md, Store).
//! SQLite writes each WAL frame as two `pwrite`s, its
//! 24-byte header and then its page, and since a frame is 4,120 bytes each
//! page straddles two of the kernel's pages: a commit of 20 pages cost 40
//! system calls and ~60 trips through the file system's buffered-write
//! path, a third of the store thread's time. This VFS is SQLite's own unix
//! VFS, but for the WAL file of the connections opened with it: writes
//! that append to what this connection wrote last are gathered, and
//! written when the commit's last frame is (one `pwrite` per 124 KiB).
//!
//! Why this is safe. Frames are seen by others only once the commit
//! publishes the WAL index's header, which SQLite does after it wrote the
//! commit frame: the one whose header carries the database size
//! (`nTruncate` ≠ 0), so its page is the commit's last write, and every
//! gathered byte is written (or its error returned, failing the commit)
//! before `xWrite` of that page returns — however its header was written
//! (see `WalFile::write`). Every other write (one not
//! appending, such as SQLite rewriting a frame in place or its checksums)
//! first writes what was gathered and then goes through at once, and so
//! does every other call on the file (a read, a size, a sync) but a
//! close, which drops it: no commit's, see `wal_close`. A crash loses only
//! what was never published.
//!
//! It assumes `synchronous = NORMAL`, which the writer's connection always
//! sets (`store::configure`): with `FULL` on a file that is not
//! power-safe, SQLite pads a commit to a sector boundary and may split a
//! padding frame's page around a sync, and such a piece would be gathered
//! past the commit. The test
//! `store::tests::wal_vfs` checks this against the bundled SQLite.

use rusqlite::ffi;
use std::ffi::{CStr, c_int, c_void};

/// The name connections open the store with (`Connection::open_with_flags_and_vfs`).
pub const NAME: &CStr = c"grove-wal";

/// SQLite's frame header (`WAL_FRAME_HDRSIZE`).
const FRAME_HEADER: c_int = 24;

/// Each `pwrite` writes at most this much: SQLite's unix VFS masks a
/// write's length to 17 bits (`seekAndWriteFd`), so a longer one would be
/// cut.
const CHUNK: usize = 0x1ffff & !0xfff;

/// At most this much is gathered (~1 MiB, 247 frames of 4 KiB pages) before
/// it is written, commit or not.
const GATHERED_AT_MOST: usize = CHUNK * 8;

/// Registers the VFS once per process (not as the default), over the
/// default one; whether it is there to be used. Called from
/// `store::process_settings`, after the settings SQLite takes only before
/// it is initialized (finding a VFS initializes it).
pub fn register() -> bool {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REGISTERED.get_or_init(|| {
        // SAFETY: `sqlite3_vfs_find(NULL)` returns the default VFS, which
        // lives as long as the process; ours is leaked, so it does too.
        unsafe {
            let real = ffi::sqlite3_vfs_find(std::ptr::null());
            if real.is_null() || (*real).xOpen.is_none() {
                return false;
            }
            let ours = Box::leak(Box::new(*real));
            ours.szOsFile = (HEADER + (*real).szOsFile as usize) as c_int;
            ours.pNext = std::ptr::null_mut();
            ours.zName = NAME.as_ptr();
            ours.pAppData = real.cast();
            ours.xOpen = Some(open);
            ffi::sqlite3_vfs_register(ours, 0) == ffi::SQLITE_OK
        }
    })
}

/// A WAL file opened through this VFS: SQLite's file first (its methods
/// ours), then the unix VFS's own file at `HEADER`.
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    /// Gathered bytes, to be written at `at`.
    gathered: Vec<u8>,
    at: i64,
    /// Where this connection's last write ended: a write there appends.
    end: i64,
    /// The commit frame's header was gathered: its page ends the commit.
    commit_page_next: bool,
}

/// Where the unix VFS's file starts in ours (8-byte aligned).
const HEADER: usize = std::mem::size_of::<WalFile>().next_multiple_of(8);

fn real_vfs(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    // SAFETY: set by `register` to the default VFS.
    unsafe { (*vfs).pAppData.cast() }
}

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite gives `szOsFile` bytes at `file`, as many as the
    // unix VFS's file needs past `HEADER`; a file that is not a WAL is
    // the unix VFS's own, at `file`, with its own methods.
    unsafe {
        let real = real_vfs(vfs);
        let real_open = (*real).xOpen.expect("checked at register");
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            return real_open(real, name, file, flags, out_flags);
        }
        let inner = file.cast::<u8>().add(HEADER).cast::<ffi::sqlite3_file>();
        let rc = real_open(real, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK || (*inner).pMethods.is_null() {
            (*file).pMethods = std::ptr::null();
            return rc;
        }
        file.cast::<WalFile>().write(WalFile {
            base: ffi::sqlite3_file {
                pMethods: &WAL_METHODS,
            },
            real: inner,
            gathered: Vec::new(),
            at: 0,
            end: -1,
            commit_page_next: false,
        });
        rc
    }
}

/// # Safety
/// `file` was opened by [`open`] as a WAL.
unsafe fn wal<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    unsafe { &mut *file.cast::<WalFile>() }
}

impl WalFile {
    fn methods(&self) -> &ffi::sqlite3_io_methods {
        // SAFETY: the unix VFS's file is open while ours is.
        unsafe { &*(*self.real).pMethods }
    }

    /// Writes what was gathered, in chunks: SQLite's result. Whether the
    /// next page ends a commit is kept: this is also called between a
    /// commit frame's header and its page (the gathering bound, below).
    ///
    /// What a failed write did not write stays gathered, to be written by
    /// the next call (or to fail it, up to the commit's page, so failing
    /// the commit). Dropped, it was lost for good though SQLite had been
    /// told it was written: a failure reported through a read (a full
    /// disk) fails only the statement that read, the transaction goes on,
    /// and its commit published frames that were never in the file.
    fn write_gathered(&mut self) -> c_int {
        let write = self.methods().xWrite.expect("a file writes");
        let mut written = 0;
        let mut rc = ffi::SQLITE_OK;
        for chunk in self.gathered.chunks(CHUNK) {
            let at = self.at + written as i64;
            // SAFETY: `chunk` is readable for its length.
            rc = unsafe { write(self.real, chunk.as_ptr().cast(), chunk.len() as c_int, at) };
            if rc != ffi::SQLITE_OK {
                break;
            }
            written += chunk.len();
        }
        self.gathered.drain(..written);
        self.at += written as i64;
        rc
    }

    fn write(&mut self, data: &[u8], offset: i64) -> c_int {
        // Whether this page ends a commit is decided first, whichever way
        // its header was written: a commit frame's header goes through at
        // once when it does not append (the first frame after this
        // connection opened, after a rolled-back spill, after SQLite
        // rewrote checksums), and writing what was gathered at the
        // gathering bound may fall between the header and its page. Both
        // once left the commit's page gathered after the commit returned
        // (see docs/design.md, Store).
        let is_header = data.len() == FRAME_HEADER as usize;
        let ends_commit = !is_header && self.commit_page_next;
        // A commit frame's header: its database size is set.
        self.commit_page_next = is_header && data[4..8] != [0; 4];
        if offset != self.end {
            // Not appending (a frame rewritten in place, its checksums, a
            // new WAL header): what was gathered first, then this at once.
            let rc = self.write_gathered();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            self.end = offset + data.len() as i64;
            let write = self.methods().xWrite.expect("a file writes");
            // SAFETY: `data` is readable for its length.
            return unsafe { write(self.real, data.as_ptr().cast(), data.len() as c_int, offset) };
        }
        if self.gathered.len() + data.len() > GATHERED_AT_MOST {
            let rc = self.write_gathered();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        self.end = offset + data.len() as i64;
        if self.gathered.is_empty() {
            self.at = offset;
        }
        self.gathered.extend_from_slice(data);
        if ends_commit {
            let rc = self.write_gathered();
            if rc != ffi::SQLITE_OK {
                // The commit fails and SQLite rolls it back: what it did
                // not write is no one's (see `wal_close`).
                self.gathered.clear();
            }
            return rc;
        }
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn wal_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite passes `amount` readable bytes at `data`.
    unsafe {
        let data = std::slice::from_raw_parts(data.cast::<u8>(), amount.max(0) as usize);
        wal(file).write(data, offset)
    }
}

/// Forwards a call to the unix VFS's file, after writing what was gathered
/// (a read, a size or a sync must see every byte written).
macro_rules! forwarded {
    ($name:ident, $method:ident, flush, ($($arg:ident: $ty:ty),*)) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            // SAFETY: `file` is one of ours, its unix file open.
            unsafe {
                let w = wal(file);
                let rc = w.write_gathered();
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
                (w.methods().$method.expect("the unix VFS has it"))(w.real $(, $arg)*)
            }
        }
    };
    ($name:ident, $method:ident, ($($arg:ident: $ty:ty),*)) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            // SAFETY: `file` is one of ours, its unix file open.
            unsafe {
                let w = wal(file);
                (w.methods().$method.expect("the unix VFS has it"))(w.real $(, $arg)*)
            }
        }
    };
}

forwarded!(wal_read, xRead, flush, (data: *mut c_void, amount: c_int, offset: i64));
forwarded!(wal_truncate, xTruncate, flush, (size: i64));
forwarded!(wal_sync, xSync, flush, (flags: c_int));
forwarded!(wal_file_size, xFileSize, flush, (size: *mut i64));
forwarded!(wal_file_control, xFileControl, flush, (op: c_int, arg: *mut c_void));
forwarded!(wal_lock, xLock, (level: c_int));
forwarded!(wal_unlock, xUnlock, (level: c_int));
forwarded!(wal_check_reserved_lock, xCheckReservedLock, (out: *mut c_int));
forwarded!(wal_sector_size, xSectorSize, ());
forwarded!(wal_device_characteristics, xDeviceCharacteristics, ());

/// Closes without writing what is still gathered: every commit's bytes
/// were written before it returned, so what is left belongs to a write
/// transaction that rolled back (or failed), past the WAL's last frame. It
/// is no one's to write, and written late (a member closing its store
/// after another became primary) it could land on that one's frames.
unsafe extern "C" fn wal_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: `file` is one of ours: its fields dropped and the unix file
    // closed; SQLite does not use it after.
    unsafe {
        let w = wal(file);
        let close = w.methods().xClose.expect("a file closes");
        let real = w.real;
        std::ptr::drop_in_place(file.cast::<WalFile>());
        close(real)
    }
}

/// Version 1: SQLite asks a WAL file for no shared memory or mapping.
static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(wal_close),
    xRead: Some(wal_read),
    xWrite: Some(wal_write),
    xTruncate: Some(wal_truncate),
    xSync: Some(wal_sync),
    xFileSize: Some(wal_file_size),
    xLock: Some(wal_lock),
    xUnlock: Some(wal_unlock),
    xCheckReservedLock: Some(wal_check_reserved_lock),
    xFileControl: Some(wal_file_control),
    xSectorSize: Some(wal_sector_size),
    xDeviceCharacteristics: Some(wal_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};
