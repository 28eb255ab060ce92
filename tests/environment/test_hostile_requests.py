"""The environment service against a hostile client, over real gRPC: every malformed input is a clear
INVALID_ARGUMENT or NOT_FOUND with bounded details, never INTERNAL, and the server keeps serving.

Findings of issue 20 covered here: 1 (a 5,000-digit task id, a page token holding 1e400), 6 (a 17 kB
session id echoed into the status until the client saw RESOURCE_EXHAUSTED), 8 (full-width digits
accepted in task ids), 9 (a token read from a file with its trailing newline).
"""

from __future__ import annotations

import base64

import grpc
import pytest

from leap.v1 import environment_pb2 as pb
from leap.v1 import environment_pb2_grpc as pb_grpc
from services.environment.backends.household import HouseholdBackend
from services.environment.client import PrivilegedClient, task_ref
from services.environment.server import EnvironmentServer
from services.runtime.config import ServerConfig

TOKEN = "hostile-test-token"
#: Status details a client is shown; the longest message a server may echo stays far below gRPC's 8 KiB.
MAX_DETAILS = 2048


@pytest.fixture(scope="module")
def server():
    srv = EnvironmentServer(ServerConfig(port=0), {"household": HouseholdBackend()}, token=TOKEN, max_sessions=64)
    srv.start()
    yield srv
    srv.stop(grace=0)


@pytest.fixture(scope="module")
def channel(server):
    # A plain channel (no retries): each status is seen exactly as the server sent it.
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def env(channel):
    return pb_grpc.EnvironmentServiceStub(channel)


@pytest.fixture(scope="module")
def priv(channel):
    return pb_grpc.PrivilegedServiceStub(channel)


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def status(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, timeout=10, **kwargs)
    return err.value


def assert_clean(err: grpc.RpcError, *codes: grpc.StatusCode) -> str:
    """The status is one of `codes`, with bounded details and no trace of a Python exception."""
    details = err.details() or ""
    assert err.code() in codes, (err.code(), details[:300])
    assert len(details) <= MAX_DETAILS, len(details)
    assert "Traceback" not in details and "internal error" not in details
    return details


def still_serving(env) -> None:
    assert env.ListEnvironments(pb.ListEnvironmentsRequest(), timeout=10).environments[0].name == "household"


# --- finding 1: digits beyond int()'s limit, tokens beyond float ---------------------------------------

def test_reset_with_a_5000_digit_task_id_is_invalid_argument(env):
    err = status(env.Reset, pb.ResetRequest(env="household", task_id="train-" + "9" * 5000))
    details = assert_clean(err, grpc.StatusCode.INVALID_ARGUMENT)
    assert "task_id" in details and "5006 characters" in details
    # Long but within the identifier limit: parsed, and simply not a task.
    err = status(env.Reset, pb.ResetRequest(env="household", task_id="train-" + "9" * 240))
    assert "valid task ids" in assert_clean(err, grpc.StatusCode.NOT_FOUND)
    still_serving(env)


def test_privileged_calls_with_a_5000_digit_task_id_are_invalid_argument(priv, env):
    task = task_ref("household", "valid_seen-" + "1" * 5000)
    for call, request in [
        (priv.GetPrivilegedState, pb.PrivilegedStateRequest(task=task)),
        (priv.GetExpertActions, pb.ExpertActionsRequest(task=task, expert=pb.EXPERT_KIND_PLANNER)),
        (priv.GetDemonstration, pb.DemonstrationRequest(task=task, expert=pb.EXPERT_KIND_SEARCHER)),
    ]:
        assert "task.task_id" in assert_clean(status(call, request, metadata=AUTH), grpc.StatusCode.INVALID_ARGUMENT)
    still_serving(env)


def _token(payload: str) -> str:
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


