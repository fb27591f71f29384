//! The demo users and their argon2 password hashes (computed at start-up,
//! kept in memory: a changed password lasts until the app restarts).

use std::collections::HashMap;
use std::sync::RwLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use rand::RngCore as _;

/// Name, display name, whether an admin, password. The passwords are shown
/// on the login page: this is a demo.
pub(crate) const DEMO_USERS: [(&str, &str, bool, &str); 3] = [
    ("alice", "Alice Liddell", false, "wonderland"),
    ("bob", "Bob Builder", false, "can-we-fix-it"),
    ("admin", "Ada Admin", true, "rotate-the-keys"),
];

#[derive(Debug, Clone)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) display_name: String,
    pub(crate) admin: bool,
    /// PHC string: algorithm, parameters, salt and hash.
    hash: String,
}

#[derive(Debug)]
pub(crate) struct Users {
    users: RwLock<HashMap<String, User>>,
    /// A hash of a random password, verified against for unknown names so a
    /// failed login takes as long whether or not the user exists.
    decoy: String,
}

impl Users {
    /// Hashes the demo passwords (argon2 is deliberately slow: done on the
    /// blocking pool, all at once).
    pub(crate) async fn demo() -> Self {
        let mut tasks = Vec::new();
        for (name, display_name, admin, password) in DEMO_USERS {
            tasks.push(tokio::task::spawn_blocking(move || User {
                name: name.to_owned(),
                display_name: display_name.to_owned(),
                admin,
                hash: hash(password),
            }));
        }
        let decoy = tokio::task::spawn_blocking(|| {
            let mut random = [0u8; 16];
            rand::rng().fill_bytes(&mut random);
            hash(&hex::encode(random))
        });
        let mut users = HashMap::new();
        for task in tasks {
            let user = task.await.expect("hashing a demo password");
            users.insert(user.name.clone(), user);
        }
        Self {
            users: RwLock::new(users),
            decoy: decoy.await.expect("hashing the decoy password"),
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<User> {
        self.read().get(name).cloned()
    }

    /// The user if `password` is theirs. argon2's `verify_password`
    /// compares in constant time; unknown names verify against the decoy.
    pub(crate) async fn verify(&self, name: &str, password: String) -> Option<User> {
        let user = self.get(name);
        let hash = user
            .as_ref()
            .map_or_else(|| self.decoy.clone(), |u| u.hash.clone());
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        user.filter(|_| ok)
    }

    pub(crate) async fn set_password(&self, name: &str, password: String) {
        let new_hash = tokio::task::spawn_blocking(move || hash(&password))
            .await
            .expect("hashing a password");
        if let Some(user) = self
            .users
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(name)
        {
            user.hash = new_hash;
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, User>> {
        self.users
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Argon2id with the crate's default parameters and a random 16-byte salt.
fn hash(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashes any password")
        .to_string()
}
