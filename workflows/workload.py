"""WorkloadWorkflow: one long-running entity workflow per workload.

Handlers only record intent in the state; the main loop does all the work: a reconcile pass runs
the steps in order as activities, then the loop sleeps until a message arrives, the next drift
check, or the next deadline. An external failure never fails the workflow: the step's condition
goes False, the phase Degraded, and the next pass retries after a capped backoff.
"""

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RawValue, SearchAttributePair
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.apiroutes import ApiRouteActivities, RegisterInput
    from activities.aws import AwsActivities, RegistryInput
    from activities.heartbeat import HEARTBEAT_TIMEOUT
    from activities.nats import (
        CredentialRecord,
        DeliveryCheckInput,
        IssueInput,
        NatsActivities,
        NatsUser,
        NatsUserInput,
        RemoveInput,
        RevokeInput,
    )
    from activities.platform import RuntimeSettings
    from activities.port import PortActivities, PublishInput
    from activities.statestore import ManifestsInput, ManifestsResult, StateStoreActivities
    from idp import credentials as policy
    from idp.models import ApiTarget, disallowed_changes
    from idp.routes import RegisterTargets, Registration, TargetState
    from workflows import metrics
    from workflows import search_attributes as sa
    from workflows.messages import (
        ApplyRequest,
        ApplyResult,
        RotateRequest,
        SignalRequest,
        WaitReadyRequest,
        WorkloadInput,
        WorkloadStatus,
    )
    from workflows.portview import port_view
    from workflows.requests import (
        NO_INPUT,
        REQUEST_MODELS,
        M,
        Operation,
        UnreadableInput,
        read_input,
        refusal,
    )
    from workflows.state import (
        WAITING,
        ApiRoute,
        ConditionStatus,
        CredentialsOutput,
        ManifestsOutput,
        NatsOutput,
        Phase,
        RegistryOutput,
        Revocation,
        Rotation,
        WorkloadState,
        blocking,
    )
    from workflows.steps import (
        PHASE_FROM_CONDITIONS,
        STEP_RETRY,
        STEP_TIMEOUT,
        WAIT_READY_ANSWERS_BLOCKED,
        StepFailed,
        continue_as_new_if_suggested,
        details,
        failure,
        is_permanent,
        read_settings,
        reject,
        retry_interval,
    )

R = TypeVar("R")

REGISTRY = "Registry"
NATS = "Nats"
CREDENTIALS = "Credentials"
MANIFESTS = "Manifests"
API = "Api"
PORT = "Port"
WORKLOAD = "Workload"
DELETED = "Deleted"
# Events about messages the workflow could not act on.
SIGNAL = "Signal"
# The Api states besides the aggregator's TargetState: waiting for the ApiAggregator to be
# applied, and accepted but not yet in the state store.
PENDING = "AggregatorPending"
UNWRITTEN = "RoutesNotWritten"