@pytest.mark.parametrize("payload", [
    '{"e":"household","s":"train","o":1e400}',            # a float that int() cannot take (inf)
    '{"e":"household","s":"train","o":-1e400}',
    '{"e":"household","s":"train","o":1.5}',
    '{"e":"household","s":"train","o":"7"}',
    '{"e":"household","s":"train","o":true}',
    '{"e":"household","s":"train","o":-3}',
    '{"e":"household","s":"train","o":99999999999999999999}',
    '{"e":"household","s":"train","o":NaN}',
    '{"e":"household","s":"train","o":' + "[" * 300 + "]" * 300 + "}",
    '[1, 2, 3]',
    '"just a string"',
    'null',
])
def test_forged_page_tokens_are_invalid_argument(env, payload):
    err = status(env.ListTasks, pb.ListTasksRequest(env="household", split="train", page_token=_token(payload)))
    assert "page_token" in assert_clean(err, grpc.StatusCode.INVALID_ARGUMENT)


def test_page_tokens_of_any_size_or_alphabet_are_invalid_argument(env):
    for token in ["%%%", "x" * 100_000, "é" * 10, "\x00", _token('{"e":"household","s":"train","o":0}') + "\x00"]:
        err = status(env.ListTasks, pb.ListTasksRequest(env="household", split="train", page_token=token))
        assert_clean(err, grpc.StatusCode.INVALID_ARGUMENT)
    # The server's own tokens still work.
    first = env.ListTasks(pb.ListTasksRequest(env="household", split="train", page_size=3), timeout=10)
    second = env.ListTasks(pb.ListTasksRequest(env="household", split="train", page_size=3,
                                               page_token=first.next_page_token), timeout=10)
    assert [t.task.task_id for t in second.tasks] == ["train-00003", "train-00004", "train-00005"]


def test_list_offsets_start_where_asked_and_hostile_ones_are_invalid_argument(env):
    total = env.ListTasks(pb.ListTasksRequest(env="household", split="valid_seen", page_size=1), timeout=10).total
    page = env.ListTasks(pb.ListTasksRequest(env="household", split="valid_seen", page_size=3, offset=total - 3),
                         timeout=10)
    assert [t.task.task_id for t in page.tasks] == [f"valid_seen-{i:05d}" for i in range(total - 3, total)]
    assert page.next_page_token == "" and page.total == total
    for offset in (total, 2**31 - 1):  # at or past the end: an empty page, not an error
        past = env.ListTasks(pb.ListTasksRequest(env="household", split="valid_seen", offset=offset), timeout=10)
        assert (len(past.tasks), past.next_page_token, past.total) == (0, "", total)
    # The page token continues from the offset.
    first = env.ListTasks(pb.ListTasksRequest(env="household", split="train", page_size=2, offset=5), timeout=10)
    second = env.ListTasks(pb.ListTasksRequest(env="household", split="train", page_size=2,
                                               page_token=first.next_page_token), timeout=10)
    assert [t.task.task_id for t in second.tasks] == ["train-00007", "train-00008"]
    for request in (pb.ListTasksRequest(env="household", split="train", offset=-1),
                    pb.ListTasksRequest(env="household", split="train", offset=-2**31),
                    pb.ListTasksRequest(env="household", split="train", offset=3,
                                        page_token=first.next_page_token)):
        assert "offset" in assert_clean(status(env.ListTasks, request), grpc.StatusCode.INVALID_ARGUMENT)


# --- finding 8: only ASCII digits in task ids ---------------------------------------------------------

@pytest.mark.parametrize("task_id", [
    "train-\uff10\uff10\uff10\uff10\uff11",   # full-width 00001: int() reads it as 1
    "train-\u0661",                            # Arabic-Indic 1
    "train-\u00b2",                            # superscript two: isdigit() but int() refuses it
    "train-0000\u0000",
    "train-00001\n",
    " train-00001",
])
def test_task_ids_with_non_ascii_digits_or_control_characters_are_refused(env, priv, task_id):
    err = status(env.Reset, pb.ResetRequest(env="household", task_id=task_id))
    assert_clean(err, grpc.StatusCode.INVALID_ARGUMENT)
    err = status(priv.GetExpertActions, pb.ExpertActionsRequest(task=task_ref("household", task_id),
                                                                expert=pb.EXPERT_KIND_PLANNER), metadata=AUTH)
    assert_clean(err, grpc.StatusCode.INVALID_ARGUMENT)
    # The ASCII spelling of the same task is fine.
    reply = env.Reset(pb.ResetRequest(env="household", task_id="train-00001"), timeout=10)
    env.Close(pb.CloseRequest(session_id=reply.session_id), timeout=10)


