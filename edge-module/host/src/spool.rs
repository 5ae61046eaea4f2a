//! The spool (`--spool-dir`): with it, an edge crash loses no hit it answered `counted` for.
//!
//! Three kinds of file, named by the instance's boot epoch (unique per instance and start):
//!
//! - `{boot}.{n}.journal`: a record of every counted hit (generation, resource, minute, visitor
//!   hash; see `hitcount_wire::journal`), appended in checksummed frames and fsynced before the
//!   hit is answered. Many hits share one fsync (group commit).
//! - `{boot}.{sequence}.batch`: a sealed batch, byte for byte what is sent to the aggregator.
//! - `{boot}.commit`: the last committed generation and the next uncommitted sequence.
//!
//! When the instance seals batches, they are written, then the commit file is replaced
//! atomically (write, fsync, rename), and only then is any of them sent. The rename is the commit
//! point: it says "journal records up to generation G are in batches below sequence S". Recovery
//! resends the committed batches (the aggregator deduplicates by edge, boot epoch and sequence)
//! and replays only journal records after G, so nothing is counted twice or lost. Journal files
//! whose every record a commit covers are deleted; acknowledged batch files too.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hitcount_wire::journal::{decode_journal, put_journal_record};
use tokio::sync::{mpsc, oneshot};

/// Default bound on the spool's size. Past it, beacons get 503 (as when the pending map is
/// full): the spool grows with hits during an outage, unlike memory.
pub const SPOOL_BYTES_MAX_DEFAULT: u64 = 1024 * 1024 * 1024;
/// Appends gathered into one fsync at most.
const GROUP_COMMANDS_MAX: usize = 4_096;
/// Length and CRC-32 of a frame's payload, each a little-endian u32.
const FRAME_HEADER_BYTES: usize = 8;

/// A batch committed by an earlier run, to be resent before anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredBatch {
    pub boot_epoch: u64,
    pub sequence: u64,
    pub bytes: Vec<u8>,
}

/// What an earlier run left: batches to resend, and journal records no commit covers.
#[derive(Debug, Default)]
pub struct Recovery {
    pub batches: Vec<RecoveredBatch>,
    /// Journal records (wire journal format) to count again.
    pub journal: Vec<u8>,
    pub journal_records: u64,
    /// Boot epochs found, with the next uncommitted sequence of each.
    boots: BTreeMap<u64, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the spool writer has stopped")]
    Stopped,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

enum FileKind {
    Journal { boot_epoch: u64, number: u64 },
    Batch { boot_epoch: u64, sequence: u64 },
    Commit { boot_epoch: u64 },
    Other,
}

fn kind_of(name: &str) -> FileKind {
    let parts: Vec<&str> = name.split('.').collect();
    let number = |text: &str| text.parse::<u64>().ok();
    match parts.as_slice() {
        [boot, n, "journal"] => match (number(boot), number(n)) {
            (Some(boot_epoch), Some(number)) => FileKind::Journal { boot_epoch, number },
            _ => FileKind::Other,
        },
        [boot, sequence, "batch"] => match (number(boot), number(sequence)) {
            (Some(boot_epoch), Some(sequence)) => FileKind::Batch {
                boot_epoch,
                sequence,
            },
            _ => FileKind::Other,
        },
        [boot, "commit"] => match number(boot) {
            Some(boot_epoch) => FileKind::Commit { boot_epoch },
            None => FileKind::Other,
        },
        _ => FileKind::Other,
    }
}

/// Reads the frames of a journal file, stopping at the first torn or corrupt one (a crash in
/// the middle of an append leaves one; its hits were never answered).
fn read_frames(path: &Path) -> Result<Vec<Vec<u8>>, SpoolError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(io_error(path))?;
    let mut frames = Vec::new();
    let mut rest = bytes.as_slice();
    while rest.len() >= FRAME_HEADER_BYTES {
        let length = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let checksum = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let Some(payload) = rest.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + length) else {
            break;
        };
        if crc32fast::hash(payload) != checksum {
            break;
        }
        frames.push(payload.to_vec());
        rest = &rest[FRAME_HEADER_BYTES + length..];
    }
    if !rest.is_empty() {
        tracing::warn!(path = %path.display(), bytes = rest.len(), "ignoring a torn journal tail");
    }
    Ok(frames)
}

