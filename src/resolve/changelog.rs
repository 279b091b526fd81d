//! The durable form of one record's state (ARCHITECTURE.md §1, §5): what stage 2 writes to the compacted
//! changelog topic after the record's outputs are acknowledged, and reads back to rebuild a
//! partition's state when the partition is assigned to it.
//!
//! Compact binary (postcard) after a format byte, so the encoding can evolve: each format appends
//! what the one before lacked after its body, so older values still read.
//! - format 2: the times metrics measure from (format 1: taken from the record);
//! - format 3: each system's last applied commit time, which tells a replay from a source whose
//!   positions went back ([`crate::resolve::engine::position`]; before: any position behind is a replay,
//!   as those formats' writers took it), and fingerprints fixed across Rust releases and
//!   configuration order ([`crate::resolve::engine::fingerprint`]; before: recomputed on reading from the
//!   values each delivery sent).
//!
//! Systems and fields are written by name, not by the positions the running configuration gives
//! them: the changelog outlives a configuration that adds a system or a field. Names the
//! configuration no longer has are dropped on reading.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::ingest::internal::Position;
use crate::ingest::mapping::FieldId;
use crate::model::clock::{Dot, SystemId, VersionVector};
use crate::model::value::FieldRef;
use crate::resolve::engine::position::Applied;
use crate::resolve::engine::{
    delivery_fingerprint, Delivery, FieldState, FieldValue, RecordState, SystemInfo, SystemState,
};

/// Version of the encoding; a reader refuses versions it does not know. A state whose fields'
/// commit times are whole milliseconds is written in format 3, byte for byte as before (so that
/// compaction sees equal states as equal bytes); format 4 adds their microseconds.
pub const FORMAT: u8 = 4;

/// How names map to the running configuration's ids, for one entity.
pub struct Names<'a> {
    pub systems: &'a [SystemInfo],
    pub fields: &'a [String],
    pub system_ids: &'a HashMap<String, SystemId>,
    pub field_ids: &'a HashMap<String, FieldId>,
}

type WireClock<'a> = Vec<(Cow<'a, str>, u64)>;
type WireDot<'a> = (Cow<'a, str>, u64);

#[derive(Serialize, Deserialize)]
struct WireState<'a> {
    #[serde(borrow)]
    clock: WireClock<'a>,
    #[serde(borrow)]
    fields: Vec<WireField<'a>>,
    #[serde(borrow)]
    deleted: Option<WireDot<'a>>,
    #[serde(borrow)]
    systems: Vec<WireSystem<'a>>,
}

#[derive(Serialize, Deserialize)]
struct WireField<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    value: FieldRef<'a>,
    #[serde(borrow)]
    dot: WireDot<'a>,
    ts_ms: i64,
    #[serde(borrow)]
    tags: Vec<(Cow<'a, str>, Vec<WireDot<'a>>)>,
}

#[derive(Serialize, Deserialize)]
struct WireSystem<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    seen: WireClock<'a>,
    #[serde(borrow)]
    held: Vec<(Cow<'a, str>, FieldRef<'a>)>,
    held_deleted: bool,
    position: Option<Position>,
    #[serde(borrow)]
    pending: Vec<WireDelivery<'a>>,
    #[serde(borrow)]
    superseded: Vec<WireDelivery<'a>>,
}

#[derive(Serialize, Deserialize)]
struct WireDelivery<'a> {
    #[serde(borrow)]
    clock: WireClock<'a>,
    fingerprint: u64,
    #[serde(borrow)]
    values: Vec<(Cow<'a, str>, FieldRef<'a>)>,
    deleted: bool,
}

/// Format 3's appendix, after format 2's.
#[derive(Serialize, Deserialize, Default)]
struct WireApplied<'a> {
    /// Per system with a position, the commit time of the change at that position.
    #[serde(borrow)]
    applied_ts_ms: Vec<(Cow<'a, str>, i64)>,
    /// Exact mode: per system, its row's version column as last captured.
    #[serde(borrow)]
    row_versions: Vec<(Cow<'a, str>, WireClock<'a>)>,
}

/// Format 4's appendix, after format 3's: the microseconds (0–999) past the millisecond of
/// each field's commit time that has any.
#[derive(Serialize, Deserialize, Default)]
struct WireMicros<'a> {
    #[serde(borrow)]
    field_us: Vec<(Cow<'a, str>, u16)>,
}

