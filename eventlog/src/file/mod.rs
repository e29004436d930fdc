//! FileLog: the embedded, single-machine event log in a local directory.
//!
//! # On-disk layout
//!
//! ```text
//! DIR/log.json                         {"format":1,"partitions":N}
//! DIR/writer.lock                      held (flock) by the one process that appends
//! DIR/p0000/00000000000000000000.seg   segments of partition 0, named by base offset
//! DIR/groups/NAME.lock                 held by the one member of consumer group NAME
//! DIR/groups/NAME.offsets              its advisory positions ("partition offset" lines)
//! ```
//!
//! Segment format: [`segment`]. A segment is rolled when it would grow past
//! `segment_bytes`; only the newest segment of a partition is ever written.
//!
//! # Durability (fsync policy)
//!
//! - `fsync=always` (default): `append` writes every record, then `fdatasync`s each segment it
//!   touched (and the directory after creating a segment) before it returns. One append call
//!   is one group commit, so appending in batches is what makes it fast.
//! - `fsync=never`: records reach the OS page cache before `append` returns. They survive a
//!   crash of ccstream, not a crash of the machine. For tests and benchmarks.
//!
//! # Recovery
//!
//! When a writer opens the log it scans the newest segment of every partition and truncates
//! it after the last whole record whose CRC matches (a torn tail of a crash). A damaged
//! record with whole records after it is not a torn tail: the writer refuses to open
//! ([`Error::Damaged`], naming the segment, byte and offset) rather than truncate records
//! that were fsynced after the damage; [`truncate_partition`] (`ccstream log truncate`) is
//! the operator's repair. Readers never truncate: to them a short record at the end of the
//! newest segment is "not written yet".
//!
//! An append that fails (a full disk, an IO error) drops the writer: the next append
//! reopens the log from what is on disk, so offsets never skip and the log works again
//! once the disk has room. Records of a failed append may be in the log already (the
//! caller retries them; downstream dedup by event id drops the repeats).
//!
//! # Retention
//!
//! After each roll, closed segments are deleted oldest first while the partition holds more
//! than `retention_bytes`, or while a segment was last written more than `retention_hours`
//! ago. The newest segment is never deleted. A consumer that seeks below what is left gets
//! [`Error::OffsetOutOfRange`].

pub mod segment;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions as FsOpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::{Delivered, Error, EventLog, LogConsumer, Offset, Partition, Poll, RecordRef, Result};
use segment::FrameError;

/// When `append` forces records to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` before `append` returns (the default).
    Always,
    /// Leave it to the OS (survives a process crash, not a machine crash).
    Never,
}

/// FileLog settings; from a URL such as `file:///var/lib/ccstream/log?fsync=never`.
#[derive(Debug, Clone)]
pub struct FileLogConfig {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// Roll a segment when it would grow past this many bytes (default 64 MiB).
    pub segment_bytes: u64,
    /// Keep at most this many bytes per partition (closed segments only; default unlimited).
    pub retention_bytes: Option<u64>,
    /// Delete closed segments last written longer ago than this (default unlimited).
    pub retention: Option<Duration>,
    /// How often an idle consumer looks for records appended by another process.
    pub poll_interval: Duration,
}

impl FileLogConfig {
    /// A log in `dir` with the defaults.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileLogConfig {
            dir: dir.into(),
            fsync: FsyncPolicy::Always,
            segment_bytes: 64 << 20,
            retention_bytes: None,
            retention: None,
            poll_interval: Duration::from_millis(20),
        }
    }

    /// Parses `file://DIR?k=v&…` or a plain path. Keys: `fsync` (`always`|`never`),
    /// `segment_bytes`, `retention_bytes`, `retention_hours`, `poll_ms`.
    pub fn from_url(url: &str) -> Result<Self> {
        let bad = |reason: String| Error::BadUrl { url: url.to_string(), reason };
        let rest = url.strip_prefix("file://").unwrap_or(url);
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(bad("no directory".into()));
        }
        let mut c = FileLogConfig::new(path);
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| bad(format!("`{kv}` is not key=value")))?;
            let num = || v.parse::<u64>().map_err(|_| bad(format!("`{k}` wants a whole number, not `{v}`")));
            match k {
                "fsync" => {
                    c.fsync = match v {
                        "always" => FsyncPolicy::Always,
                        "never" => FsyncPolicy::Never,
                        _ => return Err(bad(format!("fsync must be `always` or `never`, not `{v}`"))),
                    }
                }
                "segment_bytes" => c.segment_bytes = num()?.max(1024),
                "retention_bytes" => c.retention_bytes = Some(num()?),
                "retention_hours" => c.retention = Some(Duration::from_secs(num()? * 3600)),
                "poll_ms" => c.poll_interval = Duration::from_millis(num()?.max(1)),
                _ => return Err(bad(format!("unknown setting `{k}`"))),
            }
        }
        Ok(c)
    }
}

