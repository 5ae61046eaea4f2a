//! The spool's files: their names, the journal's CRC-framed records, the commit file, and the
//! write-fsync-rename that makes a file appear whole or not at all.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{SpoolError, io_error};

/// Length and CRC-32 of a frame's payload, each a little-endian u32.
const FRAME_HEADER_BYTES: usize = 8;
/// A commit file: the last committed generation and the next uncommitted sequence, each a
/// little-endian u64.
const COMMIT_FILE_BYTES: usize = 16;

/// What a file in the spool directory is, by its name alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    Journal {
        boot_epoch: u64,
        number: u64,
    },
    Batch {
        boot_epoch: u64,
        sequence: u64,
    },
    Commit {
        boot_epoch: u64,
    },
    /// A write that never reached its rename.
    Temporary,
    Other,
}

pub(super) fn kind_of(name: &str) -> FileKind {
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
        [.., "tmp"] => FileKind::Temporary,
        _ => FileKind::Other,
    }
}

pub(super) fn journal_name(boot_epoch: u64, number: u64) -> String {
    let name = format!("{boot_epoch}.{number}.journal");
    debug_assert_eq!(
        kind_of(&name),
        FileKind::Journal { boot_epoch, number },
        "a journal's name reads back as that journal, so recovery finds it"
    );
    name
}

pub(super) fn batch_name(boot_epoch: u64, sequence: u64) -> String {
    let name = format!("{boot_epoch}.{sequence}.batch");
    debug_assert_eq!(
        kind_of(&name),
        FileKind::Batch {
            boot_epoch,
            sequence
        },
        "a batch's name reads back as that batch, so recovery finds it"
    );
    name
}

pub(super) fn commit_name(boot_epoch: u64) -> String {
    let name = format!("{boot_epoch}.commit");
    debug_assert_eq!(
        kind_of(&name),
        FileKind::Commit { boot_epoch },
        "a commit file's name reads back as that boot's commit, so recovery finds it"
    );
    name
}

pub(super) fn frame(bytes: &[u8]) -> Vec<u8> {
    assert!(
        u32::try_from(bytes.len()).is_ok(),
        "a journal frame of {} bytes",
        bytes.len()
    );
    let mut framed = Vec::with_capacity(FRAME_HEADER_BYTES + bytes.len());
    framed.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    framed.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    framed.extend_from_slice(bytes);
    framed
}

/// The frames of a journal's bytes, up to the first torn or corrupt one (a crash in the middle
/// of an append leaves one; its hits were never answered), and how many bytes follow it.
pub(super) fn frames_of(bytes: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut frames = Vec::new();
    let mut rest = bytes;
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
    debug_assert_eq!(
        frames
            .iter()
            .map(|frame| FRAME_HEADER_BYTES + frame.len())
            .sum::<usize>()
            + rest.len(),
        bytes.len(),
        "a journal is its whole frames followed by the torn tail, nothing skipped or read twice"
    );
    (frames, rest.len())
}

pub(super) fn read_file(path: &Path) -> Result<Vec<u8>, SpoolError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(io_error(path))?;
    Ok(bytes)
}

/// Reads the frames of a journal file (see [`frames_of`]).
pub(super) fn read_frames(path: &Path) -> Result<Vec<Vec<u8>>, SpoolError> {
    let (frames, torn_bytes) = frames_of(&read_file(path)?);
    if torn_bytes > 0 {
        tracing::warn!(path = %path.display(), bytes = torn_bytes, "ignoring a torn journal tail");
    }
    Ok(frames)
}

pub(super) fn commit_bytes(generation: u64, next_sequence: u64) -> Vec<u8> {
    let mut bytes = generation.to_le_bytes().to_vec();
    bytes.extend_from_slice(&next_sequence.to_le_bytes());
    assert_eq!(
        bytes.len(),
        COMMIT_FILE_BYTES,
        "a commit file holds exactly what read_commit reads back"
    );
    bytes
}

/// (last committed generation, next uncommitted sequence) of a commit file.
pub(super) fn read_commit(path: &Path) -> Result<(u64, u64), SpoolError> {
    let bytes = read_file(path)?;
    // Written whole by rename, so a short file is not a torn write but someone else's file.
    let fields: [u8; COMMIT_FILE_BYTES] =
        bytes
            .as_slice()
            .try_into()
            .map_err(|_| SpoolError::Malformed {
                path: path.to_path_buf(),
                reason: format!("a commit file holds {COMMIT_FILE_BYTES} bytes"),
            })?;
    let generation = u64::from_le_bytes(fields[..8].try_into().unwrap_or_default());
    let next_sequence = u64::from_le_bytes(fields[8..].try_into().unwrap_or_default());
    Ok((generation, next_sequence))
}

pub(super) fn sync_directory(directory: &Path) -> Result<(), SpoolError> {
    File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error(directory))
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one whole.
pub(super) fn write_atomically(
    directory: &Path,
    path: &Path,
    bytes: &[u8],
) -> Result<(), SpoolError> {
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary).map_err(io_error(&temporary))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&temporary))?;
    fs::rename(&temporary, path).map_err(io_error(path))?;
    sync_directory(directory)
}

pub(super) fn remove(path: &Path) -> Result<(), SpoolError> {
    fs::remove_file(path).map_err(io_error(path))
}

/// The names in the spool directory (created if missing).
pub(super) fn list(directory: &Path) -> Result<Vec<String>, SpoolError> {
    fs::create_dir_all(directory).map_err(io_error(directory))?;
    let mut names = Vec::new();
    for entry in fs::read_dir(directory).map_err(io_error(directory))? {
        let entry = entry.map_err(io_error(directory))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

pub(super) fn directory_bytes(directory: &Path) -> u64 {
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

/// The path of a file of the spool.
pub(super) fn path_in(directory: &Path, name: &str) -> PathBuf {
    directory.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_their_kind() {
        assert_eq!(
            kind_of(&journal_name(7, 2)),
            FileKind::Journal {
                boot_epoch: 7,
                number: 2
            }
        );
        assert_eq!(
            kind_of(&batch_name(7, 3)),
            FileKind::Batch {
                boot_epoch: 7,
                sequence: 3
            }
        );
        assert_eq!(kind_of(&commit_name(7)), FileKind::Commit { boot_epoch: 7 });
        assert_eq!(kind_of("7.3.tmp"), FileKind::Temporary);
        for other in ["notes.txt", "x.1.journal", "7.commit.old", "7..batch", ""] {
            assert_eq!(kind_of(other), FileKind::Other, "{other:?}");
        }
    }

    #[test]
    fn frames_stop_at_a_torn_or_corrupt_one() {
        let mut bytes = frame(b"one");
        bytes.extend(frame(b"two"));
        let whole = bytes.len();
        assert_eq!(
            frames_of(&bytes),
            (vec![b"one".to_vec(), b"two".to_vec()], 0)
        );
        bytes.extend(&frame(b"three")[..5]);
        assert_eq!(frames_of(&bytes).0.len(), 2);
        assert_eq!(frames_of(&bytes).1, 5);
        bytes.truncate(whole);
        bytes[whole - 1] ^= 1;
        let (frames, torn) = frames_of(&bytes);
        assert_eq!(frames, vec![b"one".to_vec()]);
        assert_eq!(torn, 8 + 3);
    }
}
