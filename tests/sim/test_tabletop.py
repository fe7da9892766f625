"""The own tabletop suite: API, determinism, experts, privileged progress, bad input."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim
from sim.base import ExpertPolicy, ManipulationEnv, SimError

TASKS = [f"tabletop/{n}-v0" for n in sim.TABLETOP_TASKS]
MULTI_STAGE = ["tabletop/push-v0", "tabletop/pick-place-v0", "tabletop/stack-v0"]


def run_expert(env, seed, max_steps=300):
    u = env.unwrapped
    obs, info = env.reset(seed=seed)
    expert = u.expert()
    expert.reset()
    infos = [info]
    for _ in range(max_steps):
        obs, _, term, trunc, info = env.step(expert.act(obs, info))
        infos.append(info)
        if term or trunc:
            break
    return infos


@pytest.mark.parametrize("env_id", TASKS)
def test_env_checker_and_contract(env_id):
    env = sim.make(env_id, image_size=32)
    u = env.unwrapped
    check_env(u, skip_render_check=True)
    assert isinstance(u, ManipulationEnv)
    assert isinstance(u.expert(), ExpertPolicy)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert {"success", "stage", "privileged_progress"} <= set(info)
    frames = u.render_views()
    assert frames.shape == (3, 32, 32, 3) and frames.dtype == np.uint8
    assert frames.std() > 5  # not a blank image
    assert u.num_stages == len(u.stage_names) >= 1 and u.task_text
    env.close()


def test_render_modes_and_views():
    env = sim.make(
        "tabletop/pick-place-v0",
        views=("front", "wrist", "top"),
        image_size=(24, 40),
        render_mode="rgb_array",
    )
    env.reset(seed=0)
    assert env.render().shape == (24, 120, 3)
    assert env.unwrapped.render_views().shape == (3, 24, 40, 3)
    env.close()


@pytest.mark.parametrize("env_id", TASKS)
def test_observation_carries_tool_object_and_goal_relative_positions(env_id):
    env = sim.make(env_id, image_size=24)
    u = env.unwrapped
    obs, info = env.reset(seed=3)
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
    tcp, goal = u.tcp, u.goal
    np.testing.assert_allclose(obs[0:3], tcp)
    np.testing.assert_allclose(obs[21:24], goal)
    if u.OBJECTS:
        first = u.obj_pos(u.OBJECTS[0].name)
        np.testing.assert_allclose(obs[24:27], first - tcp, atol=1e-9)
        np.testing.assert_allclose(obs[27:30], goal - first, atol=1e-9)
    else:
        np.testing.assert_allclose(obs[24:27], goal - tcp, atol=1e-9)
        assert not obs[27:30].any()


@pytest.mark.parametrize("env_id", TASKS)
def test_invariant_observation_part_leaves_out_table_positions_and_velocity(env_id):
    """The declared invariant part holds the heights, the gripper and the relative positions,
    never an absolute table position or the tool's velocity (which moves with every step)."""
    keep = sim.invariant_obs(env_id)
    assert keep is not None and set(keep) <= set(range(30))
    assert not {0, 1, 3, 4, 5, 7, 8, 14, 15, 21, 22} & set(keep)  # absolute xy, velocity
    assert {2, 6, 9, 24, 25, 26, 27, 28, 29} <= set(keep)  # heights, gripper, relative
    env = sim.make(env_id, image_size=24)
    env.reset(seed=5)
    for _ in range(3):  # moving sideways: velocity and tool xy change
        moving, *_ = env.step(np.array([1.0, 0.0, 0.0, -1.0]))
    assert np.abs(moving[3:6]).max() > 1e-3


def test_metaworld_declares_relative_positions_and_an_invariant_part():
    """Meta-World's policies see heights, the gripper, orientations and the relative positions
    (object - hand, goal - hand, goal - object), never an absolute table position or the
    previous frame's copy (the hand's velocity)."""
    env_id = "metaworld/drawer-open-v3"
    rel = sim.relative_obs(env_id)
    keep = sim.invariant_obs(env_id)
    assert len(rel) == 12 and all(0 <= i < 39 for pair in rel for i in pair)
    assert set(range(39, 39 + len(rel))) <= set(keep) <= set(range(39 + len(rel)))
    assert not {0, 1, 4, 5, 11, 12, 36, 37, *range(18, 36)} & set(keep)
    env = sim.make(env_id)
    obs, _ = env.reset(seed=3)
    a, b = np.asarray(rel).T
    handle_from_hand = (obs[a] - obs[b])[:3]
    np.testing.assert_allclose(handle_from_hand, obs[4:7] - obs[0:3])
    assert sim.relative_obs("tabletop/push-v0") == ()  # its observation holds them itself


def test_multi_stage_tasks_exist():
    stages = [sim.make(e).unwrapped.num_stages for e in MULTI_STAGE]
    assert sum(s >= 2 for s in stages) >= 2


