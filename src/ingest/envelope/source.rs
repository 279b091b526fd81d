//! Debezium's `source` block: where a change comes from and where it sits in its source's order.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{DecodeError, Snapshot, Source, SourcePosition};

#[derive(Deserialize)]
struct RawSource<'a> {
    #[serde(borrow, default)]
    connector: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    db: Cow<'a, str>,
    #[serde(borrow, default)]
    schema: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    table: Option<Cow<'a, str>>,
    ts_ms: i64,
    #[serde(default)]
    ts_us: Option<i64>,
    #[serde(default)]
    ts_ns: Option<i64>,
    #[serde(default, deserialize_with = "snapshot_marker")]
    snapshot: Option<Snapshot>,
    // Postgres
    #[serde(borrow, default)]
    sequence: Option<Cow<'a, str>>,
    #[serde(default)]
    lsn: Option<u64>,
    #[serde(default, rename = "txId")]
    tx_id: Option<i64>,
    // MySQL / MariaDB
    #[serde(borrow, default)]
    file: Option<Cow<'a, str>>,
    #[serde(default)]
    pos: Option<u64>,
    #[serde(default)]
    row: Option<u64>,
    #[serde(default)]
    server_id: Option<u64>,
}

pub(super) fn decode_source(raw: &RawValue) -> Result<Source<'_>, DecodeError> {
    let src: RawSource<'_> =
        serde_json::from_str(raw.get()).map_err(|e| DecodeError::Source(e.to_string()))?;
    let position = match (&src.sequence, src.lsn, &src.file) {
        (Some(sequence), _, _) => postgres_position(sequence)?,
        (None, Some(lsn), _) => SourcePosition::Postgres { commit_lsn: 0, lsn },
        (None, None, Some(file)) if !file.is_empty() => SourcePosition::MySql {
            server_id: src.server_id.unwrap_or(0),
            file: binlog_file_number(file)?,
            pos: src.pos.unwrap_or(0),
            row: src.row.unwrap_or(0),
        },
        _ => SourcePosition::Unknown,
    };
    Ok(Source {
        connector: src.connector,
        name: src.name,
        db: src.db,
        schema: src.schema,
        table: src.table,
        ts_ms: src.ts_ms,
        ts_us: src.ts_us.or(src.ts_ns.map(|ns| ns.div_euclid(1000))),
        snapshot: src.snapshot.unwrap_or(Snapshot::No),
        position,
        tx_id: src.tx_id,
    })
}

/// `"[\"24023928\",\"24023984\"]"`: last commit LSN and LSN as decimal strings, either null.
pub(super) fn postgres_position(sequence: &str) -> Result<SourcePosition, DecodeError> {
    let parts: [Option<Cow<'_, str>>; 2] = serde_json::from_str(sequence)
        .map_err(|e| DecodeError::Source(format!("`sequence` is not a pair of LSNs: {e}")))?;
    let lsn = |part: &Option<Cow<'_, str>>| -> Result<u64, DecodeError> {
        part.as_deref().map_or(Ok(0), |s| {
            s.parse().map_err(|_| {
                DecodeError::Source(format!("`sequence` holds a non-numeric LSN `{s}`"))
            })
        })
    };
    Ok(SourcePosition::Postgres {
        commit_lsn: lsn(&parts[0])?,
        lsn: lsn(&parts[1])?,
    })
}

/// `mysql-bin.000042` → 42: binlog files are numbered in the order the server writes them.
fn binlog_file_number(file: &str) -> Result<u64, DecodeError> {
    file.rsplit('.')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| DecodeError::Source(format!("binlog file `{file}` has no numeric suffix")))
}

/// `snapshot` is a string enum in current Debezium (`"true"`, `"last"`, `"false"`, …) and a
/// boolean in older releases; both mean the same.
fn snapshot_marker<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Snapshot>, D::Error> {
    struct Marker;
    impl<'de> Visitor<'de> for Marker {
        type Value = Option<Snapshot>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a snapshot marker: boolean, string or null")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(if v { Snapshot::Yes } else { Snapshot::No }))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(if v == "false" {
                Snapshot::No
            } else {
                Snapshot::Yes
            }))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Marker)
}
