//! The values this client converts between Rust and PostgreSQL, in PostgreSQL's binary
//! format: [`Type`] (a type OID), [`Timestamp`], and the traits [`ToSql`] (parameters) and
//! [`FromSql`] (columns). Deliberately few: text-like types, `int2`/`int4`/`int8`, `oid`,
//! `bool`, `bytea`, `timestamp`/`timestamptz`, and NULL through `Option`. Anything else is
//! cast in SQL (`::text`). Pure: no I/O.
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};

/// A PostgreSQL type, by OID (`pg_type.oid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Type(pub u32);

/// A point in time with microsecond precision, as PostgreSQL's `timestamp` and
/// `timestamptz` hold it: microseconds since 1970-01-01 00:00:00 (UTC for `timestamptz`;
/// for `timestamp`, whatever the writer meant, conventionally UTC). PostgreSQL's
/// `infinity` and `-infinity` are [`Timestamp::INFINITY`] and [`Timestamp::NEG_INFINITY`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    unix_micros: i64,
}

/// A Rust value that can be sent as a parameter.
pub trait ToSql {
    /// Appends the value in PostgreSQL's binary format for a parameter of type `ty` and
    /// returns `true`, or appends nothing and returns `false` for NULL. An `Err` names
    /// what does not fit (it becomes [`crate::Error::Conversion`]).
    fn to_sql(&self, ty: Type, out: &mut BytesMut) -> Result<bool, String>;
}

/// A Rust value that can be read from a column. `raw` is the value in binary format, or
/// `None` for NULL.
pub trait FromSql: Sized {
    fn from_sql(ty: Type, raw: Option<&[u8]>) -> Result<Self, String>;
}

/// Microseconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

impl Type {
    pub const BOOL: Type = Type(16);
    pub const BYTEA: Type = Type(17);
    pub const NAME: Type = Type(19);
    pub const INT8: Type = Type(20);
    pub const INT2: Type = Type(21);
    pub const INT4: Type = Type(23);
    pub const TEXT: Type = Type(25);
    pub const OID: Type = Type(26);
    pub const UNKNOWN: Type = Type(705);
    pub const BPCHAR: Type = Type(1042);
    pub const VARCHAR: Type = Type(1043);
    pub const TIMESTAMP: Type = Type(1114);
    pub const TIMESTAMPTZ: Type = Type(1184);

    pub fn oid(self) -> u32 {
        self.0
    }

    /// The SQL name for the types this client knows, else `oid N`.
    pub fn name(self) -> String {
        let known = match self {
            Type::BOOL => "bool",
            Type::BYTEA => "bytea",
            Type::NAME => "name",
            Type::INT8 => "int8",
            Type::INT2 => "int2",
            Type::INT4 => "int4",
            Type::TEXT => "text",
            Type::OID => "oid",
            Type::UNKNOWN => "unknown",
            Type::BPCHAR => "bpchar",
            Type::VARCHAR => "varchar",
            Type::TIMESTAMP => "timestamp",
            Type::TIMESTAMPTZ => "timestamptz",
            Type(oid) => return format!("oid {oid}"),
        };
        known.to_owned()
    }

    /// Types whose binary format is the text itself (in the client encoding, UTF-8).
    fn is_text(self) -> bool {
        matches!(
            self,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
        )
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl Timestamp {
    /// PostgreSQL's `infinity`.
    pub const INFINITY: Timestamp = Timestamp {
        unix_micros: i64::MAX,
    };
    /// PostgreSQL's `-infinity`.
    pub const NEG_INFINITY: Timestamp = Timestamp {
        unix_micros: i64::MIN,
    };

    pub fn from_unix_micros(unix_micros: i64) -> Timestamp {
        Timestamp { unix_micros }
    }

    pub fn unix_micros(self) -> i64 {
        self.unix_micros
    }

    /// Now, from the system clock, to the microsecond.
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    /// The `SystemTime`, or `None` for the infinities.
    pub fn to_system_time(self) -> Option<SystemTime> {
        if self == Timestamp::INFINITY || self == Timestamp::NEG_INFINITY {
            return None;
        }
        let magnitude = Duration::from_micros(self.unix_micros.unsigned_abs());
        if self.unix_micros >= 0 {
            UNIX_EPOCH.checked_add(magnitude)
        } else {
            UNIX_EPOCH.checked_sub(magnitude)
        }
    }

    /// Parses `YYYY-MM-DD HH:MM:SS[.ffffff]` (a `T` instead of the space too), the form
    /// `Display` writes and PostgreSQL's ISO output has for `timestamp`; also `infinity` and
    /// `-infinity`. No time zone suffix.
    pub fn parse(s: &str) -> Option<Timestamp> {
        match s {
            "infinity" => return Some(Timestamp::INFINITY),
            "-infinity" => return Some(Timestamp::NEG_INFINITY),
            _ => {}
        }
        let b = s.as_bytes();
        if b.len() < 19 || !matches!(b[10], b' ' | b'T') {
            return None;
        }
        let num = |range: std::ops::Range<usize>| -> Option<i64> {
            let part = s.get(range)?;
            if part.bytes().all(|c| c.is_ascii_digit()) {
                part.parse().ok()
            } else {
                None
            }
        };
        if b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
            return None;
        }
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let micros = match &s[19..] {
            "" => 0,
            frac => {
                let digits = frac.strip_prefix('.')?;
                if digits.is_empty()
                    || digits.len() > 6
                    || !digits.bytes().all(|c| c.is_ascii_digit())
                {
                    return None;
                }
                let value: i64 = digits.parse().ok()?;
                value * 10i64.pow(6 - digits.len() as u32)
            }
        };
        if !(1..=12).contains(&month)
            || day < 1
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }
        let days = days_from_civil(year, month as u32, day as u32);
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
        Some(Timestamp {
            unix_micros: seconds * 1_000_000 + micros,
        })
    }

