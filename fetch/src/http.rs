//! HTTP as the fetchers use it: every request bounded by the job's remaining time, every body by
//! a size, statuses returned rather than raised.

use std::io::Read;
use std::time::Duration;

use crate::{Budget, FetchError};

/// Largest API answer (XML-RPC, JSON) read into memory.
pub const MAX_API_BODY: u64 = 64 * 1024 * 1024;
/// Longest wait for one API call, within the job's time.
const API_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Http")
    }
}

pub struct Answer {
    pub status: u16,
    pub body: ureq::Body,
}

impl Http {
    pub fn new() -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(20)))
            .user_agent(concat!("minion/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self { agent }
    }

    fn limit(budget: &Budget, cap: Duration) -> Result<Duration, FetchError> {
        Ok(budget.time_left()?.min(cap))
    }

    /// A GET whose whole exchange must end within the job's time (and `cap`).
    pub fn get(
        &self,
        service: &'static str,
        url: &str,
        budget: &Budget,
        cap: Option<Duration>,
    ) -> Result<Answer, FetchError> {
        let timeout = Self::limit(budget, cap.unwrap_or(Duration::MAX))?;
        let resp = self
            .agent
            .get(url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .call()
            .map_err(|e| unreachable(service, url, e, timeout))?;
        let status = resp.status().as_u16();
        Ok(Answer {
            status,
            body: resp.into_body(),
        })
    }

    /// An API GET: the body as text (bounded), with its status.
    pub fn get_text(
        &self,
        service: &'static str,
        url: &str,
        budget: &Budget,
    ) -> Result<(u16, String), FetchError> {
        let a = self.get(service, url, budget, Some(API_TIMEOUT))?;
        Ok((a.status, read_text(service, url, a.body)?))
    }

    /// An API POST of `body` (XML-RPC): the answer's text, with its status.
    pub fn post_text(
        &self,
        service: &'static str,
        url: &str,
        content_type: &str,
        body: &str,
        budget: &Budget,
    ) -> Result<(u16, String), FetchError> {
        let timeout = Self::limit(budget, API_TIMEOUT)?;
        let resp = self
            .agent
            .post(url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("Content-Type", content_type)
            .send(body)
            .map_err(|e| unreachable(service, url, e, timeout))?;
        let status = resp.status().as_u16();
        Ok((status, read_text(service, url, resp.into_body())?))
    }
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

fn read_text(service: &'static str, url: &str, body: ureq::Body) -> Result<String, FetchError> {
    let mut text = String::new();
    body.into_reader()
        .take(MAX_API_BODY + 1)
        .read_to_string(&mut text)
        .map_err(|e| FetchError::Unreachable {
            service,
            url: url.to_string(),
            message: format!("reading the answer: {e}"),
        })?;
    if text.len() as u64 > MAX_API_BODY {
        return Err(FetchError::Protocol {
            service,
            message: format!("{url}: answer larger than {MAX_API_BODY} bytes"),
        });
    }
    Ok(text)
}

fn unreachable(service: &'static str, url: &str, e: ureq::Error, timeout: Duration) -> FetchError {
    let message = match e {
        ureq::Error::Timeout(_) => format!("no answer within {}s", timeout.as_secs_f64().ceil()),
        other => other.to_string(),
    };
    FetchError::Unreachable {
        service,
        url: url.to_string(),
        message,
    }
}

/// A URL path segment: names are already plain (`minion_formula::check_name`); only `^` and `:`
/// need escaping among the characters that allows.
pub fn segment(s: &str) -> String {
    s.replace('^', "%5E").replace(':', "%3A")
}