@workflow.defn
class WorkloadWorkflow:
    @workflow.init
    def __init__(self, input: WorkloadInput) -> None:
        if input.state is not None:
            self.state = input.state
        else:
            self.state = WorkloadState(workload=input.workload)
            self.state.seen(input.request_id)
        self._settings = RuntimeSettings()
        self._publishing: asyncio.Task[None] | None = None
        self._reconciling = False

    # ---- messages: they only record intent; the loop acts on it -------------------------------

    # Inputs are taken raw and read by requests.read_input: a bad one is answered with the
    # field path, not with the SDK's "Failed decoding arguments" or a silently dropped signal.

    @workflow.update
    def apply(self, request: RawValue) -> ApplyResult:
        apply = read_input(request, ApplyRequest, "apply")
        if self.state.seen(apply.request_id) or apply.workload == self.state.workload:
            return ApplyResult(generation=self.state.generation, changed=False)
        self.state.workload = apply.workload
        self.state.generation += 1
        return ApplyResult(generation=self.state.generation, changed=True)

    @apply.validator
    def _validate_apply(self, request: RawValue) -> None:
        apply = self._read_or_reject(request, ApplyRequest, "apply")
        if self.state.handled(apply.request_id):
            return
        new = apply.workload
        workflow_id = workflow.info().workflow_id
        if new.workflow_id != workflow_id:
            reject(f"this workflow manages {workflow_id!r}; the spec names {new.workflow_id!r}")
        if self.state.deleting:
            reject(f"{workflow_id} is being deleted; apply it again once deletion has finished")
        for problem in disallowed_changes(self.state.workload, new):
            reject(problem)

    @workflow.update
    async def wait_ready(self, request: RawValue) -> WorkloadStatus:
        wait = read_input(request, WaitReadyRequest, "wait_ready")
        # Older runs waited through a failure no retry can fix, until their timeout.
        answer_blocked = workflow.patched(WAIT_READY_ANSWERS_BLOCKED)

        def settled() -> bool:
            state = self.state
            observed = state.observed_generation >= wait.generation
            # A pass asked for or under way may clear what blocked the last one.
            blocked = not (state.reconcile_requested or self._reconciling) and blocking(
                state.conditions
            )
            # Paused and deleted workloads will not get there, nor one that a person must fix
            # first; tell the caller now.
            return (
                (observed and state.phase == Phase.READY)
                or (answer_blocked and observed and state.phase == Phase.DEGRADED and blocked)
                or (state.paused and state.phase == Phase.PAUSED)
                or state.phase == Phase.DELETED
            )

        try:
            await workflow.wait_condition(
                settled, timeout=wait.timeout_seconds, timeout_summary="wait_ready deadline"
            )
        except TimeoutError:
            pass
        return self.status()

    @wait_ready.validator
    def _validate_wait_ready(self, request: RawValue) -> None:
        self._read_or_reject(request, WaitReadyRequest, "wait_ready")

    # Each request is an update, so every caller is refused with the same sentence (`refusal`)
    # before anything reaches history, and a signal of the same name, for callers that do not
    # wait for an answer: it records the refusal as an event instead.

    @workflow.update(name="reconcile")
    def request_reconcile(self, request: RawValue = NO_INPUT) -> None:
        self._request("reconcile", request)

    @request_reconcile.validator
    def _validate_reconcile(self, request: RawValue = NO_INPUT) -> None:
        self._validate_request("reconcile", request)

    @workflow.update(name="pause")
    def request_pause(self, request: RawValue = NO_INPUT) -> None:
        self._request("pause", request)

    @request_pause.validator
    def _validate_pause(self, request: RawValue = NO_INPUT) -> None:
        self._validate_request("pause", request)

    @workflow.update(name="resume")
    def request_resume(self, request: RawValue = NO_INPUT) -> None:
        self._request("resume", request)

    @request_resume.validator
    def _validate_resume(self, request: RawValue = NO_INPUT) -> None:
        self._validate_request("resume", request)

    @workflow.update(name="rotate_credentials")
    def request_rotate_credentials(self, request: RawValue = NO_INPUT) -> None:
        self._request("rotate_credentials", request)

    @request_rotate_credentials.validator
    def _validate_rotate_credentials(self, request: RawValue = NO_INPUT) -> None:
        self._validate_request("rotate_credentials", request)

    @workflow.update(name="delete")
    def request_delete(self, request: RawValue = NO_INPUT) -> None:
        self._request("delete", request)

    @request_delete.validator
    def _validate_delete(self, request: RawValue = NO_INPUT) -> None:
        self._validate_request("delete", request)

    @workflow.signal
    def reconcile(self, request: RawValue = NO_INPUT) -> None:
        self._signal("reconcile", request)

    @workflow.signal
    def pause(self, request: RawValue = NO_INPUT) -> None:
        self._signal("pause", request)

    @workflow.signal
    def resume(self, request: RawValue = NO_INPUT) -> None:
        self._signal("resume", request)

    @workflow.signal
    def rotate_credentials(self, request: RawValue = NO_INPUT) -> None:
        self._signal("rotate_credentials", request)

    @workflow.signal
    def delete(self, request: RawValue = NO_INPUT) -> None:
        self._signal("delete", request)

    def _read_or_reject(self, raw: RawValue, model: type[M], operation: str) -> M:
        try:
            return read_input(raw, model, operation)
        except UnreadableInput as error:
            reject(str(error))

    def _validate_request(self, operation: Operation, raw: RawValue) -> None:
        request = self._read_or_reject(raw, REQUEST_MODELS[operation], operation)
        if self.state.handled(request.request_id):
            return  # a re-delivery of a request already acted on
        problem = refusal(operation, self.state)
        if problem is not None:
            reject(problem)

    def _signal(self, operation: Operation, raw: RawValue) -> None:
        try:
            request = read_input(raw, REQUEST_MODELS[operation], operation)
        except UnreadableInput as error:
            self.state.add_event(SIGNAL, f"ignored: {error}", workflow.now())
            return
        if self.state.seen(request.request_id):
            return
        problem = refusal(operation, self.state)
        if problem is not None:
            self.state.add_event(SIGNAL, f"ignored {operation}: {problem}", workflow.now())
            return
        self._intend(operation, request)

    def _request(self, operation: Operation, raw: RawValue) -> None:
        request = read_input(raw, REQUEST_MODELS[operation], operation)
        if not self.state.seen(request.request_id):
            self._intend(operation, request)

    def _intend(self, operation: Operation, request: SignalRequest) -> None:
        state = self.state
        if operation == "reconcile":
            state.reconcile_requested = True
        elif operation == "pause":
            state.paused = True
        elif operation == "resume":
            state.paused = False
        elif operation == "delete":
            state.deleting = True
        else:
            revoke_now = isinstance(request, RotateRequest) and request.revoke_old == "now"
            state.rotation = Rotation(
                reason=request.reason or "requested", revoke_old_now=revoke_now
            )
            state.reconcile_requested = True

    @workflow.query
    def status(self) -> WorkloadStatus:
        state = self.state
        return WorkloadStatus(
            name=state.workload.metadata.name,
            system=state.workload.metadata.system,
            workload=state.workload,
            phase=state.phase,
            paused=state.paused,
            generation=state.generation,
            observed_generation=state.observed_generation,
            conditions=state.conditions,
            outputs=state.outputs,
            events=state.events,
            next_check_at=state.next_check_at,
        )

    # ---- the loop --------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: WorkloadInput) -> WorkloadStatus:
        await self._read_settings()
        self._sync_search_attributes()
        while True:
            if self.state.deleting:
                if await self._teardown():
                    self._set_phase(Phase.DELETED)
                    self._publish()
                    if self._publishing:
                        await self._publishing
                    return self.status()
            elif self.state.paused:
                self._set_phase(Phase.PAUSED)
            else:
                self._reconciling = True
                await self._reconcile()
                self._reconciling = False
            self._publish()
            await continue_as_new_if_suggested(
                WorkloadInput(workload=self.state.workload, state=self.state)
            )
            await self._sleep()

    async def _read_settings(self) -> None:
        self._settings = await read_settings()

    def _has_work(self) -> bool:
        """Something the loop has not acted on yet (a failed teardown waits for its backoff)."""
        state = self.state
        if state.deleting:
            return state.phase != Phase.DELETING
        if state.paused != (state.phase == Phase.PAUSED):
            return True
        return not state.paused and (
            state.reconcile_requested or state.generation > state.observed_generation
        )

    async def _sleep(self) -> None:
        if self.state.paused and not self.state.deleting:
            self.state.next_check_at = None
            await workflow.wait_condition(self._has_work)
            return
        settings = self._settings.reconcile
        if self.state.failures:
            interval = retry_interval(settings, self.state.failures)
            summary = "retry after backoff"
        else:
            interval = settings.drift_interval
            summary = "next drift check"
            deadline = self._next_deadline()
            if deadline is not None and deadline - workflow.now() < interval:
                interval = max(deadline - workflow.now(), timedelta(seconds=1))
                summary = "next credential deadline"
        self.state.next_check_at = workflow.now() + interval
        try:
            await workflow.wait_condition(self._has_work, timeout=interval, timeout_summary=summary)
        except TimeoutError:
            pass

    async def _reconcile(self) -> None:
        generation = self.state.generation
        if self.state.observed_generation < generation:
            self._set_phase(Phase.PROVISIONING)
        self.state.reconcile_requested = False
        await self._read_settings()
        # Steps run in order and a failure stops the pass: later steps build on earlier outputs.
        try:
            await self._registry()
            await self._nats()
            await self._manifests()
            settled = await self._api()
            ok = True
        except StepFailed:
            ok = settled = False
        self.state.observed_generation = generation
        self.state.failures = 0 if ok else self.state.failures + 1
        if workflow.patched(PHASE_FROM_CONDITIONS):
            self._set_phase(self.state.settled_phase())
        else:
            # Runs recorded before: a refused or pending route still showed Ready.
            phase = Phase.PROVISIONING if ok and not settled else Phase.READY
            self._set_phase(phase if ok else Phase.DEGRADED)
        metrics.reconcile_pass("Workload")

    async def _teardown(self) -> bool:
        """Undo the steps in reverse order; False when something failed and must be retried."""
        self._set_phase(Phase.DELETING)
        await self._read_settings()
        try:
            await self._remove_api()
            await self._remove_manifests()
            await self._remove_nats()
            await self._remove_registry()
        except StepFailed:
            self.state.failures += 1
            return False
        # What `describe` shows of a deleted workload: every step deleted, nothing scheduled.
        for condition in self.state.conditions:
            if condition.reason != DELETED:
                self._deleted(condition.type, "nothing to remove")
        self.state.next_check_at = None
        self.state.add_event(WORKLOAD, "deleted", workflow.now())
        return True

    def _deleted(self, step: str, message: str) -> None:
        self.state.add_event(step, message, workflow.now())
        self._condition(step, ConditionStatus.FALSE, DELETED, message)

    async def _remove_manifests(self) -> None:
        # Nothing was ever written when the step never succeeded (an unknown destination, say):
        # skipping it then keeps such a workload deletable.
        if self.state.outputs.manifests is None:
            return
        result = await self._step(
            MANIFESTS,
            StateStoreActivities.remove_workload_manifests,
            self._manifests_input(),
            f"remove manifests from {self.state.workload.spec.destination}",
        )
        self.state.outputs.manifests = None
        self._deleted(MANIFESTS, _removed(result))

    async def _remove_registry(self) -> None:
        if self.state.outputs.registry is None:
            return
        policy_name = self.state.workload.spec.deletion_policy.value
        removal = await self._step(
            REGISTRY,
            AwsActivities.remove_registry,
            RegistryInput(workload=self.state.workload),
            f"remove IAM role (deletionPolicy {policy_name})",
        )
        self.state.outputs.registry = None
        removed = ", ".join(removal.removed) or "nothing left to remove"
        self._deleted(REGISTRY, f"removed {removed}")

    # ---- steps -----------------------------------------------------------------------------

    def _manifests_input(self) -> ManifestsInput:
        registry = self.state.outputs.registry
        return ManifestsInput(
            workload=self.state.workload,
            generation=self.state.generation,
            workflow_id=workflow.info().workflow_id,
            role_arn=registry.role_arn if registry else None,
        )

    async def _registry(self) -> None:
        if not (self._settings.registry and self.state.workload.spec.registry.enabled):
            return
        result = await self._step(
            REGISTRY,
            AwsActivities.ensure_registry,
            RegistryInput(workload=self.state.workload),
            "ensure ECR repository and IAM role",
        )
        self.state.outputs.registry = RegistryOutput(
            repository_uri=result.repository_uri, role_arn=result.role_arn
        )
        if result.created:
            message = f"created {', '.join(result.created)}: {result.repository_uri}"
            self._changed(REGISTRY, "Created", message)
        elif result.repaired:
            message = f"put back what changed outside the reconciler: {', '.join(result.repaired)}"
            self._changed(REGISTRY, "DriftRepaired", message)
        else:
            self._condition(REGISTRY, ConditionStatus.TRUE, "InSync", result.repository_uri)

    # ---- NATS user and credentials ---------------------------------------------------------

    def _next_deadline(self) -> datetime | None:
        """The earliest credential deadline: refresh, scheduled key rotation, revocation."""
        deadlines = [r.revoke_at for r in self.state.revocations]
        credentials = self.state.outputs.credentials
        nats = self.state.workload.spec.nats
        if credentials is not None:
            deadlines.append(credentials.next_refresh_at)
        if nats is not None and nats.credentials.key_rotation and self.state.key_rotated_at:
            deadlines.append(self.state.key_rotated_at + nats.credentials.key_rotation)
        return min(deadlines, default=None)

    async def _nats(self) -> None:
        spec = self.state.workload.spec.nats
        if not (self._settings.nats and spec):
            return
        known = self.state.outputs.nats
        user = await self._step(
            NATS,
            NatsActivities.ensure_nats_user,
            NatsUserInput(workload=self.state.workload, user_id=known.user_id if known else None),
            "ensure NATS user",
        )
        recreated = user.created and self.state.outputs.credentials is not None
        self._record_user(user)
        if self.state.key_rotated_at is None:
            self.state.key_rotated_at = workflow.now()
        user, rotated = await self._rotate_if_due(user)
        reason = (
            policy.issue_reason(
                self._issued(),
                public_key=user.public_key,
                user_created=recreated,
                rotated=rotated,
                spec=spec,
                now=workflow.now(),
            )
            or await self._delivery_drift()
        )
        if reason is not None:
            await self._issue(user, reason)
        await self._revoke_due()

    def _record_user(self, user: NatsUser) -> None:
        self.state.outputs.nats = NatsOutput(
            user_id=user.user_id,
            account_id=user.account_id,
            name=user.name,
            public_key=user.public_key,
        )
        if user.created and self.state.outputs.credentials is not None:
            self._changed(NATS, "Recreated", f"user {user.name} had vanished and was recreated")
        elif user.created:
            self._changed(NATS, "Created", f"user {user.name} ({user.public_key})")
        elif user.repaired:
            self._changed(NATS, "DriftRepaired", f"put back {', '.join(user.repaired)}")
        else:
            self._condition(NATS, ConditionStatus.TRUE, "InSync", f"user {user.name}")

    async def _rotate_if_due(self, user: NatsUser) -> tuple[NatsUser, policy.IssueReason | None]:
        """Rotate the nkey when asked or when the schedule says so; the old key is revoked later."""
        spec = self.state.workload.spec.nats
        request = self.state.rotation
        now = workflow.now()
        if request is None and not policy.key_rotation_due(
            spec.credentials, self.state.key_rotated_at, now
        ):
            return user, None
        rotated = await self._step(
            NATS,
            NatsActivities.rotate_nats_key,
            NatsUserInput(workload=self.state.workload, user_id=user.user_id),
            "rotate NATS user key",
        )
        grace = spec.credentials.rotation_grace
        if request is not None and request.revoke_old_now:
            grace = timedelta(0)
        self.state.revocations.append(Revocation(public_key=user.public_key, revoke_at=now + grace))
        self.state.key_rotated_at = now
        self.state.rotation = None
        self._record_user(rotated)
        why = f"requested: {request.reason}" if request else "scheduled key rotation"
        self.state.add_event(NATS, f"rotated key ({why}); old key revoked at {now + grace}", now)
        reason = policy.IssueReason.REQUESTED if request else policy.IssueReason.KEY_ROTATION
        return rotated, reason

    def _issued(self) -> policy.Issued | None:
        current = self.state.outputs.credentials
        if current is None:
            return None
        return policy.Issued(
            public_key=current.public_key,
            permissions_digest=current.permissions_digest,
            delivery_digest=current.delivery_digest,
            next_refresh_at=current.next_refresh_at,
        )

    async def _delivery_drift(self) -> policy.IssueReason | None:
        """DeliveryDrift when what was delivered is gone or altered; None when in place."""
        check = await self._step(
            CREDENTIALS,
            NatsActivities.check_delivery,
            DeliveryCheckInput(
                workload=self.state.workload, record=self._record(self.state.outputs.credentials)
            ),
            "check delivered credentials",
        )
        if check.in_place:
            credentials = self.state.outputs.credentials
            message = f"version {credentials.version} delivered to {credentials.location}"
            self._condition(CREDENTIALS, ConditionStatus.TRUE, "InSync", message)
            return None
        message = f"delivered secret drifted: {check.problem}"
        self.state.add_event(CREDENTIALS, message, workflow.now())
        return policy.IssueReason.DELIVERY_DRIFT

    async def _issue(self, user: NatsUser, reason: policy.IssueReason) -> None:
        spec = self.state.workload.spec.nats
        previous = self.state.outputs.credentials
        version = previous.version + 1 if previous else 1
        record = await self._step(
            CREDENTIALS,
            NatsActivities.issue_credentials,
            IssueInput(
                workload=self.state.workload,
                workflow_id=workflow.info().workflow_id,
                user_id=user.user_id,
                version=version,
                reason=reason.value,
                delivered_public_key=previous.public_key if previous else None,
            ),
            f"issue and deliver credentials v{version} ({reason.value})",
        )
        now = workflow.now()
        self.state.outputs.credentials = CredentialsOutput(
            version=record.version,
            public_key=record.public_key,
            issued_at=record.issued_at,
            expires_at=record.expires_at,
            fingerprint=record.fingerprint,
            delivery=record.delivery.value,
            location=record.location,
            permissions_digest=policy.permissions_digest(spec),
            delivery_digest=policy.delivery_digest(spec),
            next_refresh_at=policy.next_refresh(spec.credentials, now),
            reason=reason.value,
        )
        message = f"version {version} ({reason.value}) delivered to {record.location}"
        self._changed(CREDENTIALS, "Issued", message)
        metrics.credentials_issued(reason.value)
        if self._settings.reconcile.search_attributes:
            expiry = sa.CREDENTIALS_EXPIRE_AT.value_set(record.expires_at)
            workflow.upsert_search_attributes([expiry])

    async def _revoke_due(self) -> None:
        now = workflow.now()
        due = [r for r in self.state.revocations if r.revoke_at <= now]
        if not due:
            return
        nats = self.state.outputs.nats
        await self._step(
            NATS,
            NatsActivities.revoke_nats_keys,
            RevokeInput(
                workload=self.state.workload,
                account_id=nats.account_id,
                public_keys=[r.public_key for r in due],
            ),
            f"revoke {len(due)} old NATS key(s)",
        )
        self.state.revocations = [r for r in self.state.revocations if r.revoke_at > now]
        self.state.add_event(NATS, f"revoked {', '.join(r.public_key for r in due)}", now)

    async def _remove_nats(self) -> None:
        nats, credentials = self.state.outputs.nats, self.state.outputs.credentials
        if nats is None and credentials is None:
            return
        keys = [r.public_key for r in self.state.revocations]
        if nats is not None:
            keys.append(nats.public_key)
        await self._step(
            NATS,
            NatsActivities.remove_nats,
            RemoveInput(
                workload=self.state.workload,
                user_id=nats.user_id if nats else None,
                account_id=nats.account_id if nats else None,
                public_keys=keys,
                record=self._record(credentials) if credentials else None,
            ),
            "revoke keys, delete NATS user and delivered secret",
        )
        self.state.outputs.nats = None
        self.state.outputs.credentials = None
        self.state.revocations = []
        self._deleted(NATS, "keys revoked, user deleted")
        if credentials is not None:
            self._deleted(
                CREDENTIALS, f"removed version {credentials.version} from {credentials.location}"
            )

    @staticmethod
    def _record(credentials: CredentialsOutput) -> CredentialRecord:
        return CredentialRecord(
            version=credentials.version,
            public_key=credentials.public_key,
            issued_at=credentials.issued_at,
            expires_at=credentials.expires_at,
            fingerprint=credentials.fingerprint,
            delivery=credentials.delivery,
            location=credentials.location,
        )

    async def _manifests(self) -> None:
        destination = self.state.workload.spec.destination
        result = await self._step(
            MANIFESTS,
            StateStoreActivities.write_workload_manifests,
            self._manifests_input(),
            f"write manifests to {destination}",
        )
        previous = self.state.outputs.manifests
        self.state.outputs.manifests = ManifestsOutput(
            directory=result.directory,
            digest=result.digest,
            commit=result.commit or (previous.commit if previous else None),
        )
        if result.commit is None:
            message = f"{result.directory} in sync"
            self._condition(MANIFESTS, ConditionStatus.TRUE, "InSync", message)
            return
        if previous is not None and previous.digest == result.digest:
            message = f"restored files changed outside the reconciler: {_files(result)}"
            self._changed(MANIFESTS, "DriftRepaired", message)
        else:
            message = f"committed {_files(result)} at {result.commit[:12]}"
            self._changed(MANIFESTS, "Applied", message)

    # ---- Port --------------------------------------------------------------------------------

    def _publish(self) -> None:
        """Show the workload in Port, only when what Port shows would change. In the background:
        the loop must not wait on a portal, and Port being down costs nothing but the entity's
        freshness (the next pass tries again)."""
        if not self._settings.port or (self._publishing and not self._publishing.done()):
            return
        status = self.status()
        shown = port_view(status)
        if shown != self.state.published:
            self._publishing = asyncio.create_task(self._publish_now(status, shown))

    async def _publish_now(self, status: WorkloadStatus, shown: str) -> None:
        try:
            await workflow.execute_activity_method(
                PortActivities.publish_workload,
                PublishInput(status=status),
                start_to_close_timeout=timedelta(minutes=1),
                retry_policy=STEP_RETRY,
                summary="publish to Port",
            )
        except ActivityError as error:
            _, message = failure(error)
            self.state.add_event(PORT, f"could not publish to Port: {message}", workflow.now())
            return
        self.state.published = shown

    # ---- API routes ------------------------------------------------------------------------

    async def _api(self) -> bool:
        """Register the targets with the aggregator of each hostname, and unregister them from
        hostnames the spec no longer names; False while accepted routes await their write.

        A refused or pending target is the user's to fix (or the ApiAggregator's to arrive):
        its condition says so and the rest stays Ready. An aggregator that cannot write is a
        failed step like any other."""
        desired: dict[str, list[ApiTarget]] = {}
        for target in self.state.workload.spec.api:
            desired.setdefault(target.aggregator, []).append(target)
        known = {route.hostname for route in self.state.outputs.api}
        hostnames = sorted(desired.keys() | known)
        if not hostnames:
            return True
        previous = self.state.outputs.api
        for hostname in hostnames:
            registration = await self._register(hostname, desired.get(hostname, []))
            # Recorded per hostname, so a failure on the next one cannot forget this one.
            self.state.outputs.api = [
                *(r for r in self.state.outputs.api if r.hostname != hostname),
                *_routes(registration),
            ]
            if registration.problem:
                message = f"{hostname} cannot write its routes: {registration.problem}"
                self._condition(API, ConditionStatus.FALSE, "AggregatorFailing", message)
                raise StepFailed(API)
        return self._api_condition(previous)

    async def _register(self, hostname: str, targets: list[ApiTarget]) -> Registration:
        workload = self.state.workload
        verb = f"register {len(targets)} target(s) with" if targets else "unregister from"
        return await self._step(
            API,
            ApiRouteActivities.register_api_targets,
            RegisterInput(
                hostname=hostname,
                request=RegisterTargets(
                    system=workload.metadata.system,
                    workload=workload.metadata.name,
                    namespace=workload.spec.namespace,
                    destination=workload.spec.destination,
                    targets=targets,
                ),
            ),
            f"{verb} {hostname}",
        )

    def _api_condition(self, previous: list[ApiRoute]) -> bool:
        """Set the Api condition from the aggregators' answers; False while routes await their
        write (the only state that resolves without anyone acting)."""
        routes = self.state.outputs.api
        problems = [r for r in routes if r.state != TargetState.ACCEPTED]
        if problems:
            # Refusals first: they are what a person has to act on.
            problems.sort(key=lambda r: r.state in (UNWRITTEN, PENDING))
            reason, status = problems[0].state, ConditionStatus.FALSE
            message = "; ".join(r.reason or "" for r in problems)
        elif routes:
            reason, status = "Routed", ConditionStatus.TRUE
            message = "; ".join(f"{', '.join(r.paths)} on {r.hostname}" for r in routes)
        else:
            reason, status, message = "Unrouted", ConditionStatus.TRUE, "no API targets"
        if _route_view(routes) != _route_view(previous):
            self.state.add_event(API, message, workflow.now())
        # A refusal stays until a person changes a spec; waiting for an aggregator or a write
        # resolves by itself.
        self._condition(
            API,
            status,
            reason,
            message,
            permanent=status == ConditionStatus.FALSE and reason not in WAITING,
        )
        return all(r.state != UNWRITTEN for r in routes)

    async def _remove_api(self) -> None:
        for hostname in sorted({route.hostname for route in self.state.outputs.api}):
            await self._register(hostname, [])
            self.state.outputs.api = [r for r in self.state.outputs.api if r.hostname != hostname]
            self._deleted(API, f"unregistered from {hostname}")

    async def _step(
        self,
        condition: str,
        activity: Callable[[Any, Any], Awaitable[R]],
        request: Any,
        summary: str,
    ) -> R:
        """Run one step's activity; on failure record why in its condition and raise StepFailed."""
        try:
            return await workflow.execute_activity_method(
                activity,
                request,
                start_to_close_timeout=STEP_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=STEP_RETRY,
                summary=summary,
            )
        except ActivityError as error:
            reason, message = failure(error)
            metrics.step_failed(condition, reason)
            first = self.state.condition(condition)
            if first is None or first.status != ConditionStatus.FALSE or first.reason != reason:
                self.state.add_event(condition, f"failed: {message}", workflow.now())
            self._condition(
                condition, ConditionStatus.FALSE, reason, message, permanent=is_permanent(error)
            )
            raise StepFailed(condition) from None

    # ---- bookkeeping -----------------------------------------------------------------------

    def _condition(
        self,
        type_: str,
        status: ConditionStatus,
        reason: str,
        message: str,
        permanent: bool = False,
    ) -> None:
        self.state.set_condition(type_, status, reason, message, workflow.now(), permanent)

    def _changed(self, step: str, reason: str, message: str) -> None:
        """A step changed something outside: worth an event as well as the condition."""
        self.state.add_event(step, message, workflow.now())
        self._condition(step, ConditionStatus.TRUE, reason, message)
        metrics.step_changed(step, reason)

    def _set_phase(self, phase: Phase) -> None:
        if phase != self.state.phase:
            self.state.phase = phase
            self._sync_search_attributes()
        workflow.set_current_details(self._details())

    def _sync_search_attributes(self) -> None:
        if not self._settings.reconcile.search_attributes:
            return
        workload = self.state.workload
        desired: list[SearchAttributePair[Any]] = [
            sa.KIND.value_set("Workload"),
            sa.SYSTEM.value_set(workload.metadata.system),
            sa.PHASE.value_set(self.state.phase.value),
            sa.DESTINATION.value_set(workload.spec.destination),
            sa.OWNER.value_set(workload.spec.owner),
        ]
        sa.upsert_changed(desired)

    def _details(self) -> str:
        headline = f"**{self.state.phase.value}** · generation {self.state.generation}"
        if self.state.phase not in (Phase.READY, Phase.DELETED):
            # The headline names what holds the workload back, as the lines below show it.
            holding = [c for c in self.state.conditions if c.status != ConditionStatus.TRUE]
            headline += "".join(f" · {c.type}: {c.reason}" for c in holding[:1])
        return details(headline, self.state.conditions)