/// Format 2's appendix to the format-1 body.
#[derive(Serialize, Deserialize, Default)]
struct WireTimes<'a> {
    /// Unsettled manual conflicts: field and since when.
    #[serde(borrow)]
    unsettled: Vec<(Cow<'a, str>, i64)>,
    /// Per system, the source commit times of its pending deliveries, in their order.
    #[serde(borrow)]
    pending: Vec<(Cow<'a, str>, Vec<i64>)>,
}

impl Names<'_> {
    fn system(&self, id: SystemId) -> Cow<'_, str> {
        Cow::Borrowed(
            self.systems
                .get(id.0 as usize)
                .map_or("?", |s| s.name.as_str()),
        )
    }

    fn field(&self, id: FieldId) -> Cow<'_, str> {
        Cow::Borrowed(self.fields.get(id.0 as usize).map_or("?", String::as_str))
    }

    fn clock(&self, clock: &VersionVector) -> WireClock<'_> {
        clock.iter().map(|(s, n)| (self.system(s), n)).collect()
    }

    fn dot(&self, dot: Dot) -> WireDot<'_> {
        (self.system(dot.system), dot.counter)
    }

    fn values<'v>(
        &'v self,
        values: &'v [(FieldId, FieldValue)],
    ) -> Vec<(Cow<'v, str>, FieldRef<'v>)> {
        values
            .iter()
            .map(|(f, v)| (self.field(*f), FieldRef::from(v)))
            .collect()
    }

    fn delivery<'v>(&'v self, d: &'v Delivery) -> WireDelivery<'v> {
        WireDelivery {
            clock: self.clock(&d.clock),
            fingerprint: d.fingerprint,
            values: self.values(&d.values),
            deleted: d.deleted,
        }
    }

    fn delivery_of(&self, d: WireDelivery<'_>) -> Delivery {
        Delivery {
            clock: self.clock_of(d.clock),
            fingerprint: d.fingerprint,
            values: self.values_of(d.values),
            deleted: d.deleted,
            // Only pending deliveries keep theirs (format 2's appendix).
            ts_ms: 0,
        }
    }

    fn clock_of(&self, wire: WireClock<'_>) -> VersionVector {
        let mut clock = VersionVector::with_capacity(wire.len());
        for (name, n) in wire {
            if let Some(&s) = self.system_ids.get(name.as_ref()) {
                clock.set(s, n);
            }
        }
        clock
    }

    fn dot_of(&self, (name, counter): WireDot<'_>) -> Option<Dot> {
        self.system_ids
            .get(name.as_ref())
            .map(|&system| Dot { system, counter })
    }

    fn values_of(&self, wire: Vec<(Cow<'_, str>, FieldRef<'_>)>) -> Vec<(FieldId, FieldValue)> {
        let mut values = Vec::with_capacity(wire.len());
        values.extend(
            wire.into_iter()
                .filter_map(|(name, v)| self.field_ids.get(name.as_ref()).map(|&f| (f, v.into()))),
        );
        values.sort_by_key(|(f, _)| *f);
        values
    }
}

/// A record's key on the changelog (and on the conflicts topic): the internal topic's.
pub fn key(entity: &str, record_key: &str) -> String {
    crate::ingest::internal::record_key(entity, record_key)
}

/// The entity name and canonical key a changelog key names.
pub fn split_key(key: &str) -> Option<(&str, &str)> {
    key.split_once(':')
}

