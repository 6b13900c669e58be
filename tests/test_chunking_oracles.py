"""Oracle tests for common/chunking.py found by mutation testing.

Oracle: hand arithmetic on the standard extractor geometry (7 convolutions, stride 320 samples, receptive field 400
samples; REFERENCE.md §1.2/§1.3) and the documented rules: F = (W - 400) // 320 + 1 frames per window, hop = F - V
rounded DOWN to a multiple of the Hourglass factor, overlap = round(seconds * 16000 / 320) frames. The window
length and overlap are chosen so that (F - V) // factor is NOT itself a multiple of the factor."""

from common.chunking import ChunkingConfig, FrameGeometry

STANDARD = ((10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2))


def test_standard_geometry_by_hand():
    g = FrameGeometry(STANDARD)
    assert (g.stride, g.receptive_field) == (320, 400)
    assert g.num_frames(16000) == 49 and g.num_frames(400) == 1 and g.num_frames(399) == 0


def test_hop_is_rounded_down_to_a_multiple_of_the_pooling_factor():
    # W = 16000 samples -> F = 15600 // 320 + 1 = 49 frames; V = 12 -> F - V = 37 -> multiple of 4 below: 36
    c = ChunkingConfig(window_samples=16000, overlap_frames=12, geometry=FrameGeometry(STANDARD, 4), batch_size=1)
    assert (c.window_frames, c.hop_frames, c.shared_frames, c.lead_frames) == (49, 36, 13, 6)
    plan = c.plan(100_000)  # 100000 samples -> (99600 // 320) + 1 = 312 frames
    assert [w.first_frame for w in plan] == [0, 36, 72, 108, 144, 180, 216, 252, 288]
    assert all(w.start == w.first_frame * 320 and w.first_frame % 4 == 0 for w in plan)
    kept = [t for w in plan for t in range(w.keep_start, w.keep_stop)]
    assert kept == list(range(312))


def test_overlap_seconds_are_rounded_to_the_nearest_frame():
    # 0.058 s = 928 samples = 2.9 frames of 320 samples -> 3 frames (nearest), not 2 (truncated)
    c = ChunkingConfig.from_seconds(1.0, 0.058, FrameGeometry(STANDARD), batch_size=1)
    assert c.window_samples == 16000 and c.overlap_frames == 3
    # default overlap: a quarter of the window, 0.25 s = 4000 samples = 12.5 frames -> 12 (round half to even)
    assert ChunkingConfig.from_seconds(1.0, None, FrameGeometry(STANDARD), batch_size=1).overlap_frames == 12


def test_a_window_of_exactly_the_receptive_field_is_allowed():
    """400 samples make one frame (the error is for windows SHORTER than the receptive field): with no overlap such
    windows advance one frame each; 399 samples make no frame and are refused."""
    import pytest

    c = ChunkingConfig(window_samples=400, overlap_frames=0, geometry=FrameGeometry(STANDARD), batch_size=1)
    assert (c.window_frames, c.hop_frames) == (1, 1)
    assert [(w.start, w.stop, w.keep_start, w.keep_stop) for w in c.plan(1040)] == [
        (0, 400, 0, 1), (320, 720, 1, 2), (640, 1040, 2, 3)]  # 1040 samples -> 640 // 320 + 1 = 3 frames
    with pytest.raises(ValueError, match="receptive field"):
        ChunkingConfig(window_samples=399, overlap_frames=0, geometry=FrameGeometry(STANDARD), batch_size=1)