/// The embedded event log. Cheap to share: clones of the `Arc` it lives in share one writer.
#[derive(Debug)]
pub struct FileLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: FileLogConfig,
    url: String,
    partitions: u32,
    /// Opened on the first append, so that readers never take the writer lock.
    writer: Mutex<Option<Writer>>,
    /// Wakes this process's consumers after an append.
    appended: Notify,
    /// Per partition, where `end_offsets` last stopped scanning the newest segment (in a
    /// process that does not append), so that it reads only what was appended since.
    tails: Mutex<Vec<Option<ScanMark>>>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io { op, path: path.display().to_string(), source }
}

fn partition_dir(dir: &Path, p: Partition) -> PathBuf {
    dir.join(format!("p{p:04}"))
}

fn segment_path(dir: &Path, p: Partition, base: Offset) -> PathBuf {
    partition_dir(dir, p).join(format!("{base:020}.seg"))
}

/// Base offsets of a partition's segments, ascending.
fn list_segments(dir: &Path, p: Partition) -> Result<Vec<Offset>> {
    let pdir = partition_dir(dir, p);
    let mut bases = Vec::new();
    for entry in fs::read_dir(&pdir).map_err(io_err("list", &pdir))? {
        let entry = entry.map_err(io_err("list", &pdir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = name.strip_suffix(".seg").and_then(|b| b.parse::<u64>().ok()) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Scans a segment: the byte length of its valid prefix and the offset after its last valid
/// record. `Err` only for IO errors and for damage before the tail.
fn scan_segment(path: &Path, base: Offset) -> Result<(u64, Offset)> {
    let end = scan_segment_from(path, ScanMark::start(base))?;
    Ok((end.len, end.next))
}

/// Where a scan of a segment stopped: its first `len` bytes are whole records, the last of
/// them offset `next - 1`. `len` 0 means the header is not checked yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScanMark {
    base: Offset,
    len: u64,
    next: Offset,
}

impl ScanMark {
    fn start(base: Offset) -> Self {
        ScanMark { base, len: 0, next: base }
    }
}

/// Goes on scanning segment `mark.base` from `mark` (a previous result for the same segment,
/// or its start): only the bytes after `mark.len` are read and checked, a chunk at a time
/// into one buffer (a segment is up to `segment_bytes` long; read whole, it would take as
/// much fresh memory, twice over while it grew).
fn scan_segment_from(path: &Path, mark: ScanMark) -> Result<ScanMark> {
    let base = mark.base;
    let file = File::open(path).map_err(io_err("open segment", path))?;
    let corrupt = |position, reason: String| Error::Corrupt { path: path.display().to_string(), position, reason };
    // Nothing new (a lag probe's usual case): no buffer, no read.
    let len = file.metadata().map_err(io_err("stat segment", path))?.len();
    if len <= mark.len {
        return Ok(mark);
    }
    let mut buf = vec![0u8; CHUNK_BYTES.min((len - mark.len) as usize)];
    // `buf[at..filled]` is unchecked; `buf[0]` is at `pos` in the file.
    let (mut pos, mut at, mut filled, mut eof) = (mark.len, 0usize, 0usize, false);
    let mut header_checked = mark.len > 0;
    let mut next = mark.next;
    loop {
        let data = &buf[at..filled];
        let step = if header_checked {
            segment::decode_record(data).map(|f| (f.offset, f.len))
        } else {
            segment::decode_header(data).map(|b| (b, segment::HEADER_LEN))
        };
        match step {
            Ok((b, len)) if !header_checked => {
                if b != base {
                    return Err(corrupt(8, format!("header says base offset {b}, file name says {base}")));
                }
                header_checked = true;
                at += len;
            }
            Ok((offset, len)) if offset == next => {
                at += len;
                next += 1;
            }
            Ok((offset, _)) => {
                return Err(corrupt(pos + at as u64, format!("offset {offset} where {next} was expected")));
            }
            // The chunk ends inside a record (or the header): keep what is unchecked, read on.
            Err(FrameError::Incomplete { needed }) if !eof => {
                buf.copy_within(at..filled, 0);
                pos += at as u64;
                (filled, at) = (filled - at, 0);
                if needed > buf.len() {
                    // A record larger than the buffer, if the file holds that much: else the
                    // length is a torn tail's (or a write's in progress), and the scan ends.
                    let len = file.metadata().map_err(io_err("stat segment", path))?.len();
                    if pos + needed as u64 > len {
                        eof = true;
                        continue;
                    }
                    buf.resize(needed, 0);
                }
                let got = read_full_at(&file, &mut buf[filled..], pos + filled as u64)
                    .map_err(io_err("read segment", path))?;
                eof = filled + got < buf.len();
                filled += got;
            }
            Err(FrameError::Incomplete { .. }) if !header_checked => return Ok(mark),
            Err(FrameError::Corrupt(reason)) if !header_checked => return Err(corrupt(0, reason.into())),
            // A short or damaged record ends the valid prefix (a torn tail).
            Err(_) => return Ok(ScanMark { base, len: pos + at as u64, next }),
        }
    }
}

/// Reads into all of `buf` from `pos`, or up to the end of the file; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], pos + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[derive(Debug)]
struct Writer {
    _lock: File,
    parts: Vec<PartWriter>,
}

#[derive(Debug)]
struct PartWriter {
    file: File,
    base: Offset,
    next: Offset,
    size: u64,
    /// Closed segments, oldest first.
    closed: Vec<Offset>,
}

impl FileLog {
    /// Opens the log in `config.dir`, creating it with `create_partitions` partitions if it
    /// does not exist (and `create_partitions` is given).
    pub fn open(config: FileLogConfig, create_partitions: Option<u32>) -> Result<Self> {
        let meta_path = config.dir.join("log.json");
        let partitions = match fs::read_to_string(&meta_path) {
            Ok(text) => {
                let found = parse_meta(&text).ok_or_else(|| Error::Corrupt {
                    path: meta_path.display().to_string(),
                    position: 0,
                    reason: "expected {\"format\":1,\"partitions\":N}".into(),
                })?;
                if let Some(wanted) = create_partitions.filter(|w| *w != found) {
                    return Err(Error::PartitionCount { path: config.dir.display().to_string(), found, wanted });
                }
                found
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let Some(n) = create_partitions else {
                    return Err(Error::NotFound { path: config.dir.display().to_string() });
                };
                create_log(&config.dir, n.max(1))?;
                n.max(1)
            }
            Err(e) => return Err(io_err("read", &meta_path)(e)),
        };
        let url = format!("file://{}", config.dir.display());
        Ok(FileLog {
            inner: Arc::new(Inner {
                config,
                url,
                partitions,
                writer: Mutex::new(None),
                appended: Notify::new(),
                tails: Mutex::new(vec![None; partitions as usize]),
            }),
        })
    }

    /// The log's settings.
    pub fn config(&self) -> &FileLogConfig {
        &self.inner.config
    }
}

fn parse_meta(text: &str) -> Option<u32> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let rest = compact.strip_prefix("{\"format\":1,\"partitions\":")?;
    rest.strip_suffix('}')?.parse().ok().filter(|n| *n > 0)
}

fn create_log(dir: &Path, partitions: u32) -> Result<()> {
    for p in 0..partitions {
        let pdir = partition_dir(dir, p);
        fs::create_dir_all(&pdir).map_err(io_err("create", &pdir))?;
    }
    let groups = dir.join("groups");
    fs::create_dir_all(&groups).map_err(io_err("create", &groups))?;
    // The new directories' entries reach the disk before log.json says they exist.
    sync_dir(dir)?;
    // Written last and atomically: a log without log.json does not exist yet.
    let tmp = dir.join("log.json.tmp");
    let meta = format!("{{\"format\":1,\"partitions\":{partitions}}}\n");
    let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    file.write_all(meta.as_bytes()).and_then(|()| file.sync_all()).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, dir.join("log.json")).map_err(io_err("rename", &tmp))?;
    sync_dir(dir)
}

/// Forces a directory's entries (files created, renamed or deleted in it) to disk.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", dir))
}

