//! Bad input: what the mesh file, the flags or a kubeconfig got wrong, every problem at once.

use std::fmt;

/// The input (mesh file, flags, kubeconfig) is wrong. Raised before any cluster is touched;
/// exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
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
