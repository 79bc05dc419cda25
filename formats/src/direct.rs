//! Big files written past the page cache.
//!
//! Writing through the page cache makes the kernel hand out a fresh page for every 4 KiB written.
//! On a virtual machine whose free memory goes back to the host (this one: virtio-balloon free page
//! reporting), each fresh page costs a trip to the host: `dd` into a new file runs at 0.4 GB/s, all
//! of it system time, against 1.0 GB/s with `O_DIRECT` and next to no CPU. A sort writes its input's
//! size to disk twice (spill and result), so that is seconds of a core per GB.
//!
//! [`DirectWriter`] gathers bytes in aligned chunks of its own and hands full chunks to a thread of
//! its own that writes them with `O_DIRECT`, so the caller goes on computing while the device works.
//! A file smaller than one chunk never goes direct (no thread, no waiting on the device); neither
//! does the unaligned tail of a big one. Where the file system refuses direct I/O (tmpfs), or on
//! other systems, the chunks are written the ordinary way.

use std::alloc::Layout;
use std::fs::File;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

/// Alignment of direct I/O buffers, offsets and lengths (covers 512-byte and 4 KiB sectors).
pub const ALIGN: usize = 4096;

/// Bytes gathered before a chunk goes to the device.
const CHUNK: usize = 4 << 20;

/// The first chunk's size; it doubles while the file grows.
const FIRST_CHUNK: usize = 64 << 10;

/// Chunks on their way to the device at once, beside the one being filled.
const IN_FLIGHT: usize = 2;

/// A heap buffer whose start is `ALIGN`-aligned, filled from the front.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    cap: usize,
}

// The buffer owns its allocation outright.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `cap` bytes (rounded up to `ALIGN`), none of them filled yet.
    pub fn new(cap: usize) -> AlignedBuf {
        let cap = cap.max(1).div_ceil(ALIGN) * ALIGN;
        let layout = Self::layout(cap);
        // Zeroed once, so every byte is initialised and reads may fill any part of it; the
        // buffers are reused, so that is paid once per buffer.
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(ptr) else { std::alloc::handle_alloc_error(layout) };
        AlignedBuf { ptr, len: 0, cap }
    }

    /// A buffer of no bytes (allocates nothing).
    fn empty() -> AlignedBuf {
        AlignedBuf { ptr: std::ptr::NonNull::dangling(), len: 0, cap: 0 }
    }

    fn layout(cap: usize) -> Layout {
        // A multiple of ALIGN far below isize::MAX: always a valid layout.
        Layout::from_size_align(cap, ALIGN).unwrap_or_else(|_| Layout::new::<u8>())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The filled bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the whole buffer is initialised (zeroed in `new`); `len <= cap`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Fills the buffer from `file` at `offset` (a multiple of `ALIGN`) up to its capacity or the
    /// file's end; the bytes read.
    fn fill_from(&mut self, file: &File, offset: u64) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        self.len = 0;
        // SAFETY: the whole buffer is initialised (zeroed in `new`) and owned by `self`.
        let all = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) };
        while self.len < self.cap {
            let n = match file.read_at(&mut all[self.len..], offset + self.len as u64) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // The file system turned down a direct read: read it the ordinary way.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput && set_direct(file, false) => continue,
                Err(e) => return Err(e),
            };
            self.len += n;
            // A short read is the file's end (a direct read cannot go on from an unaligned offset).
            if n == 0 || self.len % ALIGN != 0 {
                break;
            }
        }
        Ok(self.len)
    }

    /// Appends as much of `data` as fits; how much that was.
    pub fn extend(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.cap - self.len);
        // SAFETY: `n` bytes fit after `len`; the source is a different allocation.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(self.len), n) };
        self.len += n;
        n
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cap == 0 {
            return;
        }
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) };
    }
}

/// Turns `O_DIRECT` on or off for `file`; whether the file is now in the asked mode.
#[cfg(target_os = "linux")]
pub fn set_direct(file: &File, on: bool) -> bool {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with plain integer arguments.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return false;
        }
        let flags = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
        libc::fcntl(fd, libc::F_SETFL, flags) == 0
    }
}

#[cfg(not(target_os = "linux"))]
pub fn set_direct(_file: &File, on: bool) -> bool {
    !on
}

/// Writes `data` at `offset`; a direct write the file system turns down (`EINVAL`) is retried the
/// ordinary way, and the file stays ordinary.
fn write_at(file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    match file.write_all_at(data, offset) {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput && set_direct(file, false) => file.write_all_at(data, offset),
        other => other,
    }
}