/// Opens (creating) `path` and takes its exclusive flock; `None` if another open file
/// description holds it.
fn try_lock_file(path: &Path) -> Result<Option<File>> {
    let file =
        FsOpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(io_err("open", path))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(io_err("lock", path)(e)),
    }
}

/// Takes the log's writer lock (`DIR/writer.lock`), or fails if another process holds it.
fn lock_writer(dir: &Path) -> Result<File> {
    let lock_path = dir.join("writer.lock");
    try_lock_file(&lock_path)?.ok_or_else(|| Error::Io {
        op: "lock (another process is appending to this log)",
        path: lock_path.display().to_string(),
        source: std::io::Error::from(std::io::ErrorKind::WouldBlock),
    })
}

impl Inner {
    fn open_writer(&self) -> Result<Writer> {
        let dir = &self.config.dir;
        let lock = lock_writer(dir)?;
        let mut parts = Vec::with_capacity(self.partitions as usize);
        for p in 0..self.partitions {
            let mut bases = list_segments(dir, p)?;
            let base = bases.pop().unwrap_or(0);
            let path = segment_path(dir, p, base);
            let existed = path.exists();
            let (size, next) = if existed { scan_segment(&path, base)? } else { (0, base) };
            if existed {
                refuse_damage(&path, p, size, next)?;
            }
            let file = FsOpenOptions::new().create(true).append(false).write(true).truncate(false).open(&path);
            let file = file.map_err(io_err("open segment", &path))?;
            let size = if size == 0 {
                // New, or torn inside the header: (re)write the header.
                file.set_len(0).map_err(io_err("truncate", &path))?;
                file.write_all_at(&segment::encode_header(base), 0).map_err(io_err("write", &path))?;
                segment::HEADER_LEN as u64
            } else {
                // Drop a torn tail.
                file.set_len(size).map_err(io_err("truncate", &path))?;
                size
            };
            if self.config.fsync == FsyncPolicy::Always {
                file.sync_data().map_err(io_err("fsync", &path))?;
                if !existed {
                    sync_dir(&partition_dir(dir, p))?;
                }
            }
            parts.push(PartWriter { file, base, next, size, closed: bases });
        }
        Ok(Writer { _lock: lock, parts })
    }

