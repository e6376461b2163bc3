import numpy as np
import pytest
import torch

from vidgen import export_to_video, load_image, load_video


def _frames(n=9, h=32, w=48):
    rng = np.random.default_rng(0)
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):  # a moving bright square on black, so codec loss stays small
        frames[i, 8:20, 2 + 3 * i : 14 + 3 * i] = (230, 40, 40)
    return frames + rng.integers(0, 2, frames.shape, dtype=np.uint8)


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "clip_frames"])
def test_round_trip(tmp_path, name):
    frames = _frames()
    path = export_to_video(frames, tmp_path / name, fps=8)
    video = load_video(path)
    assert len(video) == 9 and video[0].size == (48, 32)
    error = np.abs(np.stack([np.asarray(f) for f in video]).astype(float) - frames).mean()
    assert error < (0.5 if name == "clip_frames" else 6.0)


def test_accepts_float_arrays_and_tensors(tmp_path):
    floats = _frames().astype(np.float32) / 255
    export_to_video(floats, tmp_path / "a.gif")
    export_to_video(torch.from_numpy(floats).permute(0, 3, 1, 2), tmp_path / "b.gif")
    assert len(load_video(tmp_path / "b.gif")) == 9


def test_never_replaces_without_overwrite(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_to_video(_frames(), path)
    assert path.read_bytes() == b"precious"
    export_to_video(_frames(), path, overwrite=True)
    assert len(load_video(path)) == 9
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary left behind
    assert path.stat().st_mode & 0o044  # readable by others, like any file the user writes


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"\.mp4 or \.gif"):
        export_to_video(_frames(), tmp_path / "clip.avi")
    with pytest.raises(ValueError, match="even height and width"):
        export_to_video(_frames(h=33), tmp_path / "odd.mp4")
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        export_to_video(np.zeros((4, 8, 8)), tmp_path / "x.gif")
    with pytest.raises(FileNotFoundError):
        load_video(tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


def test_png_folder_overwrite_only_replaces_frame_folders(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="other than frame_"):
        export_to_video(_frames(), folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep"
    frames_dir = tmp_path / "frames"
    export_to_video(_frames(n=12), frames_dir)
    export_to_video(_frames(n=3), frames_dir, overwrite=True)
    assert len(load_video(frames_dir)) == 3
    with pytest.raises(ValueError, match="at least one frame"):
        export_to_video(np.zeros((0, 8, 8, 3), np.uint8), tmp_path / "empty.gif")
    with pytest.raises(ValueError, match="fps must be a finite number"):
        export_to_video(_frames(), tmp_path / "x.gif", fps=float("inf"))
