//! Dates, times of day and timestamps as harmony holds them, whichever way a connector carried
//! them (days, milli-, micro- or nanoseconds since the epoch, ISO 8601 text with an offset).
//!
//! One canonical form per kind, so that a value reads the same from every system it passes
//! through and an echo is recognised as one:
//! * a **date** is days since 1970-01-01;
//! * a **time of day** is nanoseconds since midnight;
//! * a **timestamp** is an instant: seconds since the epoch and nanoseconds into the second. A
//!   timestamp *without* time zone is read as UTC, which is how Debezium carries it (its
//!   `MicroTimestamp` is the wall-clock reading counted as if in UTC), and written back to such
//!   a column as its UTC wall-clock reading; one with an offset is converted to UTC.
//!
//! Converting to a column of coarser precision is exact or refused ([`Timestamp::count`]
//! answers `None`): a microsecond never silently disappears on its way to a `datetime(3)`.
//! Years outside 0000–9999 are refused when read, since ISO 8601 text cannot carry them.

use std::fmt;

/// Why an instant or a time does not go to a column's unit.
pub const FINER: &str = "finer than the column's precision";
pub const BEYOND_64_BITS: &str =
    "beyond a 64-bit count of the column's unit (nanoseconds span 1677 to 2262)";

/// Units a connector counts times in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Millis,
    Micros,
    Nanos,
}

impl Unit {
    /// Nanoseconds per unit.
    const fn nanos(self) -> i64 {
        match self {
            Unit::Millis => 1_000_000,
            Unit::Micros => 1_000,
            Unit::Nanos => 1,
        }
    }

    const fn per_second(self) -> i64 {
        NANOS_PER_SECOND / self.nanos()
    }
}

const NANOS_PER_SECOND: i64 = 1_000_000_000;
const SECONDS_PER_DAY: i64 = 86_400;
pub const NANOS_PER_DAY: u64 = 86_400 * 1_000_000_000;
/// The Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

/// Seconds of 0000-01-01T00:00:00Z and of 10000-01-01T00:00:00Z: the range ISO text carries.
const MIN_SECONDS: i64 = -62_167_219_200;
const MAX_SECONDS: i64 = 253_402_300_800;

/// A date: days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date(pub i32);

/// A time of day: nanoseconds since midnight, up to and including `24:00:00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay(pub u64);

impl Date {
    /// `None` outside years 0000–9999.
    pub fn new(days: i64) -> Option<Self> {
        let days = i32::try_from(days).ok()?;
        date_in_range(days).then_some(Date(days))
    }

    pub fn parse(text: &str) -> Option<Self> {
        parse_date(text).map(Date)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_date(f, self.0)
    }
}

impl TimeOfDay {
    pub fn from_count(count: i64, unit: Unit) -> Option<Self> {
        time_from_count(count, unit).map(TimeOfDay)
    }

    pub fn count(self, unit: Unit) -> Option<i64> {
        time_count(self.0, unit)
    }

    pub fn parse(text: &str) -> Option<Self> {
        parse_time(text).map(TimeOfDay)
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_time(f, self.0)
    }
}

/// Topics' JSON carries ISO 8601 text (a person reads the internal and conflicts topics); the
/// changelog's binary form carries the numbers.
macro_rules! iso_or_number {
    ($type:ty, $number:ty, $what:literal, |$n:ident| $from_number:expr) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.collect_str(self)
                } else {
                    self.0.serialize(serializer)
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                if deserializer.is_human_readable() {
                    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                    <$type>::parse(&text).ok_or_else(|| {
                        serde::de::Error::custom(format_args!(
                            concat!("`{}` is not a ", $what),
                            text
                        ))
                    })
                } else {
                    let $n = <$number>::deserialize(deserializer)?;
                    Ok($from_number)
                }
            }
        }
    };
}

