//! Dashboard sessions: who is logged in, proved by two HS256 JWTs in cookies, and the
//! CSRF token bound to the session.
//!
//! A session has an id ([`SessionId`]) and ends [`SESSION_TTL`] after login at the
//! latest. Its access token lives [`ACCESS_TTL`]; its refresh token lives as long as the
//! session and, when the access token has expired, mints a new one (sliding renewal up
//! to the session's end). Both are `HttpOnly; Secure; SameSite=Strict` cookies. Logout
//! revokes the session in the ledger (`Op::RevokeSession`), remembered until its end;
//! every authenticated dashboard request reads the revocation linearizably, so once a
//! logout is acknowledged no gateway accepts the session's tokens again. The signing
//! secret is shared by every gateway (`session_secret`), so a session made through one
//! gateway works on every other.

use crate::bank::now_ms;
use crate::keys;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use solrouter_ledger::{AccountId, Role, SessionId, UserId, SESSION_REMEMBERED_FOR_MS_MAX};
use std::time::Duration;

/// How long an access token is accepted: short, since it is checked without the user
/// record (a revoked session is refused at once all the same: see the module comment).
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// The longest a session lives, whatever its activity: the refresh token's life.
pub const SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// How much longer than a session's end its revocation is remembered: the ledger forgets
/// by the leader's clock, a gateway checks expiry by its own; clocks further apart than
/// this would let a revoked session's last minutes back in.
pub const REVOCATION_CLOCK_MARGIN: Duration = Duration::from_secs(10 * 60);
const _: () = assert!(
    SESSION_TTL.as_millis() + REVOCATION_CLOCK_MARGIN.as_millis()
        <= SESSION_REMEMBERED_FOR_MS_MAX as u128
);
/// Shortest signing secret accepted (bytes).
pub const SECRET_BYTES_MIN: usize = 32;

pub const ACCESS_COOKIE: &str = "sr_session";
pub const REFRESH_COOKIE: &str = "sr_refresh";
pub const CSRF_COOKIE: &str = "sr_csrf";

/// A logged-in user, as its token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub user: UserId,
    pub account: AccountId,
    pub role: Role,
    /// When the session ends (ms since the Unix epoch): the refresh token's expiry.
    pub ends_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Access,
    Refresh,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The user, 16 hex digits.
    sub: String,
    /// The account, 16 hex digits.
    acc: String,
    /// The session, 32 hex digits.
    sid: String,
    role: Role,
    kind: Kind,
    iat: u64,
    /// Seconds since the Unix epoch, checked by `jsonwebtoken` without leeway.
    exp: u64,
    /// When the session ends, in ms.
    end: u64,
}

