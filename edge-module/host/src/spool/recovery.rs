//! What a start finds in the spool. [`plan`] decides, from the directory's names and the commit
//! files' contents alone, what to resend, what to delete and which journal records to count
//! again; [`recover`] reads the directory, asks [`plan`] and carries it out.

use std::collections::BTreeMap;
use std::path::Path;

use hitcount_wire::journal::{decode_journal, put_journal_record};

use super::files::{self, FileKind};
use super::{RecoveredBatch, Recovery, SpoolError};

/// One boot epoch found in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BootPlan {
    /// Its journal files, in the order they were written.
    pub journals: Vec<String>,
    /// Records of these journals with a generation above this are counted again; the others are
    /// in committed batches. 0 when the boot never committed.
    pub replay_after_generation: u64,
    /// The sequence its next batch would have had; committed batches are below it.
    pub next_sequence: u64,
}

/// Recovery's decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Plan {
    /// Committed batches to resend, as (boot epoch, sequence), in order.
    pub resend: Vec<(u64, u64)>,
    /// Files that were never committed (so never sent) or never renamed: deleted.
    pub delete: Vec<String>,
    pub boots: BTreeMap<u64, BootPlan>,
}

/// Decides recovery from the names in the spool directory and, for each boot epoch with a
/// commit file, what it holds: (last committed generation, next uncommitted sequence). A batch
/// is resent exactly when its boot's commit covers its sequence; journals and commit files are
/// never deleted here (the next [`super::Spool::start`] retires them once their records are
/// durable again); names that are none of the spool's are left alone.
pub(super) fn plan(names: &[String], commits: &BTreeMap<u64, (u64, u64)>) -> Plan {
    let mut journals: BTreeMap<u64, BTreeMap<u64, String>> = BTreeMap::new();
    let mut batches: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut plan = Plan::default();
    for name in names {
        match files::kind_of(name) {
            FileKind::Journal { boot_epoch, number } => {
                journals
                    .entry(boot_epoch)
                    .or_default()
                    .insert(number, name.clone());
            }
            FileKind::Batch {
                boot_epoch,
                sequence,
            } => {
                batches.insert((boot_epoch, sequence), name.clone());
            }
            FileKind::Temporary => plan.delete.push(name.clone()),
            FileKind::Commit { .. } | FileKind::Other => {}
        }
    }
    for ((boot_epoch, sequence), name) in batches {
        let next_sequence = commits.get(&boot_epoch).map_or(0, |commit| commit.1);
        if sequence < next_sequence {
            plan.resend.push((boot_epoch, sequence));
        } else {
            // Written but never committed, so never sent: its hits are replayed from the journal.
            plan.delete.push(name);
        }
    }
    debug_assert!(
        plan.resend.windows(2).all(|pair| pair[0] < pair[1]),
        "committed batches are resent once each, in (boot epoch, sequence) order"
    );
    let boots: std::collections::BTreeSet<u64> =
        journals.keys().chain(commits.keys()).copied().collect();
    for boot_epoch in boots {
        let (generation, next_sequence) = commits.get(&boot_epoch).copied().unwrap_or((0, 0));
        plan.boots.insert(
            boot_epoch,
            BootPlan {
                journals: journals
                    .remove(&boot_epoch)
                    .map(|files| files.into_values().collect())
                    .unwrap_or_default(),
                replay_after_generation: generation,
                next_sequence,
            },
        );
    }
    assert!(
        journals.is_empty(),
        "every journal is planned under its boot: none is left without a fate"
    );
    debug_assert!(
        plan.resend.iter().all(|(boot_epoch, sequence)| {
            plan.boots
                .get(boot_epoch)
                .is_some_and(|boot| *sequence < boot.next_sequence)
        }),
        "a batch is resent only when its boot's commit covers its sequence"
    );
    plan
}

