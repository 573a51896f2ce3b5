"""The runtime room: the process (device, ranks, threads, allocator) and the run folder (its
files, lock, checkpoints), owned for one run by :class:`fewmask.runtime.run.Run`."""