fn read_commit(path: &Path) -> Result<(u64, u64), SpoolError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(io_error(path))?;
    // Written whole by rename, so a short file is not a torn write but someone else's file.
    let fields: [u8; 16] = bytes.as_slice().try_into().map_err(|_| SpoolError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, "a commit file holds 16 bytes"),
    })?;
    let generation = u64::from_le_bytes(fields[..8].try_into().unwrap_or_default());
    let next_sequence = u64::from_le_bytes(fields[8..].try_into().unwrap_or_default());
    Ok((generation, next_sequence))
}

fn sync_directory(directory: &Path) -> Result<(), SpoolError> {
    File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error(directory))
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one whole.
fn write_atomically(directory: &Path, path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary).map_err(io_error(&temporary))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&temporary))?;
    fs::rename(&temporary, path).map_err(io_error(path))?;
    sync_directory(directory)
}

fn commit_bytes(generation: u64, next_sequence: u64) -> Vec<u8> {
    let mut bytes = generation.to_le_bytes().to_vec();
    bytes.extend_from_slice(&next_sequence.to_le_bytes());
    bytes
}

/// Reads what earlier runs left in `directory` (created if missing).
pub fn recover(directory: &Path) -> Result<Recovery, SpoolError> {
    fs::create_dir_all(directory).map_err(io_error(directory))?;
    let mut journals: BTreeMap<u64, BTreeMap<u64, PathBuf>> = BTreeMap::new();
    let mut batches: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    let mut commits: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for entry in fs::read_dir(directory).map_err(io_error(directory))? {
        let entry = entry.map_err(io_error(directory))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        match kind_of(&name) {
            FileKind::Journal { boot_epoch, number } => {
                journals.entry(boot_epoch).or_default().insert(number, path);
            }
            FileKind::Batch {
                boot_epoch,
                sequence,
            } => {
                batches.insert((boot_epoch, sequence), path);
            }
            FileKind::Commit { boot_epoch } => {
                commits.insert(boot_epoch, read_commit(&path)?);
            }
            FileKind::Other if name.ends_with(".tmp") => {
                // A write that never reached its rename: not committed, never sent.
                fs::remove_file(&path).map_err(io_error(&path))?;
            }
            FileKind::Other => {}
        }
    }
    let mut recovery = Recovery::default();
    for ((boot_epoch, sequence), path) in batches {
        let next_sequence = commits.get(&boot_epoch).map_or(0, |commit| commit.1);
        if sequence < next_sequence {
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut file| file.read_to_end(&mut bytes))
                .map_err(io_error(&path))?;
            recovery.batches.push(RecoveredBatch {
                boot_epoch,
                sequence,
                bytes,
            });
        } else {
            // Written but never committed, so never sent: its hits are replayed from the journal.
            fs::remove_file(&path).map_err(io_error(&path))?;
        }
    }
    let boots: std::collections::BTreeSet<u64> =
        journals.keys().chain(commits.keys()).copied().collect();
    for boot_epoch in boots {
        let (generation, next_sequence) = commits.get(&boot_epoch).copied().unwrap_or((0, 0));
        for path in journals
            .get(&boot_epoch)
            .into_iter()
            .flat_map(BTreeMap::values)
        {
            for frame in read_frames(path)? {
                let records = decode_journal(&frame).map_err(|error| SpoolError::Io {
                    path: path.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidData, error.to_string()),
                })?;
                for record in records
                    .iter()
                    .filter(|record| record.generation > generation)
                {
                    put_journal_record(
                        &mut recovery.journal,
                        record.generation,
                        &record.resource_id,
                        record.minute,
                        record.visitor,
                    );
                    recovery.journal_records += 1;
                }
            }
        }
        recovery.boots.insert(boot_epoch, next_sequence);
    }
    Ok(recovery)
}

/// Newly sealed batches of one instance, and what they cover.
#[derive(Debug)]
pub struct BatchCommit {
    pub boot_epoch: u64,
    /// The instance's open generation now: the most a record in the current journal file can
    /// carry. The file is closed with it.
    pub open_generation: u64,
    /// Journal records up to this generation are in these batches or earlier ones.
    pub generation: u64,
    /// One past the last sequence committed.
    pub next_sequence: u64,
    /// (sequence, bytes), in sequence order.
    pub batches: Vec<(u64, Vec<u8>)>,
}

enum Command {
    Append {
        boot_epoch: u64,
        bytes: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
    Commit {
        commit: BatchCommit,
        done: oneshot::Sender<Result<(), String>>,
    },
    Acknowledged {
        boot_epoch: u64,
        sequence: u64,
    },
}

/// The handle the edge holds; cheap to clone.
#[derive(Debug, Clone)]
pub struct Spool {
    commands: mpsc::UnboundedSender<Command>,
    bytes: Arc<AtomicU64>,
    bytes_max: u64,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::Append { .. } => "Append",
            Self::Commit { .. } => "Commit",
            Self::Acknowledged { .. } => "Acknowledged",
        })
    }
}