/// The thread writing full chunks, and the way back for emptied ones.
struct Device {
    jobs: Option<SyncSender<(AlignedBuf, u64)>>,
    done: Receiver<std::io::Result<AlignedBuf>>,
    thread: Option<std::thread::JoinHandle<()>>,
    in_flight: usize,
    /// Emptied chunks to fill again.
    spare: Vec<AlignedBuf>,
    chunk_bytes: usize,
}

impl Device {
    fn start(file: Arc<File>, chunk_bytes: usize) -> std::io::Result<Device> {
        let (jobs, queue) = sync_channel::<(AlignedBuf, u64)>(IN_FLIGHT);
        let (report, done) = sync_channel(IN_FLIGHT + 1);
        let thread = std::thread::Builder::new().name("riffle-file-writer".into()).spawn(move || {
            for (mut chunk, offset) in queue {
                let result = write_at(&file, chunk.as_slice(), offset).map(|()| {
                    chunk.clear();
                    chunk
                });
                if report.send(result).is_err() {
                    break;
                }
            }
        })?;
        Ok(Device { jobs: Some(jobs), done, thread: Some(thread), in_flight: 0, spare: Vec::new(), chunk_bytes })
    }

    fn stopped() -> std::io::Error {
        std::io::Error::other("the file writer thread stopped")
    }

    /// Waits for the oldest chunk on its way; its buffer becomes spare.
    fn wait_one(&mut self) -> std::io::Result<()> {
        let chunk = self.done.recv().map_err(|_| Self::stopped())??;
        self.in_flight -= 1;
        self.spare.push(chunk);
        Ok(())
    }

    fn send(&mut self, chunk: AlignedBuf, offset: u64) -> std::io::Result<()> {
        let jobs = self.jobs.as_ref().ok_or_else(Self::stopped)?;
        jobs.send((chunk, offset)).map_err(|_| Self::stopped())?;
        self.in_flight += 1;
        Ok(())
    }

    /// An empty chunk to fill: a spare one, a new one while few are on their way, or the next to
    /// come back (the device is the slower side: wait for it).
    fn empty_chunk(&mut self) -> std::io::Result<AlignedBuf> {
        if let Some(c) = self.spare.pop() {
            return Ok(c);
        }
        if self.in_flight < IN_FLIGHT {
            return Ok(AlignedBuf::new(self.chunk_bytes));
        }
        self.wait_one()?;
        self.spare.pop().ok_or_else(Self::stopped)
    }

    /// Waits for every chunk on its way and stops the thread.
    fn finish(&mut self) -> std::io::Result<()> {
        let mut result = Ok(());
        while self.in_flight > 0 {
            if let Err(e) = self.wait_one() {
                result = result.and(Err(e));
                break;
            }
        }
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        result
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A file writer for big outputs (see the module documentation): a `Write` whose bytes reach the
/// file in order; `finish` returns the file once all of them are written.
pub struct DirectWriter {
    file: Arc<File>,
    chunk: AlignedBuf,
    /// Where in the file `chunk` starts.
    offset: u64,
    /// Started with the first full chunk, if the file takes direct I/O.
    device: Option<Device>,
    /// The file refused `O_DIRECT`: chunks are written here, the ordinary way.
    ordinary: bool,
    /// Bytes per chunk: `chunk` starts small and doubles up to this, so a small file costs little.
    chunk_bytes: usize,
}

impl DirectWriter {
    /// Writes into `file` from its start (the file is expected empty).
    pub fn new(file: File) -> DirectWriter {
        DirectWriter::with_chunk(file, CHUNK)
    }

    /// Like `new`, gathering `chunk_bytes` (rounded up to `ALIGN`) per write; it holds three chunks
    /// at most.
    pub fn with_chunk(file: File, chunk_bytes: usize) -> DirectWriter {
        let chunk_bytes = chunk_bytes.max(1).div_ceil(ALIGN) * ALIGN;
        let first = AlignedBuf::new(chunk_bytes.min(FIRST_CHUNK));
        DirectWriter { file: Arc::new(file), chunk: first, offset: 0, device: None, ordinary: false, chunk_bytes }
    }

    /// Whether the file's bytes went past the page cache (all but the unaligned tail).
    pub fn went_direct(&self) -> bool {
        self.device.is_some()
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.offset + self.chunk.len() as u64
    }

    /// Sends the full chunk on and starts the next.
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.device.is_none() && !self.ordinary {
            if set_direct(&self.file, true) {
                self.device = Some(Device::start(self.file.clone(), self.chunk_bytes)?);
            } else {
                self.ordinary = true;
            }
        }
        let len = self.chunk.len() as u64;
        match self.device.as_mut() {
            Some(device) => {
                let next = device.empty_chunk()?;
                let full = std::mem::replace(&mut self.chunk, next);
                device.send(full, self.offset)?;
            }
            None => {
                write_at(&self.file, self.chunk.as_slice(), self.offset)?;
                self.chunk.clear();
            }
        }
        self.offset += len;
        Ok(())
    }

    /// Writes what is left and returns the file (positioned at its end); every byte is written but
    /// not yet synced.
    pub fn finish(self) -> std::io::Result<File> {
        let DirectWriter { file, chunk, offset, device, .. } = self;
        let direct = match device {
            // Joins the thread, which lets go of the file.
            Some(mut device) => device.finish().map(|()| true)?,
            None => false,
        };
        let tail = chunk.as_slice();
        // The whole sectors of the tail still go direct; the last partial one cannot.
        let whole = if direct { tail.len() / ALIGN * ALIGN } else { 0 };
        if whole > 0 {
            write_at(&file, &tail[..whole], offset)?;
        }
        if direct {
            set_direct(&file, false);
        }
        write_at(&file, &tail[whole..], offset + whole as u64)?;
        let mut file = Arc::try_unwrap(file).map_err(|_| std::io::Error::other("the file writer thread still holds the file"))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset + tail.len() as u64))?;
        Ok(file)
    }
}

