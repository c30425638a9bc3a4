//! Reading Inforu's answer to a send: `<Result><Status>…</Status><Description>…</Description>…`.
//! The answer is outside bytes; this module is pure and builds without the `node` feature, for
//! the `inforu_answer` fuzz target.

use super::super::SmsError;

/// Maps an Inforu `<Result>` answer to success or the error it reports.
pub fn check_result(body: &str) -> Result<(), SmsError> {
    let Some(status_text) = element_text(body, "Status") else {
        let start: String = body.chars().take(80).collect();
        return Err(SmsError::BadResponse {
            detail: format!("no <Status> in the answer {start:?}"),
        });
    };
    let status: i32 = status_text
        .trim()
        .parse()
        .map_err(|_| SmsError::BadResponse {
            detail: format!(
                "the <Status> {:?} is not a number",
                status_text.chars().take(20).collect::<String>()
            ),
        })?;
    let detail = element_text(body, "Description")
        .map(|text| text.trim().chars().take(200).collect())
        .unwrap_or_default();
    match status {
        1 => Ok(()),
        -2 | -26 => Err(SmsError::Unauthorized { detail }),
        -15..=-13 => Err(SmsError::QuotaExhausted { detail }),
        -6 | -17 | -18 => Err(SmsError::RecipientRefused { detail }),
        -20 | -21 | -90 => Err(SmsError::SenderRefused { detail }),
        other => Err(SmsError::Refused {
            status: other,
            detail,
        }),
    }
}

/// The text between `<name>` and `</name>`, first occurrence.
fn element_text<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = body.find(&open)? + open.len();
    let end = start + body.get(start..)?.find(&close)?;
    body.get(start..end)
}
