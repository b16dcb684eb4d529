//! One scheduled time's run inside its `apsched.run` tracing span, when a subscriber wants
//! the span: a future that is the body itself when nobody traces (so an untraced run's task
//! carries no span), and the body boxed with its span otherwise.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tracing::instrument::Instrumented;
use tracing::Instrument;

pin_project_lite::pin_project! {
    /// See the module docs.
    #[project = TracedProj]
    pub(crate) enum Traced<F> {
        Plain { #[pin] body: F },
        Spanned { body: Pin<Box<Instrumented<F>>> },
    }
}

impl<F: Future> Traced<F> {
    /// `body`, inside `span` if there is one.
    pub(crate) fn new(body: F, span: Option<tracing::Span>) -> Self {
        match span {
            None => Traced::Plain { body },
            Some(span) => Traced::Spanned {
                body: Box::pin(body.instrument(span)),
            },
        }
    }
}

impl<F: Future> Future for Traced<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            TracedProj::Plain { body } => body.poll(cx),
            TracedProj::Spanned { body } => body.as_mut().poll(cx),
        }
    }
}
