//! Server-sent events for the open pages, fed by the scheduler's `Event` broadcast and
//! throttled per sweep: whatever happens to a sweep within one `THROTTLE` window becomes at
//! most one message (`event: sweep`, data `{"sweep": ID, "results": BOOL}`; results: a trial
//! finished or failed an attempt, so the page reloads its tables and curves, not only the
//! counts). A page that falls behind the broadcast gets one message per sweep it may have
//! missed. The task serving a page ends when the page goes.

use crate::scheduler::Event;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use cbsweep_common::SweepId;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

/// At most one message per sweep this often.
pub(crate) const THROTTLE: Duration = Duration::from_millis(500);

/// The sweep an event is about, and whether it changed results (not only progress).
fn about(e: &Event) -> (&SweepId, bool) {
    match e {
        Event::TrialLeased { sweep, .. } | Event::Epoch { sweep, .. } => (sweep, false),
        Event::TrialFinished { sweep, .. } | Event::TrialRetry { sweep, .. } | Event::SweepFinished { sweep } => (sweep, true),
    }
}

/// The event stream of one page; `only`: the sweep page's sweep (None: every sweep).
pub(crate) fn stream(mut events: broadcast::Receiver<Event>, only: Option<SweepId>) -> impl axum::response::IntoResponse {
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(16);
    tokio::spawn(async move {
        let mut due: BTreeMap<SweepId, bool> = BTreeMap::new();
        let mut tick = tokio::time::interval(THROTTLE);
        // Lagged: which sweeps were missed is unknown; every sweep seen so far is due.
        let mut seen: Vec<SweepId> = only.iter().cloned().collect();
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                e = events.recv() => match e {
                    Ok(e) => {
                        let (sweep, results) = about(&e);
                        if only.as_ref().is_some_and(|o| o != sweep) {
                            continue;
                        }
                        if !seen.contains(sweep) {
                            seen.push(sweep.clone());
                        }
                        *due.entry(sweep.clone()).or_default() |= results;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for s in &seen {
                            due.insert(s.clone(), true);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    for (sweep, results) in std::mem::take(&mut due) {
                        let data = serde_json::json!({ "sweep": sweep.0, "results": results }).to_string();
                        if tx.send(Ok(SseEvent::default().event("sweep").data(data))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}
