"""Shared pieces of the tests of orchestrator.platforms.kubernetes against the fake API server
(tests/deploy/fake_kube_api.py): the run's namespace and directory, the trainer's PodTemplate, a started
fake cluster holding it, and a platform over that cluster with short timings."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import yaml

from orchestrator.platforms.kubernetes import KubernetesPlatform, PlatformSettings
from tests.deploy.fake_kube_api import FakeKube

ROOT = Path(__file__).resolve().parents[2]
NS = "leap"
RUN_DIR = "/runs/k8s-household"


def trainer_template(image: str) -> dict:
    """deploy/base/workload/trainer-template.yaml (the trainer's PodTemplate) with its image set."""
    template = yaml.safe_load((ROOT / "deploy" / "base" / "workload" / "trainer-template.yaml").read_text())
    template["template"]["spec"]["containers"][0]["image"] = image
    return template


def running_kube(template: dict, configmap: dict) -> Iterator[FakeKube]:
    """A fixture's body: a started fake API server holding the trainer template and the desired-adapter
    ConfigMap in NS, stopped after the test."""
    fake = FakeKube().start()
    fake.add_pod_template(template, NS)
    fake.put("configmaps", configmap)
    yield fake
    fake.stop()


def make_platform(kube: FakeKube, **settings) -> KubernetesPlatform:
    """A platform on the fake cluster, in NS, polling fast and calling no Job stuck."""
    values = dict(namespace=NS, poll_seconds=0.05, stuck_after_s=0.0)
    return KubernetesPlatform(kube.api_client(), PlatformSettings(**{**values, **settings}))
