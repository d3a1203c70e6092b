//! Kinds that cross a process boundary as words (a command line, a worker's arguments): each a
//! type here with one spelling, so that `cbsweep run` and the worker cannot disagree on it and
//! a misspelling is refused where it is typed, naming the choices.

/// What trains a worker's trials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrainerKind {
    /// The study's own training (cbsweep-train: its CPU engine, or libtorch).
    #[default]
    Torch,
    /// No training: fixed curves at a set pace, for scheduler and fault tests.
    Fake,
}

impl TrainerKind {
    pub const ALL: [TrainerKind; 2] = [TrainerKind::Torch, TrainerKind::Fake];

    pub fn as_str(self) -> &'static str {
        match self {
            TrainerKind::Torch => "torch",
            TrainerKind::Fake => "fake",
        }
    }
}

impl std::fmt::Display for TrainerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TrainerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TrainerKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| format!("{s:?}: expected torch or fake"))
    }
}

#[cfg(test)]
mod tests {
    use super::TrainerKind;

    #[test]
    fn a_trainer_kind_reads_back_as_it_is_written_and_a_misspelling_names_the_choices() {
        for k in TrainerKind::ALL {
            assert_eq!(k.to_string().parse::<TrainerKind>(), Ok(k));
        }
        assert_eq!("fakee".parse::<TrainerKind>(), Err("\"fakee\": expected torch or fake".to_string()));
    }
}
