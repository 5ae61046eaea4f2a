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
//!
//! `files.rs` names and frames the files, `recovery.rs` decides what a start does with what it
//! finds (a pure function of the directory's names and commit files, property-tested), and
//! `writer.rs` is the thread that writes them.

mod files;
mod recovery;
mod writer;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use files::FileKind;
pub use recovery::recover;
use writer::{Command, Writer};

/// Default bound on the spool's size. Past it, beacons get 503 (as when the pending map is
/// full): the spool grows with hits during an outage, unlike memory.
pub const SPOOL_BYTES_MAX_DEFAULT: u64 = 1024 * 1024 * 1024;

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

/// Why the spool could not do something. Clone, because one failed fsync answers every append
/// that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: Arc<io::Error>,
    },
    #[error("spool {path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("the spool writer has stopped")]
    Stopped,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source: Arc::new(source),
    }
}

/// Newly sealed batches of one instance, and what they cover.
#[derive(Debug)]
pub struct BatchCommit {
    pub boot_epoch: u64,
    /// The most a record in the current journal file can carry: the open window's generation,
    /// or the one before it when the open window is empty. The file is closed with it.
    pub open_generation: u64,
    /// Journal records up to this generation are in these batches or earlier ones.
    pub generation: u64,
    /// One past the last sequence committed.
    pub next_sequence: u64,
    /// (sequence, bytes), in sequence order.
    pub batches: Vec<(u64, Vec<u8>)>,
}

/// The handle the edge holds; cheap to clone.
#[derive(Debug, Clone)]
pub struct Spool {
    commands: mpsc::UnboundedSender<Command>,
    bytes: Arc<AtomicU64>,
    bytes_max: u64,
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
        let mut writer = Writer::new(directory.to_path_buf(), Arc::clone(&bytes));
        for (boot_epoch, journal) in replayed {
            if !journal.is_empty() {
                writer.append(*boot_epoch, journal)?;
            }
        }
        writer.sync_journals()?;
        for (&boot_epoch, &next_sequence) in &recovery.boots {
            // Every record of the earlier boot is now in a batch file (kept) or in a new journal:
            // its commit covers all generations, and its journals go.
            let path = directory.join(files::commit_name(boot_epoch));
            files::write_atomically(
                directory,
                &path,
                &files::commit_bytes(u64::MAX, next_sequence),
            )?;
            for name in files::list(directory)? {
                if let FileKind::Journal {
                    boot_epoch: owner, ..
                } = files::kind_of(&name)
                    && owner == boot_epoch
                {
                    files::remove(&files::path_in(directory, &name))?;
                }
            }
            let left = recovery
                .batches
                .iter()
                .filter(|batch| batch.boot_epoch == boot_epoch)
                .count();
            if left == 0 {
                files::remove(&path)?;
            } else {
                writer.recovered.insert(boot_epoch, left);
            }
        }
        bytes.store(files::directory_bytes(directory), Ordering::Relaxed);
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
    pub fn append(
        &self,
        boot_epoch: u64,
        bytes: Vec<u8>,
    ) -> oneshot::Receiver<Result<(), SpoolError>> {
        let (done, answer) = oneshot::channel();
        let _ = self.commands.send(Command::Append {
            boot_epoch,
            bytes,
            done,
        });
        answer
    }

    /// Queues a commit of newly sealed batches; see the module documentation.
    pub fn commit(&self, commit: BatchCommit) -> oneshot::Receiver<Result<(), SpoolError>> {
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

    /// Answers once the writer has done everything queued before: at a clean stop, the files of
    /// the last acknowledged batches are gone before the process exits (else the next start
    /// would send them again, answered as duplicates).
    pub fn settle(&self) -> oneshot::Receiver<Result<(), SpoolError>> {
        let (done, answer) = oneshot::channel();
        let _ = self.commands.send(Command::Settle { done });
        answer
    }
}

/// Waits for a queued spool operation.
pub async fn wait(answer: oneshot::Receiver<Result<(), SpoolError>>) -> Result<(), SpoolError> {
    answer.await.unwrap_or(Err(SpoolError::Stopped))
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::io::Write;

    use hitcount_wire::journal::{decode_journal, put_journal_record};

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
