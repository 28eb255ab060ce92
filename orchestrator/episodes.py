"""Episodes over gRPC: the student playing tasks, experts demonstrating them, the teacher correcting.

The orchestrator holds no privileged credential. The student sees only what the environment's
agent-facing service returns; demonstrations and corrections come from the teacher, which is the
only party that talks to the PrivilegedService.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Iterable

import grpc

from leap.v1 import common_pb2, environment_pb2, environment_pb2_grpc, student_pb2, student_pb2_grpc
from leap.v1 import teacher_pb2, teacher_pb2_grpc, trainer_pb2_grpc
from services.runtime.channels import make_channel
from services.student.prompts import history_to_send, prompt_state_key

log = logging.getLogger("leap.orchestrator")

INVALID_OUTPUT_ACTION = "(no valid action)"
ACT_TIMEOUT_S = 600.0
ENV_TIMEOUT_S = 30.0
LIST_PAGE_SIZE = 4
TEACHER_TIMEOUT_S = 600.0


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any parts (never Python's salted hash())."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


#: Services whose calls do no harm when repeated.
SIDE_EFFECT_FREE_SERVICES = ("student", "teacher")


class ServiceStubs:
    """gRPC stubs for the four services, over channels with retries on UNAVAILABLE."""

    def __init__(self, addresses: dict[str, str]):
        self.addresses = dict(addresses)
        # The student and the teacher only compute: their calls may also be retried after a CANCELLED
        # from a draining replica (services.runtime.channels); an environment's Step may not.
        self._channels = {name: make_channel(addr, side_effect_free=name in SIDE_EFFECT_FREE_SERVICES)
                          for name, addr in addresses.items() if addr}
        self.env = environment_pb2_grpc.EnvironmentServiceStub(self._channels["environment"])
        self.student = student_pb2_grpc.StudentServiceStub(self._channels["student"])
        self.teacher = teacher_pb2_grpc.TeacherServiceStub(self._channels["teacher"])
        # No trainer service on Kubernetes: training runs as Jobs (orchestrator.platforms.kubernetes).
        self.trainer = (trainer_pb2_grpc.TrainerServiceStub(self._channels["trainer"])
                        if "trainer" in self._channels else None)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


@dataclass
class EpisodeSettings:
    env: str
    horizon: int
    temperature: float
    max_new_tokens: int
    history_window: int
    seed: int
    adapter_version: str = ""
    constrain_action: bool = False
    max_reason_tokens: int = 0
    #: End an episode at a cycle (see CycleWatch): only with greedy decoding and a known horizon.
    stop_cycles: bool = False


class CycleWatch:
    """Tells when a greedy student has come back to an earlier step of its episode.

    A step's key is the environment's state digest (its whole state, hidden state included, keyed
    per session) together with everything the student's prompts depend on from there
    (`prompt_state_key`). When a key comes back, the student (greedy, so the same prompt gives the
    same action) and the environment (deterministic, which a digest promises) repeat the steps in
    between until the horizon. The episode's end is then known without playing it: not won, the
    score of the state the cycle is in at the horizon, truncated there. Environments that send no
    digest are never stopped; neither are sampled episodes. (A served student is greedy up to
    rounding: in bf16, which rows share its batch can change a near tie; that noise is the
    evaluation's anyway.)
    """

    def __init__(self, settings: "EpisodeSettings"):
        self.settings = settings
        self.active = settings.stop_cycles and settings.temperature == 0.0 and settings.horizon > 0
        self._seen: dict[bytes, int] = {}
        #: Score after each step played.
        self.scores: list[float] = []

    def revisits(self, step: int, goal: str, history: list[tuple[str, str]], obs) -> int | None:
        """The earlier step that step `step` repeats, or None (and remembers this one)."""
        if not self.active or not obs.state_digest:
            return None
        s = self.settings
        key = hashlib.sha256(obs.state_digest.encode() + b"\0" + prompt_state_key(
            s.env, goal, history, obs.text, list(obs.candidates), history_window=s.history_window)).digest()
        earlier = self._seen.get(key)
        if earlier is None:
            self._seen[key] = step
        return earlier

    def end(self, trajectory: common_pb2.Trajectory, first: int, step: int) -> None:
        """Give `trajectory` (stopped before step `step`, which repeats step `first`) its end at the horizon."""
        period = step - first
        last_action = self.settings.horizon - 1
        trajectory.done, trajectory.won, trajectory.truncated = True, False, True
        trajectory.score = self.scores[first + (last_action - first) % period]
        trajectory.metadata.update(cycle_start=str(first), cycle_period=str(period), steps_at_horizon=str(self.settings.horizon))


def steps_at_end(trajectory: common_pb2.Trajectory) -> list[common_pb2.Step]:
    """The steps an episode took to its end: those played, with a stopped cycle repeated to the horizon."""
    steps = list(trajectory.steps)
    if "cycle_start" not in trajectory.metadata:
        return steps
    first, horizon = int(trajectory.metadata["cycle_start"]), int(trajectory.metadata["steps_at_horizon"])
    cycle = steps[first:]  # the trajectory stops where the cycle first comes back: one whole period
    return steps[:first] + [cycle[k % len(cycle)] for k in range(horizon - first)]


def play_student_episode(stubs: ServiceStubs, task_id: str, settings: EpisodeSettings,
                         act_hook: Callable[[student_pb2.ActItem], None] | None = None,
                         on_result: Callable[[student_pb2.ActResult], None] | None = None) -> common_pb2.Trajectory:
    """One episode of the student on a task; returns the whole trajectory.

    act_hook sees every item sent to the student, on_result every answer (e.g. to count its tokens).
    """
    reset = stubs.env.Reset(environment_pb2.ResetRequest(env=settings.env, task_id=task_id, horizon=settings.horizon),
                            timeout=ENV_TIMEOUT_S)
    session = reset.session_id
    obs = reset.observation
    trajectory = common_pb2.Trajectory(task=reset.task.task, goal=reset.task.goal, task_type=reset.task.task_type,
                                       agent="student")
    trajectory.metadata["seed"] = str(settings.seed)
    history: list[tuple[str, str]] = []
    cycles = CycleWatch(settings)
    try:
        t = 0
        while not obs.done:
            earlier = cycles.revisits(t, reset.task.goal, history, obs)
            if earlier is not None:
                cycles.end(trajectory, earlier, t)
                break
            item = student_pb2.ActItem(
                request_id=f"{task_id}/{t}", env=settings.env, goal=reset.task.goal,
                history=[student_pb2.HistoryEntry(observation=o, action=a)
                         for o, a in history_to_send(settings.env, history, settings.history_window)],
                observation=obs.text, candidates=list(obs.candidates),
                sampling=student_pb2.SamplingParams(temperature=settings.temperature,
                                                    max_new_tokens=settings.max_new_tokens,
                                                    seed=derive_seed(settings.seed, task_id, t),
                                                    constrain_action=settings.constrain_action,
                                                    max_reason_tokens=settings.max_reason_tokens),
                adapter_version=settings.adapter_version,
            )
            if act_hook is not None:
                act_hook(item)
            result = stubs.student.Act(student_pb2.ActRequest(items=[item]), timeout=ACT_TIMEOUT_S).results[0]
            if on_result is not None:
                on_result(result)
            action = result.action.strip() or INVALID_OUTPUT_ACTION
            nxt = stubs.env.Step(environment_pb2.StepRequest(session_id=session, action=action),
                                 timeout=ENV_TIMEOUT_S).observation
            trajectory.steps.append(common_pb2.Step(
                index=t, observation=obs.text, candidates=list(obs.candidates), reason=result.reason,
                action=action, reward=nxt.reward, action_valid=result.action_valid and nxt.last_action_valid,
                raw_output=result.raw_output, completion_token_ids=list(result.completion_token_ids),
                adapter_version=result.adapter_version, next_observation=nxt.text,
            ))
            trajectory.metadata["adapter_version"] = result.adapter_version
            history.append((obs.text, action))
            cycles.scores.append(nxt.score)
            obs = nxt
            t += 1
        else:
            trajectory.done, trajectory.won, trajectory.score = obs.done, obs.won, obs.score
            trajectory.truncated = obs.truncated
    finally:
        try:
            stubs.env.Close(environment_pb2.CloseRequest(session_id=session), timeout=ENV_TIMEOUT_S)
        except grpc.RpcError:
            pass
    return trajectory


def demonstrate(stubs: ServiceStubs, task: common_pb2.TaskRef, expert: int, horizon: int,
                annotate: bool) -> common_pb2.Trajectory:
    return stubs.teacher.Demonstrate(
        teacher_pb2.DemonstrateRequest(task=task, expert=expert, horizon=horizon, annotate=annotate),
        timeout=TEACHER_TIMEOUT_S)


def correct(stubs: ServiceStubs, trajectory: common_pb2.Trajectory, level: int) -> teacher_pb2.Correction:
    return stubs.teacher.Correct(
        teacher_pb2.CorrectRequest(trajectory=trajectory,
                                   options=teacher_pb2.CorrectionOptions(realizability_level=level)),
        timeout=TEACHER_TIMEOUT_S)


def list_task_refs(stubs: ServiceStubs, env: str, split: str, offset: int, count: int,
                   keys: str = "") -> list[common_pb2.TaskRef]:
    """Tasks [offset, offset + count) of a split, in the environment's stable order.

    ``keys`` names the run-config keys that chose offset and count, for the error when the split is
    too small."""
    refs: list[common_pb2.TaskRef] = []
    token = ""
    total = 0
    # Pages of at most LIST_PAGE_SIZE tasks, starting at `offset`: a backend that builds each task on
    # first use (textworld generates its game) then answers every call well inside its deadline.
    while len(refs) < count:
        request = environment_pb2.ListTasksRequest(env=env, split=split, page_size=min(count - len(refs),
                                                                                      LIST_PAGE_SIZE))
        if token:
            request.page_token = token
        else:
            request.offset = offset
        page = stubs.env.ListTasks(request, timeout=ENV_TIMEOUT_S)
        total = page.total
        if request.offset and page.tasks and page.offset != request.offset:
            raise ValueError(
                f"the environment server at {stubs.addresses.get('environment')} ignored the offset {request.offset} "
                f"of split {split!r} (it answered from index {page.offset}): it predates ListTasksRequest.offset; "
                "upgrade it to this release")
        refs.extend(info.task for info in page.tasks[: count - len(refs)])
        token = page.next_page_token
        if not token:
            break
    if len(refs) < count:
        hint = f" (set {keys} in the run config)" if keys else ""
        raise ValueError(f"split {split!r} of {env!r} has only {total} tasks; asked for {count} from index "
                         f"{offset}{hint}")
    return refs


@dataclass
class Outcome:
    index: int
    value: object = None
    error: str = ""


class SlotsClosed(RuntimeError):
    """The episode budget was closed (a phase beside this one failed): start no more episodes."""


class EpisodeSlots:
    """A budget of episodes in flight, shared by phases that run at the same time.

    A freed slot goes to the waiting episode of the phase with the lowest `priority` (first come,
    first served within it), so an evaluation that runs beside rollouts is not slowed by them: the
    rollouts only take the slots the evaluation no longer needs.
    """

    def __init__(self, size: int):
        if size < 1:
            raise ValueError("an episode budget needs at least one slot")
        self.size = size
        self._free = size
        self._waiting: list[tuple[int, int]] = []  # heap of (priority, arrival)
        self._arrivals = itertools.count()
        self._changed = threading.Condition()
        self._closed = False

    @contextlib.contextmanager
    def hold(self, priority: int = 0):
        """Wait for a slot (lower priorities first), hold it while the block runs; SlotsClosed once
        the budget is closed."""
        ticket = (priority, next(self._arrivals))
        with self._changed:
            heapq.heappush(self._waiting, ticket)
            self._changed.wait_for(lambda: self._closed or (self._free > 0 and self._waiting[0] == ticket))
            if self._closed:
                self._waiting.remove(ticket)
                heapq.heapify(self._waiting)
                self._changed.notify_all()
                raise SlotsClosed("no more episodes start: a phase running beside this one failed")
            heapq.heappop(self._waiting)
            self._free -= 1
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._free += 1
                self._changed.notify_all()

    def close(self) -> None:
        """Episodes waiting for a slot, and any later, raise SlotsClosed; those running go on."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def in_use(self) -> int:
        with self._changed:
            return self.size - self._free

    def waiting(self) -> int:
        """Episodes queued for a slot now."""
        with self._changed:
            return len(self._waiting)


def run_parallel(fn: Callable[[int], object], count: int, concurrency: int,
                 on_done: Callable[[Outcome], None] | None = None, retries: int = 1,
                 slots: EpisodeSlots | None = None, priority: int = 0) -> list[Outcome]:
    """Run fn(0..count-1) on a bounded thread pool; a failure (an RPC error, or any other exception: a
    malformed reply, a bug) is retried, then recorded as the episode's error, which counts as a failure.

    `slots`, shared by calls running at the same time, bounds their episodes in flight together
    (each call of `fn` holds one slot; `priority` orders the calls' claims on freed slots). Results come back in index order whatever the completion
    order, so outputs are deterministic.
    """
    outcomes: list[Outcome | None] = [None] * count
    lock = threading.Lock()

    def attempt(i: int) -> Outcome:
        last = ""
        for _ in range(retries + 1):
            try:
                if slots is None:
                    return Outcome(i, fn(i))
                with slots.hold(priority):
                    return Outcome(i, fn(i))
            except SlotsClosed:
                raise  # a phase beside this one failed: stop, do not record
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
                log.warning("episode failed; retrying", extra={"index": i, "error": last})
            except Exception as exc:  # noqa: BLE001 - recorded as this episode's error, never lost with the phase
                last = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.warning("episode failed; retrying", extra={"index": i, "error": last}, exc_info=True)
        return Outcome(i, None, last)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="episode") as pool:
        futures = [pool.submit(attempt, i) for i in range(count)]
        for future in as_completed(futures):
            outcome = future.result()
            with lock:
                outcomes[outcome.index] = outcome
            if on_done is not None:
                on_done(outcome)
    return [o for o in outcomes if o is not None]


