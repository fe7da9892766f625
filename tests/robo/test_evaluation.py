"""Tests of robo.evaluation: metrics on hand-made arrays, scoring plumbing, reports, exploitation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models.base import ProgressOutput, TaskContext, check_frames
from robo.collect import make_env, open_or_create, rollout_to_episode
from robo.errors import RoboError
from robo.evaluation import (
    ScoredEpisode,
    Thresholds,
    canonicalize_state_reward,
    choose_thresholds,
    confusion_matrix,
    epic_distance,
    evaluate,
    exploitation_test,
    false_success_rate,
    outcome_accuracy,
    predict_outcome,
    predict_outcome_any_step,
    progress_agreement,
    regress_tracking,
    score_episode,
    score_store,
    smoothed_noise,
    stage_accuracy,
    stage_from_progress,
    summarize,
    transitions,
    voc,
)
from robo.store import EpisodeStore
from sim.rollouts import make_policy, run_rollout

ENV_ID = "tabletop/pick-place-v0"
VIEWS = ("front", "side", "wrist")
SIZE = 24


# ----------------------------------------------------------------------------- tiny models


class ClockModel:
    """Φ = steps since reset / horizon (capped at 1); the first predict after reset gives 0."""

    def __init__(self, horizon: int, views=VIEWS, image_size=(SIZE, SIZE)):
        self.horizon, self.views, self.image_size = horizon, tuple(views), tuple(image_size)
        self.steps: dict[int, int] = {}
        self.contexts: dict[int, TaskContext] = {}

    def reset(self, env_indices, contexts, frames) -> None:
        check_frames(frames, self.views, self.image_size)
        for i, ctx in zip(env_indices, contexts, strict=True):
            self.steps[i], self.contexts[i] = 0, ctx

    def predict(self, frames, env_indices=None) -> ProgressOutput:
        frames = check_frames(frames, self.views, self.image_size)
        indices = list(range(len(frames))) if env_indices is None else list(env_indices)
        phi = torch.tensor([min(1.0, self.steps[i] / self.horizon) for i in indices])
        for i in indices:
            self.steps[i] += 1
        return ProgressOutput(phi, phi.clone(), torch.ones_like(phi))


class LookupModel(ClockModel):
    """An oracle: looks frames up in a table of privileged progress (keyed by the frame bytes)."""

    def __init__(self, table: dict[bytes, float], views):
        super().__init__(1, views)
        self.table = table

    def predict(self, frames, env_indices=None) -> ProgressOutput:
        frames = check_frames(frames, self.views, self.image_size).numpy()
        phi = torch.tensor([self.table[f.tobytes()] for f in frames], dtype=torch.float32)
        return ProgressOutput(phi, (phi > 0.95).float(), torch.ones_like(phi))


def lookup_table(store, views) -> dict[bytes, float]:
    idx = [store.views.index(v) for v in views]
    table = {}
    for ep in store:
        for t in range(len(ep)):
            table[ep.frames[t][idx].tobytes()] = float(ep.privileged_progress[t])
    return table


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two expert, one undo, one near-miss and one half rollout of pick-place at 24 px."""
    env = make_env(ENV_ID, VIEWS, SIZE)
    try:
        st = open_or_create(
            str(tmp_path_factory.mktemp("eval") / "pp"),
            ENV_ID,
            VIEWS,
            SIZE,
            env.observation_space.shape[0],
            env.action_space.shape[0],
        )
        for policy, seed in (
            ("expert", 0),
            ("expert", 1),
            ("undo", 2),
            ("near-miss", 3),
            ("half", 4),
        ):
            rollout = run_rollout(env, make_policy(policy, env, np.random.default_rng(seed)), seed)
            st.append_episode(rollout_to_episode(rollout, ENV_ID))
    finally:
        env.close()
    return st


# ----------------------------------------------------------------------------- metrics


def test_voc_known_orders() -> None:
    t = np.arange(20, dtype=float)
    assert voc(t / 19) == pytest.approx(1.0)
    assert voc(t[::-1]) == pytest.approx(-1.0)
    assert voc(t**3 - 5) == pytest.approx(1.0)  # rank correlation: any monotone map
    assert voc(np.full(7, 0.4)) == 0.0
    assert math.isnan(voc([0.3]))
    assert voc([0.0, 0.2, 0.1, 0.3]) == pytest.approx(0.8)