iso_or_number!(Date, i32, "date", |n| Date(n));
iso_or_number!(TimeOfDay, u64, "time of day", |n| TimeOfDay(n));

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            (self.seconds, self.nanos).serialize(serializer)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let invalid = |what: &dyn fmt::Display| {
            serde::de::Error::custom(format_args!("`{what}` is not a timestamp"))
        };
        if deserializer.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            Timestamp::parse(&text).ok_or_else(|| invalid(&text))
        } else {
            let (seconds, nanos) = <(i64, u32)>::deserialize(deserializer)?;
            Timestamp::new(seconds, nanos).ok_or_else(|| invalid(&seconds))
        }
    }
}

/// An instant, UTC (see the module's note on timestamps without time zone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub seconds: i64,
    /// Always below 10^9.
    pub nanos: u32,
}

impl Timestamp {
    /// `count` units since the epoch; `None` outside years 0000–9999.
    pub fn from_count(count: i64, unit: Unit) -> Option<Self> {
        let seconds = count.div_euclid(unit.per_second());
        let nanos = count.rem_euclid(unit.per_second()) * unit.nanos();
        Self::new(seconds, nanos as u32)
    }

    /// `None` outside years 0000–9999.
    pub fn new(seconds: i64, nanos: u32) -> Option<Self> {
        ((MIN_SECONDS..MAX_SECONDS).contains(&seconds) && i64::from(nanos) < NANOS_PER_SECOND)
            .then_some(Self { seconds, nanos })
    }

    /// Midnight (UTC) of a date.
    pub fn from_date(date: Date) -> Self {
        // Every date in range is a timestamp in range.
        Self {
            seconds: i64::from(date.0) * SECONDS_PER_DAY,
            nanos: 0,
        }
    }

    /// Units since the epoch, if the instant is a whole number of them and the count fits 64
    /// bits (nanoseconds do only between 1677 and 2262); else why not.
    pub fn count(self, unit: Unit) -> Result<i64, &'static str> {
        let nanos = i64::from(self.nanos);
        if nanos % unit.nanos() != 0 {
            return Err(FINER);
        }
        self.seconds
            .checked_mul(unit.per_second())
            .and_then(|n| n.checked_add(nanos / unit.nanos()))
            .ok_or(BEYOND_64_BITS)
    }

    /// The date, if the instant is its midnight.
    pub fn as_date(self) -> Option<Date> {
        (self.nanos == 0 && self.seconds.rem_euclid(SECONDS_PER_DAY) == 0)
            .then(|| Date::new(self.seconds.div_euclid(SECONDS_PER_DAY)))
            .flatten()
    }

    /// RFC 3339 text with any offset (`2024-02-29T11:34:56.789012Z`, `…+01:00`), as Debezium's
    /// `ZonedTimestamp` carries it; without an offset, a local date-time read as UTC. A space
    /// may stand for the `T`.
    pub fn parse(text: &str) -> Option<Self> {
        use time::format_description::well_known::Rfc3339;
        let (date, rest) = (text.get(..10)?, text.get(11..)?);
        if !matches!(text.as_bytes()[10], b'T' | b't' | b' ') {
            return None;
        }
        let has_offset = rest.ends_with(['Z', 'z']) || rest.contains(['+', '-']);
        // Debezium's own form (`T`, an offset) is parsed as it stands: it is read for every
        // `ZonedTimestamp` value, and building another text would allocate each time.
        let parsed = if has_offset && text.as_bytes()[10] != b' ' {
            time::OffsetDateTime::parse(text, &Rfc3339)
        } else {
            let normalized = format!("{date}T{rest}{}", if has_offset { "" } else { "Z" });
            time::OffsetDateTime::parse(&normalized, &Rfc3339)
        }
        .ok()?;
        Self::new(parsed.unix_timestamp(), parsed.nanosecond())
    }

    /// Writes the UTC reading as ISO 8601 without an offset: the wall clock a timestamp
    /// column without time zone holds.
    pub fn write_local(self, out: &mut impl fmt::Write) -> fmt::Result {
        let days =
            i32::try_from(self.seconds.div_euclid(SECONDS_PER_DAY)).map_err(|_| fmt::Error)?;
        write_date(out, days)?;
        out.write_char('T')?;
        let nanos_of_day = self.seconds.rem_euclid(SECONDS_PER_DAY) as u64
            * NANOS_PER_SECOND as u64
            + u64::from(self.nanos);
        write_time(out, nanos_of_day)
    }
}

