"""Idempotent Prefect set-up: the process work pool for the local agent and the global concurrency
limit that lets one training at a time use a machine's device (`device:<machine id>`); who holds
that limit, and reclaiming the slots of holders that died."""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from tasks.adapters.ops.atomic_files import write_text_atomically
from tasks.adapters.ops.processes import is_gone, this_process
from tasks.domain.config import DeviceSlotConfig


@contextmanager
def _client(api_url: str | None) -> Iterator:
    """A sync client for `api_url`, or for the current settings (the flow's own API) when None."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if api_url is None:
        with get_client(sync_client=True) as client:
            yield client
        return
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


def ensure_work_pool(api_url: str | None, name: str) -> bool:
    """Create a `process` work pool called `name` unless it exists; True when created."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with _client(api_url) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=name, type="process", description="reasoning-slm local agent (make up / launchd / systemd)",
                base_job_template=ProcessWorker.get_default_base_job_template()))
            return True


def ensure_concurrency_limit(api_url: str | None, name: str, limit: int, overwrite: bool = True) -> bool:
    """Create the global concurrency limit `name` (and, with `overwrite`, set an existing one to
    `limit`); True when created or changed."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with _client(api_url) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit, active=True))
                return True
            except ObjectAlreadyExists:  # two runs starting at once on a fresh server: the other made it
                existing = client.read_global_concurrency_limit_by_name(name)
        if overwrite and (existing.limit != limit or not existing.active):
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit, active=True))
            return True
        return False


# Where Prefect's server keeps concurrency leases once `PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE`
# names the filesystem storage (flows/environment.py and the stack set it): under PREFECT_HOME, so
# a lease outlives the temporary server that granted it and any process here can read it.
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"


@dataclass(frozen=True)
class SlotLease:
    """One holder of a concurrency slot, as Prefect's lease storage records it."""

    lease_id: str
    holder: str  # "flow run <uuid>", or "unknown" for a lease taken without a holder
    since: datetime
    expires: datetime
    holder_gone: bool = False  # its process, on this machine, has ended (recorded by `device_slot`)

    @property
    def expired(self) -> bool:
        """A live holder renews its lease well before this; an expired one was killed."""
        return self.expires < datetime.now(UTC)

    @property
    def dead(self) -> bool:
        return self.expired or self.holder_gone

    def describe(self) -> str:
        age = int((datetime.now(UTC) - self.since).total_seconds())
        state = "expired" if self.expired else f"renewed until {self.expires:%H:%M:%S} UTC"
        return f"{self.holder} since {self.since:%Y-%m-%d %H:%M:%S} UTC ({age} s; lease {state})"


def _holders_dir() -> Path:
    """Which process holds a slot, by lease id: Prefect's lease knows the flow run, not the
    process. Kept on the holder's own machine (its PREFECT_HOME), where that process can be judged."""
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home) / "rslm-slot-holders"


def _holder_records(name: str) -> dict[str, dict]:
    """This machine's records of holders of slot `name`, by lease id."""
    records = {}
    for path in _holders_dir().glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):  # being written or removed right now
            continue
        if record.get("slot") == name:
            records[path.stem] = record
    return records


@contextmanager
def _holder_recorded(name: str, lease_id: UUID, holder_id: str | None) -> Iterator[None]:
    record = write_text_atomically(_holders_dir() / f"{lease_id}.json", json.dumps(
        {"slot": name, "holder": holder_id, **this_process()}))
    try:
        yield
    finally:
        record.unlink(missing_ok=True)


def _lease_dir() -> Path:
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home) / "concurrency_leases"


def leases_readable(api_url: str | None) -> bool:
    """Whether the server's lease files are this machine's to read: its own temporary server, or
    one on the loopback address whose PREFECT_HOME, by the server's own /admin/settings, is this
    process's, with the filesystem lease storage. A loopback server with another home (a team's
    server from `make up` beside a test harness, say) keeps its leases elsewhere: judging its slots
    by this home's files would call every lease missing and hand a held slot to a second holder.
    A shared server elsewhere keeps them on its own disk; there, only this machine's holder records
    and the server's lease expiry count."""
    from urllib.parse import urlparse

    from prefect.settings import PREFECT_API_URL, get_current_settings

    url = api_url or PREFECT_API_URL.value()
    if not url:
        return True
    if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1") or not _lease_dir().is_dir():
        return False
    with _client(api_url) as client:
        try:
            served = client.request("GET", "/admin/settings").json()
        except Exception:  # noqa: BLE001 - an older or locked-down server: judge by holder records only
            return False
    storage = ((served.get("server") or {}).get("concurrency") or {}).get("lease_storage")
    home = served.get("home")
    return storage == LEASE_STORAGE and home is not None and \
        Path(home).expanduser().resolve() == Path(get_current_settings().home).expanduser().resolve()