def test_progress_agreement_pools_frames_and_skips_unknown() -> None:
    preds = [np.array([0.0, 0.5, 1.0]), np.array([0.2, 0.2])]
    trues = [np.array([0.0, 0.4, 0.8]), np.array([0.3, np.nan])]
    got = progress_agreement(preds, trues)
    assert got["frames"] == 4
    assert got["mae"] == pytest.approx((0 + 0.1 + 0.2 + 0.1) / 4)
    assert got["pearson"] == pytest.approx(np.corrcoef([0, 0.5, 1, 0.2], [0, 0.4, 0.8, 0.3])[0, 1])
    perfect = progress_agreement(np.linspace(0, 1, 9), 0.5 * np.linspace(0, 1, 9) + 0.1)
    assert perfect["pearson"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="lengths"):
        progress_agreement([np.zeros(3)], [np.zeros(4)])


def test_regress_tracking_constructed_case() -> None:
    # p rises 0.05 per step to its peak at t = 20, then falls 0.05 per step until t = 40.
    # p[t-10] - p[t] >= 0.05 first holds at t = 26 (0.80 -> 0.70): regress frames t = 26..40.
    p = np.concatenate([np.linspace(0, 1, 21), np.linspace(1, 0, 21)[1:]])
    t = np.arange(len(p))
    assert regress_tracking(p, p) == {"rate": 1.0, "frames": 15, "tracked": 15}
    # a model that holds 1 from the peak and only falls from t = 36 on tracks t = 36..40
    phi = np.where(t <= 35, np.minimum(t / 20, 1.0), 1.0 - (t - 35) * 0.05)
    got = regress_tracking(phi, p)
    assert (got["frames"], got["tracked"]) == (15, 5) and got["rate"] == pytest.approx(5 / 15)
    # Φ must fall by more than phi_drop over the window to count
    assert regress_tracking(phi, p, phi_drop=0.2)["tracked"] == 1  # only t = 40 falls 0.25
    # a monotone model never tracks; a rising p has no regress frames at all
    assert regress_tracking(t / t[-1], p)["rate"] == 0.0
    assert math.isnan(regress_tracking(p[:21], p[:21])["rate"])
    # pooled over episodes, each with its own window
    assert regress_tracking([p, phi], [p, p]) == {"rate": 20 / 30, "frames": 30, "tracked": 20}


def test_predict_outcome_confusion_and_false_success() -> None:
    finals = np.array([0.99, 0.96, 0.5, 0.1, 0.97, 0.2, 0.31])
    truth = ["success", "partial", "partial", "failure", "failure", "partial", "success"]
    pred = predict_outcome(finals, delta=0.05, tau=0.3)
    assert pred.tolist() == [
        "success",
        "success",
        "partial",
        "failure",
        "success",
        "failure",
        "partial",
    ]
    matrix = confusion_matrix(truth, pred)
    # rows true (success, partial, failure), columns predicted
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [1, 1, 1], [1, 0, 1]])
    acc = outcome_accuracy(finals, truth, 0.05, 0.3)
    assert acc["accuracy"] == pytest.approx(3 / 7)
    assert acc["confusion"] == matrix.tolist() and acc["n"] == 7
    # non-success rollouts: 0.96, 0.5, 0.1, 0.97, 0.2 -> two called success
    assert false_success_rate(finals, truth, 0.05) == pytest.approx(2 / 5)
    assert math.isnan(false_success_rate([0.2], ["success"]))


def test_choose_thresholds_separates_classes() -> None:
    rng = np.random.default_rng(0)
    finals = np.concatenate(
        [rng.uniform(0, 0.2, 10), rng.uniform(0.4, 0.6, 10), rng.uniform(0.97, 1, 10)]
    )
    truth = ["failure"] * 10 + ["partial"] * 10 + ["success"] * 10
    chosen = choose_thresholds(finals, truth)
    assert chosen.delta == 0.05
    assert finals[:10].max() < chosen.tau <= finals[10:20].min()
    assert outcome_accuracy(finals, truth, chosen.delta, chosen.tau)["accuracy"] == 1.0
    # searching δ too: successes only reach 0.9 here, so δ must grow to >= 0.1
    lower = np.where(np.arange(30) >= 20, finals - 0.07, finals)
    free = choose_thresholds(lower, truth, delta=None)
    assert free.delta >= 1 - lower[20:].min() - 1e-9
    assert outcome_accuracy(lower, truth, free.delta, free.tau)["accuracy"] == 1.0
    assert choose_thresholds(lower, truth).delta == 0.05  # fixed δ is kept


