"""Evaluate a ValidatingAdmissionPolicy's CEL expressions against admission requests, as the API server does.

Runs in the deploy tools' venv (.tools/venv, where `cel-python` is installed), as a script:

    .tools/venv/bin/python tests/deploy/vap_eval.py < input.json > output.json

input:  {"policy": <ValidatingAdmissionPolicy>, "requests": [<request>, ...]} where a request is
        {"operation": "CREATE", "resource": {"group", "version", "resource"}, "namespace": "...",
         "userInfo": {"username": "..."}, "object": {...}}
output: [{"matched": bool, "allowed": bool, "messages": [...]}, ...] per request, in order.

The semantics followed (Kubernetes 1.30+, admissionregistration.k8s.io/v1):
- a request the policy's resourceRules do not cover is not matched (allowed);
- matchConditions must all be true for the policy to apply; one that errors applies the
  failurePolicy (Fail: refused);
- variables are evaluated lazily in Kubernetes; here eagerly, and a variable that errors is left
  out, so a validation that uses it errors too;
- a validation that is false refuses with its message; one that errors refuses as well
  (failurePolicy Fail). No Kubernetes-only CEL library function is available here, so a policy that
  used one would fail these tests rather than pass them by accident.
"""

from __future__ import annotations

import json
import sys

import celpy


def _matches_rules(policy: dict, request: dict) -> bool:
    resource = request["resource"]
    for rule in policy["spec"]["matchConstraints"]["resourceRules"]:
        if request["operation"] not in rule.get("operations", []) and "*" not in rule.get("operations", []):
            continue
        if resource["group"] not in rule.get("apiGroups", []) and "*" not in rule.get("apiGroups", []):
            continue
        if resource["version"] not in rule.get("apiVersions", []) and "*" not in rule.get("apiVersions", []):
            continue
        if resource["resource"] in rule.get("resources", []) or "*" in rule.get("resources", []):
            return True
    return False


def evaluate(policy: dict, request: dict) -> dict:
    if not _matches_rules(policy, request):
        return {"matched": False, "allowed": True, "messages": []}
    env = celpy.Environment()
    cel_request = {"operation": request["operation"], "namespace": request.get("namespace", ""),
                   "resource": request["resource"], "userInfo": request.get("userInfo", {}),
                   "kind": request.get("kind", {})}
    activation = {"object": celpy.json_to_cel(request.get("object") or {}),
                  "oldObject": celpy.json_to_cel(request.get("oldObject")),
                  "request": celpy.json_to_cel(cel_request)}
    fail = policy["spec"].get("failurePolicy", "Fail") == "Fail"

    def run(expression: str):
        return env.program(env.compile(expression)).evaluate(activation)

    for condition in policy["spec"].get("matchConditions") or []:
        try:
            if not bool(run(condition["expression"])):
                return {"matched": False, "allowed": True, "messages": []}
        except Exception as exc:  # noqa: BLE001 - an erroring condition applies the failure policy
            return {"matched": True, "allowed": not fail,
                    "messages": [f"matchCondition {condition['name']} failed to evaluate: {exc}"]}
    variables: dict = {}
    for var in [*(policy["spec"].get("variables") or []), None]:
        # Each variable sees the ones before it; the last round publishes them all to the validations.
        activation["variables"] = celpy.celtypes.MapType(
            {celpy.celtypes.StringType(k): v for k, v in variables.items()})
        if var is None:
            break
        try:
            variables[var["name"]] = run(var["expression"])
        except Exception:  # noqa: BLE001 - see the module docstring: left out, users of it error
            pass
    messages = []
    for validation in policy["spec"]["validations"]:
        try:
            ok = bool(run(validation["expression"]))
        except Exception as exc:  # noqa: BLE001 - an error refuses under failurePolicy Fail
            ok = not fail
            if not ok:
                messages.append(f"{validation.get('message', validation['expression'])} (evaluation error: {exc})")
                continue
        if not ok:
            messages.append(validation.get("message", validation["expression"]))
    return {"matched": True, "allowed": not messages, "messages": messages}


def main() -> int:
    data = json.load(sys.stdin)
    json.dump([evaluate(data["policy"], r) for r in data["requests"]], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
