//! Unit tests of the crate-private part of triggers: the scheduler's default zone
//! (`TriggerSpec::with_default_timezone`). The public behaviour is tested in
//! `tests/triggers.rs`.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::{Trigger, TriggerSpec};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or_else(|e| panic!("bad test instant {s}: {e}"))
}

fn spec(json: &str) -> TriggerSpec {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

#[test]
fn default_timezone_fills_unset_zones_recursively() {
    let ny = chrono_tz::America::New_York;
    let s = spec(
        r#"{"kind":"or","triggers":[{"kind":"cron","hour":9},{"kind":"date","run_date":"2024-01-15 09:00:00","timezone":"UTC"}]}"#,
    );
    let s = s.with_default_timezone(ny);
    // the cron now reads 09:00 in New York; the date keeps its own zone
    let TriggerSpec::Or(o) = &s else {
        panic!("not an or")
    };
    assert_eq!(o.triggers()[0].timezone(), Some(ny));
    assert_eq!(o.triggers()[1].timezone(), Some(Tz::UTC));
    assert_eq!(
        o.triggers()[0].next_fire_time(None, utc("2024-01-16T00:00:00Z")),
        Some(utc("2024-01-16T09:00:00-05:00"))
    );
    // a naive start date is re-read in the filled-in zone
    let i = spec(r#"{"kind":"interval","minutes":10,"start_date":"2024-01-15 10:10:00"}"#)
        .with_default_timezone(ny);
    assert_eq!(
        i.next_fire_time(None, utc("2024-01-15T00:00:00Z")),
        Some(utc("2024-01-15T10:10:00-05:00"))
    );
    // an `and` passes the zone to its children too
    let a = spec(r#"{"kind":"and","triggers":[{"kind":"calendarinterval","days":1,"hour":9}]}"#)
        .with_default_timezone(ny);
    let TriggerSpec::And(a) = &a else {
        panic!("not an and")
    };
    assert_eq!(a.triggers()[0].timezone(), Some(ny));
}

#[test]
fn default_timezone_at_the_edges_of_the_range_never_panics() {
    for json in [
        r#"{"kind":"date","run_date":"9999-12-31 23:59:59"}"#,
        r#"{"kind":"date","run_date":"0001-01-01 00:00:00"}"#,
        r#"{"kind":"cron","hour":1,"end_date":"9999-12-31 23:59:59"}"#,
        r#"{"kind":"interval","seconds":1,"start_date":"0001-01-01"}"#,
        r#"{"kind":"calendarinterval","days":1,"start_date":"9999-12-31"}"#,
    ] {
        for tz in [chrono_tz::Pacific::Kiritimati, chrono_tz::Etc::GMTPlus12] {
            let t = spec(json).with_default_timezone(tz);
            assert_eq!(t.timezone(), Some(tz), "{json}");
            let _ = t.try_next_fire_time(None, utc("2024-01-01T00:00:00Z"));
        }
    }
}