/// Mints and checks session tokens and CSRF tokens with one secret.
pub struct Sessions {
    secret: Vec<u8>,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Sessions {
    pub fn new(secret: &[u8]) -> Sessions {
        assert!(secret.len() >= SECRET_BYTES_MIN, "checked by the configuration");
        Sessions {
            secret: secret.to_vec(),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// A new session of `user`: its `Set-Cookie` values (access, refresh, CSRF).
    pub fn start(&self, user: UserId, account: AccountId, role: Role) -> (Session, Vec<String>) {
        let now = now_ms();
        let session = Session {
            id: SessionId(keys::random_u128()),
            user,
            account,
            role,
            ends_ms: now + SESSION_TTL.as_millis() as u64,
        };
        let cookies = vec![
            self.access_cookie(&session, now),
            cookie(REFRESH_COOKIE, &self.token(&session, Kind::Refresh, session.ends_ms, now), {
                SESSION_TTL.as_secs()
            }),
            cookie(CSRF_COOKIE, &self.csrf_token(&session), SESSION_TTL.as_secs()),
        ];
        (session, cookies)
    }

    /// The session the request's cookies prove, and the cookie to set when its access
    /// token was renewed from the refresh token. Does not check revocation (the caller
    /// reads it from the ledger).
    pub fn from_cookies(&self, cookies: &Cookies) -> Option<(Session, Option<String>)> {
        if let Some(session) = cookies.get(ACCESS_COOKIE).and_then(|t| self.verify(t, Kind::Access))
        {
            return Some((session, None));
        }
        let session = self.verify(cookies.get(REFRESH_COOKIE)?, Kind::Refresh)?;
        Some((session, Some(self.access_cookie(&session, now_ms()))))
    }

    /// An access token of `session`, expiring [`ACCESS_TTL`] from `now` or at the
    /// session's end, whichever comes first.
    fn access_cookie(&self, session: &Session, now: u64) -> String {
        let expires_ms = session.ends_ms.min(now + ACCESS_TTL.as_millis() as u64);
        let token = self.token(session, Kind::Access, expires_ms, now);
        cookie(ACCESS_COOKIE, &token, (expires_ms.saturating_sub(now)) / 1000)
    }

    fn token(&self, session: &Session, kind: Kind, expires_ms: u64, now: u64) -> String {
        let claims = Claims {
            sub: format!("{:016x}", session.user.0),
            acc: format!("{:016x}", session.account.0),
            sid: format!("{:032x}", session.id.0),
            role: session.role,
            kind,
            iat: now / 1000,
            exp: expires_ms / 1000,
            end: session.ends_ms,
        };
        // HS256 over claims that always serialize: encoding cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("encoding a session token")
    }

    /// A session token of `kind` signed with this secret and not expired.
    fn verify(&self, token: &str, kind: Kind) -> Option<Session> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        let claims =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).ok()?.claims;
        if claims.kind != kind || claims.end < now_ms() {
            return None;
        }
        Some(Session {
            id: SessionId(u128::from_str_radix(&claims.sid, 16).ok()?),
            user: UserId(u64::from_str_radix(&claims.sub, 16).ok()?),
            account: AccountId(u64::from_str_radix(&claims.acc, 16).ok()?),
            role: claims.role,
            ends_ms: claims.end,
        })
    }

    /// The CSRF token of a session: HMAC-SHA256 of its id under the secret. A form of
    /// the session carries it, and so does the `sr_csrf` cookie (double submit); only a
    /// page of this origin can read it into a form.
    pub fn csrf_token(&self, session: &Session) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(b"solrouter csrf\0");
        mac.update(&session.id.0.to_be_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Cookies that end the session in the browser.
pub fn cleared_cookies() -> Vec<String> {
    [ACCESS_COOKIE, REFRESH_COOKIE, CSRF_COOKIE].iter().map(|name| cookie(name, "", 0)).collect()
}

/// A `Set-Cookie` value: `HttpOnly; Secure; SameSite=Strict` always (browsers accept a
/// `Secure` cookie from http://localhost and http://127.0.0.1).
pub fn cookie(name: &str, value: &str, max_age_s: u64) -> String {
    format!("{name}={value}; Path=/; Max-Age={max_age_s}; HttpOnly; Secure; SameSite=Strict")
}

/// The request's cookies (the `Cookie` headers), by name; the first of a name wins.
pub struct Cookies(Vec<(String, String)>);

impl Cookies {
    pub fn parse(headers: &http::HeaderMap) -> Cookies {
        let pairs = headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|line| line.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        Cookies(pairs)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(found, _)| found == name).map(|(_, value)| value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies_of(set: &[String]) -> Cookies {
        let mut headers = http::HeaderMap::new();
        let line: Vec<&str> = set.iter().map(|c| c.split(';').next().unwrap()).collect();
        headers.insert(http::header::COOKIE, line.join("; ").parse().unwrap());
        Cookies::parse(&headers)
    }

    #[test]
    fn tokens_prove_their_session_and_nothing_else() {
        let sessions = Sessions::new(&[7; 32]);
        let (session, set) = sessions.start(UserId(1), AccountId(2), Role::Owner);
        assert!(set.iter().all(|c| c.ends_with("; HttpOnly; Secure; SameSite=Strict")));
        let cookies = cookies_of(&set);
        assert_eq!(sessions.from_cookies(&cookies), Some((session, None)));
        // Another secret's tokens prove nothing; a refresh token is no access token.
        let other = Sessions::new(&[8; 32]);
        assert_eq!(other.from_cookies(&cookies), None);
        let refresh = cookies.get(REFRESH_COOKIE).unwrap();
        assert_eq!(sessions.verify(refresh, Kind::Access), None);
        // Without the access token the refresh token renews it.
        let renewed = cookies_of(&set[1..2]);
        let (again, access) = sessions.from_cookies(&renewed).unwrap();
        assert_eq!(again, session);
        assert!(access.unwrap().starts_with("sr_session="));
        assert_eq!(cookies.get(CSRF_COOKIE), Some(sessions.csrf_token(&session).as_str()));
        assert_ne!(sessions.csrf_token(&session), other.csrf_token(&session));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let sessions = Sessions::new(&[7; 32]);
        let session = Session {
            id: SessionId(3),
            user: UserId(1),
            account: AccountId(2),
            role: Role::Member,
            ends_ms: now_ms() + 60_000,
        };
        let past = now_ms() - 2_000;
        let expired = sessions.token(&session, Kind::Access, past, past - 1_000);
        assert_eq!(sessions.verify(&expired, Kind::Access), None);
        let ended = Session { ends_ms: past, ..session };
        let refresh = sessions.token(&ended, Kind::Refresh, now_ms() + 60_000, past);
        assert_eq!(sessions.verify(&refresh, Kind::Refresh), None);
    }
}