@pytest.mark.parametrize("env_id", TASKS)
def test_seeded_determinism(env_id):
    a, b = sim.make(env_id, image_size=24), sim.make(env_id, image_size=24)
    ia, ib = run_expert(a, seed=7, max_steps=25), run_expert(b, seed=7, max_steps=25)
    assert len(ia) == len(ib)
    np.testing.assert_array_equal(a.unwrapped.render_views(), b.unwrapped.render_views())
    np.testing.assert_allclose(
        [i["privileged_progress"] for i in ia], [i["privileged_progress"] for i in ib]
    )
    oa, _ = a.reset(seed=1)
    ob, _ = a.reset(seed=2)
    assert not np.allclose(oa, ob), "different seeds should place objects differently"


@pytest.mark.parametrize("env_id", TASKS)
def test_expert_succeeds_on_10_seeds(env_id):
    env = sim.make(env_id)
    wins = sum(run_expert(env, seed)[-1]["success"] for seed in range(10))
    assert wins >= 10 * 0.95


@pytest.mark.slow
@pytest.mark.parametrize("env_id", TASKS)
def test_expert_succeeds_on_100_seeds(env_id):
    env = sim.make(env_id)
    wins = sum(run_expert(env, seed)[-1]["success"] for seed in range(100))
    assert wins >= 95


@pytest.mark.parametrize("env_id", MULTI_STAGE)
def test_privileged_progress_rises_along_expert_demo(env_id):
    from scipy.stats import spearmanr

    infos = run_expert(sim.make(env_id), seed=3)
    p = np.array([i["privileged_progress"] for i in infos])
    stages = np.array([i["stage"] for i in infos])
    assert p[0] < 0.1 and p[-1] == 1.0
    assert spearmanr(p, np.arange(len(p))).statistic > 0.95
    assert set(range(sim.make(env_id).unwrapped.num_stages)) <= set(stages.tolist())
    assert np.all(np.diff(stages) >= -1)  # stages advance in order


def test_expert_reports_stage_boundaries():
    env = sim.make("tabletop/pick-place-v0")
    u = env.unwrapped
    obs, info = env.reset(seed=5)
    expert = u.expert()
    expert.reset()
    reported, true = [], []
    for _ in range(200):
        obs, _, term, _, info = env.step(expert.act(obs, info))
        reported.append(expert.stage)
        true.append(info["stage"])
        if term:
            break
    assert sorted(set(reported)) == [0, 1, 2, 3]
    assert np.mean(np.array(reported) == np.array(true)) > 0.7


def test_randomization_of_colors_and_lighting():
    from sim.base import Randomization

    env = sim.make(
        "tabletop/stack-v0", image_size=32, randomization=Randomization(colors=True, lighting=True)
    )
    env.reset(seed=0)
    f0 = env.unwrapped.render_views().astype(int)
    env.reset(seed=1)
    f1 = env.unwrapped.render_views().astype(int)
    plain = sim.make("tabletop/stack-v0", image_size=32)
    plain.reset(seed=0)
    assert np.abs(f0 - plain.unwrapped.render_views().astype(int)).mean() > 2
    assert np.abs(f0 - f1).mean() > 2


def test_bad_input_errors():
    with pytest.raises(SimError, match="unknown env id"):
        sim.make("tabletop/pick-plac-v0")
    with pytest.raises(SimError, match="unknown camera 'eye'"):
        sim.make("tabletop/push-v0", views=("front", "eye"))
    for size in (0, 100000, -3):
        with pytest.raises(SimError, match="image size"):
            sim.make("tabletop/push-v0", image_size=size)
    env = sim.make("tabletop/push-v0")
    env.reset(seed=0)
    with pytest.raises(SimError, match="NaN"):
        env.unwrapped.step(np.array([np.nan, 0, 0, 0]))
    with pytest.raises(SimError, match="shape"):
        env.unwrapped.step(np.zeros(3))


def test_action_limits_are_clamped():
    env = sim.make("tabletop/reach-v0")
    env.reset(seed=0)
    u = env.unwrapped
    before = u.tcp
    env.step(np.array([50.0, 0, 0, 0]))
    assert np.linalg.norm(u.tcp - before) < 2 * u.max_displacement + 1e-3


@pytest.mark.parametrize("terminate", [True, False])
def test_an_object_off_the_table_ends_the_episode(terminate):
    """The world has no floor: a cube knocked off the table falls for good, so the episode
    ends there (a failure), unless asked not to."""
    env = sim.make("tabletop/pick-place-v0", terminate_on_object_lost=terminate)
    u = env.unwrapped
    env.reset(seed=0)
    _, _, term, _, info = env.step(np.zeros(4, np.float32))
    assert not term and info["object_lost"] is False
    u.set_obj_pose("cube", [0.8, 0.0, 0.05])  # past the table's edge (x <= 0.5)
    for _ in range(30):
        _, _, term, _, info = env.step(np.zeros(4, np.float32))
        if term:
            break
    assert info["object_lost"] and u.obj_pos("cube")[2] < -u.LOST_DEPTH
    assert term is terminate and not info["success"]
