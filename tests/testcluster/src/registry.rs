//! The resource types the server knows (built-in ones plus those added by CRDs), and the
//! discovery and OpenAPI documents that describe them to clients.

use serde_json::{Value, json};

const RW: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// One resource of one group/version.
#[derive(Debug, Clone)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Create-only resources (reviews) are answered but never stored.
    pub create_only: bool,
    /// `(name, kind, group, version, verbs)` of subresources such as `status`.
    pub subresources: Vec<(String, String, String, String, Vec<String>)>,
    /// The CRD that added this resource, if any.
    pub crd: Option<String>,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn has_status(&self) -> bool {
        self.subresources.iter().any(|s| s.0 == "status")
    }

    fn discovery(&self) -> Vec<Value> {
        let verbs: Vec<&str> = if self.create_only {
            vec!["create"]
        } else {
            RW.to_vec()
        };
        let mut out = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
            "shortNames": self.short_names,
            "categories": self.categories,
        })];
        for (sub, kind, group, version, verbs) in &self.subresources {
            let mut entry = json!({
                "name": format!("{}/{sub}", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if !group.is_empty() {
                entry["group"] = json!(group);
            }
            if !version.is_empty() {
                entry["version"] = json!(version);
            }
            out.push(entry);
        }
        out
    }
}

#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub resources: Vec<Resource>,
}

fn status_sub(kind: &str) -> (String, String, String, String, Vec<String>) {
    (
        "status".into(),
        kind.into(),
        String::new(),
        String::new(),
        vec!["get".into(), "patch".into(), "update".into()],
    )
}

fn builtin(gv: &str, plural: &str, kind: &str, namespaced: bool, short: &[&str]) -> Resource {
    let (group, version) = gv.split_once('/').unwrap_or(("", gv));
    Resource {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        create_only: false,
        subresources: Vec::new(),
        crd: None,
    }
}