/// Reads what earlier runs left in `directory` (created if missing).
pub fn recover(directory: &Path) -> Result<Recovery, SpoolError> {
    let names = files::list(directory)?;
    let mut commits = BTreeMap::new();
    for name in &names {
        if let FileKind::Commit { boot_epoch } = files::kind_of(name) {
            commits.insert(
                boot_epoch,
                files::read_commit(&files::path_in(directory, name))?,
            );
        }
    }
    let plan = plan(&names, &commits);
    for name in &plan.delete {
        files::remove(&files::path_in(directory, name))?;
    }
    let mut recovery = Recovery::default();
    for &(boot_epoch, sequence) in &plan.resend {
        let path = files::path_in(directory, &files::batch_name(boot_epoch, sequence));
        recovery.batches.push(RecoveredBatch {
            boot_epoch,
            sequence,
            bytes: files::read_file(&path)?,
        });
    }
    for (&boot_epoch, boot) in &plan.boots {
        for name in &boot.journals {
            let path = files::path_in(directory, name);
            for frame in files::read_frames(&path)? {
                let records = decode_journal(&frame).map_err(|error| SpoolError::Malformed {
                    path: path.clone(),
                    reason: error.to_string(),
                })?;
                for record in records
                    .iter()
                    .filter(|record| record.generation > boot.replay_after_generation)
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
        recovery.boots.insert(boot_epoch, boot.next_sequence);
    }
    Ok(recovery)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A spool directory's names: each of the spool's kinds and some strangers, over a few boot
    /// epochs, with a commit (generation, next sequence) for some boots.
    fn directory() -> impl Strategy<Value = (Vec<String>, BTreeMap<u64, (u64, u64)>)> {
        let name = (0u64..4, 0u64..6, 0u8..5).prop_map(|(boot, number, kind)| match kind {
            0 => files::journal_name(boot, number),
            1 | 2 => files::batch_name(boot, number),
            3 => format!("{boot}.{number}.tmp"),
            _ => format!("notes-{number}.txt"),
        });
        (
            proptest::collection::btree_set(name, 0..24),
            proptest::collection::btree_map(0u64..4, (0u64..8, 0u64..8), 0..4),
        )
            .prop_map(|(names, commits)| {
                let mut names: Vec<String> = names.into_iter().collect();
                names.extend(commits.keys().map(|boot| files::commit_name(*boot)));
                (names, commits)
            })
    }

    proptest! {
        #[test]
        fn every_file_gets_exactly_one_fate((names, commits) in directory()) {
            let plan = plan(&names, &commits);
            for name in &names {
                let deleted = plan.delete.contains(name);
                let journaled = plan.boots.values().any(|boot| boot.journals.contains(name));
                let resent = match files::kind_of(name) {
                    FileKind::Batch { boot_epoch, sequence } => plan.resend.contains(&(boot_epoch, sequence)),
                    _ => false,
                };
                match files::kind_of(name) {
                    FileKind::Batch { boot_epoch, sequence } => {
                        let committed = commits.get(&boot_epoch).is_some_and(|commit| sequence < commit.1);
                        // Resent exactly when committed; otherwise never sent, so deleted.
                        prop_assert_eq!(resent, committed, "{}", name);
                        prop_assert_eq!(deleted, !committed, "{}", name);
                        prop_assert!(!journaled);
                    }
                    FileKind::Journal { boot_epoch, .. } => {
                        prop_assert!(!deleted, "{} deleted before its records are durable again", name);
                        prop_assert!(plan.boots[&boot_epoch].journals.contains(name));
                    }
                    FileKind::Temporary => prop_assert!(deleted, "{}", name),
                    FileKind::Commit { boot_epoch } => {
                        prop_assert!(!deleted);
                        prop_assert!(plan.boots.contains_key(&boot_epoch));
                    }
                    FileKind::Other => prop_assert!(!deleted && !journaled, "{} touched", name),
                }
            }
            prop_assert_eq!(plan.resend.len() + plan.delete.len(),
                names.iter().filter(|name| matches!(files::kind_of(name), FileKind::Batch { .. } | FileKind::Temporary)).count());
        }

        #[test]
        fn replay_starts_after_the_commit_and_keeps_journal_order((names, commits) in directory()) {
            let plan = plan(&names, &commits);
            for (boot_epoch, boot) in &plan.boots {
                let commit = commits.get(boot_epoch).copied().unwrap_or((0, 0));
                prop_assert_eq!(boot.replay_after_generation, commit.0);
                prop_assert_eq!(boot.next_sequence, commit.1);
                let numbers: Vec<u64> = boot.journals.iter().map(|name| match files::kind_of(name) {
                    FileKind::Journal { number, .. } => number,
                    _ => u64::MAX,
                }).collect();
                prop_assert!(numbers.windows(2).all(|pair| pair[0] < pair[1]), "{:?}", numbers);
            }
            // Every boot with a journal or a commit is planned, and no other.
            for name in &names {
                if let FileKind::Journal { boot_epoch, .. } | FileKind::Commit { boot_epoch } = files::kind_of(name) {
                    prop_assert!(plan.boots.contains_key(&boot_epoch));
                }
            }
            prop_assert!(plan.resend.windows(2).all(|pair| pair[0] < pair[1]));
        }
    }
}
