"""The GPU benchmark's figures from its timed blocks (the benchmark itself needs CUDA: make bench-gpu)."""

from chatmill.bench.gpu import Block, block_figures


def test_block_figures_are_per_gpu_medians_and_ranges_over_the_blocks():
    blocks = [Block(2.0, 4000, 2000, 8e12), Block(1.0, 4000, 2000, 8e12), Block(4.0, 4000, 2000, 8e12)]
    figures = block_figures(blocks, steps=4, world=2, peak_flops=1e12, palm_flops_per_token=1e9)
    assert figures["tokens_per_s_per_gpu"] == {
        "median": 1000,
        "min": 500,
        "max": 2000,
        "repetitions": [1000, 2000, 500],
    }
    assert figures["supervised_tokens_per_s_per_gpu"]["median"] == 500
    assert figures["step_s"]["median"] == 0.5
    assert figures["mfu"]["median"] == 2.0  # 8e12 FLOPs in 2 s on 2 GPUs of 1e12 each
    assert figures["mfu_palm_2048"]["median"] == 1.0
