"""distree_env.render: frames from plain RenderState data, the human window, the env's modes."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest

from distree_env.render import FRAME_SHAPE, Renderer, RenderState, draw_frame

ENV_ID = "DistrEE-v0"


def _state(**changes) -> RenderState:
    base = dict(
        topology="parallel",
        compute=(0.9, 0.3, 0.6, 0.1),
        bandwidth=(0.8, 0.2, 0.5, 1.0),
        exit_index=1,
        num_exits=4,
        max_prob=0.62,
        feature_diff=0.18,
        elapsed_ratio=0.7,
        request_index=4,
        requests_per_episode=32,
        queue_len=3,
        queue_capacity=8,
        oldest_wait_ratio=0.4,
        last_request=(2, True, False),
    )
    base.update(changes)
    return RenderState(**base)


def test_frame_is_an_rgb_image():
    frame = draw_frame(_state())
    assert frame.shape == FRAME_SHAPE and frame.dtype == np.uint8
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 8  # a picture, not a blank


@pytest.mark.parametrize(
    "change",
    [
        {"compute": (0.1, 0.3, 0.6, 0.1)},  # device 0 loses compute
        {"bandwidth": (0.05, 0.2, 0.5, 1.0)},  # link 0 slows down
        {"exit_index": 2},
        {"max_prob": 0.99},
        {"elapsed_ratio": 1.3},  # past the deadline
        {"queue_len": 7},
        {"topology": "pipeline"},
        {"last_request": None},
    ],
)
def test_every_shown_quantity_changes_the_picture(change):
    assert not np.array_equal(draw_frame(_state()), draw_frame(_state(**change)))


def test_shapes_are_drawn_without_pillow(monkeypatch):
    """Pillow only adds text: without it the frame keeps its shape and its drawing."""
    monkeypatch.setitem(sys.modules, "PIL", None)
    frame = draw_frame(_state())
    assert frame.shape == FRAME_SHAPE
    assert not np.array_equal(frame, draw_frame(_state(compute=(0.0, 0.0, 0.0, 0.0))))


@pytest.mark.parametrize(
    ("change", "field"),
    [({"bandwidth": (0.5,)}, "bandwidth"), ({"exit_index": 4}, "exit_index")],
)
def test_inconsistent_state_is_refused_naming_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        _state(**change)


def test_state_from_observation_reads_the_documented_layout():
    names = ["max_prob", "margin", "entropy", "feature_diff", "progress", "compute_0",
             "compute_1", "bandwidth_0", "bandwidth_1", "elapsed_ratio", "queue_len",
             "oldest_wait_ratio"]  # fmt: skip
    obs = np.array([0.7, 0.4, 0.3, 0.2, 2 / 3, 0.9, 0.5, 0.6, 0.1, 0.8, 0.25, 0.3], np.float32)
    s = RenderState.from_observation(
        names,
        obs,
        topology="pipeline",
        num_exits=4,
        request_index=3,
        requests_per_episode=32,
        queue_capacity=8,
    )
    assert s.exit_index == 2 and s.queue_len == 2
    assert s.compute == pytest.approx((0.9, 0.5)) and s.bandwidth == pytest.approx((0.6, 0.1))
    assert s.max_prob == pytest.approx(0.7) and s.elapsed_ratio == pytest.approx(0.8)


def test_human_without_a_display_warns_once_and_shows_nothing(monkeypatch):
    import matplotlib

    monkeypatch.setattr(matplotlib, "get_backend", lambda: "agg")
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "get_backend", lambda: "agg")
    renderer = Renderer("human", fps=4)
    with pytest.warns(UserWarning, match="no display"):
        assert renderer.render(_state()) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would fail here
        assert renderer.render(_state()) is None
    renderer.close()


def test_human_window_is_reused_and_closed():
    """The window code path (a display is missing here: matplotlib's Agg canvas stands in)."""
    import matplotlib.pyplot as plt

    renderer = Renderer("human", fps=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Agg says it cannot show a window
        renderer._show(draw_frame(_state()))
        fig = renderer._window[0]
        renderer._show(draw_frame(_state(max_prob=0.99)))
    assert renderer._window[0] is fig  # one window, updated in place
    renderer.close()
    assert not plt.fignum_exists(fig.number)


def test_import_pulls_no_drawing_library():
    code = (
        "import sys, distree_env, distree_env.render; "
        "bad = [m for m in ('PIL', 'matplotlib', 'torch', 'pygame') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the env's render modes ------------------------------------------------------------------
def test_env_rgb_array_from_reset_to_the_end():
    env = gym.make(ENV_ID, render_mode="rgb_array")
    env.reset(seed=0)
    frames = [env.render()]
    done = False
    while not done:
        _, _, term, trunc, _ = env.step(1)
        done = term or trunc
        frames.append(env.render())
    assert all(f.shape == FRAME_SHAPE and f.dtype == np.uint8 for f in frames)
    assert len({f.tobytes() for f in frames}) > len(frames) // 2  # the picture follows the episode


def test_env_human_mode_is_accepted_headless(monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "get_backend", lambda: "agg")
    env = gym.make(ENV_ID, render_mode="human")
    with pytest.warns(UserWarning, match="no display"):
        env.reset(seed=0)  # human mode draws by itself
    assert env.render() is None
    env.step(0)
    env.close()


def test_human_mode_draws_at_every_reset_and_step_and_close_closes(monkeypatch):
    """Gymnasium's convention (CartPole's): a ``human`` env draws in ``reset`` and ``step``."""
    from distree_env import DistrEEVecEnv
    from distree_env.render import Renderer

    drawn, closed = [], []
    monkeypatch.setattr(Renderer, "render", lambda self, state: drawn.append(state))
    monkeypatch.setattr(Renderer, "close", lambda self: closed.append(self))
    env = gym.make(ENV_ID, render_mode="human")
    env.reset(seed=0)
    for _ in range(3):
        env.step(0)
    assert len(drawn) == 4
    env.close()
    venv = DistrEEVecEnv(2, render_mode="human")
    venv.reset(seed=0)
    venv.step(np.zeros(2, dtype=np.int64))
    venv.reset(options={"reset_mask": np.array([True, False])})
    assert len(drawn) == 7
    venv.close()
    assert len(closed) == 2  # the single env's window and the vector env's


def test_env_ansi_mode_stays():
    env = gym.make(ENV_ID, render_mode="ansi")
    env.reset(seed=0)
    assert isinstance(env.render(), str)


def test_record_video_writes_an_episode(tmp_path):
    pytest.importorskip("moviepy", reason="RecordVideo needs moviepy (pip install moviepy)")
    env = gym.wrappers.RecordVideo(
        gym.make(ENV_ID, render_mode="rgb_array", requests_per_episode=4),
        str(tmp_path),
        episode_trigger=lambda e: e == 0,
        disable_logger=True,
    )
    env.reset(seed=0)
    done = False
    while not done:
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        done = term or trunc
    env.close()
    videos = list(tmp_path.glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000


def test_render_episode_script_writes_a_gif_and_its_first_frame(tmp_path, recwarn):
    from PIL import Image

    from experiments.render_episode import main

    out = tmp_path / "episode.gif"
    assert main(["--steps", "3", "--out", str(out)]) == 0
    # the default id is the newest version: Gymnasium has no "out of date" warning to print
    assert not [w for w in recwarn if "out of date" in str(w.message)]
    with Image.open(out) as gif:
        assert gif.n_frames == 3 and gif.size == (FRAME_SHAPE[1], FRAME_SHAPE[0])
    assert out.with_suffix(".png").stat().st_size > 0
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "episode.mp4")])


def test_render_episode_checks_both_outputs_before_writing_either(tmp_path, capsys):
    from experiments.render_episode import main

    (tmp_path / "episode.png").mkdir()  # the PNG's path is taken by a folder
    with pytest.raises(SystemExit) as info:
        main(["--steps", "2", "--out", str(tmp_path / "episode.gif")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "the PNG beside --out" in err and "directory" in err
    assert not (tmp_path / "episode.gif").exists()


@pytest.mark.parametrize("threshold", ["5", "-0.1", "nan"])
def test_render_episode_refuses_a_threshold_outside_0_1_by_its_flag(tmp_path, capsys, threshold):
    from experiments.render_episode import main

    with pytest.raises(SystemExit) as info:
        main(["--threshold", threshold, "--out", str(tmp_path / "e.gif")])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1
    assert f"--threshold={float(threshold)} is not allowed: a probability in [0, 1]" in err
    assert not list(tmp_path.iterdir())