/// The changelog value of `state`.
pub fn encode(state: &RecordState, names: &Names<'_>) -> Vec<u8> {
    let wire = WireState {
        clock: names.clock(&state.clock),
        fields: state
            .fields
            .iter()
            .map(|(f, s)| WireField {
                name: names.field(*f),
                value: FieldRef::from(&s.value),
                dot: names.dot(s.dot),
                ts_ms: s.ts_us.div_euclid(1000),
                tags: s
                    .tags
                    .iter()
                    .map(|(e, dots)| {
                        (
                            Cow::Borrowed(e.as_str()),
                            dots.iter().map(|d| names.dot(*d)).collect(),
                        )
                    })
                    .collect(),
            })
            .collect(),
        deleted: state.deleted.map(|d| names.dot(d)),
        systems: state
            .systems
            .iter()
            .map(|(s, sys)| WireSystem {
                name: names.system(*s),
                seen: names.clock(&sys.seen),
                held: names.values(&sys.held),
                held_deleted: sys.held_deleted,
                position: sys.applied.map(|a| Position::from(a.position)),
                pending: sys.pending.iter().map(|d| names.delivery(d)).collect(),
                superseded: sys.superseded.iter().map(|d| names.delivery(d)).collect(),
            })
            .collect(),
    };
    let times = WireTimes {
        unsettled: state
            .unsettled
            .iter()
            .map(|(f, ts)| (names.field(*f), *ts))
            .collect(),
        pending: state
            .systems
            .iter()
            .filter(|(_, sys)| !sys.pending.is_empty())
            .map(|(s, sys)| {
                (
                    names.system(*s),
                    sys.pending.iter().map(|d| d.ts_ms).collect(),
                )
            })
            .collect(),
    };
    let applied = WireApplied {
        applied_ts_ms: state
            .systems
            .iter()
            .filter_map(|(s, sys)| sys.applied.map(|a| (names.system(*s), a.ts_ms)))
            .collect(),
        row_versions: state
            .systems
            .iter()
            .filter_map(|(s, sys)| {
                sys.row_version
                    .as_ref()
                    .map(|v| (names.system(*s), names.clock(v)))
            })
            .collect(),
    };
    let micros = WireMicros {
        field_us: state
            .fields
            .iter()
            .filter(|(_, s)| s.ts_us.rem_euclid(1000) != 0)
            .map(|(f, s)| (names.field(*f), s.ts_us.rem_euclid(1000) as u16))
            .collect(),
    };
    let format = if micros.field_us.is_empty() {
        3
    } else {
        FORMAT
    };
    // Serialising plain in-memory data into a vector cannot fail.
    let mut out = postcard::to_extend(&wire, vec![format]).unwrap_or_default();
    out = postcard::to_extend(&times, out).unwrap_or_default();
    out = postcard::to_extend(&applied, out).unwrap_or_default();
    if format == FORMAT {
        out = postcard::to_extend(&micros, out).unwrap_or_default();
    }
    out
}

/// Why a changelog value cannot be read; never retriable (the restore skips it, and the record
/// starts afresh). The cause is part of the message, not also a `#[source]`.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty changelog record")]
    Empty,
    #[error("changelog format {0} is not one of 1..={FORMAT}")]
    Format(u8),
    #[error("changelog record: {0}")]
    Body(postcard::Error),
}

