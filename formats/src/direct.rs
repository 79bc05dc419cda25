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
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    cap: usize,
}

// The buffer owns its allocation outright.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `cap` bytes (rounded up to `ALIGN`), none of them filled yet.
    fn new(cap: usize) -> AlignedBuf {
        let cap = cap.max(1).div_ceil(ALIGN) * ALIGN;
        let layout = Self::layout(cap);
        // Zeroed once, so every byte is initialised and reads may fill any part of it; the
        // buffers are reused, so that is paid once per buffer.
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(ptr) else { std::alloc::handle_alloc_error(layout) };
        AlignedBuf { ptr, len: 0, cap }
    }

    fn layout(cap: usize) -> Layout {
        // A multiple of ALIGN far below isize::MAX: always a valid layout.
        Layout::from_size_align(cap, ALIGN).unwrap_or_else(|_| Layout::new::<u8>())
    }

    fn len(&self) -> usize {
        self.len
    }

    fn capacity(&self) -> usize {
        self.cap
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    /// The filled bytes.
    fn as_slice(&self) -> &[u8] {
        // SAFETY: the whole buffer is initialised (zeroed in `new`); `len <= cap`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Appends as much of `data` as fits; how much that was.
    fn extend(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.cap - self.len);
        // SAFETY: `n` bytes fit after `len`; the source is a different allocation.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(self.len), n) };
        self.len += n;
        n
    }

    /// Fills the buffer from `file` at `offset` (a multiple of `ALIGN`) with `want` bytes (at most
    /// its capacity), fewer at the file's end; the bytes read.
    fn fill_from(&mut self, file: &File, offset: u64, want: usize) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = want.min(self.cap);
        self.len = 0;
        // SAFETY: the whole buffer is initialised (zeroed in `new`) and owned by `self`.
        let all = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) };
        while self.len < want {
            let n = match file.read_at(&mut all[self.len..want], offset + self.len as u64) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // The file system turned down a direct read: read it the ordinary way.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput && set_direct(file, false) => continue,
                Err(e) => return Err(e),
            };
            self.len += n;
            // A short read is the file's end (a direct read cannot go on from an unaligned offset).
            if n == 0 || !self.len.is_multiple_of(ALIGN) {
                break;
            }
        }
        Ok(self.len)
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
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

/// A range to read: the file, from where, how many bytes, into which buffer, and where to send it.
type ReadJob = (Arc<File>, u64, usize, AlignedBuf, SyncSender<std::io::Result<AlignedBuf>>);

/// The thread that reads ahead for every [`PrefetchReader`], started on first use. One thread is
/// enough: it mostly waits on the device, and the readers ask for their next range long before
/// they need it.
fn read_ahead_thread() -> std::io::Result<SyncSender<ReadJob>> {
    static JOBS: std::sync::OnceLock<std::sync::Mutex<Option<SyncSender<ReadJob>>>> = std::sync::OnceLock::new();
    let slot = JOBS.get_or_init(Default::default);
    let mut jobs = slot.lock().map_err(|_| std::io::Error::other("the read-ahead thread's lock is poisoned"))?;
    if let Some(j) = jobs.as_ref() {
        return Ok(j.clone());
    }
    // Unbounded in effect: each reader has at most one range on its way.
    let (send, queue) = sync_channel::<ReadJob>(1 << 16);
    std::thread::Builder::new().name("riffle-read-ahead".into()).spawn(move || {
        for (file, offset, want, mut buf, reply) in queue {
            let result = buf.fill_from(&file, offset, want).map(|_| buf);
            // A reader dropped meanwhile no longer wants its range.
            let _ = reply.send(result);
        }
    })?;
    *jobs = Some(send.clone());
    Ok(send)
}

/// Reads given byte ranges of a file (a spill file's frames), in order. A file written past the page
/// cache is read past it too, with `O_DIRECT` (no page-cache pages to fill), by the read-ahead thread:
/// the next range is on its way while the caller works on this one, so the caller seldom waits on
/// the device. One buffer, as big as the biggest range, serves both: the next range is asked for
/// once the caller is done with this one. A file in the page cache is read straight from there (a
/// direct read would first wait for the kernel to write the cached pages out).
pub struct PrefetchReader {
    file: Arc<File>,
    /// Reading from the page cache: no read-ahead.
    cached: bool,
    ranges: Vec<std::ops::Range<u64>>,
    /// The range `with_next` hands out next.
    next: usize,
    /// Range `next`, on its way (direct reads).
    pending: Option<Receiver<std::io::Result<AlignedBuf>>>,
    /// The range read from the page cache.
    cached_bytes: Vec<u8>,
}

