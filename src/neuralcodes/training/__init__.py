"""Training the ConvNet: the epoch loop (:mod:`.loop`), what it keeps in the run (:mod:`.records`),
the measure of a split (:mod:`.measure`), resuming, distributed training, throughput."""
