//! meshup's errors. Each area has its own enum with every message beside its variant
//! ([`InputError`] here, `TrustError` in `trust`, `StepError` in `runner`, `FileError` in
//! `files`); [`Error`] gathers them for `main`, and [`Error::exit_code`] decides per variant:
//! 2 bad input (nothing was touched), 1 a failed step, check or file operation, 3 `diff`
//! found changes, 130 interrupted.

use crate::model::input::InputError;
use crate::tools::pull::PullError;
use crate::tools::runner::StepError;
use crate::trust::TrustError;
use crate::trust::files::FileError;

/// Any error that ends a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Step(#[from] StepError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Pull(#[from] PullError),
    /// The clusters are not in a state the command may change (an upgrade under way, versions
    /// too far apart); nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// helm or kubectl is not where meshup was told to look.
    #[error("{0}")]
    MissingTool(String),
    /// Writing to stdout failed (e.g. the reading end of a pipe went away).
    #[error("could not write to stdout: {0}")]
    Stdout(#[source] std::io::Error),
    /// Something was not as it should be (a failed step, a failed check) and has already
    /// been reported in full.
    #[error("failed; see the messages above")]
    Reported,
    /// `meshup diff` found changes (and printed them): exit 3, as terraform's detailed
    /// exit code.
    #[error("changes found")]
    Changes,
    /// The user pressed Ctrl-C; children were stopped.
    #[error("interrupted; running helm and kubectl processes were stopped")]
    Interrupted,
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Input(_) | Error::Refused(_) => 2,
            Error::Changes => 3,
            Error::Trust(e) => e.exit_code(),
            Error::Step(StepError::Interrupted)
            | Error::Lock(LockError::Step(StepError::Interrupted))
            | Error::Pull(PullError::Step(StepError::Interrupted))
            | Error::Interrupted => 130,
            Error::Step(_)
            | Error::File(_)
            | Error::Lock(_)
            | Error::Pull(_)
            | Error::MissingTool(_)
            | Error::Stdout(_)
            | Error::Reported => 1,
        }
    }

    /// Whether the message was already printed where it happened.
    pub fn is_reported(&self) -> bool {
        matches!(self, Error::Reported | Error::Changes)
    }
}

/// A lock held by a live run of someone else.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "[{cluster}] `{identity}` has been changing this cluster since {since}; meshup stops before changing anything (pass --wait-for-lock DURATION to wait for it)"
)]
pub struct Held {
    pub cluster: String,
    pub identity: String,
    pub since: String,
}

/// Why the locks could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(transparent)]
    Held(#[from] Held),
    #[error(transparent)]
    Step(#[from] StepError),
    /// A cluster did not let meshup take its lock (it does not answer, or refuses).
    #[error("{message}")]
    Cluster { cluster: String, message: String },
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn input_errors_list_every_problem_under_the_file() {
        let error = InputError {
            source: "mesh.yaml".into(),
            problems: vec!["`meshID` is required".into(), "`clusters` is empty".into()],
        };
        assert_eq!(
            error.to_string(),
            "mesh.yaml has 2 problems:\n  - `meshID` is required\n  - `clusters` is empty"
        );
    }

    #[test]
    fn exit_codes_follow_the_variant() {
        assert_eq!(Error::from(InputError::new("f", "p")).exit_code(), 2);
        assert_eq!(Error::Interrupted.exit_code(), 130);
        assert_eq!(Error::from(StepError::Interrupted).exit_code(), 130);
        assert_eq!(Error::Reported.exit_code(), 1);
        // The user's PKI is bad input; a file meshup cannot write is not.
        let bad_pki = TrustError::NoRoot {
            path: PathBuf::from("certs/root-cert.pem"),
        };
        assert_eq!(Error::from(bad_pki).exit_code(), 2);
        let io = FileError {
            action: "write",
            path: PathBuf::from("certs/root-key.pem"),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert_eq!(Error::from(TrustError::from(io)).exit_code(), 1);
    }
}
