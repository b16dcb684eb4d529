//! Every run is an `apsched.run` tracing span, so an OpenTelemetry (or any `tracing`)
//! subscriber shows runs as traces with no extra code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apsched::clock::TestClock;
use apsched::trigger::Interval;
use apsched::{EventKind, Scheduler};
use chrono::{TimeZone, Utc};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// The fields of every span, by span (name under "name"), and which span each thread is in
/// (what `Span::current` asks the subscriber, as tracing-subscriber's registry answers it).
#[derive(Clone, Default)]
struct Spans(
    Arc<Mutex<Vec<HashMap<String, String>>>>,
    Arc<Mutex<Vec<&'static Metadata<'static>>>>,
);

thread_local! {
    static ENTERED: std::cell::RefCell<Vec<Id>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
}

impl Subscriber for Spans {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut fields = HashMap::from([("name".to_string(), attrs.metadata().name().into())]);
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().unwrap();
        spans.push(fields);
        self.1.lock().unwrap().push(attrs.metadata());
        Id::from_u64(spans.len() as u64)
    }
    fn record(&self, id: &Id, values: &Record<'_>) {
        let mut spans = self.0.lock().unwrap();
        let fields = &mut spans[id.into_u64() as usize - 1];
        values.record(&mut Fields(fields));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, id: &Id) {
        ENTERED.with(|e| e.borrow_mut().push(id.clone()));
    }
    fn exit(&self, _: &Id) {
        ENTERED.with(|e| e.borrow_mut().pop());
    }
    fn current_span(&self) -> tracing_core::span::Current {
        match ENTERED.with(|e| e.borrow().last().cloned()) {
            Some(id) => {
                let meta = self.1.lock().unwrap()[id.into_u64() as usize - 1];
                tracing_core::span::Current::new(id, meta)
            }
            None => tracing_core::span::Current::none(),
        }
    }
}

#[test]
fn each_run_is_a_span_with_its_outcome() {
    let spans = Spans::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    // Other tests of this binary run at the same time on threads with no subscriber. While
    // a single dispatcher is registered, tracing asks the thread that first reaches a
    // callsite, and caches the answer for every thread: a sibling test reaching
    // `apsched.run` first cached "never" and this test saw no span (once, in CI). With a
    // second dispatcher registered, every callsite's interest is asked of all of them, so
    // it is "sometimes" and each span asks the current thread's subscriber.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    tracing::subscriber::with_default(spans.clone(), || {
        runtime.block_on(async {
            let clock = TestClock::new(Utc.with_ymd_and_hms(2024, 1, 15, 10, 0, 0).unwrap());
            let s = Scheduler::builder().clock(clock.shared()).build();
            let mut done = s.subscribe(EventKind::JOB_EXECUTED | EventKind::JOB_ERROR);
            s.start().await.unwrap();
            let every_minute = Interval::new(Duration::from_secs(60)).unwrap();
            s.add_job(|| async { 7 })
                .trigger(every_minute.clone())
                .id("fine")
                .await
                .unwrap();
            s.add_job(|| async { Err::<(), _>("no disk") })
                .trigger(every_minute)
                .id("broken")
                .await
                .unwrap();
            done.recv().await.unwrap();
            done.recv().await.unwrap();
            s.shutdown().await.unwrap();
        })
    });
    let spans = spans.0.lock().unwrap();
    let runs: Vec<&HashMap<String, String>> = spans
        .iter()
        .filter(|f| f["name"] == "apsched.run")
        .collect();
    let by_job = |id: &str| {
        runs.iter()
            .find(|f| f.get("job_id").map(String::as_str) == Some(id))
            .unwrap_or_else(|| panic!("no span for {id}: {runs:?}"))
    };
    let fine = by_job("fine");
    assert_eq!(fine["outcome"], "executed");
    assert_eq!(fine["store"], "default");
    assert_eq!(fine["scheduled"], "2024-01-15 10:01:00 UTC");
    assert!(fine.contains_key("lateness_ms"), "{fine:?}");
    assert_eq!(by_job("broken")["outcome"], "error");
}