impl PrefetchReader {
    /// Reads `ranges` of `file`, with `O_DIRECT` if `direct` (and the file system allows it).
    pub fn new(file: File, ranges: Vec<std::ops::Range<u64>>, direct: bool) -> std::io::Result<PrefetchReader> {
        let direct = direct && set_direct(&file, true);
        let biggest = ranges.iter().map(|r| (r.end - r.start) as usize).max().unwrap_or(0);
        let mut reader =
            PrefetchReader { file: Arc::new(file), cached: !direct, ranges, next: 0, pending: None, cached_bytes: Vec::new() };
        if direct && !reader.ranges.is_empty() {
            reader.request(AlignedBuf::new(Self::memory(biggest, true)))?;
        }
        Ok(reader)
    }

    /// Memory a reader whose biggest range is `biggest` bytes holds.
    pub fn memory(biggest: usize, direct: bool) -> usize {
        // An aligned read of a range starts up to a block before it and ends up to a block after.
        if direct {
            biggest.div_ceil(ALIGN) * ALIGN + 2 * ALIGN
        } else {
            biggest
        }
    }

    /// Asks for range `next` into `buf`.
    fn request(&mut self, buf: AlignedBuf) -> std::io::Result<()> {
        let r = &self.ranges[self.next];
        let from = r.start / ALIGN as u64 * ALIGN as u64;
        let want = (r.end - from).div_ceil(ALIGN as u64) * ALIGN as u64;
        let (reply, pending) = sync_channel(1);
        read_ahead_thread()?.send((self.file.clone(), from, want as usize, buf, reply)).map_err(|_| Device::stopped())?;
        self.pending = Some(pending);
        Ok(())
    }

    /// Calls `use_range` with the next range's bytes and returns what it returns; `None` after the
    /// last range; an `UnexpectedEof` error if the file ends inside the range.
    pub fn with_next<R>(&mut self, use_range: impl FnOnce(&[u8]) -> R) -> std::io::Result<Option<R>> {
        let Some(r) = self.ranges.get(self.next).cloned() else { return Ok(None) };
        let early = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file ends early");
        self.next += 1;
        if self.cached {
            use std::os::unix::fs::FileExt;
            self.cached_bytes.resize((r.end - r.start) as usize, 0);
            self.file.read_exact_at(&mut self.cached_bytes, r.start).map_err(|e| if e.kind() == std::io::ErrorKind::UnexpectedEof { early() } else { e })?;
            return Ok(Some(use_range(&self.cached_bytes)));
        }
        let pending = self.pending.take().ok_or_else(Device::stopped)?;
        let buf = pending.recv().map_err(|_| std::io::Error::other("the read-ahead thread stopped"))??;
        let from = r.start / ALIGN as u64 * ALIGN as u64;
        let (lo, hi) = ((r.start - from) as usize, (r.end - from) as usize);
        if buf.len() < hi {
            return Err(early());
        }
        let out = use_range(&buf.as_slice()[lo..hi]);
        if self.next < self.ranges.len() {
            self.request(buf)?;
        }
        Ok(Some(out))
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
    fn prefetched_ranges_read_back_and_a_short_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let size = 3 * ALIGN + 1234;
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
        let path = dir.path().join("r");
        std::fs::write(&path, &data).unwrap();
        // Ranges that start and end inside blocks, span several, and end at the file's end.
        let cuts = [0usize, 5, 4000, 4096, 9000, 3 * ALIGN, size];
        let ranges: Vec<std::ops::Range<u64>> = cuts.windows(2).map(|w| w[0] as u64..w[1] as u64).collect();
        for direct in [true, false] {
            let mut r = PrefetchReader::new(File::open(&path).unwrap(), ranges.clone(), direct).unwrap();
            for w in cuts.windows(2) {
                let got = r.with_next(|b| b.to_vec()).unwrap().unwrap();
                assert_eq!(got, data[w[0]..w[1]], "direct {direct}");
            }
            assert!(r.with_next(|b| b.len()).unwrap().is_none());
            let past = vec![0..10, size as u64 - 10..size as u64 + 1];
            let mut r = PrefetchReader::new(File::open(&path).unwrap(), past, direct).unwrap();
            assert_eq!(r.with_next(|b| b.to_vec()).unwrap().unwrap(), data[..10]);
            let err = r.with_next(|b| b.len()).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "direct {direct}");
        }
    }
}
