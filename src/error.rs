//! The errors that decide meshup's exit code: bad input (2), a failed step (1), Ctrl-C (130).

use std::fmt;

/// The input (mesh file, flags, kubeconfig) is wrong. Raised before any cluster is touched;
/// exit code 2.
#[derive(Debug)]
pub struct InputError {
    /// Where the input came from: the mesh file's path, or `flags`.
    pub source: String,
    /// Every problem found, each naming its field and value.
    pub problems: Vec<String>,
}

impl InputError {
    pub fn new(source: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            problems: vec![problem.into()],
        }
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "{}: {one}", self.source),
            many => {
                write!(f, "{} has {} problems:", self.source, many.len())?;
                for problem in many {
                    write!(f, "\n  - {problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for InputError {}

/// The user pressed Ctrl-C; children were stopped. Exit code 130.
#[derive(Debug)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted; running helm and kubectl processes were stopped")
    }
}

impl std::error::Error for Interrupted {}

/// Something was not as it should be (a failed step, a failed check) and has already been
/// reported in full; exit code 1 with no further message.
#[derive(Debug)]
pub struct Reported;

impl fmt::Display for Reported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("failed; see the messages above")
    }
}

impl std::error::Error for Reported {}

/// The exit code for an error that reached `main`.
pub fn exit_code(report: &color_eyre::Report) -> u8 {
    if report.downcast_ref::<InputError>().is_some() {
        2
    } else if report.downcast_ref::<Interrupted>().is_some() {
        130
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
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
    fn exit_codes_follow_the_error_kind() {
        assert_eq!(exit_code(&InputError::new("f", "p").into()), 2);
        assert_eq!(exit_code(&Interrupted.into()), 130);
        assert_eq!(exit_code(&Reported.into()), 1);
    }
}
