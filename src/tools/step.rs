//! A `Step` is one helm or kubectl call as data: which cluster, which tool, the argv, what
//! goes to its stdin. Steps are built by `helm.rs` and `kubectl.rs`, printed by `plan`, and
//! run only by a `Runner`.

use std::fmt;
use std::path::PathBuf;

use crate::trust::sensitive::Sensitive;

/// The external tools meshup drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tool {
    Helm,
    Kubectl,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Helm => "helm",
            Tool::Kubectl => "kubectl",
        }
    }
}

/// How to reach one cluster: its name (for reporting), its kube context, and the kubeconfig
/// when the user named one. Built once per cluster; only `helm.rs` and `kubectl.rs` turn it
/// into flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub cluster: String,
    pub context: String,
    pub kubeconfig: Option<PathBuf>,
}

/// One external call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The cluster the call is about; empty for calls that touch no cluster (`helm version`).
    pub cluster: String,
    pub tool: Tool,
    /// Arguments after the program name. Never holds a secret: secrets travel on stdin.
    pub args: Vec<String>,
    /// Bytes for the child's stdin. Treated as secret: never printed or logged.
    pub stdin: Option<Sensitive<Vec<u8>>>,
}

impl Step {
    /// The command line as a person would type it, with shell quoting. Stdin is shown as
    /// `-f -` only; its bytes are never part of this.
    pub fn command_line(&self) -> String {
        std::iter::once(self.tool.name().to_string())
            .chain(self.args.iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.command_line())
    }
}

/// ` --kubeconfig PATH` for a script's commands when a kubeconfig was given, else nothing.
pub fn kubeconfig_flag(kubeconfig: Option<&std::path::Path>) -> String {
    kubeconfig
        .map(|k| format!(" --kubeconfig {}", shell_quote(&k.display().to_string())))
        .unwrap_or_default()
}

/// Quotes one word for bash when it needs it.
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_quote_only_what_needs_it() {
        let step = Step {
            cluster: "c1".into(),
            tool: Tool::Helm,
            args: vec![
                "version".into(),
                "--template".into(),
                "{{.Version}}".into(),
                "it's".into(),
            ],
            stdin: None,
        };
        assert_eq!(
            step.command_line(),
            r"helm version --template '{{.Version}}' 'it'\''s'"
        );
    }

    #[test]
    fn stdin_never_appears_in_the_command_line_or_debug() {
        let step = Step {
            cluster: "c1".into(),
            tool: Tool::Kubectl,
            args: vec!["apply".into(), "-f".into(), "-".into()],
            stdin: Some(Sensitive::new(b"token: s3cr3t".to_vec())),
        };
        assert!(!step.command_line().contains("s3cr3t"));
        assert!(!format!("{step:?}").contains("s3cr3t"));
    }
}
