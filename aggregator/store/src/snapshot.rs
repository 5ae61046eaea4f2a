//! PostgreSQL's transaction snapshots: which commits a rebuild of the hot tier saw. Only
//! `postgres.rs` makes them; the hot tier compares them with the transactions of its writes.

/// Which transactions a PostgreSQL snapshot sees, as `pg_current_snapshot()` writes it
/// (`xmin:xmax:in-progress,...`): every transaction below `xmin`, and those below `xmax` that
/// were not in progress. Ids are 64-bit (`xid8`), so they never wrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionSnapshot {
    xmin: u64,
    xmax: u64,
    in_progress: Vec<u64>,
}

impl TransactionSnapshot {
    /// Parses `pg_current_snapshot()::text`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let in_progress = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?,
        };
        if parts.next().is_some() || xmin > xmax {
            return None;
        }
        Some(Self {
            xmin,
            xmax,
            in_progress,
        })
    }

    /// True when the transaction had committed (or aborted) before the snapshot was taken.
    pub fn sees(&self, transaction: u64) -> bool {
        transaction < self.xmin
            || (transaction < self.xmax && !self.in_progress.contains(&transaction))
    }
}

impl std::fmt::Display for TransactionSnapshot {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let in_progress: Vec<String> = self.in_progress.iter().map(u64::to_string).collect();
        write!(
            formatter,
            "{}:{}:{}",
            self.xmin,
            self.xmax,
            in_progress.join(",")
        )
    }
}
