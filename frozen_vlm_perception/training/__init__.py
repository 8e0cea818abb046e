"""Training: stage 1 aligns the IMU encoder to the frozen vision encoder, stage 2 trains the adapter.

    fvp train align   --bag TRAIN [--val-bag VAL] --out models/x     (align.py, arXiv 2308.16493)
    fvp train adapter --bag TRAIN [--val-bag VAL] --model models/x   (adapter.py, through the frozen LM)
    python -m torch.distributed.run --nproc_per_node N -m frozen_vlm_perception.training.align ...

Modules: config (settings dataclasses), dataset (DataLoader samples and the train/val split over
the embedding cache), losses (InfoNCE, CE, retrieval recall), templates (questions/answers shared
with evaluation), distributed (DDP helpers), common (LR schedule, early stopping, progress bars and
console lines, reports, plots), cli_args (argparse helpers). What training shares with evaluation
(DataConfig, the recording flags, the embedding cache) lives in ``frozen_vlm_perception.data``.
"""