impl Registry {
    pub fn builtin() -> Registry {
        let mut r = vec![
            builtin("v1", "namespaces", "Namespace", false, &["ns"]),
            builtin("v1", "secrets", "Secret", true, &[]),
            builtin("v1", "configmaps", "ConfigMap", true, &["cm"]),
            builtin("v1", "serviceaccounts", "ServiceAccount", true, &["sa"]),
            builtin("v1", "services", "Service", true, &["svc"]),
            builtin("v1", "pods", "Pod", true, &["po"]),
            builtin("v1", "endpoints", "Endpoints", true, &["ep"]),
            builtin("v1", "events", "Event", true, &["ev"]),
            builtin("v1", "nodes", "Node", false, &["no"]),
            builtin(
                "v1",
                "persistentvolumeclaims",
                "PersistentVolumeClaim",
                true,
                &["pvc"],
            ),
            builtin("v1", "resourcequotas", "ResourceQuota", true, &["quota"]),
            builtin("v1", "limitranges", "LimitRange", true, &["limits"]),
            builtin("apps/v1", "deployments", "Deployment", true, &["deploy"]),
            builtin("apps/v1", "replicasets", "ReplicaSet", true, &["rs"]),
            builtin("apps/v1", "statefulsets", "StatefulSet", true, &["sts"]),
            builtin("apps/v1", "daemonsets", "DaemonSet", true, &["ds"]),
            builtin("batch/v1", "jobs", "Job", true, &[]),
            builtin("coordination.k8s.io/v1", "leases", "Lease", true, &[]),
            builtin(
                "autoscaling/v2",
                "horizontalpodautoscalers",
                "HorizontalPodAutoscaler",
                true,
                &["hpa"],
            ),
            builtin(
                "policy/v1",
                "poddisruptionbudgets",
                "PodDisruptionBudget",
                true,
                &["pdb"],
            ),
            builtin(
                "discovery.k8s.io/v1",
                "endpointslices",
                "EndpointSlice",
                true,
                &[],
            ),
            builtin(
                "networking.k8s.io/v1",
                "networkpolicies",
                "NetworkPolicy",
                true,
                &["netpol"],
            ),
            builtin(
                "networking.k8s.io/v1",
                "ingresses",
                "Ingress",
                true,
                &["ing"],
            ),
            builtin(
                "rbac.authorization.k8s.io/v1",
                "clusterroles",
                "ClusterRole",
                false,
                &[],
            ),
            builtin(
                "rbac.authorization.k8s.io/v1",
                "clusterrolebindings",
                "ClusterRoleBinding",
                false,
                &[],
            ),
            builtin("rbac.authorization.k8s.io/v1", "roles", "Role", true, &[]),
            builtin(
                "rbac.authorization.k8s.io/v1",
                "rolebindings",
                "RoleBinding",
                true,
                &[],
            ),
            builtin(
                "admissionregistration.k8s.io/v1",
                "mutatingwebhookconfigurations",
                "MutatingWebhookConfiguration",
                false,
                &[],
            ),
            builtin(
                "admissionregistration.k8s.io/v1",
                "validatingwebhookconfigurations",
                "ValidatingWebhookConfiguration",
                false,
                &[],
            ),
            builtin(
                "apiextensions.k8s.io/v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
                &["crd", "crds"],
            ),
            builtin(
                "authorization.k8s.io/v1",
                "selfsubjectaccessreviews",
                "SelfSubjectAccessReview",
                false,
                &[],
            ),
            builtin(
                "authorization.k8s.io/v1",
                "subjectaccessreviews",
                "SubjectAccessReview",
                false,
                &[],
            ),
            builtin(
                "authentication.k8s.io/v1",
                "tokenreviews",
                "TokenReview",
                false,
                &[],
            ),
        ];
        for res in &mut r {
            if res.group.ends_with("authorization.k8s.io") && res.plural.ends_with("reviews")
                || res.plural == "tokenreviews"
            {
                res.create_only = true;
            }
            match res.plural.as_str() {
                "services"
                | "namespaces"
                | "replicasets"
                | "statefulsets"
                | "daemonsets"
                | "jobs"
                | "horizontalpodautoscalers"
                | "poddisruptionbudgets"
                | "customresourcedefinitions"
                | "persistentvolumeclaims"
                | "resourcequotas" => {
                    res.subresources.push(status_sub(&res.kind));
                }
                "deployments" => {
                    res.subresources.push(status_sub("Deployment"));
                    res.subresources.push((
                        "scale".into(),
                        "Scale".into(),
                        "autoscaling".into(),
                        "v1".into(),
                        vec!["get".into(), "patch".into(), "update".into()],
                    ));
                }
                "pods" => {
                    res.subresources.push(status_sub("Pod"));
                    res.subresources.push((
                        "log".into(),
                        "Pod".into(),
                        String::new(),
                        String::new(),
                        vec!["get".into()],
                    ));
                    res.subresources.push((
                        "proxy".into(),
                        "PodProxyOptions".into(),
                        String::new(),
                        String::new(),
                        ["create", "delete", "get", "patch", "update"]
                            .map(String::from)
                            .to_vec(),
                    ));
                }
                "serviceaccounts" => res.subresources.push((
                    "token".into(),
                    "TokenRequest".into(),
                    "authentication.k8s.io".into(),
                    "v1".into(),
                    vec!["create".into()],
                )),
                _ => {}
            }
            if matches!(
                res.plural.as_str(),
                "pods"
                    | "services"
                    | "deployments"
                    | "replicasets"
                    | "statefulsets"
                    | "daemonsets"
                    | "jobs"
            ) {
                res.categories.push("all".into());
            }
        }
        Registry { resources: r }
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&Resource> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// Replaces the resources of a CRD with those its spec declares.
    pub fn add_crd(&mut self, crd: &Value) {
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.remove_crd(name);
        let s = |p: &str| {
            crd.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let strings = |p: &str| -> Vec<String> {
            crd.pointer(p)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let plural = s("/spec/names/plural");
        let kind = s("/spec/names/kind");
        let singular = match s("/spec/names/singular") {
            x if x.is_empty() => kind.to_lowercase(),
            x => x,
        };
        for v in crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if v.get("served").and_then(Value::as_bool) == Some(false) {
                continue;
            }
            let mut subresources = Vec::new();
            if v.pointer("/subresources/status").is_some() {
                subresources.push(status_sub(&kind));
            }
            self.resources.push(Resource {
                group: s("/spec/group"),
                version: v
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
                plural: plural.clone(),
                singular: singular.clone(),
                kind: kind.clone(),
                namespaced: s("/spec/scope") != "Cluster",
                short_names: strings("/spec/names/shortNames"),
                categories: strings("/spec/names/categories"),
                create_only: false,
                subresources,
                crd: Some(name.into()),
            });
        }
    }

    pub fn remove_crd(&mut self, name: &str) {
        self.resources.retain(|r| r.crd.as_deref() != Some(name));
    }

    /// `(group, [versions])` in registration order; the first version is the preferred one.
    fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for r in &self.resources {
            match out.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, vs)) if !vs.contains(&r.version) => vs.push(r.version.clone()),
                Some(_) => {}
                None => out.push((r.group.clone(), vec![r.version.clone()])),
            }
        }
        out
    }

    pub fn api_group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .into_iter()
            .filter(|(g, _)| !g.is_empty())
            .map(|(g, vs)| {
                let versions: Vec<Value> = vs
                    .iter()
                    .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                    .collect();
                json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    pub fn api_group(&self, group: &str) -> Option<Value> {
        let list = self.api_group_list();
        let g = list["groups"]
            .as_array()?
            .iter()
            .find(|g| g["name"] == group)?
            .clone();
        let mut g = g;
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        Some(g)
    }

    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let resources: Vec<Value> = self
            .resources
            .iter()
            .filter(|r| r.group == group && r.version == version)
            .flat_map(Resource::discovery)
            .collect();
        if resources.is_empty() {
            return None;
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        )
    }

    /// `/openapi/v3`: one entry per group/version.
    pub fn openapi_root(&self) -> Value {
        let mut paths = serde_json::Map::new();
        for (g, vs) in self.groups() {
            for v in vs {
                let key = if g.is_empty() {
                    format!("api/{v}")
                } else {
                    format!("apis/{g}/{v}")
                };
                let url = format!("/openapi/v3/{key}");
                paths.insert(key, json!({"serverRelativeURL": url}));
            }
        }
        json!({"paths": paths})
    }

    /// `/openapi/v3/apis/G/V`: PUT and PATCH operations that carry the GVK and accept
    /// `fieldValidation`, which is what clients check before sending `fieldValidation=Strict`.
    pub fn openapi_gv(&self, group: &str, version: &str) -> Option<Value> {
        let mut paths = serde_json::Map::new();
        let params = json!([
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
            {"name": "force", "in": "query", "schema": {"type": "boolean"}},
        ]);
        for r in self
            .resources
            .iter()
            .filter(|r| r.group == group && r.version == version)
        {
            let prefix = if group.is_empty() {
                format!("/api/{version}")
            } else {
                format!("/apis/{group}/{version}")
            };
            let path = if r.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
            } else {
                format!("{prefix}/{}/{{name}}", r.plural)
            };
            let op = |verb: &str| {
                json!({
                    "operationId": format!("{verb}{}", r.kind),
                    "parameters": params,
                    "responses": {"200": {"description": "OK"}},
                    "x-kubernetes-action": verb,
                    "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": r.kind},
                })
            };
            paths.insert(path, json!({"put": op("put"), "patch": op("patch")}));
        }
        if paths.is_empty() {
            return None;
        }
        Some(json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": crate::GIT_VERSION},
            "paths": paths,
            "components": {"schemas": {}},
        }))
    }
}
