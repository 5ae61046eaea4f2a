//! The embedded store's part of resource patterns (see `store/patterns.rs`).

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};

use super::{EmbeddedStore, classify, millis, unmillis};
use crate::patterns::{PatternRecord, PatternStore};
use crate::records::{ResourceRecord, StoreError};

/// A row of `SELECT id, name, retention_days, created_at_ms FROM resources`.
pub(super) fn resource_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ResourceRecord> {
    Ok(ResourceRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        retention_days: row.get(2)?,
        created_at_ms: unmillis(row.get(3)?),
    })
}

#[async_trait::async_trait]
impl PatternStore for EmbeddedStore {
    async fn patterns(&self) -> Result<Vec<PatternRecord>, StoreError> {
        self.read(|connection| {
            let mut statement = connection.prepare(
                "SELECT pattern, resources_max, retention_days, refused_hits, created_at_ms
                 FROM patterns ORDER BY pattern",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(PatternRecord {
                    pattern: row.get(0)?,
                    resources_max: unmillis(row.get(1)?),
                    retention_days: row.get(2)?,
                    refused_hits: unmillis(row.get(3)?),
                    created_at_ms: unmillis(row.get(4)?),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn create_pattern(&self, record: PatternRecord) -> Result<bool, StoreError> {
        self.write(move |connection| {
            let inserted = connection
                .execute(
                    "INSERT INTO patterns (pattern, resources_max, retention_days, refused_hits, created_at_ms)
                     VALUES (?1, ?2, ?3, 0, ?4) ON CONFLICT (pattern) DO NOTHING",
                    params![
                        record.pattern,
                        millis(record.resources_max),
                        record.retention_days,
                        millis(record.created_at_ms)
                    ],
                )
                .map_err(classify)?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn delete_pattern(&self, pattern: String) -> Result<bool, StoreError> {
        self.write(move |connection| {
            let deleted = connection
                .execute("DELETE FROM patterns WHERE pattern = ?1", [&pattern])
                .map_err(classify)?;
            Ok(deleted == 1)
        })
        .await
    }

    async fn add_refused_hits(&self, counts: Vec<(String, u64)>) -> Result<(), StoreError> {
        self.write(move |connection| {
            let transaction = connection.transaction().map_err(classify)?;
            {
                let mut add = transaction.prepare_cached(
                    "UPDATE patterns SET refused_hits = refused_hits + ?2 WHERE pattern = ?1",
                )?;
                for (pattern, hits) in &counts {
                    add.execute(params![pattern, millis(*hits)])
                        .map_err(classify)?;
                }
            }
            transaction.commit().map_err(classify)?;
            Ok(())
        })
        .await
    }

    async fn resources_current(
        &self,
        ids: Vec<String>,
        created_since_ms: Option<u64>,
    ) -> Result<Vec<ResourceRecord>, StoreError> {
        self.read(move |connection| {
            let snapshot = connection.unchecked_transaction()?;
            let mut found = BTreeMap::new();
            {
                let mut by_id = snapshot.prepare_cached(
                    "SELECT id, name, retention_days, created_at_ms FROM resources WHERE id = ?1",
                )?;
                for id in &ids {
                    if let Some(record) = by_id.query_row([id], resource_row).optional()? {
                        found.insert(record.id.clone(), record);
                    }
                }
                if let Some(since_ms) = created_since_ms {
                    let mut recent = snapshot.prepare_cached(
                        "SELECT id, name, retention_days, created_at_ms FROM resources
                         WHERE created_at_ms >= ?1",
                    )?;
                    for record in recent.query_map([millis(since_ms)], resource_row)? {
                        let record = record?;
                        found.insert(record.id.clone(), record);
                    }
                }
            }
            snapshot.commit()?;
            Ok(found.into_values().collect())
        })
        .await
    }

    async fn insert_resources_if_absent(
        &self,
        mut records: Vec<ResourceRecord>,
    ) -> Result<Vec<ResourceRecord>, StoreError> {
        records.sort_by(|a, b| a.id.cmp(&b.id));
        self.write(move |connection| {
            let transaction = connection
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(classify)?;
            let mut stored = Vec::with_capacity(records.len());
            {
                // No conflict target: an id or a name that exists already is skipped alike.
                let mut insert = transaction.prepare_cached(
                    "INSERT INTO resources (id, name, retention_days, created_at_ms)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                )?;
                let mut select = transaction.prepare_cached(
                    "SELECT id, name, retention_days, created_at_ms FROM resources WHERE id = ?1",
                )?;
                for record in &records {
                    insert
                        .execute(params![
                            record.id,
                            record.name,
                            record.retention_days,
                            millis(record.created_at_ms)
                        ])
                        .map_err(classify)?;
                    if let Some(row) = select.query_row([&record.id], resource_row).optional()? {
                        stored.push(row);
                    }
                }
            }
            transaction.commit().map_err(classify)?;
            Ok(stored)
        })
        .await
    }
}
