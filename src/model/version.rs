//! Istio versions: read from image tags, labels and chart versions, compared by (major, minor,
//! patch). A variant suffix (`1.30.0-distroless`, which Istio's ambient profile asks for with
//! `global.variant`, or a private `-fips`) names a build of the version, not another version.

use std::fmt;

use serde::{Serialize, Serializer};

/// An Istio release: `1.30.0` (shown without `v` or suffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IstioVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

/// The version Istio's source charts carry until a release build stamps them: no release.
const UNSTAMPED: IstioVersion = IstioVersion {
    major: 1,
    minor: 0,
    patch: 0,
};

impl IstioVersion {
    /// `MAJOR.MINOR[.PATCH]`, with an optional leading `v` and an optional suffix after `-` or
    /// `+` (`1.30.0`, `v1.30.0`, `1.30.0-distroless`, `1.30.0-fips`); anything else (`latest`,
    /// a digest, a private tag) is no version.
    pub fn parse(text: &str) -> Option<IstioVersion> {
        let text = text.trim();
        let text = text.strip_prefix('v').unwrap_or(text);
        let end = text.find(['-', '+']).unwrap_or(text.len());
        let (core, rest) = text.split_at(end);
        if rest.len() == 1 || rest.contains(['@', ':', '/']) {
            return None;
        }
        let parts: Vec<&str> = core.split('.').collect();
        if !(2..=3).contains(&parts.len()) {
            return None;
        }
        let number = |p: &str| {
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u64>().ok())
                .flatten()
        };
        Some(IstioVersion {
            major: number(parts[0])?,
            minor: number(parts[1])?,
            patch: match parts.get(2) {
                Some(p) => number(p)?,
                None => 0,
            },
        })
    }

    /// [`IstioVersion::parse`], but `1.0.0` (what Istio's source charts say until a release
    /// build stamps them) is no version either: what names a running or a chart's Istio.
    pub fn stamped(text: &str) -> Option<IstioVersion> {
        IstioVersion::parse(text).filter(|v| *v != UNSTAMPED)
    }

    /// The version an image reference names by its tag (`docker.io/istio/pilot:1.30.0`,
    /// `pilot:1.30.0-distroless`). A reference pinned by digest (`...@sha256:...`) names none:
    /// the digest decides what runs, whatever tag stands beside it.
    pub fn of_image(image: &str) -> Option<IstioVersion> {
        if image.contains('@') {
            return None;
        }
        let name = image.rsplit('/').next()?;
        let (_, tag) = name.rsplit_once(':')?;
        IstioVersion::stamped(tag)
    }

    /// The version of a chart as Helm lists and labels it (`istiod-1.30.0`, `cni-1.30.0`,
    /// `helm.sh/chart: istiod-1.30.0`).
    pub fn of_chart(listed: &str) -> Option<IstioVersion> {
        IstioVersion::stamped(chart_version(listed)?)
    }

    /// Minor versions from `self` to `other` (negative: `other` is older); `None` across
    /// major versions.
    pub fn minors_to(self, other: IstioVersion) -> Option<i64> {
        (self.major == other.major).then(|| other.minor as i64 - self.minor as i64)
    }

    /// The revision name meshup gives this version: `1-30-0`.
    pub fn revision(self) -> String {
        format!("{}-{}-{}", self.major, self.minor, self.patch)
    }

    /// (major, minor).
    pub fn minor(self) -> (u64, u64) {
        (self.major, self.minor)
    }
}

/// The version part of a chart as Helm lists it: `1.30.0` of `istio-cni-1.30.0` (what follows
/// the first `-` before a digit, or before `v` and a digit).
pub fn chart_version(listed: &str) -> Option<&str> {
    listed.match_indices('-').find_map(|(i, _)| {
        let rest = &listed[i + 1..];
        let digits = rest.strip_prefix('v').unwrap_or(rest);
        digits
            .starts_with(|c: char| c.is_ascii_digit())
            .then_some(rest)
    })
}