def _files(result: ManifestsResult) -> str:
    paths = [*result.written, *(f"-{p}" for p in result.removed)]
    return ", ".join(p.rsplit("/", 1)[-1] for p in paths) or "nothing"


def _removed(result: ManifestsResult) -> str:
    return f"removed {result.directory}" if result.commit else f"{result.directory} already absent"


def _routes(registration: Registration) -> list[ApiRoute]:
    """The workload's view of one hostname: Pending until the ApiAggregator is applied and
    the accepted routes are written."""
    routes = []
    for target in registration.targets:
        state, reason = target.state.value, target.reason
        if target.state == TargetState.ACCEPTED and registration.aggregator is None:
            state = PENDING
            reason = (
                f"no ApiAggregator for {registration.hostname} has been applied yet; the "
                "targets are held until it is"
            )
        elif target.state == TargetState.ACCEPTED and not registration.written:
            state = UNWRITTEN
            reason = f"accepted; {registration.hostname} has not written them yet"
        routes.append(
            ApiRoute(
                hostname=registration.hostname,
                paths=target.paths,
                state=state,
                reason=reason,
                commit=registration.commit,
            )
        )
    return routes


def _route_view(routes: list[ApiRoute]) -> list[tuple[str, list[str], str]]:
    return sorted((r.hostname, r.paths, r.state) for r in routes)
