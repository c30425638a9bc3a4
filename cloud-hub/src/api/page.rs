//! Pagination, the success envelope, and checks of what clients send.
//!
//! Every value that reaches Postgres is checked here first, so the database never has to refuse
//! it (a refused value would otherwise surface as a 5xx): text length and NUL bytes, times
//! inside the years Postgres and people use, coordinates.

use axum::Json;
use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::ApiError;

/// Rows per page unless asked.
pub const PER_PAGE_DEFAULT: u32 = 50;
/// The most rows per page.
pub const PER_PAGE_MAX: u32 = 200;
/// The highest page number accepted (keeps offsets sane).
pub const PAGE_MAX: u32 = 1_000_000;

/// `?page=&per_page=`.
#[derive(Debug, Deserialize)]
pub struct PageParams {
    page: Option<u32>,
    per_page: Option<u32>,
}

/// A resolved page.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// 1-based page number.
    pub page: u32,
    /// Rows per page.
    pub per_page: u32,
}

impl Page {
    /// SQL `LIMIT`.
    pub fn limit(self) -> i64 {
        i64::from(self.per_page)
    }

    /// SQL `OFFSET`.
    pub fn offset(self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.per_page)
    }
}

impl PageParams {
    /// Checks the numbers: page ≥ 1, 1 ≤ per_page ≤ `PER_PAGE_MAX`.
    pub fn resolve(&self) -> Result<Page, ApiError> {
        let page = self.page.unwrap_or(1);
        let per_page = self.per_page.unwrap_or(PER_PAGE_DEFAULT);
        if page == 0 || page > PAGE_MAX {
            return Err(ApiError::invalid(
                "page",
                format!("page must be 1 to {PAGE_MAX}"),
            ));
        }
        if per_page == 0 || per_page > PER_PAGE_MAX {
            return Err(ApiError::invalid(
                "per_page",
                format!("per_page must be 1 to {PER_PAGE_MAX}"),
            ));
        }
        Ok(Page { page, per_page })
    }
}

/// `{"success": true, "data": [...], "pagination": {...}}`.
pub fn paged<T: Serialize>(items: Vec<T>, page: Page, total: i64) -> Json<Value> {
    let per_page = i64::from(page.per_page);
    Json(json!({
        "success": true,
        "data": items,
        "pagination": {
            "page": page.page,
            "per_page": page.per_page,
            "total": total,
            "total_pages": (total + per_page - 1) / per_page,
        }
    }))
}

/// `{"success": true, "data": value}`.
pub fn ok<T: Serialize>(value: T) -> Json<Value> {
    Json(json!({ "success": true, "data": value }))
}

/// A text field: 1 to `max` characters, no NUL (Postgres refuses it in text).
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() || value.chars().count() > max || value.contains('\0') {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be 1 to {max} characters without NUL"),
        ));
    }
    Ok(())
}

/// An optional text field: absent, or like `check_text` (empty allowed).
pub fn check_optional_text(field: &str, value: Option<&str>, max: usize) -> Result<(), ApiError> {
    match value {
        Some(text) if text.chars().count() > max || text.contains('\0') => Err(ApiError::invalid(
            field,
            format!("{field} must be at most {max} characters without NUL"),
        )),
        _ => Ok(()),
    }
}

/// A time filter between the years 1970 and 9999.
pub fn check_time(field: &str, value: Option<DateTime<Utc>>) -> Result<(), ApiError> {
    match value {
        Some(at) if !(1970..=9999).contains(&at.year()) => Err(ApiError::invalid(
            field,
            format!("{field} must be an RFC 3339 time between the years 1970 and 9999"),
        )),
        _ => Ok(()),
    }
}

/// A number inside `[min, max]`.
pub fn check_range(field: &str, value: Option<f64>, min: f64, max: f64) -> Result<(), ApiError> {
    match value {
        Some(v) if !(v.is_finite() && (min..=max).contains(&v)) => Err(ApiError::invalid(
            field,
            format!("{field} must be between {min} and {max}"),
        )),
        _ => Ok(()),
    }
}
