//! Who may see the dashboard: a caller with the coordinator's bearer token, given once (the
//! login form's POST, or `?token=` on a page's URL, which redirects to the URL without it) and
//! then carried by a session cookie (HttpOnly, SameSite=Strict, Secure when served over TLS), or
//! given on every request as `Authorization: Bearer TOKEN` (scripts). The cookie holds a digest
//! of the token, not the token, so it opens the pages and nothing on the gRPC side. Every
//! comparison is constant-time (`Token::matches`).

use crate::server::Token;
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub(crate) const COOKIE_NAME: &str = "cbsweep_session";

/// The token and how the cookie is set.
#[derive(Clone, Debug)]
pub(crate) struct Access {
    token: Token,
    /// The session cookie's value: a digest of the token.
    session: Token,
    secure: bool,
}

/// What a request carries.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The token or the session cookie, valid.
    Allowed,
    /// `?token=` with the right token: set the cookie and redirect to the URL without it.
    LogIn,
    /// Nothing valid (a wrong token included).
    Refused,
}

impl Access {
    /// `secure`: the pages are served over TLS, so the cookie is marked Secure.
    pub(crate) fn new(token: Token, secure: bool) -> Access {
        let digest = Sha256::new().chain_update(b"cbsweep dashboard session\0").chain_update(token.0.as_bytes()).finalize();
        Access { session: Token(hex::encode(digest)), token, secure }
    }

    /// Whether `given` (a login form's field) is the token.
    pub(crate) fn token_matches(&self, given: &str) -> bool {
        self.token.matches(given.as_bytes())
    }

    /// The verdict on a request's headers and query string.
    pub(crate) fn check(&self, headers: &HeaderMap, query: Option<&str>) -> Verdict {
        let bearer = headers.get(AUTHORIZATION).map(|v| crate::server::bearer_token(v.as_bytes())).unwrap_or(b"");
        if self.token.matches(bearer) || cookies(headers).any(|(k, v)| k == COOKIE_NAME && self.session.matches(v.as_bytes())) {
            return Verdict::Allowed;
        }
        match query.and_then(|q| query_value(q, "token")) {
            Some(t) if self.token.matches(t.as_bytes()) => Verdict::LogIn,
            _ => Verdict::Refused,
        }
    }

    /// The Set-Cookie header that starts a session.
    pub(crate) fn set_cookie(&self) -> (axum::http::HeaderName, HeaderValue) {
        let secure = if self.secure { "; Secure" } else { "" };
        let v = format!("{COOKIE_NAME}={}; Path=/; HttpOnly; SameSite=Strict{secure}", self.session.0);
        (SET_COOKIE, HeaderValue::from_str(&v).expect("hex and ASCII attributes"))
    }
}

/// The `name=value` pairs of the request's Cookie headers.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).filter_map(|kv| kv.trim().split_once('='))
}

/// The value of `key` in a query string or form body (`a=1&b=2`), percent-decoded.
pub(crate) fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| percent_decode(v))
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; an invalid
/// escape is kept as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                Ok(v) => {
                    out.push(v);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string without its `token` pair (where a login by URL redirects to).
pub(crate) fn without_token(query: &str) -> String {
    query.split('&').filter(|kv| !kv.starts_with("token=") && !kv.is_empty()).collect::<Vec<_>>().join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_the_token_or_its_session_opens_the_pages() {
        let a = Access::new(Token("s3cret".into()), false);
        assert_eq!(a.check(&headers(&[]), None), Verdict::Refused);
        assert_eq!(a.check(&headers(&[("authorization", "Bearer s3cret")]), None), Verdict::Allowed);
        // the scheme's name in any case (RFC 7235); a token alone is no header
        assert_eq!(a.check(&headers(&[("authorization", "bearer s3cret")]), None), Verdict::Allowed);
        assert_eq!(a.check(&headers(&[("authorization", "BEARER s3cret")]), None), Verdict::Allowed);
        assert_ne!(a.check(&headers(&[("authorization", "s3cret")]), None), Verdict::Allowed);
        assert_eq!(a.check(&headers(&[("authorization", "Bearer s3cre")]), None), Verdict::Refused);
        assert_eq!(a.check(&headers(&[]), Some("x=1&token=s3cret")), Verdict::LogIn);
        assert_eq!(a.check(&headers(&[]), Some("token=wrong")), Verdict::Refused);
        assert_eq!(a.check(&headers(&[]), Some("token=")), Verdict::Refused);
        let cookie = a.set_cookie().1.to_str().unwrap().split(';').next().unwrap().to_string();
        assert!(cookie.starts_with("cbsweep_session=") && !cookie.contains("s3cret"), "{cookie}");
        assert_eq!(a.check(&headers(&[("cookie", &format!("other=1; {cookie}"))]), None), Verdict::Allowed);
        assert_eq!(a.check(&headers(&[("cookie", "cbsweep_session=s3cret")]), None), Verdict::Refused);
        let other = Access::new(Token("another".into()), false);
        assert_eq!(other.check(&headers(&[("cookie", &cookie)]), None), Verdict::Refused);
        assert!(a.set_cookie().1.to_str().unwrap().contains("HttpOnly; SameSite=Strict"));
        assert!(!a.set_cookie().1.to_str().unwrap().contains("Secure"));
        assert!(Access::new(Token("t".into()), true).set_cookie().1.to_str().unwrap().ends_with("; Secure"));
    }

    #[test]
    fn form_values_are_decoded_and_the_token_dropped_from_redirects() {
        assert_eq!(query_value("token=a%2Bb+c&x=1", "token").as_deref(), Some("a+b c"));
        assert_eq!(query_value("token=100%", "token").as_deref(), Some("100%"));
        assert_eq!(query_value("x=1", "token"), None);
        assert_eq!(without_token("token=abc&sweep=s"), "sweep=s");
        assert_eq!(without_token("token=abc"), "");
    }
}
