"""Orchestration of faults, on fakes: the output-folder lock, and a dead Ray actor named by branch and role."""

import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
from ray.exceptions import RayActorError, RayTaskError

from recipe.copd.run_lock import LOCK_NAME, RunLock
from recipe.copd.runner import actor_roles, dead_actor_line


def test_second_run_on_a_folder_is_refused_while_the_first_lives(tmp_path):
    first = RunLock.acquire(str(tmp_path))
    owner = json.loads((tmp_path / LOCK_NAME).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    with pytest.raises(ValueError, match=f"in use by a running copd run \\(pid {os.getpid()}"):
        RunLock.acquire(str(tmp_path))
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    RunLock.acquire(str(tmp_path)).release()


def test_a_dead_owner_lock_is_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    lock = RunLock.acquire(str(tmp_path))
    assert f"(pid {dead.pid}) is dead" in capsys.readouterr().out
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_reused_pid_is_a_dead_owner(tmp_path):
    (tmp_path / LOCK_NAME).write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "proc_start": "-1"})
    )  # the pid is alive but started at another time: another process
    RunLock.acquire(str(tmp_path)).release()


def test_another_hosts_lock_names_the_file(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    with pytest.raises(ValueError, match=f"on host elsewhere .*remove {tmp_path / LOCK_NAME}"):
        RunLock.acquire(str(tmp_path))


class _Handle:
    def __init__(self, hex_id):
        self._actor_id = SimpleNamespace(hex=lambda: hex_id)


def _trainer():
    def branch(name):
        replica = SimpleNamespace(servers=[_Handle(f"server_{name}")])
        return SimpleNamespace(
            actor_rollout_wg=SimpleNamespace(workers=[_Handle("shared_worker")]),
            llm_server_manager=SimpleNamespace(get_replicas=lambda: [replica]),
            agent_loop_manager=SimpleNamespace(agent_loop_workers=[_Handle(f"loop_{name}")]),
        )

    return SimpleNamespace(branches={"add": branch("add"), "mul": branch("mul")}, reward_loop_manager=None)


def test_dead_rollout_server_is_named_by_branch_and_role():
    roles = actor_roles(_trainer())
    died = RayActorError(actor_id="server_mul", error_msg="The actor died unexpectedly\n\tclass_name: HFServer")
    wrapped = RayTaskError("AgentLoopWorker.generate", "traceback", died)  # as it reaches the driver
    line = dead_actor_line(wrapped, roles)
    assert line.startswith("branch mul: rollout server died") and "resume_mode=auto" in line
    shared = dead_actor_line(RayActorError(actor_id="shared_worker"), roles)
    assert shared.startswith("branch add: actor worker and branch mul: actor worker died")  # colocated process
    unknown = dead_actor_line(RayActorError(actor_id="x", error_msg="died\n\tclass_name: Foo"), roles)
    assert unknown.startswith("a Ray actor of the run (Foo, id x) died")
    assert dead_actor_line(ValueError("not an actor death"), roles) is None


def test_actor_that_fails_to_start_gives_its_error():
    died = RayActorError(actor_id="loop_add", error_msg="creation task\nTraceback\nValueError: bad prompt key",
                         actor_init_failed=True)  # fmt: skip
    assert dead_actor_line(died, actor_roles(_trainer())) == (
        "branch add: agent loop worker failed to start: ValueError: bad prompt key"
    )