def test_stage_from_progress_and_accuracy() -> None:
    stages = stage_from_progress([0.0, 0.24, 0.25, 0.5, 0.99, 1.0, -0.1, np.nan], 4)
    assert stages.tolist() == [0, 0, 1, 2, 3, 3, 0, 0]
    assert stage_accuracy([[0, 1, 2], [3]], [[0, 1, 1], [-1]]) == pytest.approx(2 / 3)
    assert math.isnan(stage_accuracy([1, 2], [-1, -1]))


def brute_force_canonical(R: np.ndarray, weights: np.ndarray, gamma: float) -> np.ndarray:
    """Generic EPIC canonicalisation of a tabular R[s, s'] (actions ignored) under D_S = weights."""
    w = weights / weights.sum()
    e_next = R @ w  # E_{S'} R(x, S') for every x
    e_both = w @ R @ w  # E_{S, S'} R(S, S')
    return R + gamma * e_next[None, :] - e_next[:, None] - gamma * e_both


def test_canonicalisation_of_state_rewards_matches_generic_formula() -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(size=6)
    R = np.tile(f, (6, 1))  # R[s, s'] = f(s')
    states = rng.integers(0, 6, 500)
    weights = np.bincount(states, minlength=6).astype(float)
    for gamma in (0.0, 0.9, 0.99):
        want = brute_force_canonical(R, weights, gamma)
        got = canonicalize_state_reward(f, f[states], gamma)
        np.testing.assert_allclose(want, np.tile(got, (6, 1)), atol=1e-12)


def test_epic_distance_known_values() -> None:
    rng = np.random.default_rng(2)
    episodes = [np.clip(np.cumsum(rng.normal(0.02, 0.05, 40)), 0, 1) for _ in range(5)]
    s, n = transitions(episodes)
    assert s.size == n.size == 5 * 39
    assert epic_distance(s, s, n, n) == pytest.approx(0.0, abs=1e-6)
    assert epic_distance(3 * s + 2, s, 3 * n + 2, n) == pytest.approx(0.0, abs=1e-6)
    assert epic_distance(-s, s, -n, n) == pytest.approx(1.0)
    noise = rng.normal(size=n.size)
    assert 0.1 < epic_distance(noise, s, noise, n) < 0.9
    # γ cancels for state-only rewards; NaN (unknown p) transitions are dropped
    assert epic_distance(s**2, s, n**2, n, gamma=0.0) == pytest.approx(
        epic_distance(s**2, s, n**2, n, 0.99)
    )
    n_nan = n.copy()
    n_nan[0] = np.nan
    assert math.isfinite(epic_distance(s, s, n, n_nan))
    assert math.isnan(epic_distance(s, s, np.ones_like(n), n))