    /// From PostgreSQL's binary format: microseconds since 2000-01-01.
    fn from_pg(pg_micros: i64) -> Result<Timestamp, String> {
        match pg_micros {
            i64::MAX => Ok(Timestamp::INFINITY),
            i64::MIN => Ok(Timestamp::NEG_INFINITY),
            _ => pg_micros
                .checked_add(PG_EPOCH_UNIX_MICROS)
                .map(Timestamp::from_unix_micros)
                .ok_or_else(|| {
                    format!("timestamp {pg_micros} µs after 2000-01-01 is out of range")
                }),
        }
    }

    /// To PostgreSQL's binary format.
    fn to_pg(self) -> Result<i64, String> {
        match self {
            Timestamp::INFINITY => Ok(i64::MAX),
            Timestamp::NEG_INFINITY => Ok(i64::MIN),
            _ => self
                .unix_micros
                .checked_sub(PG_EPOCH_UNIX_MICROS)
                .ok_or_else(|| format!("timestamp {self} is out of PostgreSQL's range")),
        }
    }
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Timestamp {
        let micros = match time.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX - 1),
            Err(before) => {
                i64::try_from(before.duration().as_micros()).map_or(i64::MIN + 1, |m| -m)
            }
        };
        Timestamp::from_unix_micros(micros)
    }
}

impl fmt::Display for Timestamp {
    /// `YYYY-MM-DD HH:MM:SS.ffffff` (no zone), or `infinity` / `-infinity`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Timestamp::INFINITY => return f.write_str("infinity"),
            Timestamp::NEG_INFINITY => return f.write_str("-infinity"),
            _ => {}
        }
        let seconds = self.unix_micros.div_euclid(1_000_000);
        let micros = self.unix_micros.rem_euclid(1_000_000);
        let days = seconds.div_euclid(86_400);
        let rem = seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{micros:06}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

fn mismatch(rust: &str, ty: Type) -> String {
    format!(
        "a Rust {rust} cannot be sent as a parameter of type {ty}: cast the parameter in SQL (e.g. $1::{rust_sql}) or pass another Rust type",
        rust_sql = sql_name_of(rust)
    )
}

/// The PostgreSQL type a Rust type is sent as, for the advice in `mismatch`.
fn sql_name_of(rust: &str) -> &'static str {
    match rust {
        "i16" => "int2",
        "i32" => "int4",
        "i64" => "int8",
        "u32" => "oid",
        "bool" => "bool",
        "Timestamp" => "timestamp",
        "byte slice" => "bytea",
        _ => "text",
    }
}

impl ToSql for str {
    fn to_sql(&self, ty: Type, out: &mut BytesMut) -> Result<bool, String> {
        if !ty.is_text() {
            return Err(mismatch("string", ty));
        }
        out.put_slice(self.as_bytes());
        Ok(true)
    }
}

impl ToSql for String {
    fn to_sql(&self, ty: Type, out: &mut BytesMut) -> Result<bool, String> {
        self.as_str().to_sql(ty, out)
    }
}

impl ToSql for [u8] {
    fn to_sql(&self, ty: Type, out: &mut BytesMut) -> Result<bool, String> {
        if ty != Type::BYTEA {
            return Err(mismatch("byte slice", ty));
        }
        out.put_slice(self);
        Ok(true)
    }
}

impl ToSql for Vec<u8> {
    fn to_sql(&self, ty: Type, out: &mut BytesMut) -> Result<bool, String> {
        self.as_slice().to_sql(ty, out)
    }
}

