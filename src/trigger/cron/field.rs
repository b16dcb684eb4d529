//! Cron field names, their value ranges, and [`CronField`], the value a field is given.

use std::fmt;

/// One of the eight fields of the field-form cron trigger, in APScheduler's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FieldKind {
    /// `year` (1970–9999; `*/n` counts from 1970).
    Year,
    /// `month` (1–12 or `jan`–`dec`).
    Month,
    /// `day` of month (1–31, `last`, `xth y`, `last x`).
    Day,
    /// ISO `week` (1–53).
    Week,
    /// `day_of_week` (0–6 = Monday–Sunday or `mon`–`sun`).
    DayOfWeek,
    /// `hour` (0–23).
    Hour,
    /// `minute` (0–59).
    Minute,
    /// `second` (0–59).
    Second,
}

impl FieldKind {
    /// All fields, most significant first.
    pub const ALL: [FieldKind; 8] = [
        FieldKind::Year,
        FieldKind::Month,
        FieldKind::Day,
        FieldKind::Week,
        FieldKind::DayOfWeek,
        FieldKind::Hour,
        FieldKind::Minute,
        FieldKind::Second,
    ];

    /// APScheduler's parameter name.
    pub const fn name(self) -> &'static str {
        match self {
            FieldKind::Year => "year",
            FieldKind::Month => "month",
            FieldKind::Day => "day",
            FieldKind::Week => "week",
            FieldKind::DayOfWeek => "day_of_week",
            FieldKind::Hour => "hour",
            FieldKind::Minute => "minute",
            FieldKind::Second => "second",
        }
    }

    /// Smallest value.
    pub const fn min(self) -> u32 {
        match self {
            FieldKind::Year => 1970,
            FieldKind::Month | FieldKind::Day | FieldKind::Week => 1,
            _ => 0,
        }
    }

    /// Largest value.
    pub const fn max(self) -> u32 {
        match self {
            FieldKind::Year => 9999,
            FieldKind::Month => 12,
            FieldKind::Day => 31,
            FieldKind::Week => 53,
            FieldKind::DayOfWeek => 6,
            FieldKind::Hour => 23,
            FieldKind::Minute | FieldKind::Second => 59,
        }
    }

    /// The value a field less significant than every given field takes (APScheduler's
    /// default filling).
    pub(crate) const fn default_expr(self) -> &'static str {
        match self {
            FieldKind::Year | FieldKind::Week | FieldKind::DayOfWeek => "*",
            FieldKind::Month | FieldKind::Day => "1",
            _ => "0",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FieldKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The expression given to a cron field: a string such as `"*/2"`, `"mon-fri"`,
/// `"last fri"`, or an integer. Checked when the trigger is built.
///
/// ```
/// use apsched::trigger::CronField;
/// assert_eq!(CronField::from(5).as_str(), "5");
/// assert_eq!(CronField::from("*/2").as_str(), "*/2");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CronField(pub(crate) String);

impl CronField {
    /// The expression text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for CronField {
    fn from(s: &str) -> Self {
        CronField(s.to_string())
    }
}
impl From<String> for CronField {
    fn from(s: String) -> Self {
        CronField(s)
    }
}
impl From<&String> for CronField {
    fn from(s: &String) -> Self {
        CronField(s.clone())
    }
}
macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl From<$t> for CronField {
            fn from(v: $t) -> Self {
                CronField(v.to_string())
            }
        }
    )*};
}
int_field!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);