def test_summarize_without_a_model() -> None:
    p = np.linspace(0, 1, 30)
    undo = np.concatenate([p, p[::-1]])
    records = [
        ScoredEpisode(0, "expert", "success", "t", p, p, p, stage_from_progress(p, 2), p > 0.99),
        ScoredEpisode(
            1, "undo", "success", "t", undo, undo, undo, stage_from_progress(undo, 2), undo > 0.99
        ),
        ScoredEpisode(
            2,
            "half",
            "partial",
            "t",
            p[:15],
            p[:15],
            p[:15],
            stage_from_progress(p[:15], 2),
            p[:15] > 1,
        ),
    ]
    summary = summarize(records, Thresholds(), num_stages=2)
    assert summary["voc"] == pytest.approx(1.0) and summary["voc_episodes"] == 1
    assert summary["progress_mae"] == 0.0 and summary["progress_pearson"] == pytest.approx(1.0)
    assert summary["regress_tracking"] == 1.0 and summary["regress_episodes"] == 1
    assert summary["stage_accuracy"] == 1.0
    assert summary["epic_distance"] == pytest.approx(0.0, abs=1e-6)
    # the undo rollout succeeded on the way but ends at Φ = 0: called failure
    assert summary["confusion"]["matrix"] == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert summary["outcome_accuracy"] == pytest.approx(2 / 3)
    # so would privileged progress itself: the ceiling of the final-Φ rule is below 1
    assert summary["outcome_accuracy_privileged"] == pytest.approx(2 / 3)
    assert summary["policies"] == {"expert": 1, "half": 1, "undo": 1}
    # called at any step, as the outcome is defined: the undo rollout's success counts
    assert summary["outcome_accuracy_any_step"] == 1.0
    assert summary["confusion_any_step"] == [[2, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert summary["false_success_rate_any_step"] == 0.0
    assert [r["predicted_outcome_any_step"] for r in summary["per_episode"]] == [
        "success",
        "success",
        "partial",
    ]


def test_privileged_ceiling_reads_privileged_progress_not_phi() -> None:
    # a model that ignores the undoing is right from its final Φ; privileged progress,
    # which follows the undoing, is not: the ceiling is a property of the rollouts
    p = np.linspace(0, 1, 20)
    undo = np.concatenate([p, p[::-1]])
    phi = np.concatenate([p, np.ones(20)])
    records = [
        ScoredEpisode(
            0, "undo", "success", "t", phi, phi, undo, stage_from_progress(undo, 1), undo > 0.99
        )
    ]
    summary = summarize(records, Thresholds(), num_stages=1)
    assert summary["outcome_accuracy"] == 1.0
    assert summary["outcome_accuracy_privileged"] == 0.0


def test_outcome_at_any_step() -> None:
    # a spike to 1 - delta anywhere is a success; else the final value decides
    assert predict_outcome_any_step([0.1, 0.96, 0.2], delta=0.05, tau=0.3) == "success"
    assert predict_outcome_any_step([0.1, 0.94, 0.5], delta=0.05, tau=0.3) == "partial"
    assert predict_outcome_any_step([0.1, 0.94, 0.2], delta=0.05, tau=0.3) == "failure"
    assert predict_outcome_any_step([0.97], delta=0.05, tau=0.3) == "success"


# ----------------------------------------------------------------------------- scoring


def test_score_episode_and_batched_store_agree(store) -> None:
    model = ClockModel(horizon=50)
    ep = store.episode(0)
    scores = score_episode(model, ep, reference=store.episode(1), views=store.views)
    assert scores.progress.shape == (len(ep),) and scores.progress.dtype == np.float32
    np.testing.assert_allclose(scores.progress, np.minimum(1, np.arange(len(ep)) / 50), atol=1e-6)
    ctx = model.contexts[0]
    assert ctx.text == ep.task
    np.testing.assert_array_equal(ctx.start_frames, store.episode(1).frames[0])
    np.testing.assert_array_equal(ctx.goal_frames, store.episode(1).frames[-1])
    one = score_store(ClockModel(50), store, None, batch_episodes=1)
    many = score_store(ClockModel(50), store, None, batch_episodes=3)
    assert len(one) == len(store)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a.progress, b.progress)


def test_views_are_matched_by_name(store) -> None:
    views = ("wrist", "front")
    model = LookupModel(lookup_table(store, views), views)
    ep = store.episode(2)
    scores = score_episode(model, ep, store.episode(0), views=store.views)
    np.testing.assert_allclose(scores.progress, ep.privileged_progress, atol=1e-6)
    assert model.contexts[0].start_frames.shape == (2, SIZE, SIZE, 3)
    with pytest.raises(RoboError, match="record top"):
        score_episode(ClockModel(5, views=("front", "top")), ep, None, views=store.views)
    with pytest.raises(RoboError, match="model's size"):
        score_episode(ClockModel(5, image_size=(32, 32)), ep, None, views=store.views)


def test_evaluate_oracle_writes_report(store, tmp_path: Path) -> None:
    model = LookupModel(lookup_table(store, VIEWS), VIEWS)
    summary = evaluate(
        model, store, store.episode(0), out_dir=tmp_path, video_episodes=1, batch_episodes=4
    )
    assert summary["episodes"] == 5 and summary["voc_episodes"] == 2
    assert summary["progress_mae"] == pytest.approx(0.0, abs=1e-6)
    assert summary["progress_pearson"] == pytest.approx(1.0)
    assert summary["epic_distance"] == pytest.approx(0.0, abs=1e-3)
    assert summary["regress_frames"] > 0 and summary["regress_tracking"] == pytest.approx(1.0)
    assert summary["num_stages"] == 4 and summary["stage_accuracy"] > 0.95
    assert summary["voc"] > 0.9
    outcomes = [store.episode_meta(i).outcome for i in range(len(store))]
    finals = [store.episode(i).privileged_progress[-1] for i in range(len(store))]
    assert summary["outcome_accuracy"] == pytest.approx(
        outcome_accuracy(finals, outcomes)["accuracy"]
    )
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["episodes"] == 5 and len(written["per_episode"]) == 5
    for row, final in zip(written["per_episode"], finals, strict=True):  # a perfect model
        assert row["final_privileged_progress"] == pytest.approx(row["final_phi"], abs=1e-5)
        assert row["final_privileged_progress"] == pytest.approx(float(final), abs=1e-5)
    assert len(list((tmp_path / "plots").glob("episode_*.png"))) == 5
    assert (tmp_path / "plots" / "agreement.png").stat().st_size > 1000
    videos = list((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000


def test_evaluate_clock_model_false_successes(store) -> None:
    summary = evaluate(ClockModel(horizon=5), store, None, thresholds=(0.05, 0.3), out_dir=None)
    # every rollout ends at Φ = 1: all called success, so every non-success is a false success
    failed = sum(store.episode_meta(i).outcome != "success" for i in range(len(store)))
    assert failed >= 1 and summary["false_success_episodes"] == failed
    assert summary["false_success_rate"] == 1.0
    assert summary["regress_tracking"] == 0.0  # a clock never notices undoing
    assert summary["thresholds_source"] == "given"
    assert np.asarray(summary["confusion"]["matrix"])[:, 1:].sum() == 0


# ----------------------------------------------------------------------------- exploitation


def test_smoothed_noise_is_stationary_and_correlated() -> None:
    x = smoothed_noise(np.random.default_rng(0), (4000, 20, 1), smoothing=0.8)
    assert x[:, -1].std() == pytest.approx(1.0, rel=0.05)
    assert np.corrcoef(x[:, 10, 0], x[:, 11, 0])[0, 1] == pytest.approx(0.8, abs=0.05)
    with pytest.raises(RoboError):
        smoothed_noise(np.random.default_rng(0), (1, 2, 1), smoothing=1.0)


def test_exploitation_clock_model_is_fooled(store) -> None:
    views = ("front",)
    kwargs = dict(horizon=10, n_sequences=8, rng=0, batch_envs=4, reference_views=store.views)
    fooled = exploitation_test(ClockModel(10, views), ENV_ID, 0, store.episode(0), **kwargs)
    assert fooled["n_top"] == 1 and fooled["env_steps"] == 80
    assert fooled["top_env_success"] == [False]  # 10 random steps never place the cube
    assert fooled["exploit_rate"] == 1.0 and fooled["top_scores"] == [1.0]
    # how close the fooling sequence came: the sim's progress of its final state, not done
    (reached,) = fooled["top_privileged_progress"]
    assert 0.0 <= reached < 1.0
    honest = exploitation_test(
        ClockModel(1000, views),
        ENV_ID,
        0,
        None,
        method="cem",
        cem_iters=2,
        **{**kwargs, "reference_views": None},
    )
    assert honest["exploit_rate"] == 0.0 and honest["model_success_rate"] == 0.0
    assert honest["method"] == "cem" and honest["n_sequences"] == 8


def test_mining_records_the_over_scored_failures_as_labelled_rollouts(store, tmp_path) -> None:
    """A clock model scores every sequence of the reference's length 1.0; the top ones all
    fail in the env, so each is replayed from the same start state and recorded with its env
    outcome."""
    from robo.reward.mine import mine_adversarial

    model = ClockModel(10, ("front", "wrist"))
    out = str(tmp_path / "mined")
    kwargs = dict(sequences=8, top_frac=0.25, reference_views=store.views)
    summary = mine_adversarial(model, store.episode(0), ENV_ID, out, [3, 4], **kwargs)
    assert summary["exploit_rate"] == 1.0 and [r["recorded"] for r in summary["runs"]] == [2, 2]
    mined = EpisodeStore.open(out)
    assert len(mined) == 4 and tuple(mined.views) == ("front", "wrist")
    assert sum(summary["recorded"].values()) == 4 and summary["recorded"]["success"] == 0
    # the recorded episodes are the searched sequences, from the searched start states
    again = exploitation_test(
        model,
        ENV_ID,
        3,
        store.episode(0),
        horizon=len(store.episode(0)),
        n_sequences=8,
        top_frac=0.25,
        rng=3,
        reference_views=store.views,
        return_actions=True,
    )
    for k in range(2):
        ep, meta = mined.episode(k), mined.episode_meta(k)
        assert meta.policy == "adversarial" and meta.seed == 3 and meta.outcome != "success"
        assert len(ep) == len(store.episode(0)) + 1
        np.testing.assert_allclose(ep.actions[:-1], again["top_actions"][k])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "m"], "--reference (<store>:<episode>) and --out (a store) are required"),
        (["--model", "m", "--reference", "data/x", "--out", "o"], "write it as <store>:<episode>"),
        (["--model", "m", "--reference", "d:0", "--out", "o", "--top_frac", "0"], "--top_frac"),
        (["--model", "m", "--reference", "d:0", "--out", "o", "--method", "pso"], "--method pso"),
    ],
)
def test_mine_bad_input_is_a_one_line_error(args, message, capsys) -> None:
    from robo.cli import main

    assert main(["reward", "mine", *args]) == 2
    assert message in capsys.readouterr().err