    /// Appends already-partitioned records. Runs on a blocking thread. A failure drops the
    /// writer, so the next append starts over from what is on disk (no offset gap).
    fn append_blocking(&self, batch: OwnedBatch) -> Result<Vec<(Partition, Offset)>> {
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(self.open_writer()?);
        }
        let writer = guard.as_mut().expect("opened above");
        match self.write_batch(writer, &batch) {
            Ok(positions) => {
                drop(guard);
                self.appended.notify_waiters();
                Ok(positions)
            }
            Err(e) => {
                tracing::warn!(error = %e, log = %self.url, "append failed; the writer reopens on the next append");
                *guard = None;
                drop(guard);
                // Whatever reached the segments before the failure is readable.
                self.appended.notify_waiters();
                Err(e)
            }
        }
    }

    fn write_batch(&self, writer: &mut Writer, batch: &OwnedBatch) -> Result<Vec<(Partition, Offset)>> {
        let dir = &self.config.dir;
        let mut positions = Vec::with_capacity(batch.records.len());
        let mut pending: BTreeMap<Partition, Vec<u8>> = BTreeMap::new();
        let mut touched: Vec<Partition> = Vec::new();
        for r in &batch.records {
            let key = &batch.bytes[r.key.clone()];
            let value = &batch.bytes[r.value.clone()];
            let p = r.partition;
            let pw = &mut writer.parts[p as usize];
            let len = segment::encoded_len(key, value) as u64;
            let buf = pending.entry(p).or_default();
            let has_records = pw.size + buf.len() as u64 > segment::HEADER_LEN as u64;
            if has_records && pw.size + buf.len() as u64 + len > self.config.segment_bytes {
                // Flush what is pending, then roll to a new segment at the next offset.
                let data = std::mem::take(buf);
                write_part(pw, &data, dir, p, self.config.fsync)?;
                roll(pw, dir, p, &self.config)?;
            }
            let buf = pending.entry(p).or_default();
            segment::encode_record(buf, pw.next, r.timestamp_ms, key, value);
            positions.push((p, pw.next));
            pw.next += 1;
            if !touched.contains(&p) {
                touched.push(p);
            }
        }
        for (p, data) in pending {
            let pw = &mut writer.parts[p as usize];
            write_part(pw, &data, dir, p, self.config.fsync)?;
        }
        Ok(positions)
    }
}

/// Refuses to open a writer on a segment whose valid prefix (`valid_len` bytes, up to offset
/// `next`) ends at a damaged record that has whole records after it: truncating there
/// would drop records that were fsynced, maybe acknowledged. A torn tail (a record cut
/// short, zeros, garbage with nothing whole after it) passes.
fn refuse_damage(path: &Path, p: Partition, valid_len: u64, next: Offset) -> Result<()> {
    let file = File::open(path).map_err(io_err("open segment", path))?;
    let len = file.metadata().map_err(io_err("stat segment", path))?.len();
    if len <= valid_len {
        return Ok(());
    }
    let mut rest = vec![0u8; (len - valid_len) as usize];
    let got = read_full_at(&file, &mut rest, valid_len).map_err(io_err("read segment", path))?;
    rest.truncate(got);
    if let Some((at, offset)) = segment::find_record_after(&rest, next) {
        let log = path.parent().and_then(Path::parent).unwrap_or(path);
        return Err(Error::Damaged {
            path: path.display().to_string(),
            log: log.display().to_string(),
            partition: p,
            position: valid_len,
            offset: next,
            later: offset,
            later_position: valid_len + at as u64,
        });
    }
    Ok(())
}

/// Drops offset `offset` and every later record of partition `p` of the log in `dir` (the
/// operator's repair for [`Error::Damaged`]). Takes the writer lock, so no process may be
/// appending. The cut bytes are kept beside the segment in `SEGMENT.cut-OFFSET`. Returns
/// the bytes cut. `offset` must be at or below the first damaged record's offset.
pub fn truncate_partition(dir: &Path, p: Partition, offset: Offset) -> Result<u64> {
    let _lock = lock_writer(dir)?;
    let bases = list_segments(dir, p)?;
    let Some(&base) = bases.iter().rev().find(|b| **b <= offset) else {
        return Err(Error::OffsetOutOfRange { partition: p, offset, earliest: bases.first().copied().unwrap_or(0) });
    };
    let path = segment_path(dir, p, base);
    let mut data = Vec::new();
    File::open(&path).and_then(|mut f| f.read_to_end(&mut data)).map_err(io_err("read segment", &path))?;
    // Walk whole records up to `offset`.
    let mut at = segment::HEADER_LEN;
    let mut next = base;
    while next < offset {
        match data.get(at..).map(segment::decode_record) {
            Some(Ok(f)) if f.offset == next => {
                at += f.len;
                next += 1;
            }
            _ => {
                return Err(Error::Corrupt {
                    path: path.display().to_string(),
                    position: at as u64,
                    reason: format!("offset {next} is the first damaged record; truncate at or below it"),
                })
            }
        }
    }
    let cut = data.len().saturating_sub(at) as u64;
    if cut > 0 {
        let aside = path.with_extension(format!("seg.cut-{offset}"));
        fs::write(&aside, &data[at..]).map_err(io_err("write", &aside))?;
    }
    let file = FsOpenOptions::new().write(true).open(&path).map_err(io_err("open segment", &path))?;
    file.set_len(at as u64).and_then(|()| file.sync_all()).map_err(io_err("truncate", &path))?;
    // Later segments hold only later offsets.
    for later in bases.iter().filter(|b| **b > base) {
        let later = segment_path(dir, p, *later);
        fs::rename(&later, later.with_extension(format!("seg.cut-{offset}"))).map_err(io_err("rename", &later))?;
    }
    sync_dir(&partition_dir(dir, p))?;
    Ok(cut)
}