/// A record's state from its changelog value.
pub fn decode(bytes: &[u8], names: &Names<'_>) -> Result<RecordState, DecodeError> {
    let (&format, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    let (wire, rest): (WireState<'_>, &[u8]) = match format {
        1..=FORMAT => postcard::take_from_bytes(body).map_err(DecodeError::Body)?,
        _ => return Err(DecodeError::Format(format)),
    };
    let (times, rest): (WireTimes<'_>, &[u8]) = if format == 1 {
        (WireTimes::default(), rest)
    } else {
        postcard::take_from_bytes(rest).map_err(DecodeError::Body)?
    };
    let (applied, rest): (WireApplied<'_>, &[u8]) = if format < 3 {
        (WireApplied::default(), rest)
    } else {
        postcard::take_from_bytes(rest).map_err(DecodeError::Body)?
    };
    let micros: WireMicros<'_> = if format < 4 {
        WireMicros::default()
    } else {
        postcard::from_bytes(rest).map_err(DecodeError::Body)?
    };
    let mut state = RecordState {
        clock: names.clock_of(wire.clock),
        deleted: wire.deleted.and_then(|d| names.dot_of(d)),
        ..RecordState::default()
    };
    // Sized once: the state is kept as read (see `RecordState::shrink_to_fit`).
    state.fields.reserve_exact(wire.fields.len());
    state.systems.reserve_exact(wire.systems.len());
    for f in wire.fields {
        let (Some(&id), Some(dot)) = (names.field_ids.get(f.name.as_ref()), names.dot_of(f.dot))
        else {
            continue;
        };
        let tags = f
            .tags
            .into_iter()
            .map(|(e, dots)| {
                (
                    e.into_owned(),
                    dots.into_iter().filter_map(|d| names.dot_of(d)).collect(),
                )
            })
            .collect();
        state.set_field(
            id,
            FieldState {
                value: f.value.into(),
                dot,
                ts_us: f.ts_ms.saturating_mul(1000)
                    + micros
                        .field_us
                        .iter()
                        .find(|(name, _)| *name == f.name)
                        .map_or(0, |(_, us)| i64::from(*us)),
                tags,
            },
        );
    }
    // Format 1 kept no delivery times: the record's latest write is the closest known.
    let latest_write = state
        .fields
        .iter()
        .map(|(_, f)| f.ts_us.div_euclid(1000))
        .max()
        .unwrap_or(0);
    for s in wire.systems {
        let Some(&id) = names.system_ids.get(s.name.as_ref()) else {
            continue;
        };
        *state.system_mut(id) = SystemState {
            seen: names.clock_of(s.seen),
            held: names.values_of(s.held),
            held_deleted: s.held_deleted,
            // Without its commit time (formats 1 and 2) a position behind is a replay, as it
            // was when it was written; the system's next change brings the time.
            applied: s.position.map(|p| Applied {
                position: p.into(),
                ts_ms: i64::MAX,
            }),
            row_version: None,
            pending: s
                .pending
                .into_iter()
                .map(|d| Delivery {
                    ts_ms: latest_write,
                    ..names.delivery_of(d)
                })
                .collect(),
            superseded: s
                .superseded
                .into_iter()
                .map(|d| names.delivery_of(d))
                .collect(),
        };
    }
    for (name, ts_ms) in applied.applied_ts_ms {
        if let Some(a) = names
            .system_ids
            .get(name.as_ref())
            .and_then(|&id| state.system_mut(id).applied.as_mut())
        {
            a.ts_ms = ts_ms;
        }
    }
    for (name, version) in applied.row_versions {
        if let Some(&id) = names.system_ids.get(name.as_ref()) {
            state.system_mut(id).row_version = Some(names.clock_of(version));
        }
    }
    if format < 3 {
        refingerprint(&mut state, names);
    }
    for (name, since) in times.unsettled {
        if let Some(&f) = names.field_ids.get(name.as_ref()) {
            state.unsettle(f, since);
        }
    }
    for (name, times) in times.pending {
        let Some(&id) = names.system_ids.get(name.as_ref()) else {
            continue;
        };
        for (delivery, ts_ms) in state.system_mut(id).pending.iter_mut().zip(times) {
            delivery.ts_ms = ts_ms;
        }
    }
    state.shrink_to_fit();
    Ok(state)
}

/// Fingerprints of deliveries written before they were fixed: made again from the values each
/// delivery sent, so that their echoes are still recognised.
fn refingerprint(state: &mut RecordState, names: &Names<'_>) {
    let name_hash = |f: FieldId| {
        names
            .fields
            .get(f.0 as usize)
            .map_or(0, |n| crate::resolve::engine::fingerprint::name(n))
    };
    for (_, sys) in &mut state.systems {
        for d in sys.pending.iter_mut().chain(sys.superseded.iter_mut()) {
            d.fingerprint = delivery_fingerprint(&d.values, d.deleted, name_hash);
        }
    }
}

/// A format-2 value as format 1 wrote it: without the appendix.
#[cfg(test)]
pub fn as_format_1(bytes: &[u8]) -> Vec<u8> {
    let (wire, _): (WireState<'_>, _) = postcard::take_from_bytes(&bytes[1..]).unwrap();
    postcard::to_extend(&wire, vec![1]).unwrap()
}

/// A value as a format-2 writer left it: without format 3's appendix, every delivery
/// fingerprint set to `fingerprint` (that writer's hash, which reading must not trust).
#[cfg(test)]
pub fn as_format_2_with_fingerprints(bytes: &[u8], fingerprint: u64) -> Vec<u8> {
    let (mut wire, rest): (WireState<'_>, _) = postcard::take_from_bytes(&bytes[1..]).unwrap();
    let (times, _): (WireTimes<'_>, _) = postcard::take_from_bytes(rest).unwrap();
    for system in &mut wire.systems {
        for d in system
            .pending
            .iter_mut()
            .chain(system.superseded.iter_mut())
        {
            d.fingerprint = fingerprint;
        }
    }
    let out = postcard::to_extend(&wire, vec![2]).unwrap();
    postcard::to_extend(&times, out).unwrap()
}
