"""Reward server on loopback: equal results, concurrency, batching, faults, auth, limits, restart, wrapper."""

import re
import threading
import time

import grpc
import numpy as np
import pytest
import torch

from models.base import ModelInputError, TaskContext
from models.grm.config import GRMConfig
from models.grm.inference import GRMProgressModel
from models.grm.model import GRM
from robo.errors import RoboError
from robo.reward.registry import load_progress_model
from robo.serving import reward_pb2, reward_pb2_grpc
from robo.serving.batcher import Batcher, Kind, Request
from robo.serving.client import RemoteProgressModel, RewardServerError, parse_url
from robo.serving.server import RewardServer, ServeConfig, main
from tests.tiny import TINY_GRM

TINY = TINY_GRM
TOKEN = "s3cret-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture(scope="module")
def grm_dir(tmp_path_factory):
    torch.manual_seed(0)
    return GRM(GRMConfig(**TINY)).save_pretrained(tmp_path_factory.mktemp("grm") / "model")


def local(grm_dir):
    return GRMProgressModel.from_pretrained(grm_dir)


def serve(model, **cfg) -> RewardServer:
    return RewardServer(model, ServeConfig(port=cfg.pop("port", 0), **cfg), token=TOKEN).start()


def client(server, **kw) -> RemoteProgressModel:
    return RemoteProgressModel(f"grpc://127.0.0.1:{server.port}", token=TOKEN, **kw)


def frames(t, b, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (t, b, 2, 32, 32, 3), dtype=np.uint8)


def contexts(fr, b):
    base = [
        TaskContext("put the cube on the plate", fr[0, 0], fr[-1, 0]),
        TaskContext(text=None),
        TaskContext("reach", start_frames=fr[1, 0]),
    ]
    return [base[k % 3] for k in range(b)]


class Slow:
    """A progress model that takes ``delay`` seconds per call (to hold requests in flight)."""

    def __init__(self, model, delay):
        self.model, self.delay = model, delay
        self.views, self.image_size = model.views, model.image_size

    def reset(self, *a):
        time.sleep(self.delay)
        return self.model.reset(*a)

    def predict(self, *a):
        time.sleep(self.delay)
        return self.model.predict(*a)


def assert_same(a, b, atol=1e-6):
    for name in ("progress", "success", "confidence"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=atol, rtol=0)


def stub(server, **opts):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}", options=list(opts.items()))
    return channel, reward_pb2_grpc.RewardServiceStub(channel)


def raw_frames(a: np.ndarray, dtype="uint8", shape=None):
    return reward_pb2.Frames(data=a.tobytes(), shape=list(shape or a.shape), dtype=dtype)


# ---------------------------------------------------------------------- results
def test_results_through_the_server_equal_in_process(grm_dir):
    ref = local(grm_dir)
    fr = frames(6, 3)
    with serve(local(grm_dir)) as server, client(server) as remote:
        assert remote.views == ("front", "wrist") and remote.image_size == (32, 32)
        assert_same(
            remote.reset([0, 1, 2], contexts(fr, 3), fr[0]),
            ref.reset([0, 1, 2], contexts(fr, 3), fr[0]),
        )
        for t in range(1, 6):
            out = remote.predict(fr[t])
            assert out.progress.dtype == torch.float32 and out.progress.shape == (3,)
            assert_same(out, ref.predict(fr[t]))
        # a subset of envs, in another order, as torch tensors
        assert_same(
            remote.predict(torch.from_numpy(fr[2][[2, 0]]), [2, 0]),
            ref.predict(fr[2][[2, 0]], [2, 0]),
        )
        assert remote.last_reply.server_ms > 0 and remote.last_reply.batch_rows == 2


