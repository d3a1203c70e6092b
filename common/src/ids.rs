//! Newtypes for identities, so a trial id is never passed where a sweep id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}

string_id!(
    /// A sweep's name from its spec (`[sweep] name`); results land in OUT/<sweep id>/.
    SweepId
);
impl SweepId {
    /// The longest sweep name (it names the results folder and every log line).
    pub const MAX_LEN: usize = 64;

    /// Why `name` cannot name a sweep, or Ok: 1 to `MAX_LEN` letters, digits, '-' and '_', so
    /// that OUT/<name>/ is one folder inside OUT (no '/', no '..').
    pub fn check(name: &str) -> Result<(), String> {
        if name.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        if name.is_empty() || !name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
            return Err("must be non-empty and use only letters, digits, '-' and '_' (it names the results folder)".into());
        }
        Ok(())
    }

    /// `check`, and what a new sweep's name must also be: it does not start with '-', as it is
    /// typed on command lines (`cbsweep status NAME`), where `-rf` would read as options. (Only
    /// new specs are held to it: a stored sweep of an older name still exports.)
    pub fn check_new(name: &str) -> Result<(), String> {
        Self::check(name)?;
        if name.starts_with('-') {
            let bare = name.trim_start_matches('-');
            let e_g = if bare.is_empty() { String::new() } else { format!(", e.g. {bare:?}") };
            return Err(format!("must not start with '-' (it would read as an option on the command line): rename it{e_g}"));
        }
        Ok(())
    }
}

string_id!(
    /// Content hash of a trial's full spec and the code version (see `TrialSpec::id`).
    TrialId
);
string_id!(
    /// Assigned by the coordinator when a worker registers.
    WorkerId
);

/// The seed every random draw of a trial follows from (weights, h_0, data).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seed(pub u64);

/// Attempt number of a trial; doubles as the lease's fencing token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Attempt(pub u32);

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