impl ToSql for bool {
    fn to_sql(&self, ty: Type, out: &mut BytesMut) -> Result<bool, String> {
        if ty != Type::BOOL {
            return Err(mismatch("bool", ty));
        }
        out.put_u8(u8::from(*self));
        Ok(true)
    }
}

/// Integers go into any integer type they fit: an `i64` holding 7 into an `int4` column
/// is fine, 2^40 is an error naming both.
fn put_integer(value: i64, rust: &str, ty: Type, out: &mut BytesMut) -> Result<bool, String> {
    let out_of_range = || format!("{value} does not fit a parameter of type {ty}");
    match ty {
        Type::INT2 => out.put_i16(i16::try_from(value).map_err(|_| out_of_range())?),
        Type::INT4 => out.put_i32(i32::try_from(value).map_err(|_| out_of_range())?),
        Type::INT8 => out.put_i64(value),
        Type::OID => out.put_u32(u32::try_from(value).map_err(|_| out_of_range())?),
        _ => return Err(mismatch(rust, ty)),
    }
    Ok(true)
}

impl ToSql for i16 {
    fn to_sql(&self, ty: Type, out: &mut BytesMut) -> Result<bool, String> {
        put_integer(i64::from(*self), "i16", ty, out)
    }
}

impl ToSql for i32 {
    fn to_sql(&self, ty: Type, out: &mut BytesMut) -> Result<bool, String> {
        put_integer(i64::from(*self), "i32", ty, out)
    }
}

impl ToSql for i64 {
    fn to_sql(&self, ty: Type, out: &mut BytesMut) -> Result<bool, String> {
        put_integer(*self, "i64", ty, out)
    }
}

impl ToSql for u32 {
    fn to_sql(&self, ty: Type, out: &mut BytesMut) -> Result<bool, String> {
        put_integer(i64::from(*self), "u32", ty, out)
    }
}

impl ToSql for Timestamp {
    fn to_sql(&self, ty: Type, out: &mut BytesMut) -> Result<bool, String> {
        if !matches!(ty, Type::TIMESTAMP | Type::TIMESTAMPTZ) {
            return Err(mismatch("Timestamp", ty));
        }
        out.put_i64(self.to_pg()?);
        Ok(true)
    }
}

impl<T: ToSql> ToSql for Option<T> {
    fn to_sql(&self, ty: Type, out: &mut BytesMut) -> Result<bool, String> {
        match self {
            Some(value) => value.to_sql(ty, out),
            None => Ok(false),
        }
    }
}

impl<T: ToSql + ?Sized> ToSql for &T {
    fn to_sql(&self, ty: Type, out: &mut BytesMut) -> Result<bool, String> {
        (**self).to_sql(ty, out)
    }
}

fn not_null<'a>(rust: &str, raw: Option<&'a [u8]>) -> Result<&'a [u8], String> {
    raw.ok_or_else(|| format!("the value is NULL: read it as Option<{rust}>"))
}

fn unreadable(rust: &str, ty: Type) -> String {
    format!(
        "a column of type {ty} cannot be read as a Rust {rust}: cast it in SQL (e.g. ::{}) or read another Rust type",
        sql_name_of(rust)
    )
}

fn fixed<const N: usize>(raw: &[u8], ty: Type) -> Result<[u8; N], String> {
    raw.try_into().map_err(|_| {
        format!(
            "a {ty} value of {} bytes, where {N} were expected: the server sent a malformed value",
            raw.len()
        )
    })
}

impl FromSql for String {
    fn from_sql(ty: Type, raw: Option<&[u8]>) -> Result<String, String> {
        let raw = not_null("String", raw)?;
        if !ty.is_text() {
            return Err(unreadable("String", ty));
        }
        String::from_utf8(raw.to_vec()).map_err(|_| {
            format!("a {ty} value is not UTF-8: the server's client_encoding is not UTF8")
        })
    }
}

impl FromSql for Vec<u8> {
    fn from_sql(ty: Type, raw: Option<&[u8]>) -> Result<Vec<u8>, String> {
        let raw = not_null("Vec<u8>", raw)?;
        if ty != Type::BYTEA {
            return Err(unreadable("byte slice", ty));
        }
        Ok(raw.to_vec())
    }
}

impl FromSql for bool {
    fn from_sql(ty: Type, raw: Option<&[u8]>) -> Result<bool, String> {
        let raw = not_null("bool", raw)?;
        if ty != Type::BOOL {
            return Err(unreadable("bool", ty));
        }
        Ok(fixed::<1>(raw, ty)?[0] != 0)
    }
}