def test_many_concurrent_clients_get_their_own_results(grm_dir):
    n_clients, steps = 8, 5
    data = {c: frames(steps + 1, 2, seed=100 + c) for c in range(n_clients)}
    expected = {}
    for c in range(n_clients):  # each client's env 0 and 1, alone in process
        ref = local(grm_dir)
        ctx = contexts(data[c], 2)
        expected[c] = [ref.reset([0, 1], ctx, data[c][0])] + [
            ref.predict(data[c][t]) for t in range(1, steps + 1)
        ]
    got, errors = {}, []
    barrier = threading.Barrier(n_clients)

    def run(c):
        try:
            with client(server) as remote:
                barrier.wait()
                outs = [remote.reset([0, 1], contexts(data[c], 2), data[c][0])]
                for t in range(1, steps + 1):
                    barrier.wait()  # all clients call at once: their requests share batches
                    outs.append(remote.predict(data[c][t]))
                got[c] = outs
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()

    with serve(local(grm_dir), max_wait_ms=20) as server:
        threads = [threading.Thread(target=run, args=(c,)) for c in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = server.batcher.stats
    assert not errors, errors
    for c in range(n_clients):
        for a, b in zip(got[c], expected[c], strict=True):
            assert_same(a, b, atol=1e-5)
    # dynamic batching: fewer model calls than requests, several clients per call
    assert stats.requests == n_clients * (steps + 1)
    assert stats.model_calls < stats.requests / 2
    assert stats.max_batch_rows >= 4


def test_client_ids_namespace_env_indices_and_close_releases(grm_dir):
    fr = frames(2, 1, seed=1)
    other = frames(2, 1, seed=2)
    with serve(local(grm_dir)) as server:
        a, b = client(server), client(server)
        a.reset([0], [TaskContext("reach")], fr[0])
        b.reset([0], [TaskContext("reach")], other[0])
        ref = local(grm_dir)
        ref.reset([0], [TaskContext("reach")], fr[0])
        assert_same(
            a.predict(fr[1], [0]), ref.predict(fr[1], [0])
        )  # b's env 0 did not overwrite a's
        assert len(server.servicer.envs) == 2
        a.close()
        assert len(server.servicer.envs) == 1
        c = client(server)
        c.reset([5], [TaskContext("reach")], fr[0])  # reuses a's released model index
        assert server.servicer.envs._next == 2
        with pytest.raises(ModelInputError, match="never reset"):
            c.predict(fr[1], [0])
        b.close()
        c.close()


def test_batcher_keeps_per_env_order_and_isolates_a_failing_request():
    calls = []

    class Fake:
        views, image_size = ("front",), (1, 1)

        def predict(self, frames, indices):
            if 99 in indices:
                raise ModelInputError("env 99 is bad")
            calls.append(list(indices))
            n = len(indices)
            return type(
                "Out",
                (),
                {
                    "progress": torch.tensor(indices, dtype=torch.float32),
                    "success": torch.zeros(n),
                    "confidence": torch.ones(n),
                },
            )()

    batcher = Batcher(Fake(), max_batch=8, max_wait_ms=50)
    f = np.zeros((1, 1, 1, 1, 3), np.uint8)
    futs = [batcher.submit(Request(Kind.predict, [i], f)) for i in (1, 2, 1, 3)]
    assert [fu.result(5).progress[0] for fu in futs] == [1, 2, 1, 3]
    # batched, but the second call on env 1 waited for the next batch
    assert calls == [[1, 2, 3], [1]]
    assert [fu.result().batch_rows for fu in futs] == [3, 3, 1, 3]
    calls.clear()
    futs = [batcher.submit(Request(Kind.predict, [i], f)) for i in (4, 99, 5)]
    with pytest.raises(ModelInputError, match="env 99"):
        futs[1].result(5)
    assert futs[0].result(5).progress[0] == 4 and futs[2].result(5).progress[0] == 5
    assert calls == [[4], [5]]  # the failed batch was retried request by request
    assert batcher.call(lambda: threading.current_thread().name, timeout=5) == "reward-batcher"
    batcher.close()


# ---------------------------------------------------------------------- faults
def test_a_client_disconnecting_mid_request_does_not_hurt_the_others(grm_dir):
    fr = frames(6, 1, seed=3)
    with serve(Slow(local(grm_dir), 0.05), max_wait_ms=1) as server:
        goner = client(server)
        goner.reset([0], [TaskContext("reach")], fr[0])
        others = [client(server) for _ in range(3)]
        for o in others:
            o.reset([0], [TaskContext("reach")], fr[0])
        results, errors = [], []

        def work(o):
            try:
                results.extend(o.predict(fr[t]) for t in range(1, 6))
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work, args=(o,)) for o in others]
        for t in threads:
            t.start()
        # the goner's requests are in flight when its connection goes away
        pending = [
            goner._stub.Predict.future(
                reward_pb2.PredictRequest(
                    client_id=goner.client_id, env_ids=[0], frames=raw_frames(fr[t])
                ),
                metadata=AUTH,
            )
            for t in range(1, 4)
        ]
        time.sleep(0.03)
        goner._channel.close()
        for t in threads:
            t.join(30)
        assert not errors and len(results) == 15
        assert all(p.done() for p in pending)
        assert (
            sum(p.code() is grpc.StatusCode.CANCELLED for p in pending) >= 2
        )  # gone while queued or running
        with client(server) as fresh:  # the server still answers
            fresh.reset([0], [TaskContext("reach")], fr[0])
            assert fresh.predict(fr[1]).progress.shape == (1,)
        for o in others:
            o.close()


