//! The PostgreSQL backend's consistency walk: what the constraints do not already guarantee.

use linkflow_store::record::decode_snapshot_record;
use linkflow_store::{Problem, StoreError, VerifyReport};

use crate::error::col;
use crate::store::{PgStore, PAGE};

fn problem(report: &mut VerifyReport, record: impl Into<String>, message: impl Into<String>) {
    report.problems.push(Problem {
        record: record.into(),
        message: message.into(),
    });
}

/// Decodes one event row (stream, version, position, dedupe, record) into the report: counted,
/// and its damage or a dedupe column that differs from its record a problem.
fn check_event_row(report: &mut VerifyReport, row: &tokio_postgres::Row) -> Result<(), StoreError> {
    report.events += 1;
    match crate::store::decode_log_row(row) {
        Ok(event) => {
            let dedupe: &[u8] = col(row, "dedupe")?;
            if dedupe != event.dedupe_key().as_bytes() {
                problem(
                    report,
                    format!("event `{}`@{}", event.stream(), event.version()),
                    "its dedupe column differs from its record's key",
                );
            }
            Ok(())
        }
        Err(StoreError::Corrupt(corrupt)) => {
            report.problems.push(corrupt.into());
            Ok(())
        }
        Err(other) => Err(other),
    }
}

/// Checks:
/// - every event record, numbered or not yet, decodes and matches its row (below);
/// - positions are exactly 1..=head (the primary key makes them unique), each names an event,
///   and the events not numbered yet are all after the head's (txid, id) (they are counted,
///   not a problem: the sequencer numbers them once no older transaction runs);
/// - every stream holds versions 1..=n, its compacted records before its events;
/// - every event record (whole or compacted) decodes (checksum included) and matches its row,
///   dedupe key included;
/// - every snapshot decodes and is not ahead of its stream.
pub(crate) fn verify(store: &PgStore) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let totals = store.query_rows(
        "SELECT (SELECT count(*) FROM linkflow_positions),
                (SELECT coalesce(max(position), 0) FROM linkflow_positions),
                (SELECT count(*) FROM linkflow_positions p
                  WHERE NOT EXISTS (SELECT 1 FROM linkflow_events e
                                     WHERE e.txid = p.txid AND e.id = p.id)),
                (SELECT count(*) FROM linkflow_events e, linkflow_head h
                  WHERE (e.txid, e.id) <= (h.txid, h.id)
                    AND NOT EXISTS (SELECT 1 FROM linkflow_positions p
                                     WHERE p.txid = e.txid AND p.id = e.id)),
                (SELECT count(DISTINCT stream) FROM linkflow_events),
                (SELECT position FROM linkflow_head)",
        Vec::new(),
    )?;
    // One statement, one snapshot: the sequencer numbering meanwhile moves nothing here.
    let (count, max, orphans, skipped, streams, head): (i64, i64, i64, i64, i64, i64) = (
        col(&totals[0], 0)?,
        col(&totals[0], 1)?,
        col(&totals[0], 2)?,
        col(&totals[0], 3)?,
        col(&totals[0], 4)?,
        col(&totals[0], 5)?,
    );
    report.streams = u64::try_from(streams).unwrap_or(0);
    if max != head || count != head {
        problem(
            &mut report,
            "linkflow_positions",
            format!("holds {count} positions up to {max}; the head is {head}"),
        );
    }
    if orphans > 0 {
        problem(
            &mut report,
            "linkflow_positions",
            format!("{orphans} positions name no event"),
        );
    }
    if skipped > 0 {
        problem(
            &mut report,
            "linkflow_events",
            format!("{skipped} events before the sequencer's cursor have no position"),
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
            "SELECT e.stream, e.version, p.position, e.dedupe, e.record
               FROM linkflow_positions p JOIN linkflow_events e ON e.txid = p.txid AND e.id = p.id
              WHERE p.position > $1 ORDER BY p.position LIMIT $2",
            vec![Box::new(after), Box::new(PAGE)],
        )?;
        let full = rows.len() as i64 == PAGE;
        for row in &rows {
            after = col(row, "position")?;
            check_event_row(&mut report, row)?;
        }
        if !full {
            break;
        }
    }
    // The events not numbered yet (after the sequencer's cursor): checked the same way.
    let mut cursor: (String, i64) = ("0".into(), 0);
    loop {
        let rows = store.query_rows(
            "SELECT e.stream, e.version, 0::int8 AS position, e.dedupe, e.record,
                    e.txid::text AS txid, e.id
               FROM linkflow_events e, linkflow_head h
              WHERE (e.txid, e.id) > (h.txid, h.id) AND (e.txid, e.id) > ($1::text::xid8, $2)
              ORDER BY e.txid, e.id LIMIT $3",
            vec![
                Box::new(cursor.0.clone()),
                Box::new(cursor.1),
                Box::new(PAGE),
            ],
        )?;
        let full = rows.len() as i64 == PAGE;
        for row in &rows {
            cursor = (col(row, "txid")?, col(row, "id")?);
            check_event_row(&mut report, row)?;
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
