"""The HTTP API: POST /tasks, GET /tasks/{task_id}, DELETE /tasks/{task_id}, GET /health,
GET /metrics.

Every error answers ``{"error": {"type", "message", ...}}``; no stack trace reaches a client.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth import KeyRing
from app.observability import (
    TASKS_REVOKED,
    TASKS_SUBMITTED,
    RequestObservability,
    metrics_response,
    setup_logging,
)
from app.tasks import app as qapp
from app.tasks import circuit_limits, run_circuit, service
from qtasks import BackendError, BrokerError, QTasksError, State, TaskResult
from qtasks.message import is_valid_task_id, new_task_id, now_s

log = structlog.get_logger("app.api")
setup_logging()

BELL = (
    'OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; bit[2] c; h q[0]; cx q[0],q[1]; '
    "c[0] = measure q[0]; c[1] = measure q[1];"
)


# -- schemas -------------------------------------------------------------------------------
class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quantum_circuit: str = Field(
        description="An OpenQASM 3 program with at least one measurement.",
        examples=[BELL],
        min_length=1,
    )
    shots: int = Field(
        default=service.default_shots,
        ge=circuit_limits().min_shots,
        le=circuit_limits().max_shots,
        description="How many times to sample the circuit.",
        examples=[1024],
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**63 - 1,
        description="Simulator seed: the same seed gives the same counts.",
        examples=[42],
    )


class ErrorBody(BaseModel):
    type: str = Field(description="Machine-readable error kind.", examples=["QasmSyntaxError"])
    message: str = Field(
        description="What is wrong, for a person.", examples=["line 1, column 12: unexpected token"]
    )
    line: int | None = Field(default=None, description="Line of a program error (1-based).")
    column: int | None = Field(default=None, description="Column of a program error.")
    field: str | None = Field(default=None, description="The request field at fault.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class Submitted(BaseModel):
    task_id: str = Field(
        description="Id to poll at GET /tasks/{task_id}.",
        examples=["3f1c2a9e-8a51-4d3e-9d1e-2b7c3c1f5e0a"],
    )
    state: State = Field(description="PENDING right after submission.", examples=["PENDING"])
    status_url: str = Field(
        description="Where to read the state and result.",
        examples=["/tasks/3f1c2a9e-8a51-4d3e-9d1e-2b7c3c1f5e0a"],
    )


class Timings(BaseModel):
    submitted_at: float | None = Field(default=None, description="Unix time the API queued it.")
    started_at: float | None = Field(default=None, description="Unix time a worker started it.")
    finished_at: float | None = Field(default=None, description="Unix time it finished.")
    queued_s: float | None = Field(default=None, description="Seconds from submission to start.")
    run_s: float | None = Field(default=None, description="Seconds from start to finish.")
    parse_s: float | None = Field(default=None, description="Seconds parsing the program.")
    transpile_s: float | None = Field(default=None, description="Seconds transpiling for Aer.")
    simulation_s: float | None = Field(default=None, description="Seconds simulating.")


class CircuitResult(BaseModel):
    counts: dict[str, int] = Field(
        description="Bitstring -> count, Qiskit's order (bit 0 rightmost); classical registers "
        "separated by spaces, last declared first.",
        examples=[{"00": 515, "11": 509}],
    )
    shots: int = Field(examples=[1024])
    num_qubits: int = Field(examples=[2])
    method: str | None = Field(
        default=None, description="Aer simulation method used.", examples=["statevector"]
    )
    seed: int | None = Field(default=None, description="Seed used, when one was given.")


class TaskStatus(BaseModel):
    task_id: str
    state: State = Field(description="PENDING, STARTED, RETRY, SUCCESS, FAILURE or REVOKED.")
    result: CircuitResult | None = Field(default=None, description="Present on SUCCESS.")
    error: ErrorBody | None = Field(default=None, description="Present on FAILURE.")
    timings: Timings
    worker: str | None = Field(default=None, description="host:pid of the worker that ran it.")
    executor: str | None = Field(
        default=None, description="Where it ran in the worker: process, thread or asyncio.",
        examples=["process"],
    )
    attempts: int = Field(default=0, description="Deliveries to a worker so far.")
    retries: int = Field(default=0, description="Times it failed and was run again.")


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    nats: str = Field(examples=["ok"])
    redis: str = Field(examples=["ok"])


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 503)
}


# -- the app ---------------------------------------------------------------------------------
def error(status: int, type_: str, message: str, **extra: Any) -> JSONResponse:
    body = ErrorBody(type=type_, message=message, **extra)
    return JSONResponse({"error": body.model_dump(exclude_none=True)}, status_code=status)


class BodyLimit:
    """413 for bodies above the limit, by Content-Length or while streaming, before parsing."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = error(
            413, "RequestTooLarge", f"request body exceeds the limit of {self.max_bytes} bytes"
        )
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await too_big(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await too_big(scope, receive, send)


class _TooLarge(Exception):
    pass


keys = KeyRing(service.api_key_hashes)
Owner = Depends(keys.dependency)

api = FastAPI(
    title="qtasks quantum service",
    version="0.1.0",
    description="Submit OpenQASM 3 circuits; workers simulate them on Qiskit Aer through "
    "qtasks (NATS JetStream + Redis).",
)
api.add_middleware(BodyLimit, max_bytes=service.max_request_bytes)
api.add_middleware(RequestObservability)  # outermost: counts and logs 413s too


@api.exception_handler(RequestValidationError)
async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = ".".join(loc) or "body"
    return error(
        422, "ValidationError", f"{where}: {first.get('msg', 'invalid request')}", field=where
    )


@api.exception_handler(StarletteHTTPException)
async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    kinds = {401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed", 413: "RequestTooLarge"}
    resp = error(exc.status_code, kinds.get(exc.status_code, "HTTPError"), str(exc.detail))
    resp.headers.update(exc.headers or {})
    return resp


@api.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("api_error", error=repr(exc))
    return error(500, "InternalError", "internal error; it has been logged")


@api.post("/tasks", status_code=202, response_model=Submitted, responses=ERRORS)
async def submit(req: SubmitRequest, owner: str | None = Owner) -> Any:
    """Queue a circuit. Answers at once with the task id; the simulation runs in a worker."""
    from app.circuits import CircuitError, LimitExceeded, parse_qasm, validate

    limits = circuit_limits()
    try:
        # The parser is pure Python and holds the GIL; a thread keeps other requests moving.
        circuit = await asyncio.to_thread(parse_qasm, req.quantum_circuit, limits)
        validate(circuit, req.shots, limits)
    except LimitExceeded as e:
        status = 413 if e.limit == "max_program_bytes" else 422
        return error(status, type(e).__name__, str(e))
    except CircuitError as e:
        return error(
            400,
            type(e).__name__,
            str(e),
            line=getattr(e, "line", None),
            column=getattr(e, "column", None),
        )
    task_id = new_task_id()
    structlog.contextvars.bind_contextvars(task_id=task_id)  # on every log line of this request
    try:
        backend = await qapp.backend()
        await backend.set(
            TaskResult(
                id=task_id,
                state=State.PENDING,
                task=run_circuit.name,
                queue=run_circuit.queue,
                sent_at=now_s(),
                meta={"owner": owner} if owner else {},
            )
        )
        await run_circuit.aapply_async((req.quantum_circuit, req.shots, req.seed), task_id=task_id)
    except (BrokerError, BackendError) as e:
        log.error("submit_failed", error=str(e))
        return error(503, "ServiceUnavailable", f"cannot queue the task: {e}")
    except QTasksError as e:
        return error(413 if "exceeds" in str(e) else 400, type(e).__name__, str(e))
    log.info("task_submitted", shots=req.shots, qubits=circuit.num_qubits)
    TASKS_SUBMITTED.inc()
    return Submitted(task_id=task_id, state=State.PENDING, status_url=f"/tasks/{task_id}")


@api.get("/tasks/{task_id}", response_model=TaskStatus, responses=ERRORS)
async def status(task_id: str, owner: str | None = Owner) -> Any:
    """The task's state; its counts when it succeeded, its error when it failed."""
    if not is_valid_task_id(task_id):
        return error(404, "NotFound", "no task with this id")
    try:
        info = await (await qapp.backend()).get(task_id)
    except (BackendError, BrokerError) as e:
        return error(503, "ServiceUnavailable", f"cannot read the task: {e}")
    if info is None or (owner is not None and info.meta.get("owner") != owner):
        return error(404, "NotFound", f"no task with id {task_id} (unknown, or its result expired)")
    return to_status(info)


@api.delete("/tasks/{task_id}", response_model=TaskStatus, responses=ERRORS)
async def revoke(task_id: str, owner: str | None = Owner) -> Any:
    """Cancel a task; it ends REVOKED. Not started yet: it never runs. Running: the worker
    stops it (the service's process executor kills the simulation's child process). A task
    that already finished is left as it is: 409. Revoking a revoked task answers 200 again."""
    if not is_valid_task_id(task_id):
        return error(404, "NotFound", "no task with this id")
    try:
        backend = await qapp.backend()
        info = await backend.get(task_id)
        if info is None or (owner is not None and info.meta.get("owner") != owner):
            return error(
                404, "NotFound", f"no task with id {task_id} (unknown, or its result expired)"
            )
        was_revoked = info.state is State.REVOKED
        state = await qapp.AsyncResult(task_id).arevoke()
        info = await backend.get(task_id)
    except (BackendError, BrokerError) as e:
        return error(503, "ServiceUnavailable", f"cannot revoke the task: {e}")
    if state is not State.REVOKED or info is None:
        return error(409, "AlreadyFinished", f"task {task_id} already finished: {state.value}")
    if not was_revoked:
        TASKS_REVOKED.inc()
        log.info("task_revoked")
    return to_status(info)


def to_status(info: TaskResult) -> TaskStatus:
    r: dict[str, Any] = info.result if isinstance(info.result, dict) else {}
    t = Timings(
        submitted_at=info.sent_at,
        started_at=info.started_at,
        finished_at=info.finished_at,
        queued_s=_diff(info.sent_at, info.started_at),
        run_s=_diff(info.started_at, info.finished_at),
        parse_s=r.get("parse_s"),
        transpile_s=r.get("transpile_s"),
        simulation_s=r.get("simulation_s"),
    )
    result = None
    if info.state is State.SUCCESS and r:
        result = CircuitResult(
            counts=r.get("counts", {}),
            shots=r.get("shots", 0),
            num_qubits=r.get("num_qubits", 0),
            method=r.get("method"),
            seed=r.get("seed"),
        )
    err = None
    if info.error is not None and info.state in (State.FAILURE, State.REVOKED, State.RETRY):
        err = ErrorBody(type=info.error.type, message=info.error.message)
    return TaskStatus(
        task_id=info.id,
        state=info.state,
        result=result,
        error=err,
        timings=t,
        worker=r.get("worker") or info.worker,
        executor=info.executor,
        attempts=info.deliveries,
        retries=info.retries,
    )


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 6)


@api.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Any:
    """Prometheus metrics of this API process (requests by route and status, latencies,
    tasks submitted and revoked). ``[app] metrics_enabled = false`` turns the route off
    (404); with API keys on, ``metrics_require_key = true`` asks for one (401)."""
    if not service.metrics_enabled:
        return error(404, "NotFound", "metrics are disabled")
    if service.metrics_require_key:
        keys.owner(request.headers.get("authorization"))  # raises 401 without a valid key
    return metrics_response()


@api.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health() -> Any:
    """200 when NATS and Redis both answer; 503 naming the one that does not."""
    try:
        clients = await asyncio.wait_for(qapp.clients(), 5)
    except Exception:
        nats_state, redis_state = await asyncio.gather(
            _probe(qapp.make_broker()), _probe(qapp.make_backend())
        )
    else:
        nats_state, redis_state = await asyncio.gather(
            _check(clients.broker.ping()), _check(clients.backend.ping())
        )
    ok = nats_state == "ok" and redis_state == "ok"
    body = Health(status="ok" if ok else "unavailable", nats=nats_state, redis=redis_state)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


async def _check(coro: Any) -> str:
    try:
        await asyncio.wait_for(coro, 3)
        return "ok"
    except Exception as e:
        return f"unreachable: {e}" if str(e) else f"unreachable: {type(e).__name__}"


async def _probe(client: Any) -> str:
    try:
        await asyncio.wait_for(client.connect(), 3)
        return await _check(client.ping())
    except Exception as e:
        return f"unreachable: {e}"
    finally:
        await client.close()