/// Any integer column, into any Rust integer it fits.
fn get_integer(rust: &str, ty: Type, raw: Option<&[u8]>) -> Result<i64, String> {
    let raw = not_null(rust, raw)?;
    Ok(match ty {
        Type::INT2 => i64::from(i16::from_be_bytes(fixed(raw, ty)?)),
        Type::INT4 => i64::from(i32::from_be_bytes(fixed(raw, ty)?)),
        Type::INT8 => i64::from_be_bytes(fixed(raw, ty)?),
        Type::OID => i64::from(u32::from_be_bytes(fixed(raw, ty)?)),
        _ => return Err(unreadable(rust, ty)),
    })
}

macro_rules! integer_from_sql {
    ($t:ty, $name:literal) => {
        impl FromSql for $t {
            fn from_sql(ty: Type, raw: Option<&[u8]>) -> Result<$t, String> {
                let value = get_integer($name, ty, raw)?;
                <$t>::try_from(value).map_err(|_| {
                    format!(
                        "the {ty} value {value} does not fit a Rust {}: read it as i64",
                        $name
                    )
                })
            }
        }
    };
}

integer_from_sql!(i16, "i16");
integer_from_sql!(i32, "i32");
integer_from_sql!(i64, "i64");
integer_from_sql!(u32, "u32");

impl FromSql for Timestamp {
    fn from_sql(ty: Type, raw: Option<&[u8]>) -> Result<Timestamp, String> {
        let raw = not_null("Timestamp", raw)?;
        if !matches!(ty, Type::TIMESTAMP | Type::TIMESTAMPTZ) {
            return Err(unreadable("Timestamp", ty));
        }
        Timestamp::from_pg(i64::from_be_bytes(fixed(raw, ty)?))
    }
}

impl<T: FromSql> FromSql for Option<T> {
    fn from_sql(ty: Type, raw: Option<&[u8]>) -> Result<Option<T>, String> {
        match raw {
            None => Ok(None),
            Some(_) => T::from_sql(ty, raw).map(Some),
        }
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day), the inverse of `days_from_civil`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn timestamps_print_and_parse_as_postgres_shows_them() {
        let t = Timestamp::parse("2000-01-01 00:00:00").expect("parses");
        assert_eq!(t.unix_micros(), PG_EPOCH_UNIX_MICROS);
        assert_eq!(t.to_pg(), Ok(0));
        let t = Timestamp::parse("2024-02-29T23:59:58.5").expect("parses");
        assert_eq!(t.to_string(), "2024-02-29 23:59:58.500000");
        assert_eq!(
            Timestamp::from_unix_micros(-1).to_string(),
            "1969-12-31 23:59:59.999999"
        );
        assert_eq!(Timestamp::parse("2023-02-29 00:00:00"), None);
        assert_eq!(Timestamp::parse("2023-01-01 24:00:00"), None);
        assert_eq!(Timestamp::parse("2023-01-01 00:00:00+00"), None);
        assert_eq!(Timestamp::parse("infinity"), Some(Timestamp::INFINITY));
        assert_eq!(Timestamp::INFINITY.to_pg(), Ok(i64::MAX));
        assert_eq!(Timestamp::from_pg(i64::MIN), Ok(Timestamp::NEG_INFINITY));
    }

    #[test]
    fn integers_go_into_any_integer_type_they_fit() {
        let mut out = BytesMut::new();
        assert_eq!(7i64.to_sql(Type::INT4, &mut out), Ok(true));
        assert_eq!(&out[..], &[0, 0, 0, 7]);
        let err = (1i64 << 40).to_sql(Type::INT4, &mut out).unwrap_err();
        assert!(
            err.contains("does not fit a parameter of type int4"),
            "{err}"
        );
        let err = 1i32.to_sql(Type::TEXT, &mut out).unwrap_err();
        assert!(err.contains("$1::int4"), "{err}");
        assert_eq!(
            i32::from_sql(Type::INT8, Some(&5i64.to_be_bytes())),
            Ok(5i32)
        );
        assert!(i32::from_sql(Type::INT8, Some(&(1i64 << 40).to_be_bytes())).is_err());
        assert_eq!(Option::<i32>::from_sql(Type::INT4, None), Ok(None));
        let err = i32::from_sql(Type::INT4, None).unwrap_err();
        assert!(err.contains("Option<i32>"), "{err}");
        assert!(i32::from_sql(Type::INT4, Some(&[1, 2])).is_err());
    }

    proptest! {
        #[test]
        fn timestamps_survive_display_and_parse(micros in -62_135_596_800_000_000i64..253_402_300_799_999_999i64) {
            let t = Timestamp::from_unix_micros(micros);
            prop_assert_eq!(Timestamp::parse(&t.to_string()), Some(t));
            prop_assert_eq!(Timestamp::from_pg(t.to_pg().expect("in range")), Ok(t));
        }

        #[test]
        fn civil_dates_round_trip(days in -1_000_000i64..1_000_000i64) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