impl Write for DirectWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let n = self.chunk.extend(data);
        if self.chunk.len() == self.chunk.capacity() {
            if self.chunk.capacity() < self.chunk_bytes {
                let mut bigger = AlignedBuf::new((2 * self.chunk.capacity()).min(self.chunk_bytes));
                bigger.extend(self.chunk.as_slice());
                self.chunk = bigger;
            } else {
                self.flush_chunk()?;
            }
        }
        Ok(n)
    }

    /// Bytes reach the file in whole chunks (and at `finish`); flushing keeps gathering.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A chunk to read: the file, where, into which buffer, and where to send it filled.
type ReadJob = (Arc<File>, u64, AlignedBuf, SyncSender<std::io::Result<AlignedBuf>>);

/// The thread that reads ahead for every [`PrefetchReader`], started on first use. One thread is
/// enough: it mostly waits on the device, and the readers ask for chunks long before they need them.
fn read_ahead_thread() -> std::io::Result<SyncSender<ReadJob>> {
    static JOBS: std::sync::OnceLock<std::sync::Mutex<Option<SyncSender<ReadJob>>>> = std::sync::OnceLock::new();
    let slot = JOBS.get_or_init(Default::default);
    let mut jobs = slot.lock().map_err(|_| std::io::Error::other("the read-ahead thread's lock is poisoned"))?;
    if let Some(j) = jobs.as_ref() {
        return Ok(j.clone());
    }
    // Unbounded in effect: each reader has at most one chunk on its way.
    let (send, queue) = sync_channel::<ReadJob>(1 << 16);
    std::thread::Builder::new().name("riffle-read-ahead".into()).spawn(move || {
        for (file, offset, mut chunk, reply) in queue {
            let result = chunk.fill_from(&file, offset).map(|_| chunk);
            // A reader dropped meanwhile no longer wants its chunk.
            let _ = reply.send(result);
        }
    })?;
    *jobs = Some(send.clone());
    Ok(send)
}

/// Reads a file from its start. A file written past the page cache is read past it too, in aligned
/// chunks with `O_DIRECT` (no page-cache pages to fill), the next chunk always on its way so the
/// reader seldom waits on the device; it holds two chunks. A file in the page cache is read straight
/// from there (a direct read would first wait for the kernel to write the cached pages out).
pub struct PrefetchReader {
    file: Arc<File>,
    /// Reading from the page cache: no chunks, no read-ahead.
    cached: bool,
    chunk: AlignedBuf,
    /// Bytes of `chunk` already handed out.
    pos: usize,
    /// The chunk after `chunk`, on its way; `None` once the file's last chunk is `chunk`.
    next: Option<std::sync::mpsc::Receiver<std::io::Result<AlignedBuf>>>,
    /// Where in the file the chunk after `next` starts.
    offset: u64,
    /// Bytes that straddle chunks, or read from the page cache, copied together.
    joined: Vec<u8>,
}

impl PrefetchReader {
    /// Reads `file` (from its start), in chunks of `chunk_bytes` (rounded up to `ALIGN`) if `direct`.
    pub fn new(file: File, chunk_bytes: usize, direct: bool) -> std::io::Result<PrefetchReader> {
        let direct = direct && set_direct(&file, true);
        let mut reader =
            PrefetchReader { file: Arc::new(file), cached: !direct, chunk: AlignedBuf::empty(), pos: 0, next: None, offset: 0, joined: Vec::new() };
        if direct {
            // No second chunk until the first turns out full: a file that fits one chunk needs one.
            reader.request(AlignedBuf::new(chunk_bytes))?;
        }
        Ok(reader)
    }