/// `2024-02-29T11:34:56.789012Z`: the fraction in groups of three digits, as few as it needs.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_local(f)?;
        f.write_str("Z")
    }
}

fn calendar_date(days: i32) -> Option<time::Date> {
    time::Date::from_julian_day(days.checked_add(UNIX_EPOCH_JULIAN_DAY)?).ok()
}

/// A date as ISO 8601 (`0001-01-01`).
fn write_date(out: &mut impl fmt::Write, days: i32) -> fmt::Result {
    let date = calendar_date(days).ok_or(fmt::Error)?;
    write!(
        out,
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Whether days since the epoch name a date of years 0000–9999.
fn date_in_range(days: i32) -> bool {
    (MIN_SECONDS / SECONDS_PER_DAY..MAX_SECONDS / SECONDS_PER_DAY).contains(&i64::from(days))
}

/// `YYYY-MM-DD` as days since the epoch.
fn parse_date(text: &str) -> Option<i32> {
    let mut parts = text.splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    let month = time::Month::try_from(month).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let days = date.to_julian_day() - UNIX_EPOCH_JULIAN_DAY;
    date_in_range(days).then_some(days)
}

/// A time of day as ISO 8601 (`23:59:59.999`), the fraction as in [`Timestamp`]'s text.
fn write_time(out: &mut impl fmt::Write, nanos_of_day: u64) -> fmt::Result {
    let seconds = nanos_of_day / NANOS_PER_SECOND as u64;
    let fraction = nanos_of_day % NANOS_PER_SECOND as u64;
    write!(
        out,
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )?;
    match fraction {
        0 => Ok(()),
        f if f % 1_000_000 == 0 => write!(out, ".{:03}", f / 1_000_000),
        f if f % 1_000 == 0 => write!(out, ".{:06}", f / 1_000),
        f => write!(out, ".{f:09}"),
    }
}

/// `HH:MM:SS[.fraction]` as nanoseconds since midnight. `24:00:00`, which Postgres allows, is
/// the end of the day.
fn parse_time(text: &str) -> Option<u64> {
    let (clock, fraction) = text.split_once('.').unwrap_or((text, ""));
    let mut parts = clock.splitn(3, ':');
    let mut next = || -> Option<u64> {
        let part = parts.next()?;
        (part.len() == 2).then_some(())?;
        part.parse().ok()
    };
    let (hours, minutes, seconds) = (next()?, next()?, next()?);
    if minutes > 59 || seconds > 59 || fraction.len() > 9 {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<u64>().ok()? * 10u64.pow(9 - fraction.len() as u32)
    };
    let nanos = (hours * 3600 + minutes * 60 + seconds) * NANOS_PER_SECOND as u64 + fraction_nanos;
    (nanos <= NANOS_PER_DAY).then_some(nanos)
}

/// A time of day counted in `unit`, if it is one (Postgres allows `24:00:00`).
fn time_from_count(count: i64, unit: Unit) -> Option<u64> {
    let nanos = u64::try_from(count.checked_mul(unit.nanos())?).ok()?;
    (nanos <= NANOS_PER_DAY).then_some(nanos)
}

/// A time of day in `unit`, if it is a whole number of them.
fn time_count(nanos_of_day: u64, unit: Unit) -> Option<i64> {
    let unit = unit.nanos() as u64;
    nanos_of_day
        .is_multiple_of(unit)
        .then(|| (nanos_of_day / unit) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: Timestamp) -> String {
        t.to_string()
    }

    #[test]
    fn counts_in_every_unit_meet_in_one_instant() {
        // moment_us of every_type: 1969-12-31 23:59:59.999999, one microsecond before the epoch.
        let before_epoch = Timestamp::from_count(-1, Unit::Micros).unwrap();
        assert_eq!(text(before_epoch), "1969-12-31T23:59:59.999999Z");
        assert_eq!(before_epoch.count(Unit::Micros), Ok(-1));
        assert_eq!(before_epoch.count(Unit::Nanos), Ok(-1000));
        assert_eq!(
            before_epoch.count(Unit::Millis),
            Err(FINER),
            "not a whole millisecond"
        );
        let ms = Timestamp::from_count(1_709_210_096_789, Unit::Millis).unwrap();
        assert_eq!(text(ms), "2024-02-29T12:34:56.789Z");
        assert_eq!(ms.count(Unit::Micros), Ok(1_709_210_096_789_000));
        let far = Timestamp::parse("9999-12-31T23:59:59Z").unwrap();
        assert_eq!(far.count(Unit::Nanos), Err(BEYOND_64_BITS));
        assert!(far.count(Unit::Micros).is_ok());
        assert_eq!(
            Timestamp::parse("2024-02-29T11:34:56.789012Z").unwrap(),
            Timestamp::parse("2024-02-29T12:34:56.789012+01:00").unwrap()
        );
        assert_eq!(
            Timestamp::parse("2024-02-29 11:34:56Z")
                .unwrap()
                .to_string(),
            "2024-02-29T11:34:56Z"
        );
        assert_eq!(Timestamp::parse("2024-02-30T00:00:00Z"), None);
        assert_eq!(Timestamp::parse("infinity"), None);
        // Postgres' infinity as Debezium counts it is beyond year 9999: refused, not wrapped.
        assert_eq!(
            Timestamp::from_count(9_223_372_036_825_200_000, Unit::Micros),
            None
        );
    }

    #[test]
    fn dates_and_times_read_and_write_iso() {
        // day of every_type: 0001-01-01.
        assert_eq!(
            {
                let mut s = String::new();
                write_date(&mut s, -719_162).unwrap();
                s
            },
            "0001-01-01"
        );
        assert_eq!(parse_date("0001-01-01"), Some(-719_162));
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(
            Timestamp::from_date(Date(19_782)).as_date(),
            Some(Date(19_782))
        );
        assert_eq!(
            Timestamp::parse("2024-02-29T12:34:56.789")
                .unwrap()
                .to_string(),
            "2024-02-29T12:34:56.789Z",
            "without an offset, UTC"
        );
        assert_eq!(
            Timestamp::parse("2024-02-29T00:00:01Z").unwrap().as_date(),
            None
        );
        let mut s = String::new();
        write_time(&mut s, time_from_count(86_399_999, Unit::Millis).unwrap()).unwrap();
        assert_eq!(s, "23:59:59.999");
        assert_eq!(parse_time("23:59:59.999"), Some(86_399_999_000_000));
        assert_eq!(parse_time("00:00:00.000001"), Some(1_000));
        assert_eq!(parse_time("24:00:00"), Some(NANOS_PER_DAY));
        assert_eq!(parse_time("24:00:01"), None);
        assert_eq!(parse_time("1:00:00"), None);
        assert_eq!(time_count(1_000, Unit::Millis), None);
        assert_eq!(time_count(1_000, Unit::Micros), Some(1));
    }

    proptest::proptest! {
        #[test]
        fn a_timestamp_reads_back_from_its_text(
            seconds in MIN_SECONDS..MAX_SECONDS,
            nanos in 0u32..1_000_000_000,
        ) {
            let t = Timestamp::new(seconds, nanos).unwrap();
            proptest::prop_assert_eq!(Timestamp::parse(&t.to_string()), Some(t));
        }

        #[test]
        fn a_time_reads_back_from_its_text(nanos in 0..=NANOS_PER_DAY) {
            let mut s = String::new();
            write_time(&mut s, nanos).unwrap();
            proptest::prop_assert_eq!(parse_time(&s), Some(nanos));
        }

        #[test]
        fn a_date_reads_back_from_its_text(days in -719_528i32..2_932_897) {
            let mut s = String::new();
            write_date(&mut s, days).unwrap();
            proptest::prop_assert_eq!(parse_date(&s), Some(days));
        }
    }
}
