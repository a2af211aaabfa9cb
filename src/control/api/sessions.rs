//! The console's signed-in sessions, kept in the api process (a restart
//! signs everyone out): who each speaks for, its CSRF token, since when.
//!
//! In: a sign-in (the token's principal). Out: a session id for the cookie;
//! the session of an id while it lasts. Bounded: sessions last
//! `SESSION_TTL`, at most `MAX_SESSIONS` at once and
//! `MAX_SESSIONS_PER_SCOPE` of one scope, the oldest going first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::control::api::auth::Principal;

/// Sessions last this long from sign-in.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// At most this many sessions at once; the oldest go first.
const MAX_SESSIONS: usize = 10_000;
/// At most this many sessions of one token's scope: one scope signing in
/// over and over ends its own oldest sessions, never another's.
const MAX_SESSIONS_PER_SCOPE: usize = 32;

/// Signed-in sessions by id.
#[derive(Default)]
pub(super) struct Sessions(Mutex<HashMap<String, Session>>);

#[derive(Clone)]
pub(super) struct Session {
    pub(super) who: Principal,
    pub(super) csrf: String,
    started: Instant,
}

impl Sessions {
    /// A new session for `who`: its id.
    pub(super) fn start(&self, who: Principal) -> String {
        let mut all = self.0.lock().expect("sessions lock is never poisoned");
        all.retain(|_, s| s.started.elapsed() < SESSION_TTL);
        let mut mine: Vec<(Instant, String)> = all
            .iter()
            .filter(|(_, s)| s.who == who)
            .map(|(k, s)| (s.started, k.clone()))
            .collect();
        mine.sort();
        while mine.len() >= MAX_SESSIONS_PER_SCOPE {
            let (_, oldest) = mine.remove(0);
            all.remove(&oldest);
        }
        if all.len() >= MAX_SESSIONS {
            if let Some(oldest) = all
                .iter()
                .min_by_key(|(_, s)| s.started)
                .map(|(k, _)| k.clone())
            {
                all.remove(&oldest);
            }
        }
        let id = random_hex();
        let session = Session {
            who,
            csrf: random_hex(),
            started: Instant::now(),
        };
        all.insert(id.clone(), session);
        id
    }

    pub(super) fn get(&self, id: &str) -> Option<Session> {
        let all = self.0.lock().expect("sessions lock is never poisoned");
        all.get(id)
            .filter(|s| s.started.elapsed() < SESSION_TTL)
            .cloned()
    }

    pub(super) fn end(&self, id: &str) {
        self.0
            .lock()
            .expect("sessions lock is never poisoned")
            .remove(id);
    }
}

/// 32 random bytes in hex: session ids and CSRF tokens.
pub(super) fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}