    /// Memory a reader holds beside what `read` returns, for a file of `file_bytes`.
    pub fn memory(chunk_bytes: usize, file_bytes: u64, direct: bool) -> usize {
        let chunk = chunk_bytes.max(1).div_ceil(ALIGN) * ALIGN;
        match (direct, file_bytes < chunk as u64) {
            (false, _) => 0,
            (true, true) => chunk,
            (true, false) => 2 * chunk,
        }
    }

    /// `read` from the page cache.
    fn read_cached(&mut self, n: usize) -> std::io::Result<Option<&[u8]>> {
        use std::os::unix::fs::FileExt;
        self.joined.resize(n, 0);
        let mut got = 0;
        while got < n {
            match self.file.read_at(&mut self.joined[got..], self.offset + got as u64) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file ends early")),
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.offset += n as u64;
        Ok(Some(&self.joined))
    }

    fn request(&mut self, buf: AlignedBuf) -> std::io::Result<()> {
        let (reply, next) = sync_channel(1);
        let at = self.offset;
        self.offset += buf.cap as u64;
        read_ahead_thread()?.send((self.file.clone(), at, buf, reply)).map_err(|_| Device::stopped())?;
        self.next = Some(next);
        Ok(())
    }

    /// Makes the chunk on its way current and asks for the one after; false at the file's end.
    fn advance(&mut self) -> std::io::Result<bool> {
        let Some(next) = self.next.take() else { return Ok(false) };
        let filled = next.recv().map_err(|_| std::io::Error::other("the read-ahead thread stopped"))??;
        let full = filled.len == filled.cap;
        let cap = filled.cap;
        let used = std::mem::replace(&mut self.chunk, filled);
        self.pos = 0;
        if full {
            self.request(if used.cap == cap { used } else { AlignedBuf::new(cap) })?;
        }
        Ok(!self.chunk.is_empty())
    }

    /// The next `n` bytes; `None` if the file ends right here, an `UnexpectedEof` error if it ends
    /// within them.
    pub fn read(&mut self, n: usize) -> std::io::Result<Option<&[u8]>> {
        if n == 0 {
            return Ok(Some(&[]));
        }
        if self.cached {
            return self.read_cached(n);
        }
        if self.pos == self.chunk.len && !self.advance()? {
            return Ok(None);
        }
        if self.pos + n <= self.chunk.len {
            self.pos += n;
            return Ok(Some(&self.chunk.as_slice()[self.pos - n..self.pos]));
        }
        self.joined.clear();
        while self.joined.len() < n {
            if self.pos == self.chunk.len && !self.advance()? {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file ends early"));
            }
            let take = (n - self.joined.len()).min(self.chunk.len - self.pos);
            self.joined.extend_from_slice(&self.chunk.as_slice()[self.pos..self.pos + take]);
            self.pos += take;
        }
        Ok(Some(&self.joined))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_arrives_in_order_whatever_the_size() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0usize, 1, ALIGN - 1, ALIGN, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + ALIGN + 17, 7 * CHUNK] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let path = dir.path().join(format!("f{size}"));
            let mut w = DirectWriter::new(File::create(&path).unwrap());
            // Uneven pieces, as an encoder writes them.
            for piece in data.chunks(100_003) {
                w.write_all(piece).unwrap();
            }
            assert_eq!(w.position(), size as u64);
            let mut file = w.finish().unwrap();
            file.write_all(b"!").unwrap();
            let mut want = data;
            want.push(b'!');
            assert_eq!(std::fs::read(&path).unwrap(), want, "size {size}");
        }
    }

    #[test]
    fn a_prefetched_file_reads_back_in_any_pieces() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0usize, 5, ALIGN, 3 * ALIGN + 1, (1 << 20) + 77] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
            let path = dir.path().join(format!("r{size}"));
            std::fs::write(&path, &data).unwrap();
            for (chunk, direct) in [(ALIGN, true), (3 * ALIGN, false), (3 * ALIGN, true), (1 << 20, true)] {
                let mut r = PrefetchReader::new(File::open(&path).unwrap(), chunk, direct).unwrap();
                let mut got = Vec::new();
                let mut piece = 1;
                while got.len() + piece <= size {
                    got.extend_from_slice(r.read(piece).unwrap().unwrap());
                    piece = piece * 3 % 10_007 + 1;
                }
                assert_eq!(got, data[..got.len()], "size {size}, chunk {chunk}");
                let rest = size - got.len();
                if rest > 0 {
                    // Asking for more than is left is an error, not a short read.
                    assert!(r.read(rest + 1).is_err(), "size {size}, chunk {chunk}");
                } else {
                    assert!(r.read(1).unwrap().is_none());
                }
            }
        }
    }
}