/// Open journal file and what it may hold.
struct JournalFile {
    file: Option<File>,
    path: PathBuf,
    /// Set when the file is closed: its records' highest possible generation.
    generation_max: Option<u64>,
}

struct Writer {
    directory: PathBuf,
    /// Per boot epoch: journal files by number, the last one open.
    journals: HashMap<u64, BTreeMap<u64, JournalFile>>,
    /// Per boot epoch of an earlier run: its batch files not yet acknowledged.
    recovered: HashMap<u64, usize>,
    bytes: Arc<AtomicU64>,
}

fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(FRAME_HEADER_BYTES + bytes.len());
    framed.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    framed.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    framed.extend_from_slice(bytes);
    framed
}

impl Writer {
    fn current_journal(&mut self, boot_epoch: u64) -> Result<&mut JournalFile, SpoolError> {
        let files = self.journals.entry(boot_epoch).or_default();
        let number = match files.last_key_value() {
            Some((number, file)) if file.generation_max.is_none() => *number,
            Some((number, _)) => number + 1,
            None => 0,
        };
        if let std::collections::btree_map::Entry::Vacant(vacant) = files.entry(number) {
            let path = self
                .directory
                .join(format!("{boot_epoch}.{number}.journal"));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_error(&path))?;
            vacant.insert(JournalFile {
                file: Some(file),
                path,
                generation_max: None,
            });
        }
        files.get_mut(&number).ok_or(SpoolError::Stopped)
    }

    fn append(&mut self, boot_epoch: u64, bytes: &[u8]) -> Result<(), SpoolError> {
        let framed = frame(bytes);
        let journal = self.current_journal(boot_epoch)?;
        let path = journal.path.clone();
        if let Some(file) = &mut journal.file {
            file.write_all(&framed).map_err(io_error(&path))?;
        }
        self.bytes.fetch_add(framed.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn sync_journals(&mut self) -> Result<(), SpoolError> {
        for files in self.journals.values_mut() {
            for journal in files.values_mut() {
                if let Some(file) = &journal.file {
                    file.sync_data().map_err(io_error(&journal.path))?;
                }
            }
        }
        Ok(())
    }

    fn commit(&mut self, commit: &BatchCommit) -> Result<(), SpoolError> {
        let BatchCommit {
            boot_epoch,
            open_generation,
            generation,
            next_sequence,
            ref batches,
        } = *commit;
        // Journal records before the commit are durable first (they were synced with their
        // group), then the batches, then the commit file's rename makes them count.
        for (sequence, bytes) in batches {
            let path = self
                .directory
                .join(format!("{boot_epoch}.{sequence}.batch"));
            write_atomically(&self.directory, &path, bytes)?;
            self.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        let path = self.directory.join(format!("{boot_epoch}.commit"));
        write_atomically(
            &self.directory,
            &path,
            &commit_bytes(generation, next_sequence),
        )?;
        // The open file closes: records appended from now on go to the next one.
        if let Some(files) = self.journals.get_mut(&boot_epoch)
            && let Some((_, journal)) = files.last_key_value()
            && journal.generation_max.is_none()
            && let Some(mut entry) = files.last_entry()
        {
            let journal = entry.get_mut();
            journal.file = None;
            journal.generation_max = Some(open_generation);
        }
        // Closed files whose every record the commit covers are done with.
        if let Some(files) = self.journals.get_mut(&boot_epoch) {
            let covered: Vec<u64> = files
                .iter()
                .filter(|(_, journal)| {
                    journal
                        .generation_max
                        .is_some_and(|maximum| maximum <= generation)
                })
                .map(|(number, _)| *number)
                .collect();
            for number in covered {
                if let Some(journal) = files.remove(&number) {
                    let size = fs::metadata(&journal.path).map_or(0, |meta| meta.len());
                    fs::remove_file(&journal.path).map_err(io_error(&journal.path))?;
                    self.bytes.fetch_sub(
                        size.min(self.bytes.load(Ordering::Relaxed)),
                        Ordering::Relaxed,
                    );
                }
            }
        }
        Ok(())
    }

    fn acknowledged(&mut self, boot_epoch: u64, sequence: u64) -> Result<(), SpoolError> {
        let path = self
            .directory
            .join(format!("{boot_epoch}.{sequence}.batch"));
        let size = fs::metadata(&path).map_or(0, |meta| meta.len());
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(&path)(error)),
        }
        self.bytes.fetch_sub(
            size.min(self.bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        // An earlier run's boot with nothing left to send leaves nothing behind.
        if let Some(left) = self.recovered.get_mut(&boot_epoch) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.recovered.remove(&boot_epoch);
                let commit = self.directory.join(format!("{boot_epoch}.commit"));
                fs::remove_file(&commit).map_err(io_error(&commit))?;
            }
        }
        Ok(())
    }

    fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut group = Vec::with_capacity(GROUP_COMMANDS_MAX);
        while let Some(first) = commands.blocking_recv() {
            group.push(first);
            while group.len() < GROUP_COMMANDS_MAX {
                match commands.try_recv() {
                    Ok(command) => group.push(command),
                    Err(_) => break,
                }
            }
            let mut waiting: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
            let mut failure: Option<String> = None;
            for command in group.drain(..) {
                match command {
                    Command::Append {
                        boot_epoch,
                        bytes,
                        done,
                    } => {
                        if let Err(error) = self.append(boot_epoch, &bytes) {
                            failure = Some(error.to_string());
                        }
                        waiting.push(done);
                    }
                    Command::Commit { commit, done } => {
                        // Appends before a commit are in the journal before it.
                        let synced = self.sync_journals();
                        answer(&mut waiting, &mut failure, synced);
                        let committed = self.commit(&commit);
                        let _ = done.send(committed.map_err(|error| error.to_string()));
                    }
                    Command::Acknowledged {
                        boot_epoch,
                        sequence,
                    } => {
                        if let Err(error) = self.acknowledged(boot_epoch, sequence) {
                            tracing::warn!(%error, "could not remove an acknowledged batch");
                        }
                    }
                }
            }
            let synced = self.sync_journals();
            answer(&mut waiting, &mut failure, synced);
        }
    }
}

