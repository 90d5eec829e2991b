//! The PostgreSQL backend's consistency walk: what the constraints do not already guarantee.

use linkflow_store::record::decode_snapshot_record;
use linkflow_store::{Problem, StoreError, VerifyReport};

use crate::error::col;
use crate::store::{PgStore, PAGE};
use linkflow_store::EventStore;

fn problem(report: &mut VerifyReport, record: impl Into<String>, message: impl Into<String>) {
    report.problems.push(Problem {
        record: record.into(),
        message: message.into(),
    });
}

/// Checks:
/// - positions are exactly 1..=head (the primary key makes them unique);
/// - every stream holds versions 1..=n, its compacted records before its events;
/// - every event record (whole or compacted) decodes (checksum included) and matches its row,
///   dedupe key included;
/// - every snapshot decodes and is not ahead of its stream.
pub(crate) fn verify(store: &PgStore) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let head = store.head()?;

    let totals = store.query_rows(
        "SELECT count(*), coalesce(max(position), 0), count(DISTINCT stream) FROM linkflow_events",
        Vec::new(),
    )?;
    let (count, max, streams): (i64, i64, i64) = (
        col(&totals[0], 0)?,
        col(&totals[0], 1)?,
        col(&totals[0], 2)?,
    );
    report.streams = u64::try_from(streams).unwrap_or(0);
    if u64::try_from(max).ok() != Some(head.0) || u64::try_from(count).ok() != Some(head.0) {
        problem(
            &mut report,
            "linkflow_events",
            format!("holds {count} events up to position {max}; the head is {head}"),
        );
    }
    for row in store.query_rows(
        "SELECT stream, count(*), max(version) FROM linkflow_events
          GROUP BY stream HAVING count(*) <> max(version)",
        Vec::new(),
    )? {
        let stream: String = col(&row, 0)?;
        let (count, max): (i64, i64) = (col(&row, 1)?, col(&row, 2)?);
        problem(
            &mut report,
            format!("stream `{stream}`"),
            format!("gap: {count} events up to version {max}"),
        );
    }
    // Compaction compacts a stream through its version: its compacted records come first.
    for row in store.query_rows(
        "SELECT stream FROM linkflow_events GROUP BY stream
         HAVING max(version) FILTER (WHERE get_byte(record, 0) = 64)
              > min(version) FILTER (WHERE get_byte(record, 0) <> 64)",
        Vec::new(),
    )? {
        let stream: String = col(&row, 0)?;
        problem(
            &mut report,
            format!("stream `{stream}`"),
            "holds a compacted record after an event that is not",
        );
    }

    let mut after = 0i64;
    loop {
        let rows = store.query_rows(
            "SELECT stream, version, position, dedupe, record FROM linkflow_events
              WHERE position > $1 ORDER BY position LIMIT $2",
            vec![Box::new(after), Box::new(PAGE)],
        )?;
        let full = rows.len() as i64 == PAGE;
        for row in &rows {
            report.events += 1;
            after = col(row, "position")?;
            match crate::store::decode_log_row(row) {
                Ok(event) => {
                    let dedupe: &[u8] = col(row, "dedupe")?;
                    if dedupe != event.dedupe_key().as_bytes() {
                        problem(
                            &mut report,
                            format!("event `{}`@{}", event.stream(), event.version()),
                            "its dedupe column differs from its record's key",
                        );
                    }
                }
                Err(StoreError::Corrupt(corrupt)) => report.problems.push(corrupt.into()),
                Err(other) => return Err(other),
            }
        }
        if !full {
            break;
        }
    }

    for row in store.query_rows(
        "SELECT s.stream, s.version, s.record,
                (SELECT max(e.version) FROM linkflow_events e WHERE e.stream = s.stream),
                s.compacted
           FROM linkflow_snapshots s ORDER BY s.stream",
        Vec::new(),
    )? {
        report.snapshots += 1;
        let stream: String = col(&row, 0)?;
        let version: i64 = col(&row, 1)?;
        let stored: Option<i64> = col(&row, 3)?;
        let what = format!("snapshot of `{stream}`");
        match decode_snapshot_record(&what, col(&row, 2)?) {
            Ok(snapshot) => {
                let compacted: i64 = col(&row, 4)?;
                if i64::try_from(snapshot.version.0) != Ok(version)
                    || i64::try_from(snapshot.compacted.0) != Ok(compacted)
                {
                    problem(&mut report, &what, "the record does not match its row");
                }
                if version > stored.unwrap_or(0) {
                    problem(
                        &mut report,
                        &what,
                        format!(
                            "is at version {version}, its stream at {}",
                            stored.unwrap_or(0)
                        ),
                    );
                }
            }
            Err(error) => report.problems.push(error.into()),
        }
    }
    Ok(report)
}
