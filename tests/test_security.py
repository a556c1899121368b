"""Hostile input and credentials: the API's schema under generated requests, the message
decoder under arbitrary bytes, and the stack against servers that require passwords."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from qtasks import DecodeError, QTasks
from qtasks.errors import BackendError, BrokerError
from qtasks.message import TaskMessage, decode_message, encode_message
from qtasks.servers import NatsServer, RedisServer
from tests.apps.demo import make_app
from tests.support import WorkerProcess, isolated_env, settings_from
from tests.test_integration import Api

# -- the message decoder ---------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_decoder_turns_any_bytes_into_a_message_or_a_decode_error(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except DecodeError:
        return
    assert isinstance(msg, TaskMessage)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["id", "task", "args", "kwargs", "v", "eta", "queue"]),
        st.one_of(
            st.none(),
            st.integers(-(2**63), 2**63 - 1),
            st.text(max_size=5),
            st.lists(st.integers(0, 9), max_size=3),
        ),
        max_size=7,
    )
)
def test_decoder_rejects_wrong_shapes_with_decode_error(fields: dict[str, Any]) -> None:
    import msgspec

    try:
        msg = decode_message(msgspec.msgpack.encode(fields))
    except DecodeError:
        return
    assert encode_message(msg)  # whatever decodes is a well-formed message


# -- the API under generated requests ------------------------------------------------------------


@pytest.mark.integration
def test_api_never_answers_5xx_and_matches_its_schema() -> None:
    # No worker: valid submissions just wait in this test's own stream.
    api = Api(isolated_env())
    try:
        schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 3
        for operation in operations:

            @settings(
                max_examples=40,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy())
            def check(case: Any) -> None:
                response = case.call(base_url=api.url)
                assert response.status_code < 500, (case.method, case.path, response.text)
                # Positive-data acceptance is excluded: a schema cannot say "valid OpenQASM",
                # so schema-valid bodies are rightly rejected with a 400 and its reason.
                case.validate_response(response, excluded_checks=[positive_data_acceptance])

            check()
    finally:
        api.close()


# -- servers that require credentials --------------------------------------------------------------


@pytest.fixture(scope="module")
def secured() -> Iterator[tuple[NatsServer, RedisServer]]:
    nats = NatsServer(user="qtasks", password="nats-secret")
    redis = RedisServer(password="redis-secret")
    nats.start()
    redis.start()
    yield nats, redis
    nats.cleanup()
    redis.cleanup()


@pytest.mark.integration
def test_stack_runs_against_password_protected_nats_and_redis(
    secured: tuple[NatsServer, RedisServer],
) -> None:
    nats, redis = secured
    env = isolated_env(nats_url=nats.url, redis_url=redis.url)
    app = make_app(settings_from(env))
    with WorkerProcess(env, "tests.apps.demo:app", "--concurrency", "2"):
        assert app.tasks["demo.add"].delay(20, 22).get(timeout=30) == 42
    app.close()


@pytest.mark.integration
def test_wrong_credentials_fail_fast_with_our_errors(
    secured: tuple[NatsServer, RedisServer],
) -> None:
    nats, redis = secured
    bad_nats = nats.url.replace("nats-secret", "wrong")
    bad_redis = redis.url.replace("redis-secret", "wrong")
    env = isolated_env(nats_url=bad_nats, redis_url=redis.url)
    app: QTasks = make_app(settings_from(env))

    async def connect_broker() -> None:
        await app.make_broker().connect()

    with pytest.raises(BrokerError):
        asyncio.run(asyncio.wait_for(connect_broker(), 20))

    env = isolated_env(nats_url=nats.url, redis_url=bad_redis)
    app = make_app(settings_from(env))

    async def ping_backend() -> None:
        backend = app.make_backend()
        await backend.connect()
        try:
            await backend.ping()
        finally:
            await backend.close()

    with pytest.raises(BackendError):
        asyncio.run(asyncio.wait_for(ping_backend(), 20))
