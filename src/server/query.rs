//! Query strings of kubelet API requests, decoded strictly: `a=1&b=x%20y+z` →
//! `[("a", "1"), ("b", "x y z")]`. A `%` that does not start a two-digit hex
//! escape is an error, as in Go's `url.ParseQuery` ("invalid URL escape"), and so
//! is a decoded key or value that is not UTF-8: the request gets a 400 rather than
//! a guess. Decoding is `percent_encoding`'s (the crate under `form_urlencoded`,
//! whose own parser is lossy and so cannot refuse either case).
//!
//! Also the container log options as upstream decodes and validates them
//! (pkg/kubelet/server/server.go getContainerLogs: PodLogOptions from the query,
//! then ValidatePodLogOptions).

use chrono::{DateTime, Utc};
use percent_encoding::percent_decode;
use thiserror::Error;

/// Why a query string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QueryError {
    /// A `%` not followed by two hex digits (Go's url.EscapeError).
    #[error("invalid URL escape {0:?}")]
    Escape(String),
    /// A key or value whose percent-decoded bytes are not UTF-8.
    #[error("query parameter {0:?} is not valid UTF-8 once decoded")]
    Utf8(String),
}

/// Splits and decodes `q` (the part after `?`); empty pairs (`a=1&&b=2`) are skipped.
pub fn parse(q: &str) -> Result<Vec<(String, String)>, QueryError> {
    check_escapes(q)?;
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Go's url.unescape check: every `%` starts `%XX` with two hex digits.
fn check_escapes(q: &str) -> Result<(), QueryError> {
    let b = q.as_bytes();
    for (i, _) in b.iter().enumerate().filter(|(_, c)| **c == b'%') {
        let digits: Vec<u8> = b.iter().skip(i + 1).take(2).copied().collect();
        if digits.len() < 2 || !digits.iter().all(u8::is_ascii_hexdigit) {
            // What Go quotes: the `%` and up to two bytes after it.
            let shown: Vec<u8> = std::iter::once(b'%').chain(digits).collect();
            return Err(QueryError::Escape(String::from_utf8_lossy(&shown).into_owned()));
        }
    }
    Ok(())
}

fn decode(s: &str) -> Result<String, QueryError> {
    let plus_as_space: Vec<u8> = s.bytes().map(|b| if b == b'+' { b' ' } else { b }).collect();
    percent_decode(&plus_as_space)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| QueryError::Utf8(s.to_string()))
}

/// The first value of `key`, as Go's `url.Values.Get`.
pub fn first<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// PodLogOptions as `/containerLogs` reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub tail_lines: Option<i64>,
    pub since_seconds: Option<i64>,
    pub since_time: Option<DateTime<Utc>>,
    pub limit_bytes: Option<i64>,
    pub timestamps: bool,
    pub previous: bool,
    pub follow: bool,
}

