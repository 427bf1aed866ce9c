//! One request over HTTP, through a gateway or straight to the upstream mock: sends the
//! scenario's body, reads the whole answer (noting when a stream's first event came),
//! classifies the outcome and, through the gateway, reads the `usage.cost` it reported.

use crate::client::{Response, Target, Transport};
use crate::cost;
use crate::scenario::{Kind, Mix};
use crate::stats::{Outcome, Sample};
use bytes::Bytes;
use http::header::HeaderValue;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Most bytes of an answer kept for parsing; a longer answer is an error (the largest
/// test prompt echoed back is far smaller).
const RESPONSE_BYTES_MAX: usize = 16 << 20;

/// The error kind of a stream that ended without `[DONE]`, by an error event or a
/// dropped connection.
const STREAM_CUT: &str = "stream cut";

/// Where a phase sends its requests.
pub enum Destination {
    /// Gateways' chat completion URLs (round-robin), the `Authorization` of each key of
    /// each funded account, and of each key of the broke account. Both parsed once, not
    /// per request: the harness shares the machine with what it measures.
    Gateways { targets: Vec<Target>, keys: Vec<Vec<HeaderValue>>, broke_keys: Vec<HeaderValue> },
    /// The upstream mock's chat completion URL.
    Upstream { target: Box<Target> },
}

impl Destination {
    /// Connections opened to every target so far.
    pub fn connections_opened(&self) -> u64 {
        match self {
            Destination::Gateways { targets, .. } => {
                targets.iter().map(Target::connections_opened).sum()
            }
            Destination::Upstream { target } => target.connections_opened(),
        }
    }
}

/// The `Authorization` a request with `key` carries, marked sensitive (never logged).
pub fn bearer(key: &str) -> anyhow::Result<HeaderValue> {
    let mut value = HeaderValue::try_from(format!("Bearer {key}"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Everything a request needs, shared by the tasks of a phase.
pub struct Exchange {
    /// Longest a request may take, its whole answer read.
    pub timeout: Duration,
    pub mix: Arc<Mix>,
    pub destination: Destination,
}

impl Exchange {
    /// Sends request number `idx`; `None` when the destination never receives that
    /// scenario (a 402 goes no further than the gateway, so the direct phase skips it).
    pub async fn send(self: Arc<Self>, idx: u64) -> Option<Sample> {
        let pick = self.mix.pick(idx);
        let scenario = &self.mix.scenarios()[pick.scenario_idx];
        let (target, key, body, account_idx) = match &self.destination {
            Destination::Gateways { targets, keys, broke_keys } => {
                let target = &targets[(idx % targets.len() as u64) as usize];
                let (account_idx, account_keys) = if scenario.kind == Kind::Broke {
                    (keys.len(), broke_keys)
                } else {
                    (pick.account_idx, &keys[pick.account_idx])
                };
                let key = &account_keys[pick.key_idx % account_keys.len()];
                (target, Some(key), scenario.gateway_body.clone(), Some(account_idx))
            }
            Destination::Upstream { target } => {
                (&**target, None, scenario.direct_body.clone()?, None)
            }
        };
        // One timer for the whole exchange, its answer read to the end.
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let response = tokio::select! {
            biased;
            response = target.post(key, body) => response,
            () = &mut deadline => Err(Transport::Timeout),
        };
        let (outcome, first_token, cost) = match response {
            Ok(response) => {
                read(response, deadline, scenario.kind, scenario.stream, account_idx).await
            }
            Err(error) => (Outcome::Error(error.kind().into()), None, None),
        };
        let done = Instant::now();
        Some(Sample { scenario: scenario.kind.name(), outcome, first_token, done, cost })
    }
}

type Read = (Outcome, Option<Instant>, Option<(usize, u128)>);

async fn read(
    mut response: Response<'_>,
    mut deadline: Pin<&mut Sleep>,
    kind: Kind,
    stream: bool,
    account_idx: Option<usize>,
) -> Read {
    let status = response.status.as_u16();
    let mut body = Vec::new();
    let mut first_token = None;
    loop {
        let chunk = tokio::select! {
            biased;
            chunk = response.chunk() => chunk,
            () = &mut deadline => Err(Transport::Timeout),
        };
        match chunk {
            Ok(Some(chunk)) => {
                if first_token.is_none() && stream && contains_event(&chunk) {
                    first_token = Some(Instant::now());
                }
                if body.len() + chunk.len() > RESPONSE_BYTES_MAX {
                    return (Outcome::Error("response too large".into()), first_token, None);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            // Whatever cost the body carried so far was seen by the client.
            Err(_) if stream && status == 200 => {
                let cost = charged(account_idx, cost::of_stream(&body).ok().map(|cost| cost.0));
                return (Outcome::Error(STREAM_CUT.into()), first_token, cost);
            }
            Err(error) => return (Outcome::Error(error.kind().into()), first_token, None),
        }
    }
    match status {
        200 => {}
        402 if kind == Kind::Broke => return (Outcome::Refused, None, None),
        status => return (Outcome::Error(format!("status {status}")), None, None),
    }
    let completed = !stream || cost::stream_completed(&body);
    let Some(account_idx) = account_idx else {
        let outcome = if completed { Outcome::Ok } else { Outcome::Error(STREAM_CUT.into()) };
        return (outcome, first_token, None);
    };
    let cost = if stream { cost::of_stream(&body) } else { cost::of_completion(&body) };
    match (completed, cost) {
        (true, Ok(cost)) => (Outcome::Ok, first_token, Some((account_idx, cost.0))),
        // An error event after the first byte still carries what was charged.
        (false, Ok(cost)) => {
            (Outcome::Error(STREAM_CUT.into()), first_token, Some((account_idx, cost.0)))
        }
        (false, Err(_)) => (Outcome::Error(STREAM_CUT.into()), first_token, None),
        (true, Err(error)) => (Outcome::Error(error.kind().into()), first_token, None),
    }
}

fn charged(account_idx: Option<usize>, cost: Option<u128>) -> Option<(usize, u128)> {
    Some((account_idx?, cost?))
}

fn contains_event(chunk: &Bytes) -> bool {
    chunk.windows(5).any(|window| window == b"data:")
}
