"""Training the ConvNet: the loop, checkpoints, distributed training, throughput."""