/// Why log options were refused: `Decode` is upstream's 400, `Invalid` its 422.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LogQueryError {
    /// A value of the wrong type (`tailLines=x`, a sinceTime that is not RFC 3339).
    #[error("{field}={value:?} cannot be decoded")]
    Decode { field: &'static str, value: String },
    /// Values that decode but fail ValidatePodLogOptions.
    #[error("{0}")]
    Invalid(&'static str),
}

impl LogQuery {
    /// Upstream's decoding (apimachinery's query conversions: the first value of
    /// each key; integers as strconv.ParseInt; booleans false only when absent,
    /// `0` or `false`) and ValidatePodLogOptions; `tail` is the old name of
    /// `tailLines`, `tail=all` meaning no limit.
    pub fn from_query(q: &[(String, String)]) -> Result<LogQuery, LogQueryError> {
        let int = |field: &'static str| -> Result<Option<i64>, LogQueryError> {
            let value = if field == "tailLines" {
                match first(q, "tail").filter(|t| !t.is_empty()) {
                    Some("all") => return Ok(None),
                    Some(t) => Some(t),
                    None => first(q, field),
                }
            } else {
                first(q, field)
            };
            value.map(|v| v.parse::<i64>().map_err(|_| LogQueryError::Decode { field, value: v.to_string() })).transpose()
        };
        let flag = |k: &str| first(q, k).is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"));
        let since_time = first(q, "sinceTime")
            .map(|t| {
                DateTime::parse_from_rfc3339(t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| LogQueryError::Decode { field: "sinceTime", value: t.to_string() })
            })
            .transpose()?;
        let o = LogQuery {
            tail_lines: int("tailLines")?,
            since_seconds: int("sinceSeconds")?,
            since_time,
            limit_bytes: int("limitBytes")?,
            timestamps: flag("timestamps"),
            previous: flag("previous"),
            follow: flag("follow"),
        };
        if o.tail_lines.is_some_and(|n| n < 0) {
            return Err(LogQueryError::Invalid("tailLines must be greater than or equal to 0"));
        }
        if o.limit_bytes.is_some_and(|n| n < 1) {
            return Err(LogQueryError::Invalid("limitBytes must be greater than 0"));
        }
        if o.since_seconds.is_some() && o.since_time.is_some() {
            return Err(LogQueryError::Invalid("at most one of `sinceTime` or `sinceSeconds` may be specified"));
        }
        if o.since_seconds.is_some_and(|s| s < 1) {
            return Err(LogQueryError::Invalid("sinceSeconds must be greater than 0"));
        }
        Ok(o)
    }

    /// The earliest time wanted, `now` minus sinceSeconds (a span beyond what a
    /// date holds means from the beginning) or sinceTime.
    pub fn since(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.since_seconds {
            Some(s) => Some(
                chrono::Duration::try_seconds(s)
                    .and_then(|d| now.checked_sub_signed(d))
                    .unwrap_or(DateTime::<Utc>::MIN_UTC),
            ),
            None => self.since_time,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn query_strings_are_decoded() {
        assert_eq!(parse("tailLines=2&x=a%20b+c&flag&&e="), Ok(pairs(&[("tailLines", "2"), ("x", "a b c"), ("flag", ""), ("e", "")])));
        assert_eq!(parse("k%3Dx=%C3%A9%2B"), Ok(pairs(&[("k=x", "é+")])));
        assert_eq!(parse(""), Ok(vec![]));
    }

    /// Issue 15: `GET /pods?x=%aé` sliced the query inside `é` and panicked.
    #[test]
    fn a_bad_escape_before_a_multibyte_character_is_an_error_not_a_panic() {
        assert_eq!(parse("x=%aé"), Err(QueryError::Escape("%a\u{FFFD}".into())));
        assert_eq!(parse("x=%a%C3%A9"), Err(QueryError::Escape("%a%".into())));
        assert_eq!(parse("tailLines=%zz"), Err(QueryError::Escape("%zz".into())));
        assert_eq!(parse("x=%"), Err(QueryError::Escape("%".into())));
        assert_eq!(parse("x=%4"), Err(QueryError::Escape("%4".into())));
        assert_eq!(parse("é=%é"), Err(QueryError::Escape("%é".into())));
    }

    #[test]
    fn invalid_utf8_after_decoding_is_an_error() {
        assert_eq!(parse("x=%C3%28"), Err(QueryError::Utf8("%C3%28".into())));
        assert_eq!(parse("%FF=1"), Err(QueryError::Utf8("%FF".into())));
    }

    #[test]
    fn log_options_decode_as_upstreams() {
        let q = |v: &[(&str, &str)]| LogQuery::from_query(&pairs(v));
        assert_eq!(q(&[]), Ok(LogQuery::default()));
        let o = q(&[("tailLines", "5"), ("limitBytes", "10"), ("timestamps", "True"), ("follow", ""), ("previous", "0")]).unwrap();
        assert_eq!((o.tail_lines, o.limit_bytes, o.timestamps, o.follow, o.previous), (Some(5), Some(10), true, true, false));
        assert_eq!(q(&[("follow", "FALSE")]).map(|o| o.follow), Ok(false));
        assert_eq!(q(&[("tail", "7"), ("tailLines", "3")]).map(|o| o.tail_lines), Ok(Some(7)));
        assert_eq!(q(&[("tail", "all"), ("tailLines", "3")]).map(|o| o.tail_lines), Ok(None));
        assert_eq!(q(&[("tailLines", "3"), ("tailLines", "x")]).map(|o| o.tail_lines), Ok(Some(3)), "the first value counts");
    }

    #[test]
    fn bad_log_options_are_decode_errors_or_invalid() {
        let q = |v: &[(&str, &str)]| LogQuery::from_query(&pairs(v));
        assert!(matches!(q(&[("tailLines", "zz")]), Err(LogQueryError::Decode { field: "tailLines", .. })));
        assert!(matches!(q(&[("tailLines", "")]), Err(LogQueryError::Decode { .. })));
        assert!(matches!(q(&[("limitBytes", "99999999999999999999")]), Err(LogQueryError::Decode { .. })));
        assert!(matches!(q(&[("sinceTime", "yesterday")]), Err(LogQueryError::Decode { field: "sinceTime", .. })));
        assert!(matches!(q(&[("tailLines", "-1")]), Err(LogQueryError::Invalid(_))));
        assert!(matches!(q(&[("limitBytes", "0")]), Err(LogQueryError::Invalid(_))));
        assert!(matches!(q(&[("sinceSeconds", "0")]), Err(LogQueryError::Invalid(_))));
        assert!(matches!(q(&[("sinceSeconds", "5"), ("sinceTime", "2024-01-01T00:00:00Z")]), Err(LogQueryError::Invalid(_))));
    }

    /// `sinceSeconds=9223372036854775807` overflowed chrono's Duration (a panic).
    #[test]
    fn a_huge_since_seconds_means_from_the_beginning() {
        let now = Utc::now();
        let o = LogQuery::from_query(&pairs(&[("sinceSeconds", "9223372036854775807")])).unwrap();
        assert_eq!(o.since(now), Some(DateTime::<Utc>::MIN_UTC));
        let o = LogQuery::from_query(&pairs(&[("sinceSeconds", "60")])).unwrap();
        assert_eq!(o.since(now), Some(now - chrono::Duration::seconds(60)));
    }
}