def slot_leases(api_url: str | None, name: str) -> list[SlotLease]:
    """The leases held on the limit `name`, oldest first (none when it does not exist, or when the
    server's lease files are on another machine: see `leases_readable`)."""
    from prefect.exceptions import ObjectNotFound

    if not leases_readable(api_url):
        return []
    with _client(api_url) as client:
        try:
            limit_id = str(client.read_global_concurrency_limit_by_name(name).id)
        except ObjectNotFound:
            return []
    records = _holder_records(name)
    leases = []
    for path in _lease_dir().glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):  # being written or removed right now
            continue
        if path.name == "expirations.json" or limit_id not in data.get("resource_ids", []):
            continue
        holder = (data.get("metadata") or {}).get("holder") or {}
        record = records.get(str(data["id"]))
        leases.append(SlotLease(lease_id=data["id"], since=datetime.fromisoformat(data["created_at"]),
                                expires=datetime.fromisoformat(data["expiration"]),
                                holder=f"{holder['type'].replace('_', ' ')} {holder['id']}" if holder else "unknown",
                                holder_gone=record is not None and is_gone(record)))
    return sorted(leases, key=lambda lease: lease.since)


def reclaim_dead_slots(api_url: str | None, name: str) -> list[str]:
    """Give back the slots of `name` whose holders died. Always: the leases of holders recorded on
    this machine whose process has ended, released by lease id through the API (wherever the
    server runs). Where the server's lease files are readable here, also expired leases (a killed
    process stops renewing; Prefect's own lease reaper does not run in its temporary server) and
    slots counted with no lease at all. A shared server elsewhere expires the leases of holders on
    other machines itself. Returns what was reclaimed, for the log."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    reclaimed = []
    with _client(api_url) as client:
        for lease_id, record in _holder_records(name).items():
            if is_gone(record):
                try:
                    client.release_concurrency_slots_with_lease(UUID(lease_id))
                except ObjectNotFound:  # already expired and reaped
                    pass
                (_holders_dir() / f"{lease_id}.json").unlink(missing_ok=True)
                reclaimed.append(f"lease of flow run {record.get('holder')} (pid {record.get('pid')}); "
                                 "its process on this machine has ended")
        if not leases_readable(api_url):
            return reclaimed
        for lease in (lease for lease in slot_leases(api_url, name) if lease.dead):
            client.release_concurrency_slots_with_lease(UUID(lease.lease_id))
            reclaimed.append(f"{'expired ' if lease.expired else ''}lease of {lease.describe()}"
                             + ("; its process has ended" if lease.holder_gone else ""))
        try:
            active = client.read_global_concurrency_limit_by_name(name).active_slots
        except ObjectNotFound:
            return reclaimed
        leased = len(slot_leases(api_url, name))
        if active > leased:
            time.sleep(1.0)  # a slot being granted right now is counted a moment before its lease is written
            active = client.read_global_concurrency_limit_by_name(name).active_slots
            leased = len(slot_leases(api_url, name))
            if active > leased:
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=leased))
                reclaimed.append(f"{active - leased} slot(s) held with no lease")
    return reclaimed


def machine_id(policy: DeviceSlotConfig) -> str:
    """This machine's name in its device slot: the config's, else RSLM_MACHINE_ID, else the hostname."""
    return policy.machine_id or os.environ.get("RSLM_MACHINE_ID") or socket.gethostname()


def device_slot_name(policy: DeviceSlotConfig) -> str:
    """The global concurrency limit for this machine's device: `device:<machine id>`. One per
    machine, so a fleet trains on every machine at once, one training per device."""
    return f"device:{machine_id(policy)}"


@contextmanager
def _leased(name: str, policy: DeviceSlotConfig, holder, timeout: float) -> Iterator[UUID]:
    """prefect.concurrency.sync.concurrency(strict=True), keeping the lease id it keeps to itself:
    with it, this machine can release a dead local holder's slot through the API even when the
    server, and its lease files, are on another machine."""
    from prefect.concurrency._leases import maintain_concurrency_lease
    from prefect.concurrency._sync import acquire_concurrency_slots_with_lease, release_concurrency_slots_with_lease

    acquired = acquire_concurrency_slots_with_lease([name], 1, timeout_seconds=timeout, strict=True,
                                                    lease_duration=policy.lease_seconds, holder=holder)
    try:
        # a Prefect server hiccup during a long training must not kill it; the lease then lapses
        # and the slot may be shared for a while, which is the lesser harm
        with maintain_concurrency_lease(acquired.lease_id, policy.lease_seconds, raise_on_lease_renewal_failure=False):
            yield acquired.lease_id
    finally:
        release_concurrency_slots_with_lease(acquired.lease_id)


@contextmanager
def device_slot(policy: DeviceSlotConfig, holder_id: str | None, log: Callable[[str], None],
                name: str | None = None) -> Iterator[None]:
    """Hold this machine's device (`device_slot_name`, or `name`). Strict, so a missing limit is
    created (limit 1) rather than skipped, and overlapping nightly and manual runs on one machine
    queue here instead of fighting over memory (`make up` creates the limit too, with
    `training_slots` from infra/stack.yaml).

    The slot is a lease the holder renews while it runs: a killed holder's slot is reclaimed at
    once when its process ran on this machine (recorded beside the lease id), else once its lease
    lapses. While waiting this says who holds the slot, every `poll_seconds`, and gives
    up after `wait_seconds` with an error naming the holder."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder

    from tasks.domain.errors import RslmError

    name = name or device_slot_name(policy)
    ensure_concurrency_limit(None, name, 1, overwrite=False)
    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(holder_id)) if holder_id else None
    deadline = time.monotonic() + policy.wait_seconds
    with ExitStack() as held:
        while True:
            for what in reclaim_dead_slots(None, name):
                log(f"{name} slot: reclaimed the {what}")
            try:
                lease_id = held.enter_context(_leased(
                    name, policy, holder, timeout=max(1.0, min(policy.poll_seconds, deadline - time.monotonic()))))
                held.enter_context(_holder_recorded(name, lease_id, holder_id))
                log(f"{name} slot: taken")
                taken = time.monotonic()
                break
            except TimeoutError:
                holders = "; ".join(lease.describe() for lease in slot_leases(None, name)) or "a holder without a lease"
                if time.monotonic() >= deadline:
                    raise RslmError(f"{name} slot: still held after {policy.wait_seconds:.0f} s by {holders}; "
                                    "raise device_slot.wait_seconds, or stop that run") from None
                log(f"waiting for the {name} slot, held by {holders}")
        try:
            yield
        finally:
            log(f"{name} slot: given back after {time.monotonic() - taken:.0f} s")


def deployment_exists(name: str) -> bool:
    """Whether the deployment `flow/deployment` is registered on the configured Prefect server."""
    from prefect.exceptions import ObjectNotFound

    with _client(None) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
    return True


def run_deployment_runs(deployment: str, runs: dict[str, tuple[str, dict]], poll_seconds: float = 5.0) -> dict[str, dict]:
    """Start one run of `deployment` per entry (`key: (flow run name, parameters)`), all at once,
    as sub-flow runs of the caller, for the work pool's workers to pick up wherever they run; wait
    for every one to end. Returns, per key, its flow run id, name, final state and message."""
    from prefect.deployments import run_deployment

    started = {key: run_deployment(deployment, parameters=parameters, flow_run_name=name, timeout=0)
               for key, (name, parameters) in runs.items()}
    ended: dict[str, dict] = {}
    with _client(None) as client:
        while len(ended) < len(started):
            for key, run in started.items():
                if key in ended:
                    continue
                state = client.read_flow_run(run.id).state
                if state is not None and state.is_final():
                    ended[key] = {"flow_run_id": str(run.id), "flow_run": run.name, "state": state.type.value,
                                  "message": state.message or ""}
            if len(ended) < len(started):
                time.sleep(poll_seconds)
    return ended