fn write_part(pw: &mut PartWriter, data: &[u8], dir: &Path, p: Partition, fsync: FsyncPolicy) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let path = segment_path(dir, p, pw.base);
    pw.file.write_all_at(data, pw.size).map_err(io_err("write segment", &path))?;
    pw.size += data.len() as u64;
    if fsync == FsyncPolicy::Always {
        pw.file.sync_data().map_err(io_err("fsync", &path))?;
    }
    Ok(())
}

fn roll(pw: &mut PartWriter, dir: &Path, p: Partition, config: &FileLogConfig) -> Result<()> {
    let path = segment_path(dir, p, pw.next);
    let mut file =
        FsOpenOptions::new().create_new(true).write(true).open(&path).map_err(io_err("create segment", &path))?;
    file.write_all(&segment::encode_header(pw.next)).map_err(io_err("write", &path))?;
    if config.fsync == FsyncPolicy::Always {
        file.sync_data().map_err(io_err("fsync", &path))?;
        sync_dir(&partition_dir(dir, p))?;
    }
    pw.closed.push(pw.base);
    pw.file = file;
    pw.base = pw.next;
    pw.size = segment::HEADER_LEN as u64;
    apply_retention(pw, dir, p, config)
}

fn apply_retention(pw: &mut PartWriter, dir: &Path, p: Partition, config: &FileLogConfig) -> Result<()> {
    if config.retention_bytes.is_none() && config.retention.is_none() {
        return Ok(());
    }
    let mut sizes = Vec::with_capacity(pw.closed.len());
    for base in &pw.closed {
        let path = segment_path(dir, p, *base);
        let meta = fs::metadata(&path).map_err(io_err("stat", &path))?;
        sizes.push((meta.len(), meta.modified().unwrap_or(SystemTime::now())));
    }
    let mut total: u64 = sizes.iter().map(|(s, _)| s).sum::<u64>() + pw.size;
    let mut drop_n = 0;
    for (len, modified) in &sizes {
        let too_big = config.retention_bytes.is_some_and(|max| total > max);
        let too_old = config.retention.is_some_and(|max| modified.elapsed().unwrap_or_default() > max);
        if !(too_big || too_old) {
            break;
        }
        total -= len;
        drop_n += 1;
    }
    for base in pw.closed.drain(..drop_n) {
        let path = segment_path(dir, p, base);
        fs::remove_file(&path).map_err(io_err("delete segment", &path))?;
    }
    Ok(())
}

/// Records copied out of the caller's borrow so the IO can run on a blocking thread.
#[derive(Debug, Default)]
struct OwnedBatch {
    bytes: Vec<u8>,
    records: Vec<OwnedRecord>,
}

#[derive(Debug)]
struct OwnedRecord {
    partition: Partition,
    timestamp_ms: i64,
    key: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
}

#[async_trait::async_trait]
impl EventLog for FileLog {
    fn url(&self) -> &str {
        &self.inner.url
    }

    async fn partitions(&self) -> Result<u32> {
        Ok(self.inner.partitions)
    }

