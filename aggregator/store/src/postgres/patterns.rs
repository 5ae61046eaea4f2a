//! PostgreSQL's part of resource patterns (see `store/patterns.rs`).

use sqlx::Row;
use sqlx::postgres::PgRow;

use super::{PgStore, classify, signed, unsigned};
use crate::patterns::{PatternRecord, PatternStore};
use crate::records::{ResourceRecord, StoreError};

fn resource_row(row: PgRow) -> Result<ResourceRecord, sqlx::Error> {
    let retention: Option<i32> = row.try_get(2)?;
    Ok(ResourceRecord {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        retention_days: retention.map(|days| days.max(0) as u32),
        created_at_ms: unsigned(row.try_get(3)?),
    })
}

/// Rows of `SELECT id, name, retention_days, created_at_ms FROM resources`.
pub(super) fn resource_rows(rows: Vec<PgRow>) -> Result<Vec<ResourceRecord>, StoreError> {
    rows.into_iter()
        .map(resource_row)
        .collect::<Result<_, _>>()
        .map_err(classify)
}

#[async_trait::async_trait]
impl PatternStore for PgStore {
    async fn patterns(&self) -> Result<Vec<PatternRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT pattern, resources_max, retention_days, refused_hits, created_at_ms
             FROM patterns ORDER BY pattern",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.into_iter()
            .map(|row| {
                let retention: Option<i32> = row.try_get(2)?;
                Ok(PatternRecord {
                    pattern: row.try_get(0)?,
                    resources_max: unsigned(row.try_get(1)?),
                    retention_days: retention.map(|days| days.max(0) as u32),
                    refused_hits: unsigned(row.try_get(3)?),
                    created_at_ms: unsigned(row.try_get(4)?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(classify)
    }

    async fn create_pattern(&self, record: PatternRecord) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO patterns (pattern, resources_max, retention_days, refused_hits, created_at_ms)
             VALUES ($1, $2, $3, 0, $4) ON CONFLICT (pattern) DO NOTHING",
        )
        .bind(&record.pattern)
        .bind(signed(record.resources_max))
        .bind(record.retention_days.map(|days| days as i32))
        .bind(signed(record.created_at_ms))
        .execute(&self.pool)
        .await
        .map_err(classify)?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn delete_pattern(&self, pattern: String) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM patterns WHERE pattern = $1")
            .bind(&pattern)
            .execute(&self.pool)
            .await
            .map_err(classify)?
            .rows_affected();
        Ok(deleted == 1)
    }

    async fn add_refused_hits(&self, counts: Vec<(String, u64)>) -> Result<(), StoreError> {
        let (patterns, hits): (Vec<String>, Vec<i64>) = counts
            .into_iter()
            .map(|(pattern, hits)| (pattern, signed(hits)))
            .unzip();
        sqlx::query(
            "UPDATE patterns p SET refused_hits = p.refused_hits + a.hits
             FROM unnest($1::text[], $2::int8[]) AS a(pattern, hits)
             WHERE p.pattern = a.pattern",
        )
        .bind(&patterns)
        .bind(&hits)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn resources_current(
        &self,
        ids: Vec<String>,
        created_since_ms: Option<u64>,
    ) -> Result<Vec<ResourceRecord>, StoreError> {
        // The recent resources are asked for in the same statement (one snapshot) only when
        // wanted, about once a second; the lookup by id alone is a walk of the primary key.
        let query = match created_since_ms {
            None => sqlx::query(
                "SELECT id, name, retention_days, created_at_ms FROM resources
                 WHERE id = ANY($1) ORDER BY id",
            )
            .bind(&ids),
            Some(since_ms) => sqlx::query(
                "SELECT id, name, retention_days, created_at_ms FROM resources WHERE id = ANY($1)
                 UNION
                 SELECT id, name, retention_days, created_at_ms FROM resources
                 WHERE created_at_ms >= $2
                 ORDER BY id",
            )
            .bind(&ids)
            .bind(signed(since_ms)),
        };
        let rows = query.fetch_all(&self.pool).await.map_err(classify)?;
        resource_rows(rows)
    }

    async fn insert_resources_if_absent(
        &self,
        mut records: Vec<ResourceRecord>,
    ) -> Result<Vec<ResourceRecord>, StoreError> {
        // In id order, so two aggregators creating overlapping sets wait for each other's rows
        // in the same order and cannot deadlock.
        records.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<&str> = records.iter().map(|record| record.id.as_str()).collect();
        let names: Vec<&str> = records.iter().map(|record| record.name.as_str()).collect();
        let retention: Vec<Option<i32>> = records
            .iter()
            .map(|record| record.retention_days.map(|days| days as i32))
            .collect();
        let created: Vec<i64> = records
            .iter()
            .map(|record| signed(record.created_at_ms))
            .collect();
        let mut transaction = self.begin().await?;
        // No conflict target: an id or a name that exists already is skipped alike. Waiting on
        // another aggregator's uncommitted row of the same id ends in "skipped", not an error.
        sqlx::query(
            "INSERT INTO resources (id, name, retention_days, created_at_ms)
             SELECT id, name, retention_days, created_at_ms
             FROM unnest($1::text[], $2::text[], $3::int4[], $4::int8[])
                  WITH ORDINALITY AS r(id, name, retention_days, created_at_ms, position)
             ORDER BY position
             ON CONFLICT DO NOTHING",
        )
        .bind(&ids)
        .bind(&names)
        .bind(&retention)
        .bind(&created)
        .execute(&mut *transaction)
        .await
        .map_err(classify)?;
        let rows = sqlx::query(
            "SELECT id, name, retention_days, created_at_ms FROM resources
             WHERE id = ANY($1) ORDER BY id",
        )
        .bind(&ids)
        .fetch_all(&mut *transaction)
        .await
        .map_err(classify)?;
        transaction.commit().await.map_err(classify)?;
        resource_rows(rows)
    }
}
