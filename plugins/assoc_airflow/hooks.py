"""Hooks: DVC (snapshot / restore) and TF Serving (gRPC channel, Predict, GetModelStatus)."""

from __future__ import annotations

from airflow.sdk import BaseHook


class DvcHook(BaseHook):
    """DVC on a git checkout; the remote is the repo's default (a local folder unless configured)."""

    def __init__(self, repo: str = ".", remote_url: str | None = None) -> None:
        super().__init__()
        self.repo, self.remote_url = repo, remote_url

    def snapshot(self, target: str = "data") -> dict:
        from assoc_lib.data import versioning

        versioning.ensure_repo(self.repo, self.remote_url)
        return versioning.snapshot(self.repo, target)

    def restore(self, md5: str, target: str = "data") -> dict:
        from assoc_lib.data import versioning

        return versioning.restore(self.repo, md5, target)


class TFServingHook(BaseHook):
    """A gRPC client of TF Serving (or ``assoc serve``) for infra validation and checks."""

    def __init__(self, target: str = "127.0.0.1:8500", model_name: str = "assoc", timeout: float = 10.0) -> None:
        super().__init__()
        self.target, self.model_name, self.timeout = target, model_name, timeout

    def get_conn(self):
        from assoc_lib.serving.client import AssocClient

        return AssocClient(self.target, self.model_name, self.timeout)

    def predict(self, baskets: list[list[str]], **kw):
        with self.get_conn() as client:
            return client.complete_basket(baskets, **kw)

    def model_status(self) -> list[dict]:
        with self.get_conn() as client:
            return client.model_status()
