"""Ray, the cluster that ferrollm's tools run on when one machine is not enough (serving
replicas, ``ferrollm.serve.replicas``; the quantization measurement, ``quant/allocate/ray_tasks``).
Ray is an optional dependency (``pip install 'ferrollm[ray]'``), imported only when used."""

from __future__ import annotations


def connect(address: str) -> None:
    """Joins the cluster at ``address`` (host:port of its head); ``auto`` joins the one
    running on this machine or, if there is none, starts a local one. Joining twice is a no-op."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray-address needs Ray: pip install 'ferrollm[ray]'") from None
    if ray.is_initialized():
        return
    if address == "auto":
        try:
            ray.init(address="auto", logging_level="warning")
            return
        except ConnectionError:
            pass
        ray.init(logging_level="warning")
        return
    ray.init(address=address, logging_level="warning")
