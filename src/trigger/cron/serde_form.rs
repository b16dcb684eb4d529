//! The serialised form of a [`Cron`]: APScheduler's parameter names, field values as strings.

use serde::{Deserialize, Serialize};

use super::field::{CronField, FieldKind};
use super::Cron;
use crate::error::TriggerError;
use crate::trigger::tz;

/// The serde form: APScheduler's parameter names; field values as strings.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CronRaw {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    year: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    month: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    day: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    week: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    day_of_week: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hour: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    minute: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    second: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crontab: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jitter: Option<f64>,
}

/// A field value from JSON: a string or a non-negative integer.
fn field_value(kind: FieldKind, v: serde_json::Value) -> Result<CronField, TriggerError> {
    match v {
        serde_json::Value::String(s) => Ok(CronField(s)),
        serde_json::Value::Number(n) if n.is_u64() || n.is_i64() => Ok(CronField(n.to_string())),
        other => Err(TriggerError::InvalidField {
            field: kind.name().into(),
            expr: other.to_string(),
            reason: "is not a string or an integer".into(),
        }),
    }
}

impl TryFrom<CronRaw> for Cron {
    type Error = TriggerError;

    fn try_from(raw: CronRaw) -> Result<Self, Self::Error> {
        let mut b = Cron::builder();
        let values = [
            raw.year,
            raw.month,
            raw.day,
            raw.week,
            raw.day_of_week,
            raw.hour,
            raw.minute,
            raw.second,
        ];
        for (kind, v) in FieldKind::ALL.into_iter().zip(values) {
            if let Some(v) = v {
                b = b.field(kind, field_value(kind, v)?);
            }
        }
        if let Some(c) = raw.crontab {
            b = b.crontab(c);
        }
        if let Some(s) = raw.start_date {
            b = b.start_date(s);
        }
        if let Some(s) = raw.end_date {
            b = b.end_date(s);
        }
        if let Some(z) = raw.timezone {
            b = b.timezone(tz::parse_tz("timezone", &z)?);
        }
        if let Some(j) = raw.jitter {
            b = b.jitter(tz::jitter_from_secs(j)?);
        }
        b.build()
    }
}

impl From<&Cron> for CronRaw {
    fn from(c: &Cron) -> Self {
        let v = |k: FieldKind| {
            c.fields[k.index()]
                .as_ref()
                .map(|f| serde_json::Value::String(f.0.clone()))
        };
        CronRaw {
            year: v(FieldKind::Year),
            month: v(FieldKind::Month),
            day: v(FieldKind::Day),
            week: v(FieldKind::Week),
            day_of_week: v(FieldKind::DayOfWeek),
            hour: v(FieldKind::Hour),
            minute: v(FieldKind::Minute),
            second: v(FieldKind::Second),
            crontab: c.crontab.clone(),
            start_date: c.start_date.map(|d| d.to_string()),
            end_date: c.end_date.map(|d| d.to_string()),
            timezone: c.timezone.map(|z| z.name().to_string()),
            jitter: c.jitter.map(|j| j.as_secs_f64()),
        }
    }
}

impl Serialize for Cron {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        CronRaw::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Cron {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = CronRaw::deserialize(d)?;
        Cron::try_from(raw).map_err(serde::de::Error::custom)
    }
}