/// Tells every append waiting for the fsync how it went.
fn answer(
    waiting: &mut Vec<oneshot::Sender<Result<(), String>>>,
    failure: &mut Option<String>,
    synced: Result<(), SpoolError>,
) {
    let result = match (failure.take(), synced) {
        (Some(error), _) => Err(error),
        (None, Err(error)) => Err(error.to_string()),
        (None, Ok(())) => Ok(()),
    };
    for done in waiting.drain(..) {
        let _ = done.send(result.clone());
    }
}

fn directory_bytes(directory: &Path) -> u64 {
    fs::read_dir(directory)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.metadata().ok())
                .map(|meta| meta.len())
                .sum()
        })
        .unwrap_or(0)
}

impl Spool {
    /// Starts the writer. `recovery` is what [`recover`] found; `replayed` maps each new boot
    /// epoch to the journal records its instance wrote while replaying that recovery. They are
    /// made durable before the earlier runs' journals are retired, so a crash during recovery
    /// neither loses nor doubles them.
    pub fn start(
        directory: &Path,
        recovery: &Recovery,
        replayed: &[(u64, Vec<u8>)],
        bytes_max: u64,
    ) -> Result<Self, SpoolError> {
        let bytes = Arc::new(AtomicU64::new(0));
        let mut writer = Writer {
            directory: directory.to_path_buf(),
            journals: HashMap::new(),
            recovered: HashMap::new(),
            bytes: Arc::clone(&bytes),
        };
        for (boot_epoch, journal) in replayed {
            if !journal.is_empty() {
                writer.append(*boot_epoch, journal)?;
            }
        }
        writer.sync_journals()?;
        for (&boot_epoch, &next_sequence) in &recovery.boots {
            // Every record of the earlier boot is now in a batch file (kept) or in a new journal:
            // its commit covers all generations, and its journals go.
            let path = directory.join(format!("{boot_epoch}.commit"));
            write_atomically(directory, &path, &commit_bytes(u64::MAX, next_sequence))?;
            for entry in fs::read_dir(directory).map_err(io_error(directory))? {
                let entry = entry.map_err(io_error(directory))?;
                if let FileKind::Journal {
                    boot_epoch: owner, ..
                } = kind_of(&entry.file_name().to_string_lossy())
                    && owner == boot_epoch
                {
                    fs::remove_file(entry.path()).map_err(io_error(&entry.path()))?;
                }
            }
            let left = recovery
                .batches
                .iter()
                .filter(|batch| batch.boot_epoch == boot_epoch)
                .count();
            if left == 0 {
                fs::remove_file(&path).map_err(io_error(&path))?;
            } else {
                writer.recovered.insert(boot_epoch, left);
            }
        }
        bytes.store(directory_bytes(directory), Ordering::Relaxed);
        let (commands, receiver) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("hitcount-spool".to_owned())
            .spawn(move || writer.run(receiver))
            .map_err(io_error(directory))?;
        Ok(Self {
            commands,
            bytes,
            bytes_max,
        })
    }

