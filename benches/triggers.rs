//! `next_fire_time` speed: typical cron expressions (field form and crontab strings), the
//! other triggers, and the worst cases (unsatisfiable combinations, which must end fast).
//!
//! ```text
//! cargo bench --bench triggers
//! ```

use std::hint::black_box;

use apsched::trigger::{CalendarInterval, Cron, Interval, Trigger, TriggerSpec};
use chrono::{DateTime, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 15, 10, 20, 30).unwrap()
}

fn bench_next(c: &mut Criterion, name: &str, t: &dyn Trigger) {
    let now = now();
    c.bench_function(name, |b| b.iter(|| t.next_fire_time(None, black_box(now))));
}

fn cron_field(c: &mut Criterion) {
    let ny = chrono_tz::America::New_York;
    let cases: Vec<(&str, Cron)> = vec![
        (
            "cron/hour=5 (UTC)",
            Cron::builder().hour(5).build().unwrap(),
        ),
        (
            "cron/minute=*/2 (UTC)",
            Cron::builder().minute("*/2").build().unwrap(),
        ),
        (
            "cron/mon-fri 09:30 (New_York)",
            Cron::builder()
                .day_of_week("mon-fri")
                .hour(9)
                .minute(30)
                .timezone(ny)
                .build()
                .unwrap(),
        ),
        (
            "cron/last fri of month 17:00 (New_York)",
            Cron::builder()
                .day("last fri")
                .hour(17)
                .timezone(ny)
                .build()
                .unwrap(),
        ),
        (
            "cron/week */2 mon 10:00 (UTC)",
            Cron::builder()
                .week("*/2")
                .day_of_week("mon")
                .hour(10)
                .build()
                .unwrap(),
        ),
        (
            "cron/quarterly 1st 00:00 (UTC)",
            Cron::builder()
                .month("1,4,7,10")
                .day(1)
                .hour(0)
                .build()
                .unwrap(),
        ),
    ];
    for (name, t) in &cases {
        bench_next(c, name, t);
    }
}

fn crontab(c: &mut Criterion) {
    let ny = chrono_tz::America::New_York;
    for expr in ["0 9 * * 1-5", "*/15 * * * *", "0 0 13 * 5", "30 2 * * *"] {
        let t = Cron::builder().crontab(expr).timezone(ny).build().unwrap();
        bench_next(c, &format!("crontab/'{expr}' (New_York)"), &t);
    }
    c.bench_function("crontab/parse '0 9 * * 1-5'", |b| {
        b.iter(|| Cron::builder().crontab(black_box("0 9 * * 1-5")).build())
    });
}

fn others(c: &mut Criterion) {
    let interval = Interval::builder()
        .minutes(10)
        .start_date("2024-01-01 00:00:00")
        .build()
        .unwrap();
    bench_next(c, "interval/minutes=10", &interval);
    let cal = CalendarInterval::builder()
        .days(1)
        .hour(9)
        .start_date("2024-01-01")
        .build()
        .unwrap();
    bench_next(c, "calendarinterval/days=1", &cal);
    let cal = CalendarInterval::builder()
        .months(1)
        .hour(9)
        .start_date("2020-01-31")
        .build()
        .unwrap();
    bench_next(c, "calendarinterval/months=1 from 2020", &cal);
    let and: TriggerSpec = serde_json::from_str(
        r#"{"kind":"and","triggers":[{"kind":"cron","hour":"*/2"},{"kind":"cron","hour":"*/3"}]}"#,
    )
    .unwrap();
    bench_next(c, "and/hour */2 & */3", &and);
    c.bench_function("serde/deserialize cron", |b| {
        b.iter(|| {
            serde_json::from_str::<TriggerSpec>(black_box(
                r#"{"kind":"cron","hour":"2","minute":"30","timezone":"America/New_York"}"#,
            ))
        })
    });
}

fn worst(c: &mut Criterion) {
    let cases: Vec<(&str, Cron)> = vec![
        (
            "worst/week=1, month=6",
            Cron::builder().week(1).month(6).build().unwrap(),
        ),
        (
            "worst/day=31, month=feb",
            Cron::builder().day(31).month("feb").build().unwrap(),
        ),
        (
            "worst/day=30, month=2",
            Cron::builder().day(30).month(2).build().unwrap(),
        ),
        (
            "worst/year */4, feb 29, mon",
            Cron::builder()
                .year("*/4")
                .month(2)
                .day(29)
                .day_of_week("mon")
                .build()
                .unwrap(),
        ),
    ];
    for (name, t) in &cases {
        bench_next(c, name, t);
    }
    // Crossing a DST transition (the slow path).
    let ny = chrono_tz::America::New_York;
    let t = Cron::builder()
        .hour(2)
        .minute(30)
        .timezone(ny)
        .build()
        .unwrap();
    let at = Utc.with_ymd_and_hms(2024, 3, 9, 17, 0, 0).unwrap();
    c.bench_function("dst/New_York spring gap 02:30", |b| {
        b.iter(|| t.next_fire_time(None, black_box(at)))
    });
    // After 2099 offsets come from the zone's footer rule, computed per lookup.
    let t = Cron::builder().hour(12).timezone(ny).build().unwrap();
    let at = Utc.with_ymd_and_hms(2100, 7, 10, 0, 0, 0).unwrap();
    c.bench_function("dst/New_York hour=12 in 2100", |b| {
        b.iter(|| t.next_fire_time(None, black_box(at)))
    });
}

criterion_group!(benches, cron_field, crontab, others, worst);
criterion_main!(benches);
