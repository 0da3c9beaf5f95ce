//! One finding type for every check meshup makes of a cluster (preflight, status, and later
//! verify and doctor): how bad it is, where, what was checked, what was found, what to do.

use std::fmt;

use serde::Serialize;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    /// The four-letter mark preflight lines start with.
    pub fn mark(self) -> &'static str {
        match self {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// Findings appear in JSON as the sentences the text shows.
pub fn sentences<S: serde::Serializer>(
    findings: &[Finding],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(findings.iter().map(Finding::sentence))
}

/// One thing a check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub level: Level,
    /// The cluster it is about; `None` for the local tools or the mesh as a whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// What was checked: `api server`, `istiod`, `remote secrets`, `cacerts`.
    pub what: String,
    /// What was found, as a sentence.
    pub why: String,
    /// What to do about it, when something must be done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    pub fn new(level: Level, cluster: Option<&str>, what: &str, why: impl Into<String>) -> Self {
        Self {
            level,
            cluster: cluster.map(str::to_string),
            what: what.to_string(),
            why: why.into(),
            fix: None,
        }
    }

    pub fn ok(cluster: Option<&str>, what: &str, why: impl Into<String>) -> Self {
        Self::new(Level::Ok, cluster, what, why)
    }

    pub fn warn(cluster: Option<&str>, what: &str, why: impl Into<String>) -> Self {
        Self::new(Level::Warn, cluster, what, why)
    }

    pub fn fail(cluster: Option<&str>, what: &str, why: impl Into<String>) -> Self {
        Self::new(Level::Fail, cluster, what, why)
    }

    /// The same finding with what to do about it.
    pub fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    /// What was found and what to do, as one sentence: `why; fix`.
    pub fn sentence(&self) -> String {
        match &self.fix {
            Some(fix) => format!("{}; {fix}", self.why),
            None => self.why.clone(),
        }
    }

    pub fn is_failure(&self) -> bool {
        self.level == Level::Fail
    }
}

/// `warn [cluster1] api server: ...; fix`, as preflight prints it.
impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = self
            .cluster
            .as_deref()
            .map(|c| format!("[{c}] "))
            .unwrap_or_default();
        write!(
            f,
            "{} {who}{}: {}",
            self.level.mark(),
            self.what,
            self.sentence()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_reads_as_one_line_with_its_fix() {
        let finding = Finding::fail(
            Some("cluster2"),
            "api server",
            "context `c2` does not answer",
        )
        .fix("check it with `kubectl --context c2 cluster-info`");
        assert_eq!(
            finding.to_string(),
            "FAIL [cluster2] api server: context `c2` does not answer; check it with `kubectl --context c2 cluster-info`"
        );
        assert!(finding.is_failure());
        let tool = Finding::ok(None, "helm", "helm v4.1.4");
        assert_eq!(tool.to_string(), "ok   helm: helm v4.1.4");
    }

    #[test]
    fn findings_serialize_with_their_level_in_lowercase() {
        let json = serde_json::to_value(Finding::warn(None, "networks", "two")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"level": "warn", "what": "networks", "why": "two"})
        );
    }
}
