"""Shared test fixtures' settings: the tiny GRM architecture every test builds in seconds."""

TINY_GRM = dict(
    views=("front", "wrist"),
    image_size=(32, 32),
    channels=(8, 16),
    encoder_resolution=16,
    d_model=32,
    layers=1,
    heads=2,
    num_bins=11,
    text_buckets=64,
)
