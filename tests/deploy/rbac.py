"""Kubernetes RBAC semantics over manifests (Roles, ClusterRoles and their bindings), for the deploy tests."""

from __future__ import annotations


def rbac_allows(docs: list[dict], user: str, verb: str, group: str, resource: str, namespace: str | None,
                name: str = "") -> bool:
    """Kubernetes RBAC over rendered objects: does any (Cluster)RoleBinding grant `user` this request?

    Bindings: RoleBindings apply in their namespace (to a Role there, or a ClusterRole); a
    ClusterRoleBinding everywhere. Rules: apiGroups, resources (with subresource as "res/sub"),
    verbs, resourceNames (empty: any) and "*" wildcards, as the RBAC authorizer reads them.
    """
    sa_ns, _, sa_name = user.removeprefix("system:serviceaccount:").partition(":")

    def subject_matches(s: dict) -> bool:
        if s.get("kind") == "ServiceAccount":
            return s.get("namespace") == sa_ns and s.get("name") == sa_name
        if s.get("kind") == "User":
            return s.get("name") == user
        return s.get("kind") == "Group" and s.get("name") in (
            "system:serviceaccounts", f"system:serviceaccounts:{sa_ns}", "system:authenticated")

    def rule_allows(rule: dict) -> bool:
        return ((group in rule.get("apiGroups", []) or "*" in rule.get("apiGroups", []))
                and (resource in rule.get("resources", []) or "*" in rule.get("resources", []))
                and (verb in rule.get("verbs", []) or "*" in rule.get("verbs", []))
                and (not rule.get("resourceNames") or name in rule["resourceNames"]))

    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs
             if d["kind"] in ("Role", "ClusterRole")}
    for b in docs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if b["kind"] == "RoleBinding" and b["metadata"].get("namespace") != namespace:
            continue
        if not any(subject_matches(s) for s in b.get("subjects") or []):
            continue
        ref = b["roleRef"]
        role = roles.get((ref["kind"], b["metadata"].get("namespace") if ref["kind"] == "Role" else None, ref["name"]))
        if role and any(rule_allows(r) for r in role.get("rules") or []):
            return True
    return False