def summarize(trajectories: Iterable[common_pb2.Trajectory], errors: int = 0) -> dict:
    """Success %, mean score, mean steps, invalid-action rate, overall and per task type.

    `errors` episodes could not be played (an RPC failed after its retry): they count in the overall
    block as failures with score 0 (never dropped), and are reported as `errors`. They have no
    trajectory, so the per-task-type blocks count played episodes only."""
    trajectories = list(trajectories)

    def block(items: list[common_pb2.Trajectory], failed: int = 0) -> dict:
        n = len(items) + failed
        taken = [steps_at_end(t) for t in items]
        steps = sum(len(s) for s in taken)
        invalid = sum(1 for s in taken for step in s if not step.action_valid)
        return {
            "episodes": n,
            "errors": failed,
            "success": 100.0 * sum(t.won for t in items) / n if n else 0.0,
            "score": sum(t.score for t in items) / n if n else 0.0,
            "mean_steps": steps / len(items) if items else 0.0,
            "invalid_action_rate": invalid / steps if steps else 0.0,
            "cycles": sum(1 for t in items if "cycle_start" in t.metadata),
        }

    by_type: dict[str, list] = {}
    for t in trajectories:
        by_type.setdefault(t.task_type or "all", []).append(t)
    return {"overall": block(trajectories, errors), "by_task_type": {k: block(v) for k, v in sorted(by_type.items())}}
