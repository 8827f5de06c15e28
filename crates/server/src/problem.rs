//! RFC 7807 problem+json answers. Every error botfleet's HTTP API returns has this
//! shape; `check` is a stable snake_case name clients and tests can match on.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// The check that failed (`signature`, `service_url_host`, `body_too_large`, ...).
    pub check: &'static str,
}

impl Problem {
    pub fn new(status: u16, check: &'static str, detail: impl Into<String>) -> Self {
        let title = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        Self {
            kind: format!("urn:botfleet:problem:{check}"),
            title,
            status,
            detail: detail.into(),
            check,
        }
    }

    pub fn response(&self) -> HttpResponse {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut builder = HttpResponse::build(status);
        builder.content_type("application/problem+json");
        if matches!(self.status, 429 | 503) {
            builder.insert_header(("Retry-After", "1"));
        }
        builder.json(self)
    }
}