def test_server_restart_client_reconnects_after_re_reset(grm_dir):
    fr = frames(4, 2, seed=4)
    server = serve(local(grm_dir))
    port = server.port
    remote = client(server)
    remote.reset([0, 1], contexts(fr, 2), fr[0])
    remote.predict(fr[1])
    server.stop(0)
    with pytest.raises(RewardServerError, match="unreachable") as e:
        remote.predict(fr[2])
    assert e.value.code is grpc.StatusCode.UNAVAILABLE
    server = serve(local(grm_dir), port=port)
    with pytest.raises(RoboError, match="port in use"):  # a second server cannot share the port
        serve(local(grm_dir), port=port)
    try:
        deadline = time.monotonic() + 10
        while True:  # the channel reconnects by itself within its (short) backoff
            try:
                remote.predict(fr[2])
            except RewardServerError:
                assert time.monotonic() < deadline, "the client did not reconnect"
                time.sleep(0.1)
                continue
            except ModelInputError as err:  # the new server has never seen this client's envs
                assert "never reset" in str(err) and "restart" in str(err)
                break
            raise AssertionError("a restarted server cannot know the client's environments")
        ref = local(grm_dir)
        assert_same(
            remote.reset([0, 1], contexts(fr, 2), fr[2]), ref.reset([0, 1], contexts(fr, 2), fr[2])
        )
        assert_same(remote.predict(fr[3]), ref.predict(fr[3]))
    finally:
        remote.close()
        server.stop(0)


