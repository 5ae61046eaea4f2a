//! The spool's writer thread: appends journal frames and makes them durable in groups (one fsync
//! for every append queued meanwhile), writes commits, and retires files that are done with.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::files;
use super::{BatchCommit, SpoolError, io_error};

/// Appends gathered into one fsync at most.
const GROUP_COMMANDS_MAX: usize = 4_096;

pub(super) enum Command {
    Append {
        boot_epoch: u64,
        bytes: Vec<u8>,
        done: oneshot::Sender<Result<(), SpoolError>>,
    },
    Commit {
        commit: BatchCommit,
        done: oneshot::Sender<Result<(), SpoolError>>,
    },
    Acknowledged {
        boot_epoch: u64,
        sequence: u64,
    },
    /// Answered once every command queued before it is done.
    Settle {
        done: oneshot::Sender<Result<(), SpoolError>>,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::Append { .. } => "Append",
            Self::Commit { .. } => "Commit",
            Self::Acknowledged { .. } => "Acknowledged",
            Self::Settle { .. } => "Settle",
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

pub(super) struct Writer {
    directory: PathBuf,
    /// Per boot epoch: journal files by number, the last one open.
    journals: HashMap<u64, BTreeMap<u64, JournalFile>>,
    /// Per boot epoch of an earlier run: its batch files not yet acknowledged.
    pub(super) recovered: HashMap<u64, usize>,
    bytes: Arc<AtomicU64>,
}

impl Writer {
    pub(super) fn new(directory: PathBuf, bytes: Arc<AtomicU64>) -> Self {
        Self {
            directory,
            journals: HashMap::new(),
            recovered: HashMap::new(),
            bytes,
        }
    }

    fn current_journal(&mut self, boot_epoch: u64) -> Result<&mut JournalFile, SpoolError> {
        let files = self.journals.entry(boot_epoch).or_default();
        debug_assert!(
            files
                .values()
                .rev()
                .skip(1)
                .all(|journal| journal.generation_max.is_some() && journal.file.is_none()),
            "only a boot's last journal file may be open: appends go to one file, in order"
        );
        let number = match files.last_key_value() {
            Some((number, file)) if file.generation_max.is_none() => *number,
            Some((number, _)) => number + 1,
            None => 0,
        };
        if let std::collections::btree_map::Entry::Vacant(vacant) = files.entry(number) {
            let path = self.directory.join(files::journal_name(boot_epoch, number));
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

    pub(super) fn append(&mut self, boot_epoch: u64, bytes: &[u8]) -> Result<(), SpoolError> {
        let framed = files::frame(bytes);
        let journal = self.current_journal(boot_epoch)?;
        let path = journal.path.clone();
        if let Some(file) = &mut journal.file {
            file.write_all(&framed).map_err(io_error(&path))?;
        }
        self.bytes.fetch_add(framed.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn sync_journals(&mut self) -> Result<(), SpoolError> {
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
        // Recovery resends batches below the commit's sequence and deletes the others.
        debug_assert!(
            batches.windows(2).all(|pair| pair[0].0 < pair[1].0)
                && batches
                    .iter()
                    .all(|(sequence, _)| *sequence < next_sequence),
            "a commit's batches are in sequence order, each below the sequence it commits up to"
        );
        // Journal records before the commit are durable first (they were synced with their
        // group), then the batches, then the commit file's rename makes them count.
        for (sequence, bytes) in batches {
            let path = self
                .directory
                .join(files::batch_name(boot_epoch, *sequence));
            files::write_atomically(&self.directory, &path, bytes)?;
            self.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        let path = self.directory.join(files::commit_name(boot_epoch));
        files::write_atomically(
            &self.directory,
            &path,
            &files::commit_bytes(generation, next_sequence),
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
                    files::remove(&journal.path)?;
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
        let path = self.directory.join(files::batch_name(boot_epoch, sequence));
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
                let commit = self.directory.join(files::commit_name(boot_epoch));
                files::remove(&commit)?;
            }
        }
        Ok(())
    }

    pub(super) fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut group = Vec::with_capacity(GROUP_COMMANDS_MAX);
        while let Some(first) = commands.blocking_recv() {
            group.push(first);
            while group.len() < GROUP_COMMANDS_MAX {
                match commands.try_recv() {
                    Ok(command) => group.push(command),
                    Err(_) => break,
                }
            }
            let mut waiting: Vec<oneshot::Sender<Result<(), SpoolError>>> = Vec::new();
            let mut failure: Option<SpoolError> = None;
            for command in group.drain(..) {
                match command {
                    Command::Append {
                        boot_epoch,
                        bytes,
                        done,
                    } => {
                        if let Err(error) = self.append(boot_epoch, &bytes) {
                            failure = Some(error);
                        }
                        waiting.push(done);
                    }
                    Command::Commit { commit, done } => {
                        // Appends before a commit are in the journal before it.
                        let synced = self.sync_journals();
                        answer(&mut waiting, &mut failure, synced);
                        let committed = self.commit(&commit);
                        let _ = done.send(committed);
                    }
                    Command::Acknowledged {
                        boot_epoch,
                        sequence,
                    } => {
                        if let Err(error) = self.acknowledged(boot_epoch, sequence) {
                            tracing::warn!(%error, "could not remove an acknowledged batch");
                        }
                    }
                    // Commands run in order: the ones before it are done.
                    Command::Settle { done } => waiting.push(done),
                }
            }
            let synced = self.sync_journals();
            answer(&mut waiting, &mut failure, synced);
            debug_assert!(
                waiting.is_empty() && failure.is_none(),
                "every append of a group is answered once, with the fsync that covers it"
            );
        }
    }
}

/// Tells every append waiting for the fsync how it went.
fn answer(
    waiting: &mut Vec<oneshot::Sender<Result<(), SpoolError>>>,
    failure: &mut Option<SpoolError>,
    synced: Result<(), SpoolError>,
) {
    let result = match (failure.take(), synced) {
        (Some(error), _) => Err(error),
        (None, Err(error)) => Err(error),
        (None, Ok(())) => Ok(()),
    };
    for done in waiting.drain(..) {
        let _ = done.send(result.clone());
    }
}