# --- finding 6: bounded echoes ------------------------------------------------------------------------

def test_a_17kb_session_id_is_not_found_with_bounded_details(env):
    long_id = "s" * 17_000
    for call, request in [(env.Step, pb.StepRequest(session_id=long_id, action="look")),
                          (env.Close, pb.CloseRequest(session_id=long_id))]:
        details = assert_clean(status(call, request), grpc.StatusCode.NOT_FOUND)
        assert "unknown session" in details and "more characters" in details
    # Multi-byte characters (each percent-encoded to up to 12 bytes on the wire) are bounded as well.
    details = assert_clean(status(env.Step, pb.StepRequest(session_id="\U0001F600" * 5000, action="x")),
                           grpc.StatusCode.NOT_FOUND)
    assert "more characters" in details


def test_long_names_are_echoed_bounded(env, priv):
    details = assert_clean(status(env.ListTasks, pb.ListTasksRequest(env="e" * 20_000, split="train")),
                           grpc.StatusCode.NOT_FOUND)
    assert "valid names: household" in details
    assert_clean(status(env.ListTasks, pb.ListTasksRequest(env="household", split="s" * 20_000)),
                 grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert_clean(status(env.Reset, pb.ResetRequest(env="household", split="\u00e9" * 20_000)),
                 grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    err = status(priv.GetPrivilegedState, pb.PrivilegedStateRequest(task=task_ref("x" * 30_000, "train-00001")),
                 metadata=AUTH)
    assert_clean(err, grpc.StatusCode.NOT_FOUND)
    still_serving(env)


# --- finding 9: a token with the newline of the file it was read from ---------------------------------

def test_a_token_read_from_a_file_with_its_newline_works(server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with PrivilegedClient(f"127.0.0.1:{server.port}", token_file.read_text(), timeout_s=10) as oracle:
        state = oracle.privileged_state(task_ref("household", "train-00002"))
    assert state.task.task_id == "train-00002" and state.optimal_actions


def test_the_server_ignores_whitespace_around_the_token(priv):
    request = pb.PrivilegedStateRequest(task=task_ref("household", "train-00002"))
    for value in [f"Bearer {TOKEN} ", f"Bearer   {TOKEN}", f"bearer {TOKEN}"]:
        assert priv.GetPrivilegedState(request, metadata=(("authorization", value),), timeout=10).optimal_actions
    err = status(priv.GetPrivilegedState, request, metadata=(("authorization", f"Bearer {TOKEN}x"),))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


# --- the edge, whatever the bytes ---------------------------------------------------------------------

@pytest.mark.parametrize("method,service", [
    ("Reset", "leap.v1.EnvironmentService"), ("Step", "leap.v1.EnvironmentService"),
    ("ListTasks", "leap.v1.EnvironmentService"), ("GetExpertActions", "leap.v1.PrivilegedService"),
])
def test_garbage_bytes_are_invalid_argument(channel, env, method, service):
    call = channel.unary_unary(f"/{service}/{method}", request_serializer=None, response_deserializer=None)
    for garbage in [b"\xff" * 64, b"\x0a\x05ab", b"\x12\x02\xc3\x28", bytes(range(256)) * 4]:
        err = status(call, garbage, metadata=AUTH)
        assert_clean(err, grpc.StatusCode.INVALID_ARGUMENT)
    still_serving(env)


def test_an_undefined_expert_kind_is_named(priv):
    request = pb.ExpertActionsRequest(task=task_ref("household", "train-00002"), expert=999)
    details = assert_clean(status(priv.GetExpertActions, request, metadata=AUTH), grpc.StatusCode.INVALID_ARGUMENT)
    assert "999" in details and "EXPERT_KIND_SEARCHER" in details