def test_backpressure_and_deadlines(grm_dir):
    fr = frames(2, 1, seed=5)
    slow = Slow(local(grm_dir), 0.4)
    with serve(slow, max_queue=2, max_wait_ms=0) as server:
        clients = [client(server, timeout_s=10) for _ in range(6)]
        slow.delay = 0.0
        for c in clients:
            c.reset([0], [TaskContext("reach")], fr[0])
        slow.delay = 0.4
        codes = []

        def call(c):
            try:
                c.predict(fr[1])
                codes.append("ok")
            except RewardServerError as e:
                codes.append(e.code)

        threads = [threading.Thread(target=call, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes  # the bounded queue pushed back
        assert "ok" in codes
        hurried = client(server, timeout_s=0.1)
        slow.delay = 0.0
        hurried.reset([0], [TaskContext("reach")], fr[0])
        slow.delay = 0.4
        with pytest.raises(RewardServerError, match="no answer in time") as e:
            hurried.predict(fr[1])
        assert e.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        hurried.close()
        for c in clients:
            c.close()
    slow.delay = 0.0
    with serve(slow, request_timeout_s=0.2) as server, client(server, timeout_s=10) as patient:
        patient.reset([0], [TaskContext("reach")], fr[0])
        slow.delay = 0.5
        with pytest.raises(
            RewardServerError, match="no result within 200 ms"
        ) as e:  # the server's own cap
            patient.predict(fr[1])
        assert e.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_wrong_or_missing_token_is_rejected(grm_dir):
    with serve(local(grm_dir)) as server:
        with pytest.raises(RewardServerError, match="refused the token") as e:
            RemoteProgressModel(f"grpc://127.0.0.1:{server.port}", token="wrong")
        assert e.value.code is grpc.StatusCode.UNAUTHENTICATED
        channel, s = stub(server)
        with pytest.raises(grpc.RpcError) as e:
            s.Info(reward_pb2.InfoRequest(), timeout=5)
        assert e.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert s.Info(reward_pb2.InfoRequest(), timeout=5, metadata=AUTH).views == [
            "front",
            "wrist",
        ]
        channel.close()


def test_oversized_payload_is_rejected_and_the_client_splits_big_batches(grm_dir):
    fr = frames(2, 40, seed=6)  # 40 envs x 6 KiB = 240 KiB per call
    with serve(local(grm_dir), max_message_mb=0.1) as server:
        channel, s = stub(server, **{"grpc.max_send_message_length": 8 * 2**20})
        with pytest.raises(grpc.RpcError) as e:
            s.Predict(
                reward_pb2.PredictRequest(
                    client_id="x", env_ids=list(range(40)), frames=raw_frames(fr[1])
                ),
                timeout=5,
                metadata=AUTH,
            )
        assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        channel.close()
        ref = local(grm_dir)
        ids = list(range(40))
        with client(server) as remote:
            ctx = [TaskContext("reach")] * 40
            assert_same(remote.reset(ids, ctx, fr[0]), ref.reset(ids, ctx, fr[0]))
            assert_same(remote.predict(fr[1]), ref.predict(fr[1]), atol=1e-5)
            assert (
                remote.last_reply.batch_rows < 40
            )  # sent in several calls under the server's limit


@pytest.mark.parametrize(
    "case, match",
    [
        ("dtype", "dtype 'float32'"),
        ("rank", "expected \\(B, V, H, W, 3\\)"),
        ("views", "1 views, the model expects 2"),
        ("size", "16x16 px"),
        ("bytes", "bytes, shape"),
        ("ids", "2 env ids for 1 frame sets"),
        ("dup", "appears twice"),
        ("client", "client_id"),
        ("context", "1 contexts for 2 env ids"),
    ],
)
def test_invalid_requests_get_a_one_line_invalid_argument(grm_dir, case, match):
    good = frames(1, 2, seed=7)[0]
    f = {
        "dtype": raw_frames(good.astype(np.float32), dtype="float32", shape=good.shape),
        "rank": raw_frames(good[0]),
        "views": raw_frames(good[:, :1]),
        "size": raw_frames(good[:, :, :16, :16]),
        "bytes": raw_frames(good[:1], shape=good.shape),
    }.get(case, raw_frames(good))
    ids = {"ids": [0, 1], "dup": [0, 0]}.get(case, [0, 1])
    if case == "ids":
        f = raw_frames(good[:1])
    cid = "" if case == "client" else "me"
    ctx = [reward_pb2.TaskContext(text="reach")] * (1 if case == "context" else 2)
    with serve(local(grm_dir)) as srv:
        channel, s = stub(srv)
        with pytest.raises(grpc.RpcError) as e:
            s.Reset(
                reward_pb2.ResetRequest(client_id=cid, env_ids=ids, frames=f, contexts=ctx),
                timeout=5,
                metadata=AUTH,
            )
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "\n" not in e.value.details()
        assert re.search(match, e.value.details()), e.value.details()
        channel.close()


def test_client_errors_are_one_line(grm_dir):
    with pytest.raises(RewardServerError, match="unreachable \\(connection refused\\)"):
        RemoteProgressModel("grpc://127.0.0.1:1", token=TOKEN, connect_timeout_s=2)
    with pytest.raises(RoboError, match="grpc://HOST:PORT"):
        parse_url("http://nope")
    assert (
        parse_url("//localhost:50051") == "localhost:50051"
        and parse_url("grpc://[::1]:7") == "[::1]:7"
    )
    with serve(local(grm_dir)) as server, client(server) as remote:
        with pytest.raises(ModelInputError, match="never reset"):
            remote.predict(frames(1, 1)[0])
        with pytest.raises(ModelInputError, match="16x16 px"):
            remote.predict(np.zeros((1, 2, 16, 16, 3), np.uint8))


def test_server_cli_errors_are_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("ROBO_REWARD_TOKEN", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["--model", f"grm:{tmp_path}", "--port", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the reward server needs a token") and "\n" not in err
    (tmp_path / "token").write_text("abc\n")
    with pytest.raises(SystemExit):
        main(["--model", f"grm:{tmp_path}", "--port", "0", "--token-file", str(tmp_path / "token")])
    err = capsys.readouterr().err.strip()
    assert "is not a GRM checkpoint" in err and "\n" not in err
    with pytest.raises(SystemExit):
        main(["--model", "grm:x", "--no-auth", "true", "--host", "0.0.0.0"])
    assert "loopback only" in capsys.readouterr().err


# ---------------------------------------------------------------------- integration
def test_reward_wrapper_runs_with_the_remote_model(grm_dir, monkeypatch):
    import sim
    from robo.shaping import ShapedRewardWrapper, ShapingConfig

    monkeypatch.setenv("ROBO_REWARD_TOKEN", TOKEN)
    actions = np.random.default_rng(0).uniform(-1, 1, (12, 4)).astype(np.float32)

    def rollout(model):
        env = ShapedRewardWrapper(
            sim.make("tabletop/reach-v0", views=("front", "side", "wrist"), image_size=32),
            model,
            ShapingConfig(mode="pbrs"),
            TaskContext("reach the target"),
        )
        env.reset(seed=3)
        out = [env.step(a)[1::3] for a in actions]  # (reward, info)
        env.close()
        return out

    with serve(local(grm_dir)) as server:
        remote = load_progress_model(f"grpc://127.0.0.1:{server.port}")
        assert isinstance(remote, RemoteProgressModel)
        got = rollout(remote)
        remote.close()
    want = rollout(local(grm_dir))
    for (r, info), (r_ref, info_ref) in zip(got, want, strict=True):
        assert r == pytest.approx(r_ref, abs=1e-5)
        assert info["reward_terms"]["next_potential"] == pytest.approx(
            info_ref["reward_terms"]["next_potential"], abs=1e-5
        )


def test_server_command_serves_and_stops_on_sigterm(grm_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    (tmp_path / "token").write_text(TOKEN + "\n")
    env = {k: v for k, v in os.environ.items() if k != "ROBO_REWARD_TOKEN"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "robo.serving.server",
            "--model",
            f"grm:{grm_dir}",
            "--port",
            "0",
            "--token-file",
            str(tmp_path / "token"),
            "--device",
            "cpu",
            "--max-batch",
            "8",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        m = re.search(
            r"listening on 127\.0\.0\.1:(\d+) \(model grm:.*, cpu, float32, max_batch 8", line
        )
        assert m, line + proc.stderr.read() if proc.poll() is not None else line
        fr = frames(2, 1, seed=8)
        ref = local(grm_dir)
        with RemoteProgressModel(f"grpc://127.0.0.1:{m[1]}", token=TOKEN) as remote:
            assert remote.model_name == f"grm:{grm_dir}"
            assert_same(
                remote.reset([0], [TaskContext("reach")], fr[0]),
                ref.reset([0], [TaskContext("reach")], fr[0]),
            )
            assert_same(remote.predict(fr[1]), ref.predict(fr[1]))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_control_loop_runs_with_the_remote_model(grm_dir):
    from hardware.registry import make_robot_from_config
    from robo.control import ControlLoop, make_policy

    cams = {v: {"camera": v, "width": 32, "height": 32} for v in ("front", "side", "wrist")}
    robot = make_robot_from_config(
        {
            "type": "sim",
            "id": "tabletop",
            "task": "reach",
            "action_space": "cartesian",
            "control_hz": 25,
            "cameras": cams,
        }
    )
    ctx = TaskContext("reach the target")
    with serve(local(grm_dir)) as server, client(server) as remote, robot:
        result = ControlLoop(
            robot, make_policy("expert", robot), rate_hz=25, reward=remote, context=ctx
        ).run_episode(max_steps=15)
    assert result.steps == 15 and len(result.progress) == 16
    ref = local(grm_dir)
    obs = [np.stack([o[v] for v in ref.views])[None] for o in result.rows["obs"]]
    want = [float(ref.reset([0], [ctx], obs[0]).progress[0])] + [
        float(ref.predict(o).progress[0]) for o in obs[1:]
    ]
    np.testing.assert_allclose(result.progress, want, atol=1e-5)