impl fmt::Display for IstioVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Serialize for IstioVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u64, minor: u64, patch: u64) -> Option<IstioVersion> {
        Some(IstioVersion {
            major,
            minor,
            patch,
        })
    }

    #[test]
    fn a_variant_or_a_v_is_no_part_of_the_version() {
        assert_eq!(IstioVersion::parse("1.30.0"), v(1, 30, 0));
        assert_eq!(IstioVersion::parse("v1.30.0"), v(1, 30, 0));
        assert_eq!(IstioVersion::parse("1.30.0-distroless"), v(1, 30, 0));
        assert_eq!(IstioVersion::parse("1.30.2-fips"), v(1, 30, 2));
        assert_eq!(IstioVersion::parse("1.31.0-beta.1"), v(1, 31, 0));
        assert_eq!(IstioVersion::parse("1.29"), v(1, 29, 0));
        // A development build of 1.30.
        assert_eq!(IstioVersion::parse("1.30-dev"), v(1, 30, 0));
        assert_eq!(
            IstioVersion::parse("1.30.0-distroless"),
            IstioVersion::parse("1.30.0")
        );
    }

    #[test]
    fn what_is_not_a_version_is_none() {
        for text in [
            "latest",
            "",
            "1",
            "1.30.0.1",
            "1.30.x",
            "1.30.0-",
            "master-abc",
            "sha256:0123",
            "1.30.0@sha256:0123",
        ] {
            assert_eq!(IstioVersion::parse(text), None, "{text}");
        }
    }

    #[test]
    fn an_unstamped_1_0_0_names_no_release() {
        assert_eq!(IstioVersion::parse("1.0.0"), v(1, 0, 0));
        assert_eq!(IstioVersion::stamped("1.0.0"), None);
        assert_eq!(IstioVersion::stamped("1.30.0"), v(1, 30, 0));
    }

    #[test]
    fn versions_order_by_number_not_by_text() {
        let (a, b, c) = (
            IstioVersion::parse("1.9.0").unwrap(),
            IstioVersion::parse("1.30.0-distroless").unwrap(),
            IstioVersion::parse("1.30.1").unwrap(),
        );
        assert!(a < b && b < c);
        assert_eq!(a.minors_to(b), Some(21));
        assert_eq!(b.minors_to(a), Some(-21));
        assert_eq!(b.minors_to(c), Some(0));
        assert_eq!(a.minors_to(IstioVersion::parse("2.0.0").unwrap()), None);
        assert_eq!(b.revision(), "1-30-0");
        assert_eq!(b.to_string(), "1.30.0");
    }

    #[test]
    fn an_image_names_its_version_by_tag_unless_pinned_by_digest() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            IstioVersion::of_image("docker.io/istio/pilot:1.30.0"),
            v(1, 30, 0)
        );
        assert_eq!(
            IstioVersion::of_image("localhost:5000/istio/pilot:1.30.0-distroless"),
            v(1, 30, 0)
        );
        assert_eq!(IstioVersion::of_image("localhost:5000/istio/pilot"), None);
        assert_eq!(IstioVersion::of_image("docker.io/istio/pilot:latest"), None);
        assert_eq!(IstioVersion::of_image("docker.io/istio/pilot:1.0.0"), None);
        assert_eq!(
            IstioVersion::of_image(&format!("docker.io/istio/pilot@{digest}")),
            None
        );
        assert_eq!(
            IstioVersion::of_image(&format!("docker.io/istio/pilot:1.30.0@{digest}")),
            None
        );
    }

    #[test]
    fn a_listed_chart_names_its_version() {
        assert_eq!(chart_version("istiod-1.30.0"), Some("1.30.0"));
        assert_eq!(chart_version("istio-cni-1.30.0"), Some("1.30.0"));
        assert_eq!(chart_version("ztunnel-v1.30.0"), Some("v1.30.0"));
        assert_eq!(chart_version("istiod"), None);
        assert_eq!(IstioVersion::of_chart("cni-1.30.0"), v(1, 30, 0));
        assert_eq!(IstioVersion::of_chart("istiod-1.0.0"), None);
    }
}
