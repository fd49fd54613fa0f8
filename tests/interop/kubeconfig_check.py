#!/usr/bin/env python3
"""Reads kubeconfigs the worker rendered the way the Python Kubernetes client does.

Kubeconfig readers are YAML 1.1 parsers (PyYAML under the Python client, go-yaml v2 under
kubectl), where `no`, `on`, `1:30`, `2026-12-01` or `<<` are not strings. The test
tests/kubeconfig.rs renders many user ids and pipes them here; this script checks that every
string reads back exactly, first with PyYAML (yaml.safe_load, what the client calls) and then
through the client's own loader (kubernetes.config.load_kube_config): the current context
must resolve to our user entry, its token and the server.

Input on stdin: a JSON list of
  {"user_id": str, "request_id": str, "token": str, "yaml": str}
Output on stdout: a JSON list of {"user_id": str, "request_id": str, "problems": [str, ...]},
one entry per case with at least one problem (an empty list when everything read back).
Exit status 0 either way; 2 if PyYAML or the kubernetes package is missing (scripts/test.sh
installs both from tests/requirements.txt).
"""

import json
import os
import sys
import tempfile

try:
    import yaml
    from kubernetes import client, config
except ImportError as e:
    print(
        f"kubeconfig_check.py: {e}; install tests/requirements.txt "
        "(python3 -m pip install -r tests/requirements.txt)",
        file=sys.stderr,
    )
    sys.exit(2)


def get(doc, *path):
    """The value at path (keys and list indexes), or a string saying where it stopped."""
    value = doc
    for step in path:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            return f"<missing at {path!r}>"
    return value


def check_strings(doc, case):
    """Every string the worker writes, read by PyYAML: same type and same text."""
    user = case["user_id"]
    cluster = "gpu-" + case["request_id"]
    context = f"{user}@{cluster}"
    expected = [
        (("apiVersion",), "v1"),
        (("kind",), "Config"),
        (("clusters", 0, "name"), cluster),
        (("users", 0, "name"), user),
        (("users", 0, "user", "token"), case["token"]),
        (("contexts", 0, "name"), context),
        (("contexts", 0, "context", "cluster"), cluster),
        (("contexts", 0, "context", "user"), user),
        (("current-context",), context),
    ]
    problems = []
    for path, want in expected:
        got = get(doc, *path)
        if not (isinstance(got, str) and got == want):
            problems.append(f"PyYAML reads {'.'.join(map(str, path))} as {got!r}, not {want!r}")
    for path in (("clusters", 0, "cluster", "server"),
                 ("clusters", 0, "cluster", "certificate-authority-data")):
        got = get(doc, *path)
        if not isinstance(got, str) or not got:
            problems.append(f"PyYAML reads {'.'.join(map(str, path))} as {got!r}")
    if get(doc, "preferences") != {}:
        problems.append(f"PyYAML reads preferences as {get(doc, 'preferences')!r}")
    if isinstance(doc, dict) and len(doc) != 7:
        problems.append(f"top-level keys {sorted(map(str, doc))}")
    return problems


def check_client(text, doc, case):
    """The Kubernetes client's own loader: the current context resolves to our user."""
    problems = []
    fd, path = tempfile.mkstemp(suffix=".kubeconfig")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        _, active = config.list_kube_config_contexts(config_file=path)
        want_context = f"{case['user_id']}@gpu-{case['request_id']}"
        if active.get("name") != want_context:
            problems.append(f"client's current context is {active.get('name')!r}")
        if get(active, "context", "user") != case["user_id"]:
            problems.append(f"client's context user is {get(active, 'context', 'user')!r}")
        configuration = client.Configuration()
        config.load_kube_config(config_file=path, client_configuration=configuration)
        # The key is "BearerToken" in recent clients, "authorization" in older ones.
        want_auth = "Bearer " + case["token"]
        if want_auth not in configuration.api_key.values():
            problems.append(
                "client found no token for the current context's user "
                f"(api_key {sorted(configuration.api_key)})"
            )
        server = get(doc, "clusters", 0, "cluster", "server")
        if configuration.host != server:
            problems.append(f"client's host is {configuration.host!r}, not {server!r}")
    except Exception as e:  # the loader raises ConfigException, ValueError, KeyError, ...
        problems.append(f"the Kubernetes client cannot load it: {type(e).__name__}: {e}")
    finally:
        os.unlink(path)
    return problems


def main():
    cases = json.load(sys.stdin)
    failures = []
    for case in cases:
        text = case["yaml"]
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            failures.append({"user_id": case["user_id"], "request_id": case["request_id"],
                             "problems": [f"PyYAML cannot load it: {e}"]})
            continue
        problems = check_strings(doc, case) + check_client(text, doc, case)
        if problems:
            failures.append({"user_id": case["user_id"], "request_id": case["request_id"],
                             "problems": problems})
    json.dump(failures, sys.stdout)
    print()


if __name__ == "__main__":
    main()