    async fn append(&self, records: &[RecordRef<'_>]) -> Result<Vec<(Partition, Offset)>> {
        let n = self.inner.partitions;
        let mut batch = OwnedBatch {
            bytes: Vec::with_capacity(records.iter().map(|r| r.key.len() + r.value.len()).sum()),
            records: Vec::with_capacity(records.len()),
        };
        for r in records {
            let body = r.key.len() + r.value.len() + 20;
            if body > segment::MAX_BODY {
                return Err(Error::RecordTooLarge { size: body, limit: segment::MAX_BODY });
            }
            let k0 = batch.bytes.len();
            batch.bytes.extend_from_slice(r.key);
            let v0 = batch.bytes.len();
            batch.bytes.extend_from_slice(r.value);
            batch.records.push(OwnedRecord {
                partition: crate::partition_for(r.key, n),
                timestamp_ms: r.timestamp_ms,
                key: k0..v0,
                value: v0..batch.bytes.len(),
            });
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.append_blocking(batch)).await.expect("append task panicked")
    }

    async fn end_offsets(&self) -> Result<Vec<Offset>> {
        {
            let guard = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(w) = guard.as_ref() {
                return Ok(w.parts.iter().map(|p| p.next).collect());
            }
        }
        let dir = &self.inner.config.dir;
        let mut tails = self.inner.tails.lock().unwrap_or_else(|p| p.into_inner());
        (0..self.inner.partitions)
            .map(|p| {
                let Some(&base) = list_segments(dir, p)?.last() else { return Ok(0) };
                let tail = &mut tails[p as usize];
                let mark = tail.filter(|m| m.base == base).unwrap_or(ScanMark::start(base));
                let end = scan_segment_from(&segment_path(dir, p, base), mark)?;
                *tail = Some(end);
                Ok(end.next)
            })
            .collect()
    }

    async fn start_offsets(&self) -> Result<Vec<Offset>> {
        let dir = &self.inner.config.dir;
        (0..self.inner.partitions).map(|p| Ok(list_segments(dir, p)?.first().copied().unwrap_or(0))).collect()
    }

    async fn subscribe(&self, group: &str) -> Result<Box<dyn LogConsumer>> {
        if group.is_empty() || !group.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(Error::BadUrl {
                url: self.inner.url.clone(),
                reason: format!("consumer group {group:?} must be letters, digits, '-', '_' or '.'"),
            });
        }
        let groups = self.inner.config.dir.join("groups");
        fs::create_dir_all(&groups).map_err(io_err("create", &groups))?;
        let lock_path = groups.join(format!("{group}.lock"));
        let lock = try_lock_file(&lock_path)?.ok_or_else(|| Error::GroupBusy {
            group: group.to_string(),
            path: self.inner.config.dir.display().to_string(),
        })?;
        let readers = (0..self.inner.partitions).map(|p| PartReader::new(p, &self.inner.config.dir)).collect();
        Ok(Box::new(FileConsumer {
            inner: Arc::clone(&self.inner),
            group: group.to_string(),
            _lock: lock,
            assigned: false,
            readers,
            next_partition: 0,
            last_delivered: 0,
        }))
    }
}

/// The one member of a FileLog consumer group.
#[derive(Debug)]
struct FileConsumer {
    inner: Arc<Inner>,
    group: String,
    _lock: File,
    assigned: bool,
    readers: Vec<PartReader>,
    next_partition: usize,
    /// Records the last non-empty poll delivered: the next one's list starts that large
    /// instead of doubling (and copying) its way up.
    last_delivered: usize,
}

/// Where a consumer is in one partition.
#[derive(Debug)]
struct PartReader {
    partition: Partition,
    dir: PathBuf,
    /// The open segment: its base offset and file (None until first read).
    file: Option<(Offset, File)>,
    /// The open segment mapped into memory, when it is closed (a newer segment exists):
    /// its records are handed out as slices of the map, never copied.
    map: Option<Bytes>,
    /// Byte position of the next record in the open segment.
    pos: u64,
    /// Offset of the next record in the open segment.
    next: Offset,
    /// Records below this offset are skipped (the consumer's seek position).
    skip_below: Offset,
}

impl PartReader {
    fn new(partition: Partition, dir: &Path) -> Self {
        PartReader { partition, dir: dir.to_path_buf(), file: None, map: None, pos: 0, next: 0, skip_below: 0 }
    }

    fn seek(&mut self, offset: Offset) -> Result<()> {
        let bases = list_segments(&self.dir, self.partition)?;
        let earliest = bases.first().copied().unwrap_or(0);
        if offset < earliest {
            return Err(Error::OffsetOutOfRange { partition: self.partition, offset, earliest });
        }
        let base = bases.iter().rev().find(|b| **b <= offset).copied().unwrap_or(0);
        self.open_segment(base)?;
        self.skip_below = offset;
        Ok(())
    }