    /// The spool holds its maximum: refuse new hits until deliveries shrink it.
    pub fn is_full(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) >= self.bytes_max
    }

    /// Queues journal records; the receiver answers once they are on disk. Called under the
    /// instance's lock, so records reach the file in the order the instance counted them.
    ///
    /// The channel is unbounded because every sender waits for its answer: what is queued is
    /// bounded by the requests in flight.
    pub fn append(&self, boot_epoch: u64, bytes: Vec<u8>) -> oneshot::Receiver<Result<(), String>> {
        let (done, answer) = oneshot::channel();
        let _ = self.commands.send(Command::Append {
            boot_epoch,
            bytes,
            done,
        });
        answer
    }

    /// Queues a commit of newly sealed batches; see the module documentation.
    pub fn commit(&self, commit: BatchCommit) -> oneshot::Receiver<Result<(), String>> {
        let (done, answer) = oneshot::channel();
        let _ = self.commands.send(Command::Commit { commit, done });
        answer
    }

    /// The aggregator acknowledged a batch: its file goes.
    pub fn acknowledged(&self, boot_epoch: u64, sequence: u64) {
        let _ = self.commands.send(Command::Acknowledged {
            boot_epoch,
            sequence,
        });
    }
}

/// Waits for a queued spool operation.
pub async fn wait(answer: oneshot::Receiver<Result<(), String>>) -> Result<(), String> {
    answer
        .await
        .unwrap_or_else(|_| Err(SpoolError::Stopped.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(generation: u64, resource_id: &str) -> Vec<u8> {
        let mut bytes = Vec::new();
        put_journal_record(&mut bytes, generation, resource_id, 1, generation);
        bytes
    }

    #[tokio::test]
    async fn committed_generations_are_not_replayed_and_committed_batches_are_resent() {
        let directory = tempfile::tempdir().unwrap();
        let spool = Spool::start(directory.path(), &Recovery::default(), &[], u64::MAX).unwrap();
        for (generation, resource) in [(1, "a"), (1, "b"), (2, "c")] {
            wait(spool.append(7, record(generation, resource)))
                .await
                .unwrap();
        }
        // Generation 1 sealed into batch 0; generation 2 is still open.
        wait(spool.commit(BatchCommit {
            boot_epoch: 7,
            open_generation: 2,
            generation: 1,
            next_sequence: 1,
            batches: vec![(0, b"batch zero".to_vec())],
        }))
        .await
        .unwrap();
        wait(spool.append(7, record(2, "d"))).await.unwrap();
        // A batch written but not committed (a crash between the two): never sent, not resent.
        fs::write(directory.path().join("7.1.batch"), b"uncommitted").unwrap();
        // A torn append at the end of the open journal.
        let open_journal = directory.path().join("7.1.journal");
        let mut file = OpenOptions::new().append(true).open(&open_journal).unwrap();
        file.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();

        let recovery = recover(directory.path()).unwrap();
        assert_eq!(
            recovery.batches,
            vec![RecoveredBatch {
                boot_epoch: 7,
                sequence: 0,
                bytes: b"batch zero".to_vec()
            }]
        );
        let replay: Vec<String> = decode_journal(&recovery.journal)
            .unwrap()
            .into_iter()
            .map(|record| record.resource_id)
            .collect();
        assert_eq!(replay, ["c", "d"], "generation 1 is in batch 0");
        assert!(!directory.path().join("7.1.batch").exists());
        assert!(
            directory.path().join("7.0.journal").exists(),
            "closed with generation 2 possible, so no commit so far covers it"
        );

        // The next run replays c and d under its own boot epoch; the earlier boot's journals
        // go, its committed batch stays until acknowledged.
        let next = Spool::start(
            directory.path(),
            &recovery,
            &[(8, recovery.journal.clone())],
            u64::MAX,
        )
        .unwrap();
        let again = recover(directory.path()).unwrap();
        assert_eq!(again.batches.len(), 1);
        assert_eq!(again.journal, recovery.journal, "replayed once, not twice");
        next.acknowledged(7, 0);
        // Acknowledgements are applied in order with the next commands.
        wait(next.append(8, record(1, "e"))).await.unwrap();
        assert!(!directory.path().join("7.0.batch").exists());
        assert!(!directory.path().join("7.commit").exists());
    }
}