    fn open_segment(&mut self, base: Offset) -> Result<()> {
        let path = segment_path(&self.dir, self.partition, base);
        match File::open(&path) {
            Ok(f) => {
                let closed = list_segments(&self.dir, self.partition)?.iter().any(|&b| b > base);
                self.map = if closed { map_closed(&f) } else { None };
                self.file = Some((base, f));
                self.pos = segment::HEADER_LEN as u64;
                self.next = base;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && base == 0 => {
                // Nothing appended yet: wait for the first segment.
                self.file = None;
                self.map = None;
                self.pos = segment::HEADER_LEN as u64;
                self.next = 0;
                Ok(())
            }
            Err(e) => Err(io_err("open segment", &path)(e)),
        }
    }

    /// Reads up to `max` records into `out`; returns how many it added.
    fn read(&mut self, max: usize, out: &mut Vec<Delivered>) -> Result<usize> {
        if self.file.is_none() {
            let bases = list_segments(&self.dir, self.partition)?;
            match bases.first() {
                Some(&first) if self.skip_below < first => {
                    return Err(Error::OffsetOutOfRange {
                        partition: self.partition,
                        offset: self.skip_below,
                        earliest: first,
                    })
                }
                Some(_) => {
                    let base = bases.iter().rev().find(|b| **b <= self.skip_below).copied().unwrap_or(0);
                    self.open_segment(base)?;
                }
                None => return Ok(0),
            }
            if self.file.is_none() {
                return Ok(0);
            }
        }
        let mut added = 0;
        let mut want = CHUNK_BYTES;
        while added < max {
            let base = self.file.as_ref().expect("opened above").0;
            let path = segment_path(&self.dir, self.partition, base);
            let (chunk, got) = match &self.map {
                Some(map) => {
                    let start = (self.pos as usize).min(map.len());
                    let end = start.saturating_add(want).min(map.len());
                    (map.slice(start..end), end - start)
                }
                None => {
                    // A fresh chunk, read without zero-filling it first: the records
                    // delivered are slices of it.
                    let mut chunk = Vec::with_capacity(want);
                    let got = self.read_chunk(want, &mut chunk).map_err(io_err("read segment", &path))?;
                    (Bytes::from(chunk), got)
                }
            };
            let data = &chunk[..];
            let mut at = 0;
            let mut stalled = None;
            while added < max {
                match segment::decode_record(&data[at..]) {
                    Ok(f) => {
                        if f.offset != self.next {
                            return Err(Error::Corrupt {
                                path: path.display().to_string(),
                                position: self.pos + at as u64,
                                reason: format!("offset {} where {} was expected", f.offset, self.next),
                            });
                        }
                        if f.offset >= self.skip_below {
                            out.push(Delivered {
                                partition: self.partition,
                                offset: f.offset,
                                timestamp_ms: f.timestamp_ms,
                                key: chunk.slice_ref(f.key),
                                value: chunk.slice_ref(f.value),
                            });
                            added += 1;
                        }
                        at += f.len;
                        self.next += 1;
                    }
                    Err(e) => {
                        stalled = Some(e);
                        break;
                    }
                }
            }
            self.pos += at as u64;
            let Some(stop) = stalled else { continue };
            match stop {
                // The buffer ended inside a record and the file goes on: read from there.
                FrameError::Incomplete { .. } if got == want && at > 0 => continue,
                // One record larger than the buffer: grow it and read again.
                FrameError::Incomplete { needed } if got == want => {
                    want = needed;
                    continue;
                }
                stop => {
                    // At the end of what is written. A newer segment starting at `next`
                    // means this one is closed: move on. Otherwise wait for the writer.
                    let next_seg = segment_path(&self.dir, self.partition, self.next);
                    let file_len = self.file.as_ref().map(|(_, f)| f.metadata().map(|m| m.len()).unwrap_or(0));
                    let file_len = file_len.unwrap_or(0);
                    if let FrameError::Corrupt(reason) = stop {
                        // Damage followed by more data is corruption, not a write in progress.
                        let end = segment::peek_len(&data[at..]).map(|l| self.pos + l as u64).unwrap_or(u64::MAX);
                        if end < file_len || (self.next != base && next_seg.exists()) {
                            return Err(Error::Corrupt {
                                path: path.display().to_string(),
                                position: self.pos,
                                reason: reason.into(),
                            });
                        }
                    }
                    if self.next != base && next_seg.exists() && self.pos >= file_len {
                        let next = self.next;
                        self.open_segment(next)?;
                        continue;
                    }
                    return Ok(added);
                }
            }
        }
        Ok(added)
    }

    /// Appends up to `want` bytes of the open segment, from the read position, to `into`.
    fn read_chunk(&mut self, want: usize, into: &mut Vec<u8>) -> std::io::Result<usize> {
        let pos = self.pos;
        match &mut self.file {
            Some((_, f)) => {
                f.seek(SeekFrom::Start(pos))?;
                Read::take(&*f, want as u64).read_to_end(into)
            }
            None => Ok(0),
        }
    }
}

/// Bytes a consumer reads from a segment at a time (more for a larger record).
const CHUNK_BYTES: usize = 1 << 20;

/// A closed segment's bytes, mapped: a consumer that reads it takes its records as slices of
/// the page cache instead of copying every byte into a buffer of its own (a backfill reads
/// the whole log). `None` if the file cannot be mapped: it is read instead.
fn map_closed(f: &File) -> Option<Bytes> {
    // SAFETY: a closed segment never changes: the writer appends to, and on recovery
    // truncates, only the newest segment of a partition, and retention deletes closed
    // segments whole (an unlinked file stays mapped until the map is dropped). The map is
    // only read, through `Bytes`.
    let map = unsafe { memmap2::Mmap::map(f) }.ok()?;
    // Read once, in order: read ahead, and drop pages behind.
    let _ = map.advise(memmap2::Advice::Sequential);
    Some(Bytes::from_owner(map))
}

impl FileConsumer {
    fn read_available(&mut self, max: usize) -> Result<Vec<Delivered>> {
        let mut out = Vec::with_capacity(self.last_delivered.min(max));
        let n = self.readers.len();
        // Round-robin so that one busy partition does not starve the others.
        let share = (max / n).max(1);
        for i in 0..n {
            if out.len() >= max {
                break;
            }
            let idx = (self.next_partition + i) % n;
            let want = share.min(max - out.len());
            self.readers[idx].read(want, &mut out)?;
        }
        self.next_partition = (self.next_partition + 1) % n;
        if !out.is_empty() {
            self.last_delivered = out.len();
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl LogConsumer for FileConsumer {
    async fn poll(&mut self, max_records: usize, timeout: Duration) -> Result<Poll> {
        if !self.assigned {
            self.assigned = true;
            return Ok(Poll::Assigned((0..self.inner.partitions).collect()));
        }
        let deadline = Instant::now() + timeout;
        let inner = Arc::clone(&self.inner);
        loop {
            // Register for the wake-up before looking, so an append in between is not missed.
            let notified = inner.appended.notified();
            let records = self.read_available(max_records.max(1))?;
            if !records.is_empty() {
                return Ok(Poll::Records(records));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Poll::Idle);
            }
            let wait = (deadline - now).min(self.inner.config.poll_interval);
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }

    async fn seek(&mut self, partition: Partition, offset: Offset) -> Result<()> {
        let partitions = self.inner.partitions;
        let reader =
            self.readers.get_mut(partition as usize).ok_or(Error::NoSuchPartition { partition, partitions })?;
        reader.seek(offset)
    }

    async fn commit(&mut self, positions: &[(Partition, Offset)]) -> Result<()> {
        let groups = self.inner.config.dir.join("groups");
        let path = groups.join(format!("{}.offsets", self.group));
        let tmp = groups.join(format!("{}.offsets.tmp", self.group));
        let mut text = String::new();
        for (p, o) in positions {
            text.push_str(&format!("{p} {o}\n"));
        }
        fs::write(&tmp, text).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))
    }

    fn assignment(&self) -> Vec<Partition> {
        if self.assigned {
            (0..self.inner.partitions).collect()
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_settings() {
        let c = FileLogConfig::from_url("file:///tmp/x?fsync=never&segment_bytes=4096&retention_hours=2").unwrap();
        assert_eq!(c.dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.fsync, FsyncPolicy::Never);
        assert_eq!(c.segment_bytes, 4096);
        assert_eq!(c.retention, Some(Duration::from_secs(7200)));
        assert_eq!(FileLogConfig::from_url("relative/dir").unwrap().dir, PathBuf::from("relative/dir"));
        for bad in ["file://", "file:///x?fsync=sometimes", "file:///x?nope=1", "file:///x?segment_bytes=big"] {
            assert!(matches!(FileLogConfig::from_url(bad), Err(Error::BadUrl { .. })), "{bad}");
        }
    }

    /// A segment of several buffers' worth, with records across every buffer boundary and
    /// one larger than the buffer: scanned whole, resumed from a mark, and cut anywhere in
    /// its last record (a torn tail), the scan stops after the last whole record.
    #[test]
    fn scans_read_segments_a_chunk_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000100.seg");
        let mut bytes = segment::encode_header(100).to_vec();
        let mut ends = vec![bytes.len()];
        let mut seed = 17u64;
        for i in 0..400u64 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1442695040888963407);
            let len = if i == 150 { 3 * CHUNK_BYTES / 2 } else { (seed >> 40) as usize % 20_000 };
            let value: Vec<u8> = (0..len).map(|j| (j as u64 ^ seed) as u8).collect();
            segment::encode_record(&mut bytes, 100 + i, i as i64, b"k", &value);
            ends.push(bytes.len());
        }
        assert!(bytes.len() > 4 * CHUNK_BYTES);
        std::fs::write(&path, &bytes).unwrap();
        let whole = scan_segment_from(&path, ScanMark::start(100)).unwrap();
        assert_eq!(whole, ScanMark { base: 100, len: bytes.len() as u64, next: 500 });
        let mark = ScanMark { base: 100, len: ends[120] as u64, next: 220 };
        assert_eq!(scan_segment_from(&path, mark).unwrap(), whole);
        // Torn: the file ends inside record 399 (or inside the large one).
        for (cut, next) in [(ends[399] + 3, 499), (ends[400] - 1, 499), (ends[150] + 5, 250)] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let end = scan_segment_from(&path, ScanMark::start(100)).unwrap();
            assert_eq!(end, ScanMark { base: 100, len: ends[next - 100] as u64, next: next as u64 }, "cut at {cut}");
        }
        // Damage before the tail's end stops the scan there too (the writer decides what it is).
        let mut damaged = bytes.clone();
        damaged[ends[300] + 10] ^= 0xff;
        std::fs::write(&path, &damaged).unwrap();
        assert_eq!(scan_segment_from(&path, ScanMark::start(100)).unwrap().next, 400);
    }

    #[test]
    fn meta_round_trip() {
        assert_eq!(parse_meta("{\"format\":1,\"partitions\":4}\n"), Some(4));
        assert_eq!(parse_meta("{\"format\":2,\"partitions\":4}"), None);
        assert_eq!(parse_meta("{\"format\":1,\"partitions\":0}"), None);
    }
}
